"""Serving mode: deploy inference models on MIG instances to meet request rates under latency SLOs.

Input per served model: a measured table of throughput and latency per (instance size in compute
slices, batch, processes) -- the ParvaGPU ``prof_data`` CSV format, read as it is -- a request rate and a
latency SLO. ParvaGPU's rule decides admissibility: a configuration may serve a model only if its latency
< ``latency_factor`` x SLO (0.9 x SLO / 2 by default); an instance's throughput is the per-process
throughput x processes. Per model and instance size the admissible configuration with the highest
throughput is used.

The whole GPU with MIG disabled is a candidate next to the MIG layouts when the table has rows for it
(``Mig instance`` = ``whole``, as ``migctl bench`` writes them) and ``whole_gpu`` is not false: a whole
GPU serves one model with the throughput measured for it, so the plan keeps a GPU whole exactly when
that serves the demand with fewer GPUs (then fewer slices) than any MIG layout -- "MIG loses".

Formulation (exact, CP-SAT): ``n[j, s]`` instances of size ``s`` for model ``j`` (``s`` = 0: a whole GPU),
``y[c]`` GPUs with maximal layout ``c`` and ``w`` whole GPUs::

    min  sum_c y[c] + w, then (GPUs fixed) sum_{j,s} slices(s) * n[j,s]    (fewest GPUs, then fewest slices)
    s.t. sum_s thr[j,s] * n[j,s] >= rate_j           (throughputs scaled to integers, rounded down)
         sum_j n[j,s] <= sum_c a[c,s] * y[c]          (s a MIG size)
         sum_j n[j,0] <= w
"""

from __future__ import annotations

import csv
import dataclasses
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from migctl.catalog.model import GIProfile, GpuModel
from migctl.inputs import decimal_text, is_digits
from migctl.planner.core import Plan, PlanError, PlannedGpu, PlannedInstance, Request
from migctl.planner.layouts import enumerate_layouts, maximal_layouts, placements_for

SCALE = 1000  # throughput units per request/s in the integer model
WHOLE = 0  # the instance "size" of a whole GPU with MIG disabled (``whole`` in a table)


@dataclass(frozen=True)
class ProfileRow:
    """One measured configuration: instance size, batch, processes, per-process throughput, latency (s)."""

    size: int
    batch: int
    procs: int
    throughput: float
    latency_s: float

    @property
    def instance_throughput(self) -> float:
        return self.throughput * self.procs


@dataclass(frozen=True)
class ServedModel:
    """A model to serve: its table, request rate (req/s) and latency SLO (ms)."""

    name: str
    rows: tuple[ProfileRow, ...]
    rate: float
    slo_ms: float


@dataclass(frozen=True)
class ServingSpec:
    """The serving-mode request: GPU model, served models, admissibility factor."""

    model: GpuModel
    models: tuple[ServedModel, ...]
    latency_factor: float = 0.45
    whole_gpu: bool = True  # whole GPUs (MIG disabled) are candidates when a table measures them
    slo_reading: str = "exact"  # or "integer": SLOs truncated as ParvaGPU's atoi reads them

    def best(self, m: ServedModel, size: int) -> ProfileRow | None:
        """The admissible row of ``m`` at ``size`` with the highest instance throughput (ties: fewer procs)."""
        limit = self.latency_factor * m.slo_ms
        rows = [r for r in m.rows if r.size == size and r.latency_s * 1000.0 < limit]
        if not rows:
            return None
        return max(rows, key=lambda r: (r.instance_throughput, -r.procs, -r.batch))


# Bounds of the numbers a serving request holds: far above any measured table (ParvaGPU's rates are tens to
# thousands of req/s), and low enough that the solver's scaled integers (x 10^6) stay within 64 bits.
MAX_RATE = 1e9  # req/s, a model's rate; also a row's per-process throughput
MAX_SLO_MS = 1e9
MAX_LATENCY_S = 1e6
MAX_BATCH = 1_000_000
MAX_PROCS = 1000


