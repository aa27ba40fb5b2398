"""Delivery rounds of alert hooks: after a pass, send each hook its new and due events.

Called by reconcile/loop.Loop: in a one-shot pass, one round right after it with a bounded total
time (`round_deadline_s`); in --loop (and watch), a round in `Worker`'s background thread after
each pass, so the next pass never waits for a hook. A round never raises into the pass.

A round, in three steps, with no transaction open while sending:
1. one write transaction: every event the hook has not been offered yet (after its cursor) that it
   wants becomes a pending delivery; each hook's next batch is picked and claimed (marked in
   flight until its timeout has passed, so a concurrent round does not send it too);
2. one request (or command run) per hook with a batch, all at once;
3. one write transaction: each delivery is delivered, pending with a backoff, or failed.
Killed between 2 and 3, the claimed batch is sent again once the claim has run out, with the
same event keys: at least once, never silently dropped.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from ..models import Delivery, Event
from ..store import connect, deliveries, queries, write_tx
from .rules import BATCH_MAX, Hook, Sent, after_send, body, claimed, hook_from_spec, next_batch, wants
from .send import send_all

SCAN_MAX = 500          # events read per step when catching a hook's cursor up


@dataclass(frozen=True)
class Batch:
    hook: Hook
    deliveries: list[Delivery]
    events: list[tuple[int, Event]]


def hooks_of(fleet) -> list[Hook]:
    return [hook_from_spec(spec) for spec in fleet.alerts]


def register(conn: sqlite3.Connection, hooks: list[Hook]) -> None:
    """Record the spec's hooks (a new one is offered only events recorded from now on)."""
    with write_tx(conn):
        for hook in hooks:
            deliveries.ensure_hook(conn, hook.key, hook.label)


def round_deadline_s(hooks: list[Hook]) -> float:
    """The longest a round's sends may take: the slowest hook's timeout, and a little."""
    return max((h.timeout_s for h in hooks), default=0.0) + 1.0


def deliver_round(conn: sqlite3.Connection, fleet_name: str, hooks: list[Hook]) -> list[tuple[Batch, Sent]]:
    """One round (see the module docstring). Returns each batch sent and its answer."""
    if not hooks:
        return []
    batches, store_id = _queue_and_claim(conn, hooks, time.time())
    if not batches:
        return []
    bodies = [(b.hook, *body(b.hook, fleet_name, store_id, b.events)) for b in batches]
    answers = send_all(bodies, round_deadline_s(hooks))
    now = time.time()
    with write_tx(conn):
        for batch, sent in zip(batches, answers):
            deliveries.save(conn, [after_send(d, sent, batch.hook, now) for d in batch.deliveries], now)
    return list(zip(batches, answers))


def _queue_and_claim(conn: sqlite3.Connection, hooks: list[Hook], now: float) -> tuple[list[Batch], str]:
    out: list[Batch] = []
    with write_tx(conn):
        for hook in hooks:
            after = deliveries.ensure_hook(conn, hook.key, hook.label)
            while True:
                offered = queries.events_after(conn, after, limit=SCAN_MAX)
                if not offered:
                    break
                deliveries.queue(conn, hook.key, [i for i, e in offered if wants(hook, e)], now)
                after = offered[-1][0]
                deliveries.set_hook_cursor(conn, hook.key, after)
            batch = next_batch(deliveries.pending(conn, hook.key, BATCH_MAX * 5), now)
            if batch:
                batch = claimed(batch, hook, now)
                deliveries.save(conn, batch, now)
                out.append(Batch(hook, batch, deliveries.events_by_id(conn, [d.event_id for d in batch])))
        store_id = deliveries.store_id(conn)
    return out, store_id


class Worker:
    """Delivery rounds in a background thread, one after each `kick` (the loop kicks after each
    pass); kicks during a round make one more round, not one each. Its own store connection."""

    def __init__(self, db_path: Path, fleet_name: str, hooks: list[Hook]):
        self.db_path = db_path
        self.fleet_name = fleet_name
        self.hooks = hooks
        self._due = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.rounds = 0
        self.error: BaseException | None = None

    def kick(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="gridctl-alerts", daemon=True)
            self._thread.start()
        self._due.set()

    def stop(self) -> None:
        """Ask the thread to end after its round; pending deliveries stay pending in the store."""
        self._stop.set()
        self._due.set()

    def _run(self) -> None:
        conn = None
        try:
            while True:
                self._due.wait()
                if self._stop.is_set():
                    return
                self._due.clear()
                try:
                    conn = conn or connect(self.db_path, create=False)
                    deliver_round(conn, self.fleet_name, self.hooks)
                except Exception as e:    # a busy or vanished store: the deliveries wait for the next round
                    self.error = e
                self.rounds += 1
        finally:
            if conn is not None:
                conn.close()
