"""Dynamic partitioning benchmark: job arrivals and departures replayed on a simulated cluster, in simulated
time (an event loop, no sleeping), for static layouts, online placement rules and migctl's scheduler.

Run: ``nice -n 10 python benchmarks/dynamic/run.py`` (a few minutes on 2 cores). Writes results.json,
results.md and plot.png next to this file. Data: ./data (copies, with source and licence in
data/README.md); nothing is read from outside the repository.

Families:
(a) Alibaba v2023 (openb_pod_list_default.csv): every GPU task with its own creation and deletion time;
(b) ParvaGPU deployment mixes: the instance sizes of ParvaGPU's published plans for SLO sets 1..6, one
    phase per set (the mix shifts as the phases follow each other), Poisson arrivals, exponential run times;
(c) small-skewed synthetic mix on a mixed A100-80GB + H100-80GB fleet.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import heapq
import json
import math
import platform
import random
import statistics
import sys
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

HERE = Path(__file__).resolve().parent
DATA = HERE / "data"
sys.path.insert(0, str(HERE.parents[1] / "src"))

from migctl.catalog import load_model  # noqa: E402
from migctl.catalog.geometry import place_all  # noqa: E402
from migctl.planner.bound import PackingBound  # noqa: E402
from migctl.planner.dynamic import Job, Policy, Scheduler  # noqa: E402
from migctl.planner.online import Request  # noqa: E402

A100 = load_model("A100-80GB")
H100 = load_model("H100-80GB")
SIZE_TO_PROFILE = {1: "1g.10gb", 2: "2g.20gb", 3: "3g.40gb", 4: "4g.40gb", 5: "7g.80gb", 6: "7g.80gb", 7: "7g.80gb"}
MAPPING = ("num_gpu == 1: compute slices = ceil(7 x gpu_milli / 1000) -> 1g.10gb, 2g.20gb, 3g.40gb, 4g.40gb, "
           "5..7 -> 7g.80gb; num_gpu = k >= 2: a gang of k 7g.80gb (whole GPUs) started together; "
           "num_gpu == 0 skipped. Run time = deletion_time - creation_time (the pod's lifetime in the trace).")
RESERVE_AFTER_S = 3600.0
RESERVE_SLOWDOWN = 1.0  # a job is starving once it has waited reserve_after_s and its own time limit ...
RESERVE_CAP_S = 4 * 3600.0  # ... or this long, whatever its limit (a pod with a limit of days waits no days for it)
ORDER = "sjf-request"  # arrival order between requests, the shortest limit first among jobs asking for the same
LOAD = 0.95
HYSTERESIS_S = 60.0
MAX_RECONFIG_PER_MIN = 30.0

# mig-parted's "all-balanced" for A100-80GB and H100-80GB (deployments/.../nvidia-mig-manager example config)
ALL_BALANCED = {"1g.10gb": 2, "2g.20gb": 1, "3g.40gb": 1}


RESHAPING = Policy(placement="migctl", keep_idle=True, reshape=True, hysteresis_s=HYSTERESIS_S,
                   hysteresis_blocks=False, reshape_reserved=True, reshape_gangs=True,
                   max_reconfig_per_min=MAX_RECONFIG_PER_MIN, reserve_after_s=RESERVE_AFTER_S,
                   reserve_slowdown=RESERVE_SLOWDOWN, reserve_cap_s=RESERVE_CAP_S, order=ORDER)


NO_RES = "migctl reshaping, no reservations (ablation)"
NO_LIFE = "migctl online, no time limits (ablation)"
PREVIOUS = "migctl reshaping, arrival order, no cap (ablation)"
PREVIOUS_POLICY = dataclasses.replace(RESHAPING, order="fifo", reserve_cap_s=None)  # the settings before 2026-12-04


def method_policies() -> dict[str, Policy]:
    return {
        "static all-balanced": Policy(static=True),
        "static all-1g": Policy(static=True),
        "first-fit": Policy(placement="first"),
        "best-fit": Policy(placement="best"),
        "best-fit, driver order": Policy(placement="driver"),
        "fragmentation gradient (FGD)": Policy(placement="fgd"),
        "migctl online": Policy(placement="migctl", lifetime=True),
        "migctl reshaping": RESHAPING,
        "migctl reshaping + MPS sharing": dataclasses.replace(RESHAPING, share=True),
        NO_RES: dataclasses.replace(RESHAPING, reserve_after_s=None),
        PREVIOUS: PREVIOUS_POLICY,
        NO_LIFE: Policy(placement="migctl"),
    }


def static_layout(model, name: str) -> list[tuple[int, int]]:
    if name == "static all-1g":
        profs = [model.profile("1g.10gb")] * 7
    else:
        profs = [model.profile(p) for p, n in ALL_BALANCED.items() for _ in range(n)]
    placed = place_all(model, profs)
    assert placed is not None
    return [(gi.profile.id, gi.placement.start) for gi in placed]


# ------------------------------------------------------------------------------------------------ traces

Trace = list[tuple[float, float, str, int, float | None]]  # (arrival, run time, profile, gang size, GPU share)


def alibaba(name: str = "default") -> Trace:
    """The GPU tasks of ``openb_pod_list_<name>.csv`` (``default`` or ``gpushare40``), mapped by MAPPING."""
    out: Trace = []
    with (DATA / "alibaba-gpu-v2023" / f"openb_pod_list_{name}.csv").open(newline="") as f:
        for row in csv.DictReader(f):
            n, milli = int(row["num_gpu"]), int(row["gpu_milli"])
            if n == 0:
                continue
            t0, t1 = float(row["creation_time"]), float(row["deletion_time"])
            prof = SIZE_TO_PROFILE[max(1, math.ceil(7 * milli / 1000))] if n == 1 else "7g.80gb"
            share = milli / 1000 if n == 1 and milli < 1000 else None
            out.append((t0, max(1.0, t1 - t0), prof, n, share))
    out.sort(key=lambda r: r[0])
    return out


def parvagpu_phases() -> list[list[str]]:
    phases = []
    for k in range(1, 7):
        with (DATA / "parvagpu" / "deployment" / f"SLO{k}" / f"SLO{k}_ParvaGPU_deploy.csv").open(newline="") as f:
            phases.append([SIZE_TO_PROFILE[int(r["Instance size"])] for r in csv.DictReader(f)])
    return phases


def poisson(mixes: list[list[str]], weights_of: Callable[[int], list[float]] | None, n_jobs: int, capacity: int,
            load: float, mean_run: float, seed: int) -> Trace:
    """Jobs drawn phase by phase from ``mixes``; arrival rate set so the offered load is ``load`` x capacity."""
    rnd = random.Random(seed)
    per = n_jobs // len(mixes)
    out: Trace = []
    t = 0.0
    for i, mix in enumerate(mixes):
        w = weights_of(i) if weights_of else None
        mean_slices = (sum(A100.profile(p).slices * (w[j] if w else 1) for j, p in enumerate(mix))
                       / (sum(w) if w else len(mix)))
        rate = load * capacity / (mean_slices * mean_run)
        for _ in range(per):
            t += rnd.expovariate(rate)
            prof = rnd.choices(mix, weights=w)[0]
            out.append((t, rnd.expovariate(1 / mean_run), prof, 1, None))
    return out


# ------------------------------------------------------------------------------------------------ simulation


def simulate(models: list, trace: Trace, name: str, policy: Policy, bound: PackingBound | None = None) -> dict:
    """Replay ``trace`` under ``policy``; every figure comes from this event loop.

    ``bound`` gives the upper bound: at each instant, the offline optimum for the jobs present in this
    method's own run (running or waiting): the most compute slices of them that the fleet can hold at once
    (:class:`PackingBound`). Fractional jobs (a GPU share) count their share: with sharing, the optimum of
    the other jobs plus all shares up to the capacity left (MPS can pack shares without waste); without
    sharing, also at most the optimum with each fractional job as its rounded profile (it holds such an
    instance and asks at most its slices).
    """
    initial = [static_layout(m, name) for m in models] if policy.static else None
    sch = Scheduler(models, policy, initial=initial)
    capacity = sum(m.compute_slices for m in models)
    reqs: dict[str, Request] = {}
    events: list[tuple[float, int, int]] = []  # (time, kind 0=finish 1=arrive 2=tick, job index)
    for i, (t, _run, _prof, _n, _sh) in enumerate(trace):
        heapq.heappush(events, (t, 1, i))
    jobs: dict[int, Job] = {}
    waits: list[float] = []
    area = 0.0
    bound_area = 0.0
    last = trace[0][0]
    series: list[tuple[float, float, float]] = []
    units: dict[str, int] = {}  # present jobs' instances per profile name (fractional jobs apart)
    units_all: dict[str, int] = {}  # the same with fractional jobs as their rounded profile
    frac = 0.0  # present fractional jobs' GPU shares, in compute slices
    dirty = True
    opt = 0.0
    ticks: set[float] = set()
    above = 0
    by_kind: dict[str, list[float]] = {}
    t = last
    t_end = trace[-1][0]  # allocation is measured while the trace runs (first to last arrival)
    seven = A100.compute_slices

    def present(i: int, sign: int) -> None:
        nonlocal frac, dirty
        _t, _run, prof, n, sh = trace[i]
        if sh is not None:
            frac += sign * sh * seven
        else:
            units[prof] = units.get(prof, 0) + sign * n
        units_all[prof] = units_all.get(prof, 0) + sign * n
        dirty = True

    def current_bound() -> float:
        nonlocal opt, dirty
        if dirty:
            if bound is None:
                opt = min(capacity, sum(A100.profile(p).slices * c for p, c in units_all.items()))
            else:
                opt = min(capacity, bound.optimum(units) + frac)
                if frac and not policy.share:
                    # without sharing every job holds an instance of its profile, and asks at most its slices
                    opt = min(opt, bound.optimum(units_all))
            dirty = False
        return opt

    while events:
        t, kind, i = heapq.heappop(events)
        if last < t_end:
            dt = min(t, t_end) - last
            if dt > 0:
                alloc = sch.allocated_slices()
                area += alloc * dt
                bound_area += current_bound() * dt
                if alloc > current_bound() + 1e-6:
                    above += 1  # would make the bound wrong: reported, must stay 0
        last = t
        if kind == 0:
            sch.finish(i, t)
            present(i, -1)
        elif kind == 1:
            _t, run, prof, n, sh = trace[i]
            if prof not in reqs:
                reqs[prof] = Request.for_profile(list({m.key: m for m in models}.values()), prof)
            job = Job(id=i, request=reqs[prof], submit=t, limit=run, count=n, share=sh)
            jobs[i] = job
            sch.submit(job)
            present(i, +1)
        # all events at the same instant before scheduling
        if events and events[0][0] == t:
            continue
        for job in sch.step(t):
            waits.append(t - job.submit)
            by_kind.setdefault(_kind(trace[job.id]), []).append(t - job.submit)
            heapq.heappush(events, (t + trace[job.id][1], 0, job.id))
        if sch.waiting and (policy.reshape or policy.reserve_after_s is not None):
            nxt = _next_tick(sch, t, policy)
            if nxt is not None and nxt not in ticks:
                ticks.add(nxt)
                heapq.heappush(events, (nxt, 2, -1))
        if t <= t_end and (not series or t - series[-1][0] >= (trace[-1][0] - trace[0][0]) / 400):
            series.append((t, sch.allocated_slices() / capacity, current_bound() / capacity))
    span = t_end - trace[0][0]
    never = len(sch.waiting) + len(sch.unservable)
    end_waits = [last - j.submit for j in sch.waiting + sch.unservable]
    hours = span / 3600
    ops = sch.stats["created"] + sch.stats["destroyed"]
    if policy.static:
        ops = 0  # the static layout is created once, before the trace
    return {
        "allocation": round(area / span / capacity, 4),
        "upper_bound": round(bound_area / span / capacity, 4),
        "above_bound": above,
        "jobs": len(trace),
        "started": len(waits),
        "never_started": never,
        "wait_p50_s": round(statistics.median(waits), 1) if waits else None,
        "wait_p95_s": round(_pct(waits, 95), 1) if waits else None,
        "wait_max_s": round(max(waits), 1) if waits else None,
        "unstarted_wait_max_s": round(max(end_waits), 1) if end_waits else 0.0,
        "reconfig_per_hour": round(ops / hours, 3),
        "instances_destroyed": sch.stats["destroyed"] if not policy.static else 0,
        "reshape_destroyed": sch.stats["reshape_destroyed"],
        "busy_destroyed": sch.stats["busy_destroyed"],
        "reused": sch.stats["reused"],
        "joined": sch.stats["joined"],
        "reservations": sch.stats["reservations"],
        "reservations_late": sch.stats["reservations_late"],
        "starvation": starvation(sch, waits, last),
        "wait_p50_by_kind_s": {k: round(statistics.median(v), 1) for k, v in sorted(by_kind.items())},
        "started_by_kind": {k: len(v) for k, v in sorted(by_kind.items())},
        "series": [(round(a, 1), round(b, 4), round(c, 4)) for a, b, c in series],
    }


def _kind(row: tuple) -> str:
    _t, _run, prof, n, sh = row
    return "gang" if n > 1 else "fractional" if sh is not None else prof


def starvation(sch: Scheduler, waits: list[float], now: float) -> dict:
    """Check the documented bound for every job that got a reservation: it starts by the reserved time, so
    its wait is at most (reservation made - submit) + the longest time limit among the jobs in the way of
    its reserved placements then. ``to_reservation`` is how long jobs waited before their reservation was
    made (at least reserve_after_s; longer while older jobs held the reservations)."""
    viol = 0
    worst_wait = 0.0
    worst_bound = 0.0
    slack = float("inf")
    to_res = 0.0
    for job, res in sch.reservation_log:
        bound = (res.made - job.submit) + res.way_limit + res.slack
        start = job.start if job.start is not None else now
        wait = start - job.submit
        late = job.start is None and now > res.due + 1e-6
        if late or (job.start is not None and (job.start > res.due + 1e-6 or wait > bound + 1e-6)):
            viol += 1
        worst_wait = max(worst_wait, wait)
        worst_bound = max(worst_bound, bound)
        slack = min(slack, bound - wait)
        to_res = max(to_res, res.made - job.submit)
    return {"reserved_jobs": len(sch.reservation_log), "violations": viol,
            "max_wait_s": round(worst_wait, 1), "max_bound_s": round(worst_bound, 1),
            "min_slack_s": round(slack, 1) if sch.reservation_log else None,
            "max_to_reservation_s": round(to_res, 1)}


def _next_tick(sch: Scheduler, now: float, policy: Policy) -> float | None:
    cands = []
    if sch._reshape_times:
        cands.append(sch._reshape_times[0] + 60.0)
    if policy.hysteresis_blocks:  # otherwise hysteresis never makes a job wait: no need to wake up for it
        for k, o in sch.owner.items():
            if o is None and k in sch.idle_since and sch.idle_since[k] + policy.hysteresis_s > now:
                cands.append(sch.idle_since[k] + policy.hysteresis_s)
    for j in sch.waiting:
        due = sch.starving_from(j)
        if due is not None and due > now:
            cands.append(due)
    for r in sch.all_reservations():
        if r.at > now:
            cands.append(r.at)
    later = [c for c in cands if c > now]
    return min(later) if later else None


def _pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    k = max(0, min(len(s) - 1, math.ceil(q / 100 * len(s)) - 1))
    return s[k]


# ------------------------------------------------------------------------------------------------ families


def families(seeds: dict[str, int] | None = None) -> dict[str, tuple[list, Trace, str]]:
    """The three families; ``seeds`` replaces the seeds of the generated ones (ParvaGPU 1, synthetic 2)."""
    seeds = {"parvagpu": 1, "synthetic": 2, **(seeds or {})}
    out = {}
    n_ali = 40
    ali = alibaba()
    out["alibaba"] = ([A100] * n_ali, ali,
                      f"Alibaba v2023 default trace, all {len(ali)} GPU tasks with their creation and deletion "
                      f"times, on {n_ali} A100-80GB (demand peaks at about 135% of their capacity near the end of the trace). "
                      f"Mapping: {MAPPING}")
    n_p = 16
    phases = parvagpu_phases()
    out["parvagpu"] = ([A100] * n_p, poisson(phases, None, 3000, n_p * 7, LOAD, 3600.0, seed=seeds["parvagpu"]),
                       f"ParvaGPU's published deployment plans for SLO sets 1..6 (their instance sizes, "
                       f"{sum(len(p) for p in phases)} instances), one phase per set in order, 500 jobs per phase "
                       f"drawn from that set's instances, Poisson arrivals at {100 * LOAD:.0f}% offered load on {n_p} A100-80GB, "
                       f"exponential run times (mean 1 h), seed {seeds['parvagpu']}")
    mix = ["1g.10gb", "1g.20gb", "2g.20gb", "3g.40gb", "4g.40gb", "7g.80gb"]
    w = [70, 6, 12, 6, 3, 3]
    fleet = [A100] * 8 + [H100] * 8
    out["synthetic"] = (fleet, poisson([mix], lambda _i: w, 3000, len(fleet) * 7, LOAD, 3600.0, seed=seeds["synthetic"]),
                        "small-skewed synthetic mix (1g.10gb 70%, 1g.20gb 6%, 2g.20gb 12%, 3g.40gb 6%, 4g.40gb 3%, "
                        f"7g.80gb 3%) on 8 A100-80GB + 8 H100-80GB, Poisson arrivals at {100 * LOAD:.0f}% offered load, "
                        f"exponential run times (mean 1 h), 3000 jobs, seed {seeds['synthetic']}")
    return out


# other seeds of the generated families, to see whether a result holds beyond one draw (no bound computed;
# static layouts and the sharing row, equal to reshaping there, left out)
ROBUST_SEEDS = {"parvagpu": (11, 12, 13), "synthetic": (21, 22, 23)}
ROBUST_METHODS = ("first-fit", "best-fit", "best-fit, driver order", "fragmentation gradient (FGD)", "migctl reshaping",
                  "migctl online", NO_LIFE)


def plot(res: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fams = list(res["families"])
    fig, axes = plt.subplots(len(fams), 1, figsize=(11, 3.4 * len(fams)))
    for ax, fam in zip(axes, fams, strict=True):
        fr = res["families"][fam]
        for name, r in fr["methods"].items():
            ser = r["series"]
            if not ser:
                continue
            t0 = ser[0][0]
            xs = [(t - t0) / 3600 for t, _a, _b in ser]
            ax.plot(xs, [100 * a for _t, a, _b in ser], label=name, lw=1.7 if name.startswith("migctl") else 0.9)
            if name == "migctl reshaping":
                ax.plot(xs, [100 * b for _t, _a, b in ser], "k:", lw=1.1,
                        label="upper bound: offline optimum for the jobs present (migctl reshaping's run)")
        ax.set_title(f"{fam}: share of GPU compute slices allocated to running jobs")
        ax.set_xlabel("simulated hours")
        ax.set_ylabel("%")
        ax.set_ylim(0, 105)
    axes[0].legend(fontsize=7, ncol=3, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def _h(s: float | None) -> str:
    if s is None:
        return "-"
    if s < 120:
        return f"{s:.0f} s"
    if s < 7200:
        return f"{s / 60:.0f} min"
    return f"{s / 3600:.1f} h"


OURS = ("migctl reshaping", "migctl reshaping + MPS sharing")
TARGET = [("allocation", "allocation", True), ("wait_p50_s", "wait p50", False), ("wait_p95_s", "wait p95", False)]
OTHER = [("wait_max_s", "wait max", False), ("reconfig_per_hour", "reconf/h", False)]


def compare(fr: dict, ours: str) -> list[tuple[str, float, float, str, str]]:
    """(metric, ours, best baseline, its name, verdict) for the target metrics and the others."""
    o = fr["methods"][ours]
    base = {n: r for n, r in fr["methods"].items() if not n.startswith("migctl") and r["never_started"] == 0}
    out = []
    for key, _label, higher in TARGET + OTHER:
        best = (max if higher else min)(base, key=lambda n, key=key: base[n][key])
        b, v = base[best][key], o[key]
        verdict = "better" if (v > b if higher else v < b) else "equal" if v == b else "worse"
        out.append((key, v, b, best, verdict))
    return out


def verdict(res: dict, ours: str) -> tuple[bool, list[str], list[str]]:
    """Whether ``ours`` meets the target (at least the best baseline on allocation, wait p50 and wait p95 in
    every family, strictly better on at least one of them in at least two families), the families where it
    is strictly better (with the metrics), and where it falls short."""
    better, short = [], []
    for fam, fr in res["families"].items():
        rows = {k: (v, b, n, vd) for k, v, b, n, vd in compare(fr, ours)}
        wins = [label for key, label, _h in TARGET if rows[key][3] == "better"]
        losses = [label for key, label, _h in TARGET if rows[key][3] == "worse"]
        if wins and not losses:
            better.append(f"{fam} ({', '.join(wins)})")
        if losses:
            short.append(f"{fam} ({', '.join(losses)})")
    return (not short and len(better) >= 2), better, short


def markdown(res: dict) -> str:
    pol = res["policy"]
    lines = [
        "# Dynamic partitioning benchmark",
        "",
        "Generated by `nice -n 10 python benchmarks/dynamic/run.py` (simulated time: an event loop over arrivals "
        f"and departures, no sleeping); {res['time_s']} s on {res['machine']}, Python {res['python']}.",
        "",
        "Methods: **static all-balanced** (mig-parted's all-balanced layout, 2x1g.10gb + 2g.20gb + 3g.40gb, on "
        "every GPU; a job takes the smallest free instance at least as large), **static all-1g** (7x1g.10gb), "
        "**first-fit**, **best-fit**, **best-fit, driver order** (best-fit's GPU, the placement the driver picks "
        "when none is given: nvidia-smi's default) and **fragmentation gradient** (an instance is created for "
        "each job by that rule and destroyed when it ends), **migctl online** (migctl's placement rule, same protocol, knowing each "
        "job's time limit: after stranded slices and a used GPU first, the GPU whose drain time the job pushes "
        "back least; the ablation row without time limits is the rule of the FGD-protocol benchmark), "
        "**migctl reshaping** (migctl's rule; finished jobs' instances are kept idle and reused; when a job "
        "fits nowhere the fewest idle instances on one GPU are destroyed, never busy ones, gangs included once "
        "every unit has room; idle instances younger than "
        f"{pol['hysteresis_s']:g} s are destroyed only when no older ones make room (never a reason to wait); "
        f"at most {pol['max_reconfig_per_min']:g} reshaping destroys per minute; "
        f"waiting jobs start in arrival order between requests, the shortest time limit first among jobs that "
        f"ask for the same thing (start order `{pol['order']}`); "
        f"a job is starving once it has waited {pol['reserve_after_s']:g} s and "
        f"{pol['reserve_slowdown']:g} x its own time limit or {_h(pol['reserve_cap_s'])} whatever its limit; "
        f"the oldest starving job gets a reservation, "
        f"{pol['max_reservations']} at a time, conservative backfill around it), "
        "**migctl reshaping + MPS sharing** (the same, and jobs that ask for a fraction of a GPU run as MPS "
        "clients: they join a shared instance whose clients' shares add up to at most 100% of its threads, "
        "with memory limits proportional to the shares; a new shared instance is a whole GPU when one is free, "
        "else the job's own profile; a shared instance is busy while it has a client). Only the Alibaba trace "
        "has fractional jobs (num_gpu == 1, gpu_milli < 1000: share = gpu_milli / 1000); on the other families "
        "no job asks for a fraction and the sharing row equals reshaping. Every method: all waiting jobs that "
        "fit start, in arrival order (a reserved job first; the migctl reshaping rows in their start order). "
        f"Ablations (not candidates): reshaping with reservations off; reshaping in arrival order without the "
        f"cap (the settings before 2026-12-04, row `{PREVIOUS}`); migctl online without time limits.",
        "",
        "What the scheduler knows: each job's time limit, which reservations trust (conservative backfill), "
        "is its run time (a Slurm user's limit that is exact; a limit above the run time only delays reserved "
        "starts less tightly). Arrivals, sizes and run times of future jobs are never used.",
        "",
        "Starvation: a job is starving once it has waited reserve_after_s and reserve_slowdown x its own "
        "limit or reserve_cap_s whatever its limit; the oldest starving job gets a reservation (one at a "
        "time). Documented bound, checked below for "
        "every job that got a reservation: it starts by its reserved time, so it waits at most (reservation "
        "made - submit) + the longest limit among the jobs in the way then; (made - submit) is at least "
        "max(reserve_after_s, min(reserve_slowdown x limit, reserve_cap_s)) and longer while older starving "
        "jobs hold the reservation. Where demand exceeds capacity for long (the end of the Alibaba trace, up to about 135% of "
        "capacity) the queue of starving jobs grows, no scheduler can bound waits, and the bound holds from the "
        "reservation on; Alibaba's pods run up to 145 days, so a long pod in the way makes the bound large "
        "(the `max bound` column).",
        "",
        "Upper bound (`bound`): at every instant, the offline planner's optimum for the jobs present in that "
        "method's own run (running or waiting): the most compute slices of them that the fleet can hold at once "
        "with valid MIG layouts (an integer program over per-GPU maximal layouts, `migctl.planner.bound`, "
        "CP-SAT; a gang's units counted as separate instances, which can only raise it). Fractional jobs count "
        "their share: with sharing, the optimum of the other jobs plus all shares up to the capacity left; "
        "without sharing, also at most the optimum with each fractional job as its rounded profile. Per method "
        "because the jobs present depend on the method's own queue; at every instant it is at or above what "
        "that method allocates, so its time average bounds the method's allocation.",
        "",
        "Columns: allocation = time-averaged share of the cluster's compute slices that running jobs asked for "
        "(a job on a larger instance counts its own size; a fractional job counts its share) between the first "
        "and last arrival; waits over started jobs; never = jobs that never started (no instance of the static "
        "layout can hold them); reconf/h = GPU-instance creations + destructions per simulated hour of the "
        "trace; destroyed = instances destroyed; busy = busy instances destroyed; reused = idle instances "
        "reused; joined = jobs that joined a shared instance.",
        "",
    ]
    for fam, fr in res["families"].items():
        bs = fr["bound_solver"]
        lines += [f"## {fam}", "", fr["description"], "",
                  "| method | allocation | bound | wait p50 | wait p95 | wait max | never | reconf/h | destroyed "
                  "| busy | reused | joined | reservations (late) |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for name, r in fr["methods"].items():
            lines.append(
                f"| {name} | {100 * r['allocation']:.2f}% | {100 * r['upper_bound']:.2f}% | {_h(r['wait_p50_s'])} "
                f"| {_h(r['wait_p95_s'])} | {_h(r['wait_max_s'])} | {r['never_started']} | {r['reconfig_per_hour']} "
                f"| {r['instances_destroyed']} | {r['busy_destroyed']} | {r['reused']} | {r['joined']} "
                f"| {r['reservations']} ({r['reservations_late']}) |")
        lines += ["", f"Bound: {bs['instants_cached']} distinct demand vectors over all methods; "
                  f"{bs['trivial']} answered by monotonicity, {bs['greedy']} by the greedy packing reaching "
                  f"min(capacity, demand), {bs['lp_tight']} by the greedy reaching the linear relaxation's floor, "
                  f"{bs['cp_sat']} solved by CP-SAT ({bs['unproven']} not proven optimal in 5 s: their best bound "
                  f"used). Intervals where a method allocated more than its bound: "
                  f"{sum(r['above_bound'] for r in fr['methods'].values())} (a check; must be 0). "
                  f"Simulation time of the family's methods {fr['time_s']} s (two worker processes).", ""]
        lines += ["Starvation bound (every job that got a reservation): it starts by its reserved time, so its "
                  "wait is at most (reservation made - submit) + the longest time limit among the jobs in the way "
                  "then.", "",
                  "| method | reserved jobs | violations | max wait of a reserved job | max bound | min slack "
                  "| max time to its reservation | max wait of any job |", "|---|---|---|---|---|---|---|---|"]
        for name, r in fr["methods"].items():
            st = r["starvation"]
            if not st["reserved_jobs"]:
                continue
            lines.append(f"| {name} | {st['reserved_jobs']} | {st['violations']} | {_h(st['max_wait_s'])} "
                         f"| {_h(st['max_bound_s'])} | {_h(max(0.0, st['min_slack_s']) if st['min_slack_s'] is not None else None)} | {_h(st['max_to_reservation_s'])} "
                         f"| {_h(r['wait_max_s'])} |")
        lines.append("")
    for ours in OURS:
        ok, better, short = verdict(res, ours)
        lines += [f"## {ours} against the best baseline", "",
                  "Baselines: every method except the migctl rows that started every job (the static layouts "
                  "leave jobs that never start, so they do not count for waits). Higher is better for "
                  "allocation, lower for the others. Target: at least the best baseline on allocation, wait p50 "
                  "and wait p95 in every family, strictly better in at least two.", "",
                  "| family | metric | ours | best baseline | |", "|---|---|---|---|---|"]
        labels = {k: lab for k, lab, _h in TARGET + OTHER}
        for fam, fr in res["families"].items():
            for key, v, b, name, vd in compare(fr, ours):
                fmt = (lambda x: f"{100 * x:.2f}%") if key == "allocation" else (
                    (lambda x: f"{x:g}") if key == "reconfig_per_hour" else _h)
                lines.append(f"| {fam} | {labels[key]} | {fmt(v)} | {fmt(b)} ({name}) | {vd} |")
        lines += ["", f"**Target {'met' if ok else 'not met'}.** Strictly better with no target metric worse: "
                  f"{', '.join(better) or 'none'}. Worse on a target metric: {', '.join(short) or 'none'}.", ""]
    lines += ["## Where the median wait goes: reservations", "",
              "Median wait per kind of job (fractional = a task asking for part of a GPU; gang = a multi-GPU "
              "task) for the baseline with the lowest median, migctl reshaping, and two ablations: the same "
              "scheduler in arrival order without the cap on the starving test (the settings before "
              "2026-12-04), and with reservations off. Reservations serve "
              "starving jobs first; the capacity they take is capacity the short jobs behind them would have "
              "used, so the median moves while the p95 and the longest wait fall; serving the shortest limit "
              "first among jobs that ask for the same thing takes the median back.", "",
              "| family | method | wait p50 | wait p95 | wait max | allocation | p50 per kind (jobs) |",
              "|---|---|---|---|---|---|---|"]
    for fam, fr in res["families"].items():
        base = {n: r for n, r in fr["methods"].items() if not n.startswith("migctl") and r["never_started"] == 0}
        best = min(base, key=lambda n: (base[n]["wait_p50_s"], n))
        for name in (best, "migctl reshaping", PREVIOUS, NO_RES):
            r = fr["methods"].get(name)
            if r is None:
                continue
            kinds = ", ".join(f"{k} {_h(v)} ({r['started_by_kind'][k]})" for k, v in r["wait_p50_by_kind_s"].items())
            lines.append(f"| {fam} | {name} | {_h(r['wait_p50_s'])} | {_h(r['wait_p95_s'])} | {_h(r['wait_max_s'])} "
                         f"| {100 * r['allocation']:.2f}% | {kinds} |")
    lines.append("")
    rob = res.get("robustness") or {}
    if rob:
        passed = sum(not any(vd == "worse" for k, _v, _b, _n, vd in compare({"methods": m}, "migctl reshaping")
                             if k in {t[0] for t in TARGET}) for m in rob.values())
        lines += ["## Other seeds of the generated families", "",
                  "The same comparison for migctl reshaping on other draws of the ParvaGPU and synthetic families "
                  "(the same generator, other seeds), against the best of first-fit, best-fit, best-fit in the driver's "
                  "order and FGD per metric. "
                  "No bound computed here. These draws were not used to choose the settings (the start order and "
                  f"the starving cap were chosen on the three families above); the settings pass {passed} of {len(rob)}. "
                  "[variants.md](variants.md) (`benchmarks/dynamic/variants.py`) replays "
                  "variants of the scheduler's settings and of its previous default (start order, starving threshold "
                  "and cap, reservations at a "
                  "time, relaxed backfill, placement rule, keeping idle instances) on these draws and the three families against the same baselines.", "",
                  "| family | allocation (best baseline) | wait p50 (best baseline) | wait p95 (best baseline) "
                  "| wait max (best baseline) | target metrics |", "|---|---|---|---|---|---|"]
        for label, methods in rob.items():
            fr = {"methods": methods}
            rows = {k: (v, b, vd) for k, v, b, _n, vd in compare(fr, "migctl reshaping")}
            cells = []
            for key in ("allocation", "wait_p50_s", "wait_p95_s", "wait_max_s"):
                v, b, vd = rows[key]
                f = (lambda x: f"{100 * x:.2f}%") if key == "allocation" else _h
                cells.append(f"{f(v)} ({f(b)}) {vd}")
            worse = [lab for key, lab, _h in TARGET if rows[key][2] == "worse"]
            better = [lab for key, lab, _h in TARGET if rows[key][2] == "better"]
            cells.append(f"worse: {', '.join(worse)}" if worse else f"none worse; better: {', '.join(better) or '-'}")
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += placement_section(res)
    lines += ["![allocation over time](plot.png)", ""]
    return "\n".join(lines)


PLACEMENT_BASE = ("first-fit", "best-fit", "best-fit, driver order")


def placement_section(res: dict) -> list[str]:
    """Issue item 2 with departures: migctl's placement rule alone (an instance per job, destroyed when it
    ends) against first-fit, best-fit and best-fit in the driver's order on every draw."""
    draws = {fam: fr["methods"] for fam, fr in res["families"].items()}
    draws.update(res.get("robustness") or {})
    draws = {d: m for d, m in draws.items() if all(n in m for n in PLACEMENT_BASE + ("migctl online", NO_LIFE))}
    if not draws:
        return []
    lines = ["## The placement rule alone, with departures", "",
             "migctl online (time limits known) and its ablation without them (the rule `migctl run` uses, "
             "where a run has no time limit) against first-fit, best-fit and best-fit in the driver's placement "
             "order on the three families and the six other draws: allocation / wait p50 / wait p95. `alloc` = "
             "allocation against the best of those three (the issue's test for the placement rule). Without "
             "departures (arrivals until 130% of capacity) the rules are measured by "
             "[fgd_protocol.md](fgd_protocol.md).", "",
             "| draw | " + " | ".join(PLACEMENT_BASE) + " | migctl online | alloc | no time limits (ablation) "
             "| alloc |", "|---|" + "---|" * (len(PLACEMENT_BASE) + 4)]
    tally = {"migctl online": 0, NO_LIFE: 0}

    def cell(r: dict) -> str:
        return f"{100 * r['allocation']:.2f}% / {_h(r['wait_p50_s'])} / {_h(r['wait_p95_s'])}"

    for d, m in draws.items():
        best = max(m[b]["allocation"] for b in PLACEMENT_BASE)
        row = [d] + [cell(m[b]) for b in PLACEMENT_BASE]
        for name in ("migctl online", NO_LIFE):
            a = m[name]["allocation"]
            v = "better" if a > best else "equal" if a == best else f"worse ({100 * (a - best):+.2f} pp)"
            tally[name] += a >= best
            row += [cell(m[name]), v]
        lines.append("| " + " | ".join(row) + " |")
    lines += ["", f"At least the best of those three on allocation: migctl online on "
              f"{tally['migctl online']} of {len(draws)} draws, without time limits on {tally[NO_LIFE]} of "
              f"{len(draws)}.", ""]
    return lines


