"""The reconcile loop shared by `gridctl reconcile --loop`, `gridctl watch` and `gridctl demo`.

One pass per interval (measured start to start), under the pass lock; SSH connections are kept
between passes. A stop request ends the loop after the current pass; a pass abandoned by the
process exiting is safe too (the next pass heals, see reconcile_once).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..spec import Fleet
from ..store import connect
from . import PassLock, PassReport, reconcile_once
from .observe import Transports


@dataclass(frozen=True)
class Busy:
    """The lock was held by another process when a pass was due."""

    pid: int | None
    since: float | None


class Loop:
    def __init__(self, fleet: Fleet, db_path: Path, interval: float,
                 on_pass: Callable[[PassReport | Busy], None] | None = None):
        self.fleet = fleet
        self.db_path = db_path
        self.interval = interval
        self.on_pass = on_pass or (lambda report: None)
        self.stop = threading.Event()
        self.in_pass = threading.Event()
        self.next_pass_at: float | None = None      # time.time() of the next pass start
        self.last: PassReport | None = None
        self.cycles = 0                              # passes run or skipped (lock busy) so far
        self.error: BaseException | None = None

    def run(self, once: bool = False, wait_s: float = 0.0) -> None:
        """Run passes until stop is set (or one pass with once=True, waiting up to wait_s for a
        pass of another process to release the lock). Re-raises a pass's error."""
        conn = connect(self.db_path, create=True)
        lock = PassLock(self.db_path)
        transports = Transports(keep=not once)
        try:
            while not self.stop.is_set():
                began = time.monotonic()
                if lock.acquire(wait_s if once else 0.0):
                    self.in_pass.set()
                    try:
                        report = reconcile_once(self.fleet, conn, transports, self.db_path.parent)
                    finally:
                        self.in_pass.clear()
                        lock.release()
                    self.last = report
                    self.on_pass(report)
                else:
                    self.on_pass(Busy(*lock.holder()))
                self.cycles += 1
                if once:
                    return
                wait = max(0.0, self.interval - (time.monotonic() - began))
                self.next_pass_at = time.time() + wait
                self.stop.wait(wait)
        finally:
            transports.close()
            conn.close()

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
