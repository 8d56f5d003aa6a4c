"""A read-only probe of what an NVML driver answers to the questions the strict simulator models (issue 8, item 6).

``probe_node(node)`` asks each GPU, without changing any MIG setting: which MIG entry points the library exports,
the MIG mode, profile enumeration (where INVALID_ARGUMENT ends it), profile info while MIG is off, a bad struct
version, a too-small placement buffer, the process list, and whether names, IDs and placements agree with the
catalog. ``probe_unprivileged(node)`` asks the read-only privileged questions (placements, the GPU-wide process list)
as a non-root caller would. :func:`compare` puts a real driver's answers next to the simulator's for the same model
and driver. ``scripts/gpu-probe`` is the command; docs/simulator.md says how to read it.

Nothing here creates, destroys, resets or changes a mode: every call is a query.
"""

from __future__ import annotations

import ctypes
from typing import Any

import pynvml as N

from migctl.sim.fakelib import FIRST_DRIVER

# Functions whose presence the probe records: those the simulator gates by driver, plus the pre-R510 forms.
PROBED_FUNCTIONS = sorted(set(FIRST_DRIVER) | {
    "nvmlDeviceGetGpuInstanceProfileInfo", "nvmlGpuInstanceGetComputeInstanceProfileInfo",
    "nvmlDeviceGetGpuInstancePossiblePlacements", "nvmlDeviceGetComputeRunningProcesses_v2",
    "nvmlDeviceCreateGpuInstance", "nvmlGpuInstanceCreateComputeInstance", "nvmlDeviceSetMigMode",
})
_BAD_VERSION = 0x01000098  # version 1 tag on the v2 struct: nvml.h documents INVALID_ARGUMENT for a bad version


def _code(fn: Any, *args: Any) -> str:
    """Call a raw C entry point; its return code as NVML's name (SUCCESS, ERROR_NOT_SUPPORTED, ...)."""
    try:
        rc = fn(*args)
    except N.NVMLError as e:  # FunctionNotFound from the lookup
        rc = e.value
    return code_name(int(rc))


def code_name(rc: int) -> str:
    for name in dir(N):
        if name.startswith("NVML_ERROR_") and getattr(N, name) == rc and isinstance(getattr(N, name), int):
            return name[5:]
    return "SUCCESS" if rc == 0 else f"RC_{rc}"


def _fn(name: str) -> Any:
    try:
        return N._nvmlGetFunctionPointer(name)
    except N.NVMLError:
        return None


def functions() -> dict[str, bool]:
    """Which MIG entry points the loaded library exports."""
    return {name: _fn(name) is not None for name in PROBED_FUNCTIONS}


