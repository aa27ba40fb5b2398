"""`gridctl demo`: the whole story on three simulated nodes, in under a minute, no account needed."""

from __future__ import annotations

import threading

import typer

from ..errors import ConfigError
from . import app
from .render import console, err_console


@app.command()
def demo(
    duration: float = typer.Option(45.0, "--duration", help="Upper bound in seconds; the demo ends sooner once every job recovered."),
    fault: str = typer.Option("xid79", "--fault", help="First fault: xid79 | hang | down | ecc (then a node stops answering)."),
    keep: bool = typer.Option(False, "--keep", help="Keep the fleet dir (spec, store, node state) to explore afterwards; its jobs end cancelled."),
    plain: bool = typer.Option(False, "--plain", help="One line per event instead of the live screen (default without a TTY)."),
) -> None:
    """A temporary fleet of 3 simulated GPU nodes, 4 jobs, two injected faults, and the recovery.

    Example: gridctl demo
    """
    from ..demo import FAULTS, Demo, new_root, remove_root
    from .watch import follow, stop_loop
    if fault not in FAULTS:
        raise ConfigError(f"--fault: unknown fault {fault!r} (known: {', '.join(FAULTS)})")
    if duration <= 0:
        raise ConfigError("--duration: must be more than 0")
    plain = plain or not console.is_terminal
    root = new_root()
    say = (lambda text: print(text, flush=True)) if plain else (lambda text: None)
    d = Demo(root, fault, duration, say)
    say(f"demo: fleet of 3 simulated nodes in {root}; jobs: web (service x2), etl (batch), train (training)")
    d.submit_jobs()
    thread = d.loop.start_thread()
    story = threading.Thread(target=d.scenario, name="gridctl-demo", daemon=True)
    story.start()
    interrupted = False
    try:
        follow(d.db_path, d.fleet, loop=d.loop, interval=1.0, plain=plain, stop_when=d.done.is_set,
               note=lambda: f"demo: {d.status}")
    except KeyboardInterrupt:
        interrupted = True
    finally:
        stop_loop(d.loop, thread)
        outcomes, final_jobs = d.outcomes(), d.final_jobs()     # the story's end, before the jobs end
        ended = _end_jobs(d, keep)
    from rich.table import Table
    table = Table(title="Recovery", show_edge=False, header_style="bold")
    for h in ("FAULT", "JOB", "DETECTED AFTER", "RECOVERED AFTER", "STATE NOW"):
        table.add_column(h)
    for o in outcomes:
        table.add_row(o.fault, o.job, "-" if o.detect_s is None else f"{o.detect_s:.1f}s",
                      "not recovered" if o.recover_s is None else f"{o.recover_s:.1f}s", o.state)
    console.print()
    console.print(table if outcomes else "no fault was injected")
    final = Table(title="Jobs at the end", show_edge=False, header_style="bold")
    for h in ("JOB", "CLASS", "STATE", "NODES", "REASON"):
        final.add_column(h, overflow="fold")
    for row in final_jobs:
        final.add_row(*row)
    console.print()
    console.print(final)
    if ended:
        console.print(f"\n{ended}", markup=False, soft_wrap=True)
    recovered = bool(outcomes) and all(o.recover_s is not None for o in outcomes)
    if d.loop.error is not None:
        err_console.print(f"demo: the reconcile loop failed: {d.loop.error}", markup=False)
    if keep:
        console.print(f"\nfleet kept in {root}: try `gridctl nodes -f {root}/fleet.yaml`, "
                      f"`gridctl describe job web -f {root}/fleet.yaml`", markup=False, soft_wrap=True)
    else:
        remove_root(root)
    if recovered and not interrupted:
        console.print(f"\nevery affected job recovered ({len(d.faults)} faults, {len(outcomes)} job moves)")
        return
    raise typer.Exit(1)


def _end_jobs(d, keep: bool) -> str:
    """No demo process outlives the demo. With --keep the store must agree: the jobs are cancelled
    through the normal path (request, then one pass that stops them and records it), so the first
    command in the kept dir does not find `running` attempts whose processes are gone. Processes on
    a node that did not answer that pass are killed by pid. Returns the line to print, if any."""
    from ..ops import pass_now
    note = ""
    try:
        if keep:
            names = d.request_cancel()
            _, why = pass_now(d.fleet, d.db_path, 30.0)
            if names and why:
                note = f"demo: cancel of {', '.join(names)} requested, but no pass ran ({why}); their processes are stopped"
            elif names:
                note = f"demo: cancelled {', '.join(names)} (--keep): no job is left running; their processes are stopped"
    finally:
        d.kill_jobs()       # even when a second Ctrl-C cuts the cancel pass short
    return note
