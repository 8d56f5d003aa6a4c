"""Run a workload on each MIG size (and the whole GPU with MIG disabled) and collect what it reports.

Per target (a GI profile, or ``whole``), on one GPU:

1. the instance is made through the transactional apply engine (:func:`migctl.reconcile.apply_desired`):
   the GPU's original instances stay where they are when the new one fits next to them; otherwise only
   the busy ones stay (idle ones come back at the end). Busy instances are never touched: when the target
   cannot be placed next to them, or the GPU is in use and the target needs a MIG mode change, the
   target is skipped with the reason;
2. the MIG device is leased (the jobs database), so ``migctl run`` never lands on it meanwhile;
3. for each batch size x process count: ``warmup + repeat`` runs; each starts ``procs`` copies of the
   command behind migctl's gate (registered as clients of the device first), with
   ``CUDA_VISIBLE_DEVICES=MIG-<uuid>`` and the parameters in the environment, bounded by ``timeout``;
4. at the end -- also after a failure or Ctrl-C -- the GPU's original layout is restored, again through
   the apply engine.

Before the first change, a *bench journal* (``<state dir>/bench-<node>.json``, 0600) records the GPU's
original layout and the profiler's PID. If the profiler dies (SIGKILL), the next ``migctl bench`` (or
``migctl bench --recover``) finds the journal of a dead PID and restores the layout.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from migctl.bench.protocol import ProtocolError, parse_output
from migctl.bench.stats import summarise
from migctl.errors import UserError
from migctl.paths import node_slug, state_dir

JOURNAL_FORMAT = "migctl-bench-journal"
LABEL = "migctl-bench"
WHOLE = "whole"
OUTPUT_LIMIT = 1 << 20  # bytes of a run's stdout that are parsed (the tail)
Progress = Callable[[int, int, str], None]


class BenchError(UserError):
    """A bench that cannot run (bad arguments, no GPU, another bench running); exit status 2 unless given."""


@dataclass(frozen=True)
class Target:
    """Where a configuration runs: a GI profile, or the whole GPU with MIG disabled (``profile_id`` None)."""

    name: str
    slices: int  # compute slices (the whole GPU: all of them)
    sms: int
    memory_mib: int
    profile_id: int | None = None

    @property
    def whole(self) -> bool:
        return self.profile_id is None

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "whole": self.whole, "slices": self.slices, "sms": self.sms,
                "memory_mib": self.memory_mib}


@dataclass
class Settings:
    """What to run and how often."""

    command: list[str]
    batches: list[int] = field(default_factory=lambda: [1])
    procs: list[int] = field(default_factory=lambda: [1])
    repeat: int = 3
    warmup: int = 1
    timeout: float = 300.0
    gpu: int | None = None
    profiles: list[str] | None = None  # None: one plain profile per size, plus the whole GPU when allowed
    whole: bool = True
    lock_timeout: float = 60.0


@dataclass
class RunResult:
    """One run of one configuration (``procs`` processes together)."""

    target: str
    batch: int
    procs: int
    index: int  # 0-based, warm-up runs included
    warmup: bool
    status: str  # ok | failed | timeout | protocol | interrupted
    wall_s: float
    throughput: float | None = None  # per process
    latency_ms: float | None = None
    unit: str | None = None
    source: str | None = None  # protocol | wall
    error: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in self.__dict__.items() if k != "extra"}
        if self.extra:
            d["extra"] = self.extra
        return d


@dataclass
class BenchResult:
    """Everything a bench measured, plus what it skipped and why."""

    gpu_model: str
    gpu_index: int
    compute_slices: int
    command: list[str]
    settings: dict[str, Any]
    targets: list[Target] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    runs: list[RunResult] = field(default_factory=list)
    interrupted: bool = False
    restored: bool = False
    recovered: str | None = None

    def rows(self) -> list[dict[str, Any]]:
        """Per (target, batch, procs): medians and spread of the measured (non-warm-up, ok) runs."""
        out: list[dict[str, Any]] = []
        by_name = {t.name: t for t in self.targets}
        keys: list[tuple[str, int, int]] = []
        for r in self.runs:
            k = (r.target, r.batch, r.procs)
            if k not in keys:
                keys.append(k)
        for name, batch, procs in keys:
            every = [r for r in self.runs if (r.target, r.batch, r.procs) == (name, batch, procs)]
            runs = [r for r in every if not r.warmup]
            ok = [r for r in runs if r.status == "ok"]
            thr = summarise([r.throughput for r in ok if r.throughput is not None])
            lat = summarise([r.latency_ms for r in ok if r.latency_ms is not None])
            t = by_name[name]
            row: dict[str, Any] = {
                "target": name, "whole": t.whole, "slices": t.slices, "batch": batch, "procs": procs,
                "runs": len(runs), "ok": len(ok), "failures": [r.error for r in every if r.status != "ok"][:3],
                "unit": ok[0].unit if ok else None, "source": ok[0].source if ok else None,
            }
            if thr is not None and lat is not None:
                row["throughput"] = thr.to_dict()
                row["latency_ms"] = lat.to_dict()
                inst = thr.median * procs
                row["instance_throughput"] = inst
                row["throughput_per_slice"] = inst / t.slices
            out.append(row)
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": "migctl-bench", "version": 1, "gpu_model": self.gpu_model, "gpu_index": self.gpu_index,
            "compute_slices": self.compute_slices, "command": self.command, "settings": self.settings,
            "interrupted": self.interrupted, "restored": self.restored, "recovered": self.recovered,
            "targets": [t.to_dict() for t in self.targets], "skipped": self.skipped, "rows": self.rows(),
            "runs": [r.to_dict() for r in self.runs],
        }


# ------------------------------------------------------------------------------------------ journal
def _atomic_write(path: Any, text: str) -> None:
    from migctl.reconcile.journal import _atomic_write as write

    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    write(path, text)


def journal_problem(data: dict[str, Any]) -> str | None:
    """What is wrong with a bench journal's fields (None when it is what :meth:`BenchJournal.begin` writes).

    ``recover`` restores the GPU to the journal's layout through the transactional apply, so a damaged layout
    (``"mig": 0``, a start of -1) must stop it before it changes anything: it would otherwise disable MIG or
    destroy instances to reach a layout nobody had.
    """
    from migctl.inputs import finite_number
    from migctl.reconcile.journal import layout_problem

    if type(data.get("version")) is not int or data["version"] != 1:
        return f"version {data.get('version')!r}, this migctl reads version 1"
    if type(data.get("pid")) is not int or not 0 < data["pid"] < 2**31:
        return "'pid' missing or not a process ID"
    for key in ("pid_start", "started"):
        if not finite_number(data.get(key)):
            return f"'{key}' missing or not a time"
    if not isinstance(data.get("gpu_uuid"), str) or not data["gpu_uuid"].startswith("GPU-"):
        return "'gpu_uuid' missing or not a GPU UUID"
    if type(data.get("gpu_index")) is not int or not 0 <= data["gpu_index"] < 1024:
        return "'gpu_index' missing or not an integer >= 0"
    return layout_problem("layout", data.get("layout"))


class BenchJournal:
    """``<state dir>/bench-<node>.json``: the original layout of the benched GPU and the profiler's PID."""

    def __init__(self, node: Any) -> None:
        self.path = state_dir() / f"bench-{node_slug(node)}.json"

    def load(self) -> dict[str, Any] | None:
        from migctl.inputs import InputError, load_json, read_text

        if not os.path.lexists(self.path):
            return None
        try:
            data = load_json(read_text(self.path, "bench journal", 1 << 20), f"bench journal {self.path}")
        except InputError as e:
            raise BenchError(f"{e}; inspect it, then remove it") from None
        if not isinstance(data, dict) or data.get("format") != JOURNAL_FORMAT:
            raise BenchError(f"{self.path} is not a migctl bench journal; inspect it, then remove it")
        problem = journal_problem(data)
        if problem:
            raise BenchError(f"bench journal {self.path} is damaged ({problem}); nothing was changed; inspect it, "
                             "then remove it")
        return data

    def begin(self, gpu_uuid: str, gpu_index: int, layout: dict[str, Any]) -> None:
        import psutil

        from migctl.proc import pid_alive  # noqa: F401  (same liveness rule as leases)

        me = psutil.Process(os.getpid())
        _atomic_write(self.path, json.dumps({
            "format": JOURNAL_FORMAT, "version": 1, "pid": me.pid, "pid_start": me.create_time(),
            "started": time.time(), "gpu_uuid": gpu_uuid, "gpu_index": gpu_index, "layout": layout,
        }, indent=1))

    def finish(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


def restore_layout(node: Any, gpu_uuid: str, layout: dict[str, Any], lock_timeout: float = 60.0) -> Any:
    """Bring GPU ``gpu_uuid`` back to ``layout`` through the transactional apply (busy instances stay)."""
    from migctl.reconcile import apply_desired
    from migctl.reconcile.live import desired_from_layout

    def resolve(live: list[Any]) -> dict[int, Any]:
        for g in live:
            if g.uuid == gpu_uuid:
                return {g.index: desired_from_layout(g.index, layout, "bench journal")}
        raise BenchError(f"the benched GPU {gpu_uuid} is not on this node any more")

    return apply_desired(resolve, f"{LABEL}-restore", "migctl bench", node=node, lock_timeout=lock_timeout)


def recover(node: Any, lock_timeout: float = 60.0) -> str | None:
    """Restore the layout a dead profiler left behind; None when there is nothing to recover."""
    from migctl.proc import pid_alive

    j = BenchJournal(node)
    data = j.load()
    if data is None:
        return None
    if pid_alive(int(data.get("pid") or 0), data.get("pid_start")):
        raise BenchError(f"another migctl bench (PID {data.get('pid')}) is measuring on this node; wait for it "
                         f"to finish (its journal: {j.path})", 4)
    try:
        restore_layout(node, str(data["gpu_uuid"]), data["layout"], lock_timeout)
    except UserError as e:
        raise BenchError(f"could not restore GPU {data.get('gpu_index')} after the interrupted bench of PID "
                         f"{data.get('pid')}: {e}; journal kept at {j.path}", getattr(e, "exit_code", 5)) from None
    j.finish()
    return (f"restored GPU {data.get('gpu_index')} to its layout before the interrupted bench "
            f"(PID {data.get('pid')})")


# ------------------------------------------------------------------------------------------ targets
def _gpu_for(node: Any, index: int | None) -> Any:
    gpus = node.gpus()
    if index is not None:
        if not 0 <= index < len(gpus):
            raise BenchError(f"GPU {index} does not exist; valid: 0..{len(gpus) - 1}")
        g = gpus[index]
        if g.model is None or not g.mig_capable():
            raise BenchError(f"GPU {index} ({g.name}) is not MIG-capable")
        return g
    for g in gpus:
        if g.model is not None and g.mig_capable():
            return g
    raise BenchError("no MIG-capable GPU on this node")


def targets_for(gpu: Any, names: Sequence[str] | None, whole: bool) -> list[Target]:
    """The requested targets on ``gpu``; default one plain profile per size (least memory) + the whole GPU."""
    from migctl.planner.serving import size_profiles

    model = gpu.model
    offered = {p.name: p for p in model.gi_profiles if gpu.profile(p.name) is not None}
    whole_t = Target(WHOLE, model.compute_slices, model.sms, model.memory_mib, None)
    if names is None:
        plain = size_profiles(model, {p.slices for p in offered.values() if p.suffix == ""})
        out = [Target(p.name, p.slices, p.sms, p.memory_mib, p.id) for _, p in sorted(plain.items())
               if p.name in offered]
        return out + ([whole_t] if whole else [])
    out = []
    for n in names:
        if n == WHOLE:
            out.append(whole_t)
            continue
        p = offered.get(n)
        if p is None:
            raise BenchError(f"unknown profile {n!r} on GPU {gpu.index} ({model.key}); valid: "
                             f"{', '.join(offered)}, {WHOLE}")
        out.append(Target(p.name, p.slices, p.sms, p.memory_mib, p.id))
    if len({t.name for t in out}) != len(out):
        raise BenchError("--profiles names a profile twice")
    return out


def _want(layout_gis: Sequence[dict[str, Any]]) -> list[Any]:
    from migctl.config.parted import WantCI, WantGI

    return [WantGI(g["profile"], int(g["start"]), tuple(WantCI(c["profile"], int(c["start"])) for c in g["cis"]))
            for g in layout_gis]


def desired_for(live: Any, original: dict[str, Any], target: Target) -> tuple[Any | None, str]:
    """The desired state of the GPU for ``target`` (or None and why not), never moving a busy instance."""
    from migctl.catalog import Placement
    from migctl.catalog.geometry import PlacedGI, place_all
    from migctl.config.parted import Desired, WantCI, WantGI

    if target.whole:
        if live.pids:
            return None, (f"GPU {live.index} is in use (PIDs {', '.join(map(str, live.pids))}); the MIG mode can "
                          "only change on an idle GPU")
        return Desired(live.index, False, (), LABEL), ""
    model = live.model
    prof = model.profile(target.name)
    orig = list(original.get("gis", [])) if original.get("mig") else []
    busy = [{"profile": g.profile, "start": g.start, "cis": [{"profile": c.profile, "start": c.start} for c in g.cis]}
            for g in live.gis if g.busy]
    busy_keys = {(b["profile"], b["start"]) for b in busy}
    keep_all = orig + [b for b in busy if (b["profile"], b["start"]) not in {(o["profile"], o["start"]) for o in orig}]
    for base in (keep_all, [o for o in keep_all if (o["profile"], o["start"]) in busy_keys]):
        fixed = []
        for g in base:
            p = model.profile(g["profile"])
            if p is None:
                break
            fixed.append(PlacedGI(p, Placement(int(g["start"]), p.placement_size)))
        else:
            placed = place_all(model, [prof], fixed)
            if placed is not None:
                new = WantGI(prof.name, placed[0].placement.start, (WantCI(prof.name),))
                return Desired(live.index, True, tuple(_want(base)) + (new,), LABEL), ""
    return None, f"{target.name} does not fit next to the busy instances on GPU {live.index}"


# ------------------------------------------------------------------------------------------ running
class Interrupted(Exception):
    """Ctrl-C (or SIGTERM) during a run."""


def _kill_group(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def _tail(f: Any, limit: int = OUTPUT_LIMIT) -> str:
    f.flush()
    size = f.seek(0, os.SEEK_END)
    f.seek(max(0, size - limit))
    data = f.read()
    text = data.decode("utf-8", errors="replace")
    if size > limit:  # the first line may be cut
        text = text.split("\n", 1)[-1]
    return text


def run_config(command: Sequence[str], env: dict[str, str], procs: int, timeout: float, node: Any, gpu_index: int,
               gi: int | None, ci: int | None) -> tuple[str, float, list[tuple[int, str, str, float]]]:
    """Start ``procs`` copies behind the gate, registered as clients, and wait (bounded by ``timeout``).

    Returns (status ok|timeout|interrupted, wall seconds, per process (exit status, stdout tail, stderr tail,
    wall seconds)).
    """
    from migctl.jobs.common import exit_status
    from migctl.jobs.runner import gated_popen, open_gate

    sim = getattr(node, "sim", None)
    started: list[tuple[Any, int, Any, Any]] = []
    closed_gates: set[int] = set()
    status = "ok"
    try:
        for i in range(procs):
            out = tempfile.TemporaryFile()
            err = tempfile.TemporaryFile()
            e = dict(env, MIGCTL_BENCH_PROC_INDEX=str(i))
            try:
                proc, gate = gated_popen(list(command), e, new_group=True, stdout=out, stderr=err,
                                         stdin=open(os.devnull, "rb"))  # noqa: SIM115 - closed with the process
            except OSError as ex:
                out.close()
                err.close()
                raise BenchError(f"cannot start {command[0]!r}: {ex.strerror or ex}") from None
            started.append((proc, gate, out, err))
            if sim is not None:
                rc = sim.add_client(gpu_index, proc.pid, gi, ci, name=os.path.basename(command[0])[:64])
                if rc:
                    raise BenchError(f"could not register PID {proc.pid} as a client of GPU {gpu_index} (NVML {rc})")
        t0 = time.monotonic()
        for _, gate, _, _ in started:
            closed_gates.add(gate)
            open_gate(gate)
        ends: dict[int, float] = {}
        deadline = t0 + timeout
        try:
            while len(ends) < len(started):
                for k, (proc, _, _, _) in enumerate(started):
                    if k not in ends and proc.poll() is not None:
                        ends[k] = time.monotonic()
                if len(ends) == len(started):
                    break
                if time.monotonic() >= deadline:
                    status = "timeout"
                    break
                time.sleep(0.005)
        except KeyboardInterrupt:
            status = "interrupted"
        if status != "ok":
            for proc, _, _, _ in started:
                if proc.poll() is None:
                    _kill_group(proc.pid, signal.SIGTERM)
            grace = time.monotonic() + 2.0
            while time.monotonic() < grace and any(p.poll() is None for p, _, _, _ in started):
                time.sleep(0.02)
            for proc, _, _, _ in started:
                _kill_group(proc.pid, signal.SIGKILL)
                proc.wait()
        t1 = time.monotonic()
        results = []
        for k, (proc, _, out, err) in enumerate(started):
            results.append((exit_status(proc.wait()), _tail(out), _tail(err, 4096), ends.get(k, t1) - t0))
        return status, t1 - t0, results
    finally:
        for proc, gate, out, err in started:
            if gate not in closed_gates:
                open_gate(gate, go=False)  # never started: the gate closes and the command exits 125
            if proc.poll() is None:
                _kill_group(proc.pid, signal.SIGKILL)
                proc.wait()
            if sim is not None:
                sim.remove_client(gpu_index, proc.pid)
            out.close()
            err.close()
            if proc.stdin is not None:
                proc.stdin.close()


def measure(target: str, batch: int, procs: int, index: int, warmup: bool, outcome: tuple[str, float, list[Any]],
            timeout: float) -> RunResult:
    """A :class:`RunResult` from what :func:`run_config` returned."""
    status, wall, per = outcome
    r = RunResult(target=target, batch=batch, procs=procs, index=index, warmup=warmup, status=status, wall_s=wall)
    if status == "timeout":
        r.error = f"did not finish within --timeout {timeout:g} s (killed)"
        return r
    if status == "interrupted":
        r.error = "interrupted"
        return r
    reports = []
    for rc, out, err, pwall in per:
        if rc != 0:
            last = err.strip().splitlines()[-1][:200] if err.strip() else ""
            r.status, r.error = "failed", f"exit status {rc}" + (f": {last}" if last else "")
            return r
        try:
            rep = parse_output(out)
        except ProtocolError as e:
            r.status, r.error = "protocol", str(e)
            return r
        reports.append((rep, pwall))
    if all(rep is not None for rep, _ in reports):
        units = {rep.unit for rep, _ in reports}  # type: ignore[union-attr]
        if len(units) > 1:
            r.status, r.error = "protocol", f"processes reported different units: {', '.join(sorted(units))}"
            return r
        r.throughput = sum(rep.throughput for rep, _ in reports) / len(reports)  # type: ignore[union-attr]
        r.latency_ms = max(rep.latency_ms for rep, _ in reports)  # type: ignore[union-attr]
        r.unit, r.source = units.pop(), "protocol"
        r.extra = dict(reports[0][0].extra)  # type: ignore[union-attr]
    elif any(rep is not None for rep, _ in reports):
        r.status, r.error = "protocol", "some processes printed a report and some did not"
    else:  # wall time: one run = one batch of ``batch`` items per process
        walls = [w for _, w in reports]
        r.throughput = sum(batch / max(w, 1e-9) for w in walls) / len(walls)
        r.latency_ms = max(walls) * 1000.0
        r.unit, r.source = "items/s (wall time)", "wall"
    return r


def child_env(base: dict[str, str], target: Target, device: str, batch: int, procs: int, warmup: bool) -> dict[str, str]:
    """The environment of one run: the device, the target's size, and the parameters."""
    env = dict(base)
    env.update({
        "CUDA_VISIBLE_DEVICES": device,
        "MIGCTL_MIG_UUID": device,
        "MIGCTL_MIG_PROFILE": target.name,
        "MIGCTL_BENCH_SLICES": str(target.slices),
        "MIGCTL_BENCH_SMS": str(target.sms),
        "MIGCTL_BENCH_MEMORY_MIB": str(target.memory_mib),
        "MIGCTL_BENCH_BATCH": str(batch),
        "MIGCTL_BENCH_PROCS": str(procs),
        "MIGCTL_BENCH_WARMUP": "1" if warmup else "0",
    })
    return env


# ------------------------------------------------------------------------------------------ the bench
def _validate(s: Settings) -> None:
    if not s.command:
        raise BenchError("no command given; usage: migctl bench [OPTIONS] -- CMD [ARGS...]")
    from migctl.jobs.common import JobsError
    from migctl.jobs.runner import check_command

    try:  # before the GPU is touched: a typo must not cost a layout change per size (exit 127/126, as run)
        check_command(s.command[0])
    except JobsError as e:
        raise BenchError(str(e), e.exit_code) from None
    from migctl.planner.serving import MAX_BATCH  # the bound the serving planner reads the table with

    if not s.batches or any(not 1 <= b <= MAX_BATCH for b in s.batches):
        raise BenchError(f"--batch: give integers from 1 to {MAX_BATCH}, e.g. 1,4,16")
    if not s.procs or any(p < 1 or p > 64 for p in s.procs):
        raise BenchError("--procs: give integers from 1 to 64, e.g. 1,2")
    if not 1 <= s.repeat <= 1000:
        raise BenchError("--repeat must be between 1 and 1000")
    if not 0 <= s.warmup <= 100:
        raise BenchError("--warmup must be between 0 and 100")
    if not 0 < s.timeout <= 86400:
        raise BenchError("--timeout must be > 0 and at most 86400 seconds")


def run_bench(node: Any, s: Settings, progress: Progress | None = None,
              on_run: Callable[[RunResult], None] | None = None) -> BenchResult:
    """Measure ``s.command`` on every target; restore the GPU's layout at the end (see module docstring)."""
    from migctl.jobs.leases import LeaseManager
    from migctl.jobs.leases import Request as LeaseRequest
    from migctl.reconcile import ApplyFailed, BusyError, LockBusy, apply_desired
    from migctl.reconcile.live import read_gpu

    _validate(s)
    recovered = recover(node, s.lock_timeout)
    gpu = _gpu_for(node, s.gpu)
    targets = targets_for(gpu, s.profiles, s.whole)
    if not targets:
        raise BenchError(f"GPU {gpu.index}: no profile to measure")
    live = read_gpu(gpu)
    original = live.layout()
    if not original["mig"]:  # measure the whole GPU first: fewer mode changes
        targets.sort(key=lambda t: not t.whole)
    else:
        targets.sort(key=lambda t: t.whole)
    result = BenchResult(gpu_model=gpu.model.key, gpu_index=gpu.index, compute_slices=gpu.model.compute_slices,
                         command=list(s.command), recovered=recovered,
                         settings={"batches": s.batches, "procs": s.procs, "repeat": s.repeat, "warmup": s.warmup,
                                   "timeout_s": s.timeout, "whole_allowed": s.whole})
    result.targets = list(targets)
    total = len(targets) * len(s.batches) * len(s.procs) * (s.repeat + s.warmup)
    done = 0
    journal = BenchJournal(node)
    journal.begin(gpu.uuid, gpu.index, original)
    mgr: Any = None
    base_env = dict(os.environ)
    old_term = None
    if threading.current_thread() is threading.main_thread():
        def _term(_sig: int, _frame: Any) -> None:
            raise KeyboardInterrupt
        old_term = signal.signal(signal.SIGTERM, _term)
    try:
        for t in targets:
            if result.interrupted:
                break
            cur = read_gpu(node.gpu(gpu.index))
            desired, why = desired_for(cur, original, t)
            if desired is None:
                result.skipped[t.name] = why
                done += len(s.batches) * len(s.procs) * (s.repeat + s.warmup)
                continue
            lease = None
            try:
                if progress:
                    progress(done, total, f"{t.name}: preparing the GPU")
                if not t.whole and cur.mig_current:
                    mgr = mgr or LeaseManager(node)
                    lease = mgr.try_acquire(LeaseRequest(profile=t.name, gpus=(gpu.index,), create=False),
                                            owner="bench", precheck=False)
                if lease is None:
                    try:
                        apply_desired(lambda _live, d=desired: {gpu.index: d}, LABEL, "migctl bench", node=node,
                                      lock_timeout=s.lock_timeout)
                    except (BusyError, LockBusy) as e:
                        result.skipped[t.name] = str(e)
                        done += len(s.batches) * len(s.procs) * (s.repeat + s.warmup)
                        continue
                    except ApplyFailed as e:
                        if not e.result.rolled_back:
                            raise
                        result.skipped[t.name] = str(e)
                        done += len(s.batches) * len(s.procs) * (s.repeat + s.warmup)
                        continue
                    if not t.whole:
                        mgr = mgr or LeaseManager(node)
                        lease = mgr.try_acquire(LeaseRequest(profile=t.name, gpus=(gpu.index,), create=False),
                                                owner="bench", precheck=False)
                        if lease is None:
                            result.skipped[t.name] = f"the new {t.name} instance was taken by another user"
                            continue
                if t.whole:
                    device, gi, ci = node.gpu(gpu.index).uuid, None, None
                else:
                    assert lease is not None
                    device, gi, ci = lease.cuda_visible_devices, lease.gi, lease.ci
                for batch in s.batches:
                    for procs in s.procs:
                        for k in range(s.warmup + s.repeat):
                            warm = k < s.warmup
                            if progress:
                                progress(done, total, f"{t.name} batch {batch} x{procs}: "
                                         f"{'warm-up ' if warm else ''}run {k + 1}/{s.warmup + s.repeat}")
                            env = child_env(base_env, t, device, batch, procs, warm)
                            outcome = run_config(s.command, env, procs, s.timeout, node, gpu.index, gi, ci)
                            r = measure(t.name, batch, procs, k, warm, outcome, s.timeout)
                            done += 1
                            result.runs.append(r)
                            if on_run:
                                on_run(r)
                            if r.status == "interrupted":
                                result.interrupted = True
                                break
                            if r.status != "ok":
                                # a configuration that crashes, hangs or breaks the protocol is not repeated
                                done += s.warmup + s.repeat - k - 1
                                break
                        if result.interrupted:
                            break
                    if result.interrupted:
                        break
            except KeyboardInterrupt:
                result.interrupted = True
            finally:
                if lease is not None and mgr is not None:
                    mgr.release(lease)
        if progress:
            progress(done, total, "restoring the GPU's layout")
    except KeyboardInterrupt:
        result.interrupted = True
    finally:
        try:
            # the restore itself must not be cut short by a second Ctrl-C
            old_int = None
            if threading.current_thread() is threading.main_thread():
                old_int = signal.signal(signal.SIGINT, signal.SIG_IGN)
            try:
                restore_layout(node, gpu.uuid, original, s.lock_timeout)
            finally:
                if old_int is not None:
                    signal.signal(signal.SIGINT, old_int)
            journal.finish()
            result.restored = True
        except UserError as e:
            raise BenchError(f"could not restore GPU {gpu.index}'s layout: {e}; journal kept at {journal.path}, "
                             "run `migctl bench --recover`", 5) from None
        finally:
            if old_term is not None:
                signal.signal(signal.SIGTERM, old_term)
    return result
