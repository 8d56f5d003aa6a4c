"""50 concurrent `migctl run` on a simulated 8-GPU node: no MIG device is ever held by two jobs at once."""

from __future__ import annotations

import collections
import subprocess
import time

from conftest import SimEnv
from migctl.jobs import LeaseManager


def test_fifty_concurrent_runs_never_share_a_device(h100x8: SimEnv) -> None:
    log = h100x8.tmp / "events.log"
    # Contended: only GPUs 0 and 1 (at most 14 devices at once), mixed sizes, so runs create instances,
    # reuse them and wait for each other. Each child logs start/end with its CUDA_VISIBLE_DEVICES.
    body = (f'echo "start $CUDA_VISIBLE_DEVICES $(date +%s.%N) $MIGCTL_MIG_PROFILE" >> {log}; sleep 0.3; '
            f'echo "end $CUDA_VISIBLE_DEVICES $(date +%s.%N)" >> {log}')
    procs = []
    for i in range(50):
        size = ["--profile", "1g.10gb"] if i % 3 else ["--mem", "15GiB"]
        procs.append(h100x8.popen("run", "--gpu", "0,1", *size, "--wait", "120", "--", "sh", "-c", body,
                                  stdout=subprocess.DEVNULL))
    rcs = [p.wait(timeout=170) for p in procs]
    # (a run that creates an instance on the simulated node also says so: issue 8's "node is simulated" note)
    errs = ["".join(line for line in p.stderr.read().splitlines(keepends=True)
                    if not line.startswith("migctl: note: node is simulated")) for p in procs if p.stderr is not None]
    assert rcs == [0] * 50, [e for e in errs if e.strip() and "waiting" not in e]
    # every call either ran at once or said it was waiting: no silent failure
    assert all(e.strip() == "" or "waiting for a free MIG device" in e for e in errs)

    events = [line.split() for line in log.read_text().splitlines()]
    starts = [e for e in events if e[0] == "start"]
    ends = [e for e in events if e[0] == "end"]
    assert len(starts) == 50 and len(ends) == 50
    by_dev: dict[str, list[tuple[float, int]]] = collections.defaultdict(list)
    for e in events:
        assert e[1].startswith("MIG-") and "," not in e[1]  # exactly one device each
        by_dev[e[1]].append((float(e[2]), 1 if e[0] == "start" else -1))
    for dev, evs in by_dev.items():
        holders = 0
        for _, delta in sorted(evs, key=lambda x: (x[0], x[1])):  # an end sorts before a start at the same time
            holders += delta
            assert holders <= 1, f"{dev} held by two jobs at once"
    # sizes honoured: the --mem 15GiB runs got >= 20gb devices
    n = h100x8.node()
    devices = {d.uuid: d for g in n.gpus()[:2] for d in g.mig_devices()}
    assert set(by_dev) <= set(devices)
    assert all(devices[s[1]].memory_mib >= 15 * 1024 for s in starts if s[3] != "1g.10gb")
    # nothing on GPUs 2..7, no lease left behind
    assert all(g.mig_devices() == [] for g in n.gpus()[2:])
    assert LeaseManager(n).leases() == []
    assert time.time() > 0
