"""Step 3 of a pass, pure: (facts, inventory, observations, now) -> one Plan; and, after the
actions, their answers -> the Answers to record.

Called by reconcile_once. `plan` calls the node planner (nodes.py), the job planner (jobs.py and
its parts) and the pool planner (pools.py) in that order, each seeing the decisions of the one
before. `after_actions` decides what follows each answer with the same planners' functions
(jobs.after_launch, jobs.handover, pools.after_calls). No I/O; tested table-style.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from ..health import Thresholds
from ..models import Attempt, Event, Inventory, JobRecord, NodeRecord, Observation, ReadyCheck
from ..spec import Fleet
from .actions import Results
from .facts import Facts
from .jobs import JobPlan, LemonRule, after_launch, handover, plan_jobs
from .nodes import NodePlan, complete, mark_orphans, node_views, plan_nodes
from .pools import Demand, PoolAnswers, PoolPlan, after_calls, plan_pools


@dataclass(frozen=True)
class Plan:
    now: float
    nodes: NodePlan
    jobs: JobPlan
    pools: PoolPlan
    reaped: tuple[str, ...]          # attempts whose directories this pass's probes marked done

    @property
    def node_rows(self) -> list[NodeRecord]:
        """The node rows to write: the health decision, or a lemon quarantine on top of it."""
        return [self.jobs.nodes.get(n.name, n) for n in self.nodes.nodes]

    @property
    def events(self) -> list[Event]:
        return self.nodes.events + self.jobs.events + self.pools.events


@dataclass
class Answers:
    """What the actions' answers change: rows and events for reconcile.apply.record."""

    jobs: dict[str, JobRecord] = field(default_factory=dict)
    attempts: dict[str, Attempt] = field(default_factory=dict)
    events: list[Event] = field(default_factory=list)
    pools: PoolAnswers = field(default_factory=PoolAnswers)

    @property
    def all_events(self) -> list[Event]:
        return self.events + self.pools.events


def thresholds(fleet: Fleet) -> Thresholds:
    h = fleet.health
    return Thresholds(unhealthy_after=h.unhealthy_after, recover_after=h.recover_after, stale_after_s=h.stale_after)


def plan(fleet: Fleet, facts: Facts, inventory: Inventory, observations: dict[str, Observation], now: float,
         checks: dict[str, ReadyCheck] | None = None) -> Plan:
    """The whole pass's decisions: node transitions, attempt outcomes, readiness, recovery,
    placements, hedges, hand-overs, kill lists, and the ordered cloud calls. `checks`: the
    readiness checks made beside the sweep."""
    nodes = plan_nodes(facts.nodes, inventory.nodes, inventory.failed_pools, observations, now, thresholds(fleet),
                       facts.partitions)
    known = {a.id for a in facts.attempts} | {a.id for a in facts.unreaped}
    nodes = mark_orphans(nodes, observations, known, facts.nodes, now)
    views = node_views(nodes, inventory.nodes, observations, facts.nodes, thresholds(fleet))
    jobs = plan_jobs(facts.jobs, list(facts.attempts), views, now, history=list(facts.history),
                     lemon=LemonRule(fleet.health.lemon_after, fleet.health.lemon_window), specs=facts.specs,
                     checks=checks)
    reaped = tuple(i for name, ids in facts.kill_lists().items() if complete(observations.get(name)) for i in ids)
    skeleton = Plan(now, nodes, jobs, PoolPlan(), reaped)
    return replace(skeleton, pools=_plan_pools(fleet, facts, inventory, skeleton))


def _plan_pools(fleet: Fleet, facts: Facts, inventory: Inventory, p: Plan) -> PoolPlan:
    if not any(getattr(pool, "min", None) is not None for pool in fleet.pools):
        return PoolPlan()
    records = dict(facts.nodes)
    records.update({n.name: n for n in p.node_rows})
    for name in p.nodes.removed:
        records.pop(name, None)
    attempts = {a.id: a for a in facts.unreaped}
    attempts.update(p.jobs.attempts)
    busy = {a.node for a in attempts.values() if a.state.live}
    worked = dict(facts.last_work)
    for a in p.jobs.attempts.values():
        if a.ended_at is not None:
            worked[a.node] = max(worked.get(a.node) or 0, a.ended_at)
    idle_since = {n.name: max(n.state_since or p.now, worked.get(n.name) or 0) for n in records.values()}
    return plan_pools(fleet, inventory.instances or {}, records, busy, facts.open_launches, inventory.failed_pools,
                      p.now, demand=_demand(facts, p.jobs), backoff=facts.backoff, idle_since=idle_since,
                      features=inventory.features)


def _demand(facts: Facts, jobs: JobPlan) -> list[Demand]:
    """One entry per replica the job planner could not place this pass (oldest job first)."""
    out = []
    for name in jobs.unplaced:
        job = jobs.jobs.get(name)
        spec = facts.specs.get(name)
        if job is None or spec is None or job.state.terminal:
            continue
        out.append(Demand(name, spec.gpus, spec.gpu_type, spec.gpu_memory_gb, spec.pool))
    return out


def after_actions(facts: Facts, p: Plan, results: Results, now: float) -> Answers:
    """Launches confirmed (running / failed_to_start / unconfirmed), drain hand-overs completed,
    stops noted, cloud answers turned into intents, backoffs and node rows."""
    out = Answers()
    jobs = dict(p.jobs.jobs)
    known = {a.id: a for a in facts.attempts}
    known.update(p.jobs.attempts)
    for launch, result in results.launched:
        job = jobs.get(launch.attempt.job)
        if job is None:
            continue
        if result.uncertain:
            # the answer was lost, not the launch: the next probe finds the process or its absence
            a = replace(launch.attempt, reason=f"launch answer lost ({result.detail}); the next probe decides")
            out.attempts[a.id] = a
            out.events.append(Event(now, "attempt-unconfirmed", f"attempt {a.id} on {a.node}: {a.reason}",
                                    node=a.node, job=a.job, severity="warning"))
            continue
        job, attempt, events = after_launch(job, launch.attempt, result.ok, result.pid, result.detail, now)
        jobs[job.name] = out.jobs[job.name] = job
        known[attempt.id] = out.attempts[attempt.id] = attempt
        out.events += events
        for stop in launch.then_stop if result.ok else ():
            old = known.get(stop.attempt_id)
            done = handover(old, attempt, now) if old is not None else None
            if done is not None:
                known[old.id] = out.attempts[old.id] = done[0]
                out.events.append(done[1])
    for res in results.stopped:
        s = res.stop
        if res.ok:
            out.events.append(Event(now, "attempt-stopped", f"stopped {s.attempt_id} on {s.node}: {res.detail}",
                                    node=s.node, job=s.job))
        else:
            out.events.append(Event(now, "attempt-stop-failed", f"could not stop {s.attempt_id} on {s.node} "
                                    f"({res.detail}): it will be killed when the node answers", node=s.node,
                                    job=s.job, severity="warning"))
    records = dict(facts.nodes)
    records.update({n.name: n for n in p.node_rows})
    out.pools = after_calls(results.cloud, records, now)
    return out
