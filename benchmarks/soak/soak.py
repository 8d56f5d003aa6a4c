"""Soak: concurrent `migctl run`, `submit` + `worker`, and `apply`, with SIGKILLs at random points, on a
simulated node whose clients appear in NVML only after a delay (as CUDA processes do on a real GPU).

One command (bounded minutes; run it niced on a shared machine):

    nice -n 10 python benchmarks/soak/soak.py --minutes 3

Everything is a real `migctl` process sharing one state dir and one simulator state file:

* runners: loops of `migctl run --profile P | --mem M --wait 20 -- sh -c '...'`; the command logs its start
  (MIG UUID, time, how long it will hold the device) and its end; some runners are SIGKILLed at a random
  moment (the command's background `sleep` survives in its process group and must keep the device);
* a submitter queues jobs of the same shape (a quarter of them shared: MPS or time-sliced clients); one
  `migctl worker` serves them (reshaping, its default) and is SIGKILLed and restarted from time to time;
  running jobs' wrapper shells are SIGKILLed too;
* an applier alternates between three layouts with `--wait 2`; some applies get an injected NVML failure
  (must roll back) or SIGKILL themselves at a random operation (the next apply must recover);
* some runners SIGKILL themselves at a random NVML operation (possibly between creating a GI and its CI);
  some exclusive runs pass ``--reshape`` (destroying idle instances of other sizes to make room);
* shared runners: loops of ``migctl run --isolation soft|none --share 2`` (MPS clients or time-sliced
  clients, two at most on one device); with GPUs without MIG in ``--spec`` (``2xA30,1xL4``), 40% of them ask
  for memory only (8GiB on an A30), which a 2-slice device or a whole GPU serves (the layouts then name the
  MIG GPUs); the profiles and sizes come from the MIG model of ``--spec`` (one model; A30: 1g.6gb, 2g.12gb);
* an operator destroys GPU instances by hand (``gi destroy`` of a random GI, or ``smi mig -dci`` then
  ``-dgi`` as with nvidia-smi; ``reset`` of a GPU): only idle ones may go, busy ones are refused (exit 3;
  ``smi``: nvidia-smi's 255, "In use by another client");
* a scraper scrapes one long-lived ``migctl exporter``: every device a command holds throughout a scrape must
  read ``migctl_mig_device_busy 1`` (a GPU used whole: ``migctl_gpu_busy 1``).

A monitor samples the simulator state every 0.1 s. Reported (all must be 0):

* double-booked devices: an exclusive command's hold interval overlaps another command's on one MIG UUID,
  MPS and time-sliced clients share one device, or more than two shared clients hold it at once;
* busy instances destroyed: a command that still holds its device (it has not ended, and its `sleep` may
  still run) and its MIG UUID is gone;
* applies that could not roll back: an apply (or the recovery of a killed one, or the final `recover`)
  reporting a failed rollback;
* orphan instances: GPU instances without a compute instance after the final `migctl recover`, plus leases
  or journals left behind once everything ended;
* runs that exited 2 ("can never be satisfied") although every request fits the node;
* held devices the exporter called idle, and hand-driven commands that exited other than 0 (done), 3 (busy)
  or 4 (node lock);
* MPS control daemons still running once every command has ended and one more lease attempt has run
  (which stops a daemon left without clients).

Results: benchmarks/soak/results.json and results.md (written by this script).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
SRC = HERE.parents[1] / "src"

def shapes(small: str, large: str, small_mib: int, large_mib: int) -> tuple[dict[str, Any], tuple, str]:
    """The layouts, the requests and the memory-only shared request, from the MIG model's plain 1-slice
    (``small``) and 2-slice (``large``) profiles and their memory. On an A30: 1g.6gb/2g.12gb, --mem 5GiB
    and 10GiB (each fits only its own size or larger), 8GiB for a shared run (a 2g or a whole GPU)."""
    config = {"version": "v1", "mig-configs": {
        "quarters": [{"devices": "all", "mig-enabled": True, "mig-devices": {small: 4}}],
        "halves": [{"devices": "all", "mig-enabled": True, "mig-devices": {large: 2}}],
        "mixed": [{"devices": "all", "mig-enabled": True, "mig-devices": {small: 2, large: 1}}],
    }}
    requests = (("--profile", small), ("--profile", large), ("--mem", f"{small_mib // 1024}GiB"),
                ("--mem", f"{large_mib // 1024 - 1}GiB"))
    return config, requests, f"{(small_mib + large_mib) // 2048}GiB"


CONFIG, REQUESTS, SHARED_MEM = shapes("1g.6gb", "2g.12gb", 5952, 11968)  # the A30's; run() sets the spec's


def _niced() -> str:
    """``nice -n N `` as this process runs (the command line the results name), or "" when not niced."""
    n = os.nice(0)
    return f"nice -n {n} " if n else ""


class Soak:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.rng = random.Random(args.seed)
        self.tmp = Path(tempfile.mkdtemp(prefix="migctl-soak-"))
        self.state = self.tmp / "sim.json"
        self.log = self.tmp / "events.log"
        self.log.touch()
        self.cfg = self.tmp / "mig.json"
        self.config, self.requests, self.shared_mem = CONFIG, REQUESTS, SHARED_MEM
        self.small = "1g.6gb"
        self.env = {**os.environ, "MIGCTL_STATE_DIR": str(self.tmp / "state"), "MIGCTL_SIM": args.spec,
                    "MIGCTL_SIM_STATE": str(self.state), "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
        for k in ("MIGCTL_SIM_CRASH_AT", "MIGCTL_BACKEND"):
            self.env.pop(k, None)
        self.counts: collections.Counter[str] = collections.Counter()
        self.problems: dict[str, list[str]] = collections.defaultdict(list)
        self.samples: dict[str, list[str]] = collections.defaultdict(list)  # other exits' last stderr lines
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.deadline = 0.0
        self.last_hand = ""  # the output of the operator's last command
        self.whole: list[int] = []  # GPUs without MIG in --spec (e.g. 2xA30,1xL4): shared runs may use them whole

    # ------------------------------------------------------------------ helpers
    def migctl(self, *a: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "migctl.cli.main", *a], env=env or self.env, text=True,
                              capture_output=True, timeout=timeout)

    def popen(self, *a: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
        """stderr goes to a file (a pipe could fill up, or be held open by a surviving command)."""
        err = tempfile.TemporaryFile(mode="w+", dir=self.tmp)
        p = subprocess.Popen([sys.executable, "-m", "migctl.cli.main", *a], env=env or self.env, text=True,
                             stdout=subprocess.DEVNULL, stderr=err)
        p.errfile = err  # type: ignore[attr-defined]
        return p

    @staticmethod
    def stderr_of(p: subprocess.Popen[str]) -> str:
        f = p.errfile  # type: ignore[attr-defined]
        f.seek(0)
        text = str(f.read())
        f.close()
        return text

    def count(self, key: str, n: int = 1) -> None:
        with self.lock:
            self.counts[key] += n

    def problem(self, key: str, text: str) -> None:
        with self.lock:
            self.problems[key].append(text)

    def sim_state(self) -> dict[str, Any]:
        for _ in range(20):
            try:
                return dict(json.loads(self.state.read_text()))
            except (OSError, ValueError):
                time.sleep(0.01)
        raise RuntimeError("simulator state unreadable")

    def simnode(self) -> Any:
        if str(SRC) not in sys.path:
            sys.path.insert(0, str(SRC))
        from migctl import sim

        return sim.install(self.args.spec, state_path=self.state)

    def daemons(self) -> list[int]:
        """PIDs of the stand-in MPS control daemons serving this soak's state dir."""
        out = []
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            try:
                cmd = (proc / "cmdline").read_bytes().split(b"\0")
                env = (proc / "environ").read_bytes().split(b"\0")
            except OSError:
                continue
            pipe = f"CUDA_MPS_PIPE_DIRECTORY={self.tmp}/".encode()
            if b"migctl.sim.mps_control" in cmd and b"-d" in cmd and any(e.startswith(pipe) for e in env):
                out.append(int(proc.name))
        return out

    def op_count(self) -> int:
        return int(self.sim_state().get("op_count", 0))

    def body(self, tag: str) -> list[str]:
        hold = round(self.rng.uniform(0.3, 2.5), 2)
        # start line: UUID, time, planned hold, tag. The hold runs as a background sleep in the command's
        # process group, so it outlives a SIGKILLed wrapper (and must keep the device).
        script = (f'echo "S $CUDA_VISIBLE_DEVICES $(date +%s.%N) {hold} {tag}" >> {self.log}; '
                  f'sleep {hold} & wait; echo "E $CUDA_VISIBLE_DEVICES $(date +%s.%N) {hold} {tag}" >> {self.log}')
        return ["sh", "-c", script]

    # ------------------------------------------------------------------ actors
    def runner(self, k: int) -> None:
        n = 0
        while time.monotonic() < self.deadline:
            n += 1
            req = self.rng.choice(self.requests)
            env = self.env
            if self.rng.random() < 0.08:  # die at a random NVML operation (maybe between GI and CI)
                env = {**self.env, "MIGCTL_SIM_CRASH_AT": str(self.op_count() + self.rng.randint(1, 3))}
                self.count("runs_crash_injected")
            reshape = ["--reshape"] if self.rng.random() < 0.3 else []
            p = self.popen("run", *req, *reshape, "--wait", "20", "--", *self.body(f"r{k}.{n}"), env=env)
            self.supervise(p, 0.15, "run")

    def supervise(self, p: subprocess.Popen[str], kill_share: float, what: str) -> None:
        """Wait for a run, SIGKILLed at a random moment with probability ``kill_share``; count its exit."""
        kill_at = time.monotonic() + self.rng.uniform(0.2, 3.0) if self.rng.random() < kill_share else None
        while p.poll() is None:
            if kill_at is not None and time.monotonic() >= kill_at:
                p.kill()
                self.count(f"{what}s_sigkilled")
                kill_at = None
            time.sleep(0.05)
        err = self.stderr_of(p)
        self.count(f"{what}_exit_{p.returncode}")
        if p.returncode not in (0, 75, -9, 137) and len(self.samples[f"{what} exit {p.returncode}"]) < 3:
            self.samples[f"{what} exit {p.returncode}"].append((err.strip().splitlines() or [""])[-1][-300:])
        if p.returncode == 2:
            self.problem("runs_exit_2", err.strip()[-300:])
        if "Traceback" in err:
            self.problem("tracebacks", err.strip()[-300:])

    def shared_runner(self, k: int) -> None:
        """MPS (tag m...) or time-sliced (tag t...) clients, two per device at most."""
        n = 0
        while time.monotonic() < self.deadline:
            n += 1
            iso = self.rng.choice(("soft", "none"))
            tag = f"{'m' if iso == 'soft' else 't'}{k}.{n}"
            # with GPUs without MIG: some ask for memory only (a 2-slice device, or a whole GPU)
            req = ("--mem", self.shared_mem) if self.whole and self.rng.random() < 0.4 else ("--profile", self.small)
            p = self.popen("run", *req, "--isolation", iso, "--share", "2", "--wait", "20", "--", *self.body(tag))
            self.supervise(p, 0.1, "shared_run")

    def operator(self) -> None:
        """Destroys by hand: a random GI (``gi destroy``, or nvidia-smi's way: ``smi mig -dci`` then ``-dgi``)
        or a whole GPU's instances (``reset``)."""
        while time.monotonic() < self.deadline:
            time.sleep(self.rng.uniform(0.5, 2.0))
            try:
                st = self.sim_state()
            except RuntimeError:
                continue
            gis = [(g["index"], gi["id"]) for g in st["gpus"] for gi in g["gis"]]
            pick = self.rng.random()
            if pick < 0.5 and gis:
                gpu, gi = self.rng.choice(gis)
                self.hand("gi", "destroy", "-i", str(gpu), "-gi", str(gi), "--lock-timeout", "10")
            elif pick < 0.7 and gis:
                gpu, gi = self.rng.choice(gis)
                if self.hand("smi", "mig", "-dci", "-i", str(gpu), "-gi", str(gi)) == 0:
                    for _ in range(3):  # (an injected fault may hit it: an operator would try again)
                        self.hand("smi", "mig", "-dgi", "-i", str(gpu), "-gi", str(gi))
                        if "Unknown Error" not in self.last_hand:
                            break
            else:
                self.hand("reset", "-i", str(self.rng.randrange(len(st["gpus"]))), "--lock-timeout", "10")

    def hand(self, *args: str) -> int:
        """One hand-driven command; its exit must be done, busy or a lost race, never anything else."""
        r = self.migctl(*args)
        verb = "smi " + args[2] if args[0] == "smi" else args[0]
        self.count(f"{verb}_exit_{r.returncode}")
        if args[0] == "smi":  # nvidia-smi's codes: 255 "In use by another client", 6 Not Found (a lost race)
            ok = r.returncode == 0 or (r.returncode == 255 and "In use by another client" in r.stdout + r.stderr) \
                or r.returncode == 6
        else:  # gone: destroyed by someone else since the state was read
            ok = r.returncode in (0, 3, 4) or (r.returncode == 2 and "has no GPU instance" in r.stderr)
        text = self.last_hand = r.stdout + r.stderr
        if not ok and r.returncode in (1, 255) and "Unknown Error" in text:  # a fault injected for an apply hit
            ok = True  # this command's NVML change instead (the same simulated driver)
            self.count("hand_commands_hit_by_injected_faults")
        if "Traceback" in r.stderr or not ok:
            self.problem("hand_commands_failed", f"{' '.join(args)}: exit {r.returncode}: {text.strip()[-300:]}")
        return r.returncode

    def scraper(self) -> None:
        """One long-lived ``migctl exporter``, scraped every 0.2 to 1 s: every device a command holds from
        before a scrape to after it must read busy in that scrape."""
        import re
        import urllib.request

        err = tempfile.TemporaryFile(mode="w+", dir=self.tmp)
        p = subprocess.Popen([sys.executable, "-m", "migctl.cli.main", "exporter", "--listen", "127.0.0.1:0"],
                             env=self.env, text=True, stdout=subprocess.DEVNULL, stderr=err)
        port = None
        while port is None and p.poll() is None and time.monotonic() < self.deadline:
            time.sleep(0.1)
            err.seek(0)
            m = re.search(r"http://127\.0\.0\.1:(\d+)/metrics", err.read())
            port = int(m.group(1)) if m else None
        try:
            while port is not None and time.monotonic() < self.deadline:
                time.sleep(self.rng.uniform(0.2, 1.0))
                t0 = time.time()
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as r:
                        text = r.read().decode()
                except OSError as e:
                    self.problem("tracebacks", f"exporter scrape failed: {e}")
                    continue
                t1 = time.time()
                self.count("scrapes")
                self.check_scrape(text, t0, t1)
        finally:
            p.terminate()
            p.wait(20)
            err.seek(0)
            out = err.read()
            if "Traceback" in out or port is None:
                self.problem("tracebacks", f"exporter: {out.strip()[-300:]}")

    def check_scrape(self, text: str, t0: float, t1: float) -> None:
        import re

        busy = {m.group(1): m.group(2) == "1.0" for m in
                re.finditer(r'^migctl_mig_device_busy\{[^}]*mig_uuid="([^"]+)"[^}]*\} (\S+)$', text, re.M)}
        busy.update({m.group(1): m.group(2) == "1.0" for m in  # (GPUs used whole)
                     re.finditer(r'^migctl_gpu_busy\{[^}]*UUID="([^"]+)"[^}]*\} (\S+)$', text, re.M)})
        starts: dict[str, tuple[str, float, float]] = {}
        ended: set[str] = set()
        for line in self.log.read_text().splitlines():
            kind, uuid, t, hold, tag = line.split()
            if kind == "S":
                starts[tag] = (uuid, float(t), float(hold))
            else:
                ended.add(tag)
        for tag, (uuid, start, hold) in starts.items():
            if tag in ended or start >= t0 or start + hold <= t1 + 0.2:
                continue  # not held for the whole scrape
            if not busy.get(uuid, False):
                self.problem("held_devices_shown_idle", f"{tag} on {uuid}: busy={busy.get(uuid)} "
                             f"(held {start:.2f}..{start + hold:.2f}, scrape {t0:.2f}..{t1:.2f})")
            self.count("held_devices_checked_in_scrapes")

    def submitter(self) -> None:
        n = 0
        while time.monotonic() < self.deadline - 3:
            n += 1
            req: tuple[str, ...] = self.rng.choice(self.requests)
            tag = f"j{n}"
            if self.rng.random() < 0.25:  # a shared job: an MPS (tag mj...) or time-sliced (tj...) client
                iso = self.rng.choice(("soft", "none"))
                req = ("--profile", self.small, "--isolation", iso, "--share", "2")
                tag = f"{'m' if iso == 'soft' else 't'}{tag}"
            r = self.migctl("submit", *req, "--priority", str(self.rng.randint(0, 2)), "--", *self.body(tag))
            self.count(f"submit_exit_{r.returncode}")
            if "Traceback" in r.stderr:
                self.problem("tracebacks", r.stderr.strip()[-300:])
            time.sleep(self.rng.uniform(0.3, 1.2))

    def worker(self) -> None:
        w = self.popen("worker")
        next_kill = time.monotonic() + self.rng.uniform(8, 20)
        db = self.tmp / "state" / "jobs.sqlite"
        while time.monotonic() < self.deadline:
            time.sleep(0.2)
            now = time.monotonic()
            if now >= next_kill and now < self.deadline:
                w.kill()
                w.wait()
                self.stderr_of(w)
                self.count("worker_sigkilled")
                w = self.popen("worker")
                next_kill = now + self.rng.uniform(8, 20)
            if w.poll() is not None:
                err = self.stderr_of(w)
                if "Traceback" in err:
                    self.problem("tracebacks", err.strip()[-300:])
                w = self.popen("worker")
            if now < self.deadline and self.rng.random() < 0.03 and db.exists():  # kill a job's wrapper
                try:
                    c = sqlite3.connect(str(db), timeout=5)
                    pids = [r[0] for r in c.execute("SELECT child_pid FROM jobs WHERE state='running'").fetchall()]
                    c.close()
                except sqlite3.Error:
                    pids = []
                if pids:
                    try:
                        os.kill(self.rng.choice(pids), signal.SIGKILL)
                        self.count("job_wrappers_sigkilled")
                    except ProcessLookupError:
                        pass
        # let queued/running jobs finish, then stop
        end = time.monotonic() + 60
        while time.monotonic() < end:
            r = self.migctl("jobs", "--json")
            if r.returncode == 0 and not json.loads(r.stdout or "[]"):
                break
            time.sleep(0.5)
        w.send_signal(signal.SIGTERM)
        try:
            w.wait(timeout=20)
        except subprocess.TimeoutExpired:
            w.kill()
            w.wait()

    def applier(self) -> None:
        labels = list(self.config["mig-configs"])
        while time.monotonic() < self.deadline:
            label = self.rng.choice(labels)
            env = self.env
            mode = self.rng.random()
            if mode < 0.2:
                env = {**self.env, "MIGCTL_SIM_CRASH_AT": str(self.op_count() + self.rng.randint(1, 8))}
            elif mode < 0.4:  # the k-th NVML change from now fails (usually the apply's; maybe a runner's)
                self.simnode().inject_fault(self.rng.randint(1, 8))
                self.count("apply_faults_injected")
            r = self.migctl("apply", "-f", str(self.cfg), "-c", label, "--wait", "2", "--lock-timeout", "60",
                            env=env)
            if mode < 0.4 and mode >= 0.2:
                self.simnode().inject_fault(None)
            self.count(f"apply_exit_{r.returncode}")
            self.classify_apply(r.returncode, r.stderr + r.stdout)
            time.sleep(self.rng.uniform(0.5, 2.0))

    def classify_apply(self, rc: int, text: str) -> None:
        if "Traceback" in text:
            self.problem("tracebacks", text.strip()[-300:])
        if rc == -9:
            self.count("applies_sigkilled")
        if "rolled back: every GPU has its previous layout" in text:
            self.count("applies_rolled_back")
        if "rolled back the interrupted apply" in text:
            self.count("interrupted_applies_recovered")
        if "rollback failed" in text or "could not be rolled back" in text:
            self.problem("applies_not_rolled_back", text.strip()[-300:])

    def monitor(self) -> None:
        """Every 0.1 s: each command still within its hold must find its MIG UUID on the node (a command on a
        GPU used whole: that GPU, still not in MIG mode)."""
        pos = 0
        open_: dict[str, tuple[str, float, float]] = {}  # tag -> (uuid, start, hold)
        while not self.stop.is_set():
            with open(self.log, encoding="utf-8") as f:
                f.seek(pos)
                chunk = f.read()
            cut = chunk.rfind("\n") + 1
            pos += len(chunk[:cut].encode())
            for line in chunk[:cut].splitlines():
                kind, uuid, t, hold, tag = line.split()
                if kind == "S":
                    open_[tag] = (uuid, float(t), float(hold))
                else:
                    open_.pop(tag, None)
            try:
                st = self.sim_state()
            except RuntimeError:
                continue
            existing = {ci["uuid"] for g in st["gpus"] for gi in g["gis"] for ci in gi["cis"]}
            existing |= {g["uuid"] for g in st["gpus"] if not g.get("mig_current")}  # (GPUs used whole)
            now = time.time()
            for tag, (uuid, start, hold) in list(open_.items()):
                if now > start + hold - 0.05:
                    if now > start + hold + 30:
                        open_.pop(tag)
                    continue
                if uuid not in existing:
                    # confirm against the log (the end line may have been written since we read it)
                    ended = any(ln.startswith("E ") and ln.endswith(f" {tag}") for ln in self.log.read_text().splitlines())
                    if not ended:
                        self.problem("busy_instances_destroyed", f"{tag} on {uuid} (started {start:.2f}, hold {hold})")
                    open_.pop(tag)
            time.sleep(0.1)

    # ------------------------------------------------------------------ the run
    def run(self) -> dict[str, Any]:
        t0 = time.time()
        r = self.migctl("gpus", "--json")
        assert r.returncode == 0, r.stderr
        gpus = json.loads(r.stdout)["gpus"]
        self.whole = [g["index"] for g in gpus if not g["mig_capable"]]
        models = {g["model"] for g in gpus if g["mig_capable"]}
        if len(models) != 1:
            raise SystemExit(f"--spec needs MIG GPUs of exactly one model (has {sorted(models) or 'none'})")
        r = self.migctl("catalog", models.pop(), "--json")
        assert r.returncode == 0, r.stderr
        plain = {p["slices"]: p for p in json.loads(r.stdout)["gi_profiles"] if "+" not in p["name"]
                 and "-" not in p["name"] and p["slices"] in (1, 2)}
        small, large = plain[1], plain[2]
        self.config, self.requests, self.shared_mem = shapes(small["name"], large["name"], small["memory_mib"],
                                                             large["memory_mib"])
        self.small = small["name"]
        cfg = self.config
        if self.whole:  # the layouts name the MIG GPUs (a MIG layout on a GPU without MIG is refused)
            mig = [g["index"] for g in gpus if g["mig_capable"]]
            cfg = {**cfg, "mig-configs": {k: [{**e, "devices": mig} for e in v]
                                          for k, v in cfg["mig-configs"].items()}}
        self.cfg.write_text(json.dumps(cfg))
        r = self.migctl("apply", "-f", str(self.cfg), "-c", "mixed", "-q")
        assert r.returncode == 0, r.stderr
        r = self.migctl("sim", "client-delay", str(self.args.client_delay))
        assert r.returncode == 0, r.stderr
        self.deadline = time.monotonic() + self.args.minutes * 60
        threads = [threading.Thread(target=self.runner, args=(k,)) for k in range(self.args.runners)]
        threads += [threading.Thread(target=self.shared_runner, args=(k,)) for k in range(self.args.shared_runners)]
        threads += [threading.Thread(target=self.submitter), threading.Thread(target=self.applier),
                    threading.Thread(target=self.operator), threading.Thread(target=self.scraper)]
        aux = [threading.Thread(target=self.worker), threading.Thread(target=self.monitor)]
        for t in threads + aux:
            t.start()
        for t in threads:
            t.join()
        aux[0].join()  # the worker drains the queue, then stops
        time.sleep(3.0)  # the longest hold (2.5 s) of a killed wrapper's sleep ends
        self.stop.set()
        aux[1].join()
        self.final_checks()
        return self.report(time.time() - t0)

    def final_checks(self) -> None:
        r = self.migctl("recover")
        self.classify_apply(r.returncode, r.stdout + r.stderr)
        if r.returncode != 0:
            self.problem("applies_not_rolled_back", f"final recover: {r.stderr.strip()}")
        st = self.sim_state()
        for g in st["gpus"]:
            for gi in g["gis"]:
                if not gi["cis"]:
                    self.problem("orphan_instances", f"GPU {g['index']}: GI {gi['id']} has no compute instance")
        r = self.migctl("leases", "--json")
        leases = json.loads(r.stdout or "{}").get("leases", []) if r.returncode == 0 else []  # {"leases": [...]}
        for x in leases:
            self.problem("orphan_instances", f"lease left: {x}")
        journals = list((self.tmp / "state").glob("apply-*.journal.json")) + list((self.tmp / "state").glob("create-*.json"))
        for j in journals:
            self.problem("orphan_instances", f"journal left: {j.name}")
        # MPS daemons: none may outlive its clients past the next decision (a lease attempt reclaims them)
        self.migctl("run", "--no-create", "--profile", self.small, "--wait", "0", "--", "true")
        for pid in self.daemons():
            self.problem("mps_daemons_left", f"MPS control daemon PID {pid} runs with no client left")
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        # double booking: hold intervals per MIG UUID ([start, end], or [start, start+hold] when no end line:
        # the sleep started after the start line, so the real hold lasted at least that long)
        starts: dict[str, tuple[str, float, float]] = {}
        ends: dict[str, float] = {}
        for line in self.log.read_text().splitlines():
            kind, uuid, t, hold, tag = line.split()
            if kind == "S":
                starts[tag] = (uuid, float(t), float(hold))
            else:
                ends[tag] = float(t)
        by_uuid: dict[str, list[tuple[float, float, str]]] = collections.defaultdict(list)
        for tag, (uuid, s, hold) in starts.items():
            by_uuid[uuid].append((s, ends.get(tag, s + hold), tag))
        for uuid, ivs in by_uuid.items():
            self.check_holds(uuid, ivs)
        self.count("commands_started", len(starts))
        self.count("commands_without_end_line", len(set(starts) - set(ends)))
        self.count("mig_uuids_used", len(by_uuid))

    def check_holds(self, uuid: str, ivs: list[tuple[float, float, str]]) -> None:
        """At every instant one device has one exclusive holder (tags r, j), or at most two MPS clients (m),
        or at most two time-sliced clients (t)."""
        ivs = sorted(ivs)
        for i, (s1, e1, t1) in enumerate(ivs):
            with_ = [(s2, e2, t2) for s2, e2, t2 in ivs[i + 1:] if s2 < e1]
            for s2, e2, t2 in with_:
                if t1[0] in "rj" or t2[0] in "rj" or t1[0] != t2[0]:
                    self.problem("double_booked_devices",
                                 f"{uuid}: {t1} [{s1:.3f}, {e1:.3f}] and {t2} [{s2:.3f}, {e2:.3f}]")
            for s2, e2, t2 in with_:  # a third shared client while two others still hold it
                third = [t3 for s3, e3, t3 in with_ if s3 > s2 and s3 < min(e1, e2)]
                if third:
                    self.problem("double_booked_devices", f"{uuid}: {t1}, {t2} and {third[0]} at once")

    def report(self, seconds: float) -> dict[str, Any]:
        keys = ("double_booked_devices", "busy_instances_destroyed", "applies_not_rolled_back", "orphan_instances",
                "runs_exit_2", "tracebacks", "held_devices_shown_idle", "hand_commands_failed", "mps_daemons_left")
        return {
            "command": f"{_niced()}python benchmarks/soak/soak.py --minutes {self.args.minutes:g} --spec {self.args.spec} "
                       f"--runners {self.args.runners} --shared-runners {self.args.shared_runners} --client-delay {self.args.client_delay:g} --seed {self.args.seed}",
            "spec": self.args.spec, "minutes": self.args.minutes, "seconds": round(seconds, 1),
            "client_delay_s": self.args.client_delay, "runners": self.args.runners,
            "shared_runners": self.args.shared_runners, "seed": self.args.seed,
            "results": {k: len(self.problems.get(k, [])) for k in keys},
            "examples": {k: v[:5] for k, v in self.problems.items()},
            "other_exits": dict(sorted(self.samples.items())),
            "activity": dict(sorted(self.counts.items())),
        }


