"""`migctl run`'s dynamic instance creation and `migctl apply` hold one node lock: they never interleave."""

from __future__ import annotations

import pytest

import migctl.sim as sim
from migctl.device import open_node
from migctl.jobs.leases import LeaseManager
from migctl.reconcile import LockBusy, node_lock


def test_apply_and_leases_share_the_node_lock(tmp_path, monkeypatch):
    monkeypatch.setenv("MIGCTL_STATE_DIR", str(tmp_path))
    sim.uninstall()
    try:
        node = open_node("1xA30")
        mgr = LeaseManager(node)
        with node_lock(node, timeout=0, what="migctl apply 'x'"):
            with pytest.raises(LockBusy, match=r"PID \d+ \(migctl apply 'x', held \d+\.\ds\); waited 0.2s"):
                with mgr.node_lock(timeout=0.2):
                    pass
        with mgr.node_lock(timeout=0.2):
            with pytest.raises(LockBusy):
                with node_lock(node, timeout=0.2):
                    pass
    finally:
        sim.uninstall()
