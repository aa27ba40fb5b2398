"""The ready set of one job as routers see it, read from the store. Called by both routers every
POLL_S seconds (the builtin one from a worker thread)."""

from __future__ import annotations

import sqlite3
import sys
from pathlib import Path
from typing import Iterable

from ..models import Endpoint


def routable(endpoints: Iterable[Endpoint]) -> tuple[Endpoint, ...]:
    """The replicas a router may send requests to: the ready ones, less those being drained while
    another is ready (make-before-break: the replacement takes the traffic, the old copy finishes)."""
    ready = [e for e in endpoints if e.ready]
    staying = [e for e in ready if not e.draining]
    return tuple(staying or ready)


class ReadySet:
    """Reads the job's endpoints with a read-only connection; each read is one short statement
    (autocommit), so no transaction is ever held between polls."""

    def __init__(self, db_path: Path, job: str):
        self.db_path, self.job = db_path, job
        self._conn: sqlite3.Connection | None = None
        self._last: tuple[Endpoint, ...] | None = None
        self._failing = False

    def poll(self) -> tuple[Endpoint, ...] | None:
        """The routable endpoints when they changed since the last poll, else None. A store that
        cannot be read keeps the last set (said once on stderr): replicas outlive a busy store."""
        from ..store import connect_readonly, queries
        try:
            if self._conn is None:
                self._conn = connect_readonly(self.db_path)
            now = routable(queries.endpoints(self._conn, self.job))
        except sqlite3.Error as e:
            self.close()
            if not self._failing:
                print(f"store {self.db_path} unreadable ({e}): keeping the last ready set", file=sys.stderr,
                      flush=True)
            self._failing = True
            return None
        if self._failing:
            print(f"store {self.db_path} readable again", file=sys.stderr, flush=True)
            self._failing = False
        if now == self._last:
            return None
        self._last = now
        return now

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
