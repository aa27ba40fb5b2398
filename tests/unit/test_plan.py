"""reconcile.nodes: partition detection and the node half of a pass's plan, pure and table-style.

Guards against: quarantining half the fleet because our own network dropped, an event storm
during a partition, nodes never leaving the store, and a failed provider listing deleting a pool.
"""

from __future__ import annotations

import pytest

from gridctl.health import Expectation, Thresholds
from gridctl.models import Contact, GpuReading, Health, NodeRecord, NodeState, Observation
from gridctl.models import InventoryNode
from gridctl.reconcile.nodes import FLEET, partitioned_scopes, plan_nodes as plan_pass
from gridctl.transport import Target

TH = Thresholds(unhealthy_after=2, recover_after=3, stale_after_s=60.0)
NOW = 2000.0


def inv(name: str, pool: str = "p", gpus: int = 2) -> InventoryNode:
    return InventoryNode(name=name, pool=pool, provider="ssh", target=Target(name=name, host=f"{name}.example"),
                         expect=Expectation(gpus=gpus), work_dir="~/.gridctl")


def good(name: str, gpus: int = 2) -> Observation:
    return Observation(node=name, contact=Contact.OK, started_at=NOW, duration_s=0.3, boot_id="b-" + name,
                       smi_rc=0, gpus=tuple(GpuReading(index=i, bus_id=f"0000:{0x18 + i:02x}:00.0",
                                                       temperature_c=40.0) for i in range(gpus)),
                       xid_source="journalctl", complete=True)


def silent(name: str) -> Observation:
    return Observation(node=name, contact=Contact.UNREACHABLE, started_at=NOW, duration_s=5.0,
                       detail="connection timed out")


def stored(name: str, pool: str = "p", **kw) -> NodeRecord:
    base = dict(name=name, pool=pool, provider="ssh", host=f"{name}.example", port=22, state=NodeState.READY,
                health=Health.HEALTHY, reason="2 GPUs healthy", boot_id="b-" + name, last_seen=NOW - 15,
                last_good=NOW - 15, state_since=NOW - 600, gpus_expected=2, gpus_seen=2, good=10)
    base.update(kw)
    return NodeRecord(**base)


def fleet_of(n: int, pool: str = "p") -> list[InventoryNode]:
    return [inv(f"{pool}{i}", pool) for i in range(n)]


def observe(nodes: list[InventoryNode], silent_names: set[str]) -> dict[str, Observation]:
    return {n.name: silent(n.name) if n.name in silent_names else good(n.name) for n in nodes}


# ---------------------------------------------------------------- partitioned_scopes

@pytest.mark.parametrize("total, n_silent, partitioned", [
    (4, 3, True), (4, 2, False), (4, 1, False), (2, 2, True), (2, 1, False), (1, 1, False), (5, 3, True),
    (10, 5, False), (10, 6, True),
], ids=lambda v: str(v))
def test_more_than_half_of_the_fleet_silent_is_a_partition(total, n_silent, partitioned):
    nodes = fleet_of(total)
    obs = observe(nodes, {n.name for n in nodes[:n_silent]})
    assert (FLEET in partitioned_scopes(nodes, obs)) is partitioned


def test_exactly_half_silent_is_not_a_partition():
    nodes = fleet_of(4)
    assert partitioned_scopes(nodes, observe(nodes, {"p0", "p1"})) == frozenset()


def test_a_mostly_silent_pool_with_several_nodes_is_a_pool_partition():
    nodes = fleet_of(3, "x") + fleet_of(5, "y")
    scopes = partitioned_scopes(nodes, observe(nodes, {"x0", "x1"}))
    assert scopes == frozenset({"pool:x"})


def test_a_one_node_pool_going_silent_is_not_a_partition():
    nodes = fleet_of(1, "solo") + fleet_of(4, "y")
    assert partitioned_scopes(nodes, observe(nodes, {"solo0"})) == frozenset()


def test_only_unreachable_counts_as_silence():
    nodes = fleet_of(4)
    obs = {n.name: Observation(node=n.name, contact=Contact.HUNG, started_at=NOW, duration_s=15.0) for n in nodes}
    assert partitioned_scopes(nodes, obs) == frozenset()


def test_nodes_not_probed_this_pass_do_not_count():
    nodes = fleet_of(6)
    obs = observe(nodes[:2], {"p0", "p1"})    # only two probed, both silent
    assert partitioned_scopes(nodes, obs) == frozenset({FLEET})


# ---------------------------------------------------------------- plan_pass

def test_fleet_partition_keeps_silent_nodes_suspect_and_records_one_event():
    nodes = fleet_of(3, "x") + fleet_of(3, "y")
    before = {n.name: stored(n.name, n.pool, failures=1) for n in nodes}   # one more failure would quarantine
    quiet = {"x0", "x1", "x2", "y0"}
    plan = plan_pass(before, nodes, {}, observe(nodes, quiet), NOW, TH, frozenset())
    assert FLEET in plan.partitions
    states = {n.name: n.state for n in plan.nodes}
    assert {states[n] for n in quiet} == {NodeState.SUSPECT}
    assert states["y1"] is NodeState.READY and states["y2"] is NodeState.READY
    partition_events = [e for e in plan.events if e.kind == "fleet-partition"]
    assert len(partition_events) == 1
    (ev,) = partition_events
    assert ev.severity == "alert" and ev.message.startswith("4 of 6 nodes (fleet) silent in one pass")


