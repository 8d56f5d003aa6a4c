"""Device layer: one NVML code path for real GPUs and the simulator."""

from migctl.device.api import (
    CIProfileInfo,
    ComputeInstance,
    DeviceError,
    DriverNotReady,
    GIProfileInfo,
    Gpu,
    GpuInstance,
    MigDevice,
    Node,
    ProcessInfo,
    open_node,
)

__all__ = [
    "CIProfileInfo",
    "ComputeInstance",
    "DeviceError",
    "DriverNotReady",
    "GIProfileInfo",
    "Gpu",
    "GpuInstance",
    "MigDevice",
    "Node",
    "ProcessInfo",
    "open_node",
]
