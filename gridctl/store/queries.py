"""Every SQL statement of gridctl, behind named operations.

Callers: reconcile/apply.py (writes of a pass), cli (reads, cordon). Write operations expect to be
called inside store.write_tx; reads do not need one.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import asdict, fields, replace
from typing import Iterable

from ..models import Event, Finding, Health, NodeRecord, NodeState, Observation, Severity, Verdict

OBSERVATIONS_KEPT = 50

_NODE_COLUMNS = [f.name for f in fields(NodeRecord)]


def _finding_from_json(d: dict) -> Finding:
    return Finding(code=d["code"], severity=Severity(d["severity"]), message=d["message"], gpu=d.get("gpu"),
                   needs_reset=d.get("needs_reset", False), alert=d.get("alert", False))


def _findings_json(findings: Iterable[Finding]) -> str:
    return json.dumps([{**f.to_json(), "needs_reset": f.needs_reset, "alert": f.alert} for f in findings])


def _node_from_row(row: sqlite3.Row) -> NodeRecord:
    return NodeRecord(
        name=row["name"], pool=row["pool"], provider=row["provider"], host=row["host"], port=row["port"],
        state=NodeState(row["state"]), health=Health(row["health"]), reason=row["reason"],
        cordoned=bool(row["cordoned"]), cordon_reason=row["cordon_reason"], failures=row["failures"],
        good=row["good"], needs_release=bool(row["needs_release"]), boot_id=row["boot_id"],
        last_seen=row["last_seen"], last_good=row["last_good"], state_since=row["state_since"],
        gpus_expected=row["gpus_expected"], gpus_seen=row["gpus_seen"],
        findings=tuple(_finding_from_json(d) for d in json.loads(row["findings"])),
    )


def load_nodes(conn: sqlite3.Connection) -> dict[str, NodeRecord]:
    rows = conn.execute("SELECT * FROM nodes ORDER BY name").fetchall()
    return {r["name"]: _node_from_row(r) for r in rows}


def get_node(conn: sqlite3.Connection, name: str) -> NodeRecord | None:
    row = conn.execute("SELECT * FROM nodes WHERE name = ?", (name,)).fetchone()
    return _node_from_row(row) if row else None


def save_node(conn: sqlite3.Connection, node: NodeRecord, now: float) -> None:
    """Insert or replace one node row (inside write_tx)."""
    values = asdict(node)
    values["state"] = node.state.value
    values["health"] = node.health.value
    values["findings"] = _findings_json(node.findings)
    values["cordoned"] = int(node.cordoned)
    values["needs_release"] = int(node.needs_release)
    cols = _NODE_COLUMNS + ["updated_at"]
    values["updated_at"] = now
    conn.execute(
        f"INSERT INTO nodes ({', '.join(cols)}) VALUES ({', '.join('?' for _ in cols)}) "
        f"ON CONFLICT(name) DO UPDATE SET {', '.join(f'{c} = excluded.{c}' for c in cols if c != 'name')}",
        [values[c] for c in cols],
    )


def delete_node(conn: sqlite3.Connection, name: str) -> None:
    conn.execute("DELETE FROM nodes WHERE name = ?", (name,))


def record_observation(conn: sqlite3.Connection, obs: Observation, verdict: Verdict) -> None:
    """Append one observation and trim the node's history to OBSERVATIONS_KEPT (inside write_tx)."""
    temps = [g.temperature_c for g in obs.gpus if g.temperature_c is not None]
    conn.execute(
        "INSERT INTO observations (node, time, contact, health, reason, findings, gpus, max_temp_c, duration_s,"
        " boot_id, node_time) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (obs.node, obs.started_at, obs.contact.value, verdict.health.value, verdict.reason,
         _findings_json(verdict.findings), json.dumps([asdict(g) for g in obs.gpus]),
         max(temps) if temps else None, obs.duration_s, obs.boot_id, obs.node_time),
    )
    conn.execute(
        "DELETE FROM observations WHERE node = ? AND id <= (SELECT id FROM observations WHERE node = ?"
        " ORDER BY id DESC LIMIT 1 OFFSET ?)", (obs.node, obs.node, OBSERVATIONS_KEPT))


def latest_observation(conn: sqlite3.Connection, node: str) -> dict | None:
    row = conn.execute("SELECT * FROM observations WHERE node = ? ORDER BY id DESC LIMIT 1", (node,)).fetchone()
    if row is None:
        return None
    out = dict(row)
    out["findings"] = json.loads(out["findings"])
    out["gpus"] = json.loads(out["gpus"])
    return out


def latest_max_temps(conn: sqlite3.Connection) -> dict[str, float | None]:
    rows = conn.execute(
        "SELECT node, max_temp_c FROM observations WHERE id IN (SELECT MAX(id) FROM observations GROUP BY node)")
    return {r["node"]: r["max_temp_c"] for r in rows}


def add_events(conn: sqlite3.Connection, events: Iterable[Event]) -> None:
    conn.executemany(
        "INSERT INTO events (time, kind, severity, node, job, message) VALUES (?, ?, ?, ?, ?, ?)",
        [(e.time, e.kind, e.severity, e.node, e.job, e.message) for e in events],
    )


def list_events(conn: sqlite3.Connection, *, since: float | None = None, node: str | None = None,
                limit: int = 1000) -> list[Event]:
    """Newest last; at most `limit` of the newest that match."""
    where, args = [], []
    if since is not None:
        where.append("time >= ?")
        args.append(since)
    if node is not None:
        where.append("node = ?")
        args.append(node)
    sql = "SELECT * FROM events" + (" WHERE " + " AND ".join(where) if where else "")
    rows = conn.execute(sql + " ORDER BY id DESC LIMIT ?", (*args, limit)).fetchall()
    return [Event(time=r["time"], kind=r["kind"], message=r["message"], node=r["node"], job=r["job"],
                  severity=r["severity"]) for r in reversed(rows)]


def get_meta(conn: sqlite3.Connection, key: str) -> str | None:
    row = conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
    return row["value"] if row else None


def set_meta(conn: sqlite3.Connection, key: str, value: str | None) -> None:
    if value is None:
        conn.execute("DELETE FROM meta WHERE key = ?", (key,))
    else:
        conn.execute("INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                     (key, value))


def set_cordon(conn: sqlite3.Connection, name: str, cordoned: bool, reason: str, now: float) -> NodeRecord | None:
    """Flip the manual cordon flag (inside write_tx). Returns the updated node, None if unknown."""
    node = get_node(conn, name)
    if node is None:
        return None
    node = replace(node, cordoned=cordoned, cordon_reason=reason if cordoned else "")
    save_node(conn, node, now)
    return node


def last_node_times(conn: sqlite3.Connection) -> dict[str, int]:
    """The node's own clock at its latest answered probe: where the next kernel-log read starts."""
    rows = conn.execute("SELECT node, MAX(node_time) AS t FROM observations WHERE node_time IS NOT NULL GROUP BY node")
    return {r["node"]: r["t"] for r in rows}
