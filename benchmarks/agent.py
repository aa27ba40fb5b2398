#!/usr/bin/env python3
"""Resident node agent vs the sh probe: prints figures, asserts nothing (issue 13).

    PYTHONPATH=. python benchmarks/agent.py --nodes 100 [--passes 3] [--idle-s 5] [--local] [--xid-reps 5]

Over a real sshd on loopback (tests/fleetsim.py) unless --local (simulated nodes as subprocesses):
  fresh sh pass:   Transports(keep=False), one sweep: a new SSH connection and one sh exec per node;
  reused sh pass:  kept connections, one sh exec per node (the loop before the agent);
  agent pass:      kept agent sessions, one probe request per node (after the sessions started).
Every sweep reads each node's kernel log from where the previous one stopped, as loop passes do.
Client CPU is this process's CPU (all threads) per sweep. Node-side CPU is the CPU of every process
below the sshd listener (or below this process with --local): utime+stime of the live ones plus what
their parents reaped (cutime+cstime), before and after. Idle: CPU of both sides over --idle-s with
the N agent sessions open. --xid-reps: an in-process loop with --interval 10s over 2+reps nodes and one
service job; per rep an XID 79 is injected through the fake NVML on the job's node and the time to a
replacement attempt `running` in the store is measured (agent path, then the sh path for comparison).
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "tests" / "integration"))

from gridctl.reconcile.observe import Transports, sweep, take_inventory  # noqa: E402
from gridctl.models import LogPosition  # noqa: E402
from gridctl.spec import load_fleet  # noqa: E402

HZ = os.sysconf("SC_CLK_TCK")


def tree_cpu(root: int, own: bool) -> float:
    """CPU seconds of root's descendants (live, plus reaped into their parents); root's own time only
    when `own` (the sshd listener), never for this process."""
    parent, times = {}, {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            raw = open(f"/proc/{name}/stat").read()
        except OSError:
            continue
        rest = raw[raw.rfind(")") + 2:].split()
        parent[int(name)] = int(rest[1])
        times[int(name)] = [int(x) for x in rest[11:15]]       # utime stime cutime cstime
    total = sum(times.get(root, [0, 0, 0, 0])[2:]) + (sum(times.get(root, [0, 0])[:2]) if own else 0)
    for pid in times:
        p, seen = parent.get(pid), 0
        while p and p != root and seen < 64:
            p, seen = parent.get(p), seen + 1
        if p == root and pid != root:
            total += sum(times[pid])
    return total / HZ


WALL: dict[str, float] = {}
COMPLETE: dict[str, list[int]] = {}      # complete observations per pass
POSITIONS: dict = {}                     # where each node's kernel-log read starts, carried as the loop does


def pass_once(nodes, transports: Transports) -> dict:
    """One sweep as a loop pass makes it: each node's kernel log read from where the last read stopped
    (the loop takes that from the store; here from the previous sweep's observations)."""
    obs = sweep(nodes, transports, probe_timeout=10, concurrency=64, positions=POSITIONS)
    POSITIONS.update({name: LogPosition(o.boot_id, o.uptime_s) for name, o in obs.items()
                      if o.boot_id and o.uptime_s is not None})
    return obs


def measure(nodes, transports: Transports, passes: int, root: int, own: bool, name: str = "") -> tuple[float, float]:
    """(median client CPU per sweep, node CPU per sweep) over `passes` sweeps; median wall in WALL[name]."""
    client, walls, n0, answered = [], [], tree_cpu(root, own), []
    for _ in range(passes):
        t0, w0 = time.process_time(), time.monotonic()
        obs = pass_once(nodes, transports)
        client.append(time.process_time() - t0)
        walls.append(time.monotonic() - w0)
        answered.append(sum(o.complete for o in obs.values()))
    WALL[name] = statistics.median(walls)
    COMPLETE[name] = answered
    return statistics.median(client), (tree_cpu(root, own) - n0) / passes


def cpu_figures(nodes, passes: int, idle_s: float, root: int, own: bool) -> None:
    fresh_c, fresh_n = measure(nodes, Transports(keep=False), passes, root, own, "fresh")
    kept = Transports(keep=True)
    pass_once(nodes, kept)
    sh_c, sh_n = measure(nodes, kept, passes, root, own, "sh")
    kept.close()
    agents = Transports(agent=True)
    t0, n0 = time.process_time(), tree_cpu(root, own)
    first = pass_once(nodes, agents)
    start_c, start_n = time.process_time() - t0, tree_cpu(root, own) - n0
    on_agent = sum(o.probe_path == "agent" for o in first.values())
    warm = 0           # agents slow to start (many on few cores) join at a later pass: measure the steady state
    while on_agent < len(nodes) and warm < 6:
        time.sleep(2)
        warm += 1
        on_agent = sum(o.probe_path == "agent" for o in pass_once(nodes, agents).values())
    ag_c, ag_n = measure(nodes, agents, passes, root, own, "agent")
    t0, n0 = time.process_time(), tree_cpu(root, own)
    time.sleep(idle_s)
    idle_c, idle_n = (time.process_time() - t0) / idle_s, (tree_cpu(root, own) - n0) / idle_s
    agents.close()
    print(f"{len(nodes)} nodes, {passes} passes per figure; {on_agent} nodes on the agent path "
          f"after {warm} warm-up pass(es) following the start-up pass")
    print(f"fresh sh pass:   client CPU {fresh_c:.3f}s  node CPU {fresh_n:.3f}s  wall {WALL['fresh']:.2f}s")
    print(f"reused sh pass:  client CPU {sh_c:.3f}s  node CPU {sh_n:.3f}s  wall {WALL['sh']:.2f}s")
    print(f"agent start-up:  client CPU {start_c:.3f}s  node CPU {start_n:.3f}s (ship + first probe, once)")
    print(f"agent pass:      client CPU {ag_c:.3f}s  node CPU {ag_n:.3f}s  wall {WALL['agent']:.2f}s")
    print(f"complete observations per pass: fresh {COMPLETE['fresh']}, reused sh {COMPLETE['sh']}, "
          f"agent {COMPLETE['agent']} (of {len(nodes)})")
    print(f"idle, {len(nodes)} sessions: client {idle_c * 100:.1f}% of a core, node side {idle_n * 100:.1f}% of a core")
    own_c = max(ag_c - idle_c * WALL["agent"], 0.0)
    print(f"ratios:          client agent/fresh {ag_c / fresh_c:.2f} (less the idle cost over the pass's wall: "
          f"{own_c / fresh_c:.2f}), agent/reused-sh {ag_c / sh_c:.2f}; node agent/reused-sh {ag_n / sh_n:.2f}")


def xid_latency(sim, root: Path, reps: int, agent: bool) -> list[float]:
    """Seconds from an XID 79 (fake NVML event + kernel line) to the replacement attempt running."""
    from jobs_support import LOOP, JobLab
    from gridctl.reconcile.loop import Loop
    from providers.local import inject_xid
    lab = JobLab(sim, root / ("xa" if agent else "xs"), "xa" if agent else "xs", count=reps + 1, gpus=1,
                 health={"interval": "10s"})
    lab.reconcile()
    lab.run_job({"name": "svc", "class": "service", "command": LOOP, "gpus": 1})
    loop = Loop(lab.fleet, lab.db, 10.0, agent=agent)
    thread = loop.start_thread()
    out = []
    try:
        time.sleep(3)
        for _ in range(reps):
            deadline = time.monotonic() + 30
            while len(lab.running("svc")) != 1 and time.monotonic() < deadline:
                time.sleep(0.1)
            if len(lab.running("svc")) != 1:
                print(f"  rep {len(out) + 1}: the service did not settle on one running attempt; stopping")
                break
            [old] = lab.running("svc")
            time.sleep(1 + (len(out) * 2.3) % 9)       # land anywhere in the 10 s cycle
            t0 = time.time()
            inject_xid(lab.sim.node_dir(old.node), 0, 79)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                new = [a for a in lab.running("svc") if a.id != old.id]
                if new:
                    out.append(time.time() - t0)
                    break
                time.sleep(0.02)
    finally:
        loop.stop.set()
        thread.join(30)
        lab.close()
    return out


def silence_latency(sim, root: Path, reps: int) -> list[float]:
    """Seconds from an iptables DROP of a node's address (its agent session goes silent) to the node
    `suspect` in the store, with --interval 10s; the node is released and back `ready` between reps."""
    from jobs_support import JobLab
    from gridctl.models import NodeState
    from gridctl.reconcile.loop import Loop
    lab = JobLab(sim, root / "sil", "sil", count=2, gpus=1, health={"interval": "10s"})
    lab.reconcile()
    loop = Loop(lab.fleet, lab.db, 10.0)
    thread = loop.start_thread()
    out, name = [], lab.names[0]
    try:
        for _ in range(reps):
            deadline = time.monotonic() + 60
            while lab.nodes()[name].state is not NodeState.READY and time.monotonic() < deadline:
                time.sleep(0.2)
            time.sleep(3)
            t0 = time.time()
            lab.blackhole(name)
            try:
                while time.monotonic() < deadline and lab.nodes()[name].state is not NodeState.SUSPECT:
                    time.sleep(0.02)
                if lab.nodes()[name].state is NodeState.SUSPECT:
                    out.append(time.time() - t0)
            finally:
                lab.unblackhole(name)
            loop.nudge.set()
    finally:
        loop.stop.set()
        thread.join(30)
        lab.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--nodes", type=int, default=100)
    ap.add_argument("--passes", type=int, default=3)
    ap.add_argument("--idle-s", type=float, default=5.0)
    ap.add_argument("--local", action="store_true", help="simulated nodes as local subprocesses (no sshd)")
    ap.add_argument("--xid-reps", type=int, default=0)
    ap.add_argument("--no-cpu", action="store_true", help="only the latency figures")
    ap.add_argument("--silence-reps", type=int, default=0, help="iptables DROP -> suspect, N times (root)")
    ap.add_argument("--paths", default="agent,sh", help="XID latency for these paths (default agent,sh)")
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="gridctl-agent-bench-"))
    if args.local:
        from helpers import write_local_fleet
        fleet = load_fleet(write_local_fleet(root, "bench", count=args.nodes, gpus=4))
        try:
            cpu_figures(take_inventory(fleet, root).nodes, args.passes, args.idle_s, os.getpid(), False)
        finally:
            shutil.rmtree(root, ignore_errors=True)
        return
    from fleetsim import SshFleet
    sim = SshFleet(root / "sim").start()
    try:
        names = [f"b{i}" for i in range(args.nodes)]
        for name in names:
            sim.add_node(name, sim.next_ip())
        fleet = load_fleet(sim.write_fleet(root / "fleet.yaml", nodes=names, health={"concurrency": 64}))
        if not args.no_cpu:
            cpu_figures(take_inventory(fleet, root).nodes, args.passes, args.idle_s, sim._proc.pid, True)
        for agent in [p == "agent" for p in args.paths.split(",")] if args.xid_reps else ():
            took = xid_latency(sim, root, args.xid_reps, agent)
            print(f"xid 79 -> replacement running, --interval 10s, {'agent' if agent else 'sh probe'} path: "
                  f"median {statistics.median(took):.2f}s over {len(took)} (all: {', '.join(f'{t:.2f}' for t in took)})"
                  if took else "xid latency: no replacement within 30 s")
        if args.silence_reps:
            took = silence_latency(sim, root, args.silence_reps)
            print(f"agent session dropped (iptables DROP) -> node suspect, --interval 10s: median "
                  f"{statistics.median(took):.2f}s over {len(took)} (all: {', '.join(f'{t:.2f}' for t in took)})"
                  if took else "silence: the node never became suspect within 60 s")
    finally:
        sim.stop()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
