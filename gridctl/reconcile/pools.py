"""Cloud pool sizing and replacement (DESIGN section 7): bring each pool to `min`, replace
quarantined instances. Called by reconcile_once after the job decisions of the pass.

plan_pools is pure. act_pools records every launch intent (pool, request id) in the store before
the API call and reuses an open intent's request id until the cloud confirms it, so a pass killed
between the call and the record never launches twice: the adapter finds the instances by their
`gridctl-request` tag. An instance is terminated only once no live attempt is left on it.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field

import providers
from providers.base import Feature, InstanceState, LaunchRequest, ProviderError, new_request_id

from ..gpufit import pool_shortfall
from ..models import Event, NodeRecord, NodeState
from ..spec import Fleet
from ..store import queries, write_tx

ALIVE = (InstanceState.PENDING, InstanceState.RUNNING)


@dataclass(frozen=True)
class Demand:
    """A pending job that no node fits: what one more instance must offer."""

    job: str
    gpus: int
    gpu_type: str | None = None
    gpu_memory_gb: float | None = None
    pool: str | None = None


@dataclass
class PoolPlan:
    launches: list[tuple[str, str, int]] = field(default_factory=list)       # (pool, request id, count)
    new_intents: list[tuple[str, str, int]] = field(default_factory=list)
    retire: list[tuple[str, str, bool, str]] = field(default_factory=list)   # (pool, instance, triage, why)
    grow: list[tuple[str, tuple[str, ...]]] = field(default_factory=list)    # (job, pools to try in order)
    rest: list[str] = field(default_factory=list)                           # pools put on backoff
    events: list[Event] = field(default_factory=list)


def _fits(pool, d: Demand) -> bool:
    """The placement rule (gpufit) against the pool's `gpu:` spec: never grow a pool none of whose
    instances could run the job."""
    if d.pool and d.pool != pool.name:
        return False
    return pool_shortfall(d.gpus, d.gpu_type, d.gpu_memory_gb, pool.gpu) is None


def _candidates(fleet: Fleet, d: Demand, creatable: set[str], room: dict[str, int], backoff: dict[str, float],
                now: float) -> tuple[str, ...]:
    """Pools that could take the job, in spec order; a pool's `fallback` is tried right after it."""
    order: list[str] = []
    for pool in fleet.pools:
        for name in (pool.name, *getattr(pool, "fallback", [])):
            if name and name not in order:
                order.append(name)
    return tuple(n for n in order if n in creatable and room.get(n, 0) > 0 and backoff.get(n, 0) <= now
                 and _fits(fleet.pool(n), d))


