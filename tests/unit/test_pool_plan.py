"""plan_pools, the pure part of cloud pool sizing: min, replacement, launch_timeout, idle_timeout,
growth for pending jobs with fallback order and backoff. What the providers can do comes in as
data (`features`), so no SDK is needed here.

Guards against: launching past max, a second launch while one is in flight, terminating an instance
that still runs work, scale-down below min, and a resting pool being asked again.
"""

from __future__ import annotations

import pytest

from gridctl.models import NodeRecord, NodeState
from gridctl.reconcile.pools import Demand, plan_pools
from gridctl.spec import Fleet
from providers.base import Feature, Instance, InstanceState

NOW = 1_000_000.0
CLOUD = frozenset({Feature.CREATE, Feature.STOP, Feature.SPOT})


def fleet(**pool) -> Fleet:
    base = {"provider": "aws", "region": "us-east-1", "instance_type": "g6.xlarge", "image": "ami-1",
            "gpu": {"type": "L4", "count": 1, "memory_gb": 24}}
    pools = [{**base, "name": "a", "min": 1, "max": 3, **pool}, {**base, "name": "b", "min": 0, "max": 2}]
    return Fleet.model_validate({"fleet": "f", "pools": pools})


def inst(i: str, pool: str = "a", state=InstanceState.RUNNING, launched: float = NOW - 3600) -> Instance:
    return Instance(id=i, provider="aws", pool=pool, state=state, host="127.0.0.1", launched_at=launched)


def node(i: str, state=NodeState.READY, since: float = NOW - 3600) -> NodeRecord:
    return NodeRecord(name=i, pool="a", provider="aws", host="127.0.0.1", port=22, state=state, state_since=since)


def ids():
    n = iter(range(100))
    return lambda: f"r{next(n)}"


def plan(f, instances, nodes, busy=(), intents=None, demand=(), backoff=None, idle=None):
    return plan_pools(f, instances, {n.name: n for n in nodes}, set(busy), intents or {}, {}, NOW, new_id=ids(),
                      demand=list(demand), backoff=backoff, idle_since=idle,
                      features={p.name: CLOUD for p in f.pools})


def test_an_empty_pool_is_brought_to_min_once():
    p = plan(fleet(min=2), {"a": {}, "b": {}}, [])
    assert p.launches == [("a", "r0", 2)] and p.new_intents == [("a", "r0", 2)]


def test_an_open_intent_is_reissued_not_duplicated():
    p = plan(fleet(min=2), {"a": {}, "b": {}}, [], intents={"a": ("old", 2, NOW - 5)})
    assert p.launches == [("a", "old", 2)] and p.new_intents == []


def test_a_quarantined_instance_is_replaced_only_when_its_jobs_moved():
    f = fleet(min=1)
    listed = {"a": {"i1": inst("i1")}, "b": {}}
    busy = plan(f, listed, [node("i1", NodeState.QUARANTINED)], busy={"i1"})
    assert busy.retire == [] and busy.launches == []
    free = plan(f, listed, [node("i1", NodeState.QUARANTINED)])
    assert [r[:3] for r in free.retire] == [("a", "i1", False)] and free.launches == [("a", "r0", 1)]
    triage = plan(fleet(min=1, keep_for_triage=True), listed, [node("i1", NodeState.QUARANTINED)])
    assert [r[:3] for r in triage.retire] == [("a", "i1", True)]
    kept = plan(fleet(min=1, replace=False), listed, [node("i1", NodeState.QUARANTINED)])
    assert kept.retire == [] and kept.launches == []


def test_an_instance_not_ready_within_launch_timeout_is_given_up_and_its_pool_rests():
    f = fleet(min=1, launch_timeout="10m")
    late = plan(f, {"a": {"i1": inst("i1", launched=NOW - 601)}, "b": {}}, [node("i1", NodeState.PROVISIONING)])
    assert [r[:2] for r in late.retire] == [("a", "i1")] and "launch_timeout" in late.retire[0][3]
    assert late.rest == ["a"]
    young = plan(f, {"a": {"i1": inst("i1", launched=NOW - 60)}, "b": {}}, [node("i1", NodeState.PROVISIONING)])
    assert young.retire == [] and young.launches == []


