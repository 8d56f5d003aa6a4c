"""GPU Performance Monitoring (GPM) entry points of the simulated NVML: per-MIG engine activity.

NVML (nvml.h, "GPM"): ``nvmlGpmQueryDeviceSupport`` says whether a device supports GPM ("Hopper or newer
fully supported devices"); ``nvmlGpmSampleAlloc`` allocates an opaque sample; ``nvmlGpmMigSampleGet(device,
gpuInstanceId, sample)`` reads one for a GPU instance; ``nvmlGpmMetricsGet`` computes metrics such as
``NVML_GPM_METRIC_GRAPHICS_UTIL`` (percentage of time any compute/graphics app was active, 0-100) from two
samples. dcgm-exporter's ``DCGM_FI_PROF_GR_ENGINE_ACTIVE`` is the same quantity as a ratio.

Simulation: a sample records the time and the CPU seconds of the GI's live client processes
(:mod:`migctl.sim.usage`); GRAPHICS_UTIL = CPU seconds / elapsed seconds, capped at 100 (one busy core
keeps an instance fully active; UNCONFIRMED stand-in, there is no GPU). Other metric IDs answer
NVML_ERROR_NOT_SUPPORTED in the metric's ``nvmlReturn`` (stricter than a real GPU, which offers many).
Ampere parts (A100, A30) do not support GPM: Not Supported, as on the real driver.
"""

from __future__ import annotations

import ctypes
import time
from typing import Any

from migctl.sim import state as S

GPM_ARCHITECTURES = ("Hopper", "Blackwell")
METRIC_GRAPHICS_UTIL = 1
GPM_SUPPORT_VERSION = 1
GPM_METRICS_GET_VERSION = 1
ERROR_ARGUMENT_VERSION_MISMATCH = 25
_SAMPLE_BYTES = 32


def _ptr_addr(p: Any) -> int:
    p = getattr(p, "_obj", p)
    return ctypes.cast(p, ctypes.c_void_p).value or 0


class GpmMixin:
    """GPM entry points for :class:`migctl.sim.fakelib.FakeNvmlLib` (which provides ``store``, ``alive``)."""

    store: Any
    alive: Any

    def _gpm(self) -> dict[int, Any]:
        d = self.__dict__.get("_gpm_samples")
        if d is None:
            d = self.__dict__["_gpm_samples"] = {}
        return d

    def _gpm_gpu(self, handle: Any) -> tuple[Any, int]:
        from migctl.sim.fakelib import _KIND_GPU

        st = self.store.load()
        gpu, _, _, rc = self._resolve(st, handle, _KIND_GPU)  # type: ignore[attr-defined]
        return gpu, rc

    def _nvmlGpmQueryDeviceSupport(self, handle: Any, ref: Any) -> int:
        gpu, rc = self._gpm_gpu(handle)
        if rc:
            return int(rc)
        from migctl.sim.fakelib import _obj

        sup = _obj(ref)
        if int(sup.version) != GPM_SUPPORT_VERSION:
            return ERROR_ARGUMENT_VERSION_MISMATCH
        sup.isSupportedDevice = 1 if gpu.catalog.architecture in GPM_ARCHITECTURES else 0
        return S.SUCCESS

    def _nvmlGpmSampleAlloc(self, ref: Any) -> int:
        from migctl.sim.fakelib import _obj

        buf = ctypes.create_string_buffer(_SAMPLE_BYTES)
        addr = ctypes.addressof(buf)
        self._gpm()[addr] = {"buf": buf, "t": None}
        target = _obj(ref)
        ctypes.cast(ctypes.pointer(target), ctypes.POINTER(ctypes.c_void_p))[0] = addr
        return S.SUCCESS

    def _nvmlGpmSampleFree(self, sample: Any) -> int:
        if self._gpm().pop(_ptr_addr(sample), None) is None:
            return S.ERROR_INVALID_ARGUMENT
        return S.SUCCESS

    def _gpm_sample(self, handle: Any, sample: Any, gi_id: int | None) -> int:
        """Fill ``sample`` for one GPU instance (``gi_id``, MIG on) or for the whole GPU (None, MIG off)."""
        from migctl.sim.usage import process_usage

        slot = self._gpm().get(_ptr_addr(sample))
        if slot is None:
            return S.ERROR_INVALID_ARGUMENT
        gpu, rc = self._gpm_gpu(handle)
        if rc:
            return int(rc)
        if gpu.catalog.architecture not in GPM_ARCHITECTURES or (gpu.mig_current == 1) != (gi_id is not None):
            return S.ERROR_NOT_SUPPORTED
        if gi_id is not None and not any(g.id == gi_id for g in gpu.gis):
            return S.ERROR_NOT_FOUND
        procs = [p for p in gpu.processes if (gi_id is None or p.gi == gi_id) and self.alive(p.pid, p.start_time)]
        slot["t"] = time.monotonic()
        slot["cpu"] = sum(process_usage(p.pid, p.start_time).cpu_s for p in procs)
        slot["key"] = (gpu.index, gi_id)
        return S.SUCCESS

    def _nvmlGpmMigSampleGet(self, handle: Any, gi_id: Any, sample: Any) -> int:
        from migctl.sim.fakelib import _val

        return self._gpm_sample(handle, sample, int(_val(gi_id)))

    def _nvmlGpmSampleGet(self, handle: Any, sample: Any) -> int:
        """A whole-GPU sample (all of its live clients). Exported by a real 580.159.04 library (scripts/gpu-probe);
        with MIG enabled: Not Supported (UNCONFIRMED, the stricter choice: per-GI samples are what MIG offers)."""
        return self._gpm_sample(handle, sample, None)

    def _nvmlGpmMetricsGet(self, ref: Any) -> int:
        from migctl.sim.fakelib import _obj

        mg = _obj(ref)
        if int(mg.version) != GPM_METRICS_GET_VERSION:
            return ERROR_ARGUMENT_VERSION_MISMATCH
        s1 = self._gpm().get(_ptr_addr(mg.sample1))
        s2 = self._gpm().get(_ptr_addr(mg.sample2))
        if s1 is None or s2 is None or s1["t"] is None or s2["t"] is None or s1.get("key") != s2.get("key"):
            return S.ERROR_INVALID_ARGUMENT
        dt = abs(s2["t"] - s1["t"])
        for i in range(int(mg.numMetrics)):
            m = mg.metrics[i]
            if int(m.metricId) == METRIC_GRAPHICS_UTIL:
                busy = max(0.0, abs(s2["cpu"] - s1["cpu"]))
                m.value = 0.0 if dt <= 0 else min(100.0, 100.0 * busy / dt)
                m.nvmlReturn = S.SUCCESS
            else:
                m.value = 0.0
                m.nvmlReturn = S.ERROR_NOT_SUPPORTED
        return S.SUCCESS
