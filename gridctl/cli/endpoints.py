"""`gridctl endpoints`: every live replica of the fleet's services, with address and readiness."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import typer

from ..errors import NotFoundError
from . import app
from .common import FleetOption, JsonOption, OutputOption, open_store, store_path
from .render import Cell, ago, emit, iso, output_format


def endpoint_json(e) -> dict:
    return {"job": e.job, "replica": e.replica, "attempt": e.attempt, "node": e.node, "host": e.host,
            "port": e.port, "ready": e.ready, "ready_since": iso(e.ready_since), "draining": e.draining}


@app.command()
def endpoints(job: Optional[str] = typer.Argument(None, metavar="[JOB]", help="Only this service."),
              fleet_path: Optional[Path] = FleetOption, as_json: bool = JsonOption,
              output: Optional[str] = OutputOption) -> None:
    """List service replicas with their address and whether routers send them requests.

    Example: gridctl endpoints llama-serve -f fleet.yaml -o json
    """
    from ..store import queries
    fmt = output_format(as_json, output)
    db_path = store_path(fleet_path)
    if not db_path.exists():
        emit([], [], output=fmt, empty="no endpoints yet")
        return
    conn = open_store(db_path)
    try:
        if job is not None and queries.get_job(conn, job) is None:
            raise NotFoundError(f"no job named {job}")
        found = queries.endpoints(conn, job)
    finally:
        conn.close()
    rows = [endpoint_json(e) for e in found]
    since = {e.attempt: e.ready_since for e in found}
    now = time.time()
    emit(rows, [
        ("job", "JOB", None), ("replica", "REPLICA", None), ("attempt", "ATTEMPT", None), ("node", "NODE", None),
        ("address", "ADDRESS", lambda r: Cell(f"{r['host']}:{r['port']}")),
        ("ready_since", "READY SINCE", None, {"wide": True}),
        ("ready", "READY", lambda r: Cell(("ready " + ago(since[r["attempt"]], now).replace(" ago", "")
                                           if r["ready"] else "not ready") + (" (draining)" if r["draining"] else ""),
                                          "green" if r["ready"] else "yellow")),
    ], output=fmt, empty="no endpoints (no service with a port is running)", name_key="attempt")
