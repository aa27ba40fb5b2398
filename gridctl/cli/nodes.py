"""Read commands about nodes and events: nodes, describe node, events."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from ..errors import ConfigError, NotFoundError
from ..textsafe import safe
from . import app, describe_app
from .common import FleetOption, JsonOption, load, node_json, open_store
from .render import HEALTH_STYLE, STATE_STYLE, ago, console, emit, err_console, esc, iso, print_events, styled


def _store_or_none(fleet_path):
    _, db_path = load(fleet_path)
    if not db_path.exists():
        err_console.print(f"no state yet at {db_path}: run `gridctl reconcile` first", markup=False)
        return None
    return open_store(db_path)


@app.command()
def nodes(fleet_path: Optional[Path] = FleetOption, as_json: bool = JsonOption) -> None:
    """List nodes with their decided state, health and reason."""
    from ..store import queries
    conn = _store_or_none(fleet_path)
    if conn is None:
        emit([], [], as_json=as_json)
        return
    with conn:
        temps = queries.latest_max_temps(conn)
        rows = [node_json(n, temps.get(n.name)) for n in queries.load_nodes(conn).values()]
    now = time.time()
    emit(rows, [
        ("name", "NODE", None), ("pool", "POOL", None),
        ("state", "STATE", lambda r: styled(r["state"], STATE_STYLE) + (" [dim](cordoned)[/dim]" if r["cordoned"] else "")),
        ("health", "HEALTH", lambda r: styled(r["health"], HEALTH_STYLE)),
        ("gpus", "GPUS", lambda r: f"{r['gpus_seen'] if r['gpus_seen'] is not None else '-'}/{r['gpus_expected']}"),
        ("max_temp_c", "TEMP", lambda r: "-" if r["max_temp_c"] is None else f"{r['max_temp_c']:g}°C"),
        ("last_seen", "LAST SEEN", lambda r: ago(_ts(r["last_seen"]), now)),
        *([("instance_type", "INSTANCE", lambda r: esc(" ".join(x for x in (
            r["instance_type"], r["zone"], "spot" if r["spot"] else "", "up " + ago(_ts(r["launched_at"]), now)
            .replace(" ago", "") if r["launched_at"] else "") if x) or "-"))] if any(r["instance_type"] for r in rows) else []),
        ("reason", "REASON", lambda r: esc(r["reason"]) + (f" [dim]cordoned: {esc(r['cordon_reason'])}[/dim]"
                                                         if r["cordoned"] else "")),
    ], as_json=as_json, empty="no nodes recorded yet")


def _ts(value: str | None) -> float | None:
    from datetime import datetime
    return None if value is None else datetime.fromisoformat(value).timestamp()


@describe_app.command("node")
def describe_node(name: str, fleet_path: Optional[Path] = FleetOption, as_json: bool = JsonOption) -> None:
    """State, health, the last observation, GPUs and recent events of one node."""
    import json
    from ..store import queries
    conn = _store_or_none(fleet_path)
    if conn is None:
        raise NotFoundError(f"no node named {name}: no state recorded yet")
    with conn:
        node = queries.get_node(conn, name)
        if node is None:
            known = ", ".join(sorted(queries.load_nodes(conn))) or "none"
            raise NotFoundError(f"no node named {name} (known: {known})")
        obs = queries.latest_observation(conn, name)
        events = queries.list_events(conn, node=name, limit=15)
        here = [a for a in queries.load_attempts(conn, unreaped=True) if a.node == name and a.state.live]
    if as_json:
        out = node_json(node, obs["max_temp_c"] if obs else None)
        out["gpus"] = obs["gpus"] if obs else []
        out["probe_path"] = obs["probe_path"] if obs else None
        out["events"] = [_event_json(e) for e in events]
        out["attempts"] = [{"id": a.id, "job": a.job, "state": a.state.value, "gpus": list(a.gpus)} for a in here]
        print(json.dumps([out], indent=2))
        return
    now = time.time()
    grid = Table.grid(padding=(0, 2))
    grid.add_row("Node", f"[bold]{esc(node.name)}[/bold]  pool {esc(node.pool)} ({node.provider}), "
                 f"{esc(node.host)}:{node.port}")
    grid.add_row("State", styled(node.state.value, STATE_STYLE) + f" since {ago(node.state_since, now)}"
                 + (f"  [bold]cordoned[/bold]: {esc(node.cordon_reason)}" if node.cordoned else ""))
    grid.add_row("Health", styled(node.health.value, HEALTH_STYLE) + f"  {esc(node.reason)}")
    grid.add_row("Seen", f"last answer {ago(node.last_seen, now)}, last healthy {ago(node.last_good, now)}; "
                 f"{node.good} good / {node.failures} failed probes in a row")
    grid.add_row("Boot id", esc(node.boot_id or "-"))
    if obs:
        grid.add_row("Probe", "resident agent (NVML, pushed XIDs)" if obs["probe_path"] == "agent"
                     else "sh probe (one exec per pass)")
    if node.cloud:
        grid.add_row("Instance", esc(", ".join(f"{k} {v}" for k, v in node.cloud if k != "launched_at")
                                     + (f", launched {ago(float(dict(node.cloud)['launched_at']), now)}"
                                        if "launched_at" in dict(node.cloud) else "")))
    if node.needs_release:
        grid.add_row("Release", "needs a GPU reset or reboot, then `gridctl uncordon`")
    console.print(grid)
    if node.findings:
        console.print("\n[bold]Findings[/bold]")
        for f in node.findings:
            console.print(f"  {f.severity.value:<9} {f.code:<18} {safe(f.message)}", markup=False)
    if obs and obs["gpus"]:
        table = Table(title=f"GPUs ({node.gpus_seen}/{node.gpus_expected}) at {iso(obs['time'])}", show_edge=False)
        for h in ("#", "NAME", "BUS", "TEMP", "MEM USED", "UTIL", "ECC UNC"):
            table.add_column(h)
        for g in obs["gpus"]:
            mem = f"{g['memory_used_mib']}/{g['memory_total_mib']} MiB" if g.get("memory_total_mib") else "-"
            table.add_row(str(g["index"]), esc(str(g.get("name") or "-")), esc(str(g.get("bus_id") or "-")),
                          f"{g['temperature_c']:g}°C" if g.get("temperature_c") is not None else "-", mem,
                          f"{g['utilization_pct']:g}%" if g.get("utilization_pct") is not None else "-",
                          str(g.get("ecc_uncorrected_volatile") if g.get("ecc_uncorrected_volatile") is not None else "-"))
        console.print()
        console.print(table)
    console.print("\n[bold]Attempts here[/bold]")
    for a in here:
        console.print(f"  {a.id:<24} {a.state.value:<9} {len(a.gpus)} GPU(s)  {safe(a.reason)}", markup=False,
                      soft_wrap=True)
    if not here:
        console.print("  none")
    print_events(events, "Recent events")


def _event_json(e) -> dict:
    return {"time": iso(e.time), "kind": e.kind, "severity": e.severity, "node": e.node, "job": e.job,
            "message": e.message}


@app.command()
def events(
    fleet_path: Optional[Path] = FleetOption,
    since: Optional[str] = typer.Option(None, "--since", help="Only events newer than this (e.g. 10m, 1h, 2d)."),
    node: Optional[str] = typer.Option(None, "--node", help="Only events of this node."),
    job: Optional[str] = typer.Option(None, "--job", help="Only events of this job."),
    limit: int = typer.Option(200, "--limit", min=1, help="At most this many (the newest)."),
    as_json: bool = JsonOption,
) -> None:
    """Recorded transitions and notices, oldest first."""
    from ..spec import parse_duration
    from ..store import queries
    cutoff = None
    if since is not None:
        try:
            cutoff = time.time() - parse_duration(since)
        except ValueError as e:
            raise ConfigError(f"--since: {e}") from None
    conn = _store_or_none(fleet_path)
    if conn is None:
        emit([], [], as_json=as_json)
        return
    with conn:
        rows = [_event_json(e) for e in queries.list_events(conn, since=cutoff, node=node, limit=limit, job=job)]
    emit(rows, [
        ("time", "TIME", None), ("kind", "KIND", None), ("node", "NODE", lambda r: esc(r["node"] or "-")),
        ("job", "JOB", lambda r: esc(r["job"] or "-")),
        ("message", "MESSAGE", lambda r: esc(r["message"]) if r["severity"] == "info"
         else f"[{'bold red' if r['severity'] == 'alert' else 'yellow'}]{esc(r['message'])}[/]"),
    ], as_json=as_json, empty="no events")
