"""Planner benchmarks: ParvaGPU SLO sets, the Alibaba v2023 trace (offline and online), and scale.

Run: ``python benchmarks/planner/run.py`` (about 1-3 minutes on 2 cores). Writes results.json,
results.md and plot.png next to this file. Data is read from the repository: tests/fixtures/parvagpu and
benchmarks/planner/data/alibaba-gpu-v2023 (sources and licences in their README files).
"""

from __future__ import annotations

import json
import math
import os
import platform
import random
import sys
import time
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
PARVA = REPO / "tests" / "fixtures" / "parvagpu"
ALIBABA = HERE / "data" / "alibaba-gpu-v2023"
MODEL = "A100-80GB"

PUBLISHED_GPUS = [2, 3, 5, 7, 13, 16]
PUBLISHED_SLICES = [10, 20, 33, 48, 90, 112]

# Alibaba mapping: compute slices = ceil(7 * gpu_milli / 1000), rounded up to an existing plain size
SIZE_TO_PROFILE = {1: "1g.10gb", 2: "2g.20gb", 3: "3g.40gb", 4: "4g.40gb", 5: "7g.80gb", 6: "7g.80gb", 7: "7g.80gb"}
MAPPING = ("num_gpu == 0: skipped (CPU only); num_gpu == 1: compute slices = ceil(7 x gpu_milli / 1000), "
           "1 -> 1g.10gb, 2 -> 2g.20gb, 3 -> 3g.40gb, 4 -> 4g.40gb, 5..7 -> 7g.80gb; num_gpu = k >= 2: "
           "k x 7g.80gb (whole GPUs). Memory follows the profile (no GPU-memory column in the trace). "
           "CPU, host memory, node and gpu_spec constraints are ignored.")


def parvagpu() -> list[dict]:
    from migctl.planner import parse_request, plan, validate_plan
    from migctl.planner.serving import verify_serving

    rows = []
    for k in range(1, 7):
        r = parse_request({"serving": {"gpu_model": MODEL, "parvagpu": {"dir": str(PARVA), "slo_set": k}},
                           "options": {"time_limit_s": 30, "seed": 0}})
        t = time.perf_counter()
        p = plan(r)
        dt = time.perf_counter() - t
        problems = verify_serving(p, r.serving) + validate_plan(p)
        rows.append({
            "slo_set": k, "models": len(r.serving.models), "gpus": p.gpu_count, "lower_bound": p.lower_bound,
            "status": p.status, "slices": p.stats["slices_used"], "slices_proven_minimal": p.stats["slices_proven_minimal"], "parvagpu_gpus": PUBLISHED_GPUS[k - 1],
            "parvagpu_slices": PUBLISHED_SLICES[k - 1], "verified": not problems, "problems": problems[:3],
            "time_s": round(dt, 3),
        })
        print(f"ParvaGPU set {k}: {p.gpu_count} GPUs (bound {p.lower_bound:g}, ParvaGPU {PUBLISHED_GPUS[k - 1]}), "
              f"{p.stats['slices_used']} slices, verified={not problems}, {dt:.2f}s", flush=True)
    return rows


def alibaba_units(name: str = "openb_pod_list_default.csv") -> list[str]:
    """Profile name of every GPU unit of the trace, in trace order (multi-GPU tasks give k units)."""
    import csv

    out = []
    with (ALIBABA / name).open(newline="") as f:
        for row in csv.DictReader(f):
            n, milli = int(row["num_gpu"]), int(row["gpu_milli"])
            if n == 0:
                continue
            if n == 1:
                out.append(SIZE_TO_PROFILE[max(1, math.ceil(7 * milli / 1000))])
            else:
                out.extend(["7g.80gb"] * n)
    return out


def _classes(units: list[str]):
    from migctl.catalog import load_model
    from migctl.planner.heuristics import DemandClass, ModelSpace
    from migctl.planner.layouts import enumerate_layouts, maximal_layouts

    m = load_model(MODEL)
    cnt = Counter(units)
    ids = sorted(m.profile(p).id for p in cnt)
    classes = [DemandClass(eligible=((m.key, (m.profile(p).id,)),), count=c) for p, c in sorted(cnt.items())]
    valid = enumerate_layouts(m, ids)
    sp = ModelSpace(model=m, count=None, cost=1, valid=frozenset(valid), profiles={p.id: p for p in m.gi_profiles})
    return m, classes, sp, [lay for lay in maximal_layouts(valid, ids) if lay]


