"""Every SQL statement of gridctl, behind named operations.

Callers: reconcile/apply.py (writes of a pass), cli (reads, cordon). Write operations expect to be
called inside store.write_tx; reads do not need one.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import asdict, fields, replace
from typing import Iterable

from ..models import (Attempt, AttemptState, Endpoint, Event, Finding, Health, JobRecord, JobState, LogPosition,
                      NodeRecord, NodeState, Observation, Outcome, PassRecord, Severity, Verdict, service_host)

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
        draining=bool(row["draining"]), cloud=tuple(sorted(json.loads(row["cloud"]).items())),
    )


def load_nodes(conn: sqlite3.Connection) -> dict[str, NodeRecord]:
    rows = conn.execute("SELECT * FROM nodes ORDER BY name").fetchall()
    return {r["name"]: _node_from_row(r) for r in rows}


def get_node(conn: sqlite3.Connection, name: str) -> NodeRecord | None:
    row = conn.execute("SELECT * FROM nodes WHERE name = ?", (name,)).fetchone()
    return _node_from_row(row) if row else None


_USER_NODE_COLUMNS = {"cordoned", "cordon_reason", "draining"}


def save_node(conn: sqlite3.Connection, node: NodeRecord, now: float, *, user: bool = False) -> None:
    """Insert or update one node row (inside write_tx). user=True: an admin command, flags included."""
    values = asdict(node)
    values["state"] = node.state.value
    values["health"] = node.health.value
    values["findings"] = _findings_json(node.findings)
    values["cordoned"] = int(node.cordoned)
    values["needs_release"] = int(node.needs_release)
    values["draining"] = int(node.draining)
    values["cloud"] = json.dumps(dict(node.cloud))
    cols = _NODE_COLUMNS + ["updated_at"]
    values["updated_at"] = now
    # the user's flags (cordon, drain) are written by admin commands only: a pass that read the
    # row before `gridctl cordon` committed must not undo it
    kept = set() if user else _USER_NODE_COLUMNS
    conn.execute(
        f"INSERT INTO nodes ({', '.join(cols)}) VALUES ({', '.join('?' for _ in cols)}) "
        f"ON CONFLICT(name) DO UPDATE SET {', '.join(f'{c} = excluded.{c}' for c in cols if c != 'name' and c not in kept)}",
        [values[c] for c in cols],
    )


def delete_node(conn: sqlite3.Connection, name: str) -> None:
    conn.execute("DELETE FROM nodes WHERE name = ?", (name,))


def record_observation(conn: sqlite3.Connection, obs: Observation, verdict: Verdict) -> None:
    """Append one observation and trim the node's history to OBSERVATIONS_KEPT (inside write_tx)."""
    temps = [g.temperature_c for g in obs.gpus if g.temperature_c is not None]
    conn.execute(
        "INSERT INTO observations (node, time, contact, health, reason, findings, gpus, max_temp_c, duration_s,"
        " boot_id, node_time, uptime_s, probe_path) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (obs.node, obs.started_at, obs.contact.value, verdict.health.value, verdict.reason,
         _findings_json(verdict.findings), json.dumps([asdict(g) for g in obs.gpus]),
         max(temps) if temps else None, obs.duration_s, obs.boot_id, obs.node_time, obs.uptime_s, obs.probe_path),
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


def latest_gpu_readings(conn: sqlite3.Connection) -> dict[str, tuple[float | None, list[dict]]]:
    """node -> (hottest GPU, the GPU readings) of its latest observation."""
    rows = conn.execute("SELECT node, max_temp_c, gpus FROM observations WHERE id IN "
                        "(SELECT MAX(id) FROM observations GROUP BY node)")
    return {r["node"]: (r["max_temp_c"], json.loads(r["gpus"])) for r in rows}


def node_states(conn: sqlite3.Connection) -> dict[str, str]:
    return {r["name"]: r["state"] for r in conn.execute("SELECT name, state FROM nodes")}


def add_events(conn: sqlite3.Connection, events: Iterable[Event]) -> None:
    conn.executemany(
        "INSERT INTO events (time, kind, severity, node, job, message) VALUES (?, ?, ?, ?, ?, ?)",
        [(e.time, e.kind, e.severity, e.node, e.job, e.message) for e in events],
    )


