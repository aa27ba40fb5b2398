"""Fleet-wide commands: validate, probe (read-only sweep), reconcile (one pass or a loop)."""

from __future__ import annotations


import time
from pathlib import Path
from typing import List, Optional

import typer

from ..errors import EXIT_FAILED, EXIT_OK, ConfigError
from . import app
from ..styles import GPUS_HEADER, SEVERITY
from ..textsafe import safe
from .common import FleetOption, JsonOption, MetricsAddrOption, OutputOption, interval_seconds, load
from .nodes import gpus_cell
from .render import HEALTH_STYLE, Cell, cell, console, emit, err_console, iso, output_format


@app.command()
def validate(fleet_path: Optional[Path] = FleetOption) -> None:
    """Check a fleet spec: every problem with file, line and field.

    Example: gridctl validate -f fleet.yaml
    """
    fleet, _ = load(fleet_path)
    import providers
    console.print(f"ok: {len(fleet.pools)} pools, {fleet.node_count()} nodes")
    if fleet.alerts:
        from ..alerts.rules import label
        for hook in fleet.alerts:
            console.print(f"alert hook: {label(hook.webhook, hook.command)}: {hook.min_severity} and above, "
                          f"{'kinds ' + ', '.join(hook.kinds) if hook.kinds is not None else 'every kind'}, "
                          f"{hook.format}, timeout {hook.timeout:g}s, {hook.max_tries} tries",
                          markup=False, soft_wrap=True)
    for pool in fleet.pools:
        try:
            providers.get(pool.provider)
        except providers.ProviderUnavailable as e:
            err_console.print(f"note: pool {pool.name}: {e}", markup=False)


@app.command()
def probe(
    nodes: List[str] = typer.Argument(None, help="Only these nodes (default: all)."),
    fleet_path: Optional[Path] = FleetOption,
    as_json: bool = JsonOption,
    output: Optional[str] = OutputOption,
    agent: bool = typer.Option(False, "--agent", help="Probe through the resident node agent (python3 on the node; "
                                                      "the sh probe where it does not start)."),
) -> None:
    """Probe every node once over SSH, concurrently, and show what each one says. Changes no state.

    Exit 0 when every node probed is healthy, 1 otherwise.

    Example: gridctl probe h100-a h100-b -f fleet.yaml -o wide
    """
    from ..health import classify
    from ..reconcile.observe import Transports, sweep, take_inventory

    fmt = output_format(as_json, output)
    fleet, db_path = load(fleet_path)
    inventory = take_inventory(fleet, db_path.parent)
    chosen = inventory.nodes
    if nodes:
        known = {n.name for n in inventory.nodes}
        unknown = [n for n in nodes if n not in known]
        if unknown:
            raise ConfigError(f"no node named {', '.join(unknown)} in the fleet (known: {', '.join(sorted(known))})")
        chosen = [n for n in inventory.nodes if n.name in nodes]
    for pool, why in inventory.failed_pools.items():
        err_console.print(f"warning: pool {pool}: {why}", markup=False, style="yellow")
    transports = Transports(keep=False, agent=agent)
    try:
        observations = sweep(chosen, transports, probe_timeout=fleet.health.probe_timeout,
                             concurrency=fleet.health.concurrency)
    finally:
        transports.close()
    stored = _stored_states(db_path)
    rows = []
    for inv in chosen:
        obs = observations[inv.name]
        verdict = classify(obs, inv.expect)
        temps = [g.temperature_c for g in obs.gpus if g.temperature_c is not None]
        rows.append({
            "name": inv.name, "pool": inv.pool, "provider": inv.provider, "host": inv.target.host,
            "state": stored.get(inv.name), "health": verdict.health.value, "reason": verdict.reason,
            "findings": [f.to_json() for f in verdict.findings], "gpus_seen": len(obs.gpus) if obs.gpus or obs.smi_rc is not None else None,
            "gpus_expected": inv.expect.gpus, "max_temp_c": max(temps) if temps else None,
            "probe_s": round(obs.duration_s, 3), "last_seen": iso(obs.started_at) if obs.complete else None,
            "probe_path": obs.probe_path,
        })
    emit(rows, [
        ("name", "NODE", None),
        ("health", "HEALTH", lambda r: cell(r["health"], HEALTH_STYLE)),
        ("gpus", GPUS_HEADER, lambda r: gpus_cell(r["gpus_seen"], r["gpus_expected"])),
        ("max_temp_c", "MAX TEMP", lambda r: Cell("-" if r["max_temp_c"] is None else f"{r['max_temp_c']:g}°C"),
         {"drop": 1}),
        ("probe_s", "PROBE", lambda r: Cell(f"{r['probe_s']:.2f}s"), {"drop": 2}),
        ("pool", "POOL", None, {"wide": True}), ("host", "HOST", None, {"wide": True}),
        ("state", "STATE", None, {"wide": True}),
        ("reason", "FINDINGS", None),
    ], output=fmt, empty="no nodes in the fleet")
    raise typer.Exit(EXIT_OK if all(r["health"] == "healthy" for r in rows) else EXIT_FAILED)


def _stored_states(db_path: Path) -> dict[str, str]:
    """Read-only peek at decided states, when a store exists; probe never writes."""
    if not db_path.exists():
        return {}
    import sqlite3
    from ..store import connect_readonly, queries
    try:
        conn = connect_readonly(db_path)
        try:
            return queries.node_states(conn)
        finally:
            conn.close()
    except sqlite3.Error:
        return {}


