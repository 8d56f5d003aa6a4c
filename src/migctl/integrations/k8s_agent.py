"""``migctl k8s agent``: one per GPU node (a DaemonSet). It watches its Node's ``nvidia.com/mig.config``
label and a ConfigMap of mig-parted configs and reconciles them with migctl's transactional engine, using
the MIG manager's state labels (``nvidia.com/mig.config.state`` = pending / rebooting / success / failed).

What it does differently from the MIG manager (docs/kubernetes.md):
* operands (``nvidia.com/gpu.deploy.*``) are paused only when the plan resets a GPU or destroys an instance
  (all of them), or only creates instances (the device plugin and GFD, which must restart to see them);
  an apply with nothing to change, a bad label and a refused plan pause nothing;
* operands are restored on every exit path (success, failure, refusal; after a crash, by the next agent);
* pods holding a MIG device the target must destroy are named in an Event and the agent waits (or evicts
  them with ``--evict``; PodDisruptionBudgets are enforced by the API server's eviction endpoint);
* after a crash the engine's journal rolls the node back and the agent re-applies; after a reboot the agent
  re-applies the selected config (MIG instances do not survive a reboot);
* it publishes GPU-feature-discovery-style labels and, with ``--cdi-dir``, a CDI spec of the MIG devices.

Kubernetes access is the official ``kubernetes`` client: gets, watches resumed from the last
``resourceVersion`` (relist on 410 Gone, reconnect with backoff on dropped connections), merge patches,
retries with exponential backoff on 409/429/5xx and connection errors.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from migctl.integrations import k8s_labels as L

log = logging.getLogger("migctl.k8s.agent")

MERGE = "application/merge-patch+json"
RETRY_STATUS = {409, 429, 500, 502, 503, 504}


@dataclass
class AgentOptions:
    node: str
    namespace: str = "gpu-operator"
    configmap: str = "migctl-mig-parted-config"
    key: str = "config.yaml"
    evict: bool = False
    cdi_dir: str | None = None
    operand_timeout: float = 300.0
    busy_poll: float = 2.0
    resync: float = 30.0
    watch_timeout: int = 60
    lock_timeout: float = 60.0
    event_namespace: str = "default"
    reboot_command: list[str] | None = None  # e.g. ["chroot", "/host", "reboot"] (the MIG manager's WITH_REBOOT)


class StateUnwritable(Exception):
    """The agent's state file cannot be written, and the step about to be taken needs it."""


@dataclass
class _Snapshot:
    labels: dict[str, str] = field(default_factory=dict)
    uid: str = ""
    config: str | None = None
    config_seen: bool = False
    node_seen: bool = False
    node_rv: int = -1  # labels are only replaced by a newer version of the Node (watch vs patch replies)


def _rv(text: Any) -> int:
    try:
        return int(text)
    except (TypeError, ValueError):
        return -1


