"""Scheduler variants against the greedy baselines: the search behind "migctl reshaping"'s settings.

Run: ``nice -n 10 python benchmarks/dynamic/variants.py`` (about 10 min on 2 cores). Writes variants.json
and variants.md next to this file. Same simulator and traces as run.py (the three families with their
seeds, and the other draws of run.py's robustness section); no upper bound is computed here.

Each variant changes one or two of migctl reshaping's settings, or of its previous default (start order, when a job is starving, how many
reservations at a time, relaxed backfill, the placement rule with or without time limits, keeping idle
instances). For each draw and variant the table names every target metric
(allocation, wait p50, wait p95) that is worse than the best of first-fit, best-fit, best-fit in the driver's
placement order and FGD on that draw,
and by how much; "ok" means none is worse. The longest wait is listed apart: it is what reservations buy.
"""

from __future__ import annotations

import dataclasses
import json
import platform
import sys
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import run  # noqa: E402

from migctl.planner.dynamic import Policy  # noqa: E402

R = run.RESHAPING
R0 = run.PREVIOUS_POLICY  # the default before 2026-12-04: arrival order, no cap on the starving test
BASELINES = {"first-fit": Policy(placement="first"), "best-fit": Policy(placement="best"),
             "best-fit, driver order": Policy(placement="driver"), "FGD": Policy(placement="fgd")}
H = 3600.0
VARIANTS = {
    "migctl reshaping (sjf within a request, cap 4 h)": R,
    "cap 3 h": dataclasses.replace(R, reserve_cap_s=3 * H),
    "cap 5 h": dataclasses.replace(R, reserve_cap_s=5 * H),
    "cap 6 h": dataclasses.replace(R, reserve_cap_s=6 * H),
    "cap 8 h": dataclasses.replace(R, reserve_cap_s=8 * H),
    "no cap": dataclasses.replace(R, reserve_cap_s=None),
    "arrival order (fifo), cap 4 h": dataclasses.replace(R, order="fifo"),
    "cap 4 h, 2 reservations": dataclasses.replace(R, max_reservations=2),
    "cap 4 h, no reservations": dataclasses.replace(R, reserve_after_s=None),
    # the previous default and the variants of it searched before 2026-12-04
    "previous default (fifo, no cap, 1 reservation)": R0,
    "no reservations": dataclasses.replace(R0, reserve_after_s=None),
    "starving after 2 h": dataclasses.replace(R0, reserve_after_s=7200.0),
    "starving after 4 h": dataclasses.replace(R0, reserve_after_s=14400.0),
    "starving at 2 x own limit": dataclasses.replace(R0, reserve_slowdown=2.0),
    "starving at 3 x own limit": dataclasses.replace(R0, reserve_slowdown=3.0),
    "2 reservations": dataclasses.replace(R0, max_reservations=2),
    "3 reservations": dataclasses.replace(R0, max_reservations=3),
    "order hrrn": dataclasses.replace(R0, order="hrrn"),
    "order hrrn, 2 reservations": dataclasses.replace(R0, order="hrrn", max_reservations=2),
    "order sjf": dataclasses.replace(R0, order="sjf"),
    "order sjf within a request": dataclasses.replace(R0, order="sjf-request"),
    "placement first-fit": dataclasses.replace(R0, placement="first"),
    "placement best-fit": dataclasses.replace(R0, placement="best"),
    "placement FGD": dataclasses.replace(R0, placement="fgd"),
    "placement best-fit, driver order": dataclasses.replace(R0, placement="driver"),
    "order hrrn, placement best-fit": dataclasses.replace(R0, order="hrrn", placement="best"),
    "relaxed backfill, 0.25 x limit": dataclasses.replace(R0, backfill_slack=0.25),
    "relaxed backfill, 0.5 x limit": dataclasses.replace(R0, backfill_slack=0.5),
    "relaxed backfill, 1 x limit": dataclasses.replace(R0, backfill_slack=1.0),
    "idle instances destroyed at once": dataclasses.replace(R0, keep_idle=False),
    "idle destroyed at once, placement best-fit": dataclasses.replace(R0, keep_idle=False, placement="best"),
    "lifetime-aware placement": dataclasses.replace(R0, lifetime=True),
    "idle destroyed at once, lifetime-aware placement": dataclasses.replace(R0, keep_idle=False, lifetime=True),
}
DRAWS: list[tuple[str, int | None]] = [("alibaba", None), ("parvagpu", None), ("synthetic", None)] + [
    (fam, seed) for fam, seeds in run.ROBUST_SEEDS.items() for seed in seeds]


