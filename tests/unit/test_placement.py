"""placement.place: GPU-granular fits and the pending reason, table-style (DESIGN section 6).

Guards against: two attempts handed the same GPU, jobs scattered over idle nodes when a busy one
fits (fragmenting the fleet), service replicas stacked on one node when they asked to spread, work
sent to quarantined / cordoned / draining nodes, a hedge placed on the silent node it hedges from,
and a pending job whose reason does not say why each node said no.
"""

from __future__ import annotations

import pytest

from gridctl.placement import Gpu, Offer, Placement, Request, place

H100 = "NVIDIA H100 80GB HBM3"
A100_40 = "NVIDIA A100-SXM4-40GB"
H100_MIB = 81559
A100_40_MIB = 40960
L4, L4_MIB = "NVIDIA L4", 23034
L40S, L40S_MIB = "NVIDIA L40S", 46068


def gpus(node: str, n: int, name: str = H100, mib: int | None = H100_MIB) -> tuple[Gpu, ...]:
    return tuple(Gpu(f"GPU-{node}-{i}", i, name, mib) for i in range(n))


def offer(node: str, n: int = 8, *, used: int = 0, pool: str = "p", name: str = H100, mib: int | None = H100_MIB,
          unavailable: str | None = None, replicas: dict[str, int] | None = None) -> Offer:
    g = gpus(node, n, name, mib)
    return Offer(node, pool, g, frozenset(x.uuid for x in g[:used]), unavailable, replicas or {})


def req(n: int = 1, **kw) -> Request:
    return Request(kw.pop("job", "j"), n, **kw)


# ---------------------------------------------------------------- which node is chosen

PICKS = [
    ("bin-packing: the busiest node that fits",
     req(2), [offer("idle", 8), offer("busy", 8, used=6), offer("half", 8, used=4)], "busy"),
    ("bin-packing counts free GPUs, not node size",
     req(1), [offer("big", 8, used=5), offer("small", 2)], "small"),
    ("a busy node that cannot fit is skipped",
     req(4), [offer("busy", 8, used=6), offer("half", 8, used=4), offer("idle", 8)], "half"),
    ("gpu_type filter (case-insensitive)",
     req(1, gpu_type="h100"), [offer("a", 8, used=7, name=A100_40, mib=A100_40_MIB), offer("h", 8)], "h"),
    ("gpu_type L4 is not an L40S (whole words of the name)",
     req(1, gpu_type="L4"), [offer("s", 8, used=7, name=L40S, mib=L40S_MIB), offer("l", 8, name=L4, mib=L4_MIB)], "l"),
    ("a 24 GB request places on an L4 reporting 23034 MiB",
     req(1, gpu_type="L4", gpu_memory_gb=24), [offer("l", 1, name=L4, mib=L4_MIB)], "l"),
    ("an 80 GB request places on an H100 reporting 81559 MiB",
     req(1, gpu_memory_gb=80), [offer("h", 8)], "h"),
    ("gpu_memory_gb filter",
     req(1, gpu_memory_gb=80), [offer("small", 8, used=7, name=A100_40, mib=A100_40_MIB), offer("big", 8)], "big"),
    ("gpu_memory_gb below what the GPU has fits",
     req(1, gpu_memory_gb=40), [offer("a", 8, used=7, name=A100_40, mib=A100_40_MIB), offer("h", 8)], "a"),
    ("pool filter",
     req(1, pool="west"), [offer("e", 8, used=7, pool="east"), offer("w", 8, pool="west")], "w"),
    ("quarantined node rejected even when busiest",
     req(1), [offer("q", 8, used=7, unavailable="quarantined (xid 79)"), offer("ok", 8)], "ok"),
    ("cordoned node rejected",
     req(1), [offer("c", 8, used=7, unavailable="cordoned"), offer("ok", 8)], "ok"),
    ("draining node rejected",
     req(1), [offer("d", 8, used=7, unavailable="draining"), offer("ok", 8)], "ok"),
    ("avoid: a node where the job failed loses to any other fit",
     req(1, avoid=frozenset({"busy"})), [offer("busy", 8, used=7), offer("idle", 8)], "idle"),
    ("avoid: chosen when nothing else fits",
     req(2, avoid=frozenset({"busy"})), [offer("busy", 8, used=4), offer("tiny", 1)], "busy"),
    ("exclude: never the node a hedge is hedging from",
     req(1, exclude=frozenset({"silent"})), [offer("silent", 8, used=7), offer("other", 8)], "other"),
    ("0-GPU job fits on a node with no GPUs",
     req(0), [offer("cpu", 0)], "cpu"),
    ("0-GPU job fits on a full node",
     req(0), [offer("full", 2, used=2)], "full"),
    ("0-GPU job still respects the pool",
     req(0, pool="b"), [offer("x", 0, pool="a"), offer("y", 0, pool="b")], "y"),
    ("ties broken by node name",
     req(1), [offer("n2", 4), offer("n1", 4)], "n1"),
]


@pytest.mark.parametrize("case, request_, offers, node", PICKS, ids=[c[0] for c in PICKS])
def test_place_picks_the_right_node(case, request_, offers, node):
    got = place(request_, offers)
    assert isinstance(got, Placement), got
    assert got.node == node


def test_spread_puts_replicas_of_one_job_on_different_nodes_first():
    offers = [offer("busy", 8, used=6, replicas={"svc": 1}), offer("idle", 8)]
    assert place(req(1, job="svc", spread=True), offers).node == "idle"
    # without spread, bin-packing stacks the replica on the busy node
    assert place(req(1, job="svc", spread=False), offers).node == "busy"


