"""Cloud pool sizing and replacement (DESIGN section 7): bring each pool to `min`, replace
quarantined instances. Called by reconcile_once after the job decisions of the pass.

plan_pools is pure. act_pools records every launch intent (pool, request id) in the store before
the API call and reuses an open intent's request id until the cloud confirms it, so a pass killed
between the call and the record never launches twice: the adapter finds the instances by their
`gridctl-request` tag. An instance is terminated only once no live attempt is left on it.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from providers.base import Feature, Instance, InstanceState, new_request_id

from ..gpufit import pool_shortfall
from ..models import Event, NodeRecord, NodeState
from ..spec import Fleet
from .actions import CloudLaunch, CloudResult, CloudRetire

ALIVE = (InstanceState.PENDING, InstanceState.RUNNING)


@dataclass(frozen=True)
class Demand:
    """A pending job that no node fits: what one more instance must offer."""

    job: str
    gpus: int
    gpu_type: str | None = None
    gpu_memory_gb: float | None = None
    pool: str | None = None


CAPACITY_BACKOFF_S = 300.0


@dataclass
class PoolPlan:
    calls: list[CloudLaunch | CloudRetire] = field(default_factory=list)   # in the order act makes them
    rest: list[str] = field(default_factory=list)                          # pools put on backoff
    events: list[Event] = field(default_factory=list)

    @property
    def launches(self) -> list[tuple[str, str, int]]:
        """(pool, request id, count) of the launches that bring pools to min (not growth)."""
        return [(c.pool, c.request_id, c.count) for c in self.calls if isinstance(c, CloudLaunch) and c.job is None]

    @property
    def new_intents(self) -> list[tuple[str, str, int]]:
        return [(c.pool, c.request_id, c.count) for c in self.calls if isinstance(c, CloudLaunch) and c.new]

    @property
    def grow(self) -> list[tuple[str, tuple[str, ...]]]:
        """(job, pools to try in order) for each pending job that grows a pool."""
        return [(c.job, (c.pool, *c.fallbacks)) for c in self.calls if isinstance(c, CloudLaunch) and c.job]

    @property
    def retire(self) -> list[tuple[str, str, bool, str]]:
        return [(c.pool, c.instance, c.triage, c.why) for c in self.calls if isinstance(c, CloudRetire)]


@dataclass
class PoolAnswers:
    """What the cloud calls' answers change in the store (reconcile.apply.record writes it)."""

    finished: list[tuple[str, str | None]] = field(default_factory=list)   # (request id, error or None)
    backoff: dict[str, float] = field(default_factory=dict)                 # pool -> rests until
    nodes: list[NodeRecord] = field(default_factory=list)                   # retired: terminating
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


def plan_pools(fleet: Fleet, instances: dict[str, dict[str, Instance]], nodes: dict[str, NodeRecord],
               busy_nodes: set[str], open_intents: dict[str, tuple[str, int, float]], failed_pools: dict[str, str],
               now: float, new_id=new_request_id, demand: list[Demand] = (), backoff: dict[str, float] | None = None,
               idle_since: dict[str, float] | None = None,
               features: dict[str, frozenset[Feature]] | None = None) -> PoolPlan:
    """`idle_since`: node -> when it last had work (or became ready); `busy_nodes`: nodes with live
    attempts; `features`: pool -> what its provider can do (a pool without CREATE is left alone)."""
    plan = PoolPlan()
    features = features or {}
    backoff = backoff or {}
    idle_since = idle_since or {}
    creatable: set[str] = set()
    room: dict[str, int] = {}
    in_flight = 0
    for pool in fleet.pools:
        if pool.name in failed_pools or pool.name not in instances:
            continue
        if Feature.CREATE not in features.get(pool.name, frozenset()):
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
            plan.calls.append(CloudRetire(pool.name, inst_id, triage, node.reason, replacing=True))
        # launched but not ready within launch_timeout: give it up, and let the pool rest so pending
        # work tries the next pool
        timeout = getattr(pool, "launch_timeout", None)
        for inst_id, inst in sorted(listed.items()):
            node = nodes.get(inst_id)
            ready = node is not None and node.state in (NodeState.READY, NodeState.SUSPECT, NodeState.QUARANTINED)
            if (timeout and inst.state in ALIVE and not ready and inst_id not in retiring and inst.launched_at
                    and now - inst.launched_at > timeout):
                retiring.add(inst_id)
                plan.calls.append(CloudRetire(pool.name, inst_id, False, f"not ready {now - inst.launched_at:.0f}s "
                                              f"after launch (launch_timeout {timeout:g}s)", replacing=False))
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
                plan.calls.append(CloudRetire(pool.name, inst_id, False, f"idle for {now - idle_since[inst_id]:.0f}s "
                                              f"(idle_timeout {idle_timeout:g}s, min {pool.min})", replacing=False))
        starting = [i for i in alive if listed[i].state is InstanceState.PENDING or
                    (nodes.get(i) is not None and nodes[i].state is NodeState.PROVISIONING) or i not in nodes]
        in_flight += len(starting)
        intent = open_intents.get(pool.name)
        # launch_rate: at most this many instances launched in any minute
        recent = sum(1 for inst in listed.values() if inst.launched_at and now - inst.launched_at < 60)
        rate_left = max(0, getattr(pool, "launch_rate", 10**6) - recent)
        room[pool.name] = min(max(0, pool.max - len(alive)), rate_left) if intent is None else 0
        if intent is not None:
            plan.calls.append(CloudLaunch(pool.name, intent[0], intent[1], new=False))   # same request id: never twice
            in_flight += intent[1]
        elif len(alive) < pool.min:
            count = min(pool.min - len(alive), max(0, pool.max - len(alive)), rate_left)
            if count > 0:
                request = new_id()
                plan.calls.append(CloudLaunch(pool.name, request, count, new=True))
                room[pool.name] -= count
                in_flight += count
    # pending jobs no node fits: one more instance each, beyond those already on their way
    for d in list(demand)[in_flight:]:
        pools = _candidates(fleet, d, creatable, room, backoff, now)
        if pools:
            plan.calls.append(CloudLaunch(pools[0], new_id(), 1, new=True, job=d.job, fallbacks=pools[1:]))
            room[pools[0]] -= 1
    return plan