def probe_gpu(gpu: Any) -> dict[str, Any]:
    """Read-only answers of one GPU."""
    h = gpu.handle
    out: dict[str, Any] = {"index": gpu.index, "name": gpu.name, "pci_device_id": f"{gpu.pci_device_id:#010x}",
                           "catalog_model": gpu.catalog_model.key if gpu.catalog_model else None}
    out["memory"] = _memory(h)
    try:
        cur, pending = gpu.mig_mode()
        out["mig_mode"] = {"current": cur, "pending": pending}
    except N.NVMLError as e:
        out["mig_mode"] = code_name(e.value)
        return out
    # profile info by index until the driver says INVALID_ARGUMENT; the v2 struct when exported, else v1
    v2 = _fn("nvmlDeviceGetGpuInstanceProfileInfoV")
    codes = []
    for idx in range(64):
        if v2 is not None:
            info: Any = N.c_nvmlGpuInstanceProfileInfo_v2_t()
            rc = _code(v2, h, idx, ctypes.byref(info))
        else:
            info = N.c_nvmlGpuInstanceProfileInfo_t()
            rc = _code(_fn("nvmlDeviceGetGpuInstanceProfileInfo"), h, idx, ctypes.byref(info))
        codes.append(rc)
        if rc == "ERROR_INVALID_ARGUMENT":
            break
    out["profile_info_codes"] = codes
    out["profile_enumeration_ends_at"] = len(codes) - 1 if codes and codes[-1] == "ERROR_INVALID_ARGUMENT" else None
    key = "profile_info_mig_on" if cur == 1 else "profile_info_mig_off"
    answers = [c for c in codes if c != "ERROR_INVALID_ARGUMENT"]
    out[key] = "SUCCESS" if "SUCCESS" in answers else (answers[0] if answers else None)
    # a bad struct version
    if v2 is not None:
        bad = N.c_nvmlGpuInstanceProfileInfo_v2_t()
        bad.version = _BAD_VERSION
        out["bad_struct_version"] = _code(v2, h, 0, ctypes.byref(bad))
    else:
        out["bad_struct_version"] = "not testable (no versioned entry point)"
    # placements: count with NULL, then a buffer of 1 for a profile with several placements
    profiles = gpu.profiles()
    # a profile with several placements: from NVML, else (profiles not listable now) from the catalog
    known = profiles or (list(gpu.catalog_model.gi_profiles) if gpu.catalog_model else [])
    many = next((p for p in known if len(p.placements) > 1), None)
    pl_fn = _fn("nvmlDeviceGetGpuInstancePossiblePlacements_v2")
    if many is not None and pl_fn is not None:
        count = ctypes.c_uint(0)
        out["placement_profile_id"] = many.id
        out["placement_count_query"] = _code(pl_fn, h, many.id, None, ctypes.byref(count))
        out["placement_count"] = count.value
        # "count = 1" over a buffer with room for 64, each entry a sentinel: how many the driver writes shows
        # whether it honours the count (driver 580.159.04 did not: SUCCESS, count 7, and a later run that passed
        # a real one-entry buffer crashed)
        room = (N.c_nvmlGpuInstancePlacement_t * 64)()
        for e in room:
            e.start = e.size = 0xFFFFFFFF
        count = ctypes.c_uint(1)
        out["small_placement_buffer"] = _code(pl_fn, h, many.id, room, ctypes.byref(count))
        out["small_placement_buffer_count"] = count.value
        out["small_placement_buffer_written"] = sum(1 for e in room if (e.start, e.size) != (0xFFFFFFFF, 0xFFFFFFFF))
    else:
        out["small_placement_buffer"] = "not testable (no profile with several placements listed)"
    # what is left to create, per profile, and the MIG device handles (also while MIG is off)
    rem_fn = _fn("nvmlDeviceGetGpuInstanceRemainingCapacity")
    out["remaining_capacity"] = []
    for p in known:
        n = ctypes.c_uint(0)
        rc = _code(rem_fn, h, p.id, ctypes.byref(n)) if rem_fn is not None else "no function"
        out["remaining_capacity"].append([p.id, rc, n.value if rc == "SUCCESS" else None])
    n = ctypes.c_uint(0)
    max_fn = _fn("nvmlDeviceGetMaxMigDeviceCount")
    rc = _code(max_fn, h, ctypes.byref(n)) if max_fn is not None else "no function"
    out["max_mig_device_count"] = n.value if rc == "SUCCESS" else rc
    mig = N.c_nvmlDevice_t()
    by_index = _fn("nvmlDeviceGetMigDeviceHandleByIndex")
    out["mig_device_handle_0"] = _code(by_index, h, 0, ctypes.byref(mig)) if by_index is not None else "no function"
    # the process list (v3 where exported)
    procs = _fn("nvmlDeviceGetComputeRunningProcesses_v3") or _fn("nvmlDeviceGetComputeRunningProcesses_v2")
    count = ctypes.c_uint(0)
    out["process_list"] = _code(procs, h, ctypes.byref(count), None) if procs is not None else "no function"
    # agreement with the catalog (names, IDs, placements, memory, engines)
    out["profiles"] = [{"index": p.index, "id": p.id, "name": p.name, "placements": [str(x) for x in p.placements]}
                       for p in profiles]
    out["catalog_differences"] = gpu.catalog_differences()
    return out


def _memory(h: Any) -> dict[str, Any]:
    """nvmlDeviceGetMemoryInfo (v1) and its v2 (with ``reserved``), in bytes: which one nvidia-smi's
    Memory-Usage column shows is what the simulator must copy."""
    out: dict[str, Any] = {}
    try:
        m = N.nvmlDeviceGetMemoryInfo(h)
        out["v1"] = {"total": m.total, "used": m.used, "free": m.free}
    except N.NVMLError as e:
        out["v1"] = code_name(e.value)
    try:
        m2 = N.nvmlDeviceGetMemoryInfo(h, version=N.nvmlMemory_v2)
        out["v2"] = {"total": m2.total, "reserved": m2.reserved, "used": m2.used, "free": m2.free}
    except N.NVMLError as e:
        out["v2"] = code_name(e.value)
    return out


