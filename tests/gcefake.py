"""A local Compute Engine endpoint for the GCP adapter's tests (stdlib only, 127.0.0.1).

Used by tests/cloud: the real google-cloud-compute REST client talks to it through the pool's
`api_endpoint`. It serves the paths the adapter uses: instances insert / get / list (label filter)
/ delete / stop / setLabels, and zone operations get. Like GCE it answers a repeated `requestId`
with the first operation, so a retried insert creates nothing. Instances get `networkIP` from a
127.x subnet (127.22.1.4, .5, ...) and, with an access config, a `natIP` from another one, so
every address a test may connect to stays on loopback. Faults: `fail_next_insert` (capacity or
quota, in the operation or as an HTTP error), `fail_next` (any request), `lose_next_insert_answer`,
`preempt`.
"""

from __future__ import annotations

import itertools
import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

_PATH = re.compile(r"^/compute/v1/projects/(?P<project>[^/]+)/zones/(?P<zone>[^/]+)/"
                   r"(?P<kind>instances|operations)(?:/(?P<name>[^/]+))?(?:/(?P<verb>[A-Za-z]+))?$")
_LABEL_TERM = re.compile(r'labels\.([a-z0-9_-]+)\s*=\s*"?([^"\s)]*)"?')


class GceFake:
    def __init__(self, subnet: str = "127.22.1", nat_subnet: str = "127.22.2"):
        self.subnet, self.nat_subnet = subnet, nat_subnet
        self.instances: dict[str, dict] = {}       # name -> instance JSON
        self.operations: dict[str, dict] = {}      # name -> operation JSON
        self.by_request_id: dict[str, str] = {}    # requestId -> operation name
        self.requests: list[tuple[str, str]] = []  # (method, path?query) in arrival order
        self._insert_faults: list[tuple[str, str, int | None]] = []
        self._faults: list[tuple[int, str, str, dict[str, str]]] = []
        self._lose_insert_answers = 0
        self._ids = itertools.count(1000)
        self._hosts = itertools.count(4)
        self._nat_hosts = itertools.count(4)
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    # -- life ---------------------------------------------------------------------------------

    def start(self) -> "GceFake":
        fake = self

        class Handler(_Handler):
            owner = fake

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, name="gcefake", daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    @property
    def endpoint(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    # -- faults -------------------------------------------------------------------------------

    def fail_next_insert(self, code: str = "ZONE_RESOURCE_POOL_EXHAUSTED",
                         message: str = "The zone does not have enough resources available to fulfill the request.",
                         http_status: int | None = None) -> None:
        """The next insert fails: in its operation's error list (http_status None, as GCE usually
        reports a stockout), or as an HTTP error with that status."""
        with self._lock:
            self._insert_faults.append((code, message, http_status))

    def fail_next(self, status: int, message: str, reason: str = "", *, times: int = 1,
                  retry_after: str | None = None) -> None:
        """The next `times` requests of any kind get this HTTP error (with a Retry-After header
        when `retry_after` is given)."""
        headers = {"Retry-After": retry_after} if retry_after is not None else {}
        with self._lock:
            self._faults.extend([(status, message, reason, headers)] * times)

    def lose_next_insert_answer(self) -> None:
        """The next insert is carried out, but the connection closes before the answer is sent."""
        with self._lock:
            self._lose_insert_answers += 1

    def preempt(self, name: str) -> None:
        """GCE stopped a spot instance: status TERMINATED, addresses kept."""
        with self._lock:
            self.instances[name]["status"] = "TERMINATED"

    # -- requests -----------------------------------------------------------------------------

    def handle(self, method: str, raw_path: str, body: bytes) -> tuple | None:
        """(status, JSON) or (status, JSON, headers) for one request; None: close the connection
        without answering."""
        url = urlsplit(raw_path)
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        with self._lock:
            self.requests.append((method, raw_path))
            if self._faults:
                status, message, reason, headers = self._faults.pop(0)
                return (*_error(status, message, reason), headers)
            m = _PATH.match(url.path)
            if not m:
                return _error(404, f"no such path {url.path}", "notFound")
            route = (method, m["kind"], m["name"] is not None, m["verb"])
            if route == ("GET", "instances", False, None):
                return self._list(m, query)
            if route == ("POST", "instances", False, None):
                answer = self._insert(m, query, json.loads(body or b"{}"))
                if self._lose_insert_answers:
                    self._lose_insert_answers -= 1
                    return None
                return answer
            if m["kind"] == "operations" and method == "GET" and m["name"]:
                op = self.operations.get(m["name"])
                return (200, op) if op else _error(404, f"operation {m['name']} not found", "notFound")
            if m["kind"] == "instances" and m["name"]:
                return self._instance_call(method, m, query, json.loads(body or b"{}"))
            return _error(400, f"unsupported {method} {url.path}", "badRequest")

    def _list(self, m, query) -> tuple[int, dict]:
        wanted = _LABEL_TERM.findall(query.get("filter", ""))
        if query.get("filter") and not wanted:
            return _error(400, f"invalid filter {query['filter']!r}", "invalid")
        items = [i for i in self.instances.values() if i["zone"].endswith(f"/zones/{m['zone']}")
                 and all(i.get("labels", {}).get(k) == v for k, v in wanted)]
        return 200, {"kind": "compute#instanceList", "id": "list", "items": items}

    def _insert(self, m, query, body: dict) -> tuple[int, dict]:
        request_id = query.get("requestId")
        if request_id and request_id in self.by_request_id:
            return 200, self.operations[self.by_request_id[request_id]]
        name = body.get("name", "")
        if self._insert_faults:
            code, message, http_status = self._insert_faults.pop(0)
            if http_status is not None:
                return _error(http_status, message, code)
            return 200, self._operation(m, "insert", name, request_id, error=(code, message))
        if name in self.instances:
            return _error(409, f"The resource '{name}' already exists", "alreadyExists")
        self.instances[name] = self._new_instance(m, body)
        return 200, self._operation(m, "insert", name, request_id)

    def _instance_call(self, method: str, m, query, body: dict) -> tuple[int, dict]:
        name, verb = m["name"], m["verb"]
        inst = self.instances.get(name)
        if inst is None:
            return _error(404, f"The resource 'projects/{m['project']}/zones/{m['zone']}/instances/{name}' "
                               "was not found", "notFound")
        if method == "GET" and verb is None:
            return 200, inst
        request_id = query.get("requestId")
        if request_id and request_id in self.by_request_id:
            return 200, self.operations[self.by_request_id[request_id]]
        if method == "DELETE" and verb is None:
            del self.instances[name]
            return 200, self._operation(m, "delete", name, request_id)
        if method == "POST" and verb == "stop":
            inst["status"] = "TERMINATED"
            return 200, self._operation(m, "stop", name, request_id)
        if method == "POST" and verb == "setLabels":
            if body.get("labelFingerprint") != inst["labelFingerprint"]:
                return _error(412, "Labels fingerprint either invalid or resource labels have changed",
                              "conditionNotMet")
            inst["labels"] = dict(body.get("labels", {}))
            inst["labelFingerprint"] = f"fp{next(self._ids)}"
            return 200, self._operation(m, "setLabels", name, request_id)
        return _error(400, f"unsupported {method} {verb}", "badRequest")

    def _new_instance(self, m, body: dict) -> dict:
        base = f"https://www.googleapis.com/compute/v1/projects/{m['project']}/zones/{m['zone']}"
        nics = body.get("networkInterfaces") or [{}]
        for nic in nics:
            nic["networkIP"] = f"{self.subnet}.{next(self._hosts)}"
            for access in nic.get("accessConfigs", []):
                access["natIP"] = f"{self.nat_subnet}.{next(self._nat_hosts)}"
        return {**body, "kind": "compute#instance", "id": str(next(self._ids)), "status": "RUNNING",
                "zone": base, "selfLink": f"{base}/instances/{body.get('name')}", "networkInterfaces": nics,
                "labels": dict(body.get("labels", {})), "labelFingerprint": f"fp{next(self._ids)}",
                "creationTimestamp": time.strftime("%Y-%m-%dT%H:%M:%S.000-00:00", time.gmtime())}

    def _operation(self, m, kind: str, target: str, request_id: str | None,
                   error: tuple[str, str] | None = None) -> dict:
        name = f"operation-{next(self._ids)}"
        op = {"kind": "compute#operation", "id": str(next(self._ids)), "name": name, "operationType": kind,
              "status": "DONE", "progress": 100, "zone": f"projects/{m['project']}/zones/{m['zone']}",
              "targetLink": f"projects/{m['project']}/zones/{m['zone']}/instances/{target}"}
        if error is not None:
            op["error"] = {"errors": [{"code": error[0], "message": error[1]}]}
            op["httpErrorStatusCode"], op["httpErrorMessage"] = 503, "SERVICE UNAVAILABLE"
        self.operations[name] = op
        if request_id:
            self.by_request_id[request_id] = name
        return op


class _Handler(BaseHTTPRequestHandler):
    owner: GceFake
    protocol_version = "HTTP/1.1"

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        answer = self.owner.handle(self.command, self.path, body)
        if answer is None:
            self.close_connection = True
            return
        status, payload, *extra = answer
        data = json.dumps(payload).encode()
        self.send_response(status)
        for name, value in (extra[0] if extra else {}).items():
            self.send_header(name, value)
        self.send_header("Content-Type", "application/json; charset=UTF-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_DELETE = _serve

    def log_message(self, format, *args):  # noqa: A002 - quiet: pytest shows failures, not access logs
        pass


def _error(status: int, message: str, reason: str = "") -> tuple[int, dict]:
    return status, {"error": {"code": status, "message": message,
                              "errors": [{"message": message, "domain": "global", "reason": reason}]}}
