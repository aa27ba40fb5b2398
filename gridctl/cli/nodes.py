"""Read commands about nodes and events: nodes, describe node, events."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import typer
from ..errors import ConfigError, NotFoundError
from ..styles import GPUS_HEADER, SEVERITY
from ..textsafe import safe
from . import app, describe_app
from .common import FleetOption, JsonOption, OutputOption, load, node_json, open_store, store_path
from .status import warn_unsupervised
from .render import HEALTH_STYLE, STATE_STYLE, Cell, ago, cell, dump, duration, emit, iso, \
    output_format, print_events, print_fields, say, section, table, warn


def _store_or_none(fleet_path, check_supervision: bool = False):
    db_path = store_path(fleet_path)
    if not db_path.exists():
        warn(safe(f"no state yet at {db_path}: run `gridctl reconcile` first"), "")
        return None
    if check_supervision:
        warn_unsupervised(db_path)
    return open_store(db_path)


def gpus_cell(seen: int | None, expected: int) -> Cell:
    """GPUs the last probe saw / GPUs the pool's spec expects; red when fewer are seen."""
    return Cell(f"{'-' if seen is None else seen}/{expected}", "red" if seen is not None and seen < expected else "")


@app.command()
def nodes(fleet_path: Optional[Path] = FleetOption, as_json: bool = JsonOption,
          output: Optional[str] = OutputOption) -> None:
    """List nodes with their decided state, health and reason.

    Example: gridctl nodes -f fleet.yaml -o wide
    """
    from ..store import queries
    fmt = output_format(as_json, output)
    conn = _store_or_none(fleet_path, check_supervision=True)
    if conn is None:
        emit([], [], output=fmt, empty="no nodes recorded yet")
        return
    with conn:
        temps = queries.latest_max_temps(conn)
        rows = [node_json(n, temps.get(n.name)) for n in queries.load_nodes(conn).values()]
    now = time.time()
    emit(rows, [
        ("name", "NODE", None), ("pool", "POOL", None, {"drop": 3}),
        ("state", "STATE", lambda r: cell(r["state"], STATE_STYLE, " (cordoned)" if r["cordoned"] else "")),
        ("health", "HEALTH", lambda r: cell(r["health"], HEALTH_STYLE)),
        ("gpus", GPUS_HEADER, lambda r: gpus_cell(r["gpus_seen"], r["gpus_expected"])),
        ("max_temp_c", "TEMP", lambda r: Cell("-" if r["max_temp_c"] is None else f"{r['max_temp_c']:g}°C"),
         {"drop": 1}),
        ("last_seen", "LAST SEEN", lambda r: Cell(ago(_ts(r["last_seen"]), now)), {"drop": 2}),
        ("host", "HOST", None, {"wide": True}),
        ("state_since", "STATE SINCE", None, {"wide": True}),
        *([("instance_type", "INSTANCE", lambda r: Cell(" ".join(x for x in (
            r["instance_type"], r["zone"], "spot" if r["spot"] else "", "up " + ago(_ts(r["launched_at"]), now)
            .replace(" ago", "") if r["launched_at"] else "") if x) or "-"), {"drop": 0})]
          if any(r["instance_type"] for r in rows) else []),
        ("reason", "REASON", lambda r: Cell(r["reason"] + (f" (cordoned: {r['cordon_reason']})" if r["cordoned"] else ""))),
    ], output=fmt, empty="no nodes recorded yet")


def _ts(value: str | None) -> float | None:
    from datetime import datetime
    return None if value is None else datetime.fromisoformat(value).timestamp()


@describe_app.command("node")
def describe_node(name: str, fleet_path: Optional[Path] = FleetOption, as_json: bool = JsonOption,
                  output: Optional[str] = OutputOption) -> None:
    """State, health, the last observation, GPUs and recent events of one node.

    Example: gridctl describe node h100-a -f fleet.yaml
    """
    from ..store import queries
    fmt = output_format(as_json, output)
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
    if fmt in ("json", "yaml", "name"):
        out = node_json(node, obs["max_temp_c"] if obs else None)
        out["gpus"] = obs["gpus"] if obs else []
        out["probe_path"] = obs["probe_path"] if obs else None
        out["events"] = [_event_json(e) for e in events]
        out["attempts"] = [{"id": a.id, "job": a.job, "state": a.state.value, "gpus": list(a.gpus)} for a in here]
        dump([out], fmt)
        return
    _show_node(node, obs, here, events)


def when(t: float | None, now: float) -> str:
    """A timestamp and how long ago, with units: `2026-12-02T07:00:00+00:00 (5m12s ago)`."""
    return "never" if t is None else f"{iso(t)} ({duration(max(0.0, now - t))} ago)"