@app.command()
def reconcile(
    fleet_path: Optional[Path] = FleetOption,
    loop: bool = typer.Option(False, "--loop", help="Repeat passes until interrupted, reusing SSH connections."),
    interval: Optional[str] = typer.Option(None, "--interval", help="Time between pass starts in --loop (default: health.interval)."),
    quiet: bool = typer.Option(False, "-q", "--quiet", help="Print only events and warnings."),
    agent: Optional[bool] = typer.Option(None, "--agent/--no-agent",
                                         help="Probe through resident node agents (default: with --loop only)."),
    wait_ready: Optional[bool] = typer.Option(None, "--wait-ready/--no-wait-ready",
                                              help="After a pass that launched cloud instances, keep passing until "
                                                   "they are ready (default: on a terminal)."),
    metrics_addr: Optional[str] = MetricsAddrOption,
) -> None:
    """One idempotent pass: inventory, probe, judge nodes, move jobs, record events. Safe from cron.

    Example: gridctl reconcile -f fleet.yaml --loop --interval 15s
    """
    from ..reconcile.loop import Busy, Loop, Skipped
    from .metrics import start_exporter
    fleet, db_path = load(fleet_path)
    every = interval_seconds(interval, fleet)
    if wait_ready is None:
        wait_ready = console.is_terminal and not loop
    exporter = start_exporter(metrics_addr, db_path, needs=None if loop else
                              "only with --loop (after one pass from cron, use `gridctl metrics --textfile PATH`)")

    def show(report) -> None:
        if exporter is not None:
            exporter.observe(report)
        if isinstance(report, Busy):
            console.print(f"another reconcile is running (pid {report.pid or '?'}, since {iso(report.since) or '?'})")
        elif isinstance(report, Skipped):
            err_console.print(f"store busy: pass skipped ({report.why}); retrying at the next interval", markup=False)
        else:
            _print_report(report, quiet)

    runner = Loop(fleet, db_path, every, show, deliver=True, agent=agent)
    try:
        runner.run(once=not loop)
        _warn_undelivered(runner)
        launched = [] if loop or runner.last is None else \
            [e for e in runner.last.events if e.kind == "instance-launch"]
        if wait_ready and launched:
            _wait_ready(fleet, db_path, every, quiet, runner.last.started)
    except KeyboardInterrupt:
        if runner.in_pass.is_set():
            err_console.print("interrupted mid-pass: nothing half-written; the next pass picks up from the store")
        raise typer.Exit(130) from None
    finally:
        if exporter is not None:
            exporter.close()


def _warn_undelivered(runner) -> None:
    """After a one-shot pass: a line per alert hook that did not take its batch (kept for a later pass)."""
    for batch, sent in runner.alert_sends:
        if not sent.ok:
            err_console.print(f"warning: alert hook {batch.hook.label}: {sent.error}; {len(batch.deliveries)} "
                              "event(s) kept for a later pass (gridctl events --undelivered)", markup=False,
                              soft_wrap=True)
    if runner.alert_error is not None:
        err_console.print(f"warning: alert hooks not served this pass: {runner.alert_error}", markup=False,
                          soft_wrap=True)


def _wait_ready(fleet, db_path: Path, every: float, quiet: bool, since: float) -> None:
    """Passes until the cloud nodes that appeared since `since` are ready (a rich progress bar on a
    terminal, a line per pass otherwise), bounded by the longest launch_timeout."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
    from ..ops import nodes_launched_since
    from ..reconcile.loop import Loop
    cloud_pools = {p.name for p in fleet.pools if getattr(p, "launch_timeout", None)}
    deadline = time.monotonic() + max((getattr(p, "launch_timeout", 0) for p in fleet.pools), default=600)

    runner = Loop(fleet, db_path, every, lambda report: None if quiet or console.is_terminal else
                  _print_report(report, True))
    with Progress(TextColumn("waiting for new instances"), BarColumn(), TextColumn("{task.completed}/{task.total} ready"),
                  TimeElapsedColumn(), console=console.real, disable=not console.is_terminal) as bar:
        task = bar.add_task("ready", total=None)
        while time.monotonic() < deadline:
            runner.run(once=True)
            nodes = nodes_launched_since(db_path, cloud_pools, since - 60)
            ready = [n for n in nodes if n.state.value == "ready"]
            bar.update(task, total=max(1, len(nodes)), completed=len(ready))
            if not console.is_terminal:
                console.print(f"{len(ready)}/{len(nodes)} new instances ready", markup=False)
            if nodes and len(ready) == len(nodes):
                return
            time.sleep(every)
    err_console.print("gave up waiting: not every new instance is ready (see `gridctl nodes`)", markup=False)


def _print_report(report, quiet: bool) -> None:
    from rich.text import Text
    for event in report.events:
        style = SEVERITY.get(event.severity, "")
        who = f"{event.node}: " if event.node else ""
        line = safe(f"{event.kind:<16} {who}{event.message}")
        console.print(Text(line, style=style), soft_wrap=True)
    for scope in sorted(report.partitions):
        err_console.print(f"[bold red]WARNING: {scope} partition suspected: most nodes are silent; "
                          "not quarantining silent nodes until they answer.[/bold red]")
    if quiet:
        return
    counts: dict[str, int] = {}
    for node in report.nodes:
        counts[node.state.value] = counts.get(node.state.value, 0) + 1
    states = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
    console.print(f"pass {report.duration_s:.1f}s: {len(report.nodes)} nodes ({states or 'none'}), "
                  f"{len(report.events)} events")
