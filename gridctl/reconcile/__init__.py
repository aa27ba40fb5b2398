"""One reconcile pass (inventory, observe, judge, record) and the lock that keeps passes single.

Called by `gridctl reconcile` (once or --loop) and, later, `gridctl watch`. A pass recomputes from
what it observes; killing it at any point leaves the store as the last committed pass left it.
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

from ..health import Thresholds
from ..models import Event, NodeRecord
from ..spec import Fleet
from ..store import queries
from .apply import apply_pass, prior_partitions
from .observe import Transports, sweep, take_inventory
from .plan import plan_pass


@dataclass(frozen=True)
class PassReport:
    started: float
    duration_s: float
    nodes: list[NodeRecord]
    events: list[Event]
    partitions: frozenset[str]
    failed_pools: dict[str, str]


class PassLock:
    """fcntl.flock on a file beside the store; the file says who holds it."""

    def __init__(self, db_path: Path):
        self.path = Path(str(db_path) + ".lock")
        self._fd: int | None = None

    def acquire(self) -> bool:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()} {time.time():.0f}\n".encode())
        self._fd = fd
        return True

    def holder(self) -> tuple[int | None, float | None]:
        try:
            pid, since = self.path.read_text().split()
            return int(pid), float(since)
        except (OSError, ValueError):
            return None, None

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


def thresholds(fleet: Fleet) -> Thresholds:
    h = fleet.health
    return Thresholds(unhealthy_after=h.unhealthy_after, recover_after=h.recover_after, stale_after_s=h.stale_after)


def reconcile_once(fleet: Fleet, conn: sqlite3.Connection, transports: Transports, state_dir: Path) -> PassReport:
    """One idempotent pass. Reads the store, does all network I/O with no transaction open, then
    writes the outcome in one short transaction."""
    started = time.time()
    stored = queries.load_nodes(conn)
    since = {name: t - 5 for name, t in queries.last_node_times(conn).items() if t}
    prior = prior_partitions(conn)
    inventory = take_inventory(fleet, state_dir)
    observations = sweep(inventory.nodes, transports, probe_timeout=fleet.health.probe_timeout,
                         concurrency=fleet.health.concurrency, since=since)
    now = time.time()
    plan = plan_pass(stored, inventory.nodes, inventory.failed_pools, observations, now, thresholds(fleet), prior)
    apply_pass(conn, plan, now)
    return PassReport(started, now - started, plan.nodes, plan.events, plan.partitions, inventory.failed_pools)
