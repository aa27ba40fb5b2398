"""Services in the job planner: ports, readiness and make-before-break drains (DESIGN section 11).
Pure and table-style, through reconcile.jobs.plan_jobs.

Guards against: a replica routed to before its health check passes (dstack #2985), one failed
check taking a replica out of routing, a replica that never gets ready left running forever, a
drain that stops the old copy before the new one serves, two replicas given one port on one
address, and a fixed port placed where it is taken.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from gridctl.jobspec import JobSpec
from gridctl.models import (Attempt, AttemptReport, AttemptState, Health, JobRecord, JobState, NodeRecord, NodeState,
                            Outcome, ReadyCheck)
from gridctl.placement import Gpu
from gridctl.reconcile.jobs import NodeView, plan_jobs

S = AttemptState
NOW = 10_000.0


def view(name: str, *reports: AttemptReport, host: str | None = None, **rec) -> NodeView:
    record = NodeRecord(name=name, pool="p", provider="ssh", host=host or f"127.0.9.{name[-1]}", port=22,
                        state=NodeState.READY, health=Health.HEALTHY, reason="healthy", **rec)
    return NodeView(record, answered=True, complete=True, reports={r.id: r for r in reports},
                    gpus=tuple(Gpu(f"GPU-{name}-{i}", i, "NVIDIA H100 80GB HBM3", 81559) for i in range(2)),
                    work_dir=f"/w/{name}")


def svc(name: str = "llm", port="auto", readiness=None, attempts_made: int = 1, **spec) -> JobRecord:
    data = JobSpec.model_validate({"name": name, "class": "service", "command": "serve", "port": port,
                                   "readiness": readiness if readiness is not None else {"http": "/health"},
                                   **spec}).to_store()
    return JobRecord(name=name, spec=data, state=JobState.RUNNING, reason="running", attempts_made=attempts_made)


def att(n: int, node: str, *, job: str = "llm", replica: int = 0, port: int = 20000, **kw) -> Attempt:
    return Attempt(id=f"{job}.{n}", job=job, n=n, replica=replica, node=node, state=kw.pop("state", S.RUNNING),
                   reason="running",
                   gpus=(f"GPU-{node}-0",), created_at=NOW - 100, started_at=kw.pop("started_at", NOW - 90),
                   pid=100 + n, heartbeat_at=NOW - 1, port=port, **kw)


def alive(a: Attempt) -> AttemptReport:
    return AttemptReport(id=a.id, pid=a.pid, alive=True, exit_code=None, heartbeat_at=int(NOW), started_at=int(NOW) - 90,
                         node_now=int(NOW))


def ok(detail: str = "HTTP 200") -> ReadyCheck:
    return ReadyCheck(True, detail, NOW)


def bad(detail: str = "HTTP 503") -> ReadyCheck:
    return ReadyCheck(False, detail, NOW)


def run(jobs, attempts, views, checks=None):
    return plan_jobs({j.name: j for j in jobs}, attempts, {v.record.name: v for v in views}, NOW, checks=checks)


def test_a_replica_is_ready_only_after_its_check_passes():
    a = att(1, "n1")
    p = run([svc()], [a], [view("n1", alive(a))], {"llm.1": bad("connection refused")})
    assert (p.attempts["llm.1"].ready, p.attempts["llm.1"].check_failures) == (False, 1)
    p = run([svc()], [a], [view("n1", alive(a))], {"llm.1": ok()})
    assert (p.attempts["llm.1"].ready, p.attempts["llm.1"].ready_since) == (True, NOW)
    assert [e.kind for e in p.events] == ["replica-ready"]


@pytest.mark.parametrize("failures_before, ready_after", [(0, True), (1, True), (2, False)])
def test_a_ready_replica_leaves_routing_only_after_failure_threshold_checks(failures_before, ready_after):
    a = att(1, "n1", ready=True, ready_since=NOW - 50, check_failures=failures_before)
    p = run([svc()], [a], [view("n1", alive(a))], {"llm.1": bad()})
    got = p.attempts["llm.1"]
    assert (got.ready, got.check_failures, got.state) == (ready_after, failures_before + 1, S.RUNNING)
    assert p.stops == []                              # never killed for failing checks


def test_a_good_check_brings_a_replica_back_into_routing():
    a = att(1, "n1", ready=False, check_failures=5)
    p = run([svc()], [a], [view("n1", alive(a))], {"llm.1": ok()})
    assert p.attempts["llm.1"].ready and p.attempts["llm.1"].check_failures == 0


def test_a_replica_never_ready_within_ready_timeout_is_restarted():
    job = svc(readiness={"http": "/health", "ready_timeout": "60s"})
    a = att(1, "n1", started_at=NOW - 61)
    p = run([job], [a], [view("n1", alive(a)), view("n2")], {"llm.1": bad("connection refused")})
    ended = p.attempts["llm.1"]
    assert (ended.state, ended.outcome) == (S.HUNG, Outcome.HUNG) and "ready_timeout 60s" in ended.reason
    assert [s.attempt_id for s in p.stops] == ["llm.1"]


def test_a_silent_node_takes_its_replica_out_of_routing():
    a = att(1, "n1", ready=True, ready_since=NOW - 50)
    silent = NodeView(replace(view("n1").record, state=NodeState.SUSPECT, health=Health.UNREACHABLE),
                      answered=False, complete=False, work_dir="/w/n1")
    p = run([svc()], [a], [silent, view("n2")])
    assert p.attempts["llm.1"].state is S.SILENT and not p.attempts["llm.1"].ready


def test_a_drain_keeps_the_old_copy_until_the_replacement_is_ready():
    old = att(1, "n1", ready=True, ready_since=NOW - 80)
    draining = view("n1", alive(old), cordoned=True, draining=True, cordon_reason="kernel update")
    p = run([svc()], [old], [draining, view("n2")])
    (launch,) = p.launches
    assert launch.node == "n2" and launch.then_stop == ()          # not stopped when the new one merely runs
    new = replace(launch.attempt, state=S.RUNNING, started_at=NOW, pid=7)
    # the replacement runs but is not ready: both stay, the old one keeps serving
    p = run([svc(attempts_made=2)], [old, new], [draining, view("n2", alive(new))], {"llm.2": bad()})
    assert p.stops == [] and "waits for attempt 2 to be ready" in p.jobs["llm"].reason
    # ready: now the old copy goes
    p = run([svc(attempts_made=2)], [old, new], [draining, view("n2", alive(new))], {"llm.2": ok()})
    assert [s.attempt_id for s in p.stops] == ["llm.1"]
    assert (p.attempts["llm.1"].state, p.attempts["llm.1"].outcome) == (S.KILLED, Outcome.DRAIN)
    assert p.launches == []


def test_auto_ports_differ_on_one_address_and_fixed_ports_avoid_a_taken_node():
    two = svc(replicas=2, attempts_made=0)
    p = run([replace(two, state=JobState.PENDING)], [], [view("n1", host="127.0.0.1"), view("n2", host="127.0.0.1")])
    assert sorted(ln.attempt.port for ln in p.launches) == [20000, 20001]
    assert {ln.spec.env["GRIDCTL_PORT"] for ln in p.launches} == {"20000", "20001"}
    assert {ln.spec.env["GRIDCTL_HOST"] for ln in p.launches} == {"127.0.0.1"}
    taken = att(1, "n1", job="other", port=8000)
    fixed = replace(svc("web", port=8000, attempts_made=0), state=JobState.PENDING)
    p = run([fixed, svc("other", port=8000)], [taken], [view("n1", alive(taken)), view("n2")])
    assert [(ln.node, ln.attempt.port) for ln in p.launches] == [("n2", 8000)]
    p = run([fixed, svc("other", port=8000)], [taken], [view("n1", alive(taken))])
    assert "n1 has port 8000 in use" in p.jobs["web"].reason


def test_a_hedged_original_that_answers_again_serves_until_the_hedge_is_ready():
    old = att(1, "n1", state=S.SILENT, silent_since=NOW - 30)
    hedge = att(2, "n2", port=20000)
    job = svc(attempts_made=2)
    # the hedge runs but is not ready: the original is kept (no stop), back to running
    p = run([job], [old, hedge], [view("n1", alive(old)), view("n2", alive(hedge))], {"llm.2": bad()})
    assert p.stops == [] and p.attempts["llm.1"].state is S.RUNNING
    assert [e.message for e in p.events if e.kind == "attempt-back"] == [
        "attempt llm.1 on n1: node answers again, kept until attempt 2 is ready"]
    back = p.attempts["llm.1"]
    # the hedge is ready: now the original goes, as superseded
    p = run([job], [back, hedge], [view("n1", alive(back)), view("n2", alive(hedge))], {"llm.2": ok()})
    assert [s.attempt_id for s in p.stops] == ["llm.1"]
    assert (p.attempts["llm.1"].state, p.attempts["llm.1"].outcome) == (S.KILLED, Outcome.SUPERSEDED)


def test_without_readiness_a_returning_silent_copy_is_fenced_at_once():
    job = replace(svc(attempts_made=2), spec={**svc().spec, "readiness": None, "port": None})
    old = att(1, "n1", state=S.SILENT, silent_since=NOW - 30, port=None)
    hedge = att(2, "n2", port=None)
    p = run([job], [old, hedge], [view("n1", alive(old)), view("n2", alive(hedge))])
    assert [s.attempt_id for s in p.stops] == ["llm.1"]


def condemned(name: str, *reports: AttemptReport, gpu: int | None) -> NodeView:
    """A node quarantined by this very probe: a fatal XID 79 on GPU `gpu` (None: a node-wide finding)."""
    from gridctl.models import Finding, Severity
    v = view(name, *reports)
    xid = Finding("xid", Severity.FATAL, f"xid 79 on GPU {gpu}: fell off the bus", gpu=gpu, needs_reset=True)
    rec = replace(v.record, state=NodeState.QUARANTINED, health=Health.UNHEALTHY, reason=xid.message, findings=(xid,))
    from gridctl.health import Thresholds, condemns_attempts, fault_gpus
    return replace(v, record=rec, condemned=condemns_attempts(rec, Thresholds()), fault_gpus=fault_gpus(rec, Thresholds()))


def test_a_fault_on_a_gpu_the_replica_does_not_use_replaces_it_before_stopping_it():
    old = att(1, "n1", ready=True, ready_since=NOW - 80)               # runs on GPU-n1-0
    sick = condemned("n1", alive(old), gpu=1)
    p = run([svc()], [old], [sick, view("n2")])
    assert p.attempts.get("llm.1", old).state is S.RUNNING and p.stops == []
    (launch,) = p.launches
    assert launch.node == "n2" and launch.then_stop == ()
    assert [e.kind for e in p.events if e.job == "llm"] == ["attempt-starting", "attempt-moving"]
    new = replace(launch.attempt, state=S.RUNNING, started_at=NOW, pid=7)
    kept = p.attempts.get("llm.1", old)
    # the replacement runs but is not ready: the old copy keeps serving
    p = run([svc(attempts_made=2)], [kept, new], [sick, view("n2", alive(new))], {"llm.2": bad()})
    assert p.stops == [] and p.launches == []
    # ready: now the old copy goes
    p = run([svc(attempts_made=2)], [kept, new], [sick, view("n2", alive(new))], {"llm.2": ok()})
    assert [s.attempt_id for s in p.stops] == ["llm.1"]
    assert p.attempts["llm.1"].state is S.KILLED and "quarantined" in p.attempts["llm.1"].reason


@pytest.mark.parametrize("gpu", [0, None], ids=["its-own-gpu", "node-wide"])
def test_a_fault_on_the_replicas_own_gpu_or_the_whole_node_stops_it_at_once(gpu):
    old = att(1, "n1", ready=True, ready_since=NOW - 80)               # runs on GPU-n1-0
    p = run([svc()], [old], [condemned("n1", alive(old), gpu=gpu), view("n2")])
    assert (p.attempts["llm.1"].state, p.attempts["llm.1"].outcome) == (S.LOST, Outcome.NODE)
    assert [s.attempt_id for s in p.stops] == ["llm.1"]
