"""`gridctl demo`: a temporary fleet of simulated nodes, a mix of jobs, two faults, the recovery.

Called by cli/demo.py. No special path: the demo records jobs as `gridctl run` does, runs the real
reconcile loop (reconcile/loop.Loop) on `provider: local` nodes, and injects faults by changing the
simulated nodes' state files (providers.local.write_node), exactly as `gridctl chaos` does.
"""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from .failover import failover_times
from .jobspec import JobSpec
from .models import AttemptState
from .reconcile.loop import Loop
from .spec import Fleet, load_fleet
from .store import connect, queries

FAULTS = ("xid79", "hang", "down", "ecc")
NODE_COUNT = 3

_JOBS = [
    {"name": "web", "class": "service", "replicas": 2, "gpus": 1,
     "command": "while :; do echo \"serving on $CUDA_VISIBLE_DEVICES\"; sleep 1; done",
     "recovery": {"backoff": "1s", "unreachable_grace": "4s"}},
    {"name": "etl", "class": "batch", "gpus": 1,
     "command": "i=0; while :; do i=$((i+1)); echo \"batch step $i\"; sleep 1; done",
     "recovery": {"backoff": "1s", "unreachable_grace": "4s", "max_restarts": 3}},
    {"name": "train", "class": "training", "gpus": 1,
     "command": ("s=$(cat \"$GRIDCTL_CHECKPOINT_DIR/step\" 2>/dev/null || echo 0); "
                 "echo \"resuming at step $s (restart $GRIDCTL_RESTART_COUNT)\"; "
                 "while :; do s=$((s+1)); echo $s > \"$GRIDCTL_CHECKPOINT_DIR/step\"; echo \"step $s\"; sleep 1; done"),
     "recovery": {"unreachable_grace": "4s", "max_restarts": 3}},
]


@dataclass
class Fault:
    node: str
    mode: str
    at: float
    jobs: dict[str, str] = field(default_factory=dict)    # job -> attempt id that was on the node


@dataclass
class Outcome:
    job: str
    fault: str
    detect_s: float | None
    recover_s: float | None
    state: str