def _show_node(node, obs, here, events) -> None:
    now = time.time()
    cloud = dict(node.cloud)
    fields = [
        ("Node", f"{node.name}  pool {node.pool} ({node.provider}), {node.host}:{node.port}"),
        ("State", [cell(node.state.value, STATE_STYLE), Cell(f" since {when(node.state_since, now)}"),
                   *([Cell("  cordoned: ", "bold"), Cell(node.cordon_reason)] if node.cordoned else [])]),
        ("Health", [cell(node.health.value, HEALTH_STYLE), Cell(f"  {node.reason}")]),
        ("Last answer", when(node.last_seen, now)),
        ("Last healthy", when(node.last_good, now)),
        ("Probes", f"{node.good} good / {node.failures} failed in a row"),
        ("GPUs", f"{'-' if node.gpus_seen is None else node.gpus_seen} seen / {node.gpus_expected} expected"),
        ("Boot id", node.boot_id or "-"),
    ]
    if cloud:
        fields.append(("Instance", ", ".join(f"{k} {v}" for k, v in node.cloud if k != "launched_at")))
        if "launched_at" in cloud:
            fields.append(("Launched", when(float(cloud["launched_at"]), now)))
    if obs:
        fields.append(("Probe", "resident agent (NVML, pushed XIDs)" if obs["probe_path"] == "agent"
                       else "sh probe (one exec per pass)"))
    if node.needs_release:
        fields.append(("Release", "needs a GPU reset or reboot, then `gridctl uncordon`"))
    print_fields(fields)
    if node.findings:
        section("Findings")
        for f in node.findings:
            say(safe(f"  {f.severity.value:<9} {f.code:<18} {f.message}"))
    if obs and obs["gpus"]:
        section(f"GPUs at {iso(obs['time'])}")
        table(obs["gpus"], [
            ("index", "#", None), ("name", "NAME", None), ("bus_id", "BUS", None),
            ("temperature_c", "TEMP", lambda g: Cell(_num(g.get("temperature_c"), "°C"))),
            ("memory_used_mib", "MEM USED", lambda g: Cell(f"{g['memory_used_mib']}/{g['memory_total_mib']} MiB"
                                                       if g.get("memory_total_mib") else "-")),
            ("utilization_pct", "UTIL", lambda g: Cell(_num(g.get("utilization_pct"), "%"))),
            ("ecc_uncorrected_volatile", "ECC UNC", None),
        ])
    section("Attempts here")
    for a in here:
        say(safe(f"  {a.id:<24} {a.state.value:<9} {len(a.gpus)} GPU(s)  {a.reason}"))
    if not here:
        say("  none")
    print_events(events, "Recent events")


def _num(value, unit: str) -> str:
    return "-" if value is None else f"{value:g}{unit}"


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
    undelivered: bool = typer.Option(False, "--undelivered", help="Only events an alert hook has not taken yet "
                                     "(delivery pending or failed), one row per event and hook."),
    as_json: bool = JsonOption,
    output: Optional[str] = OutputOption,
) -> None:
    """Recorded transitions and notices, oldest first.

    Example: gridctl events -f fleet.yaml --since 1h --node h100-a
    """
    from ..spec import parse_duration
    from ..store import queries
    cutoff = None
    if since is not None:
        try:
            cutoff = time.time() - parse_duration(since)
        except ValueError as e:
            raise ConfigError(f"--since: {e}") from None
    fmt = output_format(as_json, output)
    conn = _store_or_none(fleet_path)
    if conn is None:
        emit([], [], output=fmt, empty="no events")
        return
    if undelivered:
        from ..alerts.rules import hook_from_spec
        hooks = {hook_from_spec(h).key for h in load(fleet_path)[0].alerts}
        with conn:
            _emit_undelivered(conn, hooks, cutoff, node, job, limit, fmt)
        return
    with conn:
        rows = [_event_json(e) for e in queries.list_events(conn, since=cutoff, node=node, limit=limit, job=job)]
    emit(rows, [
        ("time", "TIME", None), ("kind", "KIND", None), ("node", "NODE", None, {"drop": 2}),
        ("job", "JOB", None, {"drop": 1}),
        ("severity", "SEVERITY", None, {"wide": True}),
        ("message", "MESSAGE", lambda r: Cell(r["message"], SEVERITY.get(r["severity"], ""))),
    ], output=fmt, empty="no events")


def _emit_undelivered(conn, hooks: set[str], cutoff: float | None, node: str | None, job: str | None, limit: int,
                      fmt: str) -> None:
    """`events --undelivered`: each event with a hook delivery pending or failed, and where it stands
    (a hook since removed from the spec is said to be: nothing will send those)."""
    from ..alerts.rules import describe
    from ..store import deliveries
    now = time.time()
    rows = [{**_event_json(e), "id": event_id, "hook": label, "delivery": d.state, "tries": d.tries,
             "error": d.error or None, "next_try_at": iso(d.next_try_at),
             "status": describe(d, now) + ("" if d.hook in hooks else " (hook no longer in the spec)")}
            for event_id, e, d, label in deliveries.undelivered(conn)
            if (cutoff is None or e.time >= cutoff) and node in (None, e.node) and job in (None, e.job)][-limit:]
    emit(rows, [
        ("time", "TIME", None), ("kind", "KIND", None), ("node", "NODE", None, {"drop": 2}),
        ("job", "JOB", None, {"wide": True}), ("hook", "HOOK", None, {"drop": 1}),
        ("tries", "TRIES", None, {"wide": True}), ("next_try_at", "NEXT TRY", None, {"wide": True}),
        ("status", "DELIVERY", lambda r: Cell(r["status"], "bold red" if r["delivery"] == "failed" else "yellow")),
        ("message", "MESSAGE", None),
    ], output=fmt, empty="no undelivered events")