def list_events(conn: sqlite3.Connection, *, since: float | None = None, node: str | None = None,
                limit: int = 1000, job: str | None = None, severity: str | None = None) -> list[Event]:
    """Newest last; at most `limit` of the newest that match."""
    where, args = [], []
    if severity is not None:
        where.append("severity = ?")
        args.append(severity)
    if since is not None:
        where.append("time >= ?")
        args.append(since)
    if node is not None:
        where.append("node = ?")
        args.append(node)
    if job is not None:
        where.append("job = ?")
        args.append(job)
    sql = "SELECT * FROM events" + (" WHERE " + " AND ".join(where) if where else "")
    rows = conn.execute(sql + " ORDER BY id DESC LIMIT ?", (*args, limit)).fetchall()
    return [Event(time=r["time"], kind=r["kind"], message=r["message"], node=r["node"], job=r["job"],
                  severity=r["severity"]) for r in reversed(rows)]


def state_counts(conn: sqlite3.Connection) -> tuple[dict[str, int], dict[str, int]]:
    """(nodes by state, jobs by state)."""
    nodes = {r[0]: r[1] for r in conn.execute("SELECT state, COUNT(*) FROM nodes GROUP BY state")}
    jobs = {r[0]: r[1] for r in conn.execute("SELECT state, COUNT(*) FROM jobs GROUP BY state")}
    return nodes, jobs


def get_meta(conn: sqlite3.Connection, key: str) -> str | None:
    row = conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
    return row["value"] if row else None


