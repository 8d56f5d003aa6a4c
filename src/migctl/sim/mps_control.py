"""A stand-in for ``nvidia-cuda-mps-control`` on the simulated node.

Run as ``python -m migctl.sim.mps_control [-d]`` with the same environment as the real tool:

* ``-d`` starts the control daemon in the background (the real tool's ``-d``), for the device(s) in
  ``CUDA_VISIBLE_DEVICES`` (a ``MIG-<uuid>`` or ``GPU-<uuid>``), with its control endpoint in
  ``CUDA_MPS_PIPE_DIRECTORY`` and its log in ``CUDA_MPS_LOG_DIRECTORY/control.log``;
* without ``-d`` it reads control commands from stdin, one per line, sends each to the daemon of
  ``CUDA_MPS_PIPE_DIRECTORY`` and prints the replies (the real tool's interactive/pipe mode).

Commands (CUDA MPS documentation, "nvidia-cuda-mps-control" section; the project's reference
notes, kubernetes-and-ops.md §4): ``get_server_list``, ``start_server -uid UID``,
``set_default_active_thread_percentage N``, ``get_default_active_thread_percentage``,
``set_default_device_pinned_mem_limit DEV LIMIT``, ``get_default_device_pinned_mem_limit DEV``, ``quit``.

An MPS server is a process on the device: the stand-in's server is a child process registered as a
client of the simulated MIG device (or GPU), named ``nvidia-cuda-mps-server``, so NVML lists it and the
device counts as busy, as on real hardware. UNCONFIRMED details, chosen strictly: the endpoint is a Unix
socket named ``control`` (the real daemon's pipe files are undocumented); replies to ``set_*`` echo the
value; an unknown command or a daemon that is not running is an error (exit 1).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

SERVER_NAME = "nvidia-cuda-mps-server"
CONTROL = "control"


def _pipe_dir() -> Path:
    return Path(os.environ.get("CUDA_MPS_PIPE_DIRECTORY", "/tmp/nvidia-mps"))


def _log_dir() -> Path:
    return Path(os.environ.get("CUDA_MPS_LOG_DIRECTORY", "/var/log/nvidia-mps"))


def _limit_mib(text: str) -> int | None:
    t = text.strip().upper()
    mult = {"G": 1024, "M": 1, "K": 1 / 1024}
    try:
        if t and t[-1] in mult:
            return int(float(t[:-1]) * mult[t[-1]])
        return int(int(t) / (1 << 20))
    except ValueError:
        return None


class Daemon:
    def __init__(self) -> None:
        self.device = os.environ.get("CUDA_VISIBLE_DEVICES", "")
        self.threads = 100.0
        self.mem_limits: dict[str, int] = {}
        self.servers: dict[int, subprocess.Popen[bytes]] = {}
        self.log = (_log_dir() / "control.log").open("a")

    def say(self, msg: str) -> None:
        self.log.write(f"[{time.strftime('%Y-%m-%d %H:%M:%S')}] {msg}\n")
        self.log.flush()

    def _where(self) -> tuple[object, int, int | None, int | None] | None:
        """The simulated node and (gpu, gi, ci) of the daemon's device."""
        from migctl.device import open_node

        node = open_node()
        uuid = self.device.split(",")[0].strip()
        d = node.find_mig_device(uuid)
        if d is not None:
            return node, d.gpu.index, d.gi_id, d.ci_id
        for g in node.gpus():
            if g.uuid == uuid:
                return node, g.index, None, None
        return None

    def start_server(self, uid: str) -> str:
        if self.servers:
            return "MPS server already running"
        where = self._where()
        if where is None:
            return f"cannot find device {self.device!r}"
        node, gpu, gi, ci = where
        proc = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        rc = node.sim.add_client(gpu, proc.pid, gi, ci, name=SERVER_NAME)  # type: ignore[attr-defined]
        if rc:
            proc.kill()
            proc.wait()
            return f"cannot start MPS server (NVML error {rc})"
        self.servers[proc.pid] = proc
        self.say(f"Starting new server {proc.pid} for user {uid}")
        return ""

    def stop_servers(self) -> None:
        where = self._where()
        for pid, proc in list(self.servers.items()):
            if proc.stdin:
                proc.stdin.close()
            proc.wait()
            if where is not None:
                where[0].sim.remove_client(where[1], pid)  # type: ignore[attr-defined]
            self.say(f"Server {pid} exited")
        self.servers.clear()

    def handle(self, line: str) -> tuple[str, bool]:
        """Reply to one command; True when the daemon must exit."""
        parts = line.split()
        if not parts:
            return "", False
        cmd, args = parts[0], parts[1:]
        self.say(f"Command: {line}")
        if cmd == "get_server_list":
            return "\n".join(str(p) for p in self.servers), False
        if cmd == "start_server" and len(args) == 2 and args[0] == "-uid" and args[1].isdigit():
            return self.start_server(args[1]), False
        if cmd == "set_default_active_thread_percentage" and len(args) == 1:
            try:
                v = float(args[0])
            except ValueError:
                v = -1.0
            if not 0 < v <= 100:
                return f"Invalid thread percentage {args[0]!r} (valid: 1..100)", False
            self.threads = v
            return f"{v:.1f}", False
        if cmd == "get_default_active_thread_percentage" and not args:
            return f"{self.threads:.1f}", False
        if cmd == "set_default_device_pinned_mem_limit" and len(args) == 2:
            mib = _limit_mib(args[1])
            if mib is None or mib <= 0:
                return f"Invalid memory limit {args[1]!r} (e.g. 2G, 512M)", False
            self.mem_limits[args[0]] = mib
            return "", False
        if cmd == "get_default_device_pinned_mem_limit" and len(args) == 1:
            v = self.mem_limits.get(args[0])
            return (f"{v}M" if v is not None else "0"), False
        if cmd == "quit":
            self.stop_servers()
            return "", True
        return f"Unknown command: {line}", False

    def serve(self) -> None:
        path = _pipe_dir() / CONTROL
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(str(path))
        os.chmod(path, 0o600)
        sock.listen(8)
        self.say(f"Starting control daemon for {self.device or 'all devices'}")
        done = False
        while not done:
            conn, _ = sock.accept()
            with conn:
                data = b""
                while not data.endswith(b"\n"):
                    chunk = conn.recv(4096)
                    if not chunk:
                        break
                    data += chunk
                reply, done = self.handle(data.decode(errors="replace").strip())
                conn.sendall(reply.encode() + b"\n")
        sock.close()
        path.unlink(missing_ok=True)
        self.say("Control daemon exited")