def write_results(res: dict[str, Any], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True, mode=0o700)
    (out / "results.json").write_text(json.dumps(res, indent=2) + "\n")
    r, a = res["results"], res["activity"]
    lines = [
        "# Soak: runs, shared runs, queued jobs, worker, applies and hand-driven destroys with SIGKILLs (issues 9, 12)",
        "",
        f"Command: `{res['command']}` ({res['seconds']} s wall, simulated {res['spec']}, clients appear in NVML "
        f"{res['client_delay_s']:g} s after they start).",
        "",
        "| must be 0 | count |",
        "|---|---:|",
        *[f"| {k.replace('_', ' ')} | {v} |" for k, v in r.items()],
        "",
        "| activity | count |",
        "|---|---:|",
        *[f"| {k.replace('_', ' ')} | {v} |" for k, v in a.items()],
        "",
        "Exit codes: run 0 = command succeeded, 75 = no device within `--wait 20` (or the node lock stayed held),",
        "137/-9 = SIGKILLed by the soak or by the crash hook; apply 0 = applied, 3 = busy after `--wait 2`,",
        "5 = injected failure rolled back, -9 = killed at an operation (recovered by the next apply); gi destroy",
        "and reset 0 = destroyed (idle), 3 = refused (busy), 4 = node lock held past `--lock-timeout 10`, gi destroy",
        "2 = the GI named was destroyed by someone else since the soak read the state; smi -dci/-dgi 0 = destroyed,",
        "255 = In use by another client (busy), 6 = Not Found (destroyed by someone else since).",
    ]
    if res.get("other_exits"):
        lines += ["", "Other exits of runs (the last line each printed, at most 3 per exit code):", ""] + [
            f"* {k}: `{v}`" for k, vs in res["other_exits"].items() for v in vs]
    if res["examples"]:
        lines += ["", "Examples of problems:", ""] + [f"* {k}: {v}" for k, vs in res["examples"].items() for v in vs]
    (out / "results.md").write_text("\n".join(lines) + "\n")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=3.0)
    ap.add_argument("--spec", default="2xA30")
    ap.add_argument("--runners", type=int, default=4)
    ap.add_argument("--shared-runners", type=int, default=2)
    ap.add_argument("--client-delay", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=9)
    ap.add_argument("--out", type=Path, default=HERE)
    args = ap.parse_args()
    if not 0 < args.minutes <= 30:
        ap.error("--minutes must be in (0, 30]")
    import faulthandler

    faulthandler.dump_traceback_later(args.minutes * 60 + 240, exit=True)  # bounded: never hang
    res = Soak(args).run()
    write_results(res, args.out)
    print(json.dumps(res["results"]))
    return 0 if not any(res["results"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