def set_meta(conn: sqlite3.Connection, key: str, value: str | None) -> None:
    if value is None:
        conn.execute("DELETE FROM meta WHERE key = ?", (key,))
    else:
        conn.execute("INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                     (key, value))


def meta_with_prefix(conn: sqlite3.Connection, prefix: str) -> dict[str, str]:
    rows = conn.execute("SELECT key, value FROM meta WHERE key >= ? AND key < ?", (prefix, prefix + "\uffff"))
    return {r["key"]: r["value"] for r in rows}


def last_pass_done(conn: sqlite3.Connection) -> tuple[float | None, float | None]:
    """(when the last completed pass ended, how long it took), from the newest `passes` row; None
    before the first. A store whose passes predate that table answers from the meta stamps those
    passes left (their plan time and duration)."""
    row = conn.execute("SELECT started_at + duration_s AS done, duration_s FROM passes ORDER BY id DESC LIMIT 1"
                       ).fetchone()
    if row is not None:
        return row["done"], row["duration_s"]
    done, took = get_meta(conn, "last_pass"), get_meta(conn, "last_pass_s")
    return (float(done) if done else None), (float(took) if took else None)


def set_cordon(conn: sqlite3.Connection, name: str, cordoned: bool, reason: str, now: float,
               draining: bool = False) -> NodeRecord | None:
    """Flip the manual cordon flag (inside write_tx). Returns the updated node, None if unknown."""
    node = get_node(conn, name)
    if node is None:
        return None
    node = replace(node, cordoned=cordoned, cordon_reason=reason if cordoned else "",
                   draining=draining if cordoned else False)
    save_node(conn, node, now, user=True)
    return node


def kernel_log_positions(conn: sqlite3.Connection) -> dict[str, LogPosition]:
    """Where each node's next kernel-log read starts: the boot and boot-relative time of its
    latest observation that had them (never the largest node clock seen: a clock once ahead
    would hide every later line)."""
    rows = conn.execute(
        "SELECT o.node, o.boot_id, o.uptime_s FROM observations o JOIN (SELECT node, MAX(id) AS id FROM observations"
        " WHERE uptime_s IS NOT NULL AND boot_id IS NOT NULL GROUP BY node) l ON o.id = l.id")
    return {r["node"]: LogPosition(r["boot_id"], r["uptime_s"]) for r in rows}


def attempt_key(conn: sqlite3.Connection) -> bytes:
    """The store's secret from which every attempt's token is derived (launcher.attempt_token)."""
    return bytes.fromhex(conn.execute("SELECT value FROM secrets WHERE name = 'attempt_key'").fetchone()[0])


# ---------------------------------------------------------------- jobs and attempts

def _job_from_row(row: sqlite3.Row) -> JobRecord:
    return JobRecord(name=row["name"], spec=json.loads(row["spec"]), state=JobState(row["state"]),
                     reason=row["reason"], reason_code=row["reason_code"], created_at=row["created_at"],
                     updated_at=row["updated_at"], restarts=row["restarts"], failures=row["failures"],
                     next_try_at=row["next_try_at"], pending_since=row["pending_since"],
                     cancel_requested=bool(row["cancel_requested"]), attempts_made=row["attempts_made"],
                     cancel_by=row["cancel_by"], restart_asked=row["restart_asked"],
                     restart_done=row["restart_done"])


def _attempt_from_row(row: sqlite3.Row) -> Attempt:
    return Attempt(id=row["id"], job=row["job"], n=row["n"], replica=row["replica"], node=row["node"],
                   state=AttemptState(row["state"]), reason=row["reason"], gpus=tuple(json.loads(row["gpus"])),
                   created_at=row["created_at"], started_at=row["started_at"], ended_at=row["ended_at"],
                   exit_code=row["exit_code"], pid=row["pid"], heartbeat_at=row["heartbeat_at"],
                   silent_since=row["silent_since"], outcome=Outcome(row["outcome"]) if row["outcome"] else None, reaped=bool(row["reaped"]),
                   port=row["port"], ready=bool(row["ready"]), ready_since=row["ready_since"],
                   check_failures=row["check_failures"])


def insert_job(conn: sqlite3.Connection, job: JobRecord) -> bool:
    """Record a new job (inside write_tx). False when the name is taken."""
    cur = conn.execute(
        "INSERT OR IGNORE INTO jobs (name, spec, class, state, reason, reason_code, created_at, updated_at,"
        " pending_since, attempts_made) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?,"
        " COALESCE((SELECT attempts_made FROM deleted_jobs WHERE name = ?), 0))",
        (job.name, json.dumps(job.spec), job.job_class, job.state.value, job.reason, job.reason_code,
         job.created_at, job.updated_at, job.pending_since, job.name))
    return cur.rowcount == 1


def delete_job(conn: sqlite3.Connection, name: str, now: float) -> None:
    """Remove a job, its attempts and its events (inside write_tx); keep its last attempt number
    so a new job of that name numbers its attempts after it (lifecycle.py says why)."""
    conn.execute("INSERT INTO deleted_jobs (name, attempts_made, deleted_at) SELECT name, attempts_made, ? FROM jobs"
                 " WHERE name = ? ON CONFLICT(name) DO UPDATE SET attempts_made = MAX(attempts_made,"
                 " excluded.attempts_made), deleted_at = excluded.deleted_at", (now, name))
    conn.execute("DELETE FROM events WHERE job = ?", (name,))
    conn.execute("DELETE FROM jobs WHERE name = ?", (name,))     # attempts follow (ON DELETE CASCADE)


def ended_jobs_before(conn: sqlite3.Connection, before: float, limit: int | None = None) -> list[JobRecord]:
    """Ended jobs last changed before `before`: those with no unreaped attempt first (so a batch is
    not filled by jobs a silent node keeps), then oldest first."""
    rows = conn.execute("SELECT * FROM jobs WHERE state IN ('succeeded', 'failed', 'cancelled') AND updated_at < ?"
                        " ORDER BY EXISTS (SELECT 1 FROM attempts a WHERE a.job = jobs.name AND a.reaped = 0),"
                        " updated_at LIMIT ?", (before, -1 if limit is None else limit)).fetchall()
    return [_job_from_row(r) for r in rows]


def delete_events_before(conn: sqlite3.Connection, before: float, limit: int | None = None) -> int:
    cur = conn.execute("DELETE FROM events WHERE id IN (SELECT id FROM events WHERE time < ? ORDER BY id LIMIT ?)",
                       (before, -1 if limit is None else limit))
    return cur.rowcount


def forget_deleted_jobs(conn: sqlite3.Connection, before: float) -> None:
    conn.execute("DELETE FROM deleted_jobs WHERE deleted_at < ?", (before,))


def request_restart(conn: sqlite3.Connection, name: str) -> bool:
    """The user's restart (a counter the pass catches up with); it also withdraws a cancel."""
    cur = conn.execute("UPDATE jobs SET restart_asked = restart_asked + 1, cancel_requested = 0 WHERE name = ?",
                       (name,))
    return cur.rowcount == 1


def save_job(conn: sqlite3.Connection, job: JobRecord) -> None:
    """Write the pass's decision for a job; the user's cancel flag is never cleared here."""
    conn.execute(
        "UPDATE jobs SET state = ?, reason = ?, reason_code = ?, updated_at = ?, restarts = ?, failures = ?,"
        " next_try_at = ?, pending_since = ?, attempts_made = ?, restart_done = ? WHERE name = ?",
        (job.state.value, job.reason, job.reason_code, job.updated_at, job.restarts, job.failures,
         job.next_try_at, job.pending_since, job.attempts_made, job.restart_done, job.name))


def request_cancel(conn: sqlite3.Connection, name: str, by: str = "user") -> bool:
    cur = conn.execute("UPDATE jobs SET cancel_requested = 1, cancel_by = ? WHERE name = ?", (by, name))
    return cur.rowcount == 1


def get_job(conn: sqlite3.Connection, name: str) -> JobRecord | None:
    row = conn.execute("SELECT * FROM jobs WHERE name = ?", (name,)).fetchone()
    return _job_from_row(row) if row else None


def load_jobs(conn: sqlite3.Connection, *, active_only: bool = False) -> dict[str, JobRecord]:
    """Jobs by name. active_only: not terminal, or terminal with attempts still live, or a restart asked."""
    if active_only:
        rows = conn.execute(
            "SELECT * FROM jobs WHERE state IN ('pending', 'running') OR cancel_requested = 1 AND state != 'cancelled'"
            " OR restart_asked > restart_done"
            " OR name IN (SELECT job FROM attempts WHERE state IN ('starting', 'running', 'silent'))"
            " ORDER BY created_at, name").fetchall()
    else:
        rows = conn.execute("SELECT * FROM jobs ORDER BY created_at, name").fetchall()
    return {r["name"]: _job_from_row(r) for r in rows}


def load_attempts(conn: sqlite3.Connection, *, jobs: Iterable[str] | None = None, unreaped: bool = False,
                  since: float | None = None) -> list[Attempt]:
    """Attempts of the given jobs (all when None), oldest first; unreaped: only those whose
    directory on the node is not yet marked done; since: also every attempt that ended after it."""
    where, args = [], []
    if jobs is not None:
        names = list(jobs)
        where.append(f"job IN ({', '.join('?' for _ in names)})" if names else "0")
        args += names
    if unreaped:
        where.append("reaped = 0")
    sql = "SELECT * FROM attempts" + (" WHERE " + " AND ".join(where) if where else "")
    if since is not None:
        sql += (" OR " if where else " WHERE ") + "ended_at >= ?"
        args.append(since)
    rows = conn.execute(sql + " ORDER BY job, n", args).fetchall()
    return [_attempt_from_row(r) for r in rows]


def save_attempt(conn: sqlite3.Connection, a: Attempt) -> None:
    conn.execute(
        "INSERT INTO attempts (id, job, n, replica, node, state, reason, gpus, created_at, started_at, ended_at,"
        " exit_code, pid, heartbeat_at, silent_since, outcome, reaped, port, ready, ready_since, check_failures)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
        " ON CONFLICT(id) DO UPDATE SET node = excluded.node, state = excluded.state, reason = excluded.reason,"
        " gpus = excluded.gpus, started_at = excluded.started_at, ended_at = excluded.ended_at,"
        " exit_code = excluded.exit_code, pid = excluded.pid, heartbeat_at = excluded.heartbeat_at,"
        " silent_since = excluded.silent_since, outcome = excluded.outcome, reaped = excluded.reaped,"
        " port = excluded.port, ready = excluded.ready, ready_since = excluded.ready_since,"
        " check_failures = excluded.check_failures",
        (a.id, a.job, a.n, a.replica, a.node, a.state.value, a.reason, json.dumps(list(a.gpus)), a.created_at,
         a.started_at, a.ended_at, a.exit_code, a.pid, a.heartbeat_at, a.silent_since,
         a.outcome.value if a.outcome else "", int(a.reaped), a.port, int(a.ready), a.ready_since, a.check_failures))


def endpoints(conn: sqlite3.Connection, job: str | None = None) -> list[Endpoint]:
    """Every live replica with a port (of one job, or all), with its node's address and whether
    routers may send it requests. Oldest attempt first within a replica."""
    sql = ("SELECT a.job, a.replica, a.id, a.node, a.port, a.ready, a.ready_since, n.host, n.draining"
           " FROM attempts a LEFT JOIN nodes n ON n.name = a.node"
           " WHERE a.state IN ('starting', 'running', 'silent') AND a.port IS NOT NULL")
    args: list = []
    if job is not None:
        sql += " AND a.job = ?"
        args.append(job)
    rows = conn.execute(sql + " ORDER BY a.job, a.replica, a.n", args).fetchall()
    return [Endpoint(job=r["job"], replica=r["replica"], attempt=r["id"], node=r["node"],
                     host=service_host(r["host"]), port=r["port"],
                     ready=bool(r["ready"]), ready_since=r["ready_since"], draining=bool(r["draining"]))
            for r in rows]


def mark_reaped(conn: sqlite3.Connection, ids: Iterable[str]) -> None:
    conn.executemany("UPDATE attempts SET reaped = 1 WHERE id = ?", [(i,) for i in ids])


def job_events(conn: sqlite3.Connection, job: str, limit: int = 200) -> list[Event]:
    rows = conn.execute("SELECT * FROM events WHERE job = ? ORDER BY id DESC LIMIT ?", (job, limit)).fetchall()
    return [Event(time=r["time"], kind=r["kind"], message=r["message"], node=r["node"], job=r["job"],
                  severity=r["severity"]) for r in reversed(rows)]


def events_after(conn: sqlite3.Connection, last_id: int, limit: int = 500) -> list[tuple[int, Event]]:
    """Events with id > last_id, oldest first (for following the event stream)."""
    rows = conn.execute("SELECT * FROM events WHERE id > ? ORDER BY id LIMIT ?", (last_id, limit)).fetchall()
    return [(r["id"], Event(time=r["time"], kind=r["kind"], message=r["message"], node=r["node"], job=r["job"],
                            severity=r["severity"])) for r in rows]


def last_event_id(conn: sqlite3.Connection) -> int:
    return conn.execute("SELECT COALESCE(MAX(id), 0) FROM events").fetchone()[0]


# ---------------------------------------------------------------- passes

PASSES_KEPT = 1000


def record_pass(conn: sqlite3.Connection, p: PassRecord) -> None:
    """Append one pass and keep the newest PASSES_KEPT (inside the pass's last write_tx)."""
    conn.execute("INSERT INTO passes (host, pid, mode, interval_s, started_at, duration_s, nodes, launches, stops)"
                 " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", (p.host, p.pid, p.mode, p.interval_s, p.started_at,
                                                        p.duration_s, p.nodes, p.launches, p.stops))
    conn.execute("DELETE FROM passes WHERE id <= (SELECT id FROM passes ORDER BY id DESC LIMIT 1 OFFSET ?)",
                 (PASSES_KEPT,))


def latest_passes(conn: sqlite3.Connection) -> dict[str, PassRecord]:
    """mode -> the newest pass of that mode (loop, once, command)."""
    rows = conn.execute("SELECT * FROM passes WHERE id IN (SELECT MAX(id) FROM passes GROUP BY mode)").fetchall()
    return {r["mode"]: PassRecord(host=r["host"], pid=r["pid"], mode=r["mode"], interval_s=r["interval_s"],
                                  started_at=r["started_at"], duration_s=r["duration_s"], nodes=r["nodes"],
                                  launches=r["launches"], stops=r["stops"]) for r in rows}



# ---------------------------------------------------------------- cloud launch intents

def open_launches(conn: sqlite3.Connection) -> dict[str, tuple[str, int, float]]:
    """pool -> (request_id, count, created_at) of its launch not yet confirmed."""
    rows = conn.execute("SELECT * FROM launches WHERE done_at IS NULL ORDER BY created_at").fetchall()
    return {r["pool"]: (r["request_id"], r["count"], r["created_at"]) for r in rows}


def record_launch(conn: sqlite3.Connection, request_id: str, pool: str, count: int, now: float) -> None:
    conn.execute("INSERT OR IGNORE INTO launches (request_id, pool, count, created_at) VALUES (?, ?, ?, ?)",
                 (request_id, pool, count, now))


def finish_launch(conn: sqlite3.Connection, request_id: str, now: float, error: str | None = None) -> None:
    conn.execute("UPDATE launches SET done_at = ?, error = ? WHERE request_id = ?", (now, error, request_id))


def last_work_by_node(conn: sqlite3.Connection) -> dict[str, float]:
    """node -> when its latest attempt ended (for idle scale-down)."""
    rows = conn.execute("SELECT node, MAX(ended_at) AS t FROM attempts WHERE ended_at IS NOT NULL GROUP BY node")
    return {r["node"]: r["t"] for r in rows}
