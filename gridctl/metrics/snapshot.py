"""What the exported metrics say, read from the store in one read transaction.

Called by metrics.exporter.StoreCollector at every scrape (and once by `gridctl metrics`). Named
queries only (store/queries.py, store/fleetstats.py); nothing here imports prometheus_client.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass

from ..failover import Failover, failover_times
from ..models import NodeRecord
from ..store import fleetstats, queries, read_tx


@dataclass(frozen=True)
class MetricsSnapshot:
    read_at: float
    nodes: tuple[NodeRecord, ...]
    gpus: dict[str, list[dict]]                   # node -> GPU readings of its latest observation
    probe_s: dict[str, float]                     # node -> how long its latest probe took
    jobs: dict[tuple[str, str], int]              # (class, state) -> jobs
    restarts: dict[str, int]                      # class -> node-failure requeues
    started: dict[str, int]                       # class -> attempts confirmed started
    ended: dict[tuple[str, str], int]             # (class, outcome) -> attempts ended
    last_pass_done: float | None                  # when the last completed pass ended
    last_pass_s: float | None                     # how long it took
    partitions: tuple[str, ...]                   # scopes the last pass saw partitioned
    failover: Failover | None                     # the latest attempt moved off a failed node


def read_snapshot(conn: sqlite3.Connection, now: float) -> MetricsSnapshot:
    with read_tx(conn):
        nodes = tuple(queries.load_nodes(conn).values())
        started, ended = fleetstats.attempt_counts(conn)
        done, took = queries.last_pass_done(conn)
        parts = queries.get_meta(conn, "partitions")
        return MetricsSnapshot(
            read_at=now, nodes=nodes,
            gpus={node: readings for node, (_, readings) in queries.latest_gpu_readings(conn).items()},
            probe_s=fleetstats.latest_probe_durations(conn), jobs=fleetstats.job_counts(conn),
            restarts=fleetstats.job_restarts(conn), started=started, ended=ended, last_pass_done=done,
            last_pass_s=took, partitions=tuple(parts.split(",")) if parts else (),
            failover=_last_failover(conn, {n.name: n for n in nodes}))


def _last_failover(conn: sqlite3.Connection, nodes: dict[str, NodeRecord]) -> Failover | None:
    """The latest failover, timed by failover.failover_times from the node's last healthy probe
    before the attempt left it (the store does not know when a fault struck; that probe bounds it)."""
    moved = fleetstats.latest_node_failure_attempt(conn)
    if moved is None:
        return None
    left_at = moved.silent_since or moved.ended_at or 0.0
    fault_at = fleetstats.last_healthy_probe_before(conn, moved.node, left_at)
    node = nodes.get(moved.node)
    if fault_at is None and node is not None and node.last_good is not None and node.last_good < left_at:
        fault_at = node.last_good     # older probes trimmed, but the node has not been healthy since
    if fault_at is None:
        return None
    return failover_times(fault_at, moved.job, moved.id, moved.node,
                          queries.list_events(conn, since=fault_at, job=moved.job),
                          queries.load_attempts(conn, jobs=[moved.job]))
