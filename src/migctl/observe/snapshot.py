"""Read a node into slice maps: GIs, CIs (MIG devices), memory, activity, processes, leases.

One :class:`Observer` keeps one NVML session (the :class:`migctl.device.Node` it was given) and the GPM
samples between reads, so engine activity is measured over the interval between two reads (the exporter's
scrape interval, ``top``'s refresh). Every value comes from NVML through the device layer; where NVML
declines (no GPM on Ampere, a GI without CI) the value is None, never invented.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any

import pynvml as N

from migctl.observe.slices import CiView, GiView, GpuMap
from migctl.observe.state import LeaseRow


@dataclass
class ProcessView:
    pid: int
    gpu: int
    gi: int | None
    ci: int | None
    used_mib: int


@dataclass
class NodeSnapshot:
    gpus: list[GpuMap]
    processes: list[ProcessView] = field(default_factory=list)
    hostname: str = ""
    driver_version: str = ""
    backend: str = ""


def _try(fn: Any, *args: Any) -> Any:
    try:
        return fn(*args)
    except N.NVMLError:
        return None


class GpmSampler:
    """Per-GI engine activity from NVML GPM (nvmlGpmMigSampleGet + nvmlGpmMetricsGet, GRAPHICS_UTIL)."""

    def __init__(self) -> None:
        self._prev: dict[tuple[str, int], Any] = {}
        self._support: dict[str, bool] = {}

    def supported(self, gpu: Any) -> bool:
        if gpu.uuid not in self._support:
            try:
                self._support[gpu.uuid] = bool(N.nvmlGpmQueryDeviceSupport(gpu.handle).isSupportedDevice)
            except (N.NVMLError, AttributeError):
                self._support[gpu.uuid] = False
        return self._support[gpu.uuid]

    def activity(self, gpu: Any, gi_id: int) -> float | None:
        """GRAPHICS_UTIL of GI ``gi_id`` since the previous call for it, as a ratio 0..1; None on the first."""
        if not self.supported(gpu):
            return None
        key = (gpu.uuid, gi_id)
        try:
            cur = N.nvmlGpmSampleAlloc()
        except N.NVMLError:
            return None
        try:
            N.nvmlGpmMigSampleGet(gpu.handle, gi_id, cur)
        except N.NVMLError:
            with contextlib.suppress(N.NVMLError):
                N.nvmlGpmSampleFree(cur)
            return None
        prev = self._prev.get(key)
        self._prev[key] = cur
        if prev is None:
            return None
        value: float | None = None
        try:
            mg = N.c_nvmlGpmMetricsGet_t()
            mg.version = N.NVML_GPM_METRICS_GET_VERSION
            mg.numMetrics = 1
            mg.sample1, mg.sample2 = prev, cur
            mg.metrics[0].metricId = N.NVML_GPM_METRIC_GRAPHICS_UTIL
            N.nvmlGpmMetricsGet(mg)
            if mg.metrics[0].nvmlReturn == N.NVML_SUCCESS:
                value = max(0.0, min(1.0, float(mg.metrics[0].value) / 100.0))
        except N.NVMLError:
            value = None
        with contextlib.suppress(N.NVMLError):
            N.nvmlGpmSampleFree(prev)
        return value

    def forget_except(self, keys: set[tuple[str, int]]) -> None:
        """Free the samples of GIs that no longer exist."""
        for k in [k for k in self._prev if k not in keys]:
            with contextlib.suppress(N.NVMLError):
                N.nvmlGpmSampleFree(self._prev.pop(k))


def _split(found: list[tuple[int, str]], pids: tuple[int, ...]) -> tuple[tuple[str, ...], tuple[int, ...]]:
    """A device's sharing holders as (texts of those NVML does not list yet, PIDs of idle MPS servers)."""
    idle = tuple(pid for pid, t in found if t.startswith("idle "))
    return tuple(t for pid, t in found if pid not in pids and pid not in idle), idle


