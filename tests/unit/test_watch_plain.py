"""`watch --plain` follows the event stream of a real store: every event a pass writes is printed
exactly once, in id order, even when it is committed while watch is between two reads.

Guards against: a follower that reads the stream twice per round (once to print, once to move
its cursor) and so skips for ever whatever was committed in between.
"""

from __future__ import annotations

import io
import time
from pathlib import Path

import pytest

from gridctl.cli import watch as watch_cli
from gridctl.models import Event
from gridctl.spec import load_fleet
from gridctl.store import connect, queries, write_tx


def _fleet(tmp_path: Path):
    path = tmp_path / "fleet.yaml"
    path.write_text(f"fleet: w\nstate: {tmp_path / 'state.db'}\n"
                    f"pools:\n  - {{name: sim, provider: local, count: 1, dir: {tmp_path / 'nodes'}}}\n")
    return load_fleet(path), tmp_path / "state.db"


def _write_event(db: Path, message: str) -> None:
    """A pass's commit, from its own connection (as the reconcile loop writes)."""
    conn = connect(db)
    try:
        with write_tx(conn):
            queries.add_events(conn, [Event(time.time(), "node-state", message, node="sim-0")])
    finally:
        conn.close()


class Terminal(io.StringIO):
    """stdout of `watch --plain`; a pass commits an event while the first line is being written,
    that is, after watch's read of the stream and before its next one."""

    def __init__(self, db: Path):
        super().__init__()
        self.db = db
        self.wrote_between = False

    def write(self, text: str) -> int:
        if not self.wrote_between and text.strip():
            self.wrote_between = True
            _write_event(self.db, "written between two reads")
        return super().write(text)


def test_an_event_committed_between_two_reads_is_printed_exactly_once(tmp_path, monkeypatch):
    fleet, db = _fleet(tmp_path)
    _write_event(db, "first")
    term = Terminal(db)
    monkeypatch.setattr("sys.stdout", term)
    monkeypatch.setattr(watch_cli, "REFRESH_S", 0.01)
    rounds = []

    def stop_when() -> bool:
        rounds.append(1)
        return len(rounds) >= 4          # several rounds after the write: time enough to print it

    watch_cli.follow(db, fleet, interval=1.0, plain=True, stop_when=stop_when)
    messages = [line.split("node=sim-0 ", 1)[1] for line in term.getvalue().splitlines()]
    assert term.wrote_between
    assert messages == ["first", "written between two reads"]


def test_every_event_of_a_long_burst_is_printed_once_in_order(tmp_path, monkeypatch):
    """More events than one read returns (500): the cursor moves by what was printed."""
    fleet, db = _fleet(tmp_path)
    conn = connect(db)
    try:
        with write_tx(conn):
            queries.add_events(conn, [Event(time.time(), "node-state", f"e{i}", node="sim-0") for i in range(1234)])
    finally:
        conn.close()
    out = io.StringIO()
    monkeypatch.setattr("sys.stdout", out)
    monkeypatch.setattr(watch_cli, "REFRESH_S", 0.0)
    rounds = []
    watch_cli.follow(db, fleet, interval=1.0, plain=True, stop_when=lambda: rounds.append(1) or len(rounds) >= 5)
    messages = [line.split("node=sim-0 ", 1)[1] for line in out.getvalue().splitlines()]
    # watch starts 20 events back from the newest, then follows
    assert messages == [f"e{i}" for i in range(1234 - 20, 1234)]


@pytest.mark.parametrize("burst", [600, 1500])
def test_a_burst_after_watch_started_is_printed_whole(tmp_path, monkeypatch, burst):
    fleet, db = _fleet(tmp_path)
    _write_event(db, "before")
    out = io.StringIO()
    monkeypatch.setattr("sys.stdout", out)
    monkeypatch.setattr(watch_cli, "REFRESH_S", 0.0)
    rounds = []

    def stop_when() -> bool:
        rounds.append(1)
        if len(rounds) == 1:
            conn = connect(db)
            try:
                with write_tx(conn):
                    queries.add_events(conn, [Event(time.time(), "node-state", f"e{i}", node="sim-0")
                                              for i in range(burst)])
            finally:
                conn.close()
        return len(rounds) >= 8

    watch_cli.follow(db, fleet, interval=1.0, plain=True, stop_when=stop_when)
    messages = [line.split("node=sim-0 ", 1)[1] for line in out.getvalue().splitlines()]
    assert messages == ["before"] + [f"e{i}" for i in range(burst)]