def plan_pools(fleet: Fleet, instances: dict[str, dict], nodes: dict[str, NodeRecord], busy_nodes: set[str],
               open_intents: dict[str, tuple[str, int, float]], failed_pools: dict[str, str], now: float,
               new_id=new_request_id, demand: list[Demand] = (), backoff: dict[str, float] | None = None,
               idle_since: dict[str, float] | None = None) -> PoolPlan:
    """`idle_since`: node -> when it last had work (or became ready); `busy_nodes`: nodes with live attempts."""
    plan = PoolPlan()
    backoff = backoff or {}
    idle_since = idle_since or {}
    creatable: set[str] = set()
    room: dict[str, int] = {}
    in_flight = 0
    for pool in fleet.pools:
        if pool.name in failed_pools or pool.name not in instances:
            continue
        try:
            if Feature.CREATE not in providers.get(pool.provider).features:
                continue
        except ProviderError:
            continue
        creatable.add(pool.name)
        listed = instances[pool.name]
        retiring = set()
        for inst_id, inst in sorted(listed.items()):
            node = nodes.get(inst_id)
            if inst.state is not InstanceState.RUNNING or node is None or node.state is not NodeState.QUARANTINED:
                continue
            if not getattr(pool, "replace", True) or inst_id in busy_nodes:
                continue   # its jobs move first; a pool without `replace` keeps it for a person
            triage = bool(getattr(pool, "keep_for_triage", False))
            retiring.add(inst_id)
            plan.retire.append((pool.name, inst_id, triage, node.reason))
        # launched but not ready within launch_timeout: give it up, and let the pool rest so pending
        # work tries the next pool
        timeout = getattr(pool, "launch_timeout", None)
        for inst_id, inst in sorted(listed.items()):
            node = nodes.get(inst_id)
            ready = node is not None and node.state in (NodeState.READY, NodeState.SUSPECT, NodeState.QUARANTINED)
            if (timeout and inst.state in ALIVE and not ready and inst_id not in retiring and inst.launched_at
                    and now - inst.launched_at > timeout):
                retiring.add(inst_id)
                plan.retire.append((pool.name, inst_id, False, f"not ready {now - inst.launched_at:.0f}s after launch "
                                    f"(launch_timeout {timeout:g}s)"))
                plan.rest.append(pool.name)
        alive = [i for i, inst in listed.items() if inst.state in ALIVE and i not in retiring]
        # idle above min: ready, no live attempt, nothing ended there for idle_timeout
        idle_timeout = getattr(pool, "idle_timeout", None)
        if idle_timeout and len(alive) > pool.min:
            for inst_id in sorted(alive, key=lambda i: idle_since.get(i, now)):
                node = nodes.get(inst_id)
                if len(alive) <= pool.min:
                    break
                if (node is None or node.state is not NodeState.READY or inst_id in busy_nodes
                        or now - idle_since.get(inst_id, now) < idle_timeout):
                    continue
                retiring.add(inst_id)
                alive.remove(inst_id)
                plan.retire.append((pool.name, inst_id, False, f"idle for {now - idle_since[inst_id]:.0f}s "
                                    f"(idle_timeout {idle_timeout:g}s, min {pool.min})"))
        starting = [i for i in alive if listed[i].state is InstanceState.PENDING or
                    (nodes.get(i) is not None and nodes[i].state is NodeState.PROVISIONING) or i not in nodes]
        in_flight += len(starting)
        intent = open_intents.get(pool.name)
        # launch_rate: at most this many instances launched in any minute
        recent = sum(1 for inst in listed.values() if inst.launched_at and now - inst.launched_at < 60)
        rate_left = max(0, getattr(pool, "launch_rate", 10**6) - recent)
        room[pool.name] = min(max(0, pool.max - len(alive)), rate_left) if intent is None else 0
        if intent is not None:
            plan.launches.append((pool.name, intent[0], intent[1]))   # same request id: never twice
            in_flight += intent[1]
        elif len(alive) < pool.min:
            count = min(pool.min - len(alive), max(0, pool.max - len(alive)), rate_left)
            if count > 0:
                request = new_id()
                plan.new_intents.append((pool.name, request, count))
                plan.launches.append((pool.name, request, count))
                room[pool.name] -= count
                in_flight += count
    # pending jobs no node fits: one more instance each, beyond those already on their way
    for d in list(demand)[in_flight:]:
        pools = _candidates(fleet, d, creatable, room, backoff, now)
        if pools:
            plan.grow.append((d.job, pools))
            room[pools[0]] -= 1
    return plan


