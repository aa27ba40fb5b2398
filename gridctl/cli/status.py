"""`gridctl status`: is anything reconciling this fleet, and the fleet at a glance; and the warning
`jobs`, `nodes` and `run` print (stderr) when nothing is (the rule: gridctl/supervision.py)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

from ..textsafe import safe
from . import app
from .common import FleetOption, JsonOption, OutputOption, fleet_and_store, open_store
from .render import JOB_STYLE, STATE_STYLE, Cell, cell, dump, emit, iso, output_format, say, warn

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
        warn(f"warning: {safe(state.summary())}")


def _pass_json(p) -> dict | None:
    if p is None:
        return None
    return {"host": p.host, "pid": p.pid, "mode": p.mode, "interval_s": p.interval_s, "started_at": iso(p.started_at),
            "duration_s": round(p.duration_s, 3), "nodes": p.nodes, "launches": p.launches, "stops": p.stops}


@app.command()
def status(fleet_path: Optional[Path] = FleetOption, as_json: bool = JsonOption,
           output: Optional[str] = OutputOption) -> None:
    """Who reconciles this fleet and when it last did; nodes and jobs by state; recent alerts.

    Example: gridctl status -f fleet.yaml -o yaml"""
    from ..store import queries
    from ..supervision import supervision
    fmt = output_format(as_json, output)
    name, db_path = fleet_and_store(fleet_path)
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
    if fmt in ("json", "yaml", "name"):
        out = {"fleet": name, "reconciling": state.ok, "summary": state.summary(),
               "last_pass_age_s": None if state.age_s is None else round(state.age_s, 1),
               "stale_after_s": state.limit_s, "last_pass": _pass_json(state.last),
               "last_command_pass": _pass_json(latest.get("command")), "nodes": nodes, "jobs": jobs,
               "alerts": [{"time": iso(e.time), "kind": e.kind, "node": e.node, "job": e.job, "message": e.message}
                          for e in alerts]}
        dump([out], fmt, name_key="fleet")
        return
    say(safe(f"{name}  {state.summary()}"), "" if state.ok else "bold red")
    say("")
    emit([{"state": k, "count": v} for k, v in sorted(nodes.items())],
         [("state", "NODES", lambda r: cell(r["state"], STATE_STYLE)), ("count", "COUNT", None)],
         output=fmt, empty="no nodes recorded yet")
    say("")
    emit([{"state": k, "count": v} for k, v in sorted(jobs.items())],
         [("state", "JOBS", lambda r: cell(r["state"], JOB_STYLE)), ("count", "COUNT", None)],
         output=fmt, empty="no jobs yet")
    say("")
    emit([{"time": iso(e.time), "kind": e.kind, "where": e.node or e.job or "-", "message": e.message}
          for e in alerts], [("time", "ALERT", None), ("kind", "KIND", None, {"drop": 1}),
                             ("where", "WHERE", None), ("message", "MESSAGE", lambda r: Cell(r["message"], "red"))],
         output=fmt, empty="no alerts")
