"""Process liveness, shared by the simulator (client processes) and the job leases."""

from __future__ import annotations


def pid_alive(pid: int | None, start_time: float | None = None) -> bool:
    """True while process ``pid`` that started at ``start_time`` runs (reused PIDs and zombies are dead)."""
    if not pid:
        return False
    import psutil

    try:
        p = psutil.Process(pid)
        if p.status() == psutil.STATUS_ZOMBIE:
            return False
        return not start_time or abs(p.create_time() - start_time) < 0.01
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False
