"""Declarative, transactional apply: diff live vs desired, minimal plan, journal, rollback, recovery.

Library API: :func:`apply_config` (``apply_config(config_dict, label)`` is what ``migctl plan --apply``
calls), :func:`assert_config`, :func:`recover`, plus checkpoint/restore/export helpers in
:mod:`migctl.reconcile.roundtrip`.
"""

from migctl.reconcile.engine import (
    ApplyFailed,
    ApplyInterrupted,
    ApplyResult,
    BusyError,
    apply_config,
    apply_desired,
    assert_config,
    build_plan,
    recover,
)
from migctl.reconcile.journal import Journal, LockBusy, node_lock
from migctl.reconcile.live import LiveCI, LiveGI, LiveGpu, read_node
from migctl.reconcile.plan import GpuPlan, NodePlan, plan_gpu, plan_node

__all__ = [
    "ApplyFailed",
    "ApplyInterrupted",
    "ApplyResult",
    "BusyError",
    "GpuPlan",
    "Journal",
    "LiveCI",
    "LiveGI",
    "LiveGpu",
    "LockBusy",
    "NodePlan",
    "apply_config",
    "apply_desired",
    "assert_config",
    "build_plan",
    "node_lock",
    "plan_gpu",
    "plan_node",
    "read_node",
    "recover",
]
