"""Concurrent `migctl run` on a simulated 8-GPU node: no MIG device is ever held by two jobs at once.

Twelve runs on one GPU (at most seven devices): runs create instances, wait for each other and reuse
instances. The same property at 50 concurrent runs with SIGKILLs and applies in between is measured by
benchmarks/soak/soak.py."""

from __future__ import annotations

import collections
import subprocess

from conftest import SimEnv
from migctl.jobs import LeaseManager

RUNS = 12


def test_concurrent_runs_never_share_a_device(h100x8: SimEnv) -> None:
    log = h100x8.tmp / "events.log"
    # Contended: only GPU 0 (at most 7 devices at once, fewer with the larger ones), mixed sizes, so runs
    # create instances, reuse them and wait for each other. Each child logs start/end with its
    # CUDA_VISIBLE_DEVICES.
    body = (f'echo "start $CUDA_VISIBLE_DEVICES $(date +%s.%N) $MIGCTL_MIG_PROFILE" >> {log}; sleep 0.5; '
            f'echo "end $CUDA_VISIBLE_DEVICES $(date +%s.%N)" >> {log}')
    procs = []
    for i in range(RUNS):
        size = ["--profile", "1g.10gb"] if i % 3 else ["--mem", "15GiB"]
        procs.append(h100x8.popen("run", "--gpu", "0", *size, "--wait", "120", "--", "sh", "-c", body,
                                  stdout=subprocess.DEVNULL))
    rcs = [p.wait(timeout=170) for p in procs]
    # (a run that creates an instance on the simulated node also says so: issue 8's "node is simulated" note)
    errs = ["".join(line for line in p.stderr.read().splitlines(keepends=True)
                    if not line.startswith("migctl: note: node is simulated")) for p in procs if p.stderr is not None]
    assert rcs == [0] * RUNS, [e for e in errs if e.strip() and "waiting" not in e]
    # every call either ran at once or said it was waiting: no silent failure
    assert all(e.strip() == "" or "waiting for a free MIG device" in e for e in errs)

    events = [line.split() for line in log.read_text().splitlines()]
    starts = [e for e in events if e[0] == "start"]
    ends = [e for e in events if e[0] == "end"]
    assert len(starts) == RUNS and len(ends) == RUNS
    by_dev: dict[str, list[tuple[float, int]]] = collections.defaultdict(list)
    for e in events:
        assert e[1].startswith("MIG-") and "," not in e[1]  # exactly one device each
        by_dev[e[1]].append((float(e[2]), 1 if e[0] == "start" else -1))
    for dev, evs in by_dev.items():
        holders = 0
        for _, delta in sorted(evs, key=lambda x: (x[0], x[1])):  # an end sorts before a start at the same time
            holders += delta
            assert holders <= 1, f"{dev} held by two jobs at once"
    # one GPU has room for 7 devices at most: some devices served several runs, one after the other
    assert len(by_dev) <= 7 and any(len(evs) > 2 for evs in by_dev.values())
    # sizes honoured: the --mem 15GiB runs got >= 20gb devices
    n = h100x8.node()
    devices = {d.uuid: d for d in n.gpu(0).mig_devices()}
    assert set(by_dev) <= set(devices)
    assert all(devices[s[1]].memory_mib >= 15 * 1024 for s in starts if s[3] != "1g.10gb")
    # nothing on GPUs 1..7, no lease left behind
    assert all(g.mig_devices() == [] for g in n.gpus()[1:])
    assert LeaseManager(n).leases() == []