def _number(v: Any, what: str, high: float, *, integer: bool = False, zero: bool = False, text: bool = False) -> Any:
    """``v`` (a YAML number, or with ``text`` the text of a CSV cell) as a finite number in (0, high]
    ([0, high] with ``zero``), an int with ``integer``; else a ValueError naming ``what`` and the range. Text
    is ASCII digits as written: float() and int() also read '1_0', other scripts' digits, 'inf' and 'nan'."""
    x: Any = v
    if isinstance(v, str) and text:
        t = v.strip()
        x = None if not decimal_text(t) else float(t) if not integer else int(t) if is_digits(t) else None
    ok = type(x) is int or (not integer and type(x) is float)
    if not ok or not math.isfinite(x) or not (0 <= x if zero else 0 < x) or x > high:
        valid = (f"an integer from {0 if zero else 1} to {int(high)}" if integer
                 else f"a number {'>= 0' if zero else '> 0'} and at most {high:g}")
        raise ValueError(f"{what} must be {valid}, not {v!r}")
    return x


def _size(text: str | None) -> int:
    t = (text or "").strip()
    if t.lower() == "whole":
        return WHOLE
    if not is_digits(t) or int(t) < 1:
        raise ValueError(f"Mig instance must be a number of compute slices >= 1 or 'whole', not {t!r}")
    return int(t)


def read_profile_csv(path: Path) -> tuple[ProfileRow, ...]:
    """Rows of a ParvaGPU ``prof_data`` CSV (Mig instance, Batch size, Workload Number, Throughput, Latency).

    ``Mig instance`` is the instance size in compute slices, or ``whole`` (migctl's extension: the whole
    GPU with MIG disabled). Every number is checked (:func:`_number`): a row is one line naming the cell.
    """
    import io

    from migctl.inputs import InputError, read_text

    rows = []
    try:
        with io.StringIO(read_text(path, "profile table"), newline="") as f:
            reader = csv.DictReader(f)
            for r in reader:
                rows.append(ProfileRow(
                    size=_size(r["Mig instance"]),
                    batch=_number(r["Batch size"], "Batch size", MAX_BATCH, integer=True, text=True),
                    procs=_number(r["Workload Number"], "Workload Number", MAX_PROCS, integer=True, text=True),
                    throughput=_number(r["Throughput"], "Throughput", MAX_RATE, zero=True, text=True),
                    latency_s=_number(r["Latency"], "Latency", MAX_LATENCY_S, zero=True, text=True)))  # 0 occurs
    except InputError as e:
        raise PlanError(str(e)) from None
    except KeyError as e:
        raise PlanError(f"{path}: not a profile table: no column {e} (need Mig instance, Batch size, "
                        "Workload Number, Throughput, Latency)") from None
    except (ValueError, csv.Error) as e:
        raise PlanError(f"{path}:{reader.line_num}: {e}") from None
    return tuple(rows)


def _read_row(path: Path, index: int) -> list[str]:
    import io

    from migctl.inputs import InputError, read_text

    try:
        rows = [r for r in csv.reader(io.StringIO(read_text(path, "SLO table"), newline="")) if r]
    except InputError as e:
        raise PlanError(str(e)) from None
    except csv.Error as e:
        raise PlanError(f"SLO table {path}: {e}") from None
    if not 1 <= index <= len(rows):
        raise PlanError(f"{path}: SLO set {index} does not exist (1..{len(rows)})")
    return rows[index - 1]


