"""The MIG simulator: a stateful fake of libnvidia-ml underneath pynvml.

``install(spec)`` puts a :class:`~migctl.sim.fakelib.FakeNvmlLib` where pynvml keeps its loaded library,
so every pynvml call made by migctl (or by any other pynvml user in the process) reaches the simulator.
The simulated node is described by a spec such as ``8xH100-80GB`` or ``4xA30@545.23.08``.
"""

from __future__ import annotations

import os
from pathlib import Path

from migctl.sim.spec import DEFAULT_DRIVER, DEFAULT_SPEC, NodeSpec, SpecError, parse_spec
from migctl.sim.state import SimProcess, SimState
from migctl.sim.store import StateFileError, Store, default_state_path

__all__ = [
    "DEFAULT_DRIVER",
    "DEFAULT_SPEC",
    "NodeSpec",
    "SimNode",
    "SimProcess",
    "SimState",
    "SpecError",
    "StateFileError",
    "Store",
    "active",
    "install",
    "parse_spec",
    "uninstall",
]

_active: SimNode | None = None


class SimNode:
    """A simulated node: its spec, its store, and the fake library serving it."""

    def __init__(self, spec: NodeSpec, store: Store) -> None:
        from migctl.sim.fakelib import FakeNvmlLib

        self.spec = spec
        self.store = store
        self.lib = FakeNvmlLib(store)

    # -- operations with no NVML entry point (on real hardware they are nvidia-smi or the kernel's job)
    def reset_gpu(self, index: int) -> int:
        """GPU reset (``nvidia-smi --gpu-reset -i N``): NVML return code."""
        from migctl.sim.state import ERROR_INVALID_ARGUMENT, Driver

        with self.store.transaction() as st:
            d = Driver(st, self.lib.alive)
            gpu = d.gpu(index)
            if gpu is None:
                return ERROR_INVALID_ARGUMENT
            return d.reset(gpu)

    def add_client(self, gpu_index: int, pid: int, gi: int | None = None, ci: int | None = None,
                   used_mib: int = 0, name: str = "") -> int:
        """Record ``pid`` as a client of a GPU or of MIG device (gi, ci) until it exits."""
        import psutil

        from migctl.sim.state import ERROR_INVALID_ARGUMENT, ERROR_NOT_FOUND, Driver

        try:
            start = psutil.Process(pid).create_time()
        except psutil.NoSuchProcess:
            return ERROR_NOT_FOUND
        with self.store.transaction() as st:
            d = Driver(st, self.lib.alive)
            gpu = d.gpu(gpu_index)
            if gpu is None:
                return ERROR_INVALID_ARGUMENT
            return d.add_process(gpu, SimProcess(pid=pid, gi=gi, ci=ci, used_mib=used_mib, start_time=start, name=name))

    def remove_client(self, gpu_index: int, pid: int) -> int:
        from migctl.sim.state import ERROR_INVALID_ARGUMENT, Driver

        with self.store.transaction() as st:
            d = Driver(st, self.lib.alive)
            gpu = d.gpu(gpu_index)
            if gpu is None:
                return ERROR_INVALID_ARGUMENT
            return d.remove_process(gpu, pid)

    def inject_fault(self, after_ops: int | None) -> None:
        """Make the ``after_ops``-th mutating operation from now fail with Unknown Error (None clears)."""
        with self.store.transaction() as st:
            st.op_count = 0
            st.fail_at = after_ops

    def op_count(self) -> int:
        return self.store.load().op_count


def install(spec: str | NodeSpec | None = None, state_path: str | Path | None | bool = True) -> SimNode:
    """Route pynvml to a simulated node.

    ``state_path``: True = the default per-spec file in the user state dir (or ``$MIGCTL_SIM_STATE``);
    a path = that file; None/False = in memory only (tests).
    """
    global _active
    import pynvml

    node_spec = spec if isinstance(spec, NodeSpec) else parse_spec(spec or os.environ.get("MIGCTL_SIM") or DEFAULT_SPEC)
    path: Path | None
    if state_path is True:
        env = os.environ.get("MIGCTL_SIM_STATE")
        path = Path(env) if env else default_state_path(node_spec)
    elif state_path:
        path = Path(state_path)  # type: ignore[arg-type]
    else:
        path = None
    node = SimNode(node_spec, Store(node_spec, path))
    with pynvml.libLoadLock:
        pynvml.nvmlLib = node.lib
        pynvml._nvmlGetFunctionPointer_cache.clear()
    _active = node
    return node


def uninstall() -> None:
    """Detach the simulator from pynvml (the next nvmlInit loads the real library)."""
    global _active
    import pynvml

    with pynvml.libLoadLock:
        if _active is not None and pynvml.nvmlLib is _active.lib:
            pynvml.nvmlLib = None
            pynvml._nvmlGetFunctionPointer_cache.clear()
    _active = None


def active() -> SimNode | None:
    """The installed simulated node, or None when pynvml talks to a real driver."""
    return _active
