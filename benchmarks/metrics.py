#!/usr/bin/env python3
"""Benchmark the metrics exposition on a large store: what one scrape costs.

    python benchmarks/metrics.py [--nodes 500] [--gpus 8] [--jobs 300] [--repeat 5]

Fills a temporary store (real SQLite, the named write operations) with N nodes of G GPUs, each with
a latest observation, and J jobs with two attempts each (one moved off a failed node). Then it
measures, median of --repeat:
  1. one scrape in-process: the store read (one read transaction) and the exposition text;
  2. `gridctl metrics -f fleet.yaml` as a process (start-up included), and with `--textfile`.
It prints figures (series, bytes, milliseconds) and never asserts timings.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from gridctl.metrics.exporter import exposition, store_registry  # noqa: E402
from gridctl.models import (Attempt, AttemptState, Contact, Event, GpuReading, Health, JobRecord, JobState,  # noqa: E402
                            NodeRecord, NodeState, Observation, Outcome, PassRecord, Verdict)
from gridctl.store import connect, queries, write_tx  # noqa: E402

GRIDCTL = [sys.executable, "-c", "from gridctl.cli import main; main()"]


def fill(root: Path, nodes: int, gpus: int, jobs: int) -> Path:
    (root / "fleet.yaml").write_text(f"fleet: bench\nstate: {root}/state.db\npools:\n  - name: sim\n    provider: local\n"
                                     f"    count: 1\n    dir: {root}/nodes\n    gpu: {{type: H100, count: {gpus}}}\n")
    conn = connect(root / "state.db")
    now = time.time()
    with write_tx(conn):
        for i in range(nodes):
            name = f"gpu-{i:04d}"
            state = NodeState.QUARANTINED if i % 50 == 0 else NodeState.READY
            queries.save_node(conn, NodeRecord(name, f"pool-{i % 4}", "ssh", f"10.0.{i // 250}.{i % 250}", 22,
                                               state=state, health=Health.HEALTHY, gpus_expected=gpus,
                                               gpus_seen=gpus, last_good=now - 30), now)
            readings = tuple(GpuReading(index=g, uuid=f"GPU-{i:08d}-{g:04d}", temperature_c=40.0 + g,
                                        utilization_pct=50.0, memory_used_mib=1000 * g, memory_total_mib=81559,
                                        power_w=300.0) for g in range(gpus))
            obs = Observation(node=name, contact=Contact.OK, started_at=now - 5, duration_s=0.4, gpus=readings,
                              complete=True)
            queries.record_observation(conn, obs, Verdict(Health.HEALTHY, (), "healthy"))
        for j in range(jobs):
            name = f"job-{j}"
            queries.insert_job(conn, JobRecord(name, {"class": ("service", "batch", "training")[j % 3]},
                                               JobState.RUNNING, created_at=now, updated_at=now))
            first, second = f"gpu-{(2 * j) % nodes:04d}", f"gpu-{(2 * j + 1) % nodes:04d}"
            queries.save_attempt(conn, Attempt(f"{name}.1", name, 1, 0, first, AttemptState.LOST, started_at=now - 60,
                                               ended_at=now - 20, outcome=Outcome.NODE, created_at=now - 60))
            queries.save_attempt(conn, Attempt(f"{name}.2", name, 2, 0, second, AttemptState.RUNNING,
                                               started_at=now - 18, created_at=now - 19))
            queries.add_events(conn, [Event(now - 20, "attempt-ended", f"attempt {name}.1 on {first} lost", job=name)])
        queries.record_pass(conn, PassRecord("bench", 1, "loop", 15.0, now - 1.0, 1.0, nodes=nodes))
    conn.close()
    return root / "fleet.yaml"


def median_ms(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--nodes", type=int, default=500)
    ap.add_argument("--gpus", type=int, default=8)
    ap.add_argument("--jobs", type=int, default=300)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="gridctl-metrics-bench-"))
    try:
        fleet = fill(root, args.nodes, args.gpus, args.jobs)
        registry, collector = store_registry(root / "state.db")
        text = exposition(registry)
        series = sum(1 for line in text.splitlines() if line and not line.startswith(b"#"))
        print(f"store: {args.nodes} nodes x {args.gpus} GPUs, {args.jobs} jobs; exposition {series} series, "
              f"{len(text) / 1024:.0f} KiB")
        print(f"one scrape in-process (store read + text): median {median_ms(lambda: exposition(registry), args.repeat):.0f} ms "
              f"of {args.repeat}")
        collector.close()
        run = lambda *extra: subprocess.run([*GRIDCTL, "metrics", "-f", str(fleet), *extra], check=True,  # noqa: E731
                                            stdout=subprocess.DEVNULL, cwd=REPO)
        print(f"`gridctl metrics` process: median {median_ms(run, args.repeat):.0f} ms of {args.repeat}")
        prom = root / "out.prom"
        print(f"`gridctl metrics --textfile`: median {median_ms(lambda: run('--textfile', str(prom)), args.repeat):.0f} ms "
              f"of {args.repeat}")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
