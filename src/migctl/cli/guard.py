"""The verbs that change instances by hand (gi/ci create and destroy, reset) and the one authority on "busy".

nvidia-smi refuses to destroy only what the driver refuses: an instance with a CUDA context. migctl knows
more holders (:mod:`migctl.busy`): a lease taken by ``migctl run`` or the queue worker holds its
device from the moment it is taken, though NVML lists the process only after its first CUDA call; an MPS
server or a time-sliced client migctl started holds its device too. So ``gi destroy``, ``ci destroy`` and
``reset`` ask :func:`migctl.busy.busy_view`, and they do it under the node lock, the lock under which
``apply``, ``run`` and the worker lease, create and destroy: no lease can be taken between the check and the
destroy, and no apply or reshape is cut in two. ``gi create`` and ``ci create`` take the same lock, so they
never interleave with an apply's or a reshape's own steps.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from migctl.paths import NODE_LOCK_WAIT_S as LOCK_WAIT_S


@contextlib.contextmanager
def node_locked(n: Any, what: str, timeout: float = LOCK_WAIT_S) -> Iterator[None]:
    """Hold the node lock for one verb; another holder past ``timeout`` is one line, exit 4 (LockBusy)."""
    from migctl.paths import node_lock

    with node_lock(n, timeout, what=what):
        yield


def holders_text(holders: list[Any]) -> str:
    """``leased to PID 12 (migctl run), process PID 40``: each holder once, in the order found."""
    seen: list[str] = []
    for h in holders:
        t = h.text()
        if t not in seen:
            seen.append(t)
    return ", ".join(seen)


def busy_gis(n: Any, targets: list[tuple[Any, list[Any]]]) -> list[str]:
    """For each (GPU, GIs to destroy): ``GPU g GPU instance i: <holders>`` for every GI something holds."""
    from migctl.busy import busy_view

    view = busy_view(n, gpus=[g for g, _ in targets])
    return [f"GPU {g.index} GPU instance {x.id}: {holders_text(hs)}"
            for g, gis in targets for x in gis if (hs := view.of_gi(g.index, x.id))]


def busy_cis(n: Any, plan: list[tuple[Any, Any, list[Any]]]) -> list[str]:
    """For each (GPU, GI, CIs to destroy): ``GPU g GPU instance i compute instance c: <holders>``."""
    from migctl.busy import busy_view

    view = busy_view(n, gpus=list({g.index: g for g, _, _ in plan}.values()))
    return [f"GPU {g.index} GPU instance {x.id} compute instance {c.id}: {holders_text(hs)}"
            for g, x, cis in plan for c in cis if (hs := view.of_device(g.index, x.id, c.id))]


def busy_gpus(n: Any, gpus: list[Any]) -> list[str]:
    """``GPU g: <holders>`` for every GPU something holds: a process, or a lease or MPS server on any instance."""
    from migctl.busy import busy_view

    view = busy_view(n, gpus=gpus)
    return [f"GPU {g.index}: {holders_text(hs)}" for g in gpus if (hs := view.of_gpu(g.index))]


def held_by_migctl(n: Any, gpus: list[Any]) -> list[str]:
    """``GPU g: <holders>`` for every GPU where migctl holds something the driver does not see (a lease, an MPS
    server or a time-sliced client): a MIG mode change takes it away. NVML processes are left to the driver,
    which keeps the change pending while they run."""
    from migctl.busy import busy_view

    view = busy_view(n, gpus=gpus)
    out = []
    for g in gpus:
        hs = [h for h in view.of_gpu(g.index) if h.kind != "process"]
        if hs:
            out.append(f"GPU {g.index}: {holders_text(hs)}")
    return out
