"""migctl: planned, safe and reproducible NVIDIA MIG partitioning.

Layers (data flows one way): config or workloads -> planner -> desired layout -> reconcile (diff, plan,
journal) -> device layer (NVML API) -> real NVML or the simulator.
"""

__version__ = "0.1.0"
