"""The operations behind the commands that change intent: submit, cancel, drain, cordon,
release (uncordon), restart, delete, prune, and running one pass now. Every CLI verb that writes calls one of these;
the CLI only parses arguments and renders what comes back.

Each operation writes the user's intent in one short transaction and, where the change needs a
pass to take effect (submit, cancel, drain, restart), runs one through reconcile.loop.Loop, waiting up to
`wait_s` for a pass of another process to finish (that pass then acts on the intent instead).
User flags (cordon, drain) are columns a pass never writes, so they may be written mid-pass;
a release changes the node's decided state, which passes own, so it waits for the pass lock.
"""

from __future__ import annotations

import getpass
import time
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import ConfigError, GridctlError, NotFoundError
from .jobspec import JobSpec
from .models import Attempt, Event, JobRecord, NodeRecord, NodeState
from .spec import Fleet
from .store import connect, queries, write_tx

if TYPE_CHECKING:
    from .lifecycle import Pruned


@dataclass(frozen=True)
class JobNow:
    """A job as the store has it after an operation, and why no pass ran (empty if one did)."""

    job: JobRecord
    attempts: list[Attempt]
    note: str = ""
    unchanged: bool = False          # the operation had nothing to do (e.g. cancel of an ended job)


def _iso(t: float | None) -> str:
    return "?" if t is None else datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="seconds")


def pass_now(fleet: Fleet, db_path: Path, wait_s: float) -> tuple[object | None, str]:
    """Run one reconcile pass here. Returns (PassReport, "") or (None, why no pass ran)."""
    from .reconcile.loop import Busy, Loop
    reports: list = []
    Loop(fleet, db_path, 0.0, reports.append, single="command").run(once=True, wait_s=wait_s)
    report = reports[0] if reports else None
    if isinstance(report, Busy):
        return None, (f"another reconcile is running (pid {report.pid or '?'}, since {_iso(report.since)}); "
                      "it will act on this")
    return report, ""


def _need_store(db_path: Path, name: str) -> None:
    if not db_path.exists():
        raise NotFoundError(f"no job named {name}: no state recorded yet")


def _stored_job(conn, name: str) -> JobRecord:
    job = queries.get_job(conn, name)
    if job is None:
        raise NotFoundError(f"no job named {name}")
    return job


def _job_now(db_path: Path, name: str, note: str = "", unchanged: bool = False) -> JobNow:
    conn = connect(db_path, create=False)
    try:
        job = _stored_job(conn, name)
        return JobNow(job, queries.load_attempts(conn, jobs=[name]), note, unchanged)
    finally:
        conn.close()


def submit(fleet: Fleet, db_path: Path, spec: JobSpec, wait_s: float) -> JobNow:
    """Record a new job, then run one pass to place and start it."""
    record_job(fleet, db_path, spec)
    _, why = pass_now(fleet, db_path, wait_s)
    return _job_now(db_path, spec.name, why)


def record_job(fleet: Fleet, db_path: Path, spec: JobSpec) -> JobRecord:
    """Record a new job (the next pass places it). ConfigError if the name is taken, its pool unknown,
    or no pool of the fleet could ever fit it."""
    _check_fits(fleet, spec)
    now = time.time()
    record = JobRecord(name=spec.name, spec=spec.to_store(), created_at=now, updated_at=now, pending_since=now,
                       reason="waiting for the next reconcile pass")
    created = Event(now, "job-created", f"{spec.job_class} job: {spec.gpus} GPU(s) x {spec.replicas} replica(s): "
                    f"{spec.shell_command[:200]}", job=spec.name)
    conn = connect(db_path, create=True)
    try:
        with write_tx(conn):
            if isinstance(spec.port, int):
                taken = [j.name for j in queries.load_jobs(conn, active_only=True).values()
                         if j.spec.get("port") == spec.port and j.name != spec.name]
                if taken:
                    raise ConfigError(f"port {spec.port}: already the fixed port of job {taken[0]}; two jobs with "
                                      "one fixed port could not share a node (use port: auto)")
            if not queries.insert_job(conn, record):
                old = queries.get_job(conn, spec.name)
                raise ConfigError(f"job {spec.name} already exists ({old.state.value if old else '?'}): choose "
                                  f"another name, or `gridctl delete --force {spec.name}` first")
            queries.add_events(conn, [created])
    finally:
        conn.close()
    return record


def _check_fits(fleet: Fleet, spec: JobSpec) -> None:
    from .submitfit import refusal
    if spec.pool and spec.pool not in {p.name for p in fleet.pools}:
        known = ", ".join(p.name for p in fleet.pools)
        raise ConfigError(f"pool {spec.pool!r}: no such pool in the fleet (known: {known})")
    why = refusal(fleet, spec)
    if why:
        raise ConfigError(why)