def act_pools(fleet: Fleet, conn: sqlite3.Connection, plan: PoolPlan, state_dir, now: float) -> list[Event]:
    """Record intents, then call the clouds (no transaction open), then record what they said."""
    events: list[Event] = []
    if plan.new_intents:
        with write_tx(conn):
            for pool, request, count in plan.new_intents:
                queries.record_launch(conn, request, pool, count, now)
    results: list[tuple[str, str, str | None]] = []
    for pool_name, request, count in plan.launches:
        pool = fleet.pool(pool_name)
        try:
            got = providers.get(pool.provider)(fleet.fleet, pool, state_dir).launch(LaunchRequest(request, count))
            events.append(Event(now, "instance-launch", f"pool {pool_name}: {len(got)} instance(s) for request "
                                f"{request}: {', '.join(sorted(i.id for i in got))}"))
            results.append((pool_name, request, None))
        except ProviderError as e:
            events.append(Event(now, "instance-launch-failed", f"pool {pool_name}: {type(e).__name__}: {e}",
                                severity="warning"))
            results.append((pool_name, request, f"{type(e).__name__}: {e}"))
    for job, pools in plan.grow:
        events += _grow(fleet, conn, job, pools, state_dir, now)
    for pool_name, inst_id, triage, why in plan.retire:
        pool = fleet.pool(pool_name)
        adapter = providers.get(pool.provider)(fleet.fleet, pool, state_dir)
        try:
            if triage:
                adapter.stop([inst_id], triage=True)
                words = "stopped and tagged for triage"
            else:
                adapter.terminate([inst_id])
                words = "terminated"
            record = queries.get_node(conn, inst_id)
            quarantined = record is not None and record.state is NodeState.QUARANTINED
            kind = "instance-replaced" if quarantined else "instance-retired"
            events.append(Event(now, kind, f"{words} ({'quarantined: ' if quarantined else ''}{why})"
                                + ("; a replacement follows" if quarantined else ""), node=inst_id,
                                severity="warning" if quarantined else "info"))
        except ProviderError as e:
            events.append(Event(now, "instance-retire-failed", f"{type(e).__name__}: {e}", node=inst_id,
                                severity="warning"))
    with write_tx(conn):
        for name in plan.rest:
            queries.set_meta(conn, f"backoff:{name}", repr(now + CAPACITY_BACKOFF_S))
        for _, request, error in results:
            queries.finish_launch(conn, request, now, error)
        for _, inst_id, _, _ in plan.retire:
            node = queries.get_node(conn, inst_id)
            if node is not None:
                queries.save_node(conn, _terminating(node, now), now)
        queries.add_events(conn, events)
    return events


def _terminating(node: NodeRecord, now: float) -> NodeRecord:
    from dataclasses import replace
    return replace(node, state=NodeState.TERMINATING, reason=f"replaced: {node.reason}", state_since=now)


CAPACITY_BACKOFF_S = 300.0


def _grow(fleet: Fleet, conn: sqlite3.Connection, job: str, pools: tuple[str, ...], state_dir, now: float) -> list[Event]:
    """One instance for a pending job: the first pool that has capacity; a capacity or quota refusal
    puts that pool on backoff and tries the next, with an event that says why."""
    from providers.base import CapacityError, QuotaError
    events: list[Event] = []
    for i, name in enumerate(pools):
        pool = fleet.pool(name)
        request = new_request_id()
        with write_tx(conn):
            queries.record_launch(conn, request, name, 1, now)
        try:
            got = providers.get(pool.provider)(fleet.fleet, pool, state_dir).launch(LaunchRequest(request, 1))
        except (CapacityError, QuotaError) as e:
            nxt = pools[i + 1] if i + 1 < len(pools) else None
            events.append(Event(now, "pool-capacity", f"pool {name}: {type(e).__name__}: {e}; "
                                + (f"trying pool {nxt}" if nxt else "no other pool fits")
                                + f" (pool {name} rests {CAPACITY_BACKOFF_S:.0f}s)", job=job, severity="warning"))
            with write_tx(conn):
                queries.finish_launch(conn, request, now, f"{type(e).__name__}: {e}")
                queries.set_meta(conn, f"backoff:{name}", repr(now + CAPACITY_BACKOFF_S))
            continue
        except ProviderError as e:
            events.append(Event(now, "instance-launch-failed", f"pool {name}: {type(e).__name__}: {e}", job=job,
                                severity="warning"))
            with write_tx(conn):
                queries.finish_launch(conn, request, now, f"{type(e).__name__}: {e}")
            return events
        events.append(Event(now, "instance-launch", f"pool {name}: {', '.join(i.id for i in got)} for pending job "
                            f"{job}", job=job))
        with write_tx(conn):
            queries.finish_launch(conn, request, now)
        return events
    return events


def pool_backoff(conn: sqlite3.Connection, fleet: Fleet) -> dict[str, float]:
    out = {}
    for pool in fleet.pools:
        value = queries.get_meta(conn, f"backoff:{pool.name}")
        if value:
            out[pool.name] = float(value)
    return out
