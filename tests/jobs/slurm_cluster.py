"""A throw-away one-node Slurm on loopback for the tests (after shared/recipes/slurm-local.sh).

Library (used by the test fixture) and a tiny CLI (used as migctl's restart commands)::

    python slurm_cluster.py restart DIR slurmctld|slurmd
"""

from __future__ import annotations

import os
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

NODE = "localhost"

SLURM_CONF = """ClusterName=migctltest
SlurmctldHost=localhost
AuthType=auth/munge
AuthInfo=socket={d}/munge/munge.sock
SlurmctldPort={port}
SlurmdPort={port1}
StateSaveLocation={d}/spool/ctld
SlurmdSpoolDir={d}/spool/d
SlurmctldPidFile={d}/run/slurmctld.pid
SlurmdPidFile={d}/run/slurmd.pid
SlurmctldLogFile={d}/log/slurmctld.log
SlurmdLogFile={d}/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerParameters=batch_sched_delay=0,sched_min_interval=0
AccountingStorageType=accounting_storage/none
MailProg=/bin/true
ReturnToService=2
SlurmdParameters=config_overrides
GresTypes=gpu
NodeName={node} NodeAddr=127.0.0.1 CPUs=4 RealMemory=1000 State=UNKNOWN
PartitionName=debug Nodes={node} Default=YES MaxTime=INFINITE State=UP
"""


def free_port_pair() -> int:
    """A port P such that P and P+1 are both free on loopback now (slurmctld and slurmd take one each); tests
    running in parallel each get their own."""
    for _ in range(200):
        with socket.socket() as a:
            a.bind(("127.0.0.1", 0))
            port = int(a.getsockname()[1])
            if port >= 65535:
                continue
            with socket.socket() as b:
                try:
                    b.bind(("127.0.0.1", port + 1))
                except OSError:
                    continue
                return port
    raise RuntimeError("no two consecutive free ports on 127.0.0.1")


class Cluster:
    """munged + slurmctld + slurmd in DIR, on ports ``port`` and ``port+1``."""

    def __init__(self, d: Path, port: int = 16917) -> None:
        self.d = d.resolve()
        self.port = port
        self.conf = self.d / "etc" / "slurm.conf"
        self.gres_conf = self.d / "etc" / "gres.conf"
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}

    def prepare(self, gpus: int = 1) -> None:
        """Directories, munge key, slurm.conf (no Gres yet) and fake device files for ``gpus`` GPUs."""
        for sub in ("etc", "munge", "run", "log", "dev/nvidia-caps", "spool/ctld", "spool/d"):
            (self.d / sub).mkdir(parents=True, exist_ok=True)
        os.chmod(self.d, 0o711)
        key = self.d / "munge" / "munge.key"
        if not key.exists():
            key.write_bytes(os.urandom(1024))
            key.chmod(0o400)
        self.conf.write_text(SLURM_CONF.format(d=self.d, port=self.port, port1=self.port + 1, node=NODE))
        self.gres_conf.write_text("")
        # char devices (a regular file gives jobs no CUDA_VISIBLE_DEVICES): GPUs and every MIG cap minor
        for i in range(gpus):
            _mknod(self.d / "dev" / f"nvidia{i}", 195, i)
        for minor in range(1, 3 + 135 * gpus):
            _mknod(self.d / "dev" / "nvidia-caps" / f"nvidia-cap{minor}", 237, minor)

    def _bg(self, name: str, *argv: str) -> None:
        out = open(self.d / "log" / f"{name}.out", "ab")
        p = subprocess.Popen(list(argv), stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                             env=self.env, start_new_session=True)
        (self.d / "run" / f"{name}.bgpid").write_text(str(p.pid))

    def start_munge(self) -> None:
        m = self.d / "munge"
        self._bg("munged", "munged", "-F", "-f", f"--key-file={m}/munge.key", f"--socket={m}/munge.sock",
                 f"--pid-file={self.d}/run/munged.pid", f"--seed-file={m}/seed")
        deadline = time.monotonic() + 10
        while not (m / "munge.sock").exists():
            if time.monotonic() > deadline:
                raise RuntimeError("munged did not start: " + self.tail("munged.out"))
            time.sleep(0.05)

    def start_daemon(self, name: str) -> None:
        if name == "slurmctld":
            self._bg("slurmctld", "slurmctld", "-D", "-f", str(self.conf))
        else:
            self._bg("slurmd", "slurmd", "-D", "-N", NODE, "-f", str(self.conf))

    def stop_daemon(self, name: str) -> None:
        f = self.d / "run" / f"{name}.bgpid"
        if not f.exists():
            return
        pid = int(f.read_text())
        f.unlink()
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                if os.waitpid(pid, os.WNOHANG)[0]:
                    return
            except ChildProcessError:
                if not Path(f"/proc/{pid}").exists():
                    return
            time.sleep(0.05)
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def restart(self, name: str) -> None:
        self.stop_daemon(name)
        self.start_daemon(name)

    def start(self) -> None:
        self.start_munge()
        self.start_daemon("slurmctld")
        self.start_daemon("slurmd")

    def stop(self) -> None:
        if (self.d / "run" / "slurmctld.bgpid").exists():
            subprocess.run(["scancel", "--user=root"], env=self.env, capture_output=True, timeout=10)
        for n in ("slurmd", "slurmctld", "munged"):
            self.stop_daemon(n)
        self.kill_strays()

    def kill_strays(self) -> None:
        """SIGKILL every process still running with this cluster's directory in its command line: a daemon
        that a restart helper started but whose PID file was never written (the helper killed in between)."""
        import psutil

        mine = str(self.d)
        for proc in psutil.process_iter(["pid", "cmdline"]):
            cmd = proc.info.get("cmdline") or []
            if proc.pid != os.getpid() and any(mine in part for part in cmd) and \
                    os.path.basename(cmd[0]) in ("slurmctld", "slurmd", "slurmstepd", "munged"):
                try:
                    proc.kill()
                except psutil.Error:
                    pass

    def scontrol_state(self) -> str:
        p = subprocess.run(["scontrol", "-o", "show", "node", NODE], env=self.env, capture_output=True, text=True,
                           timeout=10)
        return p.stdout

    def wait_state(self, state: str, timeout: float = 30) -> str:
        deadline = time.monotonic() + timeout
        out = ""
        while time.monotonic() < deadline:
            out = self.scontrol_state()
            if f" State={state} " in out:
                return out
            time.sleep(0.1)
        raise AssertionError(f"node not {state}: {out}\n{self.tail('slurmctld.log')}\n{self.tail('slurmd.log')}")

    def tail(self, name: str, n: int = 15) -> str:
        try:
            return "\n".join((self.d / "log" / name).read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""


def _mknod(path: Path, major: int, minor: int) -> None:
    if path.exists() or path.is_symlink():
        return
    try:
        os.mknod(path, 0o666 | stat.S_IFCHR, os.makedev(major, minor))
    except PermissionError:
        path.symlink_to("/dev/null")


if __name__ == "__main__":
    if len(sys.argv) != 4 or sys.argv[1] != "restart":
        sys.exit("usage: slurm_cluster.py restart DIR slurmctld|slurmd")
    c = Cluster(Path(sys.argv[2]))
    c.restart(sys.argv[3])