def dry_run(fleet: Fleet, db_path: Path, spec: JobSpec) -> tuple[list, float | None]:
    """`run --dry-run`: where each replica would go now (submitfit.where_now) and when the nodes were
    last seen. Records nothing and creates no store; ConfigError as record_job would raise."""
    from .placement import Gpu
    from .submitfit import where_now
    _check_fits(fleet, spec)
    if not db_path.exists():
        return where_now(fleet, spec, {}, {}, []), None
    conn = connect(db_path, create=False)
    try:
        nodes = queries.load_nodes(conn)
        readings = queries.latest_gpu_readings(conn)
        live = [a for a in queries.load_attempts(conn, unreaped=True) if a.state.live]
        taken = queries.get_job(conn, spec.name)
    finally:
        conn.close()
    if taken is not None:
        raise ConfigError(f"job {spec.name} already exists ({taken.state.value}): choose another name, or "
                          f"`gridctl delete --force {spec.name}` first")
    gpus = {node: tuple(Gpu(g["uuid"], g["index"], g.get("name") or "", g.get("memory_total_mib"))
                        for g in rows if g.get("uuid")) for node, (_, rows) in readings.items()}
    seen = max((n.last_seen for n in nodes.values() if n.last_seen), default=None)
    return where_now(fleet, spec, nodes, gpus, live), seen


def cancel(fleet: Fleet, db_path: Path, name: str, wait_s: float) -> JobNow:
    """Ask for a job's live attempts to be stopped; the next pass (run here) ends it `cancelled`."""
    _need_store(db_path, name)
    conn = connect(db_path, create=False)
    try:
        with write_tx(conn):
            job = _stored_job(conn, name)
            if job.state.terminal:
                return JobNow(job, [], unchanged=True)
            queries.request_cancel(conn, name)
            queries.add_events(conn, [Event(time.time(), "cancel-requested", "cancel requested by user", job=name)])
    finally:
        conn.close()
    _, why = pass_now(fleet, db_path, wait_s)
    return _job_now(db_path, name, why)


def cancel_unfinished(db_path: Path, by: str) -> list[str]:
    """Ask for every unfinished job's cancel (the demo's --keep); the next pass stops them.
    Returns the names, sorted."""
    conn = connect(db_path, create=False)
    try:
        with write_tx(conn):
            names = sorted(j.name for j in queries.load_jobs(conn).values() if not j.state.terminal)
            for name in names:
                queries.request_cancel(conn, name, by=by)
            queries.add_events(conn, [Event(time.time(), "cancel-requested", f"cancel requested by {by}", job=name)
                                      for name in names])
        return names
    finally:
        conn.close()


def _known_node(conn, name: str) -> NodeRecord:
    node = queries.get_node(conn, name)
    if node is None:
        known = ", ".join(sorted(queries.load_nodes(conn))) or "none recorded yet"
        raise NotFoundError(f"no node named {name} (known: {known})")
    return node


def cordon(db_path: Path, name: str, reason: str | None, *, draining: bool = False) -> NodeRecord:
    """Set the manual no-new-work flag (and, for drain, the draining flag)."""
    reason = reason or f"{'drained' if draining else 'cordoned'} by {getpass.getuser()}"
    conn = connect(db_path, create=True)
    try:
        with write_tx(conn):
            _known_node(conn, name)
            now = time.time()
            node = queries.set_cordon(conn, name, True, reason, now, draining=draining)
            queries.add_events(conn, [Event(now, "drain" if draining else "cordon",
                                            f"cordoned and draining: {reason}" if draining else reason, node=name)])
        return node
    finally:
        conn.close()


def drain(fleet: Fleet, db_path: Path, name: str, reason: str | None, wait_s: float) -> tuple[list[Attempt], str]:
    """Cordon a node and move its jobs in one pass run here. Returns the attempts still live
    there (a service's old copy stays until its replacement runs) and why no pass ran."""
    cordon(db_path, name, reason, draining=True)
    _, note = pass_now(fleet, db_path, wait_s)
    conn = connect(db_path, create=False)
    try:
        return [a for a in queries.load_attempts(conn, unreaped=True) if a.node == name and a.state.live], note
    finally:
        conn.close()


def nodes_launched_since(db_path: Path, pools: set[str], since: float) -> list[NodeRecord]:
    """The nodes of these cloud pools whose instances were launched at or after `since`."""
    conn = connect(db_path, create=False)
    try:
        return [n for n in queries.load_nodes(conn).values() if n.pool in pools
                and dict(n.cloud).get("launched_at") and float(dict(n.cloud)["launched_at"]) >= since]
    finally:
        conn.close()


