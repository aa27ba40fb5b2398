"""Serving end to end (issue 12 acceptance): a 2-replica service started by `gridctl run --port auto`
with an HTTP readiness check, on 3 simulated nodes behind the real sshd, kept by a real
`gridctl reconcile --loop`, and taking a paced GET load through a real `gridctl route` (builtin).
Under each fault no request fails, and the job gets a new *ready* replica that takes requests:
- the replica's process is killed (its process group, by the pid in its attempt dir);
- its node is drained: the old copy is stopped only after its replacement is ready;
- its node goes dark (every TCP packet to its address dropped; root): a hedge starts elsewhere and
  becomes ready, and the old copy is fenced when the node answers again.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from itertools import count
from pathlib import Path

import pytest

from fleetsim import requires_root
from helpers import GRIDCTL, gridctl_json
from jobs_support import JobLab

from gridctl import demo_replica
from gridctl.loadgen import Load
from gridctl.models import Attempt, AttemptState

REPLICA = Path(demo_replica.__file__)
JOB = "web"
WAIT_S = 60.0
_LABS = count()                 # node names of every lab differ: the sshd fixture is shared


def wait_for(what: str, check, lab: JobLab | None = None, timeout_s: float = WAIT_S):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}" + (f"\n{lab.summary()}" if lab else ""))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        return True
    except OSError:
        return False


def stop(proc: subprocess.Popen, sig: int) -> None:
    """By PID: the signal, then SIGKILL after 15 s."""
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


class Serving:
    """The lab, its reconcile loop, the router and the load; close() stops what it started, by PID."""

    def __init__(self, ssh_fleet, root: Path, prefix: str):
        self.lab = JobLab(ssh_fleet, root, prefix, count=3, gpus=1)
        self.procs: list[tuple[subprocess.Popen, int]] = []
        self.load: Load | None = None
        self.iptables: list[list[str]] = []

    def start(self) -> None:
        self.lab.run_job({"name": JOB, "class": "service", "replicas": 2, "gpus": 1, "port": "auto",
                          "command": [sys.executable, str(REPLICA)],
                          "env": {"HEALTH_FILE": str(self.lab.root / "health-{host}")},
                          "readiness": {"http": "/health", "timeout": "1s"},
                          "recovery": {"backoff": "1s", "unreachable_grace": "4s"}})
        self.loop = self._spawn("loop", [*GRIDCTL, "reconcile", "-f", str(self.lab.path), "--loop", "--interval", "1s",
                                         "-q"], signal.SIGINT)
        wait_for("two ready replicas", lambda: len(self.ready()) == 2, self.lab)
        port = free_port()
        self.router = self._spawn("route", [*GRIDCTL, "route", JOB, "--listen", f"127.0.0.1:{port}", "--via", "builtin",
                                            "-f", str(self.lab.path)], signal.SIGTERM)
        wait_for("the router listening", lambda: listening(port) or self.router.poll() is not None)
        assert self.router.poll() is None, self.log("route")
        self.load = Load(f"http://127.0.0.1:{port}/work", rate=50, workers=4).start()
        # the router follows the store: once both replicas have answered, the load is steady
        wait_for("both replicas answering through the router",
                 lambda: {s.replica for s in self.load.samples if s.ok} >= {a.id for a in self.ready()}, self.lab)

    def _spawn(self, name: str, argv: list[str], sig: int) -> subprocess.Popen:
        with open(self.lab.root / f"{name}.log", "wb") as out:
            proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True)
        self.procs.append((proc, sig))
        return proc

    def log(self, name: str) -> str:
        return (self.lab.root / f"{name}.log").read_text(errors="replace")

    def ready(self) -> list[Attempt]:
        return [a for a in self.lab.attempts(JOB) if a.state is AttemptState.RUNNING and a.ready]

    def replacement(self, old: Attempt) -> Attempt | None:
        """A ready attempt of old's replica that is newer than old, if any."""
        return next((a for a in self.ready() if a.replica == old.replica and a.n > old.n), None)

    def served_by(self, attempt: str) -> bool:
        return any(s.ok and s.replica == attempt for s in list(self.load.samples))

    def events(self) -> list[dict]:
        code, rows = gridctl_json("events", "-f", self.lab.path, "--job", JOB, "--limit", "1000")
        assert code == 0
        return rows

    def health(self, node: str, code: int) -> None:
        """What /health answers on that node from now on."""
        (self.lab.root / f"health-{self.lab.ip(node)}").write_text(str(code))

    def attempt(self, attempt_id: str) -> Attempt:
        return next(a for a in self.lab.attempts(JOB) if a.id == attempt_id)

    def blackhole(self, node: str) -> None:
        """Every TCP packet to the node's address is dropped: sshd, the replica, the readiness check."""
        rule = ["INPUT", "-d", self.lab.ip(node), "-p", "tcp", "-j", "DROP"]
        subprocess.run(["iptables", "-I", *rule], check=True, capture_output=True)
        self.iptables.append(rule)

    def unblackhole(self) -> None:
        while self.iptables:
            subprocess.run(["iptables", "-D", *self.iptables.pop()], capture_output=True)

    def finish_load(self) -> list:
        """The samples; the load spans the fault: start() waited for both replicas to answer
        through the router, and each test waits for the replacement to answer before this."""
        return self.load.stop()

    def close(self) -> None:
        if self.load is not None:
            self.load.stop()
        self.unblackhole()
        for proc, sig in reversed(self.procs):
            stop(proc, sig)
        self.lab.close()


