"""`gridctl route --via haproxy`: gridctl writes an HAProxy configuration, starts `haproxy` and keeps
its backend in step with the ready set through the Runtime API, never reloading. Called by
cli/route.py (render_config for --print-config, run).

The contract is the package's (gridctl/route/__init__.py). How this one keeps it: a backend of
SLOTS `server-template` slots declared `disabled`; a ready replica takes a free slot (`set server
B/rN addr IP port P`, its attempt id into the replicas map for the X-Gridctl-Replica header, then
`state ready`), one that left goes to `state maint`. HAProxy retries a failed connection, and for
idempotent requests an empty answer or no answer within try_timeout, on another server (`option
redispatch`), and its health checks bench and bring back replicas; `show servers state` read each
tick turns those into our `benched` / `back in` lines. As in the builtin router, a connection to a
replica gives up once what it sent stays unacknowledged for connect_timeout (`tcp-ut`). Unlike the builtin router, try_timeout here
bounds any silence of an idempotent request's answer (HAProxy's server timeout is an idle timeout),
not only the wait for its first byte.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from ..errors import GridctlError
from ..models import Endpoint
from . import NO_READY, POLL_S, REPLICA_HEADER, Settings
from .readyset import ReadySet

BACKEND = "replicas"
SLOTS = 32
ENV_DIR = "GRIDCTL_ROUTE_DIR"         # HAProxy expands "${...}" in the config: --print-config prints what runs
MAP_FILE = "replicas.map"
SOCKET_FILE = "admin.sock"
STOP_GRACE_S = 5
RUNNING = 2                           # srv_op_state in `show servers state`


def render_config(s: Settings) -> str:
    """The whole configuration for one job, with the run dir left as ${GRIDCTL_ROUTE_DIR}."""
    check = f"    option httpchk GET {s.http_check}\n" if s.http_check else ""
    body = NO_READY.format(job=s.job).replace("\n", "\\n")
    bind = f"[{s.host}]:{s.port}" if ":" in s.host else f"{s.host}:{s.port}"
    return f"""# gridctl route {s.job} --via haproxy: slots are filled through the Runtime API, never by a reload
global
    stats socket "${{{ENV_DIR}}}/{SOCKET_FILE}" mode 600 level admin
    hard-stop-after {STOP_GRACE_S}s

defaults
    mode http
    timeout connect {_ms(s.connect_timeout_s)}
    timeout client 300s
    timeout server 300s
    timeout http-request 30s
    retries 3
    option redispatch 1
    retry-on conn-failure empty-response response-timeout

frontend route_in
    bind {bind}
    http-request return status 503 content-type text/plain hdr Retry-After 1 string "{body}" if {{ nbsrv({BACKEND}) eq 0 }}
    default_backend {BACKEND}

backend {BACKEND}
    balance leastconn
    acl idempotent method GET HEAD OPTIONS PUT DELETE TRACE
    http-request set-timeout server {_ms(s.try_timeout_s)} if idempotent
{check}    http-response set-header {REPLICA_HEADER} "%[srv_name,map(${{{ENV_DIR}}}/{MAP_FILE},-)]"
    server-template r 1-{SLOTS} 127.0.0.1:1 check inter 1s fall 2 rise 1 tcp-ut {_ms(s.connect_timeout_s)} disabled
