"""A stand-in Kubernetes API server for the tests: a threaded HTTP server of our own that speaks the
parts of the real HTTP API the agent and `k8s plan` use, so the official `kubernetes` client is exercised
unmodified (nothing in the client is mocked).

Implemented: GET/LIST/WATCH (``?watch=true``, ``resourceVersion``, ``fieldSelector`` on ``metadata.name``
and ``spec.nodeName``, ``labelSelector`` equality terms, ``timeoutSeconds``; chunked JSON event lines),
PATCH with ``application/merge-patch+json`` (RFC 7386) and ``application/strategic-merge-patch+json`` (maps
merged as in a merge patch, lists replaced: enough for labels and ConfigMap data), PUT with optimistic
concurrency (409 Conflict on a stale ``metadata.resourceVersion``), POST (create; 409 AlreadyExists),
DELETE, pod eviction (429 while a test marks the pod as protected by a PodDisruptionBudget), and Events.
Faults for tests: ``drop_watches()`` (connections cut without the chunked terminator), ``compact()`` (old
resourceVersions answer 410 Gone, as after etcd compaction), ``fail_next()`` (inject 409/500/... on matching
requests). Not implemented: authentication, admission, server-side apply, json-patch (415), protobuf.
"""

from __future__ import annotations

import copy
import json
import re
import socket
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

KINDS = {"nodes": ("Node", False), "configmaps": ("ConfigMap", True), "pods": ("Pod", True),
         "events": ("Event", True)}
_PATH = re.compile(r"^/api/v1(?:/namespaces/(?P<ns>[^/]+))?/(?P<plural>nodes|configmaps|pods|events)"
                   r"(?:/(?P<name>[^/]+))?(?:/(?P<sub>eviction))?$")


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(target) if isinstance(target, dict) else {}
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = merge_patch(out.get(k), v)
    return out


def _status(code: int, reason: str, message: str) -> dict[str, Any]:
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message,
            "reason": reason, "code": code}