def release(db_path: Path, name: str, wait_s: float = 60.0) -> str:
    """Uncordon a node; a quarantined one goes to `suspect` and needs good probes. Waits for the
    pass lock: the node's state belongs to passes, so it is changed only between them."""
    from .reconcile import PassLock
    lock = PassLock(db_path)
    if not lock.acquire(wait_s):
        pid, _ = lock.holder()
        raise GridctlError(f"a reconcile pass (pid {pid or '?'}) has held the lock for over {wait_s:.0f}s; try again")
    try:
        conn = connect(db_path, create=True)
        try:
            with write_tx(conn):
                node = _known_node(conn, name)
                now = time.time()
                updated = replace(node, cordoned=False, cordon_reason="", draining=False)
                message = "uncordoned"
                if node.state is NodeState.QUARANTINED:
                    updated = replace(updated, state=NodeState.SUSPECT, needs_release=False, good=0, failures=0,
                                      state_since=now, reason=f"released by {getpass.getuser()} after: {node.reason}")
                    message = f"released from quarantine ({node.reason}); waiting for good probes"
                queries.save_node(conn, updated, now, user=True)
                queries.add_events(conn, [Event(now, "uncordon", message, node=name)])
            return message
        finally:
            conn.close()
    finally:
        lock.release()


def restart(fleet: Fleet, db_path: Path, name: str, wait_s: float) -> JobNow:
    """New attempts of the same spec, reason "restarted by user": the next pass (run here) stops the
    live copies (TERM, grace, KILL) and starts anew after the stop grace; an ended job starts again.
    A cancel not yet carried out is withdrawn."""
    _need_store(db_path, name)
    conn = connect(db_path, create=False)
    try:
        with write_tx(conn):
            if not queries.request_restart(conn, name):
                raise NotFoundError(f"no job named {name}")
            queries.add_events(conn, [Event(time.time(), "restart-requested",
                                            f"restart requested by {getpass.getuser()}", job=name)])
    finally:
        conn.close()
    _, why = pass_now(fleet, db_path, wait_s)
    return _job_now(db_path, name, why)


def _delete_if_ended(db_path: Path, name: str) -> tuple[JobRecord | None, str | None]:
    """One write transaction: delete the job if lifecycle.why_kept allows. (the deleted job, None)
    or (None, why it is kept)."""
    from .lifecycle import why_kept
    conn = connect(db_path, create=False)
    try:
        with write_tx(conn):
            job = _stored_job(conn, name)
            why = why_kept(job, queries.load_attempts(conn, jobs=[name], unreaped=True), set(queries.node_states(conn)))
            if why is None:
                queries.delete_job(conn, name, time.time())
                queries.add_events(conn, [Event(time.time(), "job-deleted", f"job {name} ({job.state.value}, "
                                                f"{job.attempts_made} attempts) deleted by {getpass.getuser()}")])
                return job, None
            return None, why
    finally:
        conn.close()


def delete(fleet: Fleet, db_path: Path, name: str, force: bool, wait_s: float) -> tuple[JobRecord, str]:
    """Delete an ended job, its attempts and events; its name is free again. force: cancel it first
    (the usual cancel and its pass, run here), then one more pass, whose probes kill any copy still
    alive and confirm it gone (fencing), then delete. GridctlError (nothing deleted) while a copy is
    not confirmed gone: the kill list needs its attempt row. Returns the job as it was and a note."""
    _need_store(db_path, name)
    deleted, why = _delete_if_ended(db_path, name)
    if deleted is not None:
        return deleted, ""
    if not force:
        raise GridctlError(f"{why}; nothing deleted")
    cancel(fleet, db_path, name, wait_s)
    _, note = pass_now(fleet, db_path, wait_s)
    deleted, why = _delete_if_ended(db_path, name)
    if deleted is None:
        raise GridctlError(f"{why}; the job is cancelled but not deleted: try again after the next pass"
                           + (f" ({note})" if note else ""))
    return deleted, "cancelled first"


def prune(db_path: Path, older_than_s: float) -> "Pruned":
    """Delete the ended jobs last changed, and the events recorded, more than older_than_s ago
    (lifecycle.prune_store), in one write transaction."""
    from .lifecycle import Pruned, prune_store
    if not db_path.exists():
        return Pruned([], 0, 0)
    now = time.time()
    conn = connect(db_path, create=False)
    try:
        with write_tx(conn):
            return prune_store(conn, jobs_before=now - older_than_s, events_before=now - older_than_s, now=now)
    finally:
        conn.close()
