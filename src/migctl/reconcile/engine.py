"""Transactional apply: plan, journal, execute, roll back on failure, recover after a crash.

Guarantee: when ``apply_config`` returns or raises, every GPU has either entirely its old layout or
entirely the new one (same profiles and GI/CI placements). On any failure the node is rolled back to the
old layout of *every* GPU of the apply (instances that stayed keep their UUIDs; recreated instances get
new UUIDs, as the driver assigns them at creation). If the process dies mid-apply, the journal remains
and the next ``apply``/``recover`` rolls back (we never roll forward: the old layout is the one state
known to have been whole and accepted by its users).

"Busy" is :mod:`migctl.busy`'s (live lease, NVML process or MPS server), read under the node lock, which
every lease also takes: no instance can be leased while an apply runs, so instances it creates are not
leasable before it commits and its rollback never meets a busy instance of its own making. ``--force``
only signals PIDs it can see in its own PID namespace (NVML reports host PIDs), and refuses otherwise.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from migctl.catalog import Placement
from migctl.config import Desired, Hooks, MigConfig, load_config, load_hooks
from migctl.config.hooks import HookError
from migctl.errors import UserError
from migctl.reconcile.journal import Journal, node_lock
from migctl.reconcile.live import LiveGpu, desired_from_layout, layout_matches
from migctl.reconcile.live import read_node as _read_node
from migctl.reconcile.plan import NodePlan, plan_node
from migctl.reconcile.signals import held, term_interrupts

EXIT_BUSY = 3
EXIT_FAILED = 5

Progress = Callable[[int, int, str], None]


class BusyError(UserError):
    """The apply would destroy instances with live processes (or reset a GPU in use)."""

    def __init__(self, message: str, plan: NodePlan | None = None) -> None:
        super().__init__(message, EXIT_BUSY)
        self.plan = plan


class ApplyFailed(UserError):
    """An operation failed; the node was rolled back (``rolled_back``) or a journal was left for recover."""

    def __init__(self, message: str, result: ApplyResult) -> None:
        super().__init__(message, EXIT_FAILED)
        self.result = result


class ApplyInterrupted(KeyboardInterrupt):
    """Ctrl-C (or SIGTERM, :mod:`migctl.reconcile.signals`) stopped the apply; it was rolled back as on a
    failure (``result.rolled_back``), or a journal was left for recover. A KeyboardInterrupt, so that no caller
    that handles failed applies (a reshape that retries, bench skipping a size) swallows the user's stop:
    the CLI says ``migctl: interrupted: <message>``, exit 130."""

    def __init__(self, message: str, result: ApplyResult) -> None:
        super().__init__(message)
        self.result = result
        INTERRUPTED.append(message)  # (typer turns a KeyboardInterrupt into a bare exit 130: the CLI reads it here)


INTERRUPTED: list[str] = []  # the messages of the ApplyInterrupted raised in this process


@dataclass
class ApplyResult:
    """What an apply did."""

    label: str
    plan: NodePlan
    dry_run: bool = False
    applied: bool = False
    rolled_back: bool = False
    recovered: str | None = None  # what a leftover journal led to before this apply
    ops_done: int = 0
    error: str | None = None
    killed_pids: list[int] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return self.applied and bool(self.plan.ops)

    def to_dict(self) -> dict[str, Any]:
        return {"label": self.label, "dry_run": self.dry_run, "applied": self.applied,
                "rolled_back": self.rolled_back, "recovered": self.recovered, "ops_done": self.ops_done,
                "error": self.error, "killed_pids": self.killed_pids, "plan": self.plan.to_dict()}


def read_node(node: Any) -> list[LiveGpu]:
    """The live layout with :mod:`migctl.busy`'s holders as the instances' PIDs (NVML errors that concurrent
    changes outside migctl's lock cause are retried)."""
    from migctl.busy import annotate, retry_nvml

    live = retry_nvml(lambda: _read_node(node))
    annotate(node, live)
    return live


# ------------------------------------------------------------------------------------------ operations
def _nvml_text(e: BaseException) -> str:
    detail = getattr(e, "detail", None)  # a refused reset names what holds each GPU
    if detail:
        return str(detail)
    return f"{e.__class__.__name__}: {e}"


def _reset(node: Any, op: dict[str, Any], journal: Journal | None) -> None:
    """Reset every GPU of ``op`` whose mode change is still pending, in ONE :meth:`Node.reset_gpus` call (one
    ``nvidia-smi -r -i BUS,...``). Refuses a GPU with a holder (:mod:`migctl.busy`): a reset must never hit a
    busy GPU. The call is journalled (fsynced) before it runs."""
    from migctl.busy import busy_view

    gpus = [node.gpu(i) for i in op.get("gpus", [op.get("gpu")])]
    pending = [g for g in gpus if (lambda m: m[0] != m[1])(g.mig_mode())]
    if not pending:
        return
    view = busy_view(node, gpus=pending)
    busy = {g.index: view.of_gpu(g.index) for g in pending if view.of_gpu(g.index)}
    if busy:
        raise UserError("refusing to reset GPUs in use: " + "; ".join(
            f"GPU {i}: " + ", ".join(h.text() for h in hs) for i, hs in sorted(busy.items())), 3)
    if journal is not None:
        journal.data.setdefault("resets", []).append(
            {"phase": journal.data.get("phase"), "gpus": [g.index for g in pending],
             "bus_ids": [g.bus_id for g in pending]})
        journal.write()
    node.reset_gpus(pending)


def run_op(node: Any, op: dict[str, Any], journal: Journal | None = None) -> None:
    """Execute one planned operation through the device layer."""
    kind = op["op"]
    if kind == "reset":
        _reset(node, op, journal)
        return
    gpu = node.gpu(op["gpu"])
    if kind == "destroy_ci":
        gi = gpu.gpu_instance(op["gi"])
        ci = next((c for c in gi.compute_instances() if c.id == op["ci"]), None)
        if ci is not None:
            ci.destroy()
    elif kind == "destroy_gi":
        gpu.gpu_instance(op["gi"]).destroy()
    elif kind == "set_mode":
        gpu.set_mig_mode(bool(op["enabled"]))
    elif kind == "create_gi":
        prof = gpu.profile(op["profile"])
        if prof is None:
            raise UserError(f"GPU {op['gpu']}: the driver does not offer profile {op['profile']}")
        gpu.create_gi(prof.id, Placement(op["start"], op["size"]))
    elif kind == "create_ci":
        gi = next((g for g in gpu.gpu_instances() if g.placement.start == op["gi_start"]), None)
        if gi is None:
            raise UserError(f"GPU {op['gpu']}: no GPU instance at memory slice {op['gi_start']} for the new CI")
        cp = next((c for c in gi.ci_profiles() if c.name == op["profile"]), None)
        if cp is None:
            raise UserError(f"GPU {op['gpu']}: GI at {op['gi_start']} offers no compute profile {op['profile']}")
        gi.create_ci(cp.id, Placement(op["start"], op["size"]))
    else:  # pragma: no cover - plans only contain the kinds above
        raise ValueError(f"unknown operation {kind!r}")


def _execute(node: Any, ops: list[dict[str, Any]], journal: Journal, phase: str, progress: Progress | None,
             hooks_at: Callable[[str], None] | None = None) -> int:
    """Run ``ops`` in order, journalling before each; returns how many ran. Raises on the first failure."""
    done = 0
    current_phase = None
    for k, op in enumerate(ops):
        if hooks_at is not None and op["phase"] != current_phase:
            current_phase = op["phase"]
            hooks_at("pre-apply-mode" if current_phase == "mode" else "pre-apply-config")
        journal.step(k, phase, ops if k == 0 else None)
        if progress is not None:
            progress(k + 1, len(ops), op["desc"])
        run_op(node, op, journal)
        done += 1
    return done


def _rollback(node: Any, journal: Journal, progress: Progress | None, attempts: int = 3) -> str | None:
    """Bring every GPU of the journal back to its old layout; None on success, else the last error."""
    import pynvml

    old = journal.old_layouts()
    error: str | None = None
    for _ in range(attempts):
        live = read_node(node)
        desired = {i: desired_from_layout(i, lay) for i, lay in old.items()}
        plan = plan_node(live, desired, "rollback")
        if plan.blocked:
            return "; ".join(f"GPU {g.index}: {g.reason}" for g in plan.blocked)
        try:
            _execute(node, plan.ops, journal, "rollback", progress)
        except (pynvml.NVMLError, UserError, OSError, RuntimeError) as e:
            error = _nvml_text(e)
            continue
        live = read_node(node)
        bad = [g.index for g in live if g.index in old and not layout_matches(g, old[g.index])]
        if not bad:
            return None
        error = f"GPUs {bad} still differ from their old layout"
    return error


def recover(node: Any, progress: Progress | None = None, journal: Journal | None = None) -> str | None:
    """Roll back an interrupted apply found in the journal. Returns a summary, or None if there was none.

    The caller must hold the node lock.
    """
    from migctl.instance_journal import recover_creates

    created = recover_creates(node)
    j = journal or Journal(node)
    data = j.load()
    if data is None:
        return created
    gpus = {g.index for g in read_node(node)}
    unknown = sorted(set(j.old_layouts()) - gpus)
    if unknown:
        raise UserError(f"apply journal {j.path} names GPU(s) {unknown} this node does not have (GPUs: "
                        f"{sorted(gpus)}); nothing was changed; inspect it, then remove it", 2)
    phase, step = data.get("phase"), data.get("next")  # as interrupted (the rollback moves both)
    err = _rollback(node, j, progress)
    if err is not None:
        j.data["error"] = f"recovery failed: {err}"
        j.write()
        raise UserError(
            f"an interrupted apply of {data.get('label')!r} (PID {data.get('pid')}) could not be rolled back: {err}; "
            f"journal kept at {j.path}; fix the cause and run `migctl recover`", EXIT_FAILED,
        )
    j.finish("recovered")
    done = (f"rolled back the interrupted apply of {data.get('label')!r} (PID {data.get('pid')}, stopped before "
            f"{phase} operation {step}) to the previous layout")
    return f"{created}; {done}" if created else done


# ------------------------------------------------------------------------------------------ busy handling
def _refuse_invalid(plan: NodePlan) -> None:
    """A target no GPU of its model can hold is bad input, not a busy GPU: say what is wrong (exit 2)."""
    if plan.invalid:
        raise UserError("the target cannot be built, nothing was changed: "
                        + "; ".join(f"GPU {g.index}: {g.reason}" for g in plan.invalid), 2)


def _busy_message(plan: NodePlan) -> str:
    parts = [f"GPU {g.index}: {g.reason}" for g in plan.blocked]
    return ("refusing to destroy instances in use: " + "; ".join(parts) +
            " (stop them, use --wait SECONDS, or --force to terminate them)")


def _refuse_invisible(node: Any, pids: list[int], plan: NodePlan) -> None:
    """``--force`` never signals a PID this process cannot see as the same process (another PID namespace:
    NVML reports host PIDs, which inside a container may name unrelated local processes)."""
    from migctl.busy import busy_view, invisible

    bad = invisible(busy_view(node), pids)
    if bad:
        raise BusyError("--force refuses to signal PIDs it cannot see in its own PID namespace: "
                        + "; ".join(bad[p] for p in sorted(bad))
                        + " (stop those processes where they run, then apply again)", plan)


def _terminate(pids: list[int], grace: float = 5.0) -> list[int]:
    """SIGTERM ``pids``, then SIGKILL what is left after ``grace`` seconds (--force)."""
    import psutil

    procs = []
    for pid in sorted(set(pids)):
        try:
            p = psutil.Process(pid)
            p.send_signal(signal.SIGTERM)
            procs.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    alive = _wait_gone(procs, grace)
    for p in alive:
        try:
            p.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass
    _wait_gone(alive, grace)
    return [p.pid for p in procs]


def _wait_gone(procs: list[Any], timeout: float) -> list[Any]:
    """Wait until every process has ended; returns those still running after ``timeout`` seconds. A zombie
    has ended (only its parent has not collected its status yet): psutil.wait_procs would wait it out in full."""
    import psutil

    deadline = time.monotonic() + timeout
    while True:
        alive = []
        for p in procs:
            try:
                if p.status() != psutil.STATUS_ZOMBIE:
                    alive.append(p)
            except psutil.NoSuchProcess:
                pass
        if not alive or time.monotonic() >= deadline:
            return alive
        time.sleep(0.05)


def build_plan(node: Any, config: MigConfig, label: str, force: bool = False) -> tuple[list[LiveGpu], NodePlan]:
    """Read the node and plan config ``label`` on it (no change made)."""
    live = read_node(node)
    desired = config.resolve(label, live)  # type: ignore[arg-type]
    return live, plan_node(live, desired, label, force)


# ------------------------------------------------------------------------------------------ apply
Resolver = Callable[[list[LiveGpu]], dict[int, Desired]]


def apply_config(
    config: str | Path | dict[str, Any] | MigConfig,
    label: str,
    node: Any = None,
    dry_run: bool = False,
    force: bool = False,
    wait: float = 0,
    hooks: str | Path | dict[str, Any] | Hooks | None = None,
    progress: Progress | None = None,
    lock_timeout: float | None = None,
    on_plan: Callable[[NodePlan], None] | None = None,
    skip_reset: bool = False,
    mode_only: bool = False,
) -> ApplyResult:
    """Apply config ``label`` to the node, transactionally (see module docstring).

    ``wait``: seconds to wait for processes on instances that must go; ``force``: terminate them instead.
    ``on_plan`` is called with the plan before anything runs (the CLI prints it there).
    Raises ConfigError (exit 2), BusyError (3), LockBusy (4), ApplyFailed (5).
    """
    cfg = load_config(config)
    cfg.entries_for(label)  # unknown label: fail before taking the lock

    def resolver(live: list[LiveGpu]) -> dict[int, Desired]:
        if mode_only:  # only mig-enabled matters: profiles this hardware lacks do not stop a mode change
            return config_modes(cfg, label, live)
        return cfg.resolve(label, live)  # type: ignore[arg-type]

    return apply_desired(resolver, label, str(cfg.file), node=node, dry_run=dry_run, force=force, wait=wait,
                         hooks=hooks, progress=progress, lock_timeout=lock_timeout, on_plan=on_plan,
                         skip_reset=skip_reset, mode_only=mode_only)


def apply_desired(
    resolver: Resolver,
    label: str,
    source: str = "",
    node: Any = None,
    dry_run: bool = False,
    force: bool = False,
    wait: float = 0,
    hooks: str | Path | dict[str, Any] | Hooks | None = None,
    progress: Progress | None = None,
    lock_timeout: float | None = None,
    on_plan: Callable[[NodePlan], None] | None = None,
    skip_reset: bool = False,
    mode_only: bool = False,
) -> ApplyResult:
    """The transactional engine behind apply and restore: ``resolver(live)`` gives the desired states.

    mig-parted's ``--mode-only``: only GPUs whose MIG mode differs change (their instances go, the mode is
    set); ``--skip-reset``: no GPU reset, a mode change the driver leaves pending stays pending (the caller
    reboots).
    """
    import pynvml

    from migctl.device import open_node

    hk = load_hooks(hooks)
    node = node or open_node()
    if mode_only:
        resolver = mode_only_resolver(resolver)

    def build() -> tuple[list[LiveGpu], NodePlan]:
        live = read_node(node)
        plan = plan_node(live, resolver(live), label, force)
        plan.skip_reset = skip_reset
        return live, plan

    if dry_run:
        journal = Journal(node)
        _, plan = build()
        if on_plan:
            on_plan(plan)
        _refuse_invalid(plan)
        pending = "an interrupted apply's journal is pending (apply or recover rolls it back first)" \
            if journal.exists() else None
        return ApplyResult(label, plan, dry_run=True, recovered=pending)
    with node_lock(node, lock_timeout, what=f"migctl apply {label!r}"):
        journal = Journal(node)
        recovered = recover(node, progress, journal)
        deadline = time.monotonic() + max(0.0, wait)
        while True:
            live, plan = build()
            if not plan.blocked or plan.invalid or time.monotonic() >= deadline:
                break
            time.sleep(0.2)
        if on_plan:
            on_plan(plan)
        _refuse_invalid(plan)
        if plan.blocked:
            raise BusyError(_busy_message(plan), plan)
        result = ApplyResult(label, plan, recovered=recovered)
        if force:
            pids = sorted({p for g in plan.changing for p in g.busy_pids})
            _refuse_invisible(node, pids, plan)
            if pids:
                result.killed_pids = _terminate(pids)
                live, plan = build()
                result.plan = plan
                if plan.blocked:
                    raise BusyError(_busy_message(plan), plan)
        env = {
            "MIG_PARTED_CONFIG_FILE": source, "MIG_PARTED_SELECTED_CONFIG": label,
            "MIG_PARTED_HOOKS_FILE": hk.file if hk else "", "MIG_PARTED_SKIP_RESET": str(skip_reset).lower(),
            "MIG_PARTED_MODE_CHANGE_ONLY": str(mode_only).lower(), "MIG_PARTED_DEBUG": "false",
        }

        def hook(name: str) -> None:
            if hk is not None:
                hk.run(name, env)

        ops = plan.ops
        old = {g.index: g.live.layout() for g in plan.gpus if g.status == "change"}
        target = {g.index: g.target_layout() for g in plan.gpus if g.status == "change"}
        try:
            hook("apply-start")
            if ops:
                journal.begin(label, source, old, target, ops)
                try:
                    with term_interrupts():
                        result.ops_done = _execute(node, ops, journal, "forward", progress, hooks_at=hook)
                    bad = [g.index for g in read_node(node) if g.index in target
                           and not layout_matches(g, target[g.index])
                           and not (skip_reset and _pending_as_planned(g, target[g.index]))]
                    if bad:
                        raise UserError(f"after the apply GPUs {bad} do not show the planned layout")
                except (pynvml.NVMLError, UserError, HookError, OSError, RuntimeError, KeyboardInterrupt) as e:
                    stopped = isinstance(e, KeyboardInterrupt)
                    result.error = (f"before operation {journal.data.get('next', 0) + 1}/{len(ops)} (Ctrl-C or "
                                    "SIGTERM)" if stopped else _fail_text(e, ops, journal))
                    with held() as came:  # a second Ctrl-C must not cut the rollback in two
                        journal.fail(result.error)
                        err = _rollback(node, journal, progress)
                        if err is None:
                            journal.finish("rolled-back")
                    stopped = stopped or bool(came)  # (a Ctrl-C during the rollback: no handler of the process's took it)
                    cls = ApplyInterrupted if stopped else ApplyFailed
                    if err is None:
                        result.rolled_back = True
                        raise cls(f"{result.error}; rolled back: every GPU has its previous layout", result) from None
                    raise cls(f"{result.error}; rollback failed ({err}); journal kept at {journal.path}, "
                              "run `migctl recover`", result) from None
                journal.finish("applied")
            result.applied = True
            return result
        except HookError as e:
            result.error = str(e)
            raise ApplyFailed(f"{e}; nothing was changed", result) from None
        finally:
            try:
                hook("apply-exit")
            except HookError as e:
                if result.error is None:
                    raise ApplyFailed(f"{e} (the apply itself succeeded)", result) from None


def mode_only_resolver(resolver: Resolver) -> Resolver:
    """mig-parted's ``--mode-only``: GPUs whose current MIG mode differs get the mode with no instances;
    the others are left alone."""

    def only_mode(live: list[LiveGpu]) -> dict[int, Desired]:
        by_index = {g.index: g for g in live}
        out: dict[int, Desired] = {}
        for i, d in resolver(live).items():
            g = by_index.get(i)
            if g is not None and (not g.mig_capable or g.mig_current != d.mig_enabled):
                out[i] = Desired(i, d.mig_enabled, (), d.source)
        return out

    return only_mode


def config_modes(cfg: MigConfig, label: str, live: list[LiveGpu]) -> dict[int, Desired]:
    """Only the MIG mode config ``label`` asks of each matched GPU (the last matching entry wins, as in
    mig-parted). A GPU without MIG is skipped unless an entry naming it by index asks for MIG."""
    from migctl.config import ConfigError

    out: dict[int, Desired] = {}
    for g in live:
        for e in cfg.entries_for(label):
            if not e.matches(g):  # type: ignore[arg-type]
                continue
            enabled = bool(e.raw.mig_enabled)
            if not g.mig_capable:
                if enabled and e.devices != "all":
                    raise ConfigError(f"{e.where}: GPU {g.index} ({g.name}) is not MIG-capable")
                continue
            out[g.index] = Desired(g.index, enabled, (), e.where)
    return out


def _pending_as_planned(live: LiveGpu, target: dict[str, Any]) -> bool:
    """With --skip-reset: the GPU's mode change is set but pending (no reset), and nothing else was planned."""
    return (live.mig_pending != live.mig_current and live.mig_pending == bool(target.get("mig"))
            and not target.get("gis") and not live.gis)


def _fail_text(e: BaseException, ops: list[dict[str, Any]], journal: Journal) -> str:
    k = int(journal.data.get("next", 0))
    what = ops[k]["desc"] if 0 <= k < len(ops) else "?"
    return f"operation {k + 1}/{len(ops)} failed ({what}): {_nvml_text(e)}"


def assert_config(config: str | Path | dict[str, Any] | MigConfig, label: str, node: Any = None) -> list[str]:
    """Differences between the live layout and config ``label`` (empty when it is applied)."""
    from migctl.device import open_node

    cfg = load_config(config)
    node = node or open_node()
    _, plan = build_plan(node, cfg, label)
    out = []
    for g in plan.gpus:
        if g.status in ("change", "blocked", "invalid"):
            out.append(f"GPU {g.index}: have {g.live.describe()}; want {g.describe()}")
    return out


def wait_pids_gone(pids: list[int], timeout: float) -> bool:  # pragma: no cover - helper for callers
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if not any(_alive(p) for p in pids):
            return True
        time.sleep(0.1)
    return not any(_alive(p) for p in pids)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except OSError:
        return False
