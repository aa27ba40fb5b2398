"""The real HAProxy binary: the exact Runtime API sequence gridctl sends brings a `disabled`
server-template slot into service, and maintenance takes it out; read back with `show servers state`."""

from __future__ import annotations

import shutil
import urllib.error
import urllib.request

import pytest

from pathlib import Path

from gridctl.models import Endpoint
from gridctl.route import Settings
from gridctl.route.haproxy import BACKEND, Haproxy, plan_slots, runtime_commands, servers_state
from routesim import Replica, free_port, wait_until

pytestmark = pytest.mark.skipif(not shutil.which("haproxy"), reason="haproxy is not installed")

FORCED_MAINT = 0x01      # HAProxy's srv_admin_state bit: maintenance set through the Runtime API
RUNNING = 2              # srv_op_state


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.headers.get("X-Gridctl-Replica", "")
    except urllib.error.HTTPError as e:
        return e.code, ""


@pytest.fixture
def replica():
    r = Replica("127.0.39.1", "a")
    yield r
    r.kill()


def test_disabled_slot_enters_service_and_leaves_it_through_the_runtime_api(replica):
    port = free_port()
    ep = Endpoint(job="web", replica=0, attempt="web.1", node="n", host=replica.host, port=replica.port,
                  ready=True, ready_since=1.0, draining=False)
    with Haproxy(Settings(job="web", db_path=Path("unused.db"), host="127.0.0.1", port=port)) as hx:
        before = servers_state(hx.ask("show servers state " + BACKEND))
        assert before["r1"].admin_state & FORCED_MAINT and before["r1"].op_state != RUNNING

        plan = plan_slots({}, [ep], capacity=hx.slots)
        for command in runtime_commands(plan, BACKEND, hx.map_path):
            hx.ask(command)
        after = servers_state(hx.ask("show servers state " + BACKEND))["r1"]
        assert (after.addr, after.port, after.admin_state & FORCED_MAINT, after.op_state) == \
            (replica.host, replica.port, 0, RUNNING)
        assert get(f"http://127.0.0.1:{port}/work") == (200, "web.1")

        for command in runtime_commands(plan_slots(plan.slots, [], capacity=hx.slots), BACKEND, hx.map_path):
            hx.ask(command)
        assert servers_state(hx.ask("show servers state " + BACKEND))["r1"].admin_state & FORCED_MAINT
        wait_until("a 503 once the only slot is in maintenance",
                   lambda: get(f"http://127.0.0.1:{port}/work")[0] == 503)


def test_setting_a_slot_to_the_address_it_already_has_is_not_reported_as_refused(replica):
    from gridctl.route.haproxy import refused
    with Haproxy(Settings(job="web", db_path=Path("unused.db"), host="127.0.0.1", port=free_port())) as hx:
        command = f"set server {BACKEND}/r1 addr {replica.host} port {replica.port}"
        first, again = hx.ask(command).strip(), hx.ask(command).strip()
        wrong = hx.ask(f"set server {BACKEND}/r99 state ready").strip()
    assert (refused(first), refused(again), refused(wrong)) == (False, False, True), (first, again, wrong)
