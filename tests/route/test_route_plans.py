"""Pure parts of routing: which endpoints are routable, and the Runtime API commands that keep
HAProxy's slots in step with them."""

from __future__ import annotations

from gridctl.models import Endpoint
from gridctl.route.haproxy import SlotPlan, plan_slots, runtime_commands
from gridctl.route.readyset import routable

MAP = "/run/x/replicas.map"


def ep(attempt: str, *, ready: bool = True, draining: bool = False, host: str = "127.0.0.5",
       port: int = 8000) -> Endpoint:
    return Endpoint(job="web", replica=int(attempt.split(".")[1]), attempt=attempt, node="n", host=host,
                    port=port, ready=ready, ready_since=1.0 if ready else None, draining=draining)


def test_only_ready_replicas_are_routable():
    assert [e.attempt for e in routable([ep("web.1"), ep("web.2", ready=False)])] == ["web.1"]


def test_draining_replica_is_left_out_while_another_is_ready():
    eps = [ep("web.1", draining=True), ep("web.2")]
    assert [e.attempt for e in routable(eps)] == ["web.2"]


def test_draining_replica_still_serves_when_it_is_the_only_ready_one():
    eps = [ep("web.1", draining=True), ep("web.2", ready=False)]
    assert [e.attempt for e in routable(eps)] == ["web.1"]


def test_new_replica_takes_the_first_free_slot_address_then_name_then_ready():
    plan = plan_slots({}, [ep("web.1", host="127.0.0.7", port=8123)], capacity=4)
    assert plan == SlotPlan(slots={1: ep("web.1", host="127.0.0.7", port=8123)}, enable=[1], disable=[], overflow=[])
    assert runtime_commands(plan, "replicas", MAP) == [
        "set server replicas/r1 addr 127.0.0.7 port 8123",
        f"set map {MAP} r1 web.1",
        "set server replicas/r1 state ready",
    ]


def test_replica_that_stays_keeps_its_slot_and_costs_no_command():
    current = {1: ep("web.1"), 2: ep("web.2")}
    plan = plan_slots(current, [ep("web.2"), ep("web.3")], capacity=4)
    assert plan.slots == {1: ep("web.3"), 2: ep("web.2")}
    assert runtime_commands(plan, "replicas", MAP) == [
        "set server replicas/r1 state maint",
        f"set map {MAP} r1 -",
        "set server replicas/r1 addr 127.0.0.5 port 8000",
        f"set map {MAP} r1 web.3",
        "set server replicas/r1 state ready",
    ]


def test_replica_that_left_is_put_in_maintenance():
    plan = plan_slots({3: ep("web.1")}, [], capacity=4)
    assert plan.slots == {} and plan.disable == [3]
    assert runtime_commands(plan, "replicas", MAP) == ["set server replicas/r3 state maint", f"set map {MAP} r3 -"]


def test_replicas_beyond_the_slots_are_reported_not_dropped_silently():
    plan = plan_slots({}, [ep("web.1"), ep("web.2"), ep("web.3")], capacity=2)
    assert sorted(plan.slots) == [1, 2] and [e.attempt for e in plan.overflow] == ["web.3"]
