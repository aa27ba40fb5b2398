"""Real parts for the routing tests: replica processes, a store with a service job, the `gridctl route`
process and a bounded load loop. Only processes started here are stopped, by PID."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from gridctl.models import Attempt, AttemptState, JobRecord, JobState, NodeRecord
from gridctl.store import connect, queries, write_tx

HERE = Path(__file__).resolve().parent
GRIDCTL = [sys.executable, "-c", "from gridctl.cli import main; main()"]


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def wait_until(what: str, check, timeout_s: float = 20.0, every_s: float = 0.05):
    """Poll check() until it returns something true; fail naming `what` after timeout_s."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(every_s)
    raise AssertionError(f"timed out waiting for {what}")


def listening(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


class Replica:
    """One replica server process on its own 127.x address."""

    def __init__(self, host: str, name: str):
        self.host, self.name = host, name
        self.port = free_port(host)
        self.proc = subprocess.Popen([sys.executable, str(HERE / "replica.py"), host, str(self.port), name],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until(f"replica {name} on {host}:{self.port}", lambda: listening(host, self.port))

    def get(self, path: str) -> str:
        with urllib.request.urlopen(f"http://{self.host}:{self.port}{path}", timeout=5) as r:
            return r.read().decode()

    def count(self) -> int:
        return int(self.get("/count"))

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)


class ServingStore:
    """A store holding one service job whose replicas the test writes as attempt rows."""

    def __init__(self, root: Path, job: str = "web", spec: dict | None = None):
        self.db = root / "state.db"
        self.fleet = root / "fleet.yaml"
        self.fleet.write_text(f"fleet: t\nstate: {self.db}\npools:\n  - name: p\n    provider: ssh\n"
                              "    nodes: [{name: n0, host: 127.0.0.1}]\n")
        self.job = job
        self.conn = connect(self.db)
        with write_tx(self.conn):
            queries.insert_job(self.conn, JobRecord(job, spec or {"name": job, "class": "service", "replicas": 2},
                                                    JobState.RUNNING, created_at=1.0, updated_at=1.0))
        self.attempts: dict[str, Attempt] = {}

    def add_job(self, name: str, spec: dict) -> None:
        with write_tx(self.conn):
            queries.insert_job(self.conn, JobRecord(name, spec, JobState.RUNNING, created_at=1.0, updated_at=1.0))

    def add(self, replica: Replica, index: int, *, ready: bool) -> str:
        """Record `replica` as a running attempt of the job on a node at its address; -> attempt id."""
        n = len(self.attempts) + 1
        node = f"node-{replica.name}"
        attempt = Attempt(id=f"{self.job}.{n}", job=self.job, n=n, replica=index, node=node,
                          state=AttemptState.RUNNING, created_at=1.0, started_at=1.0, port=replica.port,
                          ready=ready, ready_since=1.0 if ready else None)
        with write_tx(self.conn):
            queries.save_node(self.conn, NodeRecord(name=node, pool="p", provider="ssh", host=replica.host,
                                                    port=22), 1.0)
            queries.save_attempt(self.conn, attempt)
        self.attempts[attempt.id] = attempt
        return attempt.id

    def set_ready(self, attempt_id: str, ready: bool) -> None:
        a = self.attempts[attempt_id]
        a = Attempt(**{**a.__dict__, "ready": ready, "ready_since": time.time() if ready else None})
        with write_tx(self.conn):
            queries.save_attempt(self.conn, a)
        self.attempts[attempt_id] = a

    def close(self) -> None:
        self.conn.close()


class Router:
    """`gridctl route JOB --listen 127.0.0.1:PORT --via VIA` as a child process; stop() sends SIGTERM."""

    def __init__(self, store: ServingStore, via: str, *extra: str, job: str | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.errfile = store.fleet.parent / f"route-{self.port}.err"
        with open(self.errfile, "w") as err:
            self.proc = subprocess.Popen([*GRIDCTL, "route", job or store.job, "--listen", f"127.0.0.1:{self.port}",
                                          "--via", via, "-f", str(store.fleet), *extra],
                                         stdout=subprocess.DEVNULL, stderr=err)
        wait_until(f"router on port {self.port} (stderr: {self.errfile})",
                   lambda: listening("127.0.0.1", self.port) or self.proc.poll() is not None)
        assert self.proc.poll() is None, self.stderr()

    def stderr(self) -> str:
        return self.errfile.read_text()

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return self.proc.returncode


@dataclass(frozen=True)
class Outcome:
    status: int           # 0 when the request failed without an HTTP answer
    replica: str          # X-Gridctl-Replica
    error: str


def get_once(url: str) -> Outcome:
    return run_load(url, count=1, concurrency=1)[0]


def run_load(url: str, *, count: int, concurrency: int = 8, budget_s: float = 120.0, method: str = "GET",
             at: dict | None = None) -> list[Outcome]:
    """`count` requests over `concurrency` connections, bounded by budget_s; at[i]() runs (in a thread,
    the load going on) once i requests have completed, so a test can break things mid-load."""
    return asyncio.run(_load(url, count, concurrency, budget_s, method, dict(at or {})))


async def _load(url, count, concurrency, budget_s, method, at) -> list[Outcome]:
    results: list[Outcome] = []
    todo = iter(range(count))
    deadline = time.monotonic() + budget_s
    pending_hooks: list[asyncio.Future] = []

    async def worker(session: aiohttp.ClientSession) -> None:
        for _ in todo:
            if time.monotonic() > deadline:
                return
            try:
                async with session.request(method, url, data=b"p" * 100 if method == "POST" else None) as r:
                    await r.read()
                    results.append(Outcome(r.status, r.headers.get("X-Gridctl-Replica", ""), ""))
            except (aiohttp.ClientError, asyncio.TimeoutError) as e:
                results.append(Outcome(0, "", f"{type(e).__name__}: {e}"))
            hook = at.pop(len(results), None)
            if hook is not None:
                pending_hooks.append(asyncio.ensure_future(asyncio.to_thread(hook)))

    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
    await asyncio.gather(*pending_hooks)
    return results


def failures(outcomes: list[Outcome]) -> list[Outcome]:
    return [o for o in outcomes if o.status != 200]