class Observer:
    """Reads the node; reuse one Observer between reads (one NVML session, GPM samples kept)."""

    def __init__(self, node: Any, leases: Any = None, sharing: Any = None) -> None:
        import socket

        from migctl.busy import sharing_holders

        self.node = node
        self.gpm = GpmSampler()
        self.leases = leases  # a callable returning list[LeaseRow], or None
        # a callable node -> [(gpu, gi, ci, pid, detail)]: MPS servers and time-sliced clients (migctl.busy's)
        self.sharing = sharing_holders if sharing is None else sharing
        self.sharing_error: str | None = None  # why the last read could not tell who shares devices
        self.hostname = socket.gethostname()

    def _sharing(self) -> tuple[dict[tuple[int, int, int], list[tuple[int, str]]], dict[int, list[tuple[int, str]]]]:
        """MPS servers and clients and time-sliced clients, as :mod:`migctl.busy` counts them: by MIG device,
        and by GPU for those on a whole GPU (without MIG). An idle MPS server's text starts with ``idle``."""
        from migctl.busy import sharing_kind

        out: dict[tuple[int, int, int], list[tuple[int, str]]] = {}
        whole: dict[int, list[tuple[int, str]]] = {}
        self.sharing_error = None
        try:
            found = self.sharing(self.node)
        except Exception as e:  # noqa: BLE001 - a scrape still serves the rest and says so (destroys refuse)
            self.sharing_error, found = str(e) or e.__class__.__name__, []
        for gpu, gi, ci, pid, detail in found:
            if gi is not None and ci is not None:
                out.setdefault((gpu, gi, ci), []).append((pid, f"{sharing_kind(detail)} {pid}"))
            elif gi is None:
                whole.setdefault(gpu, []).append((pid, f"{sharing_kind(detail)} {pid}"))
        return out, whole

    def snapshot(self) -> NodeSnapshot:
        from migctl.catalog import parse_driver

        driver = parse_driver(self.node.driver_version)
        lease_rows: list[LeaseRow] = list(self.leases()) if self.leases else []
        by_uuid = {r.uuid: r for r in lease_rows}
        sharing, sharing_whole = self._sharing()
        maps: list[GpuMap] = []
        procs: list[ProcessView] = []
        seen: set[tuple[str, int]] = set()
        for g in self.node.gpus():
            mode = _try(g.mig_mode)
            mem = _try(g.memory_mib)  # (total, reserved, used, free) MiB
            temp = _try(N.nvmlDeviceGetTemperature, g.handle, N.NVML_TEMPERATURE_GPU)
            power = _try(N.nvmlDeviceGetPowerUsage, g.handle)
            gm = GpuMap(index=g.index, name=g.name, model=g.model, driver=driver, uuid=g.uuid, bus_id=g.bus_id,
                        mig_current=None if mode is None else mode[0] == 1,
                        mig_pending=None if mode is None else mode[1] == 1,
                        mem_used_mib=None if mem is None else mem[2], mem_total_mib=None if mem is None else mem[0],
                        mem_reserved_mib=0 if mem is None else mem[1], mem_free_mib=None if mem is None else mem[3],
                        temperature_c=None if temp is None else int(temp),
                        power_w=None if power is None else int(power) / 1000.0)
            gprocs = _try(g.processes) or []
            for p in gprocs:
                procs.append(ProcessView(pid=p.pid, gpu=g.index, gi=p.gi_id, ci=p.ci_id, used_mib=p.used_mib))
            if not gm.mig_current:  # (used whole: every process is the GPU's)
                gm.pids = tuple(p.pid for p in gprocs)
                gm.shared, gm.idle_servers = _split(sharing_whole.get(g.index, []), gm.pids)
            else:
                devs = _try(g.mig_devices) or []
                by_gi: dict[int, list[Any]] = {}
                for d in devs:
                    by_gi.setdefault(d.gi_id, []).append(d)
                for gi in _try(g.gpu_instances) or []:
                    prof = gi.profile()
                    cis = []
                    for d in sorted(by_gi.get(gi.id, []), key=lambda d: d.ci_id):
                        lease = by_uuid.get(d.uuid)
                        pids = tuple(p.pid for p in gprocs if p.gi_id == gi.id and p.ci_id == d.ci_id)
                        shared, idle = _split(sharing.get((g.index, gi.id, d.ci_id), []), pids)
                        cis.append(CiView(
                            ci_id=d.ci_id, slices=d.ci_slices, uuid=d.uuid, profile=d.profile_name,
                            device_index=d.index, pids=pids,
                            leased_by=lease.pid if lease else None, job_id=lease.job_id if lease else None,
                            shared=shared, idle_servers=idle))
                    gmem = _try(by_gi[gi.id][0].memory) if by_gi.get(gi.id) else None
                    seen.add((g.uuid, gi.id))
                    gm.gis.append(GiView(
                        gi_id=gi.id, profile=prof.name, profile_id=gi.profile_id, start=gi.placement.start,
                        size=gi.placement.size, compute_slices=prof.slices, cis=tuple(cis),
                        mem_used_mib=None if gmem is None else gmem[0],
                        mem_total_mib=prof.memory_mib if gmem is None else gmem[1],
                        activity=self.gpm.activity(g, gi.id)))
            maps.append(gm)
        self.gpm.forget_except(seen)
        return NodeSnapshot(gpus=maps, processes=procs, hostname=self.hostname,
                            driver_version=self.node.driver_version, backend=self.node.backend)
