"""The metrics' read side (gridctl/metrics/snapshot.py): counts and latest values, SQL only here.
Reads; no transaction needed (the snapshot takes one read transaction around them all)."""

from __future__ import annotations

import sqlite3

from ..models import Attempt
from .queries import _attempt_from_row

def job_counts(conn: sqlite3.Connection) -> dict[tuple[str, str], int]:
    """(class, state) -> how many jobs."""
    rows = conn.execute("SELECT class, state, COUNT(*) AS n FROM jobs GROUP BY class, state")
    return {(r["class"], r["state"]): r["n"] for r in rows}


def job_restarts(conn: sqlite3.Connection) -> dict[str, int]:
    """class -> node-failure requeues of its jobs so far (the jobs table's `restarts`)."""
    rows = conn.execute("SELECT class, SUM(restarts) AS n FROM jobs GROUP BY class")
    return {r["class"]: r["n"] or 0 for r in rows}


def attempt_counts(conn: sqlite3.Connection) -> tuple[dict[str, int], dict[tuple[str, str], int]]:
    """(class -> attempts confirmed started, (class, outcome) -> attempts ended), over the attempts kept."""
    started = {r["class"]: r["n"] for r in conn.execute(
        "SELECT j.class, COUNT(*) AS n FROM attempts a JOIN jobs j ON j.name = a.job"
        " WHERE a.started_at IS NOT NULL GROUP BY j.class")}
    ended = {(r["class"], r["outcome"]): r["n"] for r in conn.execute(
        "SELECT j.class, a.outcome, COUNT(*) AS n FROM attempts a JOIN jobs j ON j.name = a.job"
        " WHERE a.outcome != '' GROUP BY j.class, a.outcome")}
    return started, ended


def latest_probe_durations(conn: sqlite3.Connection) -> dict[str, float]:
    """node -> how long its latest probe took."""
    rows = conn.execute("SELECT node, duration_s FROM observations WHERE id IN "
                        "(SELECT MAX(id) FROM observations GROUP BY node)")
    return {r["node"]: r["duration_s"] for r in rows}


def last_healthy_probe_before(conn: sqlite3.Connection, node: str, before: float) -> float | None:
    """When the latest probe of `node` that found it healthy, before `before`, started (None when
    the kept history, OBSERVATIONS_KEPT per node, no longer reaches back that far)."""
    row = conn.execute("SELECT MAX(time) AS t FROM observations WHERE node = ? AND time < ? AND health = 'healthy'",
                       (node, before)).fetchone()
    return row["t"]


def latest_node_failure_attempt(conn: sqlite3.Connection) -> Attempt | None:
    """The attempt most recently taken off its node because the node failed or fell silent: silent
    now, or ended with the `node` outcome, or `superseded` (its replacement took over while the node
    was silent); the latest by when it went silent or ended."""
    row = conn.execute("SELECT * FROM attempts WHERE silent_since IS NOT NULL OR outcome IN ('node', 'superseded')"
                       " ORDER BY COALESCE(silent_since, ended_at) DESC, id DESC LIMIT 1").fetchone()
    return _attempt_from_row(row) if row else None
