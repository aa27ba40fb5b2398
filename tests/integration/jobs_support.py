"""Support for the job and failover tests (test_jobs_ssh.py): a small fleet of simulated nodes on
the shared sshd, each node with its own attempt dir, driven by the real CLI and by
reconcile_once; and a look at what really runs on the nodes (pid files + /proc).

All simulated nodes share one sshd and one home directory, so every fleet here puts its attempts
under `<tmp>/work/{node}`: the attempt dirs of a node are `<tmp>/work/<node>/attempts/<job>.<n>`.
Processes are only ever killed by the process-group ids found in this fleet's own pid files.
"""

from __future__ import annotations

import contextlib

import os
import signal
import sqlite3
import subprocess
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import yaml

from helpers import by_name, gridctl, gridctl_json

from gridctl.models import Attempt, AttemptState, JobRecord, NodeRecord
from gridctl.reconcile import PassLock, PassReport, reconcile_once
from gridctl.reconcile.observe import Transports
from gridctl.spec import load_fleet
from gridctl.store import connect, queries

LOOP = "while :; do echo tick; sleep 1; done"
FAST_HEALTH = {"interval": "1s", "probe_timeout": "3s", "unhealthy_after": 2}
FAST_RECOVERY = {"unreachable_grace": "4s", "backoff": "1s"}


@dataclass(frozen=True)
class Proc:
    """One attempt dir on a node whose process (group) is alive."""

    node: str
    attempt: str
    pid: int

    @property
    def job(self) -> str:
        return self.attempt.rsplit(".", 1)[0]


def _proc_table() -> tuple[set[int], set[int]]:
    """(pids alive and not zombies, process groups with such a member), from /proc."""
    pids, groups = set(), set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        state, pgrp = fields[0], int(fields[2])
        if state not in ("Z", "X"):
            pids.add(int(entry))
            groups.add(pgrp)
    return pids, groups