WORKERS = 2
_FAMILIES: dict | None = None


def _run_one(fam: str, name: str, seed: int | None = None) -> tuple[dict, dict]:
    """One method on one family (in a worker process): its figures and its bound solver's counts. With
    ``seed``, the family drawn with that seed and no bound (robustness runs)."""
    global _FAMILIES
    if seed is not None:
        models, trace, _desc = families({fam: seed})[fam]
        t = time.perf_counter()
        r = simulate(models, trace, name, method_policies()[name])
        r["time_s"] = round(time.perf_counter() - t, 2)
        r.pop("series")
        return r, {}
    if _FAMILIES is None:
        _FAMILIES = families()
    models, trace, _desc = _FAMILIES[fam]
    bound = PackingBound(models, sorted({r[2] for r in trace}))
    t = time.perf_counter()
    r = simulate(models, trace, name, method_policies()[name], bound)
    r["time_s"] = round(time.perf_counter() - t, 2)
    return r, {"instants_cached": len(bound.cache), "greedy": bound.greedy, "trivial": bound.trivial,
               "lp_tight": bound.relaxed, "cp_sat": bound.solved, "unproven": bound.unproven}


def no_options(doc: str | None, argv: list[str] | None) -> None:
    """A benchmark script's command line: ``--help`` prints its docstring; any argument is an error (exit 2)."""
    argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("families", nargs="*", metavar="FAMILY",
                    help="run only these families (alibaba, parvagpu, synthetic) and write nothing")
    ap.add_argument("--report", action="store_true", help="rewrite results.md and plot.png from results.json")
    args = ap.parse_args(argv)
    bad = [f for f in args.families if f not in ("alibaba", "parvagpu", "synthetic")]
    if bad:
        ap.error(f"unknown family {bad[0]!r} (valid: alibaba, parvagpu, synthetic)")
    t_all = time.perf_counter()
    results: dict = {"machine": platform.platform(), "python": platform.python_version(),
                     "policy": {k: v for k, v in dataclasses.asdict(RESHAPING).items()
                                if isinstance(v, (int, float, str, bool)) or v is None}, "families": {}}
    if args.report:
        report(json.loads((HERE / "results.json").read_text()))
        return 0
    only = args.families or None
    global _FAMILIES
    _FAMILIES = families()  # the worker processes (forked) inherit it
    fams = {f: v for f, v in _FAMILIES.items() if not only or f in only}
    tasks: list[tuple[str, str, int | None]] = [(fam, name, None) for fam in fams for name in method_policies()]
    if not only:
        tasks += [(fam, name, seed) for fam, seeds in ROBUST_SEEDS.items() for seed in seeds for name in ROBUST_METHODS]
    # the slowest (Alibaba's reshaping runs) first; two worker processes (the machine has two cores), each
    # with its own bound cache per family
    tasks.sort(key=lambda t: (t[0] != "alibaba", not t[1].startswith("migctl reshaping"), t[2] is not None))
    out: dict[tuple[str, str, int | None], tuple[dict, dict]] = {}
    with ProcessPoolExecutor(max_workers=WORKERS) as pool:
        futs = {pool.submit(_run_one, *task): task for task in tasks}
        for fut in as_completed(futs):
            fam, name, seed = futs[fut]
            r, solver = fut.result()
            out[(fam, name, seed)] = (r, solver)
            print(f"{fam:10s} {name:30s} {'' if seed is None else f'seed {seed}':8s} alloc {100 * r['allocation']:6.2f}% (bound {100 * r['upper_bound']:.2f}%) "
                  f"wait p50 {r['wait_p50_s']} p95 {r['wait_p95_s']} max {r['wait_max_s']} never {r['never_started']} "
                  f"reconf/h {r['reconfig_per_hour']} destroyed {r['instances_destroyed']} "
                  f"busy {r['busy_destroyed']} ({r['time_s']}s)", flush=True)
    for fam, (models, _trace, desc) in fams.items():
        fr: dict = {"description": desc, "gpus": len(models), "methods": {}}
        solver_total: dict[str, int] = {}
        for name in method_policies():
            r, solver = out[(fam, name, None)]
            fr["methods"][name] = r
            for k, v in solver.items():
                solver_total[k] = solver_total.get(k, 0) + v
        fr["bound_solver"] = solver_total
        fr["time_s"] = round(sum(r["time_s"] for r in fr["methods"].values()), 1)
        results["families"][fam] = fr
    results["robustness"] = {f"{fam} seed {seed}": {name: out[(fam, name, seed)][0] for name in ROBUST_METHODS}
                             for fam, seeds in ROBUST_SEEDS.items() for seed in seeds if (fam, ROBUST_METHODS[0], seed) in out}
    results["time_s"] = round(time.perf_counter() - t_all, 1)
    if only:
        return 0
    (HERE / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    report(results)
    return check(results)


def check(results: dict) -> int:
    """The benchmark's own checks: no busy instance destroyed, no reserved job past its starvation bound, no
    reservation started late, no interval where a method allocated more than its upper bound. 1 if any fails."""
    bad = []
    for fam, fr in results["families"].items():
        for name, r in fr["methods"].items():
            for what, n in (("busy instances destroyed", r["busy_destroyed"]),
                            ("starvation bound violations", r["starvation"]["violations"]),
                            ("late reservations", r["reservations_late"]),
                            ("intervals above the bound", r["above_bound"])):
                if n:
                    bad.append(f"{fam} / {name}: {n} {what}")
    for line in bad:
        print(f"CHECK FAILED: {line}", flush=True)
    if not bad:
        print("checks passed: 0 busy instances destroyed, 0 starvation bound violations, 0 late reservations, "
              "0 intervals above the bound", flush=True)
    return 1 if bad else 0


def report(results: dict) -> None:
    (HERE / "results.md").write_text(markdown(results))
    plot(results, HERE / "plot.png")


if __name__ == "__main__":
    raise SystemExit(main())