class Agent:
    """The reconcile loop of one node. ``api`` is a ``kubernetes.client.CoreV1Api``."""

    def __init__(self, api: Any, opts: AgentOptions, node_factory: Callable[[], Any] | None = None) -> None:
        self.api = api
        self.opts = opts
        self.stop = threading.Event()
        self.wake = threading.Event()
        self.snap = _Snapshot()
        self._lock = threading.Lock()
        self._node_factory = node_factory
        self._node: Any = None
        self._waiting_for: str = ""  # the busy-pods message last announced (one Event per distinct set)
        self._evicted: set[str] = set()
        self.state_path = _state_dir() / f"k8s-agent-{_safe(opts.node)}.json"
        self.saved = self._load_state()

    # ------------------------------------------------------------------ local state (survives a crash)
    def _load_state(self) -> dict[str, Any]:
        try:
            data = json.loads(self.state_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as e:
            data = None
            why = str(e)
        else:
            why = "not a JSON object"
        if isinstance(data, dict):
            return _sound_state(self.state_path, data)
        # (written atomically, so only something outside the agent damages it; what it recorded, such as
        # operands it paused, is lost: say so, since labels it paused would otherwise stay paused unseen)
        log.warning("agent state %s is unreadable (%s); starting without it: operand labels left at %r by a "
                    "previous agent are not restored", self.state_path, why, L.PAUSED)
        return {}

    def _save_state(self, needed: bool = False) -> None:
        """Write what the agent must remember across a crash. ``needed``: the next step depends on the record
        (pausing operands: what to restore; rebooting: not to reboot again), so a file that cannot be written
        raises :class:`StateUnwritable` and the step is not taken. Otherwise it is bookkeeping (what was applied
        or failed, operands already restored): a warning, once per distinct error, and the agent goes on."""
        from migctl.paths import atomic_write

        try:
            self.state_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            atomic_write(self.state_path, json.dumps(self.saved), ".agent-")
        except OSError as e:
            why = f"cannot write the agent's state file {self.state_path}: {e.strerror or e}"
            if needed:
                raise StateUnwritable(why) from None
            if why != self._unwritable:
                log.warning("%s; going on without it", why)
                self._unwritable = why
            return
        self._unwritable = ""

    _unwritable = ""  # the last state-file error said (said once)

    # ------------------------------------------------------------------ Kubernetes calls
    def _call(self, fn: Callable[..., Any], *args: Any, attempts: int = 8, **kwargs: Any) -> Any:
        """``fn(*args, **kwargs)`` with exponential backoff on 409/429/5xx and connection errors."""
        from kubernetes.client.exceptions import ApiException

        delay = 0.1
        for i in range(attempts):
            try:
                return fn(*args, **kwargs)
            except ApiException as e:
                if e.status not in RETRY_STATUS or i == attempts - 1:
                    raise
                log.info("API %s returned %s; retrying in %.1fs", getattr(fn, "__name__", fn), e.status, delay)
            except (OSError, _urllib3_errors()) as e:
                if i == attempts - 1:
                    raise
                log.info("API %s failed (%s); retrying in %.1fs", getattr(fn, "__name__", fn), e, delay)
            if self.stop.wait(delay):
                raise InterruptedError("agent stopping")
            delay = min(delay * 2, 5.0)
        raise AssertionError("unreachable")

    def patch_labels(self, labels: dict[str, str | None]) -> None:
        if not labels:
            return
        obj = self._call(self.api.patch_node, self.opts.node, {"metadata": {"labels": labels}}, _content_type=MERGE)
        self._set_labels(obj.metadata.labels or {}, obj.metadata.resource_version)

    def _set_labels(self, labels: dict[str, str], rv: Any, uid: str | None = None) -> bool:
        """Take a Node's labels if that version is newer than the one we have; True when the config label
        changed."""
        with self._lock:
            r = _rv(rv)
            if r != -1 and r <= self.snap.node_rv:
                return False
            before = self.snap.labels.get(L.CONFIG_LABEL)
            self.snap.labels = dict(labels)
            self.snap.node_rv = r
            if uid:
                self.snap.uid = uid
            self.snap.node_seen = True
            return before != self.snap.labels.get(L.CONFIG_LABEL)

    def set_state(self, state: str) -> None:
        if self.snap.labels.get(L.STATE_LABEL) != state:
            self.patch_labels({L.STATE_LABEL: state})

    def event(self, reason: str, message: str, warning: bool = False) -> None:
        """One Event on this Node; never fatal."""
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        body = {
            "metadata": {"generateName": f"{self.opts.node}.", "namespace": self.opts.event_namespace},
            "involvedObject": {"kind": "Node", "apiVersion": "v1", "name": self.opts.node, "uid": self.snap.uid},
            "reason": reason, "message": message[:1000], "type": "Warning" if warning else "Normal",
            "source": {"component": "migctl-mig-agent", "host": self.opts.node},
            "firstTimestamp": now, "lastTimestamp": now, "count": 1,
        }
        try:
            self._call(self.api.create_namespaced_event, self.opts.event_namespace, body, attempts=3)
        except Exception as e:  # noqa: BLE001 - an Event that cannot be written must not stop the agent
            log.warning("could not create Event %s: %s", reason, e)
        log.info("%s: %s", reason, message)

    # ------------------------------------------------------------------ watches
    def _read_node(self) -> str:
        n = self._call(self.api.read_node, self.opts.node)
        if self._set_labels(n.metadata.labels or {}, n.metadata.resource_version, n.metadata.uid or ""):
            self.wake.set()
        return str(n.metadata.resource_version)

    def _read_config(self) -> str | None:
        from kubernetes.client.exceptions import ApiException

        try:
            cm = self._call(self.api.read_namespaced_config_map, self.opts.configmap, self.opts.namespace)
        except ApiException as e:
            if e.status != 404:
                raise
            with self._lock:
                self.snap.config, self.snap.config_seen = None, True
            return None
        with self._lock:
            self.snap.config = (cm.data or {}).get(self.opts.key)
            self.snap.config_seen = True
        return str(cm.metadata.resource_version)

    def _on_node(self, raw: dict[str, Any] | None) -> None:
        if raw is None:
            return
        meta = raw["metadata"]
        if self._set_labels(meta.get("labels") or {}, meta.get("resourceVersion"), meta.get("uid")):
            self.wake.set()

    def _on_config(self, raw: dict[str, Any] | None) -> None:
        text = None if raw is None else (raw.get("data") or {}).get(self.opts.key)
        with self._lock:
            changed = text != self.snap.config
            self.snap.config = text
        if changed:
            self.wake.set()

    def _watch(self, what: str) -> None:
        """Follow one object: resume from the last resourceVersion; relist after 410 Gone; reconnect with
        backoff when the connection drops or the server fails."""
        from kubernetes import watch
        from kubernetes.client.exceptions import ApiException

        if what == "node":
            fn, args, reread, handle = self.api.list_node, (), self._read_node, self._on_node
            name = self.opts.node
        else:
            fn, args, reread = self.api.list_namespaced_config_map, (self.opts.namespace,), self._read_config
            handle, name = self._on_config, self.opts.configmap
        rv: str | None = None
        delay = 0.1
        while not self.stop.is_set():
            try:
                if rv is None:
                    before = self.snap.config
                    rv = reread()
                    if self.snap.config != before:
                        self.wake.set()
                w = watch.Watch()
                for ev in w.stream(fn, *args, field_selector=f"metadata.name={name}", resource_version=rv,
                                   timeout_seconds=self.opts.watch_timeout):
                    raw = ev["raw_object"]
                    rv = str(raw.get("metadata", {}).get("resourceVersion", rv))
                    log.debug("watch %s %s: %s at %s", what, name, ev["type"], rv)
                    handle(None if ev["type"] == "DELETED" else raw)
                    if self.stop.is_set():
                        w.stop()
                        break
                delay = 0.1
            except ApiException as e:
                if e.status == 410:  # our resourceVersion was compacted away: list again
                    log.info("watch of %s %s: 410 Gone; relisting", what, name)
                    rv = None
                    continue
                log.info("watch of %s %s failed (%s); retrying in %.1fs", what, name, e.status, delay)
                self.stop.wait(delay)
                delay = min(delay * 2, 5.0)
            except InterruptedError:
                return
            except Exception as e:  # noqa: BLE001 - dropped connections surface as many urllib3/http types
                log.info("watch of %s %s dropped (%r); reconnecting in %.1fs", what, name, e, delay)
                self.stop.wait(delay)
                delay = min(delay * 2, 5.0)

    # ------------------------------------------------------------------ the loop
    def node(self) -> Any:
        if self._node is None:
            if self._node_factory is not None:
                self._node = self._node_factory()
            else:
                from migctl.device import open_node

                self._node = open_node()
        return self._node

    DRIVER_WAIT_MAX_S = 30.0  # while the NVIDIA driver is not ready: tried again after 1, 2, 4 ... up to this

    def _wait_for_driver(self) -> bool:
        """Open the node, waiting while the NVIDIA driver is not ready (:class:`migctl.device.DriverNotReady`:
        a driver container still installing, a kernel module not loaded yet), as the GPU Operator's operands wait
        for its driver; said once per distinct error. False when stopped first. Other errors are raised."""
        from migctl.device import DriverNotReady

        delay, said = 1.0, ""
        while not self.stop.is_set():
            try:
                self.node()
                if said:
                    log.warning("the NVIDIA driver is ready")
                return True
            except DriverNotReady as e:
                if str(e) != said:
                    log.warning("waiting for the NVIDIA driver (tried again every %g s at most): %s",
                                self.DRIVER_WAIT_MAX_S, e)
                    said = str(e)
            self.stop.wait(delay)
            delay = min(delay * 2, self.DRIVER_WAIT_MAX_S)
        return False

    def run(self) -> None:
        """Reconcile until ``stop`` is set (first waiting for the NVIDIA driver, if it is not ready yet)."""
        if not self._wait_for_driver():
            return
        self._startup()
        threads = [threading.Thread(target=self._watch, args=(w,), daemon=True, name=f"watch-{w}")
                   for w in ("node", "config")]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 30
        while not (self.snap.node_seen and self.snap.config_seen) and not self.stop.is_set():
            if time.monotonic() > deadline:
                from migctl.errors import UserError

                self.stop.set()
                raise UserError(f"could not read Node {self.opts.node!r} from the API server within 30 s "
                                "(does the node exist, and may this service account get it?)", 1)
            self.stop.wait(0.05)
        try:
            while not self.stop.is_set():
                self.wake.clear()
                again = self.reconcile()
                self.wake.wait(self.opts.busy_poll if again else self.opts.resync)
        finally:
            self.stop.set()
            self._restore_operands()

    def _startup(self) -> None:
        """After a crash: roll back an interrupted apply (journal), and remember operands we had paused."""
        from migctl.reconcile import Journal, node_lock, recover

        node = self.node()
        if Journal(node).exists():
            with node_lock(node, self.opts.lock_timeout):
                msg = recover(node)
            if msg:
                self.saved["recovered"] = msg
                self._recovered = msg
        if self.saved.get("paused"):
            log.info("operands %s were paused by a previous agent; they will be restored", sorted(self.saved["paused"]))

    def reconcile(self) -> bool:
        """One pass. Returns True when it should run again soon (waiting for busy pods)."""
        from kubernetes.client.exceptions import ApiException

        with self._lock:
            label = self.snap.labels.get(L.CONFIG_LABEL)
            text = self.snap.config
        try:
            return self._reconcile(label, text)
        except InterruptedError:
            return False
        except ApiException as e:
            log.warning("API error during reconcile: %s %s", e.status, e.reason)
            return True
        except StateUnwritable as e:
            # (a full or read-only disk: nothing paused, nothing applied; failed, and tried again each pass)
            message = f"{e}; nothing was paused or applied, trying again every {self.opts.busy_poll:g}s"
            if self.snap.labels.get(L.STATE_LABEL) != "failed" or self.saved.get("failed") != message:
                self.set_state("failed")
                self.event("MigAgentStateUnwritable", message, warning=True)
                self.saved["failed"] = message
            return True
        finally:
            if not self._pausing:
                self._restore_operands()

    _pausing = False
    _recovered: str | None = None
    _cfg_cache: tuple[str, Any] | None = None
    _annotation: str | None = None
    _digest: str = ""

    def _reconcile(self, label: str | None, text: str | None) -> bool:
        from migctl.config import ConfigError, load_config
        from migctl.parted.compat import plan as build_lenient

        if label is None:
            return False
        if self._recovered:
            self.event("MigConfigRecovered", self._recovered)
            self._recovered = None
        where = f"ConfigMap {self.opts.namespace}/{self.opts.configmap}"
        if text is None:
            return self._fail(f"{where} has no key {self.opts.key!r}; cannot apply {L.CONFIG_LABEL}={label}")
        digest = hashlib.sha256(f"{label}\0{text}".encode()).hexdigest()[:16]
        try:
            key = hashlib.sha256(text.encode()).hexdigest()
            if self._cfg_cache is None or self._cfg_cache[0] != key:  # parsed once per ConfigMap version
                self._cfg_cache = (key, load_config(text, file=f"{where} {self.opts.key}"))
            cfg = self._cfg_cache[1]
        except ConfigError as e:
            return self._fail(f"invalid mig-parted config: {e}")
        if label not in cfg.labels:
            return self._fail(f"{L.CONFIG_LABEL}={label} names no config in {where} "
                              f"(valid: {', '.join(cfg.labels) or 'none'})")
        if self.saved.get("gave_up") == digest:
            return False  # failed after a reboot: stay `failed` until the label or the ConfigMap changes
        self.saved.pop("gave_up", None)
        self._digest = digest
        node = self.node()
        try:
            live, plan = build_lenient(node, cfg, label)
        except ConfigError as e:
            return self._fail(f"config {label!r} cannot be applied on this node: {e}")
        if not plan.ops and not plan.blocked:
            self._publish(live)
            if self.opts.cdi_dir and not self._write_cdi(label):
                return False  # (e.g. an apply whose spec could not be written: written once the directory can be)
            if self.snap.labels.get(L.STATE_LABEL) != "success":
                self.set_state("success")
                self.event("MigConfigApplied", f"config {label!r} is applied (nothing to change)")
            self.saved["applied"] = digest
            self.saved.pop("rebooting_for", None)
            self._save_state()
            return False
        # a change may pause operands or reboot, which need the state file first: one that cannot be written
        # fails the change here, before `pending` (StateUnwritable: failed, tried again each pass)
        self._save_state(needed=True)
        if self.snap.labels.get(L.STATE_LABEL) != "pending":
            self.set_state("pending")
            c = plan.counts()
            self.event("MigConfigPending",
                       f"applying config {label!r}: {c['operations']} operation(s) on {c['gpus_changed']} GPU(s), "
                       f"{c['instances_kept']} instance(s) kept, {c['instances_destroyed']} destroyed, "
                       f"{c['instances_created']} created")
        if plan.blocked:
            return self._blocked(label, plan)
        self._waiting_for = ""
        self.saved.pop("rebooting_for", None)
        return self._apply(cfg, label, plan, digest)

    def _fail(self, message: str) -> bool:
        if self.snap.labels.get(L.STATE_LABEL) != "failed" or self.saved.get("failed") != message:
            self.set_state("failed")
            self.event("MigConfigFailed", message, warning=True)
            self.saved["failed"] = message
            self._save_state()
        return False

    # ------------------------------------------------------------------ busy instances
    def _pods_by_pid(self, pids: list[int]) -> dict[int, str]:
        uids = {pid: L.pod_uid_of(pid) for pid in pids}
        if not any(uids.values()):
            return {}
        pods = self._call(self.api.list_pod_for_all_namespaces, field_selector=f"spec.nodeName={self.opts.node}")
        by_uid = {p.metadata.uid: f"{p.metadata.namespace}/{p.metadata.name}" for p in pods.items}
        return {pid: by_uid[u] for pid, u in uids.items() if u in by_uid}

    def _blocked(self, label: str, plan: Any) -> bool:
        pids = sorted({p for g in plan.blocked for p in g.busy_pids})
        pods = self._pods_by_pid(pids)
        if self.opts.reboot_command and not pods and all(g.mode_change for g in plan.blocked):
            return self._reboot(label, plan)
        devices = sorted({u for g in plan.blocked for gi in g.busy for u in gi.uuids()})
        names = sorted(set(pods.values()))
        others = [p for p in pids if p not in pods]
        holders = ", ".join(f"pod {n}" for n in names) + (", " if names and others else "") + \
            ", ".join(f"PID {p}" for p in others)
        action = "evicting them" if self.opts.evict and names else "waiting for them to exit"
        message = (f"config {label!r} must destroy MIG devices in use by {holders} "
                   f"({', '.join(devices) or 'whole GPU'}); {action}. " + "; ".join(f"GPU {g.index}: {g.reason}"
                                                                                    for g in plan.blocked))
        if message != self._waiting_for:
            self.event("MigDevicesInUse", message, warning=True)
            self._waiting_for = message
        if self.opts.evict:
            from kubernetes.client.exceptions import ApiException

            for full in names:
                ns, name = full.split("/", 1)
                body = {"apiVersion": "policy/v1", "kind": "Eviction", "metadata": {"name": name, "namespace": ns}}
                try:
                    self._call(self.api.create_namespaced_pod_eviction, name, ns, body, attempts=1)
                    if full not in self._evicted:
                        self.event("MigPodEvicted", f"evicted pod {full} (holds a MIG device config {label!r} "
                                   "must destroy)")
                        self._evicted.add(full)
                except ApiException as e:
                    if e.status == 429:
                        self.event("MigEvictionBlocked", f"eviction of pod {full} refused (PodDisruptionBudget); "
                                   "retrying", warning=True)
                    elif e.status != 404:
                        raise
        return True

    def _reboot(self, label: str, plan: Any) -> bool:
        """A MIG mode change blocked by processes that are no pod's (host daemons): reboot, as the MIG
        manager does with WITH_REBOOT; after the reboot the mode change must go through, or ``failed``."""
        import subprocess

        why = "; ".join(f"GPU {g.index}: {g.reason}" for g in plan.blocked)
        if self.saved.get("rebooting_for") == label:
            self.saved.pop("rebooting_for", None)
            self.saved["gave_up"] = self._digest
            return self._fail(f"MIG mode change for config {label!r} did not take effect after rebooting: {why}")
        self.saved["rebooting_for"] = label
        try:
            self._save_state(needed=True)  # (after the reboot it must know it rebooted once already)
        except StateUnwritable:
            del self.saved["rebooting_for"]
            raise
        self.set_state("rebooting")
        self.event("MigNodeRebooting", f"config {label!r} needs a MIG mode change that processes outside pods "
                   f"block ({why}); rebooting with {' '.join(self.opts.reboot_command or [])}", warning=True)
        try:
            subprocess.run(self.opts.reboot_command or [], check=False, timeout=120)
        except (OSError, subprocess.TimeoutExpired) as e:
            log.warning("reboot command failed: %s", e)
        return False

    # ------------------------------------------------------------------ operands
    def _pause(self, keys: list[str]) -> None:
        paused = dict(self.saved.get("paused") or {})
        patch: dict[str, str | None] = {}
        for k in keys:
            if k in paused:
                continue
            cur = self.snap.labels.get(k)
            if cur == L.PAUSED:  # paused by the GPU Operator's own MIG manager or by hand: not ours to restore
                continue
            paused[k] = cur
            patch[k] = L.pause_value(cur)
        if not patch:
            return
        before = self.saved.get("paused")
        self.saved["paused"] = paused
        try:
            self._save_state(needed=True)  # first: a crash after the patch still knows what to restore
        except StateUnwritable:
            self.saved["paused"] = before
            raise
        self.patch_labels(patch)
        self.event("MigOperandsPaused", "paused " + ", ".join(sorted(patch)) + " for the MIG change")

    def _wait_operands_gone(self, keys: list[str]) -> None:
        selectors = [L.OPERANDS[k] for k in keys if L.OPERANDS.get(k)]
        end = time.monotonic() + self.opts.operand_timeout
        for sel in selectors:
            while not self.stop.is_set():
                pods = self._call(self.api.list_pod_for_all_namespaces, field_selector=f"spec.nodeName={self.opts.node}",
                                  label_selector=sel)
                if not pods.items:
                    break
                if time.monotonic() > end:
                    raise TimeoutError(f"pods {sel} still run on {self.opts.node} after {self.opts.operand_timeout:g}s")
                self.stop.wait(0.5)

    def _restore_operands(self) -> None:
        paused = self.saved.get("paused") or {}
        if not paused:
            return
        patch: dict[str, str | None] = {}
        for k, original in paused.items():
            if self.snap.labels.get(k) == L.pause_value(original):  # unchanged since we paused it
                patch[k] = "false" if original == "false" else "true"
        try:
            self.patch_labels(patch)
        except Exception as e:  # noqa: BLE001 - keep the record: the next pass (or agent) restores them
            log.warning("could not restore operands %s: %s", sorted(patch), e)
            return
        self.saved["paused"] = {}
        self._save_state()
        if patch:
            self.event("MigOperandsRestored", "restored " + ", ".join(sorted(patch)))

    # ------------------------------------------------------------------ apply
    def _apply(self, cfg: Any, label: str, plan: Any, digest: str) -> bool:
        from migctl.parted.compat import resolver
        from migctl.reconcile import ApplyFailed, BusyError, LockBusy, apply_desired
        from migctl.reconcile.live import read_node

        keys = L.operands_to_pause(self.snap.labels, plan.ops)
        self._pausing = True
        try:
            self._pause(keys)
            self._wait_operands_gone(keys)
            try:
                result = apply_desired(resolver(cfg, label), label, str(cfg.file), node=self.node(),
                                       lock_timeout=self.opts.lock_timeout)
            except BusyError:
                return True  # a process appeared since the plan: the next pass names it and waits
            except LockBusy as e:
                self.event("MigConfigWaiting", str(e))
                return True
            except (ApplyFailed, OSError, RuntimeError) as e:
                self._restore_and_clear()
                return self._fail(f"applying config {label!r} failed: {e}")
            except Exception as e:  # noqa: BLE001 - NVML and device errors: report, never wedge
                self._restore_and_clear()
                return self._fail(f"applying config {label!r} failed: {e.__class__.__name__}: {e}")
            live = read_node(self.node())
            self._publish(live)
            if self.opts.cdi_dir and not self._write_cdi(label):
                return False
        except TimeoutError as e:
            self._restore_and_clear()
            return self._fail(str(e))
        finally:
            self._pausing = False
        self._restore_operands()
        self.set_state("success")
        c = result.plan.counts()
        self.event("MigConfigApplied", f"applied config {label!r}: {result.ops_done} operation(s), "
                   f"{c['instances_kept']} instance(s) kept" + (f"; {result.recovered}" if result.recovered else ""))
        self.saved["applied"] = digest
        self.saved.pop("failed", None)
        self._save_state()
        return False

    def _restore_and_clear(self) -> None:
        self._pausing = False
        self._restore_operands()

    def _publish(self, live: list[Any]) -> None:
        """GFD-style labels and the layout annotation `migctl k8s plan` reads (one merge patch, only changes)."""
        from migctl.integrations.k8s_plan import LAYOUT_ANNOTATION, layout_annotation

        meta: dict[str, Any] = {}
        labels = L.gfd_patch(self.snap.labels, live)
        if labels:
            meta["labels"] = labels
        ann = layout_annotation(live)
        if ann != self._annotation:
            meta["annotations"] = {LAYOUT_ANNOTATION: ann}
        if not meta:
            return
        obj = self._call(self.api.patch_node, self.opts.node, {"metadata": meta}, _content_type=MERGE)
        self._annotation = ann
        self._set_labels(obj.metadata.labels or {}, obj.metadata.resource_version)

    def _write_cdi(self, label: str) -> bool:
        """Write the CDI spec of the node's MIG devices (``--cdi-dir``) unless the file already says the same.
        False when it cannot be written (a full disk, a path that is not a directory): the config is then
        ``failed``, after the operands are restored, and the next pass tries again (before, the OSError ended
        the agent)."""
        import tempfile

        import yaml

        assert self.opts.cdi_dir is not None
        d = Path(self.opts.cdi_dir)
        target = d / "nvidia.com-gpu-migctl.yaml"
        spec = L.cdi_spec(self.node())
        text = yaml.safe_dump(spec, sort_keys=False)
        tmp = None
        try:
            with contextlib.suppress(FileNotFoundError):
                if target.read_text(encoding="utf-8") == text:
                    return True
            d.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=str(d), prefix=".migctl-cdi-", suffix=".tmp")
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(text)
            os.replace(tmp, target)
        except (OSError, UnicodeDecodeError) as e:
            if tmp is not None:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
            self._restore_and_clear()
            self._fail(f"config {label!r} is applied, but the CDI spec {target} cannot be written: "
                       f"{getattr(e, 'strerror', None) or e}; trying again every {self.opts.resync:g}s")
            return False
        self.event("MigCdiSpecWritten", f"CDI spec with {len(spec['devices']) // 2} MIG device(s) written to "
                   f"{target}")
        return True


