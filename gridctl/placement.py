"""Pure: fit a job's GPU request onto nodes at GPU granularity, or say precisely why not (DESIGN section 6).

Called by reconcile/jobs.py for every attempt it needs to start. No I/O.
A node offers its GPUs (from this pass's probe) minus those held by live attempts. Only ready,
uncordoned nodes take work. Bin-packing by default (fill busy nodes first); `spread` puts
replicas of one job on different nodes first.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .gpufit import gpu_fits, marketed_gb, type_matches


@dataclass(frozen=True)
class Gpu:
    uuid: str
    index: int
    name: str = ""
    memory_mib: int | None = None


@dataclass(frozen=True)
class Offer:
    """One node as placement sees it."""

    node: str
    pool: str
    gpus: tuple[Gpu, ...]
    used: frozenset[str] = frozenset()           # GPU UUIDs held by live attempts
    unavailable: str | None = None               # why it takes no work ("quarantined (xid 79)"), None if it does
    replicas: dict[str, int] = field(default_factory=dict)   # job -> live attempts here
    ports: frozenset[int] = frozenset()          # ports held by live attempts here
    foreign: frozenset[str] = frozenset()        # GPU UUIDs running compute processes gridctl did not start


@dataclass(frozen=True)
class Request:
    job: str
    gpus: int
    gpu_type: str | None = None
    gpu_memory_gb: float | None = None           # per GPU, as sold (24 for an L4): gpufit compares
    pool: str | None = None
    spread: bool = False
    avoid: frozenset[str] = frozenset()          # nodes where this job already failed
    exclude: frozenset[str] = frozenset()        # nodes it must not use now (a silent node it is hedging from)
    port: int | None = None                      # a fixed service port the node must have free

    def describe(self) -> str:
        kind = self.gpu_type or "GPU"
        mem = f"-{self.gpu_memory_gb:g}GB" if self.gpu_memory_gb else ""
        what = f"{self.gpus}x{kind}{mem}" if self.gpus else "a node (0 GPUs)"
        return what + (f" in pool {self.pool}" if self.pool else "")


@dataclass(frozen=True)
class Placement:
    node: str
    gpus: tuple[Gpu, ...]


AUTO_PORTS = range(20000, 30000)   # where `port: auto` services get their port on a node


def free_port(used: frozenset[int], ports: range = AUTO_PORTS) -> int | None:
    """The lowest port of the range no live attempt on the node holds."""
    return next((p for p in ports if p not in used), None)


def _matches(gpu: Gpu, req: Request) -> bool:
    return gpu_fits(req.gpu_type, req.gpu_memory_gb, gpu.name, gpu.memory_mib)


def _why_not(offer: Offer, req: Request) -> str | None:
    """None when the node fits; otherwise a short phrase, after the node's name, for the pending reason."""
    if offer.node in req.exclude:
        return "silent"
    if offer.unavailable:
        return offer.unavailable
    if req.pool and offer.pool != req.pool:
        return f"in pool {offer.pool}"
    if req.port is not None and req.port in offer.ports:
        return f"has port {req.port} in use"
    if req.gpus == 0:
        return None
    fitting = [g for g in offer.gpus if _matches(g, req)]
    if not fitting:
        have = offer.gpus[0].name if offer.gpus else "no GPUs"
        if req.gpu_memory_gb and offer.gpus and all(type_matches(req.gpu_type, g.name) for g in offer.gpus):
            size_gb = marketed_gb(offer.gpus[0].memory_mib, offer.gpus[0].name)
            return f"GPUs have {size_gb}GB" if size_gb else "GPU memory unknown"
        return f"has {have}"
    free = [g for g in fitting if g.uuid not in offer.used and g.uuid not in offer.foreign]
    if len(free) < req.gpus:
        busy = len([g for g in fitting if g.uuid in offer.foreign and g.uuid not in offer.used])
        return (f"has {len(free)} free GPU{'' if len(free) == 1 else 's'}"
                + (f" ({busy} busy with processes gridctl did not start)" if busy else ""))
    return None


def place(req: Request, offers: list[Offer]) -> Placement | str:
    """The chosen node and GPUs, or the pending reason naming why each node was rejected."""
    fits: list[tuple[tuple, Offer, tuple[Gpu, ...]]] = []
    rejected: dict[str, list[str]] = {}     # phrase -> the nodes it applies to, in offer order
    for offer in offers:
        why = _why_not(offer, req)
        if why is not None:
            rejected.setdefault(why, []).append(offer.node)
            continue
        taken = offer.used | offer.foreign
        free = [g for g in offer.gpus if _matches(g, req) and g.uuid not in taken] if req.gpus else []
        chosen = tuple(sorted(free, key=lambda g: g.index)[: req.gpus])
        left = len([g for g in offer.gpus if g.uuid not in taken]) - len(chosen)
        here = offer.replicas.get(req.job, 0) if req.spread else 0
        key = (offer.node in req.avoid, here, left, offer.node)
        fits.append((key, offer, chosen))
    if fits:
        _, offer, chosen = min(fits, key=lambda f: f[0])
        return Placement(offer.node, chosen)
    if not offers:
        return f"no node fits {req.describe()}: the fleet has no nodes yet"
    return f"no node fits {req.describe()}: " + ", ".join(_grouped(phrase, nodes) for phrase, nodes in rejected.items())


NAMED_NODES = 3   # a reason names at most this many nodes per clause, then counts the rest


def _grouped(phrase: str, nodes: list[str]) -> str:
    """One clause per distinct phrase, never one per node: `a, b have 0 free GPUs`,
    `n1, n2, n3 and 497 more cordoned` (a 500-node fleet gets a readable reason)."""
    if len(nodes) == 1:
        return f"{nodes[0]} {phrase}"
    names = ", ".join(nodes[:NAMED_NODES]) + (f" and {len(nodes) - NAMED_NODES} more" if len(nodes) > NAMED_NODES else "")
    return f"{names} {'have ' + phrase[4:] if phrase.startswith('has ') else phrase}"