def parvagpu_models(root: Path, slo_set: int) -> tuple[ServedModel, ...]:
    """The served models of ParvaGPU SLO set ``slo_set`` (1-based) read from its data directory as it is."""
    prof = root / "prof_data"
    if not prof.is_dir():
        raise PlanError(f"{root}: no prof_data directory (expected the ParvaGPU data layout)")
    names = sorted(p.stem for p in prof.glob("*.csv"))
    rates = _read_row(root / "SLO" / "SLO_req_rate.csv", slo_set)
    slos = _read_row(root / "SLO" / "SLO_latency.csv", slo_set)
    if len(rates) != len(names) or len(slos) != len(names):
        raise PlanError(f"{root}: SLO rows have {len(rates)} columns, prof_data has {len(names)} models")
    out = []
    for name, rate, slo in zip(names, rates, slos, strict=True):
        if rate.strip().upper() == "N/A" or slo.strip().upper() == "N/A":
            continue
        try:
            r, o = _number(rate, "rate", MAX_RATE, text=True), _number(slo, "SLO (ms)", MAX_SLO_MS, text=True)
        except ValueError as e:
            raise PlanError(f"{root / 'SLO'}: set {slo_set}, model {name}: {e}") from None
        out.append(ServedModel(name=name, rows=read_profile_csv(prof / f"{name}.csv"), rate=r, slo_ms=o))
    return tuple(out)


def parse_serving(data: dict[str, Any], base_dir: Path | None) -> ServingSpec:
    """Parse the ``serving`` section: ``gpu_model``, ``latency_factor``, and ``parvagpu`` or ``models``."""
    from migctl.planner.request import _load_model

    def path(p: str) -> Path:
        q = Path(p)
        return q if q.is_absolute() or base_dir is None else base_dir / q

    unknown = set(data) - {"gpu_model", "latency_factor", "parvagpu", "models", "whole_gpu", "slo_reading"}
    if unknown:
        raise PlanError(f"serving: unknown key(s) {', '.join(sorted(unknown))}; valid: gpu_model, latency_factor, "
                        "parvagpu, models, whole_gpu, slo_reading")
    whole = data.get("whole_gpu", True)
    if not isinstance(whole, bool):
        raise PlanError(f"serving.whole_gpu must be true or false, not {whole!r}")
    reading = str(data.get("slo_reading", "exact"))
    if reading not in ("exact", "integer"):
        raise PlanError(f"serving.slo_reading: {reading!r} (valid: exact, or integer = ParvaGPU's atoi reading)")
    gpu_model = data.get("gpu_model", "A100-80GB")
    if not isinstance(gpu_model, str):
        raise PlanError(f"serving.gpu_model must be a GPU model's name, not {gpu_model!r}")
    model = _load_model(gpu_model)
    try:
        factor = _number(data.get("latency_factor", 0.45), "serving.latency_factor", 1.0)
    except ValueError as e:
        raise PlanError(f"{e} (a row is admissible when its latency < latency_factor x SLO)") from None
    models: list[ServedModel] = []
    if "parvagpu" in data:
        pg = data["parvagpu"]
        if not isinstance(pg, dict) or set(pg) - {"dir", "slo_set"} or not isinstance(pg.get("dir", "."), str):
            raise PlanError(f"serving.parvagpu must be a mapping with dir (a directory) and slo_set, not {pg!r}")
        try:
            slo_set = _number(pg.get("slo_set", 1), "serving.parvagpu.slo_set", 1000, integer=True)
        except ValueError as e:
            raise PlanError(str(e)) from None
        models.extend(parvagpu_models(path(pg.get("dir", ".")), slo_set))
    listed = data.get("models") or []
    if not isinstance(listed, list):
        raise PlanError(f"serving.models must be a list of {{name, profile_csv, rate, slo_ms}}, not {listed!r}")
    for i, m in enumerate(listed):
        where = f"serving.models[{i}]"
        if not isinstance(m, dict) or set(m) != {"name", "profile_csv", "rate", "slo_ms"}:
            raise PlanError(f"{where}: each model is a mapping with exactly name, profile_csv, rate and slo_ms, "
                            f"not {m!r}")
        if not isinstance(m["name"], str) or not isinstance(m["profile_csv"], str):
            raise PlanError(f"{where}: name and profile_csv must be text")
        try:
            rate = _number(m["rate"], f"{where}.rate", MAX_RATE)
            slo = _number(m["slo_ms"], f"{where}.slo_ms", MAX_SLO_MS)
        except ValueError as e:
            raise PlanError(str(e)) from None
        models.append(ServedModel(name=m["name"], rows=read_profile_csv(path(m["profile_csv"])), rate=rate,
                                  slo_ms=slo))
    if not models:
        raise PlanError("serving: no models (give 'parvagpu: {dir, slo_set}' or 'models')")
    if reading == "integer":  # ParvaGPU's data loader parses SLOs with atoi: 71.5 ms is read as 71 ms
        models = [dataclasses.replace(m, slo_ms=float(math.trunc(m.slo_ms))) for m in models]
    return ServingSpec(model=model, models=tuple(models), latency_factor=factor, whole_gpu=whole,
                       slo_reading=reading)


