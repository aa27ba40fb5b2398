"""`gridctl demo`: a temporary fleet of simulated nodes, a mix of jobs, two faults, the recovery.

Called by cli/demo.py. No special path: the demo records jobs as `gridctl run` does, runs the real
reconcile loop (reconcile/loop.Loop) on `provider: local` nodes, and injects faults by changing the
simulated nodes' state files (providers.local.write_node), exactly as `gridctl chaos` does.

Its service (`web`) is routed: two replicas of demo_replica.py with an HTTP readiness check, the
builtin router (`gridctl route web`) as a child process, and a paced load through the router from
the moment both replicas are ready to the end (demo_traffic.py). Each fault is injected on a node
that runs a replica of `web` while there is one. Simulated nodes share this machine, so a node that
goes `down` would leave its processes serving: the demo freezes them (SIGSTOP), as a dead node's
processes are gone from the network, and kills them once every job has moved (Demo._signal);
`gridctl chaos down` does neither.
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from . import demo_replica
from .demo_traffic import FaultWindow, Traffic, fault_figures
from .failover import failover_times
from .jobspec import JobSpec
from .models import AttemptState
from .reconcile.loop import Loop
from .spec import Fleet, load_fleet
from .store import connect, queries

FAULTS = ("xid79", "hang", "down", "ecc")
NODE_COUNT = 3
ROUTED = "web"                  # the service the demo routes requests to

_JOBS = [
    {"name": ROUTED, "class": "service", "replicas": 2, "gpus": 1,
     "command": f"exec {shlex.quote(sys.executable)} {shlex.quote(demo_replica.__file__)}",
     "port": "auto", "readiness": {"http": "/health", "period": "1s", "timeout": "1s", "failure_threshold": 2,
                                   "ready_timeout": "30s"},
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

_READY_CHECKED = frozenset(j["name"] for j in _JOBS if "readiness" in j)


@dataclass
class Fault:
    node: str
    mode: str
    at: float
    jobs: dict[str, str] = field(default_factory=dict)    # job -> attempt id that was on the node
    attempts: tuple[str, ...] = ()                         # every attempt that ran on the node
    recovered_at: float | None = None                     # every job in `jobs` had recovered

    def window(self) -> FaultWindow:
        return FaultWindow(self.at, self.recovered_at)


@dataclass
class Outcome:
    job: str
    fault: str
    fault_index: int                # in Demo.faults
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
        self.traffic = Traffic(root / "fleet.yaml", ROUTED, root / "route.log")
        self.traffic_note = ""          # why no load ran, when none did

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
        self.traffic.start_router()
        if not self._wait(lambda: self._all_running(), deadline):
            self.status = f"jobs did not all start in time ({ROUTED}: both replicas ready)"
            return
        self._start_load(deadline)
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
            fault.recovered_at = time.time()
            if mode == "down":
                self._signal(fault.node, list(fault.attempts), signal.SIGKILL)
            self.status = f"{mode} on {fault.node}: every affected job recovered"
            self._sleep(2.0, deadline)
        self.status = "done: every affected job recovered"

    def _start_load(self, deadline: float) -> None:
        self._wait(lambda: not self.traffic.router_problem(), min(deadline, time.time() + 10.0))
        why = self.traffic.router_problem()
        if why:
            self.traffic_note = f"the router did not start ({why}): no requests were sent"
            self.say(f"demo: {self.traffic_note}")
            return
        self.traffic.start_load(budget_s=max(1.0, deadline - time.time()) + 30.0)
        self.say(f"demo: {ROUTED} is ready: ~{self.traffic.rate_per_s:g} requests/s through `gridctl route {ROUTED}` "
                 f"on {self.traffic.url}")

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
        """Every job runs all its replicas; a service with readiness only counts its ready ones."""
        jobs, attempts, _ = self._read()
        live = {}
        for a in attempts:
            if _serving(a):
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
        # a node with a replica of the routed service first, so the router's figures show a failover
        node = max(sorted(load), key=lambda n: (any(a.job == ROUTED for a in load[n]), len(load[n])))
        fault = Fault(node, mode, time.time(), {a.job: a.id for a in load[node]}, tuple(a.id for a in load[node]))
        write_node(self.root / "nodes" / node, node, gpus=4, mode=mode)
        if mode == "down":
            self._signal(node, list(fault.attempts), signal.SIGSTOP)
        self.faults.append(fault)
        self.say(f"demo: injected {mode} on {node} (running {', '.join(sorted(fault.jobs))})")
        return fault

    def _signal(self, node: str, attempt_ids: list[str], sig: int) -> None:
        """Signal the process groups of these attempts on a simulated node, each by the pid in its
        attempt dir once /proc shows that pid started when the dir says (its pid_start).

        A node that goes down takes its processes off the network: SIGSTOP freezes them, so a
        router's requests to them go unanswered as to a dark node. Once every job has moved they
        are killed: simulated nodes share one address, and a frozen replica would keep its port
        from the replacements placed after gridctl gave up on it."""
        for attempt_id in attempt_ids:
            pid = _attempt_pid(self.root / "nodes" / node / "work" / "attempts" / attempt_id)
            if pid is not None:
                try:
                    os.killpg(pid, sig)
                except (ProcessLookupError, PermissionError):
                    pass

    def _recovered(self, fault: Fault) -> bool:
        _, attempts, _ = self._read()
        for job in fault.jobs:
            if not any(a.job == job and a.node != fault.node and _serving(a)
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
        for n, fault in enumerate(self.faults):
            # the routed service first: the router's figures go on each fault's first row
            for job, attempt_id in sorted(fault.jobs.items(), key=lambda item: (item[0] != ROUTED, item[0])):
                took = failover_times(fault.at, job, attempt_id, fault.node, events, attempts,
                                      until_ready=job in _READY_CHECKED)
                out.append(Outcome(job, f"{fault.mode} on {fault.node}", n, took.detect_s, took.recover_s,
                                   jobs[job].state.value if job in jobs else "?"))
        return out

    def request_figures(self) -> list:
        """demo_traffic.Figures per fault, from the samples Traffic.stop() collected."""
        return fault_figures(self.traffic.samples, [f.window() for f in self.faults])

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


def _attempt_pid(attempt_dir: Path) -> int | None:
    """The attempt's wrapper pid (launcher.py: its process group) while that process runs: its
    start time in /proc is the one the wrapper wrote to pid_start. None otherwise."""
    try:
        pid = int((attempt_dir / "pid").read_text().strip())
        started = (attempt_dir / "pid_start").read_text().strip()
        stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, ValueError, IndexError):
        return None
    return pid if len(stat) > 19 and stat[19] == started else None


def _serving(a) -> bool:
    """Running, and ready when its job has a readiness check."""
    return a.state is AttemptState.RUNNING and (a.ready or a.job not in _READY_CHECKED)


def new_root() -> Path:
    return Path(tempfile.mkdtemp(prefix="gridctl-demo-"))


def remove_root(root: Path) -> None:
    shutil.rmtree(root, ignore_errors=True)