def test_without_a_partition_the_same_silence_quarantines():
    nodes = fleet_of(6)
    before = {n.name: stored(n.name, failures=1) for n in nodes}
    plan = plan_pass(before, nodes, {}, observe(nodes, {"p0"}), NOW, TH, frozenset())
    assert plan.partitions == frozenset()
    assert {n.name: n.state for n in plan.nodes}["p0"] is NodeState.QUARANTINED


def test_partition_event_is_not_repeated_while_it_lasts_and_its_end_is_recorded():
    nodes = fleet_of(4)
    plan = plan_pass({}, nodes, {}, observe(nodes, {"p0", "p1", "p2"}), NOW, TH, frozenset({FLEET}))
    assert [e for e in plan.events if e.kind.startswith("fleet-partition")] == []
    plan = plan_pass({}, nodes, {}, observe(nodes, set()), NOW, TH, frozenset({FLEET}))
    ended = [e for e in plan.events if e.kind == "fleet-partition-ended"]
    assert len(ended) == 1 and ended[0].message.startswith("fleet:")
    assert plan.partitions == frozenset()


def test_pool_partition_shelters_only_that_pool():
    nodes = fleet_of(3, "x") + fleet_of(5, "y")
    before = {n.name: stored(n.name, n.pool, failures=1) for n in nodes}
    plan = plan_pass(before, nodes, {}, observe(nodes, {"x0", "x1", "y0"}), NOW, TH, frozenset())
    assert plan.partitions == frozenset({"pool:x"})
    states = {n.name: n.state for n in plan.nodes}
    assert states["x0"] is NodeState.SUSPECT and states["x1"] is NodeState.SUSPECT
    assert states["y0"] is NodeState.QUARANTINED
    (ev,) = [e for e in plan.events if e.kind == "fleet-partition"]
    assert "2 of 3 nodes (pool:x)" in ev.message


def test_new_nodes_start_provisioning_with_a_node_added_event():
    nodes = [inv("new1", "p", gpus=2), inv("new2", "p", gpus=2)]
    plan = plan_pass({}, nodes, {}, {"new2": silent("new2")}, NOW, TH, frozenset())
    rows = {n.name: n for n in plan.nodes}
    assert rows["new1"].state is NodeState.PROVISIONING and rows["new1"].state_since == NOW
    assert rows["new1"].gpus_expected == 2 and rows["new1"].host == "new1.example"
    assert rows["new2"].state is NodeState.PROVISIONING   # silent while booting: not suspect, not quarantined
    added = [e for e in plan.events if e.kind == "node-added"]
    assert [(e.node, e.message) for e in added] == [("new1", "added to pool p (new1.example)"),
                                                   ("new2", "added to pool p (new2.example)")]


def test_new_node_with_a_good_probe_becomes_ready_in_the_same_pass():
    plan = plan_pass({}, [inv("new1")], {}, {"new1": good("new1")}, NOW, TH, frozenset())
    (row,) = plan.nodes
    assert row.state is NodeState.READY
    assert [e.kind for e in plan.events] == ["node-added", "node-state"]
    (pair,) = plan.observations
    assert pair[0].node == "new1" and pair[1].health is Health.HEALTHY


def test_nodes_missing_from_inventory_are_removed():
    before = {"a": stored("a"), "gone": stored("gone")}
    plan = plan_pass(before, [inv("a")], {}, {"a": good("a")}, NOW, TH, frozenset())
    assert plan.removed == ["gone"]
    assert [n.name for n in plan.nodes] == ["a"]
    (ev,) = [e for e in plan.events if e.kind == "node-removed"]
    assert ev.node == "gone"


def test_nodes_of_a_pool_that_failed_to_list_are_kept():
    before = {"a": stored("a", "ok"), "c1": stored("c1", "cloud"), "c2": stored("c2", "cloud")}
    plan = plan_pass(before, [inv("a", "ok")], {"cloud": "AuthError: expired token"}, {"a": good("a")}, NOW, TH,
                     frozenset())
    assert plan.removed == []
    (ev,) = [e for e in plan.events if e.kind == "pool-error"]
    assert ev.message == "pool cloud: AuthError: expired token" and ev.severity == "warning"


def test_node_not_probed_this_pass_is_kept_unchanged():
    before = {"a": stored("a", state=NodeState.SUSPECT, reason="hot")}
    plan = plan_pass(before, [inv("a")], {}, {}, NOW, TH, frozenset())
    assert plan.nodes == [before["a"]] and plan.observations == [] and plan.events == []


def test_inventory_changes_refresh_the_stored_identity():
    before = {"a": stored("a", host="old.example", gpus_expected=8)}
    plan = plan_pass(before, [inv("a", gpus=2)], {}, {"a": good("a")}, NOW, TH, frozenset())
    (row,) = plan.nodes
    assert row.host == "a.example" and row.gpus_expected == 2
