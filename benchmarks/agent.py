"""Resident agent vs sh probe, on simulated (`provider: local`) nodes: prints figures, asserts nothing.

  PYTHONPATH=. python benchmarks/agent.py --nodes 100 --passes 4

Client CPU is this process's CPU (all threads) per sweep; node-side CPU is the CPU of the node-side
processes (sh probe and its tools, or the agents), read as children's rusage once they are reaped:
for the agents that is at close, so their start-up is included, amortised over the passes run.
Local nodes run their commands as subprocesses (no sshd): SSH costs are not in these figures.
"""
from __future__ import annotations

import argparse
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "integration"))

from helpers import write_local_fleet  # noqa: E402

from gridctl.reconcile.observe import Transports, sweep, take_inventory  # noqa: E402
from gridctl.spec import load_fleet  # noqa: E402


def children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def run(nodes, transports: Transports, passes: int) -> tuple[list[float], float, float]:
    """(client CPU of each sweep, node-side CPU per pass, wall per pass) for `passes` sweeps."""
    client, c0, w0 = [], children_cpu(), time.monotonic()
    for _ in range(passes):
        t0 = time.process_time()
        sweep(nodes, transports, probe_timeout=5, concurrency=64)
        client.append(time.process_time() - t0)
    transports.close()
    time.sleep(0.5)
    return client, (children_cpu() - c0) / passes, (time.monotonic() - w0) / passes


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--nodes", type=int, default=100)
    ap.add_argument("--passes", type=int, default=4)
    ap.add_argument("--idle-s", type=float, default=5.0)
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="gridctl-agent-bench-"))
    fleet = load_fleet(write_local_fleet(root, "bench", count=args.nodes, gpus=4))
    nodes = take_inventory(fleet, root).nodes
    sh_client, sh_node, sh_wall = run(nodes, Transports(keep=True), args.passes)
    ag = Transports(agent=True)
    t0 = time.process_time()
    sweep(nodes, ag, probe_timeout=5, concurrency=64)
    start_client = time.process_time() - t0
    i0 = time.process_time()
    time.sleep(args.idle_s)
    idle = (time.process_time() - i0) / args.idle_s
    ag_client, ag_node, ag_wall = run(nodes, ag, args.passes)
    med = statistics.median
    print(f"{args.nodes} local nodes, {args.passes} passes each")
    print(f"sh probe:     client CPU/pass {med(sh_client):.3f}s  node CPU/pass {sh_node:.3f}s  wall/pass {sh_wall:.2f}s")
    print(f"agent start:  client CPU {start_client:.3f}s (ship + first probe)")
    print(f"agent:        client CPU/pass {med(ag_client):.3f}s  node CPU/pass {ag_node:.3f}s (start-up and idle amortised over "
          f"{args.passes} passes, with the idle wait)  wall/pass {ag_wall:.2f}s")
    print(f"ratios:       client agent/sh {med(ag_client) / med(sh_client):.2f}  node agent/sh {ag_node / sh_node:.2f}")
    print(f"idle:         client CPU {idle * 100:.1f}% of a core with {args.nodes} sessions open")


if __name__ == "__main__":
    main()
