"""Step 1 of a pass: everything the plan needs from the store, read in one read transaction.

Called by reconcile_once before any network I/O. The snapshot is consistent (one BEGIN ...
COMMIT); a user's command that commits afterwards is seen by the next pass, and the pass's own
writes never undo it (user flags are columns a pass does not write).
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass

from ..jobspec import JobSpec
from ..models import Attempt, AttemptState, JobRecord, LogPosition, NodeRecord, ReadyTarget, service_host
from ..store import queries, read_tx
from .jobs import parse_specs

PARTITION_KEY = "partitions"
BACKOFF_PREFIX = "backoff:"


@dataclass(frozen=True)
class Facts:
    read_at: float
    nodes: dict[str, NodeRecord]
    jobs: dict[str, JobRecord]                    # active jobs (pending, running, or with live attempts)
    specs: dict[str, JobSpec | None]              # their parsed specs; None: unreadable by this version
    attempts: tuple[Attempt, ...]                 # every attempt of the active jobs
    unreaped: tuple[Attempt, ...]                 # attempts whose directory on the node is not marked done
    history: tuple[Attempt, ...]                  # attempts of any job that ended within the lemon window
    positions: dict[str, LogPosition]             # where each node's next kernel-log read starts (per boot)
    key: bytes                                    # the store's secret behind every attempt token
    partitions: frozenset[str]                    # scopes the previous pass saw partitioned
    open_launches: dict[str, tuple[str, int, float]]   # pool -> (request id, count, since): unconfirmed
    backoff: dict[str, float]                     # pool -> rests until
    last_work: dict[str, float]                   # node -> when its latest attempt ended

    def kill_lists(self) -> dict[str, tuple[str, ...]]:
        """Per node, the attempts gridctl ended whose directories the node has not yet marked done:
        its probe kills any still alive (fencing) and marks them."""
        out: dict[str, list[str]] = {}
        for a in self.unreaped:
            if not a.state.live:
                out.setdefault(a.node, []).append(a.id)
        return {node: tuple(ids) for node, ids in out.items()}

    def ready_targets(self) -> list[ReadyTarget]:
        """Every running replica of a service that declares readiness: checked beside the sweep."""
        out = []
        for a in self.attempts:
            spec = self.specs.get(a.job)
            if a.state is not AttemptState.RUNNING or a.port is None or spec is None or spec.readiness is None:
                continue
            node = self.nodes.get(a.node)
            r = spec.readiness
            out.append(ReadyTarget(a.id, service_host(node.host if node else None), a.port, r.http, r.timeout))
        return out


def read_facts(conn: sqlite3.Connection, *, lemon_window_s: float, now: float) -> Facts:
    with read_tx(conn):
        jobs = queries.load_jobs(conn, active_only=True)
        partitions = queries.get_meta(conn, PARTITION_KEY)
        return Facts(
            read_at=now,
            nodes=queries.load_nodes(conn),
            jobs=jobs,
            specs=parse_specs(jobs),
            attempts=tuple(queries.load_attempts(conn, jobs=list(jobs))),
            unreaped=tuple(queries.load_attempts(conn, unreaped=True)),
            history=tuple(queries.load_attempts(conn, jobs=[], since=now - lemon_window_s)),
            positions=queries.kernel_log_positions(conn),
            key=queries.attempt_key(conn),
            partitions=frozenset(partitions.split(",")) if partitions else frozenset(),
            open_launches=queries.open_launches(conn),
            backoff={k[len(BACKOFF_PREFIX):]: float(v) for k, v in queries.meta_with_prefix(conn, BACKOFF_PREFIX).items()},
            last_work=queries.last_work_by_node(conn),
        )