def after_calls(results: list[CloudResult], nodes: dict[str, NodeRecord], now: float) -> PoolAnswers:
    """The store changes and events that follow the cloud's answers: intents finished, refusing
    pools put to rest (CAPACITY_BACKOFF_S, or a TransientError's own delay), retired nodes marked
    terminating."""
    out = PoolAnswers()
    for res in results:
        call = res.call
        if isinstance(call, CloudRetire):
            _retired(out, res, call, nodes.get(call.instance), now)
            continue
        out.finished.append((res.request_id, res.error))
        job = call.job
        if res.error is None:
            what = (f"pool {res.pool}: {', '.join(res.instances)} for pending job {job}" if job else
                    f"pool {res.pool}: {len(res.instances)} instance(s) for request {res.request_id}: "
                    f"{', '.join(sorted(res.instances))}")
            out.events.append(Event(now, "instance-launch", what, job=job))
        elif res.refused and job:
            tried = (call.pool, *call.fallbacks)
            nxt = tried[tried.index(res.pool) + 1] if res.pool in tried[:-1] else None
            out.backoff[res.pool] = now + CAPACITY_BACKOFF_S
            out.events.append(Event(now, "pool-capacity", f"pool {res.pool}: {res.error}; "
                                    + (f"trying pool {nxt}" if nxt else "no other pool fits")
                                    + f" (pool {res.pool} rests {CAPACITY_BACKOFF_S:.0f}s)", job=job,
                                    severity="warning"))
        else:
            if res.retry_after_s:
                out.backoff[res.pool] = max(out.backoff.get(res.pool, 0.0), now + res.retry_after_s)
            rests = f" (pool {res.pool} rests {res.retry_after_s:g}s as the cloud asked)" if res.retry_after_s else ""
            out.events.append(Event(now, "instance-launch-failed", f"pool {res.pool}: {res.error}{rests}", job=job,
                                    severity="warning"))
    return out


def _retired(out: PoolAnswers, res: CloudResult, call: CloudRetire, node: NodeRecord | None, now: float) -> None:
    if res.error is not None:
        out.events.append(Event(now, "instance-retire-failed", res.error, node=call.instance, severity="warning"))
        return
    words = "stopped and tagged for triage" if call.triage else "terminated"
    replacing = node is not None and node.state is NodeState.QUARANTINED
    kind = "instance-replaced" if replacing else "instance-retired"
    out.events.append(Event(now, kind, f"{words} ({'quarantined: ' if replacing else ''}{call.why})"
                            + ("; a replacement follows" if replacing else ""), node=call.instance,
                            severity="warning" if replacing else "info"))
    if node is not None:
        out.nodes.append(replace(node, state=NodeState.TERMINATING, reason=f"replaced: {node.reason}",
                                 state_since=now))