@pytest.fixture
def serving(ssh_fleet, tmp_path, isolated_env):
    s = Serving(ssh_fleet, tmp_path / "lab", f"sv{next(_LABS)}n")
    try:
        s.start()
        yield s
    finally:
        s.close()


def failed_lines(samples) -> str:
    bad = [s for s in samples if not s.ok]
    return f"{len(bad)} of {len(samples)} failed: " + "; ".join(f"{s.status} {s.error}" for s in bad[:5])


def test_a_killed_replica_process_under_load_fails_no_request_and_gets_a_new_ready_replica(serving):
    old = serving.ready()[0]
    os.killpg(int(serving.lab.attempt_file(old, "pid").read_text().strip()), signal.SIGKILL)
    new = wait_for("a new ready attempt of the killed replica", lambda: serving.replacement(old), serving.lab)
    wait_for(f"requests served by {new.id}", lambda: serving.served_by(new.id), serving.lab)
    samples = serving.finish_load()
    assert not [s for s in samples if not s.ok], failed_lines(samples) + "\n" + serving.log("route")
    assert sorted(a.replica for a in serving.ready()) == [0, 1] and new.id in {a.id for a in serving.ready()}
    assert next(a for a in serving.lab.attempts(JOB) if a.id == old.id).state is AttemptState.EXITED


def test_a_drain_under_load_fails_no_request_and_stops_the_old_copy_only_after_the_new_one_is_ready(serving):
    old = serving.ready()[0]
    res = serving.lab.cli("drain", old.node, "--wait", "10")
    assert res.returncode == 0, res.stderr
    new = wait_for("the drained replica's replacement ready", lambda: serving.replacement(old), serving.lab)
    assert new.node != old.node
    wait_for(f"{old.id} stopped", lambda: not any(p.attempt == old.id for p in serving.lab.alive()), serving.lab)
    wait_for(f"requests served by {new.id}", lambda: serving.served_by(new.id), serving.lab)
    samples = serving.finish_load()
    assert not [s for s in samples if not s.ok], failed_lines(samples) + "\n" + serving.log("route")
    kinds = [(e["kind"], e["message"].split()[1]) for e in serving.events()
             if e["kind"] in ("replica-ready", "attempt-ended")]
    assert kinds.index(("replica-ready", new.id)) < kinds.index(("attempt-ended", old.id)), kinds
    ended = next(a for a in serving.lab.attempts(JOB) if a.id == old.id)
    assert ended.state is AttemptState.KILLED and ended.reason.startswith("drained: replaced by attempt"), ended


@requires_root
def test_a_dark_node_under_load_fails_no_request_its_hedge_becomes_ready_and_the_old_copy_is_fenced(serving):
    old = serving.ready()[0]
    serving.blackhole(old.node)
    hedge = wait_for("the hedge ready", lambda: serving.replacement(old), serving.lab)
    assert hedge.node != old.node
    wait_for(f"requests served by {hedge.id}", lambda: serving.served_by(hedge.id), serving.lab)
    # past unreachable_grace the silent copy is ended (lost); its process is still running on the dark node
    wait_for(f"{old.id} lost", lambda: next(a for a in serving.lab.attempts(JOB) if a.id == old.id).state
             is AttemptState.LOST, serving.lab)
    assert any(p.attempt == old.id for p in serving.lab.alive())
    serving.unblackhole()
    wait_for(f"{old.id} fenced", lambda: any(e["kind"] == "attempt-fenced" and old.id in e["message"]
                                             for e in serving.events()), serving.lab)
    assert not any(p.attempt == old.id for p in serving.lab.alive())
    samples = serving.finish_load()
    assert not [s for s in samples if not s.ok], failed_lines(samples) + "\n" + serving.log("route")


@requires_root
def test_a_silent_copy_whose_node_answers_before_its_hedge_is_ready_is_kept_until_the_hedge_is_ready(serving):
    old = serving.ready()[0]
    other = next(a for a in serving.ready() if a.id != old.id)
    spare = next(n for n in serving.lab.names if n not in (old.node, other.node))
    serving.health(spare, 503)                   # the hedge (on the spare node) cannot become ready
    serving.blackhole(old.node)
    hedge = wait_for("the hedge placed", lambda: next((a for a in serving.lab.live(JOB)
                                                       if a.replica == old.replica and a.n > old.n), None), serving.lab)
    assert hedge.node == spare
    serving.unblackhole()
    wait_for(f"{old.node} answering again", lambda: serving.attempt(old.id).state is not AttemptState.SILENT, serving.lab)
    assert not serving.attempt(hedge.id).ready
    assert serving.attempt(old.id).state is AttemptState.RUNNING, serving.attempt(old.id)
    assert old.id in serving.lab.alive_ids(JOB)
    samples = serving.finish_load()
    assert not [s for s in samples if not s.ok], failed_lines(samples) + "\n" + serving.log("route")
