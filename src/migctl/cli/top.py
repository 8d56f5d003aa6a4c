"""``migctl top``: a rich Live view refreshed every second (data: migctl.observe; layout here)."""

from __future__ import annotations

import time
from typing import Any


def frame(observer: Any, reader: Any, width: int = 120) -> Any:
    """One screen: header, slice maps with usage, MIG devices, jobs and queue."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    from migctl.cli.observe import to_text
    from migctl.observe.picture import LEGEND, gpu_lines
    from migctl.observe.slices import users_text

    reader.db_error = None
    snap = observer.snapshot()
    queue = reader.queue()
    leases = reader.leases()
    apply = reader.apply_state()
    head = Text(f"migctl top - {snap.hostname} - {snap.backend} driver {snap.driver_version} - "
                f"{time.strftime('%H:%M:%S')}", style="bold")
    parts: list[Any] = [head]
    depth = "  ".join(f"{k} {v}" for k, v in queue.depth.items() if v)
    why = ", ".join(f"{n} {reason}" for reason, n in queue.waiting_reasons.items() if n)
    depth += f" (waiting: {why})" if why else ""
    pending = [str(g.index) for g in snap.gpus if g.mig_pending is not None and g.mig_pending != g.mig_current]
    status = (f"leases {len(leases)}   queue: {depth or 'empty'}"
              + (f"   runs waiting {queue.runs_waiting}" if queue.runs_waiting else "")
              + (f"   pending MIG mode change on GPU {','.join(pending)}" if pending else "")
              + ("   APPLY JOURNAL PENDING: run `migctl recover`" if apply.journal_pending else "")
              + (f"   JOBS DATABASE UNREADABLE ({reader.db_error})" if reader.db_error else "")
              + (f"   SHARED CLIENTS UNREADABLE ({observer.sharing_error})" if observer.sharing_error else "")
              + (f"   last apply: {apply.last_outcome}" if apply.last_outcome else ""))
    parts.append(Text(status))
    for g in snap.gpus:
        parts.append(to_text(gpu_lines(g)))
    parts.append(Text(LEGEND, style="dim"))
    t = Table(title=None, expand=False, pad_edge=False, box=None, header_style="bold")
    for col in ("GPU", "GI", "CI", "profile", "memory", "activity", "processes", "lease", "job"):
        t.add_column(col)
    for g in snap.gpus:
        if not g.mig_current:  # a GPU used whole (no MIG, or MIG disabled): one row for it
            mem = "" if g.mem_used_mib is None else f"{g.mem_used_mib}/{g.mem_total_mib} MiB"
            t.add_row(str(g.index), "-", "-", "whole GPU", mem, "n/a",
                      ", ".join(users_text(g.pids, g.shared, g.idle_servers)) or "-", "-", "-")
        for gi in g.gis:
            mem = "" if gi.mem_used_mib is None else f"{gi.mem_used_mib}/{gi.mem_total_mib} MiB"
            act = "n/a" if gi.activity is None else f"{100 * gi.activity:.0f}%"
            for ci in gi.cis:
                t.add_row(str(g.index), str(gi.gi_id), str(ci.ci_id), ci.profile or gi.profile, mem, act,
                          ", ".join(users_text(ci.pids, ci.shared, ci.idle_servers)) or "-", str(ci.leased_by or "-"),
                          str(ci.job_id or "-"))
    if t.row_count:
        parts.append(t)
    if queue.running:
        jt = Table(box=None, header_style="bold")
        for col in ("job", "name", "state", "running for", "MIG device"):
            jt.add_column(col)
        now = time.time()
        for j in queue.running:
            age = "" if not j.get("started") else f"{now - float(j['started']):.0f}s"
            jt.add_row(str(j["id"]), str(j.get("name") or ""), str(j["state"]), age, str(j.get("mig_uuid") or ""))
        parts.append(jt)
    return Group(*parts)


def run_top(node: Any, interval: float = 1.0, iterations: int = 0, screen: bool = True) -> None:
    from rich.console import Console
    from rich.live import Live

    from migctl.observe.snapshot import Observer
    from migctl.observe.state import StateReader

    reader = StateReader(node)
    observer = Observer(node, leases=reader.leases)
    import sys

    console = Console(highlight=False, emoji=False, width=None if sys.stdout.isatty() else 160)
    if not screen:
        console.print(frame(observer, reader))
        return
    n = 0
    with Live(frame(observer, reader), console=console, screen=True, auto_refresh=False) as live:
        while True:
            n += 1
            if iterations and n >= iterations:
                break
            time.sleep(interval)
            live.update(frame(observer, reader), refresh=True)