def simulated(models: list, trace: run.Trace, name: str, policy: Policy, extra: tuple[str, ...] = ()) -> dict:
    """Replay ``trace`` under ``policy`` (:func:`run.simulate`): the figures the comparison tables and checks
    read (``extra``: more of the run's top-level figures, after the waits), and how long the run took."""
    t = time.perf_counter()
    r = run.simulate(models, trace, name, policy)
    return {"allocation": r["allocation"], "wait_p50_s": r["wait_p50_s"], "wait_p95_s": r["wait_p95_s"],
            "wait_max_s": r["wait_max_s"], **{k: r[k] for k in extra}, "busy_destroyed": r["busy_destroyed"],
            "violations": r["starvation"]["violations"], "reservations": r["reservations"],
            "time_s": round(time.perf_counter() - t, 1)}


def _one(fam: str, seed: int | None, name: str) -> dict:
    models, trace, _ = run.families({fam: seed} if seed is not None else None)[fam]
    return simulated(models, trace, name, BASELINES.get(name) or VARIANTS[name], extra=("never_started",))


def _label(fam: str, seed: int | None) -> str:
    return fam if seed is None else f"{fam} seed {seed}"


def run_all(tasks: list[tuple], one: Callable[..., dict], label: Callable[..., str]) -> dict[tuple, dict]:
    """``one(*task)`` for every task (the last item names the method) in run.WORKERS processes, printing each."""
    out: dict[tuple, dict] = {}
    with ProcessPoolExecutor(max_workers=run.WORKERS) as pool:
        futs = {pool.submit(one, *t): t for t in tasks}
        for fut in as_completed(futs):
            t = futs[fut]
            out[t] = r = fut.result()
            print(f"{label(*t[:-1]):22s} {t[-1]:50s} alloc {100 * r['allocation']:6.2f}% p50 {r['wait_p50_s']} "
                  f"p95 {r['wait_p95_s']} max {r['wait_max_s']} ({r['time_s']} s)", flush=True)
    return out


def run_and_write(stem: str, key: str, groups: list[tuple], methods: list[str], one: Callable[..., dict],
                  label: Callable[..., str], markdown: Callable[[dict], str], first: Callable[[tuple], Any]) -> int:
    """Run every method and baseline on every group (``one(*group, method)``, ``first`` orders the tasks),
    write <stem>.json (``key``: label -> method -> figures) and <stem>.md next to this file; 1 if a check failed."""
    t0 = time.perf_counter()
    tasks = sorted([(*g, name) for g in groups for name in [*methods, *BASELINES]], key=first)
    res: dict = {"machine": platform.platform(), "python": platform.python_version(), key: {}}
    out = run_all(tasks, one, label)
    for g in groups:
        res[key][label(*g)] = {name: out[(*g, name)] for name in [*BASELINES, *methods]}
    res["time_s"] = round(time.perf_counter() - t0, 1)
    (HERE / f"{stem}.json").write_text(json.dumps(res, indent=1) + "\n")
    (HERE / f"{stem}.md").write_text(markdown(res))
    return 1 if failed(res[key]) else 0


def failed(groups: dict[str, dict[str, dict]]) -> list[str]:
    """"group / method" of every run that destroyed a busy instance or broke the starvation bound."""
    return [f"{g} / {n}" for g, runs in groups.items() for n, r in runs.items() if r["busy_destroyed"] or r["violations"]]


def checks_line(groups: dict[str, dict[str, dict]]) -> str:
    bad = failed(groups)
    return ("Checks: busy instances destroyed and starvation-bound violations over every run: "
            f"{'none' if not bad else ', '.join(bad)}.")


def worse(draw: dict[str, dict], name: str) -> list[str]:
    """The target metrics on which ``name`` is worse than the best baseline of its draw, with the gap."""
    r = draw[name]
    base = [draw[b] for b in BASELINES]
    out = []
    best_a = max(b["allocation"] for b in base)
    if r["allocation"] < best_a - 1e-9:
        out.append(f"alloc {100 * (r['allocation'] - best_a):+.2f} pp")
    for key, what in (("wait_p50_s", "p50"), ("wait_p95_s", "p95")):
        best = min(b[key] for b in base)
        if r[key] > best + 1e-9:
            out.append(f"{what} +{run._h(r[key] - best)}")
    return out