def offline(units: list[str]) -> dict:
    """All units as compute-slice needs (any plain instance with at least that many slices may serve one)."""
    from migctl.catalog import load_model
    from migctl.planner import parse_request, plan, validate_plan
    from migctl.planner.heuristics import balanced, best_fit, first_fit
    from migctl.planner.solver import build_problem

    m = load_model(MODEL)
    cnt = Counter(units)
    r = parse_request({"fleet": [{"model": MODEL}],
                       "workloads": [{"name": p, "compute_slices": m.profile(p).slices, "count": c}
                                     for p, c in sorted(cnt.items())],
                       "options": {"time_limit_s": 10, "seed": 0}})
    t = time.perf_counter()
    p = plan(r)
    dt = time.perf_counter() - t
    assert validate_plan(p, r.workloads) == []
    prob = build_problem(r.workloads, r)
    ff, _ = first_fit(prob.classes, prob.spaces)
    bf, _ = best_fit(prob.classes, prob.spaces)
    bal = balanced(prob.classes, prob.spaces[0], prob.maximal[m.key])
    names = {q.id: q.name for q in m.gi_profiles}
    res = {
        "units": len(units), "mix": dict(sorted(cnt.items())), "ours": p.gpu_count, "lower_bound": p.lower_bound,
        "lp": p.bounds["lp"], "gap": p.gap, "status": p.status, "time_s": round(dt, 3),
        "first_fit": len(ff), "best_fit": len(bf),
        "balanced": len(bal[0]) if bal else None, "balanced_layout": list(bal[1]) if bal else None,
        "balanced_layout_names": [names[i] for i in bal[1]] if bal else None,
    }
    print(f"Alibaba offline: ours {p.gpu_count} (bound {p.lower_bound:g}, gap {100 * p.gap:.2f}%), FF {len(ff)}, "
          f"BF {len(bf)}, balanced {res['balanced']} {res['balanced_layout_names']}, {dt:.2f}s", flush=True)
    return res


def online(units: list[str], n_gpus: int, balanced_layout: list[int] | None) -> dict:
    from migctl.planner.heuristics import OnlineCluster

    m, _classes_, _sp, _lays = _classes(units)
    cnt = Counter(units)
    total = sum(cnt.values())
    weights = {m.profile(p).id: c / total for p, c in cnt.items()}
    capacity = n_gpus * m.compute_slices
    # arrivals in trace order (cycled) until requested slices reach 130% of capacity, no departures
    arrivals: list[int] = []
    requested = 0
    i = 0
    while requested < 1.3 * capacity:
        p = m.profile(units[i % len(units)])
        arrivals.append(p.id)
        requested += p.slices
        i += 1
    out = {"gpus": n_gpus, "arrivals": len(arrivals), "requested_share": round(requested / capacity, 4)}
    for pol in ("first", "best", "ours"):
        t = time.perf_counter()
        cl = OnlineCluster(m, n_gpus, pol, weights=weights,
                           layout=tuple(balanced_layout) if pol == "balanced" and balanced_layout else None)
        accepted = sum(1 for pid in arrivals if cl.place(pid) is not None)
        out[pol] = {"allocation": round(cl.allocation, 4), "accepted": accepted, "time_s": round(time.perf_counter() - t, 2)}
        print(f"Alibaba online ({pol}): allocation {100 * cl.allocation:.2f}%, accepted {accepted}/{len(arrivals)}",
              flush=True)
    if balanced_layout:
        # pre-partitioned: a share of GPUs kept whole (7g) as in the offline balanced plan, the rest in the layout
        full = m.profile("7g.80gb").id
        share = Counter(units)["7g.80gb"] / max(1, len(units))
        n_whole = round(n_gpus * share)
        parts = [OnlineCluster(m, n_whole, "balanced", layout=(full,)),
                 OnlineCluster(m, n_gpus - n_whole, "balanced", layout=tuple(balanced_layout))]
        t = time.perf_counter()
        accepted = sum(1 for pid in arrivals if any(c.place(pid) is not None for c in parts if c.n))
        alloc = sum(c.allocated_slices for c in parts) / capacity
        out["balanced"] = {"allocation": round(alloc, 4), "accepted": accepted,
                           "time_s": round(time.perf_counter() - t, 2), "whole_gpus": n_whole}
        print(f"Alibaba online (balanced): allocation {100 * alloc:.2f}%, accepted {accepted}/{len(arrivals)}",
              flush=True)
    return out


