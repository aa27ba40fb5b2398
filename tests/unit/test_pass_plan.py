"""reconcile.plan.plan and after_actions: a whole pass's decisions from facts, inventory and
observations, and what follows the actions' answers. Pure and table-style: no SDK, no SSH, no
store.

Guards against the pass deciding outside its planner: a fault that is judged but whose jobs do
not move, a silent node whose work is killed, a kill list that is never cleared, a spot notice
that drops a service, a pool asked to grow for work no node could run, a provider that cannot
create instances being asked to, a drain that stops the old copy before the new one runs, and a
capacity refusal or a cloud's "retry later" that is not honoured.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from gridctl.health import Expectation
from gridctl.jobspec import JobSpec
from gridctl.launcher import LaunchResult
from gridctl.models import (Attempt, AttemptReport, AttemptState, Contact, GpuReading, JobRecord, JobState,
                            NodeRecord, NodeState, Observation, Outcome, XidEvent)
from gridctl.reconcile.actions import CloudLaunch, CloudResult, Results, StopResult
from gridctl.reconcile.facts import Facts
from gridctl.models import Inventory, InventoryNode
from gridctl.reconcile.plan import after_actions, plan
from gridctl.spec import Fleet
from gridctl.transport import Target
from providers.base import Feature, Instance, InstanceState

S = AttemptState
NOW = 50_000.0
CLOUD = frozenset({Feature.CREATE, Feature.STOP, Feature.SPOT})


def fleet(*pools: dict) -> Fleet:
    return Fleet.model_validate({"fleet": "f", "health": {"unhealthy_after": 2, "recover_after": 3},
                                 "pools": list(pools) or [{"name": "p", "provider": "ssh", "gpu": {"type": "H100", "count": 2},
                                                          "nodes": [{"name": n, "host": f"{n}.example"} for n in ("n1", "n2")]}]})


def inv(name: str, pool: str = "p") -> InventoryNode:
    return InventoryNode(name=name, pool=pool, provider="ssh", target=Target(name=name, host=f"{name}.example"),
                         expect=Expectation(gpus=2), work_dir=f"/w/{name}")


def gpus(node: str) -> tuple[GpuReading, ...]:
    return tuple(GpuReading(index=i, uuid=f"GPU-{node}-{i}", name="NVIDIA H100 80GB HBM3",
                            bus_id=f"0000:{0x18 + i:02x}:00.0", temperature_c=40.0, memory_total_mib=81559)
                 for i in range(2))


def answered(node: str, *reports: AttemptReport, boot: str | None = None, **kw) -> Observation:
    return Observation(node=node, contact=Contact.OK, started_at=NOW, duration_s=0.2, boot_id=boot or f"b-{node}",
                       smi_rc=0, gpus=gpus(node), xid_source="journalctl", complete=True, attempts=reports,
                       node_time=int(NOW), **kw)


def silent(node: str) -> Observation:
    return Observation(node=node, contact=Contact.UNREACHABLE, started_at=NOW, duration_s=5.0, detail="timed out")


def rec(name: str, **kw) -> NodeRecord:
    base = dict(name=name, pool="p", provider="ssh", host=f"{name}.example", port=22, state=NodeState.READY,
                reason="healthy", boot_id=f"b-{name}", last_seen=NOW - 10, last_good=NOW - 10, state_since=NOW - 900,
                gpus_expected=2, gpus_seen=2, good=10)
    base.update(kw)
    return NodeRecord(**base)


def job(name: str, cls: str = "service", **spec) -> JobRecord:
    data = JobSpec.model_validate({"name": name, "class": cls, "command": "serve", **spec}).to_store()
    return JobRecord(name=name, spec=data, state=JobState.RUNNING, reason="running", reason_code="running",
                     attempts_made=1)


def att(job_name: str, n: int, node: str, state: AttemptState = S.RUNNING, **kw) -> Attempt:
    return Attempt(id=f"{job_name}.{n}", job=job_name, n=n, replica=0, node=node, state=state, reason="running",
                   gpus=(f"GPU-{node}-0",), created_at=NOW - 700, started_at=NOW - 600, pid=4000 + n,
                   heartbeat_at=NOW - 5, **kw)


def alive(a: Attempt) -> AttemptReport:
    return AttemptReport(id=a.id, pid=a.pid, alive=True, exit_code=None, heartbeat_at=int(NOW) - 2,
                         started_at=int(NOW) - 600, node_now=int(NOW))


def facts(nodes: list[NodeRecord], jobs: list[JobRecord] = (), attempts: list[Attempt] = (), *,
          unreaped: list[Attempt] | None = None, **kw) -> Facts:
    by_name = {j.name: j for j in jobs}
    from gridctl.reconcile.jobs import parse_specs
    base = dict(read_at=NOW, nodes={n.name: n for n in nodes}, jobs=by_name, specs=parse_specs(by_name),
                attempts=tuple(attempts), unreaped=tuple(attempts if unreaped is None else unreaped), history=(),
                positions={}, key=b"k" * 32, partitions=frozenset(), open_launches={}, backoff={}, last_work={})
    base.update(kw)
    return Facts(**base)


def inventory(*names: str, **kw) -> Inventory:
    return Inventory([inv(n) for n in names], {}, **kw)


XID79 = XidEvent(79, "0000:18:00.0", "GPU has fallen off the bus.")


# ---------------------------------------------------------------- one pass, table-style

def test_xid79_quarantines_the_node_and_moves_its_service_in_the_same_plan():
    a = att("web", 1, "n1")
    p = plan(fleet(), facts([rec("n1"), rec("n2")], [job("web")], [a]), inventory("n1", "n2"),
             {"n1": answered("n1", alive(a), xids=(XID79,)), "n2": answered("n2")}, NOW)
    assert {n.name: n.state for n in p.node_rows} == {"n1": NodeState.QUARANTINED, "n2": NodeState.READY}
    assert (p.jobs.attempts["web.1"].state, p.jobs.attempts["web.1"].outcome) == (S.LOST, Outcome.NODE)
    assert [(s.attempt_id, s.node) for s in p.jobs.stops] == [("web.1", "n1")]
    assert [(ln.attempt.id, ln.node) for ln in p.jobs.launches] == [("web.2", "n2")]
    assert {"node-state", "attempt-ended", "attempt-starting"} <= {e.kind for e in p.events}


@pytest.mark.parametrize("cls", ["service", "batch", "training"])
def test_a_silent_node_kills_nothing(cls):
    a = att("j", 1, "n1")
    p = plan(fleet(), facts([rec("n1"), rec("n2")], [job("j", cls)], [a]), inventory("n1", "n2"),
             {"n1": silent("n1"), "n2": answered("n2")}, NOW)
    assert p.jobs.stops == []
    assert p.jobs.attempts["j.1"].state is S.SILENT
    # a service is hedged at once; batch and training wait for unreachable_grace
    assert [ln.node for ln in p.jobs.launches] == (["n2"] if cls == "service" else [])


def test_a_reboot_seen_by_the_probe_loses_the_attempts_on_that_node():
    a = att("j", 1, "n1")
    p = plan(fleet(), facts([rec("n1"), rec("n2")], [job("j", "batch")], [a]), inventory("n1", "n2"),
             {"n1": answered("n1", boot="b-new"), "n2": answered("n2")}, NOW)
    assert p.jobs.attempts["j.1"].reason == "node n1 rebooted"
    # requeued away from the node where it was lost, since another node fits
    assert [ln.node for ln in p.jobs.launches] == ["n2"]


def test_the_kill_list_is_cleared_only_by_a_complete_probe_of_that_node():
    ended = att("old", 1, "n1", S.KILLED, ended_at=NOW - 50, outcome=Outcome.CANCEL)
    other = att("old", 2, "n2", S.LOST, ended_at=NOW - 50, outcome=Outcome.NODE)
    f = facts([rec("n1"), rec("n2")], unreaped=[ended, other])
    assert f.kill_lists() == {"n1": ("old.1",), "n2": ("old.2",)}
    p = plan(fleet(), f, inventory("n1", "n2"), {"n1": answered("n1"), "n2": silent("n2")}, NOW)
    assert p.reaped == ("old.1",)


def test_a_spot_notice_moves_a_service_make_before_break():
    a = att("web", 1, "n1")
    p = plan(fleet(), facts([rec("n1"), rec("n2")], [job("web")], [a]), inventory("n1", "n2"),
             {"n1": answered("n1", alive(a), spot_notice='{"action": "terminate"}'), "n2": answered("n2")}, NOW)
    (launch,) = p.jobs.launches
    assert launch.node == "n2" and [s.attempt_id for s in launch.then_stop] == ["web.1"]
    assert p.jobs.stops == []                    # the old copy stops only once the new one runs
    assert p.jobs.attempts["web.1"].state is S.RUNNING     # still serving until its replacement runs


# ---------------------------------------------------------------- cloud pools in the same plan

def cloud_fleet() -> Fleet:
    base = {"provider": "aws", "region": "us-east-1", "image": "ami-1", "min": 0, "max": 2}
    return fleet({**base, "name": "big", "instance_type": "p5.48xlarge", "gpu": {"type": "H100", "count": 8}},
                 {**base, "name": "small", "instance_type": "g6.xlarge", "gpu": {"type": "L4", "count": 1}})


@pytest.mark.parametrize("gpus, features, grown", [
    (8, {"big": CLOUD, "small": CLOUD}, [("j", ("big",))]),        # only the 8-GPU pool fits
    (1, {"big": CLOUD, "small": CLOUD}, [("j", ("big", "small"))]),
    (16, {"big": CLOUD, "small": CLOUD}, []),                      # nothing could ever run it
    (8, {"big": frozenset(), "small": CLOUD}, []),                 # the provider cannot create instances
])
def test_pending_work_grows_only_a_pool_that_can_create_and_fits(gpus, features, grown):
    pending = replace(job("j", "batch", gpus=gpus), state=JobState.PENDING, attempts_made=0)
    p = plan(cloud_fleet(), facts([], [pending]), Inventory([], {}, {"big": {}, "small": {}}, features), {}, NOW)
    assert p.pools.grow == grown
    assert [c.request_id for c in p.pools.calls] == [r for _, r, _ in p.pools.new_intents]


# ---------------------------------------------------------------- after the actions

def test_a_drain_hand_over_ends_the_old_copy_only_when_the_new_one_runs():
    old = att("web", 1, "n1")
    f = facts([rec("n1", cordoned=True, draining=True), rec("n2")], [job("web")], [old])
    p = plan(fleet(), f, inventory("n1", "n2"), {"n1": answered("n1", alive(old)), "n2": answered("n2")}, NOW)
    (launch,) = p.jobs.launches
    ran = after_actions(f, p, Results(launched=[(launch, LaunchResult(True, 777, "started"))]), NOW + 1)
    assert ran.attempts["web.2"].state is S.RUNNING
    assert (ran.attempts["web.1"].state, ran.attempts["web.1"].outcome) == (S.KILLED, Outcome.DRAIN)
    failed = after_actions(f, p, Results(launched=[(launch, LaunchResult(False, None, "no space left"))]), NOW + 1)
    assert failed.attempts["web.2"].state is S.FAILED_TO_START and "web.1" not in failed.attempts


def test_a_lost_launch_answer_leaves_the_attempt_for_the_next_probe():
    f = facts([rec("n1")], [replace(job("j", "batch"), state=JobState.PENDING, attempts_made=0)])
    p = plan(fleet(), f, inventory("n1"), {"n1": answered("n1")}, NOW)
    (launch,) = p.jobs.launches
    out = after_actions(f, p, Results(launched=[(launch, LaunchResult(False, None, "EOF", uncertain=True))]), NOW)
    assert out.attempts["j.1"].state is S.STARTING
    assert [e.kind for e in out.events] == ["attempt-unconfirmed"]
    assert out.jobs == {}


def test_a_failed_stop_says_the_node_will_kill_it_when_it_answers():
    a = att("j", 1, "n1")
    f = facts([rec("n1")], [job("j")], [a])
    p = plan(fleet(), f, inventory("n1"), {"n1": answered("n1", alive(a), xids=(XID79,))}, NOW)
    (stop,) = p.jobs.stops
    out = after_actions(f, p, Results(stopped=[StopResult(stop, False, "timed out")]), NOW)
    assert [e.kind for e in out.events] == ["attempt-stop-failed"]


@pytest.mark.parametrize("result, backoff_s, kind", [
    (dict(error="CapacityError: none left", refused=True), 300.0, "pool-capacity"),
    (dict(error="TransientError: throttled", retry_after_s=42.0), 42.0, "instance-launch-failed"),
    (dict(error="AuthError: bad key"), None, "instance-launch-failed"),
    (dict(instances=("i-1",)), None, "instance-launch"),
])
def test_cloud_answers_finish_the_intent_and_rest_the_pool_as_the_cloud_said(result, backoff_s, kind):
    call = CloudLaunch("big", "r1", 1, new=True, job="j", fallbacks=())
    f = facts([])
    p = plan(cloud_fleet(), f, Inventory([], {}, {}, {}), {}, NOW)
    out = after_actions(f, p, Results(cloud=[CloudResult(call, "big", "r1", **result)]), NOW)
    assert out.pools.finished == [("r1", result.get("error"))]
    assert out.pools.backoff == ({} if backoff_s is None else {"big": NOW + backoff_s})
    assert [e.kind for e in out.pools.events] == [kind]


def test_a_retired_instance_becomes_terminating_only_once_the_cloud_said_yes():
    from gridctl.reconcile.actions import CloudRetire
    sick = rec("i-1", pool="big", provider="aws", state=NodeState.QUARANTINED, reason="xid 79")
    call = CloudRetire("big", "i-1", False, "xid 79", replacing=True)
    f = facts([sick])
    p = plan(cloud_fleet(), f, Inventory([], {}, {}, {}), {}, NOW)
    ok = after_actions(f, p, Results(cloud=[CloudResult(call, "big", instances=("i-1",))]), NOW)
    assert [(n.name, n.state) for n in ok.pools.nodes] == [("i-1", NodeState.TERMINATING)]
    assert [e.kind for e in ok.pools.events] == ["instance-replaced"]
    no = after_actions(f, p, Results(cloud=[CloudResult(call, "big", error="TransientError: later")]), NOW)
    assert no.pools.nodes == [] and [e.kind for e in no.pools.events] == ["instance-retire-failed"]


def test_instances_listed_but_unused_are_not_touched_without_a_reason():
    idle = Instance(id="i-1", provider="aws", pool="big", state=InstanceState.RUNNING, host="127.0.0.1",
                    launched_at=NOW - 60)
    p = plan(cloud_fleet(), facts([rec("i-1", pool="big", provider="aws")]),
             Inventory([], {}, {"big": {"i-1": idle}, "small": {}}, {"big": CLOUD, "small": CLOUD}), {}, NOW)
    assert p.pools.calls == []


def test_one_slow_probe_of_a_node_still_quarantined_from_before_kills_nothing():
    # quarantined for silence, answered healthy since (its attempt runs again), then one slow nvidia-smi
    a = att("j", 1, "n1")
    node = rec("n1", state=NodeState.QUARANTINED, reason="silent for 2m (recovering: 1/3 good probes)", good=1)
    slow = replace(answered("n1", alive(a)), smi_rc=124, gpus=())
    p = plan(fleet(), facts([node, rec("n2")], [job("j", "training")], [a]), inventory("n1", "n2"),
             {"n1": slow, "n2": answered("n2")}, NOW)
    assert p.jobs.stops == [] and p.jobs.launches == []
    assert p.jobs.attempts["j.1"].state is S.RUNNING


def test_a_confirmed_hang_condemns_the_attempts():
    a = att("j", 1, "n1")
    node = rec("n1", state=NodeState.SUSPECT, reason="nvidia-smi slow (1 of 2)", failures=1, good=0)
    slow = replace(answered("n1", alive(a)), smi_rc=124, gpus=())
    p = plan(fleet(), facts([node, rec("n2")], [job("j", "training")], [a]), inventory("n1", "n2"),
             {"n1": slow, "n2": answered("n2")}, NOW)
    assert {n.name: n.state for n in p.node_rows}["n1"] is NodeState.QUARANTINED
    assert p.jobs.attempts["j.1"].state is S.LOST and [ln.node for ln in p.jobs.launches] == ["n2"]


# ---------------------------------------------------------------- what the node can no longer be trusted with

def test_an_unsafe_work_dir_gets_no_work_loses_nothing_and_alerts_once():
    a = att("j", 1, "n1")
    unsafe = answered("n1", work_dir_unsafe="/scratch/gridctl/n1 is writable by group")   # no attempt reports
    pending = replace(job("new", "batch"), state=JobState.PENDING, attempts_made=0)
    p = plan(fleet(), facts([rec("n1")], [job("j", "batch"), pending], [a]), inventory("n1"), {"n1": unsafe}, NOW)
    node = {n.name: n for n in p.node_rows}["n1"]
    assert node.state is NodeState.SUSPECT and "work dir unsafe" in node.reason
    assert "j.1" not in p.jobs.attempts and p.jobs.launches == []      # no news about j.1, no new work
    assert [e.message for e in p.events if e.kind == "alert"] == [
        "work dir unsafe: /scratch/gridctl/n1 is writable by group: nothing there is read or killed, no new work"]


def test_an_attempt_whose_dir_lost_its_token_is_lost_untouched_with_an_alert():
    a = att("j", 1, "n1")
    p = plan(fleet(), facts([rec("n1"), rec("n2")], [job("j", "batch")], [a]), inventory("n1", "n2"),
             {"n1": answered("n1", foreign_attempts=("j.1",)), "n2": answered("n2")}, NOW)
    lost = p.jobs.attempts["j.1"]
    assert lost.state is S.LOST and "no longer holds its token" in lost.reason
    assert p.jobs.stops == []                                   # never signalled
    assert any(e.kind == "alert" and e.job == "j" for e in p.events)


def test_a_pid_held_by_another_process_ends_the_attempt_without_a_signal():
    a = att("j", 1, "n1")
    mismatch = replace(alive(a), alive=False, pid_mismatch=True)
    p = plan(fleet(), facts([rec("n1")], [job("j", "batch")], [a]), inventory("n1"),
             {"n1": answered("n1", mismatch)}, NOW)
    ended = p.jobs.attempts["j.1"]
    assert ended.state is S.EXITED and "now names another process" in ended.reason
    assert p.jobs.stops == [] and any(e.kind == "alert" for e in p.events)


# ---------------------------------------------------------------- work gridctl did not start (issue 11, item 8)

def test_a_gpu_running_a_process_gridctl_did_not_start_is_not_free_and_the_reason_says_so():
    busy = answered("n1", compute_apps=(("GPU-n1-0", 4321),))
    two = replace(job("two", "batch", gpus=2), state=JobState.PENDING, attempts_made=0)
    p = plan(fleet(), facts([rec("n1")], [two]), inventory("n1"), {"n1": busy}, NOW)
    assert p.jobs.launches == []
    assert p.jobs.jobs["two"].reason == "no node fits 2xGPU: n1 has 1 free GPU (1 busy with processes gridctl did not start)"
    one = replace(job("one", "batch", gpus=1), state=JobState.PENDING, attempts_made=0)
    p = plan(fleet(), facts([rec("n1")], [one]), inventory("n1"), {"n1": busy}, NOW)
    assert [ln.attempt.gpus for ln in p.jobs.launches] == [("GPU-n1-1",)]


def test_our_own_attempt_on_its_gpu_is_not_a_foreign_process():
    a = att("j", 1, "n1")                                  # holds GPU-n1-0
    p = plan(fleet(), facts([rec("n1")], [job("j", "batch")], [a]), inventory("n1"),
             {"n1": answered("n1", alive(a), compute_apps=(("GPU-n1-0", a.pid),))}, NOW)
    assert p.jobs.attempts["j.1"].state is S.RUNNING and not any(e.kind == "orphan-attempt" for e in p.events)


def test_a_running_attempt_the_store_does_not_know_is_reported_once_and_left_alone():
    ghost = AttemptReport(id="ghost.3", pid=999, alive=True, exit_code=None, heartbeat_at=int(NOW),
                          started_at=int(NOW) - 60, node_now=int(NOW))
    obs = {"n1": answered("n1", ghost, compute_apps=(("GPU-n1-1", 999),))}
    p = plan(fleet(), facts([rec("n1")]), inventory("n1"), obs, NOW)
    (event,) = [e for e in p.events if e.kind == "orphan-attempt"]
    assert "ghost.3" in event.message and event.severity == "alert" and p.jobs.stops == []
    (row,) = p.node_rows
    assert "orphan-attempt" in {f.code for f in row.findings}
    again = plan(fleet(), facts([row]), inventory("n1"), obs, NOW + 15)
    assert not any(e.kind == "orphan-attempt" for e in again.events)         # alerted once
    one = replace(job("one", "batch", gpus=2), state=JobState.PENDING, attempts_made=0)
    p = plan(fleet(), facts([row], [one]), inventory("n1"), obs, NOW + 15)
    assert "1 busy with processes gridctl did not start" in p.jobs.jobs["one"].reason