def test_spread_counts_only_this_jobs_replicas():
    offers = [offer("busy", 8, used=6, replicas={"other": 3}), offer("idle", 8)]
    assert place(req(1, job="svc", spread=True), offers).node == "busy"


def test_spread_falls_back_to_a_node_with_a_replica_when_no_other_fits():
    offers = [offer("busy", 8, used=6, replicas={"svc": 1}), offer("full", 8, used=8, replicas={"x": 1})]
    assert place(req(1, job="svc", spread=True), offers).node == "busy"


def test_used_gpus_are_never_handed_out_and_lowest_free_indices_are_chosen():
    g = gpus("n", 4)
    o = Offer("n", "p", g, frozenset({g[0].uuid, g[2].uuid}))
    got = place(req(2), [o])
    assert isinstance(got, Placement)
    assert [x.uuid for x in got.gpus] == [g[1].uuid, g[3].uuid]


def test_only_matching_gpus_are_chosen_on_a_mixed_node():
    mixed = (Gpu("GPU-a", 0, A100_40, A100_40_MIB), Gpu("GPU-h1", 1, H100, H100_MIB), Gpu("GPU-h2", 2, H100, H100_MIB))
    got = place(req(2, gpu_type="H100"), [Offer("m", "p", mixed)])
    assert isinstance(got, Placement)
    assert [x.uuid for x in got.gpus] == ["GPU-h1", "GPU-h2"]


def test_zero_gpu_job_gets_no_gpus():
    got = place(req(0), [offer("n", 4)])
    assert isinstance(got, Placement) and got.gpus == ()


def test_gpu_memory_filter_rejects_a_gpu_whose_memory_is_unknown():
    got = place(req(1, gpu_memory_gb=40), [offer("n", 4, mib=None)])
    assert isinstance(got, str)


# ---------------------------------------------------------------- the pending reason

REASONS = [
    ("every node named with its rejection",
     req(2, gpu_type="H100"),
     [offer("a", 8, used=7), offer("b", 8, unavailable="quarantined (xid 79)"), offer("c", 8, unavailable="cordoned")],
     "no node fits 2xH100: a has 1 free GPU, b quarantined (xid 79), c cordoned"),
    ("plural free GPUs",
     req(4), [offer("a", 8, used=5)], "no node fits 4xGPU: a has 3 free GPUs"),
    ("zero free GPUs",
     req(1), [offer("a", 2, used=2)], "no node fits 1xGPU: a has 0 free GPUs"),
    ("wrong GPU type names what the node has",
     req(1, gpu_type="H100"), [offer("a", 8, name=A100_40, mib=A100_40_MIB)],
     f"no node fits 1xH100: a has {A100_40}"),
    ("too little GPU memory",
     req(1, gpu_type="A100", gpu_memory_gb=80), [offer("a", 8, name=A100_40, mib=A100_40_MIB)],
     "no node fits 1xA100-80GB: a GPUs have 40GB"),
    ("too little GPU memory, in the marketed GB the job asks in",
     req(1, gpu_type="L4", gpu_memory_gb=48), [offer("l", 1, name=L4, mib=L4_MIB)],
     "no node fits 1xL4-48GB: l GPUs have 24GB"),
    ("GPU memory the node did not report",
     req(1, gpu_memory_gb=40), [offer("n", 4, mib=None)], "no node fits 1xGPU-40GB: n GPU memory unknown"),
    ("wrong pool",
     req(1, pool="west"), [offer("a", 8, pool="east")], "no node fits 1xGPU in pool west: a in pool east"),
    ("a node without GPUs",
     req(1), [offer("cpu", 0)], "no node fits 1xGPU: cpu has no GPUs"),
    ("a hedge source is named silent",
     req(1, exclude=frozenset({"s"})), [offer("s", 8)], "no node fits 1xGPU: s silent"),
    ("draining",
     req(1), [offer("d", 8, unavailable="draining")], "no node fits 1xGPU: d draining"),
    ("0-GPU job on an unavailable node",
     req(0), [offer("q", 0, unavailable="quarantined (xid 79)")],
     "no node fits a node (0 GPUs): q quarantined (xid 79)"),
    ("an empty fleet",
     req(1), [], "no node fits 1xGPU: the fleet has no nodes yet"),
]


@pytest.mark.parametrize("case, request_, offers, reason", REASONS, ids=[c[0] for c in REASONS])
def test_pending_reason_names_every_nodes_rejection(case, request_, offers, reason):
    assert place(request_, offers) == reason


def test_an_unavailable_node_never_fits_even_for_a_job_that_avoids_nothing():
    offers = [offer(n, 8, unavailable=why) for n, why in
              (("q", "quarantined (xid 79)"), ("c", "cordoned"), ("d", "draining"), ("s", "suspect (probe failed)"))]
    assert isinstance(place(req(1), offers), str)


def test_pending_reason_names_each_rejection_once_not_once_per_node():
    full = [offer(f"n{i}", 2, used=2) for i in range(500)]
    got = place(req(1), [*full, offer("c0", 8, unavailable="cordoned"), offer("c1", 8, unavailable="cordoned")])
    assert got == "no node fits 1xGPU: n0, n1, n2 and 497 more have 0 free GPUs, c0, c1 cordoned"
