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
    def reset_gpus(self, bus_ids: list[str]) -> dict[str, tuple[int, list[str]]]:
        """GPU reset of several GPUs in one call (``nvidia-smi -r -i BUS,BUS``): per bus id, the NVML return code
        and, when refused, what holds the GPU. This process's own NVML session counts as a holder (migctl must
        shut NVML down first, as mig-parted does)."""
        from migctl.sim.state import ERROR_IN_USE, ERROR_INVALID_ARGUMENT, Driver

        out: dict[str, tuple[int, list[str]]] = {}
        with self.store.transaction() as st:
            d = Driver(st, self.lib.alive)
            for bus in bus_ids:
                gpu = next((g for g in st.gpus if g.bus_id.upper() == bus.upper()), None)
                if gpu is None:
                    out[bus] = (ERROR_INVALID_ARGUMENT, [])
                    continue
                rc = d.reset(gpu, self.lib.initialized)
                out[bus] = (rc, d.reset_blockers(gpu, self.lib.initialized) if rc == ERROR_IN_USE else [])
        return out

    def reset_gpu(self, index: int) -> int:
        """GPU reset of one GPU by index: NVML return code (see :meth:`reset_gpus`)."""
        from migctl.sim.state import ERROR_INVALID_ARGUMENT

        gpus = self.store.load().gpus
        if not 0 <= index < len(gpus):
            return ERROR_INVALID_ARGUMENT
        return self.reset_gpus([gpus[index].bus_id])[gpus[index].bus_id][0]

    def reboot(self) -> None:
        """Reboot the simulated node (see :meth:`migctl.sim.state.Driver.reboot`)."""
        from migctl.sim.state import Driver

        with self.store.transaction() as st:
            Driver(st, self.lib.alive).reboot()

    def set_behaviour(self, key: str, value: str) -> None:
        """Change one driver behaviour of this node (``migctl sim set KEY=VALUE``)."""
        from migctl.sim.state import BEHAVIOURS

        if key not in BEHAVIOURS or value not in BEHAVIOURS[key]:
            raise SpecError(f"simulator behaviour {key}={value!r} is not valid; valid: "
                            + ", ".join(f"{k}={'|'.join(v)}" for k, v in BEHAVIOURS.items()))
        with self.store.transaction() as st:
            st.behaviour[key] = value

    def add_holder(self, gpu_index: int, name: str, gi: int | None = None, ci: int | None = None) -> int:
        """Something (a DCGM-like client, a daemon) that holds the GPU or a MIG device open with no process listed."""
        from migctl.sim.state import ERROR_INVALID_ARGUMENT, Driver, SimHolder

        with self.store.transaction() as st:
            d = Driver(st, self.lib.alive)
            gpu = d.gpu(gpu_index)
            if gpu is None:
                return ERROR_INVALID_ARGUMENT
            return d.add_holder(gpu, SimHolder(name, gi, ci))

    def remove_holder(self, gpu_index: int, name: str) -> int:
        from migctl.sim.state import ERROR_INVALID_ARGUMENT, Driver

        with self.store.transaction() as st:
            d = Driver(st, self.lib.alive)
            gpu = d.gpu(gpu_index)
            if gpu is None:
                return ERROR_INVALID_ARGUMENT
            return d.remove_holder(gpu, name)

    def add_client(self, gpu_index: int, pid: int, gi: int | None = None, ci: int | None = None,
                   used_mib: int = 0, name: str = "", mps: bool = False) -> int:
        """Record ``pid`` as a client of a GPU or of MIG device (gi, ci) until it exits; ``mps``: an MPS client
        (NVML's MPS process list names it too)."""
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
            import time

            from migctl.sim.state import _own_pidns

            visible = time.time() + st.client_delay if st.client_delay > 0 else 0.0
            return d.add_process(gpu, SimProcess(pid=pid, gi=gi, ci=ci, used_mib=used_mib, start_time=start, name=name,
                                                 pidns=_own_pidns(), visible_after=visible, mps=mps))

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

    def set_client_delay(self, seconds: float) -> None:
        """Delayed registration: clients added from now on appear in NVML only ``seconds`` later (0: at once)."""
        with self.store.transaction() as st:
            st.client_delay = max(0.0, float(seconds))

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
    own = False  # migctl's own default path: its parent dirs may be created
    if state_path is True:
        env = os.environ.get("MIGCTL_SIM_STATE")
        path = Path(env) if env else default_state_path(node_spec)
        own = not env
    elif state_path:
        path = Path(state_path)  # type: ignore[arg-type]
    else:
        path = None
    node = SimNode(node_spec, Store(node_spec, path, create_parent=own))
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
