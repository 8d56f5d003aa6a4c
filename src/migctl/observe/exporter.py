"""``migctl exporter``: per-MIG metrics for Prometheus (prometheus-client), dcgm-exporter compatible.

Two kinds of series (docs/observe.md lists them all):

* dcgm-exporter's names and labels for what NVML offers, so existing dashboards and alerts keep working:
  ``DCGM_FI_DEV_FB_USED``/``DCGM_FI_DEV_FB_FREE`` (MiB) per GPU and per GPU instance, ``DCGM_FI_DEV_GPU_TEMP``,
  ``DCGM_FI_DEV_POWER_USAGE`` per GPU, ``DCGM_FI_PROF_GR_ENGINE_ACTIVE`` per GPU instance where NVML GPM gives
  it (Hopper and later). Labels ``gpu``, ``UUID`` (the parent GPU), ``pci_bus_id``, ``device`` (``nvidia0``),
  ``modelName``, ``Hostname``, and on MIG rows ``GPU_I_PROFILE``, ``GPU_I_ID``.
* migctl's own, ``migctl_*``: an info series per MIG device (profile, placement, GI/CI, MIG UUID, lease
  holder and job), per-GPU MIG mode, slices used/free/stranded, the largest creatable profile, apply state,
  the queue, leases.

One :class:`~migctl.observe.snapshot.Observer` (one NVML session, GPM samples between scrapes) serves every
scrape; scrapes are serialised. Nothing takes the node lock, so a scrape never waits for an apply.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector, CollectorRegistry

from migctl.inputs import is_digits
from migctl.observe.snapshot import NodeSnapshot, Observer
from migctl.observe.state import WAIT_BUCKETS, StateReader

DCGM_GPU_LABELS = ["gpu", "UUID", "pci_bus_id", "device", "modelName", "Hostname"]
DCGM_MIG_LABELS = [*DCGM_GPU_LABELS, "GPU_I_PROFILE", "GPU_I_ID"]
# --no-dcgm-compat: the same series with snake_case label names (promtool's lint is then silent)
_STRICT = {"modelName": "model_name", "Hostname": "hostname"}


class MigCollector(Collector):
    """Builds every series from one snapshot of the node and of migctl's state."""

    def __init__(self, node: Any, reader: StateReader | None = None, dcgm_compat: bool = True) -> None:
        self.reader = reader or StateReader(node)
        self.observer = Observer(node, leases=self.reader.leases)
        self.dcgm_compat = dcgm_compat
        self.lock = threading.Lock()
        self.last_duration = 0.0
        self.scrapes = 0
        self.errors = 0

    def _labels(self, names: list[str]) -> list[str]:
        return names if self.dcgm_compat else [_STRICT.get(n, n) for n in names]

    def collect(self) -> Iterator[Metric]:
        with self.lock:
            t0 = time.perf_counter()
            self.reader.db_error = None  # (this collection's reads say whether the jobs database reads)
            try:
                snap = self.observer.snapshot()
                queue = self.reader.queue()
                apply = self.reader.apply_state()
                leases = self.reader.leases()
            except Exception:
                self.errors += 1
                raise
            metrics = list(self._node_metrics(snap))
            metrics += list(self._state_metrics(queue, apply, len(leases)))
            ok = GaugeMetricFamily("migctl_jobs_database_readable",
                                   "0 when migctl's jobs database cannot be read (leases, queue and waiting runs then "
                                   "read as empty).")
            ok.add_metric([], 0 if self.reader.db_error else 1)
            metrics.append(ok)
            sh = GaugeMetricFamily("migctl_shared_clients_readable",
                                   "0 when migctl's MPS and time-sliced client lists cannot be read (devices shared "
                                   "through them then read as busy only with processes or leases).")
            sh.add_metric([], 0 if self.observer.sharing_error else 1)
            metrics.append(sh)
            self.scrapes += 1
            self.last_duration = time.perf_counter() - t0
        yield from metrics
        g = GaugeMetricFamily("migctl_exporter_collect_duration_seconds", "Time the last collection took.")
        g.add_metric([], self.last_duration)
        yield g
        c = CounterMetricFamily("migctl_exporter_collections", "Collections served since start.")
        c.add_metric([], self.scrapes)
        yield c

    # ------------------------------------------------------------------ node
    def _node_metrics(self, snap: NodeSnapshot) -> Iterator[Metric]:
        gl = self._labels(DCGM_GPU_LABELS)
        ml = self._labels(DCGM_MIG_LABELS)
        fb_used = GaugeMetricFamily("DCGM_FI_DEV_FB_USED", "Framebuffer memory used (in MiB).", labels=ml)
        fb_free = GaugeMetricFamily("DCGM_FI_DEV_FB_FREE", "Framebuffer memory free (in MiB).", labels=ml)
        fb_res = GaugeMetricFamily("DCGM_FI_DEV_FB_RESERVED", "Framebuffer memory reserved (in MiB).", labels=ml)
        temp = GaugeMetricFamily("DCGM_FI_DEV_GPU_TEMP", "GPU temperature (in C).", labels=gl)
        power = GaugeMetricFamily("DCGM_FI_DEV_POWER_USAGE", "Power draw (in W).", labels=gl)
        gr = GaugeMetricFamily("DCGM_FI_PROF_GR_ENGINE_ACTIVE", "Ratio of time the graphics engine is active.",
                               labels=ml)
        own = ["gpu", "UUID"]
        info = InfoMetricFamily("migctl_mig_device", "One series per MIG device: profile, placement, GI/CI, lease.",
                                labels=[*own, "GPU_I_ID", "GPU_I_PROFILE"])
        busy = GaugeMetricFamily("migctl_mig_device_busy", "1 when the MIG device has processes, a live lease, or an MPS server or time-sliced "
                                 "client migctl started (an MPS server whose clients have all ended does not count: "
                                 "the next run, worker pass or apply stops it).",
                                 labels=[*own, "GPU_I_ID", "ci_id", "mig_uuid"])
        nproc = GaugeMetricFamily("migctl_mig_device_processes", "Compute processes on the MIG device.",
                                  labels=[*own, "GPU_I_ID", "ci_id", "mig_uuid"])
        mode = GaugeMetricFamily("migctl_gpu_mig_mode", "MIG mode (1 enabled, 0 disabled); state current or pending.",
                                 labels=[*own, "state"])
        mem_sl = GaugeMetricFamily("migctl_gpu_memory_slices", "Memory slices by state (used, free, stranded).",
                                   labels=[*own, "state"])
        cmp_sl = GaugeMetricFamily("migctl_gpu_compute_slices", "Compute slices by state (used, free, stranded).",
                                   labels=[*own, "state"])
        largest = GaugeMetricFamily("migctl_gpu_largest_creatable_compute_slices",
                                    "Compute slices of the largest GPU instance profile that can still be created.",
                                    labels=own)
        largest_info = InfoMetricFamily("migctl_gpu_largest_creatable", "The largest profile that can still be created.",
                                        labels=[*own, "profile"])
        gis = GaugeMetricFamily("migctl_gpu_instances", "GPU instances on the GPU.", labels=own)
        whole = GaugeMetricFamily("migctl_gpu_busy", "GPUs not in MIG mode: 1 when the GPU has compute processes, or "
                                  "an MPS server or a shared client migctl started (MIG mode: migctl_mig_device_busy; "
                                  "an MPS server whose clients have all ended does not count).",
                                  labels=own)
        for g in snap.gpus:
            model = g.model.name if g.model else g.name
            base = [str(g.index), g.uuid, g.bus_id, f"nvidia{g.index}", model, snap.hostname]
            if g.mem_used_mib is not None and g.mem_total_mib is not None:
                fb_used.add_metric([*base, "", ""], g.mem_used_mib)
                free = g.mem_free_mib if g.mem_free_mib is not None else g.mem_total_mib - g.mem_used_mib
                fb_free.add_metric([*base, "", ""], free)
                fb_res.add_metric([*base, "", ""], g.mem_reserved_mib)
            if g.temperature_c is not None:
                temp.add_metric(base, g.temperature_c)
            if g.power_w is not None:
                power.add_metric(base, g.power_w)
            o = [str(g.index), g.uuid]
            if g.mig_current is not None:
                mode.add_metric([*o, "current"], 1 if g.mig_current else 0)
                mode.add_metric([*o, "pending"], 1 if g.mig_pending else 0)
            if not g.mig_current:
                whole.add_metric(o, 1 if g.whole_busy else 0)
            if not g.mig_current or g.model is None:
                continue
            gis.add_metric(o, len(g.gis))
            stranded_mem = len(g.stranded_memory_slots())
            free_mem = len(g.free_memory_slots())
            mem_sl.add_metric([*o, "used"], g.memory_slices - free_mem)
            mem_sl.add_metric([*o, "free"], free_mem)
            mem_sl.add_metric([*o, "stranded"], stranded_mem)
            cmp_sl.add_metric([*o, "used"], g.used_compute_slices())
            cmp_sl.add_metric([*o, "free"], g.free_compute_slices())
            cmp_sl.add_metric([*o, "stranded"], g.stranded_compute_slices())
            lp = g.largest_creatable()
            largest.add_metric(o, lp.slices if lp else 0)
            largest_info.add_metric([*o, lp.name if lp else "none"], {})
            for gi in g.gis:
                mig = [*base, gi.profile, str(gi.gi_id)]
                if gi.mem_used_mib is not None and gi.mem_total_mib is not None:
                    fb_used.add_metric(mig, gi.mem_used_mib)
                    fb_free.add_metric(mig, max(0, gi.mem_total_mib - gi.mem_used_mib))
                if gi.activity is not None:
                    gr.add_metric(mig, gi.activity)
                for ci in gi.cis:
                    info.add_metric([*o, str(gi.gi_id), gi.profile], {
                        "ci_id": str(ci.ci_id), "ci_profile": ci.profile, "mig_uuid": ci.uuid,
                        "device_index": "" if ci.device_index is None else str(ci.device_index),
                        "gi_profile_id": str(gi.profile_id), "placement_start": str(gi.start),
                        "placement_size": str(gi.size), "compute_slices": str(ci.slices),
                        "lease_pid": "" if ci.leased_by is None else str(ci.leased_by),
                        "job_id": "" if ci.job_id is None else str(ci.job_id),
                    })
                    ids = [*o, str(gi.gi_id), str(ci.ci_id), ci.uuid]
                    busy.add_metric(ids, 1 if ci.busy else 0)
                    nproc.add_metric(ids, len(ci.pids))
        yield from (fb_used, fb_free, fb_res, temp, power, gr, info, busy, nproc, mode, mem_sl, cmp_sl, largest,
                    largest_info, gis, whole)

    # ------------------------------------------------------------------ migctl state
    def _state_metrics(self, queue: Any, apply: Any, leases: int) -> Iterator[Metric]:
        jobs = GaugeMetricFamily("migctl_queue_jobs", "Jobs of the local queue by state.", labels=["state"])
        for state, n in queue.depth.items():
            jobs.add_metric([state], n)
        yield jobs
        why = GaugeMetricFamily("migctl_queue_jobs_waiting", "Waiting jobs of the local queue by why they wait (the "
                                "reason `migctl jobs` shows: resources, reserved, churn, hysteresis, node-locked, "
                                "raced, runs-first, no-worker; none before the worker has looked at a job).",
                                labels=["reason"])
        for reason, n in queue.waiting_reasons.items():
            why.add_metric([reason], n)
        yield why
        buckets = [(repr(b), c) for b, c in zip(WAIT_BUCKETS, queue.wait_buckets, strict=True)]
        buckets.append(("+Inf", queue.wait_count))
        h = HistogramMetricFamily("migctl_queue_wait_seconds", "Time from submission to start of started jobs.")
        h.add_metric([], buckets, sum_value=queue.wait_sum)
        yield h
        rw = GaugeMetricFamily("migctl_runs_waiting", "migctl runs waiting for a device (not queued jobs).")
        rw.add_metric([], queue.runs_waiting)
        yield rw
        if queue.runs_waiting_since is not None:
            ro = GaugeMetricFamily("migctl_runs_waiting_longest_seconds",
                                   "How long the migctl run waiting longest has waited.")
            ro.add_metric([], max(0.0, time.time() - queue.runs_waiting_since))
            yield ro
        lg = GaugeMetricFamily("migctl_leases", "Live leases of MIG devices.")
        lg.add_metric([], leases)
        yield lg
        ap = CounterMetricFamily("migctl_apply", "Finished applies by outcome (applied, rolled-back, recovered).",
                                 labels=["outcome"])
        for outcome in ("applied", "rolled-back", "recovered"):
            ap.add_metric([outcome], apply.outcomes.get(outcome, 0))
        yield ap
        pend = GaugeMetricFamily("migctl_apply_journal_pending",
                                 "1 when an interrupted apply left a journal that needs `migctl recover`.")
        pend.add_metric([], 1 if apply.journal_pending else 0)
        yield pend
        if apply.last_success is not None:
            ls = GaugeMetricFamily("migctl_apply_last_success_timestamp_seconds", "When the last apply succeeded.")
            ls.add_metric([], float(apply.last_success))
            yield ls


