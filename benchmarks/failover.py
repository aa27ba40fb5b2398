#!/usr/bin/env python3
"""Benchmark gridctl's failover: fault on a node -> its jobs running again elsewhere, with the real CLI.

    python benchmarks/failover.py [--repeat 5] [--fault xid79|ecc|driver|down-blackhole] [--quick]

A simulated fleet over a real sshd (tests/fleetsim.py; 3 nodes x 4 GPUs by default) gets 6 jobs of
mixed classes from `gridctl run`, and `gridctl reconcile --loop --interval 2s` runs as a child. Then,
per repetition: pick the node running the most attempts, wait a random 0..interval (so faults land
anywhere in the loop's cycle), inject the fault, and poll the store
(read-only sqlite, every 0.1 s) until every attempt that ran there has a replacement `running` on
another node. Per affected job it reports
  detect:  fault -> the attempt on the sick node leaves `running` (its ended_at or silent_since),
           or the node's quarantine event, whichever the store records first;
  recover: fault -> the replacement attempt's started_at.
Between repetitions the node is healed (fault removed, `gridctl uncordon`) and the fleet waits for
all nodes `ready` and every job running.

It prints figures and never asserts timings. All traffic goes to 127.0.0.0/8. Everything it starts
(sshd, the loop child, iptables rules, job processes, the temp dir) is cleaned up in finally blocks,
also on Ctrl-C. See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import random
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "benchmarks"))

from sweep import GRIDCTL, background_load, can_blackhole, med, wait_sshd_idle  # noqa: E402

FAULTS = ("xid79", "ecc", "driver", "down-blackhole")
GOAL_S = 5.0                     # goal: recover < 5 s with a 2 s interval
GRACE = "6s"                     # recovery.unreachable_grace of every job
POLL_S = 0.1
RECOVER_LIMIT_S = 60.0           # a repetition whose jobs are not back by then is reported as failed
STEADY_LIMIT_S = 90.0
LOOPBACK = ipaddress.ip_network("127.0.0.0/8")
TICK = ["sh", "-c", "while :; do echo tick; sleep 1; done"]
RESTARTS = 1000                  # batch/training: enough requeues for any number of repetitions

# (name, class, replicas, gpus): 7 GPUs in all, so the jobs of any one node fit on the other two
JOBS = [("svc-web", "service", 2, 1), ("svc-api", "service", 1, 1), ("batch-a", "batch", 1, 1),
        ("batch-b", "batch", 1, 1), ("train-a", "training", 1, 1), ("train-b", "training", 1, 1)]


# ---------------------------------------------------------------- the store, read-only

class Store:
    """Read-only view of the loop's sqlite store (WAL: reading never blocks the writer)."""

    def __init__(self, path: Path):
        self.conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
        self.conn.row_factory = sqlite3.Row

    def nodes(self) -> dict[str, sqlite3.Row]:
        return {r["name"]: r for r in self.conn.execute("SELECT * FROM nodes")}

    def attempts(self) -> list[sqlite3.Row]:
        return list(self.conn.execute("SELECT * FROM attempts ORDER BY job, n"))

    def quarantined_at(self, node: str, since: float) -> float | None:
        row = self.conn.execute("SELECT MIN(time) FROM events WHERE node = ? AND kind = 'node-state' AND "
                                "message LIKE '% -> quarantined:%' AND time >= ?", (node, since)).fetchone()
        return row[0]

    def last_pass(self) -> float | None:
        row = self.conn.execute("SELECT value FROM meta WHERE key = 'last_pass'").fetchone()
        return float(row[0]) if row else None

    def close(self) -> None:
        self.conn.close()


# ---------------------------------------------------------------- children