def _daemonize() -> int:
    """Start the daemon in the background; return when its control endpoint exists."""
    pipe, logs = _pipe_dir(), _log_dir()
    for d in (pipe, logs):
        d.mkdir(mode=0o700, parents=True, exist_ok=True)
    ctl = pipe / CONTROL
    if ctl.exists():
        if _send("get_server_list") is not None:
            print("An instance of this daemon is already running", file=sys.stderr)
            return 1
        ctl.unlink()
    pid = os.fork()
    if pid == 0:  # child: new session, detach from stdio, serve
        os.setsid()
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        devnull = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(devnull, fd)
        try:
            Daemon().serve()
        finally:
            os._exit(0)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if ctl.exists():
            return 0
        time.sleep(0.02)
    print("MPS control daemon did not start", file=sys.stderr)
    return 1


def _send(line: str) -> str | None:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(str(_pipe_dir() / CONTROL))
        s.sendall(line.encode() + b"\n")
        data = b""
        while True:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
        return data.decode(errors="replace").rstrip("\n")
    except OSError:
        return None
    finally:
        s.close()


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args == ["-d"]:
        return _daemonize()
    if args:
        print(f"usage: nvidia-cuda-mps-control [-d]; unknown option {args[0]!r}", file=sys.stderr)
        return 1
    rc = 0
    for line in sys.stdin:
        if not line.strip():
            continue
        reply = _send(line.strip())
        if reply is None:
            print("Cannot find MPS control daemon process", file=sys.stderr)
            return 1
        if reply.startswith(("Unknown command", "Invalid", "cannot")):
            print(reply, file=sys.stderr)
            rc = 1
        elif reply:
            print(reply)
        if line.strip() == "quit":
            break
    return rc


if __name__ == "__main__":
    raise SystemExit(main())
