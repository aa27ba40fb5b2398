"""One reconcile pass (inventory, observe, judge, record) and the lock that keeps passes single.

Called by `gridctl reconcile` (once or --loop) and, later, `gridctl watch`. A pass recomputes from
what it observes; killing it at any point leaves the store as the last committed pass left it.
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
import time
from dataclasses import dataclass, replace
from pathlib import Path

from ..health import Thresholds
from ..models import Contact, Event, NodeRecord
from ..placement import Gpu
from ..spec import Fleet
from ..store import queries
from .act import carry_out
from .apply import apply_pass, apply_results, prior_partitions
from .jobs import LemonRule, NodeView, plan_jobs
from .observe import Transports, sweep, take_inventory
from .plan import FLEET, plan_pass


@dataclass(frozen=True)
class PassReport:
    started: float
    duration_s: float
    nodes: list[NodeRecord]
    events: list[Event]
    partitions: frozenset[str]
    failed_pools: dict[str, str]
    launches: int = 0
    stops: int = 0


class PassLock:
    """fcntl.flock on a file beside the store; the file says who holds it."""

    def __init__(self, db_path: Path):
        self.path = Path(str(db_path) + ".lock")
        self._fd: int | None = None

    def acquire(self) -> bool:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()} {time.time():.0f}\n".encode())
        self._fd = fd
        return True

    def holder(self) -> tuple[int | None, float | None]:
        try:
            pid, since = self.path.read_text().split()
            return int(pid), float(since)
        except (OSError, ValueError):
            return None, None

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


def thresholds(fleet: Fleet) -> Thresholds:
    h = fleet.health
    return Thresholds(unhealthy_after=h.unhealthy_after, recover_after=h.recover_after, stale_after_s=h.stale_after)


def reconcile_once(fleet: Fleet, conn: sqlite3.Connection, transports: Transports, state_dir: Path) -> PassReport:
    """One idempotent pass. Reads the store, does all network I/O with no transaction open, writes
    the decisions in one short transaction, then starts/stops attempts and records the answers
    in a second one. Killed anywhere, the next pass heals: an attempt recorded `starting` but never
    launched is found missing; an attempt ended in the store but still alive is on its node's
    kill list until the node confirms it is gone."""
    started = time.time()
    stored = queries.load_nodes(conn)
    positions = queries.kernel_log_positions(conn)
    key = queries.attempt_key(conn)
    prior = prior_partitions(conn)
    jobs = queries.load_jobs(conn, active_only=True)
    unreaped = queries.load_attempts(conn, unreaped=True)
    attempts = {a.id: a for a in queries.load_attempts(conn, jobs=list(jobs))}
    history = queries.load_attempts(conn, jobs=[], since=started - fleet.health.lemon_window)
    kill: dict[str, list[str]] = {}
    for a in unreaped:
        if not a.state.live:
            kill.setdefault(a.node, []).append(a.id)
    inventory = take_inventory(fleet, state_dir)
    observations = sweep(inventory.nodes, transports, probe_timeout=fleet.health.probe_timeout,
                         concurrency=fleet.health.concurrency, positions=positions,
                         kill={k: tuple(v) for k, v in kill.items()}, key=key)
    now = time.time()
    plan = plan_pass(stored, inventory.nodes, inventory.failed_pools, observations, now, thresholds(fleet), prior)
    views = _views(plan, inventory.nodes, observations, stored)
    jp = plan_jobs(jobs, list(attempts.values()), views, now, history=history,
                   lemon=LemonRule(fleet.health.lemon_after, fleet.health.lemon_window))
    reaped = [i for name, ids in kill.items() if _complete(observations.get(name)) for i in ids]
    apply_pass(conn, plan, now, jp, reaped)
    by_name = {n.name: n for n in inventory.nodes}
    launched, stopped = carry_out(transports, by_name, jp.launches, jp.stops, key, fleet.health.concurrency)
    done = time.time()
    events = apply_results(conn, jp, launched, stopped, done)
    events += _size_pools(fleet, conn, inventory, state_dir, done, _demand(jp))
    done = time.time()
    return PassReport(started, done - started, plan.nodes, plan.events + jp.events + events, plan.partitions,
                      inventory.failed_pools, len(jp.launches), len(jp.stops))


def _demand(jp) -> list:
    """One entry per replica the job planner could not place this pass (oldest job first)."""
    from ..jobspec import spec_from_store
    from .pools import Demand
    out = []
    for name in jp.unplaced:
        job = jp.jobs.get(name)
        if job is None or job.state.terminal:
            continue
        spec = spec_from_store(job.spec)
        out.append(Demand(name, spec.gpus, spec.gpu_type, spec.gpu_memory_gb, spec.pool))
    return out


def _size_pools(fleet: Fleet, conn: sqlite3.Connection, inventory, state_dir: Path, now: float,
                demand: list = ()) -> list[Event]:
    """Cloud pools: launch up to `min` and for pending jobs (up to `max`, next pool on a capacity
    refusal), replace quarantined instances whose jobs have moved."""
    from .pools import act_pools, plan_pools, pool_backoff
    if not any(getattr(p, "min", None) is not None for p in fleet.pools):
        return []
    nodes = queries.load_nodes(conn)
    busy = {a.node for a in queries.load_attempts(conn, unreaped=True) if a.state.live}
    worked = queries.last_work_by_node(conn)
    idle_since = {n.name: max(n.state_since or now, worked.get(n.name) or 0) for n in nodes.values()}
    plan = plan_pools(fleet, inventory.instances or {}, nodes, busy, queries.open_launches(conn),
                      inventory.failed_pools, now, demand=demand, backoff=pool_backoff(conn, fleet),
                      idle_since=idle_since)
    if not plan.launches and not plan.retire and not plan.grow:
        return []
    return act_pools(fleet, conn, plan, state_dir, now)


def _complete(obs) -> bool:
    """A whole answer about the node's attempts and GPUs. Under a work dir others can change the
    probe read and killed nothing: no news about attempts (none vanished, none reaped), no new work."""
    return obs is not None and obs.contact is Contact.OK and obs.complete and obs.work_dir_unsafe is None


def _views(plan, inventory, observations, stored) -> dict[str, NodeView]:
    records = {n.name: n for n in plan.nodes}
    views = {}
    for inv in inventory:
        rec = records.get(inv.name)
        if rec is None:
            continue
        obs = observations.get(inv.name)
        answered = obs is not None and obs.contact in (Contact.OK, Contact.HUNG)
        complete = _complete(obs)
        old = stored.get(inv.name)
        rebooted = bool(answered and obs.boot_id and old is not None and old.boot_id and obs.boot_id != old.boot_id)
        cut = FLEET in plan.partitions or f"pool:{inv.pool}" in plan.partitions
        gpus = tuple(Gpu(g.uuid, g.index, g.name or "", g.memory_total_mib) for g in obs.gpus if g.uuid) \
            if complete else ()
        if complete and obs.spot_notice:
            rec = replace(rec, draining=True)   # the planner moves its jobs (services first); the flag is not stored
        views[inv.name] = NodeView(rec, answered, complete, partitioned=cut and not answered, rebooted=rebooted,
                                   reports={r.id: r for r in obs.attempts} if complete else {},
                                   gpus=gpus, work_dir=inv.work_dir)
    return views
