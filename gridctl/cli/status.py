"""`gridctl status`: is anything reconciling this fleet, and the fleet at a glance; and the warning
`jobs`, `nodes` and `run` print (stderr) when nothing is (the rule: gridctl/supervision.py)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Optional

from . import app
from .common import FleetOption, JsonOption, load, open_store
from .render import JOB_STYLE, STATE_STYLE, console, emit, err_console, esc, iso, styled

ALERTS_SHOWN = 5


def warn_unsupervised(db_path: Path) -> None:
    """On stderr (so --json stays valid): the red line of `status` when nothing reconciles."""
    from ..store import queries
    from ..supervision import supervision
    if not db_path.exists():
        return
    conn = open_store(db_path)
    try:
        state = supervision(queries.latest_passes(conn), time.time())
    finally:
        conn.close()
    if not state.ok:
        err_console.print(f"[bold red]warning: {esc(state.summary())}[/bold red]", soft_wrap=True)


def _pass_json(p) -> dict | None:
    if p is None:
        return None
    return {"host": p.host, "pid": p.pid, "mode": p.mode, "interval_s": p.interval_s, "started_at": iso(p.started_at),
            "duration_s": round(p.duration_s, 3), "nodes": p.nodes, "launches": p.launches, "stops": p.stops}


@app.command()
def status(fleet_path: Optional[Path] = FleetOption, as_json: bool = JsonOption) -> None:
    """Who reconciles this fleet and when it last did; nodes and jobs by state; recent alerts.

    Example: gridctl status -f fleet.yaml --json"""
    from ..store import queries
    from ..supervision import supervision
    fleet, db_path = load(fleet_path)
    latest, nodes, jobs, alerts = {}, {}, {}, []
    if db_path.exists():
        conn = open_store(db_path)
        try:
            latest = queries.latest_passes(conn)
            nodes, jobs = queries.state_counts(conn)
            alerts = queries.list_events(conn, severity="alert", limit=ALERTS_SHOWN)
        finally:
            conn.close()
    state = supervision(latest, time.time())
    if as_json:
        out = {"fleet": fleet.fleet, "reconciling": state.ok, "summary": state.summary(),
               "last_pass_age_s": None if state.age_s is None else round(state.age_s, 1),
               "stale_after_s": state.limit_s, "last_pass": _pass_json(state.last),
               "last_command_pass": _pass_json(latest.get("command")), "nodes": nodes, "jobs": jobs,
               "alerts": [{"time": iso(e.time), "kind": e.kind, "node": e.node, "job": e.job, "message": e.message}
                          for e in alerts]}
        print(json.dumps([out], indent=2))
        return
    line = esc(state.summary())
    console.print(f"[bold]{esc(fleet.fleet)}[/bold]  " + (line if state.ok else f"[bold red]{line}[/bold red]"),
                  soft_wrap=True)
    console.print()
    emit([{"state": k, "count": v} for k, v in sorted(nodes.items())],
         [("state", "NODES", lambda r: styled(r["state"], STATE_STYLE)), ("count", "COUNT", None)],
         as_json=False, empty="no nodes recorded yet")
    console.print()
    emit([{"state": k, "count": v} for k, v in sorted(jobs.items())],
         [("state", "JOBS", lambda r: styled(r["state"], JOB_STYLE)), ("count", "COUNT", None)],
         as_json=False, empty="no jobs yet")
    console.print()
    emit([{"time": iso(e.time), "kind": e.kind, "where": e.node or e.job or "-", "message": e.message}
          for e in alerts], [("time", "ALERT", None), ("kind", "KIND", None), ("where", "WHERE", None),
                             ("message", "MESSAGE", None)], as_json=False, empty="no alerts")