class ApiServer:
    """The store and the HTTP server; ``url`` once started."""

    def __init__(self, history: int = 100_000) -> None:
        self.lock = threading.Condition()
        self.objects: dict[tuple[str, str, str], dict[str, Any]] = {}
        self.rv = 100
        self.events: list[tuple[int, str, str, dict[str, Any]]] = []  # (rv, type, plural, object)
        self.oldest = 0  # watches from a resourceVersion below this get 410 Gone
        self.max_history = history
        self.requests: list[tuple[str, str, str]] = []  # (method, path, content type)
        self.faults: list[dict[str, Any]] = []
        self.protected: set[tuple[str, str]] = set()  # pods whose eviction a PDB refuses (429)
        self.watch_socks: set[socket.socket] = set()
        self.httpd: ThreadingHTTPServer | None = None
        self.url = ""

    # ------------------------------------------------------------------ store
    def _bump(self) -> str:
        self.rv += 1
        return str(self.rv)

    def _record(self, etype: str, plural: str, obj: dict[str, Any]) -> None:
        self.events.append((self.rv, etype, plural, copy.deepcopy(obj)))
        if len(self.events) > self.max_history:
            drop = len(self.events) - self.max_history
            self.oldest = self.events[drop][0]
            del self.events[:drop]
        self.lock.notify_all()

    def put(self, plural: str, obj: dict[str, Any]) -> dict[str, Any]:
        """Create or replace an object directly (test setup, or a controller's action)."""
        with self.lock:
            meta = obj.setdefault("metadata", {})
            ns = meta.get("namespace", "") if KINDS[plural][1] else ""
            if KINDS[plural][1]:
                meta["namespace"] = ns or "default"
                ns = meta["namespace"]
            key = (plural, ns, meta["name"])
            etype = "MODIFIED" if key in self.objects else "ADDED"
            meta.setdefault("uid", str(uuid.uuid4()))
            meta.setdefault("creationTimestamp", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
            meta["resourceVersion"] = self._bump()
            obj.setdefault("apiVersion", "v1")
            obj.setdefault("kind", KINDS[plural][0])
            self.objects[key] = copy.deepcopy(obj)
            self._record(etype, plural, obj)
            return copy.deepcopy(obj)

    def get(self, plural: str, name: str, ns: str = "") -> dict[str, Any] | None:
        with self.lock:
            o = self.objects.get((plural, ns, name))
            return copy.deepcopy(o) if o else None

    def delete(self, plural: str, name: str, ns: str = "") -> bool:
        with self.lock:
            o = self.objects.pop((plural, ns, name), None)
            if o is None:
                return False
            o["metadata"]["resourceVersion"] = self._bump()
            self._record("DELETED", plural, o)
            return True

    def patch_labels(self, node: str, labels: dict[str, str | None]) -> None:
        """What `kubectl label node` does (a merge patch)."""
        with self.lock:
            o = self.objects[("nodes", "", node)]
            new = merge_patch(o, {"metadata": {"labels": labels}})
            new["metadata"]["resourceVersion"] = self._bump()
            self.objects[("nodes", "", node)] = new
            self._record("MODIFIED", "nodes", new)

    def list(self, plural: str) -> list[dict[str, Any]]:
        with self.lock:
            return [copy.deepcopy(o) for (p, _, _), o in self.objects.items() if p == plural]

    def history(self, plural: str, name: str) -> list[dict[str, Any]]:
        """Every stored version of one object, oldest first."""
        with self.lock:
            return [copy.deepcopy(o) for _, _, p, o in self.events if p == plural and o["metadata"]["name"] == name]

    def label_sequence(self, node: str, key: str) -> list[str | None]:
        """The successive values of one node label (consecutive repeats collapsed)."""
        out: list[str | None] = []
        for o in self.history("nodes", node):
            v = (o["metadata"].get("labels") or {}).get(key)
            if not out or out[-1] != v:
                out.append(v)
        return out

    # ------------------------------------------------------------------ faults
    def drop_watches(self) -> int:
        """Cut every open watch connection (no chunked terminator): a dropped connection for the client."""
        with self.lock:
            socks = list(self.watch_socks)
            self.watch_socks.clear()
        for s in socks:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        return len(socks)

    def compact(self) -> None:
        """Forget history: watches from any earlier resourceVersion get 410 Gone."""
        with self.lock:
            self.oldest = self.rv + 1
            self.events.clear()
            self.lock.notify_all()

    def fail_next(self, method: str, path_re: str, code: int, count: int = 1) -> None:
        with self.lock:
            self.faults.append({"method": method, "re": re.compile(path_re), "code": code, "count": count})

    def _fault(self, method: str, path: str) -> int | None:
        with self.lock:
            for f in self.faults:
                if f["method"] == method and f["re"].search(path) and f["count"] > 0:
                    f["count"] -= 1
                    return int(f["code"])
        return None

    # ------------------------------------------------------------------ serving
    def start(self) -> ApiServer:
        server = self

        class Handler(_Handler):
            api = server

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.httpd.request_queue_size = 256
        host, port = self.httpd.server_address[:2]
        self.url = f"http://{host}:{port}"
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True).start()
        return self

    def stop(self) -> None:
        if self.httpd is not None:
            self.drop_watches()
            self.httpd.shutdown()
            self.httpd.server_close()

    def kubeconfig(self, path: Any) -> Any:
        """A kubeconfig file pointing at this server."""
        import yaml

        path.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": "stand-in",
            "clusters": [{"name": "stand-in", "cluster": {"server": self.url}}],
            "users": [{"name": "agent", "user": {"token": "stand-in-token"}}],
            "contexts": [{"name": "stand-in", "context": {"cluster": "stand-in", "user": "agent"}}],
        }))
        return path


def _selected(obj: dict[str, Any], fields: dict[str, str], labels: dict[str, str]) -> bool:
    for k, v in fields.items():
        cur: Any = obj
        for part in k.split("."):
            cur = cur.get(part) if isinstance(cur, dict) else None
        if str(cur) != v:
            return False
    have = obj.get("metadata", {}).get("labels") or {}
    return all(have.get(k) == v for k, v in labels.items())


def _terms(text: str | None) -> dict[str, str]:
    out: dict[str, str] = {}
    for t in (text or "").split(","):
        if "=" in t:
            k, v = t.split("=", 1)
            out[k.strip().rstrip("=")] = v.strip().lstrip("=")
    return out


