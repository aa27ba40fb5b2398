"""Both routers (`--via builtin`, `--via haproxy`) against real replica servers, a real store and real
load: each request goes to a ready replica only, and a replica that dies or goes dark costs no request."""

from __future__ import annotations

import asyncio
import shutil
import subprocess

import aiohttp
import pytest

from fleetsim import requires_root
from routesim import Replica, Router, ServingStore, failures, get_once, run_load, wait_until

VIAS = ["builtin", pytest.param("haproxy", marks=pytest.mark.skipif(
    not shutil.which("haproxy"), reason="haproxy is not installed (scripts/test installs it)"))]


@pytest.fixture(params=VIAS)
def via(request) -> str:
    return request.param


@pytest.fixture
def serving(tmp_path):
    """(store, replicas started on demand); everything stopped by PID afterwards."""
    store = ServingStore(tmp_path)
    started: list[Replica] = []

    def replica(host: str, name: str) -> Replica:
        started.append(Replica(host, name))
        return started[-1]

    yield store, replica
    for r in started:
        r.kill()
    store.close()


@pytest.fixture
def routers():
    started: list[Router] = []

    def start(store, via, *extra) -> Router:
        started.append(Router(store, via, *extra))
        return started[-1]

    yield start
    for r in started:
        r.stop()


def served_by(router: Router, attempt: str) -> bool:
    return get_once(router.url + "/work").replica == attempt


def test_replica_that_is_not_ready_gets_no_request(via, serving, routers):
    store, replica = serving
    a, b = replica("127.0.31.1", "a"), replica("127.0.31.2", "b")
    a_id = store.add(a, 0, ready=True)
    store.add(b, 1, ready=False)
    router = routers(store, via)
    wait_until("the router to serve from a", lambda: served_by(router, a_id))

    outcomes = run_load(router.url + "/work", count=200)
    assert failures(outcomes) == []
    assert {o.replica for o in outcomes} == {a_id}
    assert b.count() == 0


def test_router_follows_a_ready_set_change_without_restart(via, serving, routers):
    store, replica = serving
    a, b = replica("127.0.32.1", "a"), replica("127.0.32.2", "b")
    a_id = store.add(a, 0, ready=True)
    b_id = store.add(b, 1, ready=False)
    router = routers(store, via)
    wait_until("the router to serve from a", lambda: served_by(router, a_id))

    store.set_ready(b_id, True)
    store.set_ready(a_id, False)
    wait_until("the router to serve from b", lambda: served_by(router, b_id))
    served_by_a = a.count()
    outcomes = run_load(router.url + "/work", count=100)
    assert failures(outcomes) == []
    assert {o.replica for o in outcomes} == {b_id}
    assert a.count() == served_by_a


def test_replica_killed_mid_load_fails_no_idempotent_request(via, serving, routers):
    store, replica = serving
    a, b = replica("127.0.33.1", "a"), replica("127.0.33.2", "b")
    a_id, b_id = store.add(a, 0, ready=True), store.add(b, 1, ready=True)
    router = routers(store, via)
    wait_until("the router to serve from b", lambda: served_by(router, b_id))

    outcomes = run_load(router.url + "/work", count=600, at={150: b.kill})
    assert failures(outcomes) == []
    assert len(outcomes) == 600
    assert {o.replica for o in outcomes[-100:]} == {a_id}     # the store still says b is ready


@requires_root
def test_replica_gone_dark_fails_no_request_is_benched_and_probed_back_in(via, serving, routers):
    store, replica = serving
    a, b = replica("127.0.34.1", "a"), replica("127.0.34.2", "b")
    a_id, b_id = store.add(a, 0, ready=True), store.add(b, 1, ready=True)
    router = routers(store, via, "--try-timeout", "1s")
    wait_until("the router to serve from b", lambda: served_by(router, b_id))
    rule = ["INPUT", "-d", b.host, "-p", "tcp", "--dport", str(b.port), "-j", "DROP"]
    try:
        outcomes = run_load(router.url + "/work", count=400,
                            at={100: lambda: subprocess.run(["iptables", "-I", *rule], check=True)})
        assert failures(outcomes) == []
        assert {o.replica for o in outcomes[-50:]} == {a_id}
        wait_until("b to be benched", lambda: f"benched {b_id}" in router.stderr())   # haproxy: its checks
    finally:
        subprocess.run(["iptables", "-D", *rule], capture_output=True)
    wait_until("the router to send to b again", lambda: served_by(router, b_id))
    wait_until("b to be said back in", lambda: f"back in {b_id}" in router.stderr())