def gridctl(fleet_path: Path, command: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    # -f right after the command: `gridctl run` takes everything after its first argument as the job
    return subprocess.run([*GRIDCTL, command, "-f", str(fleet_path), *args], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO, stdin=subprocess.DEVNULL)


def start_loop(fleet_path: Path, interval: str, log: Path) -> subprocess.Popen:
    """`gridctl reconcile --loop` in its own session: a terminal Ctrl-C reaches only us; we stop it."""
    return subprocess.Popen([*GRIDCTL, "reconcile", "-f", str(fleet_path), "--loop", "--interval", interval],
                            stdout=open(log, "wb"), stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            cwd=REPO, start_new_session=True, env={**os.environ, "COLUMNS": "200"})


def stop_loop(proc: subprocess.Popen | None) -> str:
    """SIGINT (the loop's own Ctrl-C path), then SIGKILL after 15 s; by PID."""
    if proc is None or proc.poll() is not None:
        return "not running" if proc is None else f"had exited (rc {proc.returncode})"
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(15)
        return f"stopped by SIGINT (rc {proc.returncode})"
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        return "killed (did not stop within 15 s of SIGINT)"


def job_groups(root: Path) -> dict[str, list[int]]:
    """Attempt id -> live (non-zombie) processes of its process group, for attempts started under root.

    The wrapper is started with setsid, so its pid (the attempt's `pid` file) is the group id of
    everything the job runs; the group outlives its leader if only the leader is killed."""
    members: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z":
            members.setdefault(int(fields[2]), []).append(int(entry))
    out = {}
    for pid_file in (root / "work").glob("*/attempts/*/pid"):
        try:
            pgid = int(pid_file.read_text().strip())
        except (OSError, ValueError):
            continue
        if members.get(pgid):
            out[pid_file.parent.name] = members[pgid]
    return out


def _ours(pids: list[int], root: Path) -> bool:
    """At least one process of the group runs a file under root (a guard against a reused pid)."""
    for pid in pids:
        try:
            if str(root).encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                return True
        except OSError:
            continue
    return False


def kill_attempts(root: Path) -> int:
    """SIGKILL every process of every job process group started under root; -> how many groups."""
    groups = {a: pids for a, pids in job_groups(root).items() if _ours(pids, root)}
    for pids in groups.values():
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    return len(groups)


# ---------------------------------------------------------------- fleet and jobs

def setup_fleet(fleet, root: Path, nodes: int, gpus: int, interval: str) -> Path:
    fleet.start()
    fleet.bench_gpus = gpus              # set_mode rewrites a node with this many GPUs
    for i in range(nodes):
        node = fleet.add_node(f"n{i}", fleet.next_ip(), gpus=gpus)
        if ipaddress.ip_address(node["host"]) not in LOOPBACK:
            raise SystemExit(f"refusing: node {node['name']} at {node['host']} is outside 127.0.0.0/8")
    host_pub = Path(str(fleet.host_key) + ".pub").read_text().split()
    with open(fleet.known_hosts, "a") as f:
        for node in fleet.nodes.values():
            f.write(f"[{node['host']}]:{node['port']} {host_pub[0]} {host_pub[1]}\n")
    (root / "spec").mkdir()
    # every node shares one home on this machine: each keeps its attempts in its own work dir
    return fleet.write_fleet(
        root / "spec" / "fleet.yaml", gpus=gpus, fleet="failover", health={"interval": interval},
        ssh={"user": "root", "key": str(fleet.client_key), "host_key_policy": "accept-new",
             "known_hosts": str(fleet.known_hosts), "connect_timeout": "2s", "work_dir": f"{root}/work/{{node}}"})


def submit_jobs(fleet_path: Path, root: Path) -> None:
    (root / "jobs").mkdir()
    for name, cls, replicas, gpus in JOBS:
        recovery = {"unreachable_grace": GRACE}
        if cls != "service":
            recovery["max_restarts"] = RESTARTS
        spec = {"name": name, "class": cls, "command": TICK, "gpus": gpus, "recovery": recovery}
        if replicas > 1:
            spec["replicas"] = replicas
        path = root / "jobs" / f"{name}.yaml"
        path.write_text(yaml.safe_dump(spec, sort_keys=False))
        r = gridctl(fleet_path, "run", "--json", str(path))
        if r.returncode != 0:
            raise RuntimeError(f"gridctl run {name} failed (rc {r.returncode}): {r.stderr.strip()[-500:]}")
        job = json.loads(r.stdout)[0]
        print(f"  {name:8} {cls:8} {replicas}x{gpus} GPU: {job['state']} - {job['reason']}")


def expected_replicas() -> set[tuple[str, int]]:
    return {(name, r) for name, _, replicas, _ in JOBS for r in range(replicas)}


def steady(store: Store) -> tuple[bool, str]:
    """All nodes ready (not cordoned) and exactly one `running` attempt for every replica, none starting."""
    nodes = store.nodes()
    bad = [f"{n}={r['state']}" for n, r in nodes.items() if r["state"] != "ready" or r["cordoned"]]
    live = [a for a in store.attempts() if a["state"] in ("running", "starting", "silent")]
    running = {}
    for a in live:
        if a["state"] == "running":
            running.setdefault((a["job"], a["replica"]), []).append(a["id"])
    other = [f"{a['id']}={a['state']}" for a in live if a["state"] != "running"]
    missing = sorted(expected_replicas() - set(running))
    doubled = [ids for ids in running.values() if len(ids) > 1]
    ok = not bad and not other and not missing and not doubled
    return ok, (f"nodes not ready: {bad}; " if bad else "") + (f"missing: {missing}; " if missing else "") + \
        (f"not running: {other}; " if other else "") + (f"two copies: {doubled}" if doubled else "")


def wait_steady(store: Store, limit: float) -> tuple[float, str]:
    t0 = time.monotonic()
    why = ""
    while time.monotonic() - t0 < limit:
        ok, why = steady(store)
        if ok:
            return time.monotonic() - t0, ""
        time.sleep(0.2)
    return time.monotonic() - t0, why


def pick_node(store: Store, rep: int) -> tuple[str, list[sqlite3.Row]]:
    """The node running the most attempts (ties rotate with the repetition)."""
    by_node: dict[str, list[sqlite3.Row]] = {}
    for a in store.attempts():
        if a["state"] == "running":
            by_node.setdefault(a["node"], []).append(a)
    names = sorted(by_node)
    most = max(len(v) for v in by_node.values())
    tied = [n for n in names if len(by_node[n]) == most]
    node = tied[rep % len(tied)]
    return node, by_node[node]


def inject(fleet, fault: str, node: str) -> None:
    if fault == "down-blackhole":
        fleet.blackhole(fleet.nodes[node]["host"])
    else:
        fleet.set_mode(node, fault, gpus=fleet.bench_gpus)


# ---------------------------------------------------------------- one repetition

@dataclass
class Affected:
    job: str
    replica: int
    old: str                      # attempt id on the sick node
    old_n: int
    detect: float | None = None
    recover: float | None = None
    new: str | None = None
    new_node: str | None = None


@dataclass
class Rep:
    n: int
    fault: str
    node: str
    t0: float
    affected: list[Affected] = field(default_factory=list)
    quarantine: float | None = None
    heal_s: float | None = None   # heal -> steady again
    uncordons: int = 0
    leaked: list[str] = field(default_factory=list)   # ended attempts whose processes still run, after heal
    problem: str = ""


def poll_failover(store: Store, rep: Rep, limit: float) -> None:
    """Poll until every affected attempt has a running replacement on another node (or limit)."""
    deadline = rep.t0 + limit
    while True:
        attempts = store.attempts()
        q = store.quarantined_at(rep.node, rep.t0)
        if q is not None:
            rep.quarantine = q - rep.t0
        for aff in rep.affected:
            old = next(a for a in attempts if a["id"] == aff.old)
            left = [t for t in (old["ended_at"], old["silent_since"]) if t is not None and old["state"] != "running"]
            marks = left + ([q] if q is not None else [])
            if marks and aff.detect is None:
                aff.detect = min(marks) - rep.t0
            if aff.recover is None:
                new = [a for a in attempts if a["job"] == aff.job and a["replica"] == aff.replica
                       and a["n"] > aff.old_n and a["node"] != rep.node and a["state"] == "running"
                       and a["started_at"] is not None]
                if new:
                    aff.new, aff.new_node, aff.recover = new[0]["id"], new[0]["node"], new[0]["started_at"] - rep.t0
        if all(a.recover is not None for a in rep.affected):
            return
        if time.time() > deadline:
            rep.problem = (f"not recovered within {limit:g}s: " +
                           ", ".join(f"{a.job}[{a.replica}]" for a in rep.affected if a.recover is None))
            return
        time.sleep(POLL_S)


def heal(fleet, fleet_path: Path, store: Store, rep: Rep, root: Path) -> None:
    """Remove the fault, release the node (`gridctl uncordon`), wait for the fleet to be steady."""
    t = time.monotonic()
    if rep.fault == "down-blackhole":
        fleet.unblackhole(fleet.nodes[rep.node]["host"])
    else:
        fleet.set_mode(rep.node, "healthy", gpus=fleet.bench_gpus)
    # a node quarantined for a reset-class finding stays there until released; a pass that read the
    # row before the release can write it back, so release again while it is still held
    deadline = time.monotonic() + STEADY_LIMIT_S
    while time.monotonic() < deadline:
        row = store.nodes()[rep.node]
        if row["state"] == "quarantined" and (row["needs_release"] or rep.uncordons == 0):
            r = gridctl(fleet_path, "uncordon", rep.node)
            rep.uncordons += 1
            if r.returncode != 0:
                rep.problem += f"; uncordon failed: {r.stderr.strip()[-200:]}"
            seen = store.last_pass()
            # two passes: the one in flight and one that read the released row
            wait_passes(store, seen, 2, 15.0)
            continue
        if row["state"] == "ready":
            break
        time.sleep(0.2)
    took, why = wait_steady(store, max(1.0, deadline - time.monotonic()))
    rep.heal_s = time.monotonic() - t
    if why:
        rep.problem += f"; not steady {rep.heal_s:.0f}s after heal: {why}"
    # fencing: every attempt gridctl has ended should have no process left by now
    ended = {a["id"] for a in store.attempts() if a["state"] not in ("running", "starting", "silent")}
    rep.leaked = sorted(a for a in job_groups(root) if a in ended)


def wait_passes(store: Store, seen: float | None, n: int, limit: float) -> None:
    deadline = time.monotonic() + limit
    count, last = 0, seen
    while count < n and time.monotonic() < deadline:
        cur = store.last_pass()
        if cur != last:
            count, last = count + 1, cur
        time.sleep(0.1)


def run_rep(fleet, fleet_path: Path, store: Store, n: int, fault: str, phase: float) -> Rep:
    node, running = pick_node(store, n)
    # the fleet turns steady right after a pass writes: without this wait every fault would land at
    # the same point of the loop's cycle
    time.sleep(phase)
    rep = Rep(n, fault, node, 0.0, [Affected(a["job"], a["replica"], a["id"], a["n"]) for a in running])
    rep.t0 = time.time()
    inject(fleet, fault, node)
    poll_failover(store, rep, RECOVER_LIMIT_S)
    line = ", ".join(f"{a.job}[{a.replica}] {_f(a.detect)}/{_f(a.recover)}" for a in rep.affected)
    print(f"rep {n + 1}: {fault} on {node} ({len(rep.affected)} attempts, {phase:.2f}s after steady): "
          f"detect/recover s: {line}"
          + (f"  !! {rep.problem}" if rep.problem else ""))
    sys.stdout.flush()
    return rep


def _f(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}"


# ---------------------------------------------------------------- report

def pass_durations(log: Path) -> list[float]:
    text = log.read_text(errors="replace") if log.exists() else ""
    return [float(m) for m in re.findall(r"^pass (\d+(?:\.\d+)?)s:", text, re.M)]


def show_events(fleet_path: Path, store: Store, rep: Rep) -> None:
    """What gridctl recorded from just before the fault: events of the sick node and the affected
    jobs (`gridctl events --json`) and the sick node's observations (read from the store)."""
    from datetime import datetime
    r = gridctl(fleet_path, "events", "--json", "--since", "5m", "--limit", "400")
    try:
        events = json.loads(r.stdout)
    except json.JSONDecodeError:
        print(f"  (gridctl events failed: rc {r.returncode} {r.stderr.strip()[-300:]})")
        return
    jobs = {a.job for a in rep.affected}
    t0 = time.strftime("%H:%M:%S", time.localtime(rep.t0))
    print(f"  gridctl events --json, sick node {rep.node} and its jobs, from 1 s before the fault ({t0}):")
    for e in events:
        if (e["node"] == rep.node or e["job"] in jobs) and datetime.fromisoformat(e["time"]).timestamp() >= rep.t0 - 1:
            print(f"    {e['time']} {e['kind']:<16} {e['node'] or '-':<4} {e['job'] or '-':<8} {e['message']}")
    print(f"  observations of {rep.node} (probe start relative to the fault, contact, health, probe s, reason):")
    for o in store.conn.execute("SELECT time, contact, health, duration_s, reason FROM observations "
                                "WHERE node = ? AND time >= ? ORDER BY id", (rep.node, rep.t0 - 3)):
        print(f"    {o['time'] - rep.t0:+6.2f}s {o['contact']:<11} {o['health']:<11} {o['duration_s']:5.2f} {o['reason'][:90]}")


def summary(reps: list[Rep], interval: str, passes: list[float]) -> None:
    print("\n== failover per repetition and job (seconds from fault injection) ==")
    print("| rep | fault | node | job | replica | attempt -> replacement | new node | detect s | recover s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for rep in reps:
        for a in rep.affected:
            print(f"| {rep.n + 1} | {rep.fault} | {rep.node} | {a.job} | {a.replica} | {a.old} -> {a.new or '-'} | "
                  f"{a.new_node or '-'} | {_f(a.detect)} | {_f(a.recover)} |")
    det = [a.detect for r in reps for a in r.affected if a.detect is not None]
    rec = [a.recover for r in reps for a in r.affected if a.recover is not None]
    total = sum(len(r.affected) for r in reps)
    quar = [r.quarantine for r in reps if r.quarantine is not None]
    print(f"\njobs affected: {total} over {len(reps)} repetitions; recovered: {len(rec)}; detected: {len(det)}")
    if det:
        print(f"detect  s: median {med(det):.2f}, max {max(det):.2f}")
    if rec:
        print(f"recover s: median {med(rec):.2f}, max {max(rec):.2f}   "
              f"(goal: recover < {GOAL_S:g} s with a {interval} interval; {sum(x < GOAL_S for x in rec)}/{total} under)")
    classes = {name: cls for name, cls, *_ in JOBS}
    for cls in ("service", "batch", "training"):
        xs = [a.recover for r in reps for a in r.affected if a.recover is not None and classes[a.job] == cls]
        if xs:
            print(f"  {cls + ':':9} recover median {med(xs):.2f}, max {max(xs):.2f} ({len(xs)} jobs)")
    slowest = [max((a.recover for a in r.affected if a.recover is not None), default=None) for r in reps]
    print("slowest recover per repetition s (the jobs of one node move in the same pass): "
          + " / ".join(_f(x) for x in slowest))
    if quar:
        print(f"node quarantined s: median {med(quar):.2f}, max {max(quar):.2f} ({len(quar)} of {len(reps)} repetitions)")
    leaks = [len(r.leaked) for r in reps]
    print(f"ended attempts whose processes still ran after the heal (fencing), per repetition: "
          f"{'/'.join(map(str, leaks))}")
    heals = [r.heal_s for r in reps if r.heal_s is not None]
    if heals:
        print(f"heal -> all ready and running again s: median {med(heals):.1f}, max {max(heals):.1f}; "
              f"`gridctl uncordon` calls per heal: {'/'.join(str(r.uncordons) for r in reps)}")
    if passes:
        print(f"reconcile --loop pass duration s (from its output, {len(passes)} passes): median {med(passes):.2f}, "
              f"max {max(passes):.2f}")
    for r in reps:
        if r.problem:
            print(f"PROBLEM rep {r.n + 1}: {r.problem.lstrip('; ')}")


# ---------------------------------------------------------------- main

def _raise(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


@dataclass
class Session:
    """What one run started, so that cleanup can stop exactly that (by PID), whatever point it reached."""

    root: Path
    fleet: object = None
    loop: subprocess.Popen | None = None
    store: Store | None = None

    def close(self) -> None:
        if self.store is not None:
            self.store.close()
        if self.loop is not None:
            print(f"loop: {stop_loop(self.loop)}", file=sys.stderr)
        killed = kill_attempts(self.root)
        if killed:
            print(f"killed {killed} leftover job process group(s)", file=sys.stderr)
        if self.fleet is not None:
            self.fleet.stop()            # iptables rules out, sshd stopped (by PID)
            wait_sshd_idle(self.fleet, timeout=5)


def start(args, s: Session) -> Path:
    """sshd and nodes, the jobs (`gridctl run`), then the loop; returns when the loop holds a steady fleet."""
    from fleetsim import SshFleet
    s.fleet = SshFleet(s.root / "fleet")
    fleet_path = setup_fleet(s.fleet, s.root, args.nodes, args.gpus, args.interval)
    print(f"fleet: sshd on port {s.fleet.port}, nodes "
          f"{', '.join(n + ' ' + v['host'] for n, v in s.fleet.nodes.items())}; work dir {s.root}")
    t = time.monotonic()
    print("submitting (gridctl run):")
    submit_jobs(fleet_path, s.root)
    print(f"  submitted in {time.monotonic() - t:.1f}s")
    s.loop = start_loop(fleet_path, args.interval, s.root / "loop.log")
    s.store = Store(Path(yaml.safe_load(fleet_path.read_text())["state"]))
    # the loop's own passes first (the ones of `gridctl run` are already in the store): faults
    # should meet the loop's steady state, with its SSH connections open
    t = time.monotonic()
    wait_passes(s.store, s.store.last_pass(), 2, STEADY_LIMIT_S)
    _, why = wait_steady(s.store, STEADY_LIMIT_S)
    if why:
        raise RuntimeError(f"fleet not steady {time.monotonic() - t:.0f}s after the loop started: {why}")
    print(f"loop started (pid {s.loop.pid}); 2 loop passes done, all nodes ready and every job running "
          f"after {time.monotonic() - t:.1f}s")
    return fleet_path


def finish(fleet_path: Path, s: Session) -> None:
    """Cancel every job through gridctl (the loop stops the processes itself), then stop the loop."""
    for name, *_ in JOBS:
        gridctl(fleet_path, "cancel", name, "--wait", "0")
    deadline = time.monotonic() + 20
    while job_groups(s.root) and time.monotonic() < deadline:
        time.sleep(0.2)
    left = job_groups(s.root)
    print(f"\njobs cancelled with `gridctl cancel`; attempts with processes still running (waited up to 20 s): "
          f"{len(left)}" + (f" ({', '.join(sorted(left))})" if left else ""))
    print(f"loop: {stop_loop(s.loop)}")
    s.loop = None


def bench(args, s: Session, repeat: int, every: float) -> None:
    rng = random.Random(args.seed)
    fleet_path = start(args, s)
    reps = []
    for n in range(repeat):
        if s.loop.poll() is not None:
            log = (s.root / "loop.log").read_text(errors="replace")
            raise RuntimeError(f"the reconcile loop exited (rc {s.loop.returncode}): {log[-1000:]}")
        rep = run_rep(s.fleet, fleet_path, s.store, n, args.fault, rng.uniform(0, every))
        reps.append(rep)
        if rep.problem or args.events:
            show_events(fleet_path, s.store, rep)
        heal(s.fleet, fleet_path, s.store, rep, s.root)
        print(f"  healed {rep.node} ({rep.uncordons} uncordon): steady again after {rep.heal_s:.1f}s; "
              f"ended attempts with processes still running: {len(rep.leaked)}"
              + (f" ({', '.join(rep.leaked)})" if rep.leaked else "")
              + (f"  !! {rep.problem}" if rep.problem and "heal" in rep.problem else ""))
    summary(reps, args.interval, pass_durations(s.root / "loop.log"))
    finish(fleet_path, s)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeat", type=int, help="fault injections (default 5; --quick: 1)")
    ap.add_argument("--quick", action="store_true", help="one repetition: a smoke test of the benchmark itself")
    ap.add_argument("--fault", choices=FAULTS, default="xid79",
                    help="what to inject (default xid79; down-blackhole needs root and iptables)")
    ap.add_argument("--nodes", type=int, default=3, help="simulated nodes (default 3)")
    ap.add_argument("--gpus", type=int, default=4, help="GPUs per node (default 4)")
    ap.add_argument("--interval", default="2s", help="reconcile --loop --interval (default 2s)")
    ap.add_argument("--events", action="store_true",
                    help="print gridctl's events and the sick node's observations after every repetition")
    ap.add_argument("--seed", type=int, default=1, help="seed of the random wait before each fault (default 1)")
    args = ap.parse_args()
    from gridctl.spec import parse_duration
    try:
        every = parse_duration(args.interval)
    except ValueError as e:
        ap.error(f"--interval: {e}")
    repeat = args.repeat or (1 if args.quick else 5)
    if args.fault == "down-blackhole" and (why := can_blackhole()):
        print(f"--fault down-blackhole needs root and iptables: {why}", file=sys.stderr)
        return 2

    header = (f"gridctl failover benchmark  {time.strftime('%Y-%m-%d %H:%M:%S %Z')}\n"
              f"machine: {os.cpu_count()} CPUs, Python {sys.version.split()[0]}; {args.nodes} nodes x {args.gpus} "
              f"GPUs, fault {args.fault}, {repeat} repetitions, reconcile --loop --interval {args.interval}, "
              f"unreachable_grace {GRACE}; each fault lands a random 0..{every:g}s after the fleet is steady "
              f"(seed {args.seed})")
    return run_session("failover", header, lambda session: bench(args, session, repeat, every))


def run_session(name: str, header: str, body) -> int:
    """Called by this benchmark's main and benchmarks/serving.py: a temporary Session with an empty home for
    the children, signals that reach the cleanup, the header and load figures printed, body(session) run,
    and everything stopped and removed whatever happens. Returns the exit code."""
    # Ctrl-C / kill must reach the finally below, also when started in the background
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _raise)
    signal.signal(signal.SIGHUP, _raise)
    # the prefix keeps sweep.background_load from counting our sshd as someone else's
    session = Session(Path(tempfile.mkdtemp(prefix=f"gridctl-bench-{name}-")))
    old_env = dict(os.environ)
    try:
        # children see an empty home: no ~/.ssh/config, no agent, no real state
        (session.root / "home").mkdir()
        os.environ.update({"HOME": str(session.root / "home"), "XDG_STATE_HOME": str(session.root / "state"),
                           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))})
        for var in ("SSH_AUTH_SOCK", "GRIDCTL_FLEET"):
            os.environ.pop(var, None)
        print(header)
        print(f"before start: {background_load()}")
        body(session)
        print(f"after: {background_load()}")
        return 0
    except (RuntimeError, subprocess.TimeoutExpired) as e:
        print(f"\nerror: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as e:
        print(f"\ninterrupted ({str(e) or 'Ctrl-C'}): cleaning up", file=sys.stderr)
        return 130
    finally:
        session.close()
        os.environ.clear()
        os.environ.update(old_env)
        shutil.rmtree(session.root, ignore_errors=True)

if __name__ == "__main__":
    sys.exit(main())