def make_registry(node: Any, dcgm_compat: bool = True, reader: StateReader | None = None) -> tuple[CollectorRegistry,
                                                                                                    MigCollector]:
    reg = CollectorRegistry(auto_describe=False)
    col = MigCollector(node, reader, dcgm_compat)
    reg.register(col)
    return reg, col


def render(registry: CollectorRegistry) -> bytes:
    from prometheus_client import generate_latest

    return generate_latest(registry)


class _Handler(BaseHTTPRequestHandler):
    registry: CollectorRegistry
    server_version = "migctl-exporter"

    def do_GET(self) -> None:  # noqa: N802 (http.server API)
        self._respond(body_too=True)

    def do_HEAD(self) -> None:  # noqa: N802 - the GET's status and headers without the body (as Go's net/http)
        self._respond(body_too=False)

    def _respond(self, body_too: bool) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            from prometheus_client import CONTENT_TYPE_LATEST

            try:
                body, ctype, code = render(self.registry), CONTENT_TYPE_LATEST, 200
            except Exception as e:  # NVML gone, state unreadable: say so, keep serving
                body, ctype, code = f"collection failed: {e}\n".encode(), "text/plain; charset=utf-8", 500
        elif path == "/healthz":
            body, ctype, code = b"ok\n", "text/plain; charset=utf-8", 200
        elif path == "/":
            body = b'<html><body><a href="/metrics">/metrics</a> <a href="/healthz">/healthz</a></body></html>\n'
            ctype, code = "text/html; charset=utf-8", 200
        else:
            body, ctype, code = b"not found: try /metrics or /healthz\n", "text/plain; charset=utf-8", 404
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if body_too:
            self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet access log
        return


IDLE_TIMEOUT_S = 60.0


def serve(registry: CollectorRegistry, host: str, port: int, idle_timeout: float = IDLE_TIMEOUT_S) -> ThreadingHTTPServer:
    """An HTTP server on (host, port) serving /metrics and /healthz (call ``serve_forever``). A connection
    that sends no complete request for ``idle_timeout`` seconds is closed (each holds a thread: without it, a
    client that connected and sent nothing held one for ever)."""
    handler = type("Handler", (_Handler,), {"registry": registry, "timeout": idle_timeout})
    server = ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    return server


def parse_listen(text: str) -> tuple[str, int]:
    """``127.0.0.1:9400``, ``:9400``, ``[::1]:9400`` -> (host, port)."""
    t = text.strip()
    host, sep, port = t.rpartition(":")
    if not sep or not is_digits(port) or not 0 <= int(port) <= 65535:
        raise ValueError(f"--listen {text!r}: expected HOST:PORT, e.g. 127.0.0.1:9400 or :9400 (port 0-65535)")
    host = host.strip("[]") or "0.0.0.0"
    return host, int(port)