def size_profiles(model: GpuModel, sizes: set[int]) -> dict[int, GIProfile]:
    """For each instance size (compute slices), the plain profile with that many slices and least memory."""
    out: dict[int, GIProfile] = {}
    for s in sorted(sizes):
        cands = [p for p in model.gi_profiles if p.suffix == "" and p.slices == s]
        if cands:
            out[s] = min(cands, key=lambda p: (p.placement_size, p.memory_mib, p.id))
    return out


def _label(gm: GpuModel, prof: dict[int, GIProfile], s: int) -> str:
    return "whole" if s == WHOLE else prof[s].name


def plan_serving(request: Request) -> Plan:
    """Fewest GPUs (then fewest slices) serving every model's rate within its SLO; exact via CP-SAT.

    Candidates: every maximal MIG layout of the table's sizes, and the whole GPU with MIG disabled when
    the tables measure it (and ``whole_gpu`` allows it).
    """
    from ortools.sat.python import cp_model

    t0 = time.perf_counter()
    spec: ServingSpec = request.serving
    gm = spec.model
    sizes = {r.size for m in spec.models for r in m.rows if r.size != WHOLE}
    prof = size_profiles(gm, sizes)
    whole_ok = spec.whole_gpu and any(r.size == WHOLE for m in spec.models for r in m.rows)
    cands = list(prof) + ([WHOLE] if whole_ok else [])
    slices_of = {s: (gm.compute_slices if s == WHOLE else s) for s in cands}
    best = {(j, s): spec.best(m, s) for j, m in enumerate(spec.models) for s in cands}
    for j, m in enumerate(spec.models):
        if not any(best[j, s] for s in cands):
            raise PlanError(f"serving: no configuration of {m.name} meets latency < {spec.latency_factor:g} x "
                            f"{m.slo_ms:g} ms on any instance size")
    ids = sorted(p.id for p in prof.values())
    lays = [lay for lay in maximal_layouts(enumerate_layouts(gm, ids), ids) if lay] if ids else []
    by_id = {p.id: s for s, p in prof.items()}
    scale, exact = _exact_scale([r.throughput for r in best.values() if r is not None]
                                + [m.rate for m in spec.models])
    # exact: every throughput and rate is an integer multiple of 1/scale, so the integer model is the real one.
    # Otherwise the model is conservative (throughputs down, rates up: every plan really meets its rates) and
    # its bounds are recomputed below on the opposite rounding, which relaxes the real problem.
    thr = {k: _scaled(r.throughput, scale, "down") * r.procs for k, r in best.items() if r is not None}
    need = {j: _scaled(m.rate, scale, "up") for j, m in enumerate(spec.models)}
    for j, m in enumerate(spec.models):
        if not any(t > 0 for (j2, _s), t in thr.items() if j2 == j):
            raise PlanError(f"serving: {m.name}'s best throughput is below 1/{scale} req/s on every instance size; "
                            "cannot serve it (valid: throughputs of at least 0.000001 req/s)")
    # upper bound: one instance per needed unit of the best size, one GPU each
    ub_inst = {k: -(-need[k[0]] // t) if t > 0 else 0 for k, t in thr.items()}
    ub_gpus = sum(min((v for (j2, _s), v in ub_inst.items() if j2 == j and v > 0), default=0) for j in need)

    mdl = cp_model.CpModel()
    n = {k: mdl.new_int_var(0, ub_inst[k], f"n_{k[0]}_{k[1]}") for k in thr if thr[k] > 0}
    y = [mdl.new_int_var(0, ub_gpus, f"y_{c}") for c in range(len(lays))]
    w = mdl.new_int_var(0, ub_gpus if whole_ok else 0, "w")
    for j in need:
        mdl.add(sum(thr[k] * v for k, v in n.items() if k[0] == j) >= need[j])
    for s, p in prof.items():
        sup = [lay.count(p.id) * y[c] for c, lay in enumerate(lays) if p.id in lay]
        dem = [v for k, v in n.items() if k[1] == s]
        if dem:
            mdl.add(sum(dem) <= sum(sup))
    dem_w = [v for k, v in n.items() if k[1] == WHOLE]
    if dem_w:
        mdl.add(sum(dem_w) <= w)
    slices_used = sum(slices_of[k[1]] * v for k, v in n.items())
    gpus_expr = sum(y) + w
    lp_gpus = _lp_gpus(prof, lays, thr, need, whole_ok)
    from migctl.planner.request import MAX_AUTO_GPUS

    if lp_gpus > MAX_AUTO_GPUS:  # (a rate of 10^9 req/s ran for minutes before this bound)
        raise PlanError(f"serving: the rates need at least {math.ceil(lp_gpus - 1e-6)} GPUs; a serving plan has at "
                        f"most {MAX_AUTO_GPUS} (valid: lower rates)")
    if lp_gpus > 0:
        mdl.add(gpus_expr >= math.ceil(lp_gpus - 1e-6))  # valid cut: lets CP-SAT stop at the LP bound
    # phase 1: fewest GPUs; phase 2: with that many GPUs, fewest slices (hinted with phase 1)
    mdl.minimize(gpus_expr)
    t_end = t0 + float(request.options.time_limit_s)

    def run() -> tuple[object, int]:
        solver = cp_model.CpSolver()
        solver.parameters.max_time_in_seconds = max(0.5, t_end - time.perf_counter())
        solver.parameters.random_seed = int(request.options.seed)
        solver.parameters.num_workers = int(request.options.workers)
        solver.parameters.interleave_search = request.options.workers > 1
        from migctl.planner.progress import solve

        return solver, solve(solver, mdl, request.options.progress, "CP-SAT serving")

    solver, status = run()
    if status not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
        raise PlanError(f"serving: no plan found within {request.options.time_limit_s:g} s")
    gpus_obj = int(solver.value(gpus_expr))
    cp_bound = gpus_obj if status == cp_model.OPTIMAL else math.ceil(solver.best_objective_bound - 1e-6)
    if not exact:  # the rounded model's bound is not a bound of the real problem: use the relaxed one
        thr_up = {k: _scaled(r.throughput, scale, "up") * r.procs for k, r in best.items() if r is not None}
        need_down = {j: _scaled(m.rate, scale, "down") for j, m in enumerate(spec.models)}
        cp_bound = min(cp_bound, math.ceil(_lp_gpus(prof, lays, thr_up, need_down, whole_ok) - 1e-6))
    ys = [int(solver.value(v)) for v in y]
    ns = {k: int(solver.value(v)) for k, v in n.items()}
    mdl.add(gpus_expr <= gpus_obj)
    for v, val in zip(y, ys, strict=True):
        mdl.add_hint(v, val)
    mdl.add_hint(w, int(solver.value(w)))
    for k, v in n.items():
        mdl.add_hint(v, ns[k])
    mdl.minimize(slices_used)
    solver2, status2 = run()
    if status2 in (cp_model.OPTIMAL, cp_model.FEASIBLE):
        ys = [int(solver2.value(v)) for v in y]
        ns = {k: int(solver2.value(v)) for k, v in n.items()}
    t1 = time.perf_counter()

    lp_val = lp_gpus if exact else float(cp_bound)
    comb = math.ceil(  # from the real (unrounded) throughputs
        sum(m.rate / max((best[j, s].instance_throughput if best[j, s] is not None else 0.0) / slices_of[s]
                         for s in cands)
            for j, m in enumerate(spec.models))
        / gm.compute_slices - 1e-9
    )

    # expand: GPUs with their layouts, instances filled model by model; then the whole GPUs
    gpus: list[list[int]] = []
    slots: dict[int, list[int]] = {}
    for c, lay in enumerate(lays):
        for _ in range(ys[c]):
            gpus.append([])
            for pid in lay:
                slots.setdefault(by_id[pid], []).append(len(gpus) - 1)
    units: dict[int, list[tuple[int, int]]] = {}
    for (j, s), cnt in sorted(ns.items()):
        if s == WHOLE:
            continue
        for _ in range(cnt):
            g = slots[s].pop(0)
            units.setdefault(g, []).append((j, s))
    planned: list[PlannedGpu] = []
    counter: dict[int, int] = {}
    for g in sorted(units):
        layout = tuple(sorted(prof[s].id for _, s in units[g]))
        starts: dict[int, list[int]] = {}
        for pid, st in placements_for(gm.key, layout):
            starts.setdefault(pid, []).append(st)
        insts = []
        for j, s in sorted(units[g], key=lambda t: (-t[1], t[0])):
            p = prof[s]
            r = best[j, s]
            assert r is not None
            unit = counter.get(j, 0)
            counter[j] = unit + 1
            insts.append(PlannedInstance(
                profile_id=p.id, profile=p.name, start=starts[p.id].pop(0), size=p.placement_size, slices=p.slices,
                workload=spec.models[j].name, unit=unit, detail=_detail(r),
            ))
        insts.sort(key=lambda i: i.start)
        planned.append(PlannedGpu(index=len(planned), model=gm.key, instances=insts))
    for (j, s), cnt in sorted(ns.items()):
        if s != WHOLE:
            continue
        r = best[j, s]
        assert r is not None
        for _ in range(cnt):
            unit = counter.get(j, 0)
            counter[j] = unit + 1
            planned.append(PlannedGpu(index=len(planned), model=gm.key, instances=[], mig_enabled=False,
                                      whole={"workload": spec.models[j].name, "unit": unit,
                                             "slices": gm.compute_slices, "detail": _detail(r)}))
    bound = float(max(cp_bound, math.ceil(lp_val - 1e-6), comb))
    if bound > gpus_obj:  # a valid bound can never exceed a feasible plan: that would be a bug, not a rounding
        raise PlanError(f"internal error: serving lower bound {bound:g} exceeds the plan's {gpus_obj} GPUs")
    return Plan(
        gpus=planned,
        objective=float(gpus_obj),
        lower_bound=bound,
        status="optimal" if bound >= gpus_obj else "feasible",
        objective_name="gpus",
        bounds={"lp": round(lp_val, 6), "cp_sat": float(cp_bound), "combinatorial": float(comb)},
        stats={
            "slices_used": sum(g.used_slices for g in planned),
            "slices_proven_minimal": status2 == cp_model.OPTIMAL,
            "models": len(spec.models),
            "slo_reading": spec.slo_reading,
            "exact_data": exact,
            "layouts": len(lays),
            "whole_gpu_candidate": whole_ok,
            "whole_gpus": sum(1 for g in planned if not g.mig_enabled),
            "time_s": {"solve": round(t1 - t0, 4), "total": round(time.perf_counter() - t0, 4)},
        },
        explain=explain(spec, prof, cands, best, planned),
    )


MAX_DECIMALS = 6


def _decimals(x: float) -> int | None:
    """Decimal places of ``x`` as written (its shortest repr); None beyond :data:`MAX_DECIMALS`."""
    from decimal import Decimal

    exp = Decimal(repr(float(x))).normalize().as_tuple().exponent
    d = max(0, -int(exp)) if isinstance(exp, int) else 0
    return d if d <= MAX_DECIMALS else None


def _exact_scale(values: list[float]) -> tuple[int, bool]:
    """(scale, exact): 10^d for the most decimals any value has (CSV data are decimals), exact when d fits."""
    ds = [_decimals(v) for v in values]
    if any(d is None for d in ds):
        return 10**MAX_DECIMALS, False
    return 10 ** max([*ds, 3]), True  # type: ignore[type-var]


def _scaled(x: float, scale: int, rounding: str) -> int:
    """``x * scale`` as an integer, exactly when ``x`` has that many decimals; else rounded down or up."""
    from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal

    v = Decimal(repr(float(x))) * scale
    return int(v.to_integral_value(rounding=ROUND_FLOOR if rounding == "down" else ROUND_CEILING))


def _detail(r: ProfileRow) -> dict[str, Any]:
    return {"batch": r.batch, "processes": r.procs, "throughput": round(r.instance_throughput, 3),
            "latency_ms": round(r.latency_s * 1000, 3)}


def explain(spec: ServingSpec, prof: dict[int, GIProfile], cands: list[int],
            best: dict[tuple[int, int], ProfileRow | None], planned: list[PlannedGpu]) -> list[dict[str, Any]]:
    """Per model, why it got what it got: admissible rows per candidate size, the best row's throughput
    per compute slice and SLO margin, what the plan gives it, and its throughput against its rate."""
    gm = spec.model
    out: list[dict[str, Any]] = []
    for j, m in enumerate(spec.models):
        limit = spec.latency_factor * m.slo_ms
        options = []
        for s in cands:
            label = _label(gm, prof, s)
            slices = gm.compute_slices if s == WHOLE else s
            rows = [r for r in m.rows if r.size == s]
            adm = [r for r in rows if r.latency_s * 1000.0 < limit]
            opt: dict[str, Any] = {"size": label, "slices": slices, "rows": len(rows), "admissible_rows": len(adm)}
            r = best[j, s]
            if r is not None:
                opt.update({"batch": r.batch, "processes": r.procs, "throughput": round(r.instance_throughput, 3),
                            "throughput_per_slice": round(r.instance_throughput / slices, 3),
                            "latency_ms": round(r.latency_s * 1000, 3),
                            "slo_margin_pct": round(100 * (1 - r.latency_s * 1000.0 / limit), 1)})
            options.append(opt)
        got: dict[str, int] = {}
        total = 0.0
        for g in planned:
            if not g.mig_enabled and g.whole and g.whole["workload"] == m.name:
                got["whole"] = got.get("whole", 0) + 1
                total += float(g.whole["detail"]["throughput"])
            for i in g.instances:
                if i.workload == m.name:
                    got[i.profile] = got.get(i.profile, 0) + 1
                    total += float(i.detail.get("throughput", 0.0))
        usable = [o for o in options if "throughput_per_slice" in o]
        top = max(usable, key=lambda o: o["throughput_per_slice"])
        mig = [o for o in usable if o["size"] != "whole"]
        whole = next((o for o in usable if o["size"] == "whole"), None)
        parts = [f"{m.name}: " + (", ".join(f"{v} x {k}" for k, v in got.items()) or "nothing")]
        parts.append(f"best per slice {top['size']} ({top['throughput_per_slice']:g}/slice, latency "
                     f"{top['latency_ms']:g} ms, SLO margin {top['slo_margin_pct']:g}%)")
        if whole is not None and mig:
            bm = max(mig, key=lambda o: o["throughput_per_slice"])
            verdict = "MIG loses" if whole["throughput_per_slice"] > bm["throughput_per_slice"] else "MIG wins"
            parts.append(f"{verdict}: whole GPU {whole['throughput_per_slice']:g}/slice vs {bm['size']} "
                         f"{bm['throughput_per_slice']:g}/slice")
        elif whole is None and any(r.size == WHOLE for r in m.rows):
            parts.append("whole GPU " + ("not allowed (whole_gpu: false)" if not spec.whole_gpu
                                         else "has no admissible row"))
        parts.append(f"serves {total:g} of {m.rate:g} req/s")
        out.append({"model": m.name, "rate": m.rate, "slo_ms": m.slo_ms, "latency_limit_ms": round(limit, 3),
                    "options": options, "assigned": got, "throughput": round(total, 3),
                    "rate_margin_pct": round(100 * (total / m.rate - 1), 1) if m.rate > 0 else None,
                    "why": "; ".join(parts)})
    return out


def _lp_gpus(prof: dict[int, GIProfile], lays: list, thr: dict, need: dict, whole: bool = False) -> float:
    """LP relaxation of the serving model: a lower bound on the number of GPUs (0 if it fails)."""
    from ortools.linear_solver import pywraplp

    lp = pywraplp.Solver.CreateSolver("GLOP")
    inf = lp.infinity()
    ln = {k: lp.NumVar(0, inf, "") for k, t in thr.items() if t > 0}
    ly = [lp.NumVar(0, inf, "") for _ in lays]
    lw = lp.NumVar(0, inf if whole else 0, "")
    for j in need:
        lp.Add(sum(thr[k] * v for k, v in ln.items() if k[0] == j) >= need[j])
    for s, p in prof.items():
        dem = [v for k, v in ln.items() if k[1] == s]
        if dem:
            lp.Add(sum(dem) <= sum(lay.count(p.id) * ly[c] for c, lay in enumerate(lays) if p.id in lay))
    dem_w = [v for k, v in ln.items() if k[1] == WHOLE]
    if dem_w:
        lp.Add(sum(dem_w) <= lw)
    lp.Minimize(sum(ly) + lw)
    return lp.Objective().Value() if lp.Solve() == pywraplp.Solver.OPTIMAL else 0.0


def verify_serving(plan: Plan, spec: ServingSpec) -> list[str]:
    """Check a serving plan against the tables: every instance's configuration is admissible and every
    model's summed throughput meets its rate. Recomputed from the rows, independent of the solver."""
    problems: list[str] = []
    by_name = {m.name: m for m in spec.models}
    total: dict[str, float] = {m.name: 0.0 for m in spec.models}
    for g in plan.gpus:
        uses: list[tuple[str | None, int, dict[str, Any]]] = [(i.workload, i.slices, i.detail) for i in g.instances]
        if not g.mig_enabled:
            if g.instances or not g.whole:
                problems.append(f"GPU {g.index}: MIG disabled but the plan lists instances or no workload")
                continue
            if not spec.whole_gpu:
                problems.append(f"GPU {g.index}: whole GPUs are not allowed (whole_gpu: false)")
            uses = [(g.whole.get("workload"), WHOLE, g.whole.get("detail", {}))]
        for workload, size, detail in uses:
            m = by_name.get(workload or "")
            if m is None:
                problems.append(f"GPU {g.index}: instance serves unknown model {workload!r}")
                continue
            rows = [r for r in m.rows if r.size == size and r.batch == detail.get("batch")
                    and r.procs == detail.get("processes")]
            if len(rows) != 1:
                problems.append(f"GPU {g.index}: {m.name} config not found in its table")
                continue
            r = rows[0]
            if not r.latency_s * 1000.0 < spec.latency_factor * m.slo_ms:
                problems.append(f"GPU {g.index}: {m.name} latency {r.latency_s * 1000:g} ms >= "
                                f"{spec.latency_factor:g} x SLO {m.slo_ms:g} ms")
            total[m.name] += r.throughput * r.procs
    for m in spec.models:
        if total[m.name] + 1e-9 < m.rate:
            problems.append(f"{m.name}: throughput {total[m.name]:.3f} < rate {m.rate:g}")
    return problems
