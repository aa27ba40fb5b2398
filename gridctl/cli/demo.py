"""`gridctl demo`: the whole story on three simulated nodes, in under a minute, no account needed."""

from __future__ import annotations

import threading

import typer

from ..errors import ConfigError
from . import app
from .render import console, err_console, say as line, table


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
    say(f"demo: fleet of 3 simulated nodes in {root}; jobs: web (service x2, routed), etl (batch), train (training)")
    d.submit_jobs()
    thread = d.loop.start_thread()
    story = threading.Thread(target=d.scenario, name="gridctl-demo", daemon=True)
    story.start()
    interrupted = False
    try:
        follow(d.db_path, d.fleet, loop=d.loop, interval=1.0, plain=plain, stop_when=d.done.is_set,
               note=lambda: f"demo: {d.status}{_traffic_note(d)}")
    except KeyboardInterrupt:
        interrupted = True
    finally:
        try:
            d.traffic.stop()            # the load, then the router: nothing in flight when the jobs end
        finally:
            stop_loop(d.loop, thread)
            outcomes, final_jobs = d.outcomes(), d.final_jobs()     # the story's end, before the jobs end
            ended = _end_jobs(d, keep)
    console.print()
    if outcomes:
        _recovery_table(outcomes, d.request_figures())
    else:
        line("no fault was injected")
    for text in _requests_line(d).splitlines():
        line(text)
    line("")
    table([dict(zip(("job", "class", "state", "nodes", "reason"), row)) for row in final_jobs],
          [("job", "JOB", None), ("class", "CLASS", None), ("state", "STATE", None), ("nodes", "NODES", None),
           ("reason", "REASON", None)], title="Jobs at the end")
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


def _traffic_note(d) -> str:
    requests, failed = d.traffic.counts()
    return f" · router: {requests} requests, {failed} failed" if requests else ""


RECOVERY_COLUMNS = [("fault", "FAULT", None), ("job", "JOB", None), ("detected", "DETECTED AFTER", None),
                    ("recovered", "RECOVERED AFTER", None), ("state", "STATE NOW", None),
                    ("requests", "REQUESTS", None), ("failed", "FAILED", None),
                    ("before", "P50/P99 BEFORE", None), ("during", "P50/P99 DURING", None)]


def _recovery_table(outcomes, figures) -> None:
    """One row per job a fault moved, through render.table (plain aligned text without a terminal);
    the router's figures of a fault on its first row (the routed service's, when the fault hit it:
    Demo.outcomes lists it first)."""
    rows = []
    for i, o in enumerate(outcomes):
        first = i == 0 or outcomes[i - 1].fault_index != o.fault_index
        fig = figures[o.fault_index] if first and o.fault_index < len(figures) else None
        traffic = ["", "", "", ""] if fig is None else \
            [str(fig.requests), str(fig.failed), fig.before.text(), fig.during.text()]
        rows.append(dict(zip([c[0] for c in RECOVERY_COLUMNS],
                             [o.fault, o.job, "-" if o.detect_s is None else f"{o.detect_s:.1f}s",
                              "not recovered" if o.recover_s is None else f"{o.recover_s:.1f}s", o.state,
                              *traffic])))
    table(rows, RECOVERY_COLUMNS, title="Recovery")


def _requests_line(d) -> str:
    """What the load through the router saw, in words; failures are named, never hidden."""
    t = d.traffic
    if not t.samples:
        return f"router: {d.traffic_note or 'no requests were sent'}"
    from ..demo import ROUTED
    from ..demo_traffic import failure_kinds, latency
    failed = [s for s in t.samples if not s.ok]
    slowest = max(t.samples, key=lambda s: s.latency)
    lines = [f"router (gridctl route {t.job}): {len(t.samples)} requests in {t.stopped_at - t.started_at:.1f}s, "
             f"{len(failed)} failed; p50/p99 {latency(t.samples).text()}, slowest {slowest.latency * 1000:.0f} ms",
             "  REQUESTS, FAILED: sent from the fault until the next one (or the end). P50/P99 BEFORE: since",
             "  the previous fault recovered; DURING: from the fault until every job it hit recovered."]
    lines += [f"  {f.mode} on {f.node} hit no replica of {ROUTED}: its row shows no failover"
              for f in d.faults if ROUTED not in f.jobs]
    first = d.faults[0].at if d.faults else t.started_at
    lines += [f"  failed: {k.count} {k.kind}, sent from {k.first - first:+.1f}s to {k.last - first:+.1f}s "
              "after the first fault" for k in failure_kinds(failed)[:4]]
    return "\n".join(lines)


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
