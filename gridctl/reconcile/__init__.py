"""One reconcile pass, and the lock that keeps passes single.

Called by reconcile/loop.Loop (`gridctl reconcile`, once or --loop; `watch`; `demo`; and every
command that runs a pass through gridctl.ops). A pass recomputes from what it observes; killing
it at any point leaves the store as the last committed step left it, and the next pass heals.
"""

from __future__ import annotations

import fcntl
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ..models import Event, NodeRecord

if TYPE_CHECKING:
    import sqlite3

    from ..spec import Fleet
    from .observe import Transports

# The pass's steps (act, apply, facts, plan, readiness and what they import: job specs, the store, http)
# are imported by reconcile_once, not here: `gridctl probe` imports .observe, which runs this file first,
# and a one-shot probe needs none of them.


@dataclass(frozen=True)
class PassReport:
    started: float
    duration_s: float
    nodes: list[NodeRecord]
    events: list[Event]
    partitions: frozenset[str]
    failed_pools: dict[str, str]
    launches: int = 0
    stops: int = 0
    probe_s: dict[str, float] = field(default_factory=dict)    # node -> how long its probe took this pass


@dataclass(frozen=True)
class Driver:
    """What runs a pass, recorded with it: a loop (and its interval), `gridctl reconcile` once, or a
    writing command's own pass (`run`, `cancel`...), which supervises nothing after it returns."""

    mode: str = "once"                # loop | once | command
    interval_s: float | None = None


class PassLock:
    """fcntl.flock on a file beside the store; the file says who holds it."""

    def __init__(self, db_path: Path):
        self.path = Path(str(db_path) + ".lock")
        self._fd: int | None = None

    def acquire(self, wait_s: float = 0.0) -> bool:
        """Take the lock, waiting up to wait_s for another pass to release it. False if still held."""
        deadline = time.monotonic() + wait_s
        while not self._try():
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.1)
        return True

    def _try(self) -> bool:
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


def reconcile_once(fleet: Fleet, conn: sqlite3.Connection, transports: Transports, state_dir: Path,
                   driver: Driver = Driver()) -> PassReport:
    """One idempotent pass in five steps: read the facts (one read transaction); observe (inventory
    and probes, no transaction open); plan (pure); apply the plan (one write transaction: attempts
    are recorded `starting` before anything is launched); act, then record the answers (one write
    transaction, plus one per fallback cloud launch intent, written before that call; the pass's own
    row, who ran it and how long it took, is part of that last transaction). Killed
    anywhere, the next pass heals: an attempt recorded `starting` but never launched is found
    missing; an attempt ended in the store but still alive is on its node's kill list until the
    node confirms it is gone."""
    import socket
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from ..models import PassRecord
    from .act import act
    from .apply import apply, record, record_intent
    from .facts import read_facts
    from .observe import sweep, take_inventory
    from .plan import after_actions, plan
    from .readiness import check_all

    started = time.time()
    facts = read_facts(conn, lemon_window_s=fleet.health.lemon_window, now=started)
    inventory = take_inventory(fleet, state_dir)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="gridctl-ready") as beside:
        checking = beside.submit(check_all, facts.ready_targets())
        observations = sweep(inventory.nodes, transports, probe_timeout=fleet.health.probe_timeout,
                             concurrency=fleet.health.concurrency, positions=facts.positions,
                             kill=facts.kill_lists(), key=facts.key)
        checks = checking.result()
    decided = plan(fleet, facts, inventory, observations, time.time(), checks)
    apply(conn, decided)
    writing = threading.Lock()

    def intent(pool: str, request_id: str, count: int) -> None:
        with writing:
            record_intent(conn, pool, request_id, count, time.time())

    results = act(fleet, transports, {n.name: n for n in inventory.nodes}, decided.jobs.launches,
                  decided.jobs.stops, decided.pools.calls, state_dir, intent, facts.key)
    done = time.time()
    answers = after_actions(facts, decided, results, done)
    keep = fleet.retention
    noted = transports.agents.take_events() if transports.agents is not None else []
    record(conn, answers, done, PassRecord(socket.gethostname(), os.getpid(), driver.mode, driver.interval_s,
                                           started, done - started, len(inventory.nodes),
                                           len(decided.jobs.launches), len(decided.jobs.stops)),
           (keep.jobs and done - keep.jobs, keep.events and done - keep.events), noted)
    return PassReport(started, done - started, decided.node_rows, decided.events + answers.all_events + noted,
                      decided.nodes.partitions, inventory.failed_pools, len(decided.jobs.launches),
                      len(decided.jobs.stops), {name: o.duration_s for name, o in observations.items()})
