"""Pure: what `run` can tell before recording a job. `refusal`: no pool of the fleet could ever fit
it (the CLI exits 2 with the reason); `where_now`: for `run --dry-run`, where each replica would go
as the last pass saw the nodes (a node and its GPUs, a cloud pool that would grow, or why not).

Called by ops.record_job (the refusal) and ops.dry_run (which reads the store, then calls
`where_now`). Both apply gpufit's one fit rule: `submit_shortfall` against each pool's `gpu:` spec,
`placement.place` against the GPUs nodes reported, `pool_shortfall` for growth as the pool planner
does. No I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from .gpufit import pool_shortfall, submit_shortfall
from .jobspec import JobSpec
from .models import Attempt, NodeRecord, NodeState
from .placement import Gpu, Offer, Placement, Request, place
from .reconcile.replicas import unavailable
from .spec import CloudPoolSpec, Fleet

_GONE = (NodeState.TERMINATING, NodeState.TERMINATED)


def _request(spec: JobSpec, exclude: frozenset[str] = frozenset()) -> Request:
    return Request(spec.name, spec.gpus, spec.gpu_type, spec.gpu_memory_gb, spec.pool, spec.spreads,
                   exclude=exclude, port=spec.port if isinstance(spec.port, int) else None)


def refusal(fleet: Fleet, spec: JobSpec) -> str | None:
    """Why no pool of this fleet (or the job's `pool:`) could ever run the job; None if one could.
    A pool whose spec does not declare `gpu:` could: its nodes may have any GPUs."""
    why = []
    for pool in fleet.pools:
        if spec.pool and pool.name != spec.pool:
            continue
        if "gpu" not in pool.model_fields_set:
            return None
        short = submit_shortfall(spec.gpus, spec.gpu_type, spec.gpu_memory_gb, pool.gpu)
        if short is None:
            return None
        why.append(f"pool {pool.name}: {short}")
    return f"job {spec.name}: no pool of this fleet could ever fit {_request(spec).describe()} ({'; '.join(why)})"


@dataclass(frozen=True)
class Where:
    """Where one replica would go now: `node` (with `gpus`), or `pool` would grow, or neither (`why`)."""

    replica: int
    node: str | None = None
    gpus: tuple[int, ...] = ()
    pool: str | None = None
    why: str = ""


def _offers(nodes: dict[str, NodeRecord], gpus: dict[str, tuple[Gpu, ...]], live: list[Attempt]) -> list[Offer]:
    out = []
    for name, rec in sorted(nodes.items()):
        here = [a for a in live if a.node == name]
        replicas: dict[str, int] = {}
        for a in here:
            replicas[a.job] = replicas.get(a.job, 0) + 1
        out.append(Offer(name, rec.pool, gpus.get(name, ()), frozenset(g for a in here for g in a.gpus),
                         unavailable(rec), replicas, frozenset(a.port for a in here if a.port is not None)))
    return out


def _room(fleet: Fleet, nodes: dict[str, NodeRecord]) -> dict[str, int]:
    """Instances each cloud pool may still launch."""
    return {p.name: p.max - sum(1 for n in nodes.values() if n.pool == p.name and n.state not in _GONE)
            for p in fleet.pools if isinstance(p, CloudPoolSpec)}


def where_now(fleet: Fleet, spec: JobSpec, nodes: dict[str, NodeRecord], gpus: dict[str, tuple[Gpu, ...]],
              live: list[Attempt]) -> list[Where]:
    """Each replica in turn, as the pass would place it (`spread` and GPUs taken by earlier replicas
    included), else the first cloud pool in spec order with room whose shape fits, else why not."""
    offers = _offers(nodes, gpus, live)
    room = _room(fleet, nodes)
    out = []
    for r in range(spec.replicas):
        got = place(_request(spec), offers)
        if isinstance(got, Placement):
            i = next(i for i, o in enumerate(offers) if o.node == got.node)
            o = offers[i]
            offers[i] = replace(o, used=o.used | {g.uuid for g in got.gpus},
                                replicas={**o.replicas, spec.name: o.replicas.get(spec.name, 0) + 1})
            out.append(Where(r, node=got.node, gpus=tuple(g.index for g in got.gpus)))
            continue
        grow = next((p.name for p in fleet.pools if room.get(p.name, 0) > 0 and (not spec.pool or p.name == spec.pool)
                     and pool_shortfall(spec.gpus, spec.gpu_type, spec.gpu_memory_gb, p.gpu) is None), None)
        if grow is not None:
            room[grow] -= 1
        out.append(Where(r, pool=grow, why=got))
    return out
