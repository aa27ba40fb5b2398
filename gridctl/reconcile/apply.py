"""Record a planned pass in short write transactions. Called by reconcile_once.

apply_pass writes the decisions (nodes, observations, attempts recorded `starting` before any
launch, jobs, events); apply_results writes what the launches and stops answered.
"""

from __future__ import annotations

import sqlite3
from dataclasses import replace

from ..models import AttemptState, Event
from ..store import queries, write_tx
from .act import StopResult
from .jobs import JobPlan, Launch, after_launch
from .plan import PassPlan

PARTITION_KEY = "partitions"


def apply_pass(conn: sqlite3.Connection, plan: PassPlan, now: float, jobs: JobPlan | None = None,
               reaped: list[str] = ()) -> None:
    jobs = jobs or JobPlan()
    with write_tx(conn):
        for node in plan.nodes:
            queries.save_node(conn, jobs.nodes.get(node.name, node), now)
        for name in plan.removed:
            queries.delete_node(conn, name)
        for obs, verdict in plan.observations:
            queries.record_observation(conn, obs, verdict)
        queries.add_events(conn, plan.events)
        queries.set_meta(conn, PARTITION_KEY, ",".join(sorted(plan.partitions)) or None)
        queries.set_meta(conn, "last_pass", repr(now))
        for job in jobs.jobs.values():
            queries.save_job(conn, job)
        for attempt in jobs.attempts.values():
            queries.save_attempt(conn, attempt)
        queries.mark_reaped(conn, reaped)
        queries.add_events(conn, jobs.events)


def apply_results(conn: sqlite3.Connection, plan: JobPlan, launched: list[tuple[Launch, object]],
                  stopped: list[StopResult], now: float) -> list[Event]:
    """Confirm launches (running / failed_to_start), finish drain hand-overs, note stops."""
    if not launched and not stopped:
        return []
    events: list[Event] = []
    with write_tx(conn):
        for launch, result in launched:
            job = queries.get_job(conn, launch.attempt.job)
            if job is None:
                continue
            if result.uncertain:
                # the answer was lost, not the launch: the next probe finds the process or its absence
                attempt = replace(launch.attempt, reason=f"launch answer lost ({result.detail}); the next probe decides")
                queries.save_attempt(conn, attempt)
                events.append(Event(now, "attempt-unconfirmed", f"attempt {attempt.id} on {attempt.node}: "
                                    f"{attempt.reason}", node=attempt.node, job=attempt.job, severity="warning"))
                continue
            job, attempt, evs = after_launch(job, launch.attempt, result.ok, result.pid, result.detail, now)
            queries.save_job(conn, job)
            queries.save_attempt(conn, attempt)
            events += evs
            if result.ok:
                for stop in launch.then_stop:
                    old = plan.attempts.get(stop.attempt_id) or next(
                        (a for a in queries.load_attempts(conn, jobs=[launch.attempt.job]) if a.id == stop.attempt_id),
                        None)
                    if old is not None and old.state.live:
                        queries.save_attempt(conn, replace(old, state=AttemptState.KILLED, ended_at=now,
                                                           outcome="drain", reason=f"drained: replaced by attempt {attempt.n}"))
                        events.append(Event(now, "attempt-ended", f"attempt {old.id} on {old.node} killed: drained, "
                                            f"replaced by attempt {attempt.id} on {attempt.node}", node=old.node,
                                            job=old.job))
        for res in stopped:
            s = res.stop
            if res.ok:
                events.append(Event(now, "attempt-stopped", f"stopped {s.attempt_id} on {s.node}: {res.detail}",
                                    node=s.node, job=s.job))
            else:
                events.append(Event(now, "attempt-stop-failed", f"could not stop {s.attempt_id} on {s.node} "
                                    f"({res.detail}): it will be killed when the node answers", node=s.node, job=s.job,
                                    severity="warning"))
        queries.add_events(conn, events)
    return events


def prior_partitions(conn: sqlite3.Connection) -> frozenset[str]:
    value = queries.get_meta(conn, PARTITION_KEY)
    return frozenset(value.split(",")) if value else frozenset()
