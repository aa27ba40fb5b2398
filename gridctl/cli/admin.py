"""Admin verbs on nodes: cordon, uncordon."""

from __future__ import annotations

import getpass
import time
from dataclasses import replace
from pathlib import Path
from typing import Optional

import typer

from ..errors import NotFoundError
from ..models import Event, NodeState
from . import app
from .common import FleetOption, load, open_store
from .render import console


def _node_or_fail(conn, name: str):
    from ..store import queries
    node = queries.get_node(conn, name)
    if node is None:
        known = ", ".join(sorted(queries.load_nodes(conn))) or "none recorded yet"
        raise NotFoundError(f"no node named {name} (known: {known})")
    return node


@app.command()
def cordon(name: str, reason: str = typer.Option(None, "--reason", help="Why (shown in nodes and events)."),
           fleet_path: Optional[Path] = FleetOption) -> None:
    """Stop placing new work on a node. Running work stays."""
    from ..store import queries, write_tx
    _, db_path = load(fleet_path)
    reason = reason or f"cordoned by {getpass.getuser()}"
    with open_store(db_path, create=True) as conn:
        with write_tx(conn):
            node = _node_or_fail(conn, name)
            now = time.time()
            queries.save_node(conn, replace(node, cordoned=True, cordon_reason=reason), now, user=True)
            queries.add_events(conn, [Event(now, "cordon", reason, node=name)])
    console.print(f"{name} cordoned: {reason}", markup=False)


@app.command()
def uncordon(name: str, fleet_path: Optional[Path] = FleetOption) -> None:
    """Allow work on a node again; a quarantined node is released to suspect, then needs good probes."""
    from ..store import queries, write_tx
    _, db_path = load(fleet_path)
    with open_store(db_path, create=True) as conn:
        with write_tx(conn):
            node = _node_or_fail(conn, name)
            now = time.time()
            updated = replace(node, cordoned=False, cordon_reason="", draining=False)
            message = "uncordoned"
            if node.state is NodeState.QUARANTINED:
                updated = replace(updated, state=NodeState.SUSPECT, needs_release=False, good=0, failures=0,
                                  state_since=now, reason=f"released by {getpass.getuser()} after: {node.reason}")
                message = f"released from quarantine ({node.reason}); waiting for good probes"
            queries.save_node(conn, updated, now, user=True)
            queries.add_events(conn, [Event(now, "uncordon", message, node=name)])
    console.print(f"{name}: {message}", markup=False)