def test_idle_instances_above_min_go_after_idle_timeout_busy_ones_stay():
    f = fleet(min=1, idle_timeout="10m")
    listed = {"a": {i: inst(i) for i in ("i1", "i2", "i3")}, "b": {}}
    nodes = [node(i) for i in ("i1", "i2", "i3")]
    p = plan(f, listed, nodes, busy={"i3"}, idle={"i1": NOW - 3600, "i2": NOW - 700, "i3": NOW - 9000})
    assert sorted(r[1] for r in p.retire) == ["i1", "i2"]          # down to min 1 (i3 is busy)
    fresh = plan(f, listed, nodes, idle={"i1": NOW - 60, "i2": NOW - 60, "i3": NOW - 60})
    assert fresh.retire == []
    at_min = plan(fleet(min=3, idle_timeout="10m"), listed, nodes, idle={i: NOW - 9000 for i in ("i1", "i2", "i3")})
    assert at_min.retire == []


def test_pending_jobs_grow_the_first_fitting_pool_and_skip_resting_or_full_ones():
    f = fleet(min=0, fallback="b")
    need = [Demand("j1", 1), Demand("j2", 1)]
    p = plan(f, {"a": {}, "b": {}}, [], demand=need)
    assert p.grow == [("j1", ("a", "b")), ("j2", ("a", "b"))]
    resting = plan(f, {"a": {}, "b": {}}, [], demand=need, backoff={"a": NOW + 60})
    assert resting.grow == [("j1", ("b",)), ("j2", ("b",))]
    too_big = plan(f, {"a": {}, "b": {}}, [], demand=[Demand("big", 8)])
    assert too_big.grow == []
    in_flight = plan(f, {"a": {"i1": inst("i1", state=InstanceState.PENDING, launched=NOW - 30)}, "b": {}}, [],
                     demand=need)
    assert in_flight.grow == [("j2", ("a", "b"))]                   # one instance is already on its way


def test_launch_rate_caps_launches_per_minute():
    f = fleet(min=3, max=10, launch_rate=2)
    fresh = plan(f, {"a": {"i1": inst("i1", launched=NOW - 30)}, "b": {}}, [node("i1", NodeState.PROVISIONING)])
    assert fresh.launches == [("a", "r0", 1)]          # 1 launched this minute, 1 more allowed, though min wants 2
    later = plan(f, {"a": {"i1": inst("i1", launched=NOW - 90)}, "b": {}}, [node("i1", NodeState.PROVISIONING)])
    assert later.launches == [("a", "r0", 2)]


def test_fallback_takes_a_list_and_must_name_other_pools():
    f = fleet(min=0, fallback=["b"])
    assert f.pool("a").fallback == ["b"]
    assert plan(f, {"a": {}, "b": {}}, [], demand=[Demand("j", 1)]).grow == [("j", ("a", "b"))]
    with pytest.raises(ValueError, match="fallback zz is not another pool"):
        fleet(fallback=["zz"])


# ---------------------------------------------------------------- which pools a pending job may grow (gpufit)

def test_a_24_gb_job_grows_an_l4_pool_and_a_48_gb_job_never_does():
    f = fleet(min=0)
    assert plan(f, {"a": {}, "b": {}}, [], demand=[Demand("fits", 1, "L4", 24)]).grow == [("fits", ("a", "b"))]
    assert plan(f, {"a": {}, "b": {}}, [], demand=[Demand("big", 1, None, 48)]).grow == []


def test_an_l4_pool_spec_claiming_48_gb_is_never_grown_for_a_48_gb_job():
    # its instances report 23034 MiB like every L4: placement would never use them for this job
    f = fleet(min=0, gpu={"type": "L4", "count": 1, "memory_gb": 48})
    assert plan(f, {"a": {}, "b": {}}, [], demand=[Demand("big", 1, None, 48)]).grow == []


def test_an_l4_pool_without_memory_gb_grows_for_a_24_gb_job():
    f = fleet(min=0, gpu={"type": "L4", "count": 1})
    assert plan(f, {"a": {}, "b": {}}, [], demand=[Demand("j", 1, None, 24)]).grow == [("j", ("a", "b"))]


def test_a_job_asking_l4_never_grows_an_l40s_pool():
    f = fleet(min=0, gpu={"type": "L40S", "count": 1, "memory_gb": 48})
    assert plan(f, {"a": {}, "b": {}}, [], demand=[Demand("j", 1, "L4")]).grow == [("j", ("b",))]
