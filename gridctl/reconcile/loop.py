"""The reconcile loop shared by `gridctl reconcile --loop`, `gridctl watch` and `gridctl demo`.

One pass per interval (measured start to start), under the pass lock; SSH connections are kept
between passes. A stop request ends the loop after the current pass; a pass abandoned by the
process exiting is safe too (the next pass heals, see reconcile_once).
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..spec import Fleet
from ..errors import StoreError
from ..models import Event
from ..store import connect, queries, write_tx
from . import Driver, PassLock, PassReport, reconcile_once
from .observe import Transports


@dataclass(frozen=True)
class Busy:
    """The lock was held by another process when a pass was due."""

    pid: int | None
    since: float | None


@dataclass(frozen=True)
class Skipped:
    """The store stayed locked by another writer past busy_timeout: this pass was dropped (nothing
    of it was written, or only its plan: the next pass heals either), and the loop goes on."""

    why: str


def _store_busy(e: sqlite3.OperationalError) -> bool:
    text = str(e).lower()
    return "locked" in text or "busy" in text


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


class Loop:
    def __init__(self, fleet: Fleet, db_path: Path, interval: float,
                 on_pass: Callable[[PassReport | Busy | Skipped], None] | None = None, *, deliver: bool = False,
                 single: str = "once", agent: bool | None = None):
        """`deliver`: send alert hooks their events after each pass. `single`: how a pass of
        run(once=True) is recorded: "once" (`gridctl reconcile`) or "command" (a writing command's
        own pass, which supervises nothing afterwards). `agent`: probe through resident node agents
        (default: in loop mode, not for one pass)."""
        self.fleet = fleet
        self.deliver = deliver                       # send alert hooks their events after each pass
        self.db_path = db_path
        self.interval = interval
        self.on_pass = on_pass or (lambda report: None)
        self.stop = threading.Event()
        self.in_pass = threading.Event()
        self.next_pass_at: float | None = None      # time.time() of the next pass start
        self.last: PassReport | None = None
        self.cycles = 0                              # passes run or skipped (lock busy) so far
        self.error: BaseException | None = None
        self.single = single
        self.alert_error: BaseException | None = None   # the last delivery round's own error (never raised)
        self.alert_sends: list = []                      # a one-shot pass's round: [(alerts.deliver.Batch, Sent)]
        self.agent = agent
        self.nudge = threading.Event()               # set by a pushed node event: the next pass starts now

    def run(self, once: bool = False, wait_s: float = 0.0) -> None:
        """Run passes until stop is set (or one pass with once=True, waiting up to wait_s for a
        pass of another process to release the lock). Re-raises a pass's error."""
        conn = connect(self.db_path, create=True)
        identity = _identity(self.db_path)
        lock = PassLock(self.db_path)
        transports = Transports(keep=not once, agent=(not once) if self.agent is None else self.agent)
        if transports.agents is not None:
            transports.agents.wake = self.nudge.set
        skipped: list[tuple[float, str]] = []
        driver = Driver(self.single) if once else Driver("loop", self.interval)
        alerts: _Alerts | None = None
        try:
            alerts = _Alerts(self, conn, once)
            while not self.stop.is_set():
                began = time.monotonic()
                if _identity(self.db_path) != identity:
                    raise StoreError(f"state file {self.db_path} was removed or replaced while this loop ran: stopping "
                                     "(a pass would write into the old file; start gridctl again to use the new one)")
                if lock.acquire(wait_s if once else 0.0):
                    self.in_pass.set()
                    try:
                        report = reconcile_once(self.fleet, conn, transports, self.db_path.parent, driver)
                    except sqlite3.OperationalError as e:
                        if once or not _store_busy(e):
                            raise StoreError(f"state file {self.db_path}: {e} (held by another writer past the "
                                             "10s busy timeout)" if _store_busy(e) else f"state file {self.db_path}: {e}") from e
                        skipped.append((time.time(), str(e)))
                        self.on_pass(Skipped(str(e)))
                        report = None
                    finally:
                        self.in_pass.clear()
                        lock.release()
                    if report is not None:
                        if skipped:
                            _note_skipped(conn, skipped)
                            skipped = []
                        self.last = report
                        self.on_pass(report)
                        alerts.after_pass()
                else:
                    self.on_pass(Busy(*lock.holder()))
                self.cycles += 1
                if once:
                    return
                wait = max(0.0, self.interval - (time.monotonic() - began))
                self.next_pass_at = time.time() + wait
                self._sleep(wait)
        finally:
            if alerts is not None:
                alerts.close()
            transports.close()
            conn.close()

    def _sleep(self, wait: float) -> None:
        """Until the next pass is due, a stop is asked for, or a node's agent pushed an event (an XID,
        a silent session): then the pass runs at once instead of at the next interval."""
        deadline = time.monotonic() + wait
        while not self.stop.is_set() and (left := deadline - time.monotonic()) > 0:
            if self.nudge.wait(min(left, 0.2)):
                break
        self.nudge.clear()

    def start_thread(self) -> threading.Thread:
        """Run the loop in a daemon thread; its error (if any) is kept in self.error."""
        def target() -> None:
            try:
                self.run()
            except BaseException as e:  # reported by the caller, which owns the terminal
                self.error = e
                self.stop.set()
        thread = threading.Thread(target=target, name="gridctl-loop", daemon=True)
        thread.start()
        return thread


class _Alerts:
    """The loop's alert hooks (gridctl.alerts): registered when the loop starts, so events of its
    first pass are theirs; with `deliver`, a round after each pass: in a one-shot pass right away,
    bounded by the hooks' timeouts; in a loop in a background worker, so no pass waits for a hook."""

    def __init__(self, loop: Loop, conn: sqlite3.Connection, once: bool):
        self.loop, self.conn, self.once = loop, conn, once
        self.hooks: list = []
        self.worker = None
        if not loop.fleet.alerts:
            return
        from ..alerts.deliver import Worker, hooks_of, register
        self.hooks = hooks_of(loop.fleet)
        try:
            register(conn, self.hooks)
        except sqlite3.Error as e:     # a busy store: registered by the next round (or the next loop)
            loop.alert_error = e
        if loop.deliver and not once:
            self.worker = Worker(loop.db_path, loop.fleet.fleet, self.hooks)

    def after_pass(self) -> None:
        if not self.hooks or not self.loop.deliver:
            return
        if self.worker is not None:
            self.worker.kick()
            return
        from ..alerts.deliver import deliver_round
        try:
            self.loop.alert_sends = deliver_round(self.conn, self.loop.fleet.fleet, self.hooks)
        except Exception as e:      # a busy store: the deliveries stay pending for the next pass
            self.loop.alert_error = e

    def close(self) -> None:
        if self.worker is not None:
            self.worker.stop()


def _note_skipped(conn: sqlite3.Connection, skipped: list[tuple[float, str]]) -> None:
    """Once the store takes writes again: one event for the passes it refused."""
    first, why = skipped[0]
    with write_tx(conn):
        queries.add_events(conn, [Event(time.time(), "pass-skipped", f"{len(skipped)} pass(es) skipped since "
                                        f"{time.strftime('%H:%M:%S', time.gmtime(first))}Z: the store was locked by "
                                        f"another writer ({why})", severity="warning")])