def probe_unprivileged_gpu(gpu: Any) -> dict[str, Any]:
    """The read-only questions whose answer depends on privilege, asked by the current (non-root) caller."""
    h = gpu.handle
    out: dict[str, Any] = {"index": gpu.index}
    known = gpu.profiles() or (list(gpu.catalog_model.gi_profiles) if gpu.catalog_model else [])
    pl_fn = _fn("nvmlDeviceGetGpuInstancePossiblePlacements_v2")
    if known and pl_fn is not None:
        count = ctypes.c_uint(0)
        out["placements"] = _code(pl_fn, h, known[0].id, None, ctypes.byref(count))
    procs = _fn("nvmlDeviceGetComputeRunningProcesses_v3") or _fn("nvmlDeviceGetComputeRunningProcesses_v2")
    count = ctypes.c_uint(0)
    out["process_list"] = _code(procs, h, ctypes.byref(count), None) if procs is not None else "no function"
    return out


def probe_node(node: Any) -> dict[str, Any]:
    return {"driver_version": node.driver_version, "nvml_version": N.nvmlSystemGetNVMLVersion(),
            "backend": node.backend, "functions": functions(), "gpus": [probe_gpu(g) for g in node.gpus()]}


def probe_unprivileged(node: Any) -> list[dict[str, Any]]:
    return [probe_unprivileged_gpu(g) for g in node.gpus()]


# ------------------------------------------------------------------------------------------ comparison
_COMPARED = ("mig_mode", "profile_enumeration_ends_at", "profile_info_mig_off", "profile_info_mig_on",
             "bad_struct_version", "placement_count_query", "placement_count", "small_placement_buffer",
             "small_placement_buffer_count", "small_placement_buffer_written", "process_list", "profiles", "remaining_capacity",
             "max_mig_device_count", "mig_device_handle_0")


def compare(real: dict[str, Any], simulated: dict[str, Any], real_np: list[dict[str, Any]] | None = None,
            sim_np: list[dict[str, Any]] | None = None) -> list[tuple[str, Any, Any, bool]]:
    """Rows (question, driver's answer, simulator's answer, equal) for two probe reports of the same node."""
    rows: list[tuple[str, Any, Any, bool]] = []
    for name in PROBED_FUNCTIONS:
        a, b = real["functions"].get(name), simulated["functions"].get(name)
        rows.append((f"function {name}", a, b, a == b))
    for g_real, g_sim in zip(real["gpus"], simulated["gpus"], strict=False):
        i = g_real["index"]
        for key in _COMPARED:
            if key in g_real or key in g_sim:
                a, b = g_real.get(key), g_sim.get(key)
                rows.append((f"GPU {i} {key}", a, b, a == b))
        rows.append((f"GPU {i} catalog agreement", g_real.get("catalog_differences") or "agrees",
                     "n/a (the simulator serves the catalog)", not g_real.get("catalog_differences")))
    for a_np, b_np in zip(real_np or [], sim_np or [], strict=False):
        for key in ("placements", "process_list"):
            if key in a_np or key in b_np:
                rows.append((f"GPU {a_np['index']} non-root {key}", a_np.get(key), b_np.get(key),
                             a_np.get(key) == b_np.get(key)))
    return rows


def render(rows: list[tuple[str, Any, Any, bool]]) -> str:
    width = max((len(r[0]) for r in rows), default=10)
    lines = [f"{'question':<{width}}  {'driver':<28}  {'simulator':<28}  same"]
    for q, a, b, same in rows:
        lines.append(f"{q:<{width}}  {_short(a):<28}  {_short(b):<28}  {'yes' if same else 'NO'}")
    differ = sum(1 for r in rows if not r[3])
    lines.append(f"{len(rows) - differ} of {len(rows)} answers agree" + (f"; {differ} differ" if differ else ""))
    return "\n".join(lines)


def _short(v: Any) -> str:
    text = str(v)
    return text if len(text) <= 28 else text[:25] + "..."
