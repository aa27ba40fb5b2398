#!/usr/bin/env python3
"""What the pass's last write transaction costs with its own `passes` row and `retention:`.

    python benchmarks/retention.py [--jobs 20000] [--events 500000] [--repeat 20]

Builds a store with a backlog of ended jobs and events all older than a 30d retention, then times
(median of --repeat) one write transaction as apply.record ends it: the pass row alone; the pass
row plus one retention batch (lifecycle.prune_store, limit=True) while the backlog lasts; and the
same once nothing old is left. Prints figures; asserts nothing. Writes only under a temp dir.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from gridctl.lifecycle import prune_store
from gridctl.models import Event, JobRecord, JobState, PassRecord
from gridctl.store import connect, queries, write_tx

DAY = 86400.0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=20000)
    ap.add_argument("--events", type=int, default=500000)
    ap.add_argument("--repeat", type=int, default=20)
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="gridctl-retention-"))
    conn = connect(root / "state.db")
    now = time.time()
    old = now - 40 * DAY
    try:
        with write_tx(conn):
            for i in range(args.jobs):
                job = JobRecord(name=f"j{i}", spec={"class": "batch"}, state=JobState.SUCCEEDED, created_at=old,
                                updated_at=old + i)
                queries.insert_job(conn, job)
                queries.save_job(conn, job)
            queries.add_events(conn, [Event(old + i, "node-state", "x" * 80, node="n") for i in range(args.events)])

        def one(retention: bool) -> float:
            t = time.perf_counter()
            with write_tx(conn):
                queries.record_pass(conn, PassRecord("bench", 1, "loop", 15.0, now, 1.0, 2))
                if retention:
                    prune_store(conn, jobs_before=now - 30 * DAY, events_before=now - 30 * DAY, now=now, limit=True)
            return time.perf_counter() - t

        def median_ms(retention: bool) -> float:
            return statistics.median(one(retention) for _ in range(args.repeat)) * 1000

        print(f"store: {args.jobs} ended jobs, {args.events} events, all older than the 30d retention")
        print(f"pass row only:                          median {median_ms(False):.2f} ms")
        print(f"pass row + one retention batch:         median {median_ms(True):.2f} ms")
        with write_tx(conn):
            prune_store(conn, jobs_before=now - 30 * DAY, events_before=now - 30 * DAY, now=now)
        print(f"pass row + retention, nothing old left: median {median_ms(True):.2f} ms")
    finally:
        conn.close()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
