"""Pure: the node half of a pass's plan: (stored nodes, inventory, observations) -> node rows,
events, partition scopes, and the NodeView of each node that the job planner reads.

Called by reconcile.plan.plan. No I/O; tested table-style.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, replace

from ..health import Thresholds, classify, condemns_attempts, fault_gpus, next_node, rebooted
from ..models import Contact, Event, Finding, InventoryNode, NodeRecord, NodeState, Observation, Severity, Verdict
from ..placement import Gpu
from .jobs import NodeView

FLEET = "fleet"


@dataclass(frozen=True)
class NodePlan:
    nodes: list[NodeRecord]                         # rows to write
    removed: list[str]                              # nodes no longer in the inventory
    observations: list[tuple[Observation, Verdict]]
    events: list[Event]
    partitions: frozenset[str]                      # scopes ("fleet", "pool:x") that look partitioned now


def partitioned_scopes(inventory: list[InventoryNode], observations: dict[str, Observation]) -> frozenset[str]:
    """More than half of the fleet (or of a pool with several nodes) silent in one pass: suspect our side."""
    silent = {n for n, o in observations.items() if o.contact is Contact.UNREACHABLE}
    scopes = set()
    seen = [n for n in inventory if n.name in observations]
    if len(seen) >= 2 and len([n for n in seen if n.name in silent]) * 2 > len(seen):
        return frozenset({FLEET})   # covers every pool
    pool_size = Counter(n.pool for n in seen)
    pool_silent = Counter(n.pool for n in seen if n.name in silent)
    for pool, size in pool_size.items():
        if size >= 2 and pool_silent[pool] * 2 > size:
            scopes.add(f"pool:{pool}")
    return frozenset(scopes)


def plan_nodes(stored: dict[str, NodeRecord], inventory: list[InventoryNode], failed_pools: dict[str, str],
              observations: dict[str, Observation], now: float, th: Thresholds,
              prior_partitions: frozenset[str]) -> NodePlan:
    events: list[Event] = []
    rows: list[NodeRecord] = []
    pairs: list[tuple[Observation, Verdict]] = []
    partitions = partitioned_scopes(inventory, observations)
    events += _partition_events(partitions, prior_partitions, inventory, observations, now)
    for inv in inventory:
        node = stored.get(inv.name)
        if node is None:
            node = NodeRecord(name=inv.name, pool=inv.pool, provider=inv.provider, host=inv.target.host,
                              port=inv.target.port, state=NodeState.PROVISIONING,
                              reason="waiting for the first healthy probe", state_since=now,
                              gpus_expected=inv.expect.gpus)
            events.append(Event(now, "node-added", f"added to pool {inv.pool} ({inv.target.host})", node=inv.name))
        node = replace(node, pool=inv.pool, provider=inv.provider, host=inv.target.host, port=inv.target.port,
                       gpus_expected=inv.expect.gpus, cloud=inv.cloud)
        obs = observations.get(inv.name)
        if obs is None:
            rows.append(node)
            continue
        verdict = classify(obs, inv.expect)
        cut_off = FLEET in partitions or f"pool:{inv.pool}" in partitions
        node, node_events = next_node(node, obs, verdict, now, th, partitioned=cut_off)
        rows.append(node)
        events += node_events
        pairs.append((obs, verdict))
    listed = {n.name for n in inventory}
    removed = [name for name, node in stored.items() if name not in listed and node.pool not in failed_pools]
    events += [Event(now, "node-removed", "no longer in the fleet spec or provider listing", node=name)
               for name in removed]
    events += [Event(now, "pool-error", f"pool {pool}: {why}", severity="warning") for pool, why in failed_pools.items()]
    return NodePlan(rows, removed, pairs, events, partitions)


def _partition_events(now_scopes: frozenset[str], before: frozenset[str], inventory: list[InventoryNode],
                      observations: dict[str, Observation], now: float) -> list[Event]:
    out = []
    for scope in sorted(now_scopes - before):
        members = [n for n in inventory if n.name in observations and (scope == FLEET or scope == f"pool:{n.pool}")]
        silent = [n for n in members if observations[n.name].contact is Contact.UNREACHABLE]
        out.append(Event(now, "fleet-partition",
                         f"{len(silent)} of {len(members)} nodes ({scope}) silent in one pass: suspecting our own "
                         "network; silent nodes stay suspect, none quarantined for silence", severity="alert"))
    for scope in sorted(before - now_scopes):
        out.append(Event(now, "fleet-partition-ended", f"{scope}: most nodes answer again"))
    return out


ORPHAN = "orphan-attempt"


def mark_orphans(plan: NodePlan, observations: dict[str, Observation], known: set[str],
                 stored: dict[str, NodeRecord], now: float) -> NodePlan:
    """Attempt dirs of ours (they hold their token) that the store does not know: a lost or replaced
    store, or another gridctl on the same nodes. They are never adopted or killed; the node says so
    (a finding, alerted once), and their GPUs count as busy through the compute processes listed."""
    rows, events = [], []
    for rec in plan.nodes:
        obs = observations.get(rec.name)
        alive = sorted(r.id for r in obs.attempts if r.alive and r.id not in known) if complete(obs) else []
        if alive:
            shown = ", ".join(alive[:5]) + (f" and {len(alive) - 5} more" if len(alive) > 5 else "")
            finding = Finding(ORPHAN, Severity.INFO, f"running attempt(s) this store does not know: {shown}",
                              alert=True)
            before = stored.get(rec.name)
            if before is None or ORPHAN not in {f.code for f in before.findings}:
                events.append(Event(now, ORPHAN, f"{finding.message}: left running, their GPUs count as busy "
                                    "(was the state file lost or replaced?)", node=rec.name, severity="alert"))
            rec = replace(rec, findings=rec.findings + (finding,))
        rows.append(rec)
    return replace(plan, nodes=rows, events=plan.events + events)


def complete(obs: Observation | None) -> bool:
    """The probe answered and ran to its end: its attempt reports are the whole truth. Under a
    work dir others can change, the probe read and killed nothing: no news about attempts (none
    vanished, none reaped), and no new work."""
    return obs is not None and obs.contact is Contact.OK and obs.complete and obs.work_dir_unsafe is None


def node_views(plan: NodePlan, inventory: list[InventoryNode], observations: dict[str, Observation],
               stored: dict[str, NodeRecord], th: Thresholds) -> dict[str, NodeView]:
    """Each node as the job planner sees it: its new record, whether it answered, rebooted, or is
    silent while our side looks partitioned; a spot or preemption notice makes it draining."""
    records = {n.name: n for n in plan.nodes}
    views = {}
    for inv in inventory:
        rec = records.get(inv.name)
        if rec is None:
            continue
        obs = observations.get(inv.name)
        answered = obs is not None and obs.contact in (Contact.OK, Contact.HUNG)
        full = complete(obs)
        was_rebooted = answered and rebooted(stored.get(inv.name), obs)
        cut = FLEET in plan.partitions or f"pool:{inv.pool}" in plan.partitions
        gpus = tuple(Gpu(g.uuid, g.index, g.name or "", g.memory_total_mib) for g in obs.gpus if g.uuid) \
            if full else ()
        if full and obs.spot_notice:
            rec = replace(rec, draining=True)   # the planner moves its jobs (services first); the flag is not stored
        views[inv.name] = NodeView(rec, answered, full, partitioned=cut and not answered, rebooted=was_rebooted,
                                   condemned=answered and condemns_attempts(rec, th),
                                   fault_gpus=fault_gpus(rec, th) if answered else None,
                                   foreign=frozenset(obs.foreign_attempts) if full else frozenset(),
                                   busy_gpus=frozenset(uuid for uuid, _ in obs.compute_apps) if full else frozenset(),
                                   reports={r.id: r for r in obs.attempts} if full else {},
                                   gpus=gpus, work_dir=inv.work_dir)
    return views