def test_streamed_response_arrives_chunk_by_chunk(via, serving, routers):
    store, replica = serving
    a = replica("127.0.35.1", "a")
    store.add(a, 0, ready=True)
    router = routers(store, via)
    wait_until("the router to serve", lambda: get_once(router.url + "/work").status == 200)

    # the replica writes 500 chunks, then waits until /open is called on it directly: a router that
    # buffered the response would deliver nothing before the gate opens, and the test would time out
    async def read() -> tuple[bytes, int]:
        got, reads = b"", 0
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
            async with session.get(router.url + "/stream?n=1000&gate=g1") as resp:
                assert resp.headers["Content-Type"].startswith("text/event-stream")
                while b"data: 499\n\n" not in got:
                    got += await resp.content.readany()
                    reads += 1
                await asyncio.to_thread(a.get, "/open?gate=g1")
                async for chunk in resp.content.iter_any():
                    got += chunk
                    reads += 1
        return got, reads

    got, reads = asyncio.run(read())
    assert got == b"".join(f"data: {i}\n\n".encode() for i in range(1000))
    assert reads >= 2


def test_every_response_names_the_replica_that_served_it(via, serving, routers):
    store, replica = serving
    a, b = replica("127.0.36.1", "a"), replica("127.0.36.2", "b")
    ids = {"a": store.add(a, 0, ready=True), "b": store.add(b, 1, ready=True)}
    router = routers(store, via)
    wait_until("the router to serve from b", lambda: served_by(router, ids["b"]))

    async def fetch() -> list[tuple[str, str]]:
        async with aiohttp.ClientSession() as session:
            pairs = []
            for _ in range(40):
                async with session.get(router.url + "/work") as r:
                    pairs.append((r.headers["X-Gridctl-Replica"], (await r.text()).split()[0]))
            return pairs

    pairs = asyncio.run(fetch())
    assert all(header == ids[name] for header, name in pairs)
    assert {name for _, name in pairs} == {"a", "b"}


def test_no_ready_replica_answers_503_saying_so(via, serving, routers):
    store, replica = serving
    a = replica("127.0.37.1", "a")
    store.add(a, 0, ready=False)
    router = routers(store, via)

    async def fetch() -> tuple[int, str]:
        async with aiohttp.ClientSession() as session:
            async with session.get(router.url + "/work") as r:
                return r.status, await r.text()

    assert asyncio.run(fetch()) == (503, "no ready replica of job web\n")
    assert a.count() == 0


def test_sigterm_stops_the_router_and_its_port(via, serving, routers):
    store, replica = serving
    store.add(replica("127.0.38.1", "a"), 0, ready=True)
    router = routers(store, via)
    assert router.stop() == 0
    assert get_once(router.url + "/work").status == 0


def test_post_body_is_sent_again_to_another_replica_after_a_refused_connection(via, serving, routers):
    store, replica = serving
    gone, a = replica("127.0.40.1", "gone"), replica("127.0.40.2", "a")
    gone_id = store.add(gone, 0, ready=True)       # the store still says ready: the pass has not seen it die
    a_id = store.add(a, 1, ready=True)
    gone.kill()
    router = routers(store, via)
    wait_until("the router to take the ready set", lambda: router.stderr().count("ready: ") == 2)  # no request yet

    async def post() -> list[tuple[int, str]]:
        async with aiohttp.ClientSession() as session:
            answers = []
            for _ in range(20):
                async with session.post(router.url + "/work", data=b"p" * 100) as r:
                    answers.append((r.status, (await r.text()).split("\n")[0]))
            return answers

    assert asyncio.run(post()) == [(200, "a 100")] * 20
    wait_until("the dead replica to be benched", lambda: f"benched {gone_id}" in router.stderr())
    assert f"benched {a_id}" not in router.stderr()


def test_replica_dying_mid_stream_leaves_the_client_a_truncated_answer_not_a_clean_end(via, serving, routers):
    store, replica = serving
    a = replica("127.0.43.1", "a")
    store.add(a, 0, ready=True)
    router = routers(store, via)
    wait_until("the router to serve", lambda: get_once(router.url + "/work").status == 200)

    async def read() -> str:
        got = b""
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
            async with session.get(router.url + "/stream?n=1000&gate=never") as resp:
                while b"data: 499\n\n" not in got:
                    got += await resp.content.readany()
                await asyncio.to_thread(a.kill)
                try:
                    async for chunk in resp.content.iter_any():
                        got += chunk
                except aiohttp.ClientPayloadError:
                    return "truncated"
        return "clean end"

    assert asyncio.run(read()) == "truncated"
