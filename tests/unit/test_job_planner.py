"""reconcile.jobs.plan_jobs / after_launch: one pass over jobs and attempts, pure and table-style.

Guards against the failures DESIGN section 5 names: a healthy job killed because a probe timed
out (silence is not evidence), a service left down while its node is silent (no hedge), two
copies of a batch job writing one checkpoint (requeue before unreachable_grace, or during a
partition), a stale copy left running when its node returns, retries that never stop or never
wait, hung and over-long attempts left alone, cancel leaving processes behind, a pending job that
does not say why, drains that drop a service, and lemon nodes eating every job placed on them.
Every plan is checked for the fencing invariant: at most one RUNNING/STARTING attempt per
(job, replica), apart from a drain's old copy that a Launch will stop (then_stop).
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from gridctl.jobspec import JobSpec
from gridctl.models import (Attempt, AttemptReport, AttemptState, Health, JobRecord, JobState, NodeRecord,
                            NodeState, Outcome)
from gridctl.placement import Gpu
from gridctl.reconcile.jobs import JobPlan, LemonRule, NodeView, after_launch, handover, plan_jobs

S = AttemptState
NOW = 100_000.0
SKEW = 5_000          # the nodes' clocks run ahead of ours: heartbeats must be read as ages


# ---------------------------------------------------------------- builders

def gpus(node: str, n: int = 4) -> tuple[Gpu, ...]:
    return tuple(Gpu(f"GPU-{node}-{i}", i, "NVIDIA H100 80GB HBM3", 81559) for i in range(n))


def record(name: str, *, state: NodeState = NodeState.READY, health: Health = Health.HEALTHY, reason: str = "",
           **kw) -> NodeRecord:
    return NodeRecord(name=name, pool=kw.pop("pool", "p"), provider="ssh", host=f"{name}.example", port=22,
                      state=state, health=health, reason=reason or f"{health.value}", **kw)


def up(name: str, *reports: AttemptReport, n_gpus: int = 4, condemned: bool = False, **rec) -> NodeView:
    """A node that answered this pass, with the attempt dirs its probe reported."""
    return NodeView(record(name, **rec), answered=True, complete=True, reports={r.id: r for r in reports},
                    gpus=gpus(name, n_gpus), work_dir=f"/work/{name}", condemned=condemned)


def silent(name: str, *, partitioned: bool = False, n_gpus: int = 4) -> NodeView:
    return NodeView(record(name, state=NodeState.SUSPECT, health=Health.UNREACHABLE, reason="connection timed out"),
                    answered=False, complete=False, partitioned=partitioned, gpus=gpus(name, n_gpus),
                    work_dir=f"/work/{name}")


def quarantined(name: str, *reports: AttemptReport, reason: str = "xid 79 on GPU 3 (0000:8a:00.0)") -> NodeView:
    return up(name, *reports, state=NodeState.QUARANTINED, health=Health.UNHEALTHY, reason=reason, condemned=True)


def job(name: str, cls: str = "service", *, state: JobState = JobState.RUNNING, attempts_made: int = 1,
        created_at: float = 0.0, **spec) -> JobRecord:
    recovery = spec.pop("recovery", {})
    data = JobSpec.model_validate({"name": name, "class": cls, "command": ["serve", "--port", "80"],
                                   "recovery": recovery, **spec}).to_store()
    return JobRecord(name=name, spec=data, state=state, reason="running", reason_code="running",
                     created_at=created_at, attempts_made=attempts_made)


def att(job_name: str, n: int, node: str, state: AttemptState = S.RUNNING, *, replica: int = 0, k: int = 0,
        started_at: float | None = NOW - 600, **kw) -> Attempt:
    return Attempt(id=f"{job_name}.{n}", job=job_name, n=n, replica=replica, node=node, state=state,
                   reason="running", gpus=(f"GPU-{node}-{k}",), created_at=NOW - 700,
                   started_at=started_at if state is not S.STARTING else None, pid=4000 + n,
                   heartbeat_at=NOW - 5, **kw)


def alive(a: Attempt, hb_age: int = 3) -> AttemptReport:
    node_now = int(NOW) + SKEW
    return AttemptReport(id=a.id, pid=a.pid, alive=True, exit_code=None, heartbeat_at=node_now - hb_age,
                         started_at=node_now - 600, node_now=node_now)


def exited(a: Attempt, code: int | None) -> AttemptReport:
    node_now = int(NOW) + SKEW
    return AttemptReport(id=a.id, pid=a.pid, alive=False, exit_code=code, heartbeat_at=node_now - 30,
                         started_at=node_now - 600, node_now=node_now)


def check_fencing(attempts: list[Attempt], plan: JobPlan) -> None:
    merged = {a.id: a for a in attempts}
    merged.update(plan.attempts)
    for launch in plan.launches:
        merged[launch.attempt.id] = launch.attempt
    leaving = {s.attempt_id for launch in plan.launches for s in launch.then_stop}
    copies: dict[tuple[str, int], list[str]] = {}
    for a in merged.values():
        if a.state in (S.RUNNING, S.STARTING) and a.id not in leaving:
            copies.setdefault((a.job, a.replica), []).append(a.id)
    doubled = {k: v for k, v in copies.items() if len(v) > 1}
    assert not doubled, f"two live copies of one replica: {doubled}"


def plan(jobs: list[JobRecord], attempts: list[Attempt], views: list[NodeView], now: float = NOW, **kw) -> JobPlan:
    p = plan_jobs({j.name: j for j in jobs}, attempts, {v.record.name: v for v in views}, now, **kw)
    check_fencing(attempts, p)
    return p


def advance(jobs: list[JobRecord], attempts: list[Attempt], p: JobPlan, now: float, launched: bool = True
            ) -> tuple[list[JobRecord], list[Attempt]]:
    """The store after a pass: the plan's rows written, each launch answered by after_launch and, for
    a drain, the old copy handed over by jobs.handover (the functions reconcile.plan.after_actions calls)."""
    by_name = {j.name: j for j in jobs}
    by_name.update(p.jobs)
    merged = {a.id: a for a in attempts}
    merged.update(p.attempts)
    for launch in p.launches:
        j, a, _ = after_launch(by_name[launch.attempt.job], launch.attempt, launched, 7000 + launch.attempt.n,
                               "" if launched else "no space left on device", now)
        by_name[j.name], merged[a.id] = j, a
        for stop in launch.then_stop if launched else ():    # the drained copy ends once this one runs
            done = handover(merged[stop.attempt_id], a, now)
            if done is not None:
                merged[stop.attempt_id] = done[0]
    return list(by_name.values()), list(merged.values())


def kinds(p: JobPlan) -> list[str]:
    return [e.kind for e in p.events]


# ---------------------------------------------------------------- evidence: quarantined or rebooted nodes

@pytest.mark.parametrize("cls", ["service", "batch", "training"])
def test_attempt_on_a_quarantined_answering_node_is_lost_stopped_and_replaced(cls):
    a = att("j", 1, "n1")
    p = plan([job("j", cls)], [a], [quarantined("n1", alive(a)), up("n2")])
    lost = p.attempts["j.1"]
    assert (lost.state, lost.outcome) == (S.LOST, "node")
    assert "quarantined: xid 79" in lost.reason
    assert [(s.attempt_id, s.node, s.grace_s) for s in p.stops] == [("j.1", "n1", 1.0)]
    (launch,) = p.launches
    assert (launch.node, launch.attempt.id, launch.attempt.replica) == ("n2", "j.2", 0)
    assert launch.attempt.state is S.STARTING
    assert launch.spec.env["CUDA_VISIBLE_DEVICES"] == "GPU-n2-0"
    assert p.jobs["j"].state is JobState.RUNNING


@pytest.mark.parametrize("cls", ["service", "batch", "training"])
def test_a_node_failure_requeue_counts_a_restart(cls):
    a = att("j", 1, "n1")
    p = plan([job("j", cls)], [a], [quarantined("n1", alive(a)), up("n2")])
    assert len(p.launches) == 1
    assert p.jobs["j"].restarts == 1


def test_manual_job_on_a_quarantined_node_fails_and_says_why():
    a = att("m", 1, "n1")
    p = plan([job("m", "manual")], [a], [quarantined("n1", alive(a)), up("n2")])
    assert p.attempts["m.1"].state is S.LOST
    assert p.launches == []
    j = p.jobs["m"]
    assert (j.state, j.reason_code) == (JobState.FAILED, "node-lost")
    assert "manual class" in j.reason and "xid 79" in j.reason


def test_a_node_quarantined_for_silence_that_answers_healthy_keeps_its_attempts():
    a = att("j", 1, "n1")
    v = up("n1", alive(a), state=NodeState.QUARANTINED, health=Health.HEALTHY, reason="silent for 10m")
    p = plan([job("j", "batch")], [a], [v, up("n2")])
    assert p.attempts["j.1"].state is S.RUNNING          # its heartbeat is recorded; it keeps running
    assert p.launches == [] and p.stops == []


@pytest.mark.parametrize("cls", ["service", "batch", "training"])
def test_attempt_on_a_rebooted_node_is_lost_and_requeued(cls):
    a = att("j", 1, "n1")
    v = replace(up("n1"), rebooted=True)
    p = plan([job("j", cls)], [a], [v, up("n2")])
    assert p.attempts["j.1"].state is S.LOST
    assert "rebooted" in p.attempts["j.1"].reason
    assert p.stops == []                                 # the reboot already killed it
    (launch,) = p.launches
    assert launch.node == "n2"                           # the node where it was lost is avoided


def test_training_requeue_keeps_the_checkpoint_dir_and_counts_restarts():
    a = att("t", 1, "n1")
    p = plan([job("t", "training", checkpoint_dir="/ckpt/t")], [a], [replace(up("n1"), rebooted=True), up("n2")])
    (launch,) = p.launches
    assert launch.spec.env["GRIDCTL_CHECKPOINT_DIR"] == "/ckpt/t"
    assert launch.spec.env["GRIDCTL_JOB"] == "t" and launch.spec.env["GRIDCTL_ATTEMPT"] == "t.2"


def test_training_requeue_sets_gridctl_restart_count():
    a = att("t", 1, "n1")
    p = plan([job("t", "training", checkpoint_dir="/ckpt/t")], [a], [replace(up("n1"), rebooted=True), up("n2")])
    (launch,) = p.launches
    assert launch.spec.env["GRIDCTL_RESTART_COUNT"] == "1"


def test_batch_requeues_stop_after_max_restarts():
    jobs, attempts, now = [job("b", "batch")], [att("b", 1, "n1")], NOW
    for _ in range(6):
        cur = next(x for x in attempts if x.state is S.RUNNING)
        views = [replace(up(n), rebooted=True) if n == cur.node else up(n) for n in ("n1", "n2")]
        p = plan(jobs, attempts, views, now)
        jobs, attempts = advance(jobs, attempts, p, now)
        now += 20
        if p.jobs["b"].state.terminal:
            break
    jr = p.jobs["b"]
    assert (jr.state, jr.reason_code) == (JobState.FAILED, "node-lost")
    assert jr.reason.startswith("node-lost after 4 attempts (max_restarts 3)")


def test_attempt_on_a_node_gone_from_the_fleet_is_lost():
    a = att("j", 1, "gone")
    p = plan([job("j", "batch")], [a], [up("n2")])
    assert p.attempts["j.1"].state is S.LOST
    assert [l.node for l in p.launches] == ["n2"]


def test_attempt_whose_directory_vanished_is_lost():
    a = att("j", 1, "n1")
    p = plan([job("j", "batch")], [a], [up("n1"), up("n2")])
    assert p.attempts["j.1"].state is S.LOST and "vanished" in p.attempts["j.1"].reason


# ---------------------------------------------------------------- silence: hedge, wait, partition

def test_silent_node_marks_the_attempt_silent_and_hedges_a_service_once():
    a = att("svc", 1, "n1")
    p = plan([job("svc")], [a], [silent("n1"), up("n2"), up("n3")])
    s = p.attempts["svc.1"]
    assert (s.state, s.silent_since) == (S.SILENT, NOW)
    assert p.stops == []                                 # silence never kills
    (launch,) = p.launches
    assert launch.node != "n1" and launch.attempt.replica == 0
    assert "hedge" in kinds(p) and "attempt-silent" in kinds(p)
    assert p.jobs["svc"].state is JobState.RUNNING

    jobs, attempts = advance([job("svc")], [a], p, NOW)
    p2 = plan(jobs, attempts, [silent("n1"), up("n2", alive(attempts[-1])), up("n3")], NOW + 30)
    assert p2.launches == [] and p2.stops == []          # exactly one hedge
    assert "svc.1" not in p2.attempts                    # still silent since NOW: nothing to write


def test_hedge_waits_when_no_other_node_fits():
    a = att("svc", 1, "n1")
    p = plan([job("svc")], [a], [silent("n1")])
    assert p.launches == []
    assert "no node for a hedge" in p.jobs["svc"].reason


def test_hedged_silent_replica_is_lost_after_grace_without_another_launch():
    a = replace(att("svc", 1, "n1", S.SILENT), silent_since=NOW - 200)
    b = att("svc", 2, "n2")
    p = plan([job("svc", attempts_made=2)], [a, b], [silent("n1"), up("n2", alive(b))])
    assert p.attempts["svc.1"].state is S.LOST
    assert p.launches == [] and p.stops == []


@pytest.mark.parametrize("cls", ["batch", "training"])
def test_batch_on_a_silent_node_waits_for_unreachable_grace_then_requeues(cls):
    j = job("b", cls)
    a = att("b", 1, "n1")
    views = [silent("n1"), up("n2")]
    p = plan([j], [a], views)
    assert p.attempts["b.1"].state is S.SILENT
    assert p.launches == [] and p.stops == []
    assert p.jobs["b"].state is JobState.RUNNING and p.jobs["b"].reason_code == "silent"
    assert "requeue after unreachable_grace" in p.jobs["b"].reason

    jobs, attempts = advance([j], [a], p, NOW)
    p = plan(jobs, attempts, views, NOW + 119)
    assert p.launches == [] and "b.1" not in p.attempts

    p = plan(jobs, attempts, views, NOW + 121)
    lost = p.attempts["b.1"]
    assert (lost.state, lost.outcome) == (S.LOST, "node")
    assert "unreachable_grace 120s" in lost.reason
    assert p.stops == []                                 # its node cannot be asked; fenced when it answers
    (launch,) = p.launches
    assert launch.node == "n2"


def test_unreachable_grace_is_per_job():
    j = job("b", "batch", recovery={"unreachable_grace": "10s"})
    a = replace(att("b", 1, "n1", S.SILENT), silent_since=NOW - 11)
    p = plan([j], [a], [silent("n1"), up("n2")])
    assert p.attempts["b.1"].state is S.LOST and len(p.launches) == 1


@pytest.mark.parametrize("cls", ["service", "batch"])
def test_partitioned_silent_node_gets_no_hedge_and_no_requeue(cls):
    a = att("j", 1, "n1")
    views = [silent("n1", partitioned=True), up("n2")]
    p = plan([job("j", cls)], [a], views)
    assert p.attempts["j.1"].state is S.SILENT
    assert p.launches == [] and p.stops == []
    assert "partition" in p.jobs["j"].reason

    long_silent = replace(a, state=S.SILENT, silent_since=NOW - 3600)
    p = plan([job("j", cls)], [long_silent], views)
    assert "j.1" not in p.attempts                       # still silent, not lost
    assert p.launches == [] and p.stops == []


def test_silent_attempt_back_with_a_newer_replica_running_is_killed_as_superseded():
    a = replace(att("svc", 1, "n1", S.SILENT), silent_since=NOW - 50)
    b = att("svc", 2, "n2")
    p = plan([job("svc", attempts_made=2)], [a, b], [up("n1", alive(a)), up("n2", alive(b))])
    old = p.attempts["svc.1"]
    assert (old.state, old.outcome) == (S.KILLED, "superseded")
    assert [(s.attempt_id, s.node, s.grace_s) for s in p.stops] == [("svc.1", "n1", 0.0)]
    assert p.launches == []
    assert p.attempts["svc.2"].state is S.RUNNING
    assert p.jobs["svc"].restarts == 0 and p.jobs["svc"].state is JobState.RUNNING


@pytest.mark.parametrize("cls", ["service", "batch"])
def test_silent_attempt_back_with_no_replacement_runs_again(cls):
    a = replace(att("j", 1, "n1", S.SILENT), silent_since=NOW - 50)
    p = plan([job("j", cls)], [a], [up("n1", alive(a)), up("n2")])
    back = p.attempts["j.1"]
    assert (back.state, back.silent_since) == (S.RUNNING, None)
    assert p.launches == [] and p.stops == []
    assert "attempt-back" in kinds(p)
    assert p.jobs["j"].state is JobState.RUNNING


def test_two_silent_copies_answering_in_one_pass_keep_exactly_one():
    a = replace(att("svc", 1, "n1", S.SILENT), silent_since=NOW - 90)
    b = replace(att("svc", 2, "n2", S.SILENT), silent_since=NOW - 30)
    p = plan([job("svc", attempts_made=2)], [a, b], [up("n1", alive(a)), up("n2", alive(b))])
    states = sorted(x.state.value for x in p.attempts.values())
    assert states == ["killed", "running"]
    assert len(p.stops) == 1 and p.launches == []


# ---------------------------------------------------------------- starting, exits, retries

def test_starting_attempt_with_no_report_failed_to_start_and_is_retried():
    a = att("b", 1, "n1", S.STARTING)
    p = plan([job("b", "batch")], [a], [up("n1"), up("n2")])
    f = p.attempts["b.1"]
    assert (f.state, f.outcome) == (S.FAILED_TO_START, "start")
    assert "did not happen" in f.reason
    jobs, attempts = advance([job("b", "batch")], [a], p, NOW)
    retried = p.launches or plan(jobs, attempts, [up("n1"), up("n2")], NOW + 3).launches
    (launch,) = retried
    assert (launch.attempt.id, launch.node) == ("b.2", "n2")      # avoids the node where it failed


def test_failed_to_start_is_retried_after_a_short_delay():
    a = att("b", 1, "n1", S.STARTING)
    j = job("b", "batch")
    views = [up("n1"), up("n2")]
    p = plan([j], [a], views)
    assert p.launches == []
    assert p.jobs["b"].next_try_at == NOW + 2.0
    jobs, attempts = advance([j], [a], p, NOW)
    p = plan(jobs, attempts, views, NOW + 3)
    (launch,) = p.launches
    assert (launch.attempt.id, launch.node) == ("b.2", "n2")


def test_starting_attempt_reported_alive_becomes_running():
    a = att("b", 1, "n1", S.STARTING)
    p = plan([job("b", "batch")], [a], [up("n1", alive(a))])
    r = p.attempts["b.1"]
    assert r.state is S.RUNNING and r.started_at == NOW and r.pid == a.pid
    assert "attempt-running" in kinds(p)


def test_exit_0_batch_succeeds():
    a = att("b", 1, "n1")
    p = plan([job("b", "batch")], [a], [up("n1", exited(a, 0)), up("n2")])
    assert (p.attempts["b.1"].state, p.attempts["b.1"].exit_code) == (S.EXITED, 0)
    j = p.jobs["b"]
    assert (j.state, j.reason, j.reason_code) == (JobState.SUCCEEDED, "succeeded", "succeeded")
    assert p.launches == [] and p.stops == []


def test_exit_0_service_restarts_at_once():
    a = att("svc", 1, "n1")
    p = plan([job("svc")], [a], [up("n1", exited(a, 0))])
    assert p.attempts["svc.1"].state is S.EXITED
    assert [l.attempt.id for l in p.launches] == ["svc.2"]


@pytest.mark.parametrize("cls", ["batch", "training", "manual"])
def test_exit_3_with_no_retries_left_fails(cls):
    a = att("b", 1, "n1")
    p = plan([job("b", cls)], [a], [up("n1", exited(a, 3)), up("n2")])
    jr = p.jobs["b"]
    assert (jr.state, jr.reason_code, jr.reason) == (JobState.FAILED, "exit-code", "exit code 3 after 1 attempt")
    assert p.launches == [] and p.stops == []


def test_exit_3_with_retries_left_is_retried():
    a = att("b", 1, "n1")
    p = plan([job("b", "batch", recovery={"retries": 1})], [a], [up("n1", exited(a, 3)), up("n2")])
    assert (p.attempts["b.1"].state, p.attempts["b.1"].outcome) == (S.EXITED, "exit")
    assert p.jobs["b"].state is not JobState.FAILED


def test_exit_3_is_retried_after_backoff_then_fails_after_2_attempts():
    j = job("b", "batch", recovery={"retries": 1})
    a = att("b", 1, "n1")
    views = [up("n1", exited(a, 3)), up("n2")]
    p = plan([j], [a], views)
    assert (p.attempts["b.1"].state, p.attempts["b.1"].exit_code) == (S.EXITED, 3)
    assert p.launches == []
    jr = p.jobs["b"]
    assert jr.next_try_at == NOW + 10.0 and jr.failures == 1
    assert jr.state is JobState.PENDING and "next attempt in 10s" in jr.reason

    jobs, attempts = advance([j], [a], p, NOW)
    assert plan(jobs, attempts, views, NOW + 5).launches == []

    p = plan(jobs, attempts, views, NOW + 11)
    (launch,) = p.launches
    assert launch.node == "n2"                           # avoids n1, where it failed
    assert launch.spec.env["GRIDCTL_RESTART_COUNT"] == "1"
    jobs, attempts = advance(jobs, attempts, p, NOW + 11)
    b = next(x for x in attempts if x.id == "b.2")
    assert b.state is S.RUNNING

    p = plan(jobs, attempts, [up("n1"), up("n2", exited(b, 3))], NOW + 60)
    jr = p.jobs["b"]
    assert (jr.state, jr.reason_code, jr.reason) == (JobState.FAILED, "exit-code", "exit code 3 after 2 attempts")
    assert p.launches == []
    assert "job-state" in kinds(p)


def test_service_crash_restarts_with_backoff():
    a = att("svc", 1, "n1")
    p = plan([job("svc")], [a], [up("n1", exited(a, 1)), up("n2")])
    assert p.launches == []
    assert p.jobs["svc"].next_try_at == NOW + 5.0


def test_process_vanished_without_exit_code_is_the_jobs_failure():
    a = att("b", 1, "n1")
    p = plan([job("b", "batch")], [a], [up("n1", exited(a, None))])
    assert p.attempts["b.1"].outcome == "exit"
    assert p.jobs["b"].state is JobState.FAILED
    assert "vanished" in p.jobs["b"].reason


@pytest.mark.parametrize("cls", ["batch", "training"])
def test_infra_exit_code_counts_as_a_node_failure(cls):
    j = job("b", cls, recovery={"infra_exit_codes": [74]})
    a = att("b", 1, "n1")
    p = plan([j], [a], [up("n1", exited(a, 74)), up("n2")])
    ended = p.attempts["b.1"]
    assert (ended.state, ended.outcome, ended.exit_code) == (S.EXITED, "node", 74)
    assert "infra exit code" in ended.reason
    assert p.jobs["b"].state is JobState.RUNNING
    (launch,) = p.launches                               # at once: node failures wait for no backoff
    assert launch.node == "n2"


def test_infra_exit_code_counts_a_restart_not_a_failure():
    j = job("b", "batch", recovery={"infra_exit_codes": [74]})
    a = att("b", 1, "n1")
    p = plan([j], [a], [up("n1", exited(a, 74)), up("n2")])
    assert (p.jobs["b"].restarts, p.jobs["b"].failures) == (1, 0)


def test_an_exit_code_not_listed_as_infra_is_the_jobs_own():
    j = job("b", "batch", recovery={"infra_exit_codes": [74]})
    a = att("b", 1, "n1")
    p = plan([j], [a], [up("n1", exited(a, 75)), up("n2")])
    assert p.attempts["b.1"].outcome == "exit"
    assert p.jobs["b"].state is JobState.FAILED


# ---------------------------------------------------------------- hung and max_duration

@pytest.mark.parametrize("cls, job_state", [("batch", JobState.FAILED), ("service", JobState.PENDING)])
def test_no_heartbeat_for_hang_timeout_is_hung_and_stopped(cls, job_state):
    j = job("j", cls, recovery={"hang_timeout": "60s"})
    a = att("j", 1, "n1")
    p = plan([j], [a], [up("n1", alive(a, hb_age=300)), up("n2")])
    h = p.attempts["j.1"]
    assert (h.state, h.outcome) == (S.HUNG, "hung")
    assert [(s.attempt_id, s.node) for s in p.stops] == [("j.1", "n1")]
    assert p.jobs["j"].state is job_state
    if cls == "batch":
        assert p.jobs["j"].reason == "hung (no heartbeat) after 1 attempt"
    else:
        assert p.launches == [] and p.jobs["j"].next_try_at == NOW + 5.0   # restarted after its backoff


def test_hung_service_restarts_after_backoff():
    j = job("j", recovery={"hang_timeout": "60s"})
    a = att("j", 1, "n1")
    p = plan([j], [a], [up("n1", alive(a, hb_age=300)), up("n2")])
    assert p.launches == [] and p.jobs["j"].next_try_at == NOW + 5.0


def test_fresh_heartbeat_on_a_node_with_a_skewed_clock_is_not_hung():
    j = job("j", "batch", recovery={"hang_timeout": "60s"})
    a = att("j", 1, "n1")
    p = plan([j], [a], [up("n1", alive(a, hb_age=10))])
    assert p.stops == []
    assert p.attempts["j.1"].state is S.RUNNING          # its heartbeat is recorded; it keeps running


def test_past_max_duration_is_killed():
    j = job("b", "batch", recovery={"max_duration": "1h"})
    a = att("b", 1, "n1", started_at=NOW - 4000)
    p = plan([j], [a], [up("n1", alive(a))])
    k = p.attempts["b.1"]
    assert (k.state, k.outcome) == (S.KILLED, "duration")
    assert [s.attempt_id for s in p.stops] == ["b.1"]
    assert (p.jobs["b"].state, p.jobs["b"].reason_code) == (JobState.FAILED, "max-duration")


def test_within_max_duration_keeps_running():
    j = job("b", "batch", recovery={"max_duration": "1h"})
    a = att("b", 1, "n1", started_at=NOW - 3000)
    p = plan([j], [a], [up("n1", alive(a))])
    assert p.stops == []


# ---------------------------------------------------------------- cancel

def test_cancel_kills_every_live_attempt_and_cancels_the_job():
    a = att("svc", 1, "n1", replica=0)
    b = replace(att("svc", 2, "n2", S.SILENT, replica=1), silent_since=NOW - 10)
    j = replace(job("svc", replicas=2, attempts_made=2), cancel_requested=True)
    p = plan([j], [a, b], [up("n1", alive(a)), silent("n2"), up("n3")])
    assert {x.id: x.state for x in p.attempts.values()} == {"svc.1": S.KILLED, "svc.2": S.KILLED}
    assert [s.attempt_id for s in p.stops] == ["svc.1"]     # the silent copy is killed when its node answers
    jr = p.jobs["svc"]
    assert (jr.state, jr.reason, jr.reason_code) == (JobState.CANCELLED, "by user", "cancelled")
    assert p.launches == []


def test_cancel_of_a_pending_job_launches_nothing():
    j = replace(job("b", "batch", state=JobState.PENDING, attempts_made=0), cancel_requested=True)
    p = plan([j], [], [up("n1")])
    assert p.jobs["b"].state is JobState.CANCELLED and p.launches == []


# ---------------------------------------------------------------- pending

def test_pending_reason_names_every_nodes_rejection():
    other = replace(att("other", 1, "a"), gpus=("GPU-a-0", "GPU-a-1", "GPU-a-2"))
    big = job("other", "batch", gpus=3)
    j = job("b", "batch", state=JobState.PENDING, attempts_made=0, gpus=2, gpu_type="H100", created_at=1.0)
    views = [up("a", alive(other)), quarantined("b", reason="xid 79"),
             up("c", cordoned=True, cordon_reason="maintenance")]
    p = plan([big, j], [other], views)
    assert p.launches == []
    jr = p.jobs["b"]
    assert jr.state is JobState.PENDING
    assert jr.reason == "no node fits 2xH100: a has 1 free GPU, b quarantined (xid 79), c cordoned"
    assert jr.pending_since == NOW
    assert p.unplaced == ["b"]                  # what cloud pools may grow for; the running job is not in it


def test_pending_past_pending_timeout_fails_no_capacity():
    j = replace(job("b", "batch", state=JobState.PENDING, attempts_made=0, gpus=8, recovery={"pending_timeout": "1h"}),
                pending_since=NOW - 4000)
    p = plan([j], [], [up("n1")])
    jr = p.jobs["b"]
    assert (jr.state, jr.reason_code) == (JobState.FAILED, "no-capacity")
    assert jr.reason.startswith("no-capacity after pending 4000s (pending_timeout 3600s): no node fits 8xGPU")


def test_pending_within_pending_timeout_keeps_waiting():
    j = replace(job("b", "batch", state=JobState.PENDING, attempts_made=0, gpus=8, recovery={"pending_timeout": "1h"}),
                pending_since=NOW - 100)
    assert plan([j], [], [up("n1")]).jobs["b"].state is JobState.PENDING


# ---------------------------------------------------------------- placement inside a pass

def test_service_replicas_spread_over_nodes():
    j = job("svc", state=JobState.PENDING, attempts_made=0, replicas=2)
    p = plan([j], [], [up("n1"), up("n2")])
    assert sorted(l.node for l in p.launches) == ["n1", "n2"]
    assert sorted(l.attempt.replica for l in p.launches) == [0, 1]


def test_two_jobs_placed_in_one_pass_never_share_a_gpu():
    j1 = job("a", "batch", state=JobState.PENDING, attempts_made=0, created_at=1.0)
    j2 = job("b", "batch", state=JobState.PENDING, attempts_made=0, created_at=2.0)
    p = plan([j1, j2], [], [up("n1", n_gpus=2)])
    got = [l.spec.env["CUDA_VISIBLE_DEVICES"] for l in p.launches]
    assert sorted(got) == ["GPU-n1-0", "GPU-n1-1"]


# ---------------------------------------------------------------- drain

def draining(name: str, *reports: AttemptReport) -> NodeView:
    return up(name, *reports, cordoned=True, draining=True, cordon_reason="maintenance")


def test_drain_of_a_service_launches_the_replacement_first_and_stops_after():
    a = att("svc", 1, "n1")
    p = plan([job("svc")], [a], [draining("n1", alive(a)), up("n2")])
    (launch,) = p.launches
    assert launch.node == "n2"
    (old,) = launch.then_stop
    assert (old.attempt_id, old.node, old.reason) == ("svc.1", "n1", "drained: maintenance")
    assert p.stops == []                                 # not before the replacement runs
    assert p.attempts["svc.1"].state is S.RUNNING       # keeps serving meanwhile

    jobs, attempts = advance([job("svc")], [a], p, NOW)
    b = next(x for x in attempts if x.id == "svc.2")
    p2 = plan(jobs, attempts, [draining("n1", alive(a)), up("n2", alive(b))], NOW + 15)
    assert p2.launches == [] and p2.stops == []


def test_drain_of_a_service_waits_when_nothing_else_fits():
    a = att("svc", 1, "n1")
    p = plan([job("svc")], [a], [draining("n1", alive(a))])
    assert p.launches == [] and p.stops == []
    assert "drain of n1 waits" in p.jobs["svc"].reason


@pytest.mark.parametrize("cls", ["batch", "training"])
def test_drain_of_a_batch_job_stops_it_and_requeues(cls):
    a = att("b", 1, "n1")
    p = plan([job("b", cls)], [a], [draining("n1", alive(a)), up("n2")])
    k = p.attempts["b.1"]
    assert (k.state, k.outcome) == (S.KILLED, "drain")
    assert [(s.attempt_id, s.node) for s in p.stops] == [("b.1", "n1")]
    (launch,) = p.launches
    assert launch.node == "n2" and launch.then_stop == ()
    assert p.jobs["b"].state is JobState.RUNNING


def test_drain_of_a_manual_job_stops_it_and_launches_nothing_now():
    a = att("m", 1, "n1")
    p = plan([job("m", "manual")], [a], [draining("n1", alive(a)), up("n2")])
    assert [s.attempt_id for s in p.stops] == ["m.1"]
    assert (p.attempts["m.1"].state, p.attempts["m.1"].outcome) == (S.KILLED, "drain")
    assert p.launches == []
    assert "manual class" in p.jobs["m"].reason


def test_drain_of_a_manual_job_fails_the_job():
    a = att("m", 1, "n1")
    p = plan([job("m", "manual")], [a], [draining("n1", alive(a)), up("n2")])
    assert p.jobs["m"].state is JobState.FAILED


def test_a_drained_manual_job_is_never_moved_automatically():
    a = att("m", 1, "n1")
    p = plan([job("m", "manual")], [a], [draining("n1", alive(a)), up("n2")])
    jobs, attempts = advance([job("m", "manual")], [a], p, NOW)
    p2 = plan(jobs, attempts, [draining("n1"), up("n2")], NOW + 15)
    assert p2.launches == []


# ---------------------------------------------------------------- lemon nodes

def failed_here(job_name: str, node: str, ago: float) -> Attempt:
    return replace(att(job_name, 1, node, S.EXITED), ended_at=NOW - ago, outcome=Outcome.EXIT, exit_code=1,
                   reason="exit code 1")


def ran_fine(job_name: str, node: str) -> Attempt:
    return replace(att(job_name, 2, node, S.EXITED), ended_at=NOW - 10, outcome=Outcome.OK, exit_code=0)


def test_lemon_node_is_quarantined_after_three_jobs_failed_there_but_ran_elsewhere():
    history = [x for j in ("j1", "j2", "j3") for x in (failed_here(j, "lemon", 600), ran_fine(j, "good"))]
    p = plan([], [], [up("lemon"), up("good")], history=history)
    rec = p.nodes["lemon"]
    assert rec.state is NodeState.QUARANTINED and rec.needs_release
    assert rec.reason.startswith("lemon: attempts of 3 different jobs failed here within 60m")
    assert "j1.1" in rec.reason and "good" not in p.nodes
    assert "node-state" in kinds(p)


NOT_LEMONS = [
    ("only two jobs", [x for j in ("j1", "j2") for x in (failed_here(j, "lemon", 600), ran_fine(j, "good"))]),
    ("one job three times", [replace(failed_here("j1", "lemon", 600 + i), id=f"j1.{i + 3}", n=i + 3)
                             for i in range(3)] + [ran_fine("j1", "good")]),
    ("they failed everywhere", [failed_here(j, "lemon", 600) for j in ("j1", "j2", "j3")]),
    ("outside the window", [x for j in ("j1", "j2", "j3")
                            for x in (failed_here(j, "lemon", 7200), ran_fine(j, "good"))]),
]


@pytest.mark.parametrize("case, history", NOT_LEMONS, ids=[c for c, _ in NOT_LEMONS])
def test_not_a_lemon(case, history):
    p = plan([], [], [up("lemon"), up("good")], history=history)
    assert p.nodes == {}


def test_lemon_rule_is_configurable():
    history = [x for j in ("j1", "j2") for x in (failed_here(j, "lemon", 600), ran_fine(j, "good"))]
    p = plan([], [], [up("lemon"), up("good")], history=history, lemon=LemonRule(after=2, window_s=900))
    assert p.nodes["lemon"].state is NodeState.QUARANTINED


def test_a_running_attempt_elsewhere_counts_as_running_fine():
    history = [failed_here(j, "lemon", 600) for j in ("j1", "j2", "j3")]
    running = [att(j, 2, "good") for j in ("j1", "j2", "j3")]
    jobs = [job(j, "batch", attempts_made=2) for j in ("j1", "j2", "j3")]
    p = plan(jobs, running, [up("lemon"), up("good", *(alive(r) for r in running))], history=history)
    assert p.nodes["lemon"].state is NodeState.QUARANTINED


# ---------------------------------------------------------------- after_launch

def test_after_launch_ok_runs_the_attempt_and_the_job():
    j = job("b", "batch", state=JobState.PENDING)
    a = att("b", 1, "n1", S.STARTING)
    jr, ar, events = after_launch(j, a, True, 4242, "started", NOW)
    assert (ar.state, ar.pid, ar.started_at, ar.heartbeat_at) == (S.RUNNING, 4242, NOW, NOW)
    assert (jr.state, jr.reason) == (JobState.RUNNING, "running on n1 (attempt 1)")
    assert [e.kind for e in events] == ["attempt-running"]


def test_after_launch_failure_is_retried_by_a_later_pass():
    j = job("b", "batch", state=JobState.PENDING)
    a = att("b", 1, "n1", S.STARTING)
    jr, ar, events = after_launch(j, a, False, None, "cannot create /work/n1/attempts/b.1", NOW)
    assert (ar.state, ar.outcome, ar.ended_at) == (S.FAILED_TO_START, "start", NOW)
    assert jr.next_try_at == NOW + 2.0 and jr.reason_code == "failed-to-start"
    assert events[0].severity == "warning"


@pytest.mark.parametrize("replicas", [1, 2])
def test_pending_reason_in_backoff_never_repeats_a_clause_across_passes(replicas):
    j = job("s", "service", replicas=replicas, recovery={"backoff": "60s"})
    crashed = [att("s", r + 1, f"n{r + 1}", replica=r, k=r) for r in range(replicas)]
    views = [up(f"n{r + 1}", exited(a, 1)) for r, a in enumerate(crashed)]
    p = plan([j], crashed, views)
    jobs, attempts = advance([j], crashed, p, NOW)
    for later in (NOW + 5, NOW + 10, NOW + 15):        # passes during the backoff
        p = plan(jobs, attempts, [up(v.record.name) for v in views], later)
        jobs, attempts = advance(jobs, attempts, p, later)
    reason = p.jobs["s"].reason
    clauses = [c.strip() for c in reason.replace(";", "(").replace(")", "(").split("(") if c.strip()]
    assert len(clauses) == len(set(clauses)), reason
    assert reason.count("next attempt in") == replicas and reason.count("exit code 1") == replicas, reason
    assert reason.startswith("replica 0: exit code 1: next attempt in " if replicas > 1 else
                             "exit code 1: next attempt in 45s"), reason


# ---------------------------------------------------------------- restart by user

def test_restart_stops_every_live_copy_and_starts_anew_after_the_stop_grace():
    j = replace(job("web", replicas=2, attempts_made=2, spread=True), restarts=2, failures=1, restart_asked=1)
    a1, a2 = att("web", 1, "n1"), att("web", 2, "n2", replica=1)
    p = plan([j], [a1, a2], [up("n1", alive(a1)), up("n2", alive(a2))])
    assert sorted((s.attempt_id, s.reason) for s in p.stops) == [("web.1", "restarted by user"),
                                                                 ("web.2", "restarted by user")]
    assert {a.id: (a.state, a.reason) for a in p.attempts.values()} == {
        "web.1": (S.KILLED, "restarted by user"), "web.2": (S.KILLED, "restarted by user")}
    assert p.launches == []                       # break-before-make: the stops have their grace first
    done = p.jobs["web"]
    assert (done.state, done.restarts, done.failures, done.restart_done) == (JobState.PENDING, 0, 0, 1)
    assert done.reason.startswith("replica 0: restarted by user: next attempt in 5s")
    assert "job-restart" in kinds(p)
    jobs, attempts = advance([j], [a1, a2], p, NOW)
    later = plan(jobs, attempts, [up("n1"), up("n2")], now=NOW + 6)
    assert sorted((l.attempt.id, l.node) for l in later.launches) == [("web.3", "n1"), ("web.4", "n2")]
    assert later.jobs["web"].restart_done == 1     # nothing left to restart


def test_restart_of_an_ended_job_starts_it_at_once_with_fresh_counters():
    j = replace(job("etl", "batch", state=JobState.FAILED, attempts_made=4), failures=3, restart_asked=1)
    old = att("etl", 4, "n1", S.EXITED, exit_code=1, reaped=True)
    p = plan([j], [old], [up("n1")])
    assert [(l.attempt.id, l.node) for l in p.launches] == [("etl.5", "n1")]
    assert (p.jobs["etl"].failures, p.jobs["etl"].restart_done) == (0, 1)
    assert p.stops == []
