"""Bench output: the ParvaGPU profile table the serving planner reads, JSON, a text summary and a plot.

The table has ParvaGPU's columns ``Mig instance, Batch size, Workload Number, Throughput, Latency``:
instance size in compute slices, batch size, processes, median throughput *per process*, median latency
in seconds. migctl's one extension: ``Mig instance`` = ``whole`` for the whole GPU with MIG disabled
(the serving planner considers it next to the MIG layouts). Only configurations with at least one good
measured run are written.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from migctl.bench.runner import WHOLE, BenchResult

HEADER = ("Mig instance", "Batch size", "Workload Number", "Throughput", "Latency")


def _fmt(x: float) -> str:
    return f"{x:.6g}"


def to_table_csv(result: BenchResult) -> str:
    """The ParvaGPU ``prof_data`` CSV text of ``result``."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(HEADER)
    for row in result.rows():
        if "throughput" not in row:
            continue
        size = WHOLE if row["whole"] else str(row["slices"])
        w.writerow((size, row["batch"], row["procs"], _fmt(row["throughput"]["median"]),
                    _fmt(row["latency_ms"]["median"] / 1000.0)))
    return buf.getvalue()


def to_json(result: BenchResult) -> str:
    return json.dumps(result.to_dict(), indent=2, default=str)


def write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` (a new file is created 0600; an existing one is replaced in place)."""
    import os

    fd = os.open(str(path), os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)


def summary_lines(result: BenchResult) -> list[str]:
    """A plain-text table: one line per configuration, then what was skipped and why."""
    lines = [f"{'target':<12} {'batch':>5} {'procs':>5} {'ok':>5} {'throughput':>12} {'spread':>7} "
             f"{'latency ms':>11} {'per slice':>10}  unit"]
    for r in result.rows():
        if "throughput" in r:
            lines.append(
                f"{r['target']:<12} {r['batch']:>5} {r['procs']:>5} {r['ok']:>2}/{r['runs']:<2} "
                f"{_fmt(r['instance_throughput']):>12} {100 * r['throughput']['spread']:>6.1f}% "
                f"{_fmt(r['latency_ms']['median']):>11} {_fmt(r['throughput_per_slice']):>10}  {r['unit']}")
        else:
            why = r["failures"][0] if r["failures"] else "no measured run"
            lines.append(f"{r['target']:<12} {r['batch']:>5} {r['procs']:>5} {r['ok']:>2}/{r['runs']:<2} "
                         f"failed: {why}")
    for name, why in result.skipped.items():
        lines.append(f"{name}: skipped: {why}")
    if result.interrupted:
        lines.append("interrupted: the table holds what was measured before Ctrl-C")
    return lines


def plot(result: BenchResult, path: Path) -> None:
    """PNG: instance throughput, throughput per compute slice and latency against instance size.

    For each size the configuration with the highest instance throughput is plotted. matplotlib is
    imported here (lazily); without it this raises a one-line error.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        from migctl.bench.runner import BenchError

        raise BenchError("--plot needs matplotlib (pip install matplotlib)") from None
    best: dict[str, dict[str, Any]] = {}
    for r in result.rows():
        if "throughput" in r and (r["target"] not in best
                                  or r["instance_throughput"] > best[r["target"]]["instance_throughput"]):
            best[r["target"]] = r
    rows = sorted(best.values(), key=lambda r: (r["whole"], r["slices"]))
    labels = [("whole GPU" if r["whole"] else r["target"]) for r in rows]
    xs = list(range(len(rows)))
    fig, axes = plt.subplots(1, 3, figsize=(13, 4))
    unit = rows[0]["unit"] if rows else ""
    series = [
        ("instance throughput", [r["instance_throughput"] for r in rows], unit),
        ("throughput per compute slice", [r["throughput_per_slice"] for r in rows], unit + " / slice"),
        ("latency (median)", [r["latency_ms"]["median"] for r in rows], "ms"),
    ]
    for ax, (title, ys, ylab) in zip(axes, series, strict=True):
        colors = ["tab:orange" if r["whole"] else "tab:blue" for r in rows]
        ax.bar(xs, ys, color=colors)
        ax.set_xticks(xs, labels, rotation=30, ha="right")
        ax.set_title(title)
        ax.set_ylabel(ylab)
    fig.suptitle(f"migctl bench on {result.gpu_model}: best configuration per instance size")
    fig.tight_layout()
    fig.savefig(str(path), dpi=100)
    plt.close(fig)