def scale() -> list[dict]:
    """Synthetic fleets of about 10, 100, 1000 GPUs, ~7 requests per GPU, on a two-model fleet."""
    from migctl.planner import parse_request, plan, validate_plan

    rows = []
    mix = [("1g.10gb", 0.90), ("1g.20gb", 0.02), ("2g.20gb", 0.04), ("3g.40gb", 0.02), ("4g.40gb", 0.01),
           ("7g.80gb", 0.01)]
    for target in (10, 100, 1000):
        rng = random.Random(target)
        n_req = 7 * target
        n_workloads = max(3, n_req // 35)
        workloads = []
        remaining = n_req
        for w in range(n_workloads):
            cnt = remaining if w == n_workloads - 1 else max(1, min(remaining - (n_workloads - w - 1),
                                                                     int(rng.expovariate(1 / 35))))
            remaining -= cnt
            prof = rng.choices([p for p, _ in mix], [q for _, q in mix])[0]
            wl: dict = {"name": f"w{w}", "count": cnt, "priority": rng.randint(0, 2)}
            if rng.random() < 0.25:  # a memory need instead of a profile (up-sizing allowed)
                wl["memory_gib"] = {"1g.10gb": 8, "1g.20gb": 16, "2g.20gb": 18, "3g.40gb": 30, "4g.40gb": 36,
                                    "7g.80gb": 60}[prof]
            else:
                wl["profile"] = prof
            if rng.random() < 0.3:
                wl["models"] = [rng.choice(["A100-80GB", "H100-80GB"])]
            workloads.append(wl)
        r = parse_request({"fleet": [{"model": "A100-80GB"}, {"model": "H100-80GB"}], "workloads": workloads,
                           "options": {"time_limit_s": 8, "seed": 0, "workers": 2}})
        t = time.perf_counter()
        p = plan(r)
        dt = time.perf_counter() - t
        problems = validate_plan(p, r.workloads)
        rows.append({"target_gpus": target, "requests": n_req, "workloads": n_workloads, "gpus": p.gpu_count,
                     "lower_bound": p.lower_bound, "gap": round(p.gap, 5), "status": p.status,
                     "first_fit": p.stats["first_fit_cost"], "time_s": round(dt, 3), "valid": not problems,
                     "phases_s": p.stats["time_s"]})
        print(f"scale {target}: {n_req} requests -> {p.gpu_count} GPUs (bound {p.lower_bound:g}, gap "
              f"{100 * p.gap:.2f}%, FFD {p.stats['first_fit_cost']}), {dt:.2f}s, valid={not problems}", flush=True)
    return rows


def plot(res: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 4, figsize=(18, 4.2))
    pv = res["parvagpu"]
    x = range(1, len(pv) + 1)
    ax[0].bar([i - 0.2 for i in x], [r["parvagpu_gpus"] for r in pv], 0.4, label="ParvaGPU (published)")
    ax[0].bar([i + 0.2 for i in x], [r["gpus"] for r in pv], 0.4, label="migctl")
    ax[0].set(title="ParvaGPU SLO sets (A100-80GB)", xlabel="SLO set", ylabel="GPUs")
    ax[0].legend()
    traces = [("default", res["alibaba"]), ("gpushare100", res["alibaba_gpushare100"])]
    names = ["migctl", "first-fit", "best-fit", "balanced"]
    keys = ["ours", "first_fit", "best_fit", "balanced"]
    for t, (label, tr) in enumerate(traces):
        off = tr["offline"]
        vals = [(off[k] or 0) / off["lower_bound"] for k in keys]
        ax[1].bar([i + 0.4 * t - 0.2 for i in range(len(keys))], vals, 0.4, label=f"{label} ({off['units']} units)")
    ax[1].set_xticks(range(len(keys)), names)
    ax[1].set(title="Alibaba v2023 offline: GPUs / lower bound", ylabel="ratio to lower bound")
    ax[1].set_ylim(0.95, 1.1)
    ax[1].legend()
    pols = ["first", "best", "ours", "balanced"]
    for t, (label, tr) in enumerate(traces):
        on = tr["online"]
        ax[2].bar([i + 0.4 * t - 0.2 for i in range(len(pols))], [100 * on[p]["allocation"] for p in pols], 0.4,
                  label=label)
    ax[2].set_xticks(range(len(pols)), ["first-fit", "best-fit", "migctl", "balanced"])
    ax[2].set(title=f"Alibaba online, FGD protocol ({res['alibaba']['online']['gpus']} GPUs)",
              ylabel="% of compute slices allocated")
    ax[2].set_ylim(50, 100)
    ax[2].legend(loc="lower left")
    sc = res["scale"]
    ax[3].plot([r["target_gpus"] for r in sc], [r["time_s"] for r in sc], "o-", label="planning time (s)")
    for r in sc:
        ax[3].annotate(f"gap {100 * r['gap']:.2f}%", (r["target_gpus"], r["time_s"]))
    ax[3].axhline(10, ls="--", c="grey", label="10 s target")
    ax[3].set(xscale="log", title="Scale (2 cores)", xlabel="GPUs (~7 requests each)", ylabel="seconds")
    ax[3].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def markdown(res: dict) -> str:
    pv, sc = res["parvagpu"], res["scale"]
    lines = [
        "# Planner benchmarks", "",
        f"Machine: {res['machine']}; load average at start {res['load_average_start']} (other jobs shared the 2 "
        "cores, so times are upper bounds). Command: `python benchmarks/planner/run.py`. Seed 0. Plot: plot.png.",
        "",
        "## a) ParvaGPU SLO sets (A100-80GB, ParvaGPU's profiling data and latency rule)", "",
        "Rule (ParvaGPU data_load.c/configurator.c): a (size, batch, processes) row is admissible if latency < "
        "0.9 x SLO / 2; instance throughput = throughput x processes; every model's summed throughput >= its "
        "rate. Every plan below is re-verified against the same tables (`verify_serving`) and the layouts by "
        "the independent validator.", "",
        "| SLO set | models | migctl GPUs | lower bound | ParvaGPU GPUs | migctl slices | ParvaGPU slices | verified | time (s) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in pv:
        lines.append(f"| {r['slo_set']} | {r['models']} | {r['gpus']} | {r['lower_bound']:g} | {r['parvagpu_gpus']} | "
                     f"{r['slices']} | {r['parvagpu_slices']} | {'yes' if r['verified'] else 'NO'} | {r['time_s']} |")
    le = all(r["gpus"] <= r["parvagpu_gpus"] for r in pv)
    lt = sum(r["gpus"] < r["parvagpu_gpus"] for r in pv)
    lines += ["", f"Target (no more GPUs than ParvaGPU on any set, fewer on some): "
              f"{'met' if le and lt else 'NOT met'} -- fewer on {lt} of 6 sets; lower bound = plan on every set "
              "means the GPU counts are proven optimal for this rule and data.", ""]
    lines += ["## b) Alibaba GPU v2023 trace", "", f"Mapping: {MAPPING}", ""]
    for key, title in (("alibaba", "openb_pod_list_default.csv"), ("alibaba_gpushare100", "openb_pod_list_gpushare100.csv")):
        off, on = res[key]["offline"], res[key]["online"]
        lines += [
            f"### {title}", "",
            f"Offline: all {off['units']} GPU units ({', '.join(f'{k}: {v}' for k, v in off['mix'].items())}) on "
            f"{MODEL}, as few GPUs as needed. Each unit is a compute-slice need (a GPU share is a minimum), so "
            "any plain instance with at least that many slices may serve it, for every method alike. Balanced: "
            f"whole-GPU units get their own GPUs, every other GPU gets one layout ({off['balanced_layout_names']}).",
            "",
            "| method | GPUs |", "|---|---|",
            f"| lower bound (max of LP {off['lp']:.2f} rounded up, CP-SAT, combinatorial) | {off['lower_bound']:g} |",
            f"| migctl (configuration IP, CP-SAT) | {off['ours']} |",
            f"| first-fit decreasing | {off['first_fit']} |",
            f"| best-fit decreasing | {off['best_fit']} |",
            f"| same balanced layout on every GPU | {off['balanced']} |", "",
            f"Gap to the bound: {100 * off['gap']:.2f}% (target <= 1%: {'met' if off['gap'] <= 0.01 else 'NOT met'}); "
            f"planning time {off['time_s']} s.", "",
            f"Online (FGD protocol): {on['gpus']} GPUs (the trace's cluster size), arrivals in trace order (the "
            f"trace cycled when exhausted) until requested compute slices reach 130% of capacity ({on['arrivals']} "
            "arrivals), no departures; each request gets its mapped profile at a fixed placement on arrival and "
            "is never moved. Metric: compute slices requested by the accepted requests / the cluster's compute "
            "slices. The balanced baseline pre-partitions every GPU (a whole-GPU share, the rest in the offline "
            "balanced layout) and serves a request with the smallest free instance at least as large.", "",
            "| policy | allocation | accepted |", "|---|---|---|",
        ]
        label = {"first": "first-fit", "best": "best-fit", "ours": "migctl (fragmentation-aware)",
                 "balanced": "balanced, pre-partitioned"}
        for p in ("first", "best", "ours", "balanced"):
            if p in on:
                lines.append(f"| {label[p]} | {100 * on[p]['allocation']:.2f}% | {on[p]['accepted']} |")
        lines.append("")
    lines += ["Reading these numbers: under this mapping most units are 4g or 7g (every 4g.40gb and 7g.80gb unit "
              "needs a GPU of its own, and the smaller units fit beside the 4g units), so the combinatorial bound "
              "is tight and first-fit, best-fit and balanced packing are already optimal offline; the gap target "
              "is met but this trace does not separate the methods. Online, 130% load saturates the cluster with "
              "the same large units, so placement policy changes allocation by at most a few hundredths of a "
              "percent; only the pre-partitioned balanced layout loses (it strands capacity in the wrong sizes).",
              "",
              "FGD's published 95.39% (FGD) vs 93.08% (best-fit) on default and 86.90% vs 85.01% on gpushare100 "
              "are for fractional sharing, not MIG: context, not a like-for-like target.", ""]
    lines += ["## c) Scale", "",
              "Synthetic workloads drawn from a fixed mix (90% 1g.10gb, 2% 1g.20gb, 4% 2g.20gb, 2% 3g.40gb, 1% "
              "4g.40gb, 1% 7g.80gb; 25% of workloads given as a memory need with up-sizing, 30% restricted to "
              "one model, priorities 0-2), ~7 requests per target GPU, fleet A100-80GB + H100-80GB (as few as "
              "needed). Time = the whole `plan()` call (enumeration, heuristic, CP-SAT, LP, placement).", "",
              "| target | requests | workloads | GPUs | lower bound | gap | FFD | time (s) | valid |",
              "|---|---|---|---|---|---|---|---|---|"]
    for r in sc:
        lines.append(f"| {r['target_gpus']} | {r['requests']} | {r['workloads']} | {r['gpus']} | {r['lower_bound']:g} | "
                     f"{100 * r['gap']:.2f}% | {r['first_fit']} | {r['time_s']} | {'yes' if r['valid'] else 'NO'} |")
    big = sc[-1]
    ok = big["time_s"] <= 10 and big["gap"] <= 0.02
    lines += ["", f"Target (1,000 GPUs in <= 10 s on 2 cores, gap <= 2%): {'met' if ok else 'NOT met'} "
              f"({big['time_s']} s, gap {100 * big['gap']:.2f}%).", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    import argparse

    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args(argv)
    t0 = time.perf_counter()
    res: dict = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, Python "
                            f"{platform.python_version()}", "load_average_start": [round(x, 2) for x in os.getloadavg()]}
    res["parvagpu"] = parvagpu()
    import csv

    with (ALIBABA / "openb_node_list_gpu_node.csv").open(newline="") as f:
        n_gpus = sum(int(r["gpu"]) for r in csv.DictReader(f))
    units = alibaba_units()
    res["alibaba"] = {"mapping": MAPPING}
    res["alibaba"]["offline"] = offline(units)
    res["alibaba"]["online"] = online(units, n_gpus, res["alibaba"]["offline"]["balanced_layout"])
    print("gpushare100 trace:", flush=True)
    units100 = alibaba_units("openb_pod_list_gpushare100.csv")
    res["alibaba_gpushare100"] = {"offline": offline(units100)}
    res["alibaba_gpushare100"]["online"] = online(units100, n_gpus,
                                                  res["alibaba_gpushare100"]["offline"]["balanced_layout"])
    res["scale"] = scale()
    res["total_time_s"] = round(time.perf_counter() - t0, 1)
    res["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    (HERE / "results.json").write_text(json.dumps(res, indent=2) + "\n")
    (HERE / "results.md").write_text(markdown(res) + f"\nTotal benchmark time: {res['total_time_s']} s (load average at "
                                     f"end {res['load_average_end']}).\n")
    plot(res, HERE / "plot.png")
    print(f"done in {res['total_time_s']} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(REPO / "src"))
    raise SystemExit(main())
