"""Both routers and a replica whose node goes dark (every packet to it dropped) while the
router holds kept-alive connections to it: a request written on such a connection is never
acknowledged, so the router gives up on that connection after connect_timeout (TCP_USER_TIMEOUT,
HAProxy's tcp-ut), whatever the method: the client gets an answer instead of waiting for the
kernel's retransmissions (about 15 minutes)."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from fleetsim import requires_root
from routesim import Replica, Router, ServingStore, get_once, run_load, wait_until


VIAS = ["builtin", pytest.param("haproxy", marks=pytest.mark.skipif(
    not shutil.which("haproxy"), reason="haproxy is not installed (scripts/test installs it)"))]


@pytest.fixture(params=VIAS)
def two(tmp_path, request):
    store = ServingStore(tmp_path)
    a, b = Replica("127.0.37.1", "a"), Replica("127.0.37.2", "b")
    ids = store.add(a, 0, ready=True), store.add(b, 1, ready=True)
    router = Router(store, request.param)
    yield router, a, b, ids
    router.stop()
    a.kill()
    b.kill()
    store.close()


def router_via(router: Router) -> str:
    return router.proc.args[router.proc.args.index("--via") + 1]


@requires_root
def test_a_post_written_to_a_dark_replica_on_a_kept_connection_is_answered_not_left_hanging(two):
    router, a, b, (a_id, b_id) = two
    # requests in turn to both replicas: the router keeps a connection open to each
    seen: set[str] = set()
    wait_until("both replicas serving", lambda: seen.add(get_once(router.url + "/work").replica) or len(seen) == 2)
    rule = ["INPUT", "-d", b.host, "-p", "tcp", "-j", "DROP"]
    subprocess.run(["iptables", "-I", *rule], check=True)
    try:
        # least outstanding, ties in turn: of two POSTs one after the other, one goes to b
        outcomes = [run_load(router.url + "/work", count=1, concurrency=1, method="POST")[0] for _ in range(2)]
        # builtin: at the failed try; haproxy: by its health checks
        wait_until(f"{b_id} benched", lambda: f"benched {b_id} (127.0.37.2:{b.port})" in router.stderr())
    finally:
        subprocess.run(["iptables", "-D", *rule], capture_output=True)
    # builtin never sends a POST that left again: 502; HAProxy sends one again whose connection
    # failed before any answer (its retry-on conn-failure), here to a
    expected = [(200, a_id), (502, "")] if router_via(router) == "builtin" else [(200, a_id), (200, a_id)]
    assert sorted((o.status, o.replica) for o in outcomes) == expected, outcomes
