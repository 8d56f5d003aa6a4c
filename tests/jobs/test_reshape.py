"""``migctl run --reshape``: kept idle instances are replaced to serve a larger request (the issue's A30
case), through the transactional apply; busy ones are never touched."""

from __future__ import annotations

import subprocess
from typing import Any

from migctl.reconcile.live import read_gpu


def test_idle_1g_instances_are_reshaped_busy_one_kept(a30: Any) -> None:
    a30.layout(0, ["1g.6gb"] * 4)
    holder = subprocess.Popen(["sleep", "60"])
    try:
        node = a30.node()
        gis = sorted(read_gpu(node.gpu(0)).gis, key=lambda g: g.start)
        assert [g.start for g in gis] == [0, 1, 2, 3]
        assert node.sim.add_client(0, holder.pid, gis[0].id, 0) == 0  # the 1g at start 0 is busy
        r = a30.migctl("run", "--no-wait", "--profile", "2g.12gb", "--", "true")
        assert r.returncode == 75  # without reshaping the idle 1g instances block the 2g
        r = a30.migctl("run", "--reshape", "-v", "--no-wait", "--profile", "2g.12gb", "--", "true")
        assert r.returncode == 0, r.stderr
        assert "destroyed idle 1g.6gb@2, 1g.6gb@3" in r.stderr or "destroyed idle 1g.6gb@3, 1g.6gb@2" in r.stderr
        after = sorted(read_gpu(a30.node().gpu(0)).gis, key=lambda g: g.start)
        assert [(g.profile, g.start) for g in after] == [("1g.6gb", 0), ("1g.6gb", 1), ("2g.12gb", 2)]
        assert after[0].id == gis[0].id and holder.pid in after[0].pids  # the busy instance is untouched
    finally:
        holder.kill()
        holder.wait()
