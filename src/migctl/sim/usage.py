"""Real resource use of the simulator's client processes, read with psutil.

On a GPU, a MIG device's used frame buffer and its engine activity come from the CUDA processes running on
it. The simulator's clients are real OS processes (registered by ``migctl run`` or ``sim add-client``), so
their real use stands in for GPU use: resident memory (RSS) for frame-buffer use and CPU time for engine
activity, of the registered process itself (``migctl run`` registers the user's command: its gate execs it
in place; descendants are not counted, scanning them costs a walk over every process on the machine). Callers cap both by the instance (its memory size,
100% activity). A client registered with an explicit ``used_mib`` reports that figure instead of its RSS.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Usage:
    rss_mib: int
    cpu_s: float  # user + system CPU seconds of the process


def _tree(pid: int, start_time: float) -> list[object]:
    import psutil

    try:
        p = psutil.Process(pid)
        if start_time and abs(p.create_time() - start_time) > 0.01:
            return []  # PID reused by another process
        return [p]
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return []


def process_usage(pid: int, start_time: float = 0.0) -> Usage:
    """RSS (MiB) and CPU seconds of ``pid``; zeros when it is gone."""
    import psutil

    rss = 0
    cpu = 0.0
    for p in _tree(pid, start_time):
        try:
            with p.oneshot():  # type: ignore[attr-defined]
                rss += p.memory_info().rss  # type: ignore[attr-defined]
                t = p.cpu_times()  # type: ignore[attr-defined]
                cpu += t.user + t.system
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return Usage(rss_mib=rss >> 20, cpu_s=cpu)


def used_mib(proc: object) -> int:
    """Frame-buffer use of a simulated client: its explicit ``used_mib``, else its real RSS."""
    explicit = int(getattr(proc, "used_mib", 0) or 0)
    if explicit:
        return explicit
    return process_usage(int(proc.pid), float(getattr(proc, "start_time", 0.0) or 0.0)).rss_mib
