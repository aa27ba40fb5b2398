"""The loop on resident agents over a real sshd: a pushed XID wakes the loop, an agent that dies
is re-shipped with an event and no verdict change, and `describe node` says which path probed."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import time

import pytest

from jobs_support import LOOP, lab_factory

from gridctl.models import AttemptState, NodeState
from gridctl.reconcile import PassReport
from gridctl.reconcile.loop import Loop
from providers.local import inject_xid

INTERVAL_S = 30.0      # longer than the test: every pass after the first is one the nodes asked for


@pytest.fixture
def lab(ssh_fleet, tmp_path):
    with lab_factory(ssh_fleet, tmp_path) as make:
        yield make("ag", count=2, gpus=1)


@contextlib.contextmanager
def running_loop(lab):
    reports: list[PassReport] = []
    loop = Loop(lab.fleet, lab.db, INTERVAL_S, lambda r: reports.append(r) if isinstance(r, PassReport) else None)
    thread = loop.start_thread()
    try:
        yield loop, reports
    finally:
        loop.stop.set()
        thread.join(30)
        assert loop.error is None, loop.error


def wait_for(what, check, timeout: float = 20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"not within {timeout:g}s: {what}")


def test_xid79_pushed_by_nvml_quarantines_node_and_starts_replacement_before_the_next_interval(lab):
    lab.run_job({"name": "svc", "class": "service", "command": LOOP, "gpus": 1})
    [first] = lab.running("svc")
    with running_loop(lab) as (loop, reports):
        wait_for("a pass on agents", lambda: any(e.kind == "agent-started" for r in reports for e in r.events))
        woke_at = time.time()
        inject_xid(lab.sim.node_dir(first.node), 0, 79)
        wait_for("node quarantined", lambda: lab.nodes()[first.node].state is NodeState.QUARANTINED)
        replacement = wait_for("replacement running", lambda: [a for a in lab.running("svc") if a.node != first.node])
        quarantining = next(r for r in reports if any(e.kind == "node-state" and e.node == first.node and
                                                      "-> quarantined" in e.message for e in r.events))
    assert quarantining.started < reports[0].started + INTERVAL_S, "the pass waited for the interval"
    assert quarantining.started >= woke_at
    assert any(e.kind == "xid-pushed" and e.node == first.node for r in reports for e in r.events)
    assert replacement[0].state is AttemptState.RUNNING
    described = lab.cli("describe", "node", first.node, "--json")
    import json
    assert json.loads(described.stdout)[0]["probe_path"] == "agent"


def test_agent_killed_on_node_is_reshipped_with_an_event_and_no_verdict_change(lab):
    name = lab.names[1]
    with running_loop(lab) as (loop, reports):
        started = wait_for("agent started", lambda: [e for r in reports for e in r.events
                                                    if e.kind == "agent-started" and e.node == name])
        pid = int(re.search(r"pid (\d+)", started[0].message).group(1))
        os.kill(pid, signal.SIGKILL)
        loop.nudge.set()
        lost = wait_for("agent-lost event", lambda: [e for r in reports for e in r.events
                                                     if e.kind == "agent-lost" and e.node == name])
        again = wait_for("agent re-shipped", lambda: [e for r in reports for e in r.events
                                                      if e.kind == "agent-started" and e.node == name][1:])
    assert "re-shipping" in lost[0].message and again
    node = lab.nodes()[name]
    assert node.state is NodeState.READY and node.failures == 0
    assert not any(e.kind == "node-state" and e.node == name for r in reports for e in r.events)


@pytest.mark.root
def test_silently_dropped_agent_session_makes_node_suspect_without_waiting_for_the_interval(lab):
    if os.geteuid() != 0:
        pytest.skip("needs root and iptables")
    name = lab.names[0]
    with running_loop(lab) as (loop, reports):
        wait_for("agent started", lambda: any(e.kind == "agent-started" and e.node == name
                                              for r in reports for e in r.events))
        lab.blackhole(name)
        try:
            wait_for("node suspect", lambda: lab.nodes()[name].state is NodeState.SUSPECT)
        finally:
            lab.unblackhole(name)
    [(suspecting, why)] = [(r, e.message) for r in reports for e in r.events
                           if e.kind == "node-state" and e.node == name and "-> suspect" in e.message]
    assert suspecting.started < reports[0].started + INTERVAL_S, "the pass waited for the interval"
    # the kernel ended the connection (the node answered none of its keepalives): silence, said as such,
    # not a connect timeout of a pass that tried to connect again at once
    assert "agent session silent: no answer from the node to TCP keepalives" in why, why