def worse_rows(groups: dict[str, dict[str, dict]], methods: list[str], what: str = "variant",
               of: str = "draws") -> list[str]:
    """A table: per method, how many groups it passes and what it misses in each (:func:`worse`)."""
    rows = [f"| {what} | {of} ok | " + " | ".join(groups) + " |", "|---|---|" + "---|" * len(groups)]
    for name in methods:
        cells = [", ".join(worse(groups[g], name)) or "ok" for g in groups]
        rows.append(f"| {name} | {sum(c == 'ok' for c in cells)}/{len(cells)} | " + " | ".join(cells) + " |")
    return rows


def generated(res: dict, script: str) -> str:
    """The first words of a results file: the command, how long it ran, where."""
    return (f"Generated by `nice -n 10 python benchmarks/dynamic/{script}` in {res['time_s']:.0f} s on "
            f"{res['machine']}, Python {res['python']}.")


def markdown(res: dict) -> str:
    draws = list(res["draws"])
    lines = [
        "# Scheduler variants against the greedy baselines",
        "",
        generated(res, "variants.py") + " Same simulator and traces as results.md (the three families and the "
        "other draws of its robustness section); no upper bound here.",
        "",
        "Each cell names the target metrics on which the variant is worse than the best of first-fit, best-fit, "
        "best-fit in the driver's placement order and FGD on that draw (allocation in percentage points, waits as extra time); `ok` = none worse. "
        "Every variant keeps migctl reshaping's other settings (keep idle instances, reshape idle ones only, "
        "hysteresis, churn cap) unless its name says otherwise: the rows above the previous default change "
        "the default (start order sjf within a request; a job is starving once it has waited 1 h and its own "
        "limit, or the cap, 4 h, whatever its limit); the previous default (arrival order, no cap) and the rows "
        "below it change that previous default, as the search before 2026-12-04 did. fifo = arrival order; hrrn = highest (wait + "
        "limit) / limit first; sjf = shortest limit first; sjf within a request = arrival order between jobs that "
        "ask for different things, shortest limit first among jobs that ask for the same (interchangeable for the "
        "fleet); with every order the reservation goes to the oldest "
        "starving job. Relaxed backfill: later jobs may end up to that multiple of the reserved job's limit "
        "after its reservation starts (the bound grows by as much). Idle instances destroyed at once: no idle "
        "instance is kept for reuse, as a plain dynamic-MIG scheduler does (reshaping then has nothing to do). "
        "Lifetime-aware placement: migctl's rule knowing the time limits (a new instance goes where it pushes a "
        "GPU's drain time back least; results.md, \"The placement rule alone\").",
        "",
        *worse_rows(res["draws"], list(VARIANTS)),
    ]
    lines += ["", "Longest wait (what reservations bound) against the best baseline's longest wait:", "",
              "| variant | " + " | ".join(draws) + " |", "|---|" + "---|" * len(draws)]
    for name in VARIANTS:
        cells = []
        for d in draws:
            mx = res["draws"][d][name]["wait_max_s"]
            best = min(res["draws"][d][b]["wait_max_s"] for b in BASELINES)
            cells.append(f"{run._h(mx)} ({'better' if mx < best else 'worse' if mx > best else 'equal'})")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "Baselines per draw (allocation / wait p50 / wait p95 / wait max):", "",
              "| draw | " + " | ".join(BASELINES) + " |", "|---|" + "---|" * len(BASELINES)]
    for d in draws:
        cells = [f"{100 * res['draws'][d][b]['allocation']:.2f}% / {run._h(res['draws'][d][b]['wait_p50_s'])} / "
                 f"{run._h(res['draws'][d][b]['wait_p95_s'])} / {run._h(res['draws'][d][b]['wait_max_s'])}"
                 for b in BASELINES]
        lines.append(f"| {d} | " + " | ".join(cells) + " |")
    lines += ["", checks_line(res["draws"]), ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    run.no_options(__doc__, argv)
    run._FAMILIES = None
    return run_and_write("variants", "draws", DRAWS, list(VARIANTS), _one, _label, markdown,
                         first=lambda t: t[0] != "alibaba")  # the slowest first


if __name__ == "__main__":
    raise SystemExit(main())