# ------------------------------------------------------------------------------------------ helpers
def _state_dir() -> Path:
    from migctl.paths import state_dir

    return state_dir()


_STATE_TEXT = ("recovered", "gave_up", "rebooting_for", "failed", "applied")  # what the agent records as text


def _sound_state(path: Path, data: dict[str, Any]) -> dict[str, Any]:
    """The agent's state without what is damaged (only something outside the agent damages it: it is written
    atomically): a field that is not what the agent writes is dropped, and said, naming the operand labels
    whose pause record is lost. The agent then works from the labels alone (it was an AttributeError that
    stopped every agent started on that state, the node left ``pending``)."""
    out = dict(data)
    dropped = []
    for k in _STATE_TEXT:
        if k in out and not isinstance(out[k], str):
            dropped.append(k)
            del out[k]
    paused = out.get("paused")
    if paused is not None:
        if not isinstance(paused, dict):
            dropped.append("paused")
            del out["paused"]
        else:
            bad = sorted(repr(k) for k, v in paused.items() if v is not None and not isinstance(v, str))
            if bad:
                dropped.append("paused " + ", ".join(bad))
                out["paused"] = {k: v for k, v in paused.items() if v is None or isinstance(v, str)}
    if dropped:
        lost = (f"; operand labels left at {L.PAUSED!r} by a previous agent and recorded there are not restored"
                if any(d.startswith("paused") for d in dropped) else "")
        log.warning("agent state %s: dropped what is not as the agent writes it (%s)%s", path, "; ".join(dropped), lost)
    return out


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)[:100]


class _suppress:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: Any) -> bool:
        return exc[0] is not None and issubclass(exc[0], OSError)


def _urllib3_errors() -> type[BaseException]:
    import urllib3.exceptions

    return urllib3.exceptions.HTTPError


def api_from_config(kubeconfig: str | None = None) -> Any:
    """A CoreV1Api from in-cluster config, or the kubeconfig file (``--kubeconfig``/``$KUBECONFIG``)."""
    from kubernetes import client, config

    from migctl.errors import UserError

    try:
        if kubeconfig is None and os.environ.get("KUBERNETES_SERVICE_HOST") and not os.environ.get("KUBECONFIG"):
            config.load_incluster_config()
            return client.CoreV1Api()
        return client.CoreV1Api(config.new_client_from_config(kubeconfig or os.environ.get("KUBECONFIG")))
    except (config.ConfigException, OSError, ValueError, TypeError) as e:
        where = kubeconfig or os.environ.get("KUBECONFIG") or "~/.kube/config"
        raise UserError(f"cannot load the Kubernetes client configuration ({where}): {e} "
                        "(valid: in-cluster service account, --kubeconfig FILE or $KUBECONFIG)") from None
