"""Running workloads on MIG devices: leases (``migctl run``), a local queue and worker, batches.

See docs/jobs.md. Everything goes through the device layer, so the simulator and real GPUs share the code.
"""

from __future__ import annotations

from migctl.jobs.common import JobsError, parse_mem
from migctl.jobs.leases import Lease, LeaseManager, Request

__all__ = ["JobsError", "Lease", "LeaseManager", "Request", "parse_mem"]