class _Handler(BaseHTTPRequestHandler):
    api: ApiServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet
        return

    def _send(self, code: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _body(self) -> Any:
        n = int(self.headers.get("Content-Length") or 0)
        return json.loads(self.rfile.read(n) or b"null")

    def _route(self) -> tuple[str, str, str | None, str | None, dict[str, list[str]]] | None:
        u = urlparse(self.path)
        m = _PATH.match(u.path)
        if not m:
            self._send(404, _status(404, "NotFound", f"the server could not find the requested resource {u.path}"))
            return None
        return m["plural"], m["ns"] or "", m["name"], m["sub"], parse_qs(u.query)

    def _begin(self, method: str) -> tuple[str, str, str | None, str | None, dict[str, list[str]]] | None:
        """Record the request, answer an injected fault or a bad path; else the route."""
        return self._route() if self._pre(method) else None

    def _pre(self, method: str) -> bool:
        self.api.requests.append((method, self.path, self.headers.get("Content-Type", "")))
        code = self.api._fault(method, self.path)
        if code is None:
            return True
        if method in ("PATCH", "PUT", "POST", "DELETE"):
            self._body()
        reasons = {409: "Conflict", 410: "Gone", 429: "TooManyRequests", 500: "InternalError", 503: "ServiceUnavailable"}
        self._send(code, _status(code, reasons.get(code, "Error"), f"injected fault {code}"))
        return False

    # -------------------------------------------------------------- GET: get, list, watch
    def do_GET(self) -> None:  # noqa: N802
        r = self._begin("GET")
        if r is None:
            return
        plural, ns, name, _, q = r
        api = self.api
        if name:
            o = api.get(plural, name, ns)
            if o is None:
                self._send(404, _status(404, "NotFound", f'{plural} "{name}" not found'))
            else:
                self._send(200, o)
            return
        fields, labels = _terms(q.get("fieldSelector", [None])[0]), _terms(q.get("labelSelector", [None])[0])
        if q.get("watch", ["false"])[0] in ("true", "1"):
            self._watch(plural, ns, fields, labels, q)
            return
        with api.lock:
            items = [copy.deepcopy(o) for (p, ons, _), o in api.objects.items()
                     if p == plural and (not ns or ons == ns) and _selected(o, fields, labels)]
            rv = str(api.rv)
        self._send(200, {"kind": KINDS[plural][0] + "List", "apiVersion": "v1", "metadata": {"resourceVersion": rv},
                         "items": items})

    def _chunk(self, obj: dict[str, Any]) -> None:
        data = (json.dumps(obj) + "\n").encode()
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    def _watch(self, plural: str, ns: str, fields: dict[str, str], labels: dict[str, str], q: dict[str, list[str]]) -> None:
        api = self.api
        timeout = float(q.get("timeoutSeconds", ["60"])[0])
        rv_text = q.get("resourceVersion", [""])[0]
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        sock = self.connection
        with api.lock:
            api.watch_socks.add(sock)
        end = time.monotonic() + timeout

        def match(o: dict[str, Any]) -> bool:
            return (not ns or o["metadata"].get("namespace", "") == ns) and _selected(o, fields, labels)

        try:
            with api.lock:
                if rv_text in ("", "0"):
                    initial = [copy.deepcopy(o) for (p, _, _), o in api.objects.items() if p == plural and match(o)]
                    since = api.rv
                else:
                    since = int(rv_text)
                    initial = []
                    if since < api.oldest - 1:
                        gone = _status(410, "Expired", f"too old resource version: {since} ({api.oldest - 1})")
                        self._chunk({"type": "ERROR", "object": gone})
                        self.wfile.write(b"0\r\n\r\n")
                        return
            for o in initial:
                self._chunk({"type": "ADDED", "object": o})
            while True:
                with api.lock:
                    if sock not in api.watch_socks:
                        raise ConnectionError("dropped")
                    if since < api.oldest - 1:
                        gone = _status(410, "Expired", f"too old resource version: {since}")
                        self._chunk({"type": "ERROR", "object": gone})
                        break
                    pending = [(rv, t, o) for rv, t, p, o in api.events if rv > since and p == plural and match(o)]
                    if not pending:
                        left = end - time.monotonic()
                        if left <= 0:
                            break
                        api.lock.wait(min(left, 0.5))
                        continue
                for rv, t, o in pending:
                    self._chunk({"type": t, "object": o})
                    since = rv
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
        except (OSError, ConnectionError):
            self.close_connection = True
        finally:
            with api.lock:
                api.watch_socks.discard(sock)

    # -------------------------------------------------------------- writes
    def _current(self, plural: str, ns: str, name: str | None, body: Any) -> dict[str, Any] | None:
        """Under the store's lock: the object a PATCH or PUT changes; None after answering 404 Not Found, or 409
        Conflict when the body names a resourceVersion that is not the current one (optimistic concurrency)."""
        cur = self.api.objects.get((plural, ns, name or ""))
        if cur is None:
            self._send(404, _status(404, "NotFound", f'{plural} "{name}" not found'))
            return None
        want_rv = (body.get("metadata") or {}).get("resourceVersion") if isinstance(body, dict) else None
        if want_rv is not None and want_rv != cur["metadata"]["resourceVersion"]:
            self._send(409, _status(409, "Conflict", f'Operation cannot be fulfilled on {plural} "{name}": the object '
                                    "has been modified; please apply your changes to the latest version and try again"))
            return None
        return cur

    def do_PATCH(self) -> None:  # noqa: N802
        r = self._begin("PATCH")
        if r is None:
            return
        plural, ns, name, _, _ = r
        ctype = self.headers.get("Content-Type", "").split(";")[0].strip()
        body = self._body()
        if ctype not in ("application/merge-patch+json", "application/strategic-merge-patch+json"):
            self._send(415, _status(415, "UnsupportedMediaType", f"the body of the request was in an unknown format - "
                                    f"accepted media types include: application/merge-patch+json, "
                                    f"application/strategic-merge-patch+json (got {ctype})"))
            return
        api = self.api
        with api.lock:
            cur = self._current(plural, ns, name, body)
            if cur is None:
                return
            new = merge_patch(cur, body)
            new["metadata"]["resourceVersion"] = cur["metadata"]["resourceVersion"]
            if new == cur:  # a no-op patch changes nothing (and no resourceVersion), as on a real server
                self._send(200, copy.deepcopy(cur))
                return
            new["metadata"]["resourceVersion"] = api._bump()
            api.objects[(plural, ns, name)] = new
            api._record("MODIFIED", plural, new)
            out = copy.deepcopy(new)
        self._send(200, out)

    def do_PUT(self) -> None:  # noqa: N802
        r = self._begin("PUT")
        if r is None:
            return
        plural, ns, name, _, _ = r
        body = self._body()
        api = self.api
        with api.lock:
            cur = self._current(plural, ns, name, body)
            if cur is None:
                return
            body.setdefault("metadata", {})["name"] = name
            if ns:
                body["metadata"]["namespace"] = ns
            body["metadata"]["uid"] = cur["metadata"].get("uid")
        self._send(200, api.put(plural, body))

    def do_POST(self) -> None:  # noqa: N802
        r = self._begin("POST")
        if r is None:
            return
        plural, ns, name, sub, _ = r
        body = self._body()
        api = self.api
        if sub == "eviction":
            if (ns, name or "") in api.protected:
                self._send(429, _status(429, "TooManyRequests", "Cannot evict pod as it would violate the pod's "
                                        "disruption budget."))
                return
            if not api.delete("pods", name or "", ns):
                self._send(404, _status(404, "NotFound", f'pods "{name}" not found'))
                return
            self._send(201, {"kind": "Status", "apiVersion": "v1", "status": "Success", "code": 201})
            return
        meta = body.setdefault("metadata", {})
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = meta["generateName"] + uuid.uuid4().hex[:5]
        if ns:
            meta["namespace"] = ns
        if api.get(plural, meta.get("name", ""), ns) is not None:
            self._send(409, _status(409, "AlreadyExists", f'{plural} "{meta.get("name")}" already exists'))
            return
        self._send(201, api.put(plural, body))

    def do_DELETE(self) -> None:  # noqa: N802
        r = self._begin("DELETE")
        if r is None:
            return
        plural, ns, name, _, _ = r
        self._body()
        if not self.api.delete(plural, name or "", ns):
            self._send(404, _status(404, "NotFound", f'{plural} "{name}" not found'))
            return
        self._send(200, {"kind": "Status", "apiVersion": "v1", "status": "Success", "code": 200})


