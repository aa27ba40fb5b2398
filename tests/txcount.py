"""Count the store transactions a piece of code runs, through SQLite's own trace callback.

An explicit BEGIN ... COMMIT/ROLLBACK is one transaction; any statement run outside one is a
transaction of its own (autocommit). Used to check the shape of a pass: one read, one write for
the plan, one for the answers, plus one per cloud launch intent recorded before its call.
"""

from __future__ import annotations

import sqlite3
import threading


class TxCounter:
    def __init__(self, conn: sqlite3.Connection):
        self.conn = conn
        self.transactions: list[list[str]] = []
        self._open: list[str] | None = None
        self._lock = threading.Lock()

    def __enter__(self) -> "TxCounter":
        self.conn.set_trace_callback(self._seen)
        return self

    def __exit__(self, *exc) -> None:
        self.conn.set_trace_callback(None)

    def _seen(self, statement: str) -> None:
        word = statement.strip().split(None, 1)[0].upper() if statement.strip() else ""
        with self._lock:
            if word == "BEGIN":
                self._open = [statement]
            elif word in ("COMMIT", "ROLLBACK", "END"):
                if self._open is not None:
                    self.transactions.append(self._open + [statement])
                self._open = None
            elif self._open is not None:
                self._open.append(statement)
            else:
                self.transactions.append([statement])

    def kinds(self) -> list[str]:
        """Per transaction: 'read' (only SELECTs), 'write (BEGIN IMMEDIATE)', or the lone statement."""
        out = []
        for tx in self.transactions:
            head = tx[0].strip().upper()
            body = [s.strip().split(None, 1)[0].upper() for s in tx[1:-1]]
            if head.startswith("BEGIN IMMEDIATE"):
                out.append("write")
            elif head.startswith("BEGIN"):
                out.append("read" if all(w == "SELECT" for w in body) else "write-in-read")
            else:
                out.append(f"autocommit: {tx[0][:60]}")
        return out