class Demo:
    def __init__(self, root: Path, fault: str, duration: float, say=lambda text: None):
        if fault not in FAULTS:
            raise ValueError(f"--fault: unknown fault {fault!r} (known: {', '.join(FAULTS)})")
        self.root = root
        self.first = fault
        self.second = "down" if fault != "down" else "xid79"
        self.duration = duration
        self.say = say
        self.faults: list[Fault] = []
        self.done = threading.Event()
        self.started = time.time()
        self.status = "starting the fleet"
        spec = {
            "fleet": "demo", "state": str(root / "state.db"),
            "health": {"interval": "1s", "probe_timeout": "3s", "unhealthy_after": 2, "stale_after": "30s"},
            "pools": [{"name": "sim", "provider": "local", "count": NODE_COUNT, "dir": str(root / "nodes"),
                       "gpu": {"type": "H100", "count": 4, "memory_gb": 80}}],
        }
        (root / "fleet.yaml").write_text("# gridctl demo fleet (temporary)\n" + yaml.safe_dump(spec, sort_keys=False))
        self.fleet: Fleet = load_fleet(root / "fleet.yaml")
        self.db_path = root / "state.db"
        self.loop = Loop(self.fleet, self.db_path, 1.0)

    # -- setup

    def submit_jobs(self) -> None:
        from .ops import record_job
        for raw in _JOBS:
            data = dict(raw)
            if data["class"] == "training":
                (self.root / "ckpt").mkdir(exist_ok=True)
                data["checkpoint_dir"] = str(self.root / "ckpt")
            record_job(self.fleet, self.db_path, JobSpec.model_validate(data))

    # -- the scenario, in its own thread

    def scenario(self) -> None:
        try:
            self._scenario()
        finally:
            self.done.set()

    def _scenario(self) -> None:
        deadline = self.started + self.duration
        self.status = "placing jobs"
        if not self._wait(lambda: self._all_running(), deadline):
            self.status = "jobs did not all start in time"
            return
        self._sleep(2.0, deadline)
        for mode in (self.first, self.second):
            if time.time() >= deadline:
                return
            fault = self._inject(mode)
            if fault is None:
                self.status = "no node with jobs left to break"
                return
            self.status = f"injected {mode} on {fault.node}; waiting for gridctl to move {', '.join(fault.jobs)}"
            if not self._wait(lambda: self._recovered(fault), deadline):
                self.status = f"{mode} on {fault.node}: not every job recovered within --duration"
                return
            self.status = f"{mode} on {fault.node}: every affected job recovered"
            self._sleep(2.0, deadline)
        self.status = "done: every affected job recovered"

    def _sleep(self, seconds: float, deadline: float) -> None:
        time.sleep(max(0.0, min(seconds, deadline - time.time())))

    def _wait(self, cond, deadline: float) -> bool:
        while time.time() < deadline:
            if self.loop.error is not None:
                return False
            if cond():
                return True
            time.sleep(0.2)
        return False

    def _read(self):
        conn = connect(self.db_path, create=False)
        try:
            return queries.load_jobs(conn), queries.load_attempts(conn), queries.load_nodes(conn)
        finally:
            conn.close()

    def _all_running(self) -> bool:
        jobs, attempts, _ = self._read()
        live = {}
        for a in attempts:
            if a.state is AttemptState.RUNNING:
                live[a.job] = live.get(a.job, 0) + 1
        return all(live.get(j["name"], 0) >= j.get("replicas", 1) for j in _JOBS)

    def _inject(self, mode: str) -> Fault | None:
        from providers.local import write_node
        _, attempts, nodes = self._read()
        broken = {f.node for f in self.faults}
        load: dict[str, list] = {}
        for a in attempts:
            if a.state is AttemptState.RUNNING and a.node not in broken:
                load.setdefault(a.node, []).append(a)
        if not load:
            return None
        node = max(sorted(load), key=lambda n: len(load[n]))
        fault = Fault(node, mode, time.time(), {a.job: a.id for a in load[node]})
        write_node(self.root / "nodes" / node, node, gpus=4, mode=mode)
        self.faults.append(fault)
        self.say(f"demo: injected {mode} on {node} (running {', '.join(sorted(fault.jobs))})")
        return fault

    def _recovered(self, fault: Fault) -> bool:
        _, attempts, _ = self._read()
        for job in fault.jobs:
            if not any(a.job == job and a.node != fault.node and a.state is AttemptState.RUNNING
                       and (a.started_at or 0) >= fault.at - 0.5 for a in attempts):
                return False
        return True

    # -- the summary

    def outcomes(self) -> list[Outcome]:
        jobs, attempts, _ = self._read()
        conn = connect(self.db_path, create=False)
        try:
            events = queries.list_events(conn, limit=5000)
        finally:
            conn.close()
        out = []
        for fault in self.faults:
            for job, attempt_id in sorted(fault.jobs.items()):
                took = failover_times(fault.at, job, attempt_id, fault.node, events, attempts)
                out.append(Outcome(job, f"{fault.mode} on {fault.node}", took.detect_s, took.recover_s,
                                   jobs[job].state.value if job in jobs else "?"))
        return out

    def final_jobs(self) -> list[tuple[str, str, str, str]]:
        jobs, attempts, _ = self._read()
        rows = []
        for j in jobs.values():
            nodes = sorted({a.node for a in attempts if a.job == j.name and a.state.live})
            rows.append((j.name, j.job_class, j.state.value, ", ".join(nodes) or "-", j.reason))
        return rows

    # -- cleanup

    def request_cancel(self) -> list[str]:
        """--keep (cli/demo.py): ask for every unfinished job's cancel, as `gridctl cancel` does; the
        pass that follows stops the attempts and records them ended. Returns the names, sorted."""
        from .ops import cancel_unfinished
        return cancel_unfinished(self.db_path, by="demo")

    def kill_jobs(self) -> None:
        """End every process the demo's attempts started (by the pids in their attempt dirs)."""
        for pid_file in (self.root / "nodes").glob("*/work/attempts/*/pid"):
            try:
                pid = int(pid_file.read_text().strip())
            except (OSError, ValueError):
                continue
            try:
                os.killpg(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass


def new_root() -> Path:
    return Path(tempfile.mkdtemp(prefix="gridctl-demo-"))


def remove_root(root: Path) -> None:
    shutil.rmtree(root, ignore_errors=True)
