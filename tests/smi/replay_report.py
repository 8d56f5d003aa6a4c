"""Measure the replay of the real nvidia-smi captures: outputs identical / total, per model and driver branch.

Usage (from the repository root, with PYTHONPATH=src):

    python tests/smi/replay_report.py            # the table (Markdown), as in docs/smi.md (captures + seeds)
    python tests/smi/replay_report.py --diff     # also a unified diff for every output that differs

Runs the same replay as tests/smi/test_capture_replay.py, through migctl's real entry point.
"""

from __future__ import annotations

import contextlib
import difflib
import io
import os
import sys
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

from capturelib import Result, load_all, normalise, replay  # noqa: E402


def _runner(tmp: Path) -> Any:
    from migctl.cli.main import main

    def run(spec: str, *words: str) -> tuple[int, str]:
        state = tmp / (spec.replace("@", "_").replace(",", "_") + ".json")
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(["--sim", spec, "--sim-state", str(state), "smi", *words])
        return code, out.getvalue() or err.getvalue()  # as tests/smi/conftest.py: nvidia-smi's output is stdout

    return run


def _opener(tmp: Path, spec: str) -> Any:
    from migctl.device import open_node

    state = tmp / (spec.replace("@", "_").replace(",", "_") + ".json")
    return lambda: open_node(sim=spec, sim_state=str(state))


def measure() -> list[tuple[Any, list[Result]]]:
    import migctl.sim as sim

    out = []
    for src in load_all():
        with tempfile.TemporaryDirectory() as d:
            os.environ["MIGCTL_STATE_DIR"] = d
            try:
                out.append((src, list(replay(src, _runner(Path(d)), _opener(Path(d), src.spec)))))
            finally:
                sim.uninstall()
    return out


def measure_seeds() -> list[tuple[str, str, int, int]]:
    """The two seed pages (tests/fixtures/seeds), replayed as tests/smi/test_seed_replay.py does."""
    from seedlib import extract, find_block, seed_path
    from seedlib import normalise as seed_norm

    import migctl.sim as sim

    out = []
    with tempfile.TemporaryDirectory() as d:
        os.environ["MIGCTL_STATE_DIR"] = d
        run = _runner(Path(d))
        try:
            ok = total = 0
            for step in extract(seed_path("003_"), "An example on a node with 4 A30"):
                code, output = run("4xA30@545.23.08", *step.argv)
                if not step.expected:
                    continue
                summary = step.argv == []
                got = [seed_norm(x, telemetry=summary) for x in output.splitlines()]
                want = [seed_norm(x, telemetry=summary) for x in step.expected]
                total += 1
                ok += (find_block(got, want) >= 0) if summary else (got == want)
            out.append(("A30 (seed 003)", "R545", ok, total))
            text = seed_path("000_").read_text().splitlines()
            start = next(i for i, x in enumerate(text) if x.startswith("sudo nvidia-smi mig -lgip")) + 1
            end = next(i for i in range(start, len(text)) if not text[i].startswith(("+", "|")))
            run("1xH100-80GB", "-mig", "1")
            code, output = run("1xH100-80GB", "mig", "-lgip")
            out.append(("H100-80GB (seed 000)", "not shown", int(output.splitlines() == text[start:end]), 1))
        finally:
            sim.uninstall()
    return out


def table(measured: list[tuple[Any, list[Result]]], seeds: list[tuple[str, str, int, int]] = ()) -> str:
    rows: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0, 0])
    for src, results in measured:
        key = (src.model, src.branch if src.branch != "unknown" else "not shown")
        rows[key][0] += sum(r.identical for r in results)
        rows[key][1] += len(results)
        rows[key][2] += 1
    for model, branch, ok, total in seeds:
        rows[(model, branch)] = [ok, total, 1]
    lines = ["| GPU model | Driver branch | Sources | Outputs identical / total |", "|---|---|---|---|"]
    for (model, branch), (ok, total, n) in sorted(rows.items()):
        lines.append(f"| {model} | {branch} | {n} | {ok} / {total} |")
    ok = sum(v[0] for v in rows.values())
    total = sum(v[1] for v in rows.values())
    lines.append(f"| **all** | | {len(measured) + len(seeds)} | **{ok} / {total}** |")
    return "\n".join(lines)


def main() -> int:
    measured = measure()
    print(table(measured, measure_seeds()))
    if "--diff" in sys.argv:
        for _, results in measured:
            for r in results:
                if r.identical:
                    continue
                want = [normalise(x, r.step.normalise) for x in (r.step.output or [])]
                got = [normalise(x, r.step.normalise) for x in r.output.rstrip("\n").split("\n")]
                print(f"\n### {r.step} (exit {r.code}; expected: {r.step.expect})")
                print("\n".join(difflib.unified_diff(want, got, "capture", "migctl", lineterm="", n=1)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
