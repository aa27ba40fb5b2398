"""The demo's routed traffic: `gridctl route` for the demo's service as a child process, a paced
closed-loop load through it for the whole run (loadgen.Load), and what the requests saw around
each fault (fault_figures, pure). Called by demo.Demo; cli/demo.py prints the figures.

The router is the command a user runs (`python -m gridctl route JOB --listen 127.0.0.1:PORT`, the
builtin router), on a free loopback port, its log in the demo dir (route.log). stop() ends the load
first and then the router (SIGTERM, by PID), so no request is in flight when the replicas go.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

RATE_PER_S = 40.0         # modest: the demo shares the machine with its replicas, router and reconcile loop
WORKERS = 4
ROUTER_STOP_S = 10.0


@dataclass(frozen=True)
class FaultWindow:
    at: float                       # the fault was injected (time.time())
    recovered_at: float | None      # every affected job had recovered (a service: its replacement ready)


@dataclass(frozen=True)
class Latency:
    p50_s: float | None
    p99_s: float | None

    def text(self) -> str:
        if self.p50_s is None or self.p99_s is None:
            return "-"
        return f"{self.p50_s * 1000:.0f}/{self.p99_s * 1000:.0f} ms"


@dataclass(frozen=True)
class Figures:
    """The requests through the router around one fault."""

    requests: int           # sent from the fault until the next fault (or the end of the load)
    failed: int             # of those, answered other than 200, or not at all
    before: Latency         # answered requests sent since the previous fault recovered (or the load began)
    during: Latency         # answered requests sent from the fault until it recovered (or the end)


def latency(samples: list) -> Latency:
    from .loadgen import percentile
    values = [s.latency for s in samples if s.ok]
    return Latency(percentile(values, 50), percentile(values, 99))


def fault_figures(samples: list, windows: list[FaultWindow]) -> list[Figures]:
    """One Figures per fault window, in order. The windows are the demo's faults, one after the
    other: a fault is injected only after the one before it recovered (or never, if it did not)."""
    out = []
    for i, w in enumerate(windows):
        until = windows[i + 1].at if i + 1 < len(windows) else float("inf")
        prior = windows[i - 1] if i else None
        since = float("-inf") if prior is None else prior.recovered_at or prior.at
        end = w.recovered_at if w.recovered_at is not None else until
        span = [s for s in samples if w.at <= s.start < until]
        out.append(Figures(len(span), sum(not s.ok for s in span),
                           latency([s for s in samples if since <= s.start < w.at]),
                           latency([s for s in samples if w.at <= s.start < end])))
    return out


@dataclass(frozen=True)
class FailureKind:
    kind: str               # "answered 503", "no answer (ServerDisconnectedError)"
    count: int
    first: float            # the earliest and latest sends of this kind (time.time())
    last: float


def failure_kinds(failed: list) -> list[FailureKind]:
    """Failed samples grouped by what came back, the most frequent first."""
    groups: dict[str, list[float]] = {}
    for s in failed:
        kind = f"answered {s.status}" if s.status else f"no answer ({s.error.split(':')[0] or 'unknown'})"
        groups.setdefault(kind, []).append(s.start)
    return sorted((FailureKind(k, len(v), min(v), max(v)) for k, v in groups.items()), key=lambda f: (-f.count, f.kind))


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class Traffic:
    """The router and the load of one demo run. start_router(), then start_load() once the
    service is ready; stop() (safe to call at any point, and twice) returns the samples."""

    def __init__(self, fleet_path: Path, job: str, log_path: Path):
        self.fleet_path, self.job, self.log_path = fleet_path, job, log_path
        self.rate_per_s = RATE_PER_S
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/work"
        self.router: subprocess.Popen | None = None
        self.load = None
        self.started_at: float | None = None
        self.stopped_at: float | None = None
        self.samples: list = []
        self._lock = threading.Lock()
        self._closed = False

    def start_router(self) -> None:
        with self._lock, open(self.log_path, "ab") as log:
            if self._closed:
                return
            self.router = subprocess.Popen(
                [sys.executable, "-m", "gridctl", "route", self.job, "-f", str(self.fleet_path),
                 "--listen", f"127.0.0.1:{self.port}"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)

    def router_problem(self) -> str:
        """'' once a GET through the router is answered 200 (it has read the ready set); else why
        not (the router's last log line when it exited)."""
        import http.client
        if self.router is None:
            return "not started"
        if self.router.poll() is not None:
            last = self.log_path.read_text(errors="replace").strip().splitlines()[-1:] if self.log_path.exists() else []
            return f"exited {self.router.returncode}" + (f": {last[0][:200]}" if last else "")
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2.0)
        try:
            conn.request("GET", "/work")
            status = conn.getresponse().status
        except (OSError, http.client.HTTPException) as e:
            return f"no answer yet ({type(e).__name__})"
        finally:
            conn.close()
        return "" if status == 200 else f"answers {status}"

    def start_load(self, budget_s: float) -> None:
        from .loadgen import Load
        with self._lock:
            if self._closed:
                return
            self.started_at = time.time()
            self.load = Load(self.url, rate=self.rate_per_s, workers=WORKERS, budget_s=budget_s).start()

    def counts(self) -> tuple[int, int]:
        """(requests so far, failed so far)."""
        if self.load is None:
            return 0, 0
        return len(self.load.samples), len(self.load.failed())

    def stop(self) -> list:
        with self._lock:            # a scenario thread still starting either finds it closed
            self._closed = True
        if self.load is not None and self.stopped_at is None:
            self.samples = list(self.load.stop())
            self.stopped_at = time.time()
        if self.router is not None and self.router.poll() is None:
            self.router.send_signal(signal.SIGTERM)
            try:
                self.router.wait(ROUTER_STOP_S)
            except subprocess.TimeoutExpired:
                self.router.kill()
                self.router.wait(5)
        return self.samples
