"""Steps 4 and 6 of a pass: write the plan in one transaction, then the actions' answers in one.

Called by reconcile_once. `apply` writes the decisions (nodes, observations, attempts recorded
`starting` before anything is launched, jobs, events, reaped attempts, new cloud launch intents)
in one BEGIN IMMEDIATE transaction; `record` writes what the launches, stops and cloud calls
answered, as decided by plan.after_actions, and the pass's own row. Neither decides anything.
"""

from __future__ import annotations

import sqlite3

from ..lifecycle import prune_store
from ..models import Event, PassRecord
from ..store import queries, write_tx
from .facts import BACKOFF_PREFIX, PARTITION_KEY
from .plan import Answers, Plan


def apply(conn: sqlite3.Connection, plan: Plan) -> None:
    with write_tx(conn):
        for node in plan.node_rows:
            queries.save_node(conn, node, plan.now)
        for name in plan.nodes.removed:
            queries.delete_node(conn, name)
        for obs, verdict in plan.nodes.observations:
            queries.record_observation(conn, obs, verdict)
        queries.set_meta(conn, PARTITION_KEY, ",".join(sorted(plan.nodes.partitions)) or None)
        queries.set_meta(conn, "last_pass", repr(plan.now))
        for job in plan.jobs.jobs.values():
            queries.save_job(conn, job)
        for attempt in plan.jobs.attempts.values():
            queries.save_attempt(conn, attempt)
        queries.mark_reaped(conn, plan.reaped)
        for pool, request, count in plan.pools.new_intents:
            queries.record_launch(conn, request, pool, count, plan.now)
        queries.add_events(conn, plan.events)


def record_intent(conn: sqlite3.Connection, pool: str, request_id: str, count: int, now: float) -> None:
    """A fallback pool's launch intent, in its own transaction just before that pool is asked."""
    with write_tx(conn):
        queries.record_launch(conn, request_id, pool, count, now)


def record(conn: sqlite3.Connection, answers: Answers, now: float, this_pass: PassRecord,
           retention: tuple[float | None, float | None] = (None, None), noted: list[Event] = ()) -> None:
    """`retention`: (jobs, events) older than these times go, a batch per pass (lifecycle.prune_store).
    `noted`: what the resident agent sessions saw since the last pass (started, lost, pushed XIDs)."""
    with write_tx(conn):
        for job in answers.jobs.values():
            queries.save_job(conn, job)
        for attempt in answers.attempts.values():
            queries.save_attempt(conn, attempt)
        for request, error in answers.pools.finished:
            queries.finish_launch(conn, request, now, error)
        for pool, until in answers.pools.backoff.items():
            queries.set_meta(conn, BACKOFF_PREFIX + pool, repr(until))
        for node in answers.pools.nodes:
            queries.save_node(conn, node, now)
        queries.add_events(conn, answers.all_events)
        queries.add_events(conn, list(noted))
        queries.record_pass(conn, this_pass)
        if retention != (None, None):
            prune_store(conn, jobs_before=retention[0], events_before=retention[1], now=now, limit=True)
