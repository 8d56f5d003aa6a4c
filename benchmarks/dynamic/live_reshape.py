"""The issue's live A30 case at scale: mixed-size concurrent ``migctl run`` with and without ``--reshape``.

    nice -n 10 python benchmarks/dynamic/live_reshape.py [--runs 60] [--wait 120] [--sleep 0.5] [--share N]

On a simulated A30 (state in a temp dir) holding four kept idle 1g.6gb instances (what four earlier
``run --profile 1g.6gb`` leave), ``--runs`` runs are started at once, alternating ``--profile 2g.12gb``
and ``--profile 1g.6gb``, each ``--wait``-bounded, each running ``sleep`` then checking that its MIG
device still exists in the simulator's state (exit 1 if it was destroyed under it). Phase 1 without
``--reshape``, phase 2 (fresh node) with ``--reshape`` (default churn policy). Reports timeouts (exit
75), other failures, wall time, and the reshaping destroys recorded in the jobs database. Writes
live_reshape.json and live_reshape.md next to this file (or to --out). With ``--share N`` every run is an
MPS client (``--isolation soft --share N``: up to N runs per device) and the files are
live_reshape_share.json and live_reshape_share.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

CHECK = 'sleep "$1"; grep -q "$CUDA_VISIBLE_DEVICES" "$MIGCTL_SIM_STATE" || { echo "device gone" >&2; exit 1; }'


def phase(runs: int, wait: float, sleep: float, reshape: bool, share: int | None = None) -> dict[str, object]:
    tmp = Path(tempfile.mkdtemp(prefix="migctl-live-reshape-"))
    env = dict(os.environ, MIGCTL_STATE_DIR=str(tmp / "state"), MIGCTL_SIM="1xA30", MIGCTL_SIM_STATE=str(tmp / "sim.json"))
    src = str(Path(__file__).resolve().parents[2] / "src")
    env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    os.environ.update({k: env[k] for k in ("MIGCTL_STATE_DIR", "MIGCTL_SIM", "MIGCTL_SIM_STATE")})
    from migctl.device import open_node

    g = open_node("1xA30", str(tmp / "sim.json")).gpu(0)
    g.set_mig_mode(True)
    for _ in range(4):
        g.create_gi(g.profile("1g.6gb").id).create_ci()
    sizes = [("2g.12gb" if k % 2 == 0 else "1g.6gb") for k in range(runs)]
    extra = (["--reshape"] if reshape else []) + (["--isolation", "soft", "--share", str(share)] if share else [])
    t0 = time.monotonic()
    procs = [subprocess.Popen([sys.executable, "-m", "migctl.cli.main", "run", *extra, "--wait", f"{wait:g}",
                               "--profile", p, "--", "sh", "-c", CHECK, "check", f"{sleep:g}"],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for p in sizes]
    codes, ends = [], []
    for p in procs:
        _, err = p.communicate()
        codes.append(p.returncode)
        ends.append(time.monotonic() - t0)
    wall = time.monotonic() - t0
    db = tmp / "state" / "jobs.sqlite"
    destroys = 0
    if db.exists():
        conn = sqlite3.connect(str(db))
        destroys = int(conn.execute("SELECT COUNT(*) FROM reshapes").fetchone()[0])
        conn.close()
    by = Counter((s, c) for s, c in zip(sizes, codes, strict=True))
    return {"reshape": reshape, "runs": runs, "timeouts": codes.count(75),
            "timeouts_2g": by[("2g.12gb", 75)], "timeouts_1g": by[("1g.6gb", 75)],
            "device_gone": codes.count(1), "other_failures": sum(1 for c in codes if c not in (0, 1, 75)),
            "ok": codes.count(0), "wall_s": round(wall, 1), "reshape_destroys": destroys}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=60)
    ap.add_argument("--wait", type=float, default=120.0)
    ap.add_argument("--sleep", type=float, default=0.5)
    ap.add_argument("--share", type=int, default=None, help="MPS clients per device (--isolation soft --share N)")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent))
    args = ap.parse_args()
    if args.share is not None and not 1 <= args.share <= 48:
        ap.error("--share: give an integer from 1 to 48")
    results = [phase(args.runs, args.wait, args.sleep, reshape, args.share) for reshape in (False, True)]
    meta = {"runs": args.runs, "wait_s": args.wait, "sleep_s": args.sleep, "share": args.share,
            "python": platform.python_version(), "cpus": os.cpu_count(),
            "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())}
    out = Path(args.out)
    stem = "live_reshape_share" if args.share else "live_reshape"
    (out / f"{stem}.json").write_text(json.dumps({"meta": meta, "phases": results}, indent=2) + "\n")
    how = f" as MPS clients (`--isolation soft --share {args.share}`)" if args.share else ""
    lines = [f"# Live reshaping: mixed concurrent `migctl run`{' (MPS clients)' if args.share else ''} on a "
             "simulated A30", "",
             f"`nice -n 10 python benchmarks/dynamic/live_reshape.py --runs {args.runs} --wait {args.wait:g} "
             f"--sleep {args.sleep:g}{f' --share {args.share}' if args.share else ''}` ({meta['date']}, "
             f"{meta['cpus']} CPUs, Python {meta['python']}).", "",
             f"{args.runs} runs started at once{how} (half `--profile 2g.12gb`, half `--profile 1g.6gb`, each "
             f"`--wait {args.wait:g}`, running {args.sleep:g} s and then checking that its MIG device still "
             "exists) on an A30 holding four kept idle 1g.6gb instances.", "",
             "| | ok | timeouts (2g / 1g) | device destroyed under a run | other failures | reshaping destroys | wall |",
             "|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {'with --reshape' if r['reshape'] else 'without --reshape'} | {r['ok']} | {r['timeouts']} "
                     f"({r['timeouts_2g']} / {r['timeouts_1g']}) | {r['device_gone']} | {r['other_failures']} | "
                     f"{r['reshape_destroys']} | {r['wall_s']} s |")
    (out / f"{stem}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
