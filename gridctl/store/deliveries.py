"""The SQL of alert hook deliveries (migration v9): each hook's cursor in the event stream and one
row per event and hook.

Callers: gridctl/alerts/deliver.py (a delivery round) and cli/nodes.py (`events --undelivered`).
Write operations expect to be called inside store.write_tx; reads do not need one.
"""

from __future__ import annotations

import sqlite3
from typing import Iterable

from ..models import Delivery, Event


def _delivery(row: sqlite3.Row) -> Delivery:
    return Delivery(event_id=row["event_id"], hook=row["hook"], state=row["state"], tries=row["tries"],
                    next_try_at=row["next_try_at"], error=row["error"])


def _event(row: sqlite3.Row) -> Event:
    return Event(time=row["time"], kind=row["kind"], message=row["message"], node=row["node"], job=row["job"],
                 severity=row["severity"])


def store_id(conn: sqlite3.Connection) -> str:
    """This store's random id (made by migration v9): part of every event's idempotency key."""
    row = conn.execute("SELECT value FROM meta WHERE key = 'store_id'").fetchone()
    return row["value"] if row else "-"


def ensure_hook(conn: sqlite3.Connection, hook: str, label: str) -> int:
    """Register a hook; a new one starts after the newest event (history is not sent). Returns
    the id of the last event it has been offered."""
    conn.execute("INSERT INTO alert_hooks (hook, label, after_event) VALUES (?, ?, (SELECT COALESCE(MAX(id), 0) FROM"
                 " events)) ON CONFLICT(hook) DO UPDATE SET label = excluded.label", (hook, label))
    return conn.execute("SELECT after_event FROM alert_hooks WHERE hook = ?", (hook,)).fetchone()[0]


def set_hook_cursor(conn: sqlite3.Connection, hook: str, after_event: int) -> None:
    conn.execute("UPDATE alert_hooks SET after_event = ? WHERE hook = ?", (after_event, hook))


def queue(conn: sqlite3.Connection, hook: str, event_ids: Iterable[int], now: float) -> None:
    """A pending delivery for each event (one already recorded is left as it is)."""
    conn.executemany("INSERT OR IGNORE INTO deliveries (event_id, hook, state, updated_at) VALUES (?, ?, 'pending', ?)",
                     [(i, hook, now) for i in event_ids])


def pending(conn: sqlite3.Connection, hook: str, limit: int) -> list[Delivery]:
    """The hook's pending deliveries, oldest event first."""
    rows = conn.execute("SELECT * FROM deliveries WHERE state = 'pending' AND hook = ? ORDER BY event_id LIMIT ?",
                        (hook, limit)).fetchall()
    return [_delivery(r) for r in rows]


def events_by_id(conn: sqlite3.Connection, ids: Iterable[int]) -> list[tuple[int, Event]]:
    ids = list(ids)
    rows = conn.execute(f"SELECT * FROM events WHERE id IN ({', '.join('?' for _ in ids)}) ORDER BY id", ids)
    return [(r["id"], _event(r)) for r in rows]


def save(conn: sqlite3.Connection, deliveries: Iterable[Delivery], now: float) -> None:
    conn.executemany("UPDATE deliveries SET state = ?, tries = ?, next_try_at = ?, error = ?, updated_at = ?"
                     " WHERE event_id = ? AND hook = ?",
                     [(d.state, d.tries, d.next_try_at, d.error, now, d.event_id, d.hook) for d in deliveries])


def undelivered(conn: sqlite3.Connection, limit: int = 1000) -> list[tuple[int, Event, Delivery, str]]:
    """(event id, event, its delivery, the hook's label) for every delivery pending or failed,
    oldest event first; at most `limit` of the newest."""
    rows = conn.execute(
        "SELECT e.*, d.event_id, d.hook, d.state, d.tries, d.next_try_at, d.error, h.label FROM deliveries d"
        " JOIN events e ON e.id = d.event_id JOIN alert_hooks h ON h.hook = d.hook"
        " WHERE d.state != 'delivered' ORDER BY d.event_id DESC, h.label LIMIT ?", (limit,)).fetchall()
    return [(r["event_id"], _event(r), _delivery(r), r["label"]) for r in reversed(rows)]