class JobLab:
    """A fleet of `count` simulated nodes named <prefix>0.. with per-node attempt dirs."""

    def __init__(self, ssh_fleet, root: Path, prefix: str, count: int = 3, gpus: int = 4,
                 health: dict | None = None, connect_timeout: str = "1s"):
        self.sim = ssh_fleet
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.names = [f"{prefix}{i}" for i in range(count)]
        for name in self.names:
            ssh_fleet.add_node(name, ssh_fleet.next_ip(), gpus=gpus)
        self.work = root / "work"
        self.path = ssh_fleet.write_fleet(root / "fleet.yaml", nodes=self.names, gpus=gpus,
                                          health={**FAST_HEALTH, **(health or {})},
                                          work_dir=str(self.work / "{node}"))
        spec = yaml.safe_load(self.path.read_text())
        spec["ssh"]["connect_timeout"] = connect_timeout
        self.path.write_text(yaml.safe_dump(spec, sort_keys=False))
        self.db = root / "state.db"
        self.fleet = load_fleet(self.path)
        self.blackholed: set[str] = set()
        self.passes = 0

    # -- driving gridctl

    def cli(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        """The real CLI with `-f FLEET` right after the verb (`run` takes no options after its
        arguments)."""
        verb = 2 if args[0] == "describe" else 1
        res = gridctl(*args[:verb], "-f", self.path, *args[verb:], timeout=timeout)
        assert "Traceback" not in res.stderr, res.stderr
        return res

    def run_job(self, spec: dict) -> subprocess.CompletedProcess:
        """`gridctl run -f FLEET job.yaml`; the run itself places and starts the job."""
        path = self.root / "jobs" / f"{spec['name']}.yaml"
        path.parent.mkdir(exist_ok=True)
        path.write_text(yaml.safe_dump(spec, sort_keys=False))
        res = self.cli("run", str(path))
        assert res.returncode == 0, res.stdout + res.stderr
        return res

    def reconcile(self) -> PassReport:
        """One pass in this process (as `gridctl reconcile` does it), then the store invariant."""
        lock = PassLock(self.db)
        deadline = time.monotonic() + 30
        while not lock.acquire():
            assert time.monotonic() < deadline, "pass lock held for 30s"
            time.sleep(0.1)
        transports = Transports(keep=False)
        conn = connect(self.db)
        try:
            report = reconcile_once(self.fleet, conn, transports, self.db.parent)
        finally:
            lock.release()
            transports.close()
            conn.close()
        self.passes += 1
        assert_one_running_per_replica(self.attempts())
        return report

    def reconcile_until(self, done, timeout: float = 20.0, pause: float = 0.3, what: str = "") -> int:
        """Passes until done() is true; returns how many it took."""
        deadline = time.monotonic() + timeout
        n = 0
        while True:
            self.reconcile()
            n += 1
            if done():
                return n
            assert time.monotonic() < deadline, f"not reached after {n} passes: {what or done}\n{self.summary()}"
            time.sleep(pause)

    # -- faults

    def ip(self, name: str) -> str:
        return self.sim.nodes[name]["host"]

    def blackhole(self, name: str) -> None:
        self.sim.blackhole(self.ip(name))
        self.blackholed.add(name)

    def unblackhole(self, name: str) -> None:
        self.sim.unblackhole(self.ip(name))
        self.blackholed.discard(name)

    # -- what the store says

    def _read(self, fn):
        conn = connect(self.db)
        try:
            return fn(conn)
        finally:
            conn.close()

    def jobs(self) -> dict[str, JobRecord]:
        return self._read(lambda c: queries.load_jobs(c))

    def job(self, name: str) -> JobRecord:
        return self.jobs()[name]

    def attempts(self, job: str | None = None) -> list[Attempt]:
        return self._read(lambda c: queries.load_attempts(c, jobs=None if job is None else [job]))

    def nodes(self) -> dict[str, NodeRecord]:
        return self._read(lambda c: queries.load_nodes(c))

    def live(self, job: str) -> list[Attempt]:
        return [a for a in self.attempts(job) if a.state.live]

    def running(self, job: str) -> list[Attempt]:
        return [a for a in self.attempts(job) if a.state is AttemptState.RUNNING]

    def describe(self, job: str) -> dict:
        code, rows = gridctl_json("describe", "job", job, "-f", self.path)
        assert code == 0
        return rows[0]

    def jobs_json(self) -> dict[str, dict]:
        code, rows = gridctl_json("jobs", "-f", self.path)
        assert code == 0
        return by_name(rows)

    def integrity(self) -> str:
        conn = sqlite3.connect(str(self.db))
        try:
            return conn.execute("PRAGMA integrity_check").fetchone()[0]
        finally:
            conn.close()

    def summary(self) -> str:
        lines = []
        for j in self.jobs().values():
            lines.append(f"job {j.name}: {j.state.value} ({j.reason})")
            for a in self.attempts(j.name):
                lines.append(f"  {a.id} r{a.replica} {a.node} {a.state.value}: {a.reason}")
        lines += [f"node {n.name}: {n.state.value}/{n.health.value} {n.reason}" for n in self.nodes().values()]
        lines.append("alive on nodes: " + ", ".join(f"{p.attempt}@{p.node}" for p in self.alive()))
        return "\n".join(lines)

    # -- what runs on the nodes

    def pid_files(self) -> list[tuple[str, str, Path]]:
        return [(p.parent.parent.parent.name, p.parent.name, p)
                for p in sorted(self.work.glob("*/attempts/*/pid"))]

    def alive(self) -> list[Proc]:
        """Attempts whose process group (the setsid wrapper's pid) has a live, non-zombie member."""
        pids, groups = _proc_table()
        out = []
        for node, attempt, path in self.pid_files():
            try:
                pid = int(path.read_text().strip())
            except (OSError, ValueError):
                continue
            if pid in groups or pid in pids:
                out.append(Proc(node, attempt, pid))
        return out

    def alive_by_replica(self) -> Counter:
        """(job, replica) -> how many copies are alive on the nodes."""
        replica = {a.id: a.replica for a in self.attempts()}
        return Counter((p.job, replica.get(p.attempt, -1)) for p in self.alive())

    def alive_ids(self, job: str | None = None) -> list[str]:
        return sorted(p.attempt for p in self.alive() if job is None or p.job == job)

    def output(self, attempt_id: str, stream: str = "stdout") -> str:
        node = next(a.node for a in self.attempts() if a.id == attempt_id)
        path = self.work / node / "attempts" / attempt_id / stream
        return path.read_text() if path.exists() else ""

    def attempt_file(self, attempt: Attempt, name: str) -> Path:
        return self.work / attempt.node / "attempts" / attempt.id / name

    # -- teardown

    def close(self) -> None:
        for name in list(self.blackholed):
            self.unblackhole(name)
        from gridctl.launcher import local_attempt_pid
        for _, _, path in self.pid_files():
            pid = local_attempt_pid(path.parent)      # never a pid since handed to someone else
            if pid is None:
                continue
            try:
                os.killpg(pid, signal.SIGKILL)
            except OSError:
                pass


def assert_one_running_per_replica(attempts: list[Attempt]) -> None:
    """At no time two attempts of one replica are `running` in the store."""
    running = Counter((a.job, a.replica) for a in attempts if a.state is AttemptState.RUNNING)
    double = {k: v for k, v in running.items() if v > 1}
    assert not double, f"two running attempts of one replica in the store: {double}"


def messages(described: dict, kind: str) -> list[str]:
    return [e["message"] for e in described["events"] if e["kind"] == kind]


@contextlib.contextmanager
def lab_factory(fleet, root: Path, *, reconcile: bool = True, **defaults):
    """make(prefix, **kw) -> a JobLab under root/prefix (nodes made ready by a first pass unless
    reconcile=False); every lab made is closed (blackholes lifted, processes ended) on exit."""
    made: list[JobLab] = []

    def make(prefix: str, **kw) -> JobLab:
        lab = JobLab(fleet, root / prefix, prefix, **{**defaults, **kw})
        made.append(lab)
        if reconcile:
            lab.reconcile()          # nodes provisioning -> ready
        return lab

    try:
        yield make
    finally:
        for lab in made:
            lab.close()
