"""`gridctl watch`: the reconcile loop (same code path as `reconcile --loop`) with a live screen,
or one line per event without a terminal (`--plain`)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import typer

from ..errors import GridctlError
from . import app
from .common import FleetOption, MetricsAddrOption, interval_seconds, load, open_store
from .render import console, err_console

REFRESH_S = 0.5


def follow(db_path: Path, fleet, *, loop=None, interval: float, plain: bool, once: bool = False,
           stop_when=None, note=lambda: "") -> None:
    """Draw the screen (or print event lines) until Ctrl-C, the loop's error, or stop_when() is true.
    Used by watch and demo; the loop (if any) must already be running in its thread."""
    from rich.live import Live
    from .. import screen
    from ..store import queries

    def snap(conn):
        return screen.snapshot(conn, fleet.fleet, interval=interval, stale_after=fleet.health.stale_after,
                               next_pass_at=loop.next_pass_at if loop else None, note=note())

    def check_loop():
        if loop is not None and loop.error is not None:
            raise loop.error
        return stop_when is not None and stop_when()

    conn = _wait_for_store(db_path, loop)
    try:
        if once:
            console.print(screen.render(snap(conn), console.width))
            return
        if plain:
            last = max(0, queries.last_event_id(conn) - 20)
            while True:
                last = print_events_after(conn, last)
                if check_loop():
                    return
                time.sleep(REFRESH_S)
        with Live(console=console.real, screen=True, auto_refresh=False, redirect_stderr=False) as live:
            while True:
                live.update(screen.render(snap(conn), console.width), refresh=True)
                if check_loop():
                    return
                time.sleep(REFRESH_S)
    finally:
        conn.close()


def print_events_after(conn, last: int) -> int:
    """Print every event with an id above `last`, oldest first; returns the id of the last one
    printed (a batch of at most 500). Called by follow (plain). One read: the cursor moves only
    past what was printed, so an event committed meanwhile is printed by the next call, never skipped."""
    from .. import screen
    from ..store import queries
    for event_id, event in queries.events_after(conn, last):
        print(screen.event_line(event), flush=True)
        last = event_id
    return last


def _wait_for_store(db_path: Path, loop):
    deadline = time.monotonic() + 30
    # with our own loop, wait for its first pass: a store being created (migrations, WAL switch)
    # must not be opened from a second connection half-way
    while not db_path.exists() or (loop is not None and loop.cycles == 0 and loop.error is None):
        if loop is None:
            raise GridctlError(f"no state yet at {db_path}: run `gridctl reconcile` (or watch without --no-reconcile)")
        if loop.error is not None:
            raise loop.error
        if time.monotonic() > deadline:
            raise GridctlError(f"{db_path}: no state after 30s")
        time.sleep(0.1)
    return open_store(db_path)


def stop_loop(loop, thread, wait_s: float = 5.0) -> None:
    """Ask the loop to stop after its pass; give the pass wait_s to finish, then leave it (safe)."""
    if loop is None:
        return
    loop.stop.set()
    if thread is not None:
        thread.join(wait_s)
        if thread.is_alive():
            err_console.print("left the pass in progress: nothing half-written; the next pass picks up from the store")


@app.command()
def watch(
    fleet_path: Optional[Path] = FleetOption,
    interval: Optional[str] = typer.Option(None, "--interval", help="Time between passes (default: health.interval)."),
    no_reconcile: bool = typer.Option(False, "--no-reconcile", help="Only view a store another reconciler maintains."),
    once: bool = typer.Option(False, "--once", help="One pass (unless --no-reconcile), print one snapshot, exit."),
    plain: bool = typer.Option(False, "--plain", help="One line per event instead of redrawing (default without a TTY)."),
    metrics_addr: Optional[str] = MetricsAddrOption,
) -> None:
    """Run the reconcile loop and show nodes, jobs and events live (refreshes twice a second).

    Example: gridctl watch -f fleet.yaml --interval 10s
    """
    from ..reconcile.loop import Loop
    from .metrics import start_exporter
    fleet, db_path = load(fleet_path)
    every = interval_seconds(interval, fleet)
    plain = plain or not console.is_terminal
    exporter = start_exporter(metrics_addr, db_path, needs="not with --once (use `gridctl metrics`)" if once else None)
    loop = None if no_reconcile else Loop(fleet, db_path, every, exporter.observe if exporter else None,
                                       deliver=True)
    thread = None
    try:
        if once:
            if loop is not None:
                loop.run(once=True)
            follow(db_path, fleet, loop=None, interval=every, plain=False, once=True)
            return
        if loop is not None:
            thread = loop.start_thread()
        follow(db_path, fleet, loop=loop, interval=every, plain=plain)
    except KeyboardInterrupt:
        pass
    finally:
        stop_loop(loop, thread)
        if exporter is not None:
            exporter.close()
