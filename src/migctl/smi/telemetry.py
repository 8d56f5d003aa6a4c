"""Telemetry for the default ``nvidia-smi`` table, read with pynvml (``N/A`` wherever NVML declines)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import pynvml as N

from migctl.device.api import memory_mib
from migctl.smi import render as R

T = TypeVar("T")

_COMPUTE_MODES = {0: "Default", 1: "E. Thread", 2: "Prohibited", 3: "E. Process"}


def _try(fn: Callable[[], T]) -> T | None:
    try:
        return fn()
    except N.NVMLError:
        return None


def cuda_version() -> str:
    """``12.3`` from nvmlSystemGetCudaDriverVersion (12030); ``N/A`` when unknown."""
    v = _try(N.nvmlSystemGetCudaDriverVersion)
    if v is None:
        return "N/A"
    return f"{int(v) // 1000}.{(int(v) % 1000) // 10}"


def gpu_summary(g: Any) -> R.GpuSummary:
    """One GPU's values for the default table."""
    h = g.handle
    fan = _try(lambda: N.nvmlDeviceGetFanSpeed(h))
    temp = _try(lambda: N.nvmlDeviceGetTemperature(h, N.NVML_TEMPERATURE_GPU))
    perf = _try(lambda: N.nvmlDeviceGetPerformanceState(h))
    power = _try(lambda: N.nvmlDeviceGetPowerUsage(h))
    cap = _try(lambda: N.nvmlDeviceGetEnforcedPowerLimit(h))
    pm = _try(lambda: N.nvmlDeviceGetPersistenceMode(h))
    disp = _try(lambda: N.nvmlDeviceGetDisplayActive(h))
    mem = _try(lambda: memory_mib(h))  # (total, reserved, used, free) MiB
    util = _try(lambda: N.nvmlDeviceGetUtilizationRates(h))
    cmode = _try(lambda: N.nvmlDeviceGetComputeMode(h))
    mig = _try(g.mig_mode)
    if mig is not None and mig[0] == 1:
        ecc = "On"  # nvidia-smi shows "On" here for a GPU in MIG mode (seed 003)
    else:
        errs = _try(lambda: N.nvmlDeviceGetTotalEccErrors(h, N.NVML_MEMORY_ERROR_TYPE_UNCORRECTED, N.NVML_VOLATILE_ECC))
        ecc = "N/A" if errs is None else str(int(errs))
    return R.GpuSummary(
        index=g.index,
        name=g.name,
        persistence="N/A" if pm is None else ("On" if pm else "Off"),
        bus_id=g.bus_id,
        display="N/A" if disp is None else ("On" if disp else "Off"),
        ecc=ecc,
        fan="N/A" if fan is None else f"{int(fan)}%",
        temp="N/A" if temp is None else f"{int(temp)}C",
        perf="P?" if perf is None else f"P{int(perf)}",
        power="N/A" if power is None else f"{round(int(power) / 1000)}W",
        power_cap="N/A" if cap is None else f"{round(int(cap) / 1000)}W",
        mem_used_mib=None if mem is None else mem[2],
        mem_total_mib=None if mem is None else mem[0],
        util="N/A" if util is None else f"{int(util.gpu)}%",
        compute_mode="N/A" if cmode is None else _COMPUTE_MODES.get(int(cmode), "Unknown"),
        mig_mode="N/A" if mig is None else ("Enabled" if mig[0] == 1 else "Disabled"),
    )


def mig_device_rows(g: Any) -> list[R.MigDeviceRow]:
    """The GPU's rows of the "MIG devices:" table (memory shown once per GI, on its first CI)."""
    devs = g.mig_devices()
    rows: list[R.MigDeviceRow] = []
    for i, d in enumerate(devs):
        first = i == 0 or devs[i - 1].gi_id != d.gi_id
        last = i == len(devs) - 1 or devs[i + 1].gi_id != d.gi_id
        mem = _try(d.memory) if first else None
        bar1 = _try(lambda d=d: N.nvmlDeviceGetBAR1MemoryInfo(d.handle)) if first else None
        ecc = _try(lambda d=d: N.nvmlDeviceGetTotalEccErrors(
            d.handle, N.NVML_MEMORY_ERROR_TYPE_UNCORRECTED, N.NVML_VOLATILE_ECC))
        rows.append(
            R.MigDeviceRow(
                gpu=g.index, gi_id=d.gi_id, ci_id=d.ci_id, dev=d.index, first_in_gi=first, last_in_gi=last,
                mem_used_mib=None if mem is None else mem[0],
                mem_total_mib=None if mem is None else mem[1],
                bar1_used_mib=None if bar1 is None else int(bar1.bar1Used) >> 20,
                bar1_total_mib=None if bar1 is None else int(bar1.bar1Total) >> 20,
                sms=d.sms, ecc="N/A" if ecc is None else str(int(ecc)),
                ce=d.ce, enc=d.enc, dec=d.dec, ofa=d.ofa, jpeg=d.jpeg,
            )
        )
    return rows


def process_name(pid: int) -> str:
    try:
        import psutil

        p = psutil.Process(pid)
        return " ".join(p.cmdline()[:1]) or p.name()
    except Exception:  # gone, or not ours to read
        return "N/A"


def process_rows(g: Any) -> list[R.ProcessRow]:
    """Compute processes on the GPU (and its MIG devices) for the "Processes:" table."""
    procs = _try(g.processes) or []
    return [
        R.ProcessRow(gpu=g.index, gi=p.gi_id, ci=p.ci_id, pid=p.pid, kind="M+C" if p.mps else "C",
                     name=process_name(p.pid),
                     used_mib=p.used_mib if p.used_mib else None)
        for p in procs
    ]
