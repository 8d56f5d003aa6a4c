#!/usr/bin/env python3
"""A small CPU workload for `migctl bench` that honours its JSON-line protocol (docs/bench.md).

It stands in for an inference server on a GPU whose speed depends on the instance it gets. It does real
CPU work (SHA-256 over a buffer) for each batch and then waits out the rest of a *modelled* batch time,
so the throughput it measures and prints is a real wall-clock measurement whose value scales with the
instance:

    batch time = overhead_ms + batch x item_ms x (reference SMs / usable SMs)
    usable SMs = min(SMs of the instance / processes sharing it, batch x sms_per_item)

* the instance's SMs come from ``MIGCTL_BENCH_SMS`` (set by `migctl bench` from the catalog) or, under
  `migctl run`, from ``MIGCTL_MIG_PROFILE`` (``3g.40gb`` -> 3 compute slices x ``--sms-per-slice``);
* ``--sms-per-item`` bounds how much of a GPU one item can use: a small model (low value) cannot fill a
  big instance, so small MIG slices win per slice; a large model (high value) uses the whole GPU and the
  SMs MIG leaves unused (an H100 has 132 SMs, seven 1g slices 112), so the whole GPU wins;
* ``--model-gib``: the run fails like an out-of-memory error on an instance with less memory
  (``MIGCTL_BENCH_MEMORY_MIB``, or the ``..gb`` part of the profile name).

Batch size and process count come from ``MIGCTL_BENCH_BATCH`` / ``MIGCTL_BENCH_PROCS`` (or --batch).
Prints one line: {"throughput": items/s, "latency_ms": ms per batch, "unit": "items/s"}.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import sys
import time


def instance() -> tuple[float, float | None]:
    """(SMs, memory MiB or None) of the instance this process runs on."""
    sms = os.environ.get("MIGCTL_BENCH_SMS")
    mem = os.environ.get("MIGCTL_BENCH_MEMORY_MIB")
    if sms:
        return float(sms), float(mem) if mem else None
    prof = os.environ.get("MIGCTL_MIG_PROFILE", "")
    m = re.match(r"^(?:(\d+)c\.)?(\d+)g\.(\d+)gb", prof)
    if not m:
        sys.exit(f"bench_workload: cannot tell the instance size (MIGCTL_MIG_PROFILE={prof!r}, no MIGCTL_BENCH_SMS)")
    slices = int(m.group(1) or m.group(2))
    return float(slices * ARGS.sms_per_slice), float(m.group(3)) * 1024.0


def main() -> int:
    sms, mem_mib = instance()
    batch = ARGS.batch or int(os.environ.get("MIGCTL_BENCH_BATCH", "1"))
    procs = max(1, int(os.environ.get("MIGCTL_BENCH_PROCS", "1")))
    if mem_mib is not None and ARGS.model_gib * 1024.0 * (1 + 0.1 * (batch - 1) ** 0.5) > mem_mib:
        print(f"bench_workload: CUDA out of memory (model {ARGS.model_gib} GiB, batch {batch}, "
              f"instance {mem_mib / 1024:.1f} GiB)", file=sys.stderr)
        return 3
    usable = min(sms / procs, batch * ARGS.sms_per_item)
    batch_s = (ARGS.overhead_ms + batch * ARGS.item_ms * ARGS.reference_sms / usable) / 1000.0
    buf = os.urandom(4096)
    lat = []
    t0 = time.perf_counter()
    for k in range(ARGS.batches):
        b0 = time.perf_counter()
        h = hashlib.sha256()
        for _ in range(batch):
            h.update(buf)  # the real work per item
        # wait until this batch's modelled end: absolute deadlines, so a late wake-up on a busy host is
        # not carried into the next batch
        rest = t0 + (k + 1) * batch_s - time.perf_counter()
        if rest > 0:
            time.sleep(rest)
        lat.append(time.perf_counter() - b0)
    wall = time.perf_counter() - t0
    lat.sort()
    print("loaded model, measuring", file=sys.stderr)
    print(json.dumps({"throughput": round(ARGS.batches * batch / wall, 4),
                      "latency_ms": round(1000 * lat[len(lat) // 2], 4), "unit": "items/s"}))
    return 0


p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
p.add_argument("--batch", type=int, default=0, help="batch size (default: MIGCTL_BENCH_BATCH or 1)")
p.add_argument("--batches", type=int, default=5, help="batches per run")
p.add_argument("--item-ms", type=float, default=2.0, help="ms per item on --reference-sms SMs")
p.add_argument("--overhead-ms", type=float, default=1.0, help="fixed ms per batch")
p.add_argument("--reference-sms", type=float, default=16.0, help="SMs on which an item takes --item-ms")
p.add_argument("--sms-per-item", type=float, default=1000.0, help="SMs one item can keep busy")
p.add_argument("--sms-per-slice", type=float, default=16.0, help="SMs per compute slice (profile-name fallback)")
p.add_argument("--model-gib", type=float, default=0.0, help="memory the model needs")
ARGS = p.parse_args()

if __name__ == "__main__":
    sys.exit(main())
