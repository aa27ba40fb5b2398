"""The builtin router and a replica whose node goes dark (every packet to it dropped) while the
router holds kept-alive connections to it: a request written on such a connection is never
acknowledged, so the router gives up on it after connect_timeout of silence from the node's TCP,
whatever the method; a request that cannot be sent again is answered 502, never left hanging."""

from __future__ import annotations

import subprocess

import pytest

from fleetsim import requires_root
from routesim import Replica, Router, ServingStore, get_once, run_load, wait_until


@pytest.fixture
def two(tmp_path):
    store = ServingStore(tmp_path)
    a, b = Replica("127.0.37.1", "a"), Replica("127.0.37.2", "b")
    ids = store.add(a, 0, ready=True), store.add(b, 1, ready=True)
    router = Router(store, "builtin")
    yield router, a, b, ids
    router.stop()
    a.kill()
    b.kill()
    store.close()


@requires_root
def test_a_post_written_to_a_dark_replica_on_a_kept_connection_is_answered_502_not_left_hanging(two):
    router, a, b, (a_id, b_id) = two
    # requests in turn to both replicas: the router keeps a connection open to each
    seen: set[str] = set()
    wait_until("both replicas serving", lambda: seen.add(get_once(router.url + "/work").replica) or len(seen) == 2)
    rule = ["INPUT", "-d", b.host, "-p", "tcp", "-j", "DROP"]
    subprocess.run(["iptables", "-I", *rule], check=True)
    try:
        # least outstanding, ties in turn: of two POSTs one after the other, one goes to b
        outcomes = [run_load(router.url + "/work", count=1, concurrency=1, method="POST")[0] for _ in range(2)]
    finally:
        subprocess.run(["iptables", "-D", *rule], capture_output=True)
    assert sorted((o.status, o.replica) for o in outcomes) == [(200, a_id), (502, "")], outcomes
    assert f"benched {b_id} (127.0.37.2:{b.port}): connection lost before a response" in router.stderr()