"""


def _ms(seconds: float) -> str:
    return f"{max(1, round(seconds * 1000))}ms"


@dataclass(frozen=True)
class SlotPlan:
    slots: dict[int, Endpoint]        # slot number -> the replica it serves, after the plan
    enable: list[int]                 # slots to point at their replica and bring into service
    disable: list[int]                # slots to put in maintenance (their replica left)
    overflow: list[Endpoint]          # ready replicas with no free slot


def plan_slots(current: dict[int, Endpoint], wanted: list[Endpoint], capacity: int) -> SlotPlan:
    """Pure: a replica that stays keeps its slot; one that left frees it; a new one takes the lowest free slot."""
    keep = {n: e for n, e in current.items() if e in wanted}
    disable = sorted(n for n in current if n not in keep)
    slots, enable, overflow = dict(keep), [], []
    free = (n for n in range(1, capacity + 1) if n not in keep)
    for e in wanted:
        if e in keep.values():
            continue
        n = next(free, None)
        if n is None:
            overflow.append(e)
            continue
        slots[n] = e
        enable.append(n)
    return SlotPlan(slots=dict(sorted(slots.items())), enable=enable, disable=disable, overflow=overflow)


def runtime_commands(plan: SlotPlan, backend: str, map_path: str) -> list[str]:
    """The Runtime API lines that carry out a plan: slots leave first, then new ones come in."""
    lines = []
    for n in plan.disable:
        lines += [f"set server {backend}/r{n} state maint", f"set map {map_path} r{n} -"]
    for n in plan.enable:
        e = plan.slots[n]
        lines += [f"set server {backend}/r{n} addr {e.host} port {e.port}", f"set map {map_path} r{n} {e.attempt}",
                  f"set server {backend}/r{n} state ready"]
    return lines


@dataclass(frozen=True)
class ServerState:
    addr: str
    port: int
    op_state: int
    admin_state: int
    check_status: int


def servers_state(text: str) -> dict[str, ServerState]:
    """`show servers state BACKEND` -> slot name -> its state (columns per the 2.6 management guide)."""
    found = {}
    for line in text.splitlines():
        cols = line.split()
        if len(cols) < 19 or line.startswith("#"):
            continue
        found[cols[3]] = ServerState(addr=cols[4], port=int(cols[18]), op_state=int(cols[5]),
                                     admin_state=int(cols[6]), check_status=int(cols[10]))
    return found


class Haproxy:
    """One haproxy process in a private (0700) run dir; stopped by PID on exit. Raises GridctlError
    when it does not start."""

    slots = SLOTS

    def __init__(self, settings: Settings):
        self.settings = settings
        self.dir = Path(tempfile.mkdtemp(prefix="gridctl-route-"))
        self.map_path = str(self.dir / MAP_FILE)
        self.proc: subprocess.Popen | None = None
        self.last_lines: list[str] = []

    def __enter__(self) -> "Haproxy":
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def _start(self) -> None:
        config = self.dir / "haproxy.cfg"
        config.write_text(render_config(self.settings))
        Path(self.map_path).write_text("".join(f"r{n} -\n" for n in range(1, SLOTS + 1)))
        self.proc = subprocess.Popen([shutil.which("haproxy") or "haproxy", "-db", "-f", str(config)],
                                     env={**os.environ, ENV_DIR: str(self.dir)}, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                     preexec_fn=_die_with_parent)
        threading.Thread(target=self._echo, daemon=True).start()
        deadline = time.monotonic() + 10
        while not (self.dir / SOCKET_FILE).exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                alert = next((ln for ln in reversed(self.last_lines) if "ALERT" in ln), None)
                raise GridctlError(f"haproxy did not start: {alert or 'no admin socket within 10s'}")
            time.sleep(0.05)

    def _echo(self) -> None:
        """HAProxy's own lines (server state changes, alerts) go to our stderr, kept for errors."""
        for line in self.proc.stderr:
            line = line.rstrip()
            self.last_lines = (self.last_lines + [line])[-20:]
            print(f"haproxy: {line}", file=sys.stderr, flush=True)

    def ask(self, command: str) -> str:
        """One Runtime API command on the admin socket -> its answer."""
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(5)
            s.connect(str(self.dir / SOCKET_FILE))
            s.sendall(command.encode() + b"\n")
            answer = b""
            while chunk := s.recv(65536):
                answer += chunk
        return answer.decode(errors="replace")

    def stop(self) -> None:
        """Soft stop (SIGUSR1: stop listening, finish requests, hard-stop-after), then KILL; by PID."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGUSR1)
            try:
                self.proc.wait(STOP_GRACE_S + 2)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        shutil.rmtree(self.dir, ignore_errors=True)


def _die_with_parent() -> None:
    """In the child before exec: a route process killed with SIGKILL takes its haproxy along (Linux)."""
    try:
        import ctypes
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)     # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def run(s: Settings) -> int:
    """Serve until SIGINT / SIGTERM; -> exit status (1 when haproxy died under us)."""
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    readyset = ReadySet(s.db_path, s.job)
    try:
        with Haproxy(s) as hx:
            say(f"routing {s.host}:{s.port} to the ready replicas of {s.job} (haproxy pid {hx.proc.pid})")
            return _keep_in_step(hx, readyset, stop)
    finally:
        readyset.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        say("stopped")


def _keep_in_step(hx: Haproxy, readyset: ReadySet, stop: threading.Event) -> int:
    slots: dict[int, Endpoint] = {}
    up: dict[int, bool] = {}
    while not stop.is_set():
        endpoints = readyset.poll()
        if endpoints is not None:
            slots = _apply(hx, slots, endpoints, up)
        _report_health(hx, slots, up)
        if hx.proc.poll() is not None:
            say(f"haproxy (pid {hx.proc.pid}) exited with status {hx.proc.returncode}")
            return 1
        stop.wait(POLL_S)
    return 0


def _apply(hx: Haproxy, slots: dict[int, Endpoint], endpoints, up: dict[int, bool]) -> dict[int, Endpoint]:
    wanted = [e for e in (_with_ip(e) for e in endpoints) if e is not None]
    plan = plan_slots(slots, wanted, hx.slots)
    for n in plan.disable:
        say(f"left the ready set: {slots[n].attempt} ({slots[n].host}:{slots[n].port})")
        up.pop(n, None)
    for command in runtime_commands(plan, BACKEND, hx.map_path):
        answer = hx.ask(command).strip()
        if refused(answer):
            say(f"haproxy refused `{command}`: {answer}")
    for n in plan.enable:
        up[n] = True
        say(f"ready: {plan.slots[n].attempt} ({plan.slots[n].host}:{plan.slots[n].port})")
    for e in plan.overflow:
        say(f"no free slot for {e.attempt} ({e.host}:{e.port}): more than {hx.slots} ready replicas")
    return plan.slots


def refused(answer: str) -> bool:
    """Whether a Runtime API answer to a `set` command is a refusal. Called by _apply. A slot that
    comes back to the address it last had answers "no need to change the addr": that is success."""
    answer = answer.strip()
    return bool(answer) and "changed from" not in answer and "no need to change" not in answer


def _with_ip(e: Endpoint) -> Endpoint | None:
    """The Runtime API takes addresses, and keeps a slot's family (IPv4, as the template's)."""
    try:
        ip = socket.getaddrinfo(e.host, e.port, socket.AF_INET, socket.SOCK_STREAM)[0][4][0]
    except (socket.gaierror, IndexError):
        say(f"skipped {e.attempt}: {e.host} has no IPv4 address (haproxy slots are IPv4)")
        return None
    return dataclasses.replace(e, host=ip)


def _report_health(hx: Haproxy, slots: dict[int, Endpoint], up: dict[int, bool]) -> None:
    """HAProxy's checks bench and bring back replicas; say so in the builtin router's words."""
    try:
        states = servers_state(hx.ask(f"show servers state {BACKEND}"))
    except OSError:
        return
    for n, e in slots.items():
        state = states.get(f"r{n}")
        if state is None:
            continue
        now_up = state.op_state == RUNNING
        if up.get(n, True) and not now_up:
            say(f"benched {e.attempt} ({e.host}:{e.port}): health check failed")
        elif not up.get(n, True) and now_up:
            say(f"back in {e.attempt} ({e.host}:{e.port})")
        up[n] = now_up


def say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)
