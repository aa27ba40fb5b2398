"""Which ended jobs may leave the store (`gridctl delete`, `gridctl prune`, the fleet spec's
`retention:`), and the removal itself.

`why_kept` and `prunable` are pure (tested table-style); `prune_store` runs inside the caller's
write transaction: ops.prune's, or the pass's last one (reconcile.apply.record), in batches.

Fencing decides what may go: an attempt gridctl ended stays on its node's kill list until that
node's probe has killed any copy still alive and marked its dir reaped. Deleting the row earlier
would let a copy that outlived its stop run on unwatched, so a job leaves only once every attempt
is reaped, or ran on a node no longer in the store (no probe goes there). A deleted name leaves
its last attempt number behind (table deleted_jobs), so a new job of that name never reuses an
attempt id, whose dir a node may keep for the attempt's `retention`.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from typing import Iterable

from .models import Attempt, JobRecord
from .store import queries

JOBS_PER_PASS = 100          # retention in a pass removes at most this many jobs ...
EVENTS_PER_PASS = 2000       # ... and events, so a pass stays short however far behind it is
TOMBSTONE_KEEP_S = 366 * 86400.0   # past the longest `retention` an attempt dir can have (365d)


def why_kept(job: JobRecord, unreaped: Iterable[Attempt], known_nodes: set[str]) -> str | None:
    """Why this job may not be deleted now; None if it may. `unreaped`: its attempts whose dirs
    their nodes have not marked done; `known_nodes`: the nodes in the store."""
    if not job.state.terminal:
        return f"job {job.name} is {job.state.value}: only an ended job is deleted (cancel it first, or --force)"
    if job.restart_asked > job.restart_done:
        return f"job {job.name} has a restart waiting for the next pass"
    waiting = sorted({a.node for a in unreaped if a.job == job.name and a.node in known_nodes})
    if waiting:
        return (f"job {job.name}: its copies on {', '.join(waiting)} are not yet confirmed gone (the next probe of "
                f"{'that node' if len(waiting) == 1 else 'those nodes'} kills any still alive and confirms)")
    return None


def prunable(jobs: Iterable[JobRecord], unreaped: Iterable[Attempt], known_nodes: set[str],
             before: float) -> list[str]:
    """The ended jobs last changed before `before` that may be deleted (why_kept is None)."""
    unreaped = list(unreaped)
    return sorted(j.name for j in jobs if j.state.terminal and j.updated_at < before
                  and why_kept(j, unreaped, known_nodes) is None)


@dataclass(frozen=True)
class Pruned:
    jobs: list[str]
    events: int
    kept: int                # ended jobs old enough but kept (copies not yet confirmed gone)


def prune_store(conn: sqlite3.Connection, *, jobs_before: float | None, events_before: float | None, now: float,
                limit: bool = False) -> Pruned:
    """Inside the caller's write_tx: delete the prunable jobs (with their attempts and events) and
    the events older than `events_before`. limit=True: at most one pass's batch."""
    names, kept = [], 0
    if jobs_before is not None:
        old = queries.ended_jobs_before(conn, jobs_before, JOBS_PER_PASS if limit else None)
        unreaped = queries.load_attempts(conn, jobs=[j.name for j in old], unreaped=True) if old else []
        names = prunable(old, unreaped, set(queries.node_states(conn)), jobs_before)
        kept = len(old) - len(names)
        for name in names:
            queries.delete_job(conn, name, now)
    events = 0
    if events_before is not None:
        events = queries.delete_events_before(conn, events_before, EVENTS_PER_PASS if limit else None)
    queries.forget_deleted_jobs(conn, now - TOMBSTONE_KEEP_S)
    return Pruned(names, events, kept)
