"""Record a planned pass in one short write transaction. Called by reconcile_once."""

from __future__ import annotations

import sqlite3

from ..store import queries, write_tx
from .plan import PassPlan

PARTITION_KEY = "partitions"


def apply_pass(conn: sqlite3.Connection, plan: PassPlan, now: float) -> None:
    with write_tx(conn):
        for node in plan.nodes:
            queries.save_node(conn, node, now)
        for name in plan.removed:
            queries.delete_node(conn, name)
        for obs, verdict in plan.observations:
            queries.record_observation(conn, obs, verdict)
        queries.add_events(conn, plan.events)
        queries.set_meta(conn, PARTITION_KEY, ",".join(sorted(plan.partitions)) or None)
        queries.set_meta(conn, "last_pass", repr(now))


def prior_partitions(conn: sqlite3.Connection) -> frozenset[str]:
    value = queries.get_meta(conn, PARTITION_KEY)
    return frozenset(value.split(",")) if value else frozenset()
