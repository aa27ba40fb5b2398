"""The builtin router's choice of replica (pure): least outstanding, per-request exclusion, benching,
and a count that goes back down on every outcome."""

from __future__ import annotations

from gridctl.models import Endpoint
from gridctl.route.balance import Balancer


def ep(attempt: str, port: int = 8000) -> Endpoint:
    return Endpoint(job="web", replica=int(attempt.split(".")[1]), attempt=attempt, node="n", host="127.0.0.1",
                    port=port, ready=True, ready_since=1.0, draining=False)


def balancer(*attempts: str) -> Balancer:
    b = Balancer()
    b.update([ep(a) for a in attempts])
    return b


def test_picks_the_replica_with_fewest_outstanding_requests():
    b = balancer("web.1", "web.2")
    first = b.acquire(frozenset())
    second = b.acquire(frozenset())
    assert {first.endpoint.attempt, second.endpoint.attempt} == {"web.1", "web.2"}
    first.release()
    assert b.acquire(frozenset()).endpoint.attempt == first.endpoint.attempt


def test_ties_rotate_instead_of_always_picking_the_first():
    b = balancer("web.1", "web.2", "web.3")
    picked = []
    for _ in range(3):
        lease = b.acquire(frozenset())
        picked.append(lease.endpoint.attempt)
        lease.release()
    assert sorted(picked) == ["web.1", "web.2", "web.3"]


def test_a_retry_never_goes_back_to_the_replica_that_failed():
    b = balancer("web.1", "web.2")
    for _ in range(5):
        lease = b.acquire(frozenset({"web.1"}))
        assert lease.endpoint.attempt == "web.2"
        lease.release()
    assert b.acquire(frozenset({"web.1", "web.2"})) is None


def test_benched_replica_gets_nothing_until_unbenched():
    b = balancer("web.1", "web.2")
    assert b.bench("web.1") is True
    assert b.bench("web.1") is False             # already benched: said once
    assert {b.acquire(frozenset()).endpoint.attempt for _ in range(4)} == {"web.2"}
    assert b.unbench("web.1") is True
    assert b.outstanding("web.2") == 4
    assert b.acquire(frozenset()).endpoint.attempt == "web.1"


def test_count_goes_down_on_release_and_never_twice_for_one_lease():
    b = balancer("web.1")
    lease = b.acquire(frozenset())
    assert b.outstanding("web.1") == 1
    lease.release()
    lease.release()
    assert b.outstanding("web.1") == 0


def test_release_after_the_replica_left_and_came_back_does_not_touch_the_new_count():
    b = balancer("web.1")
    old = b.acquire(frozenset())
    b.update([])
    b.update([ep("web.1")])
    new = b.acquire(frozenset())
    old.release()
    assert b.outstanding("web.1") == 1
    new.release()
    assert b.outstanding("web.1") == 0


def test_update_keeps_counts_and_bench_of_replicas_that_stay_and_reports_the_change():
    b = balancer("web.1", "web.2")
    lease = b.acquire(frozenset({"web.2"}))
    b.bench("web.2")
    change = b.update([ep("web.1"), ep("web.2"), ep("web.3")])
    assert [e.attempt for e in change.added] == ["web.3"] and change.removed == []
    assert b.outstanding("web.1") == 1 and b.is_benched("web.2")
    change = b.update([ep("web.3")])
    assert sorted(e.attempt for e in change.removed) == ["web.1", "web.2"]
    lease.release()
    assert b.acquire(frozenset()).endpoint.attempt == "web.3"


def test_a_replica_whose_address_changed_is_a_new_member():
    b = balancer("web.1")
    b.bench("web.1")
    change = b.update([ep("web.1", port=9000)])
    assert [e.port for e in change.added] == [9000] and [e.port for e in change.removed] == [8000]
    assert not b.is_benched("web.1")
