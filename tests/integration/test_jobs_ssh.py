"""Jobs and failover over a real sshd (DESIGN sections 3, 5, 6): the real CLI and reconcile_once
against simulated GPU nodes, checking the store, the events, and the processes on the nodes."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time
from collections import Counter

import pytest

from fleetsim import requires_root
from helpers import GRIDCTL, gridctl
from jobs_support import FAST_RECOVERY, JobLab, LOOP, assert_one_running_per_replica, lab_factory, messages

from gridctl.models import AttemptState, JobState, NodeState

S = AttemptState


@pytest.fixture
def make_lab(ssh_fleet, tmp_path):
    with lab_factory(ssh_fleet, tmp_path) as make:
        yield make


def job(name: str, cls: str, *, command: str = LOOP, gpus: int = 1, **extra) -> dict:
    spec = {"name": name, "class": cls, "command": command, "gpus": gpus, **extra}
    spec.setdefault("recovery", dict(FAST_RECOVERY))
    return spec


def where(lab: JobLab, name: str) -> set[str]:
    return {a.node for a in lab.live(name)}


# ---------------------------------------------------------------- 1. XID 79

def test_xid79_quarantines_node_and_each_class_recovers_its_own_way(make_lab):
    lab = make_lab("xq")
    n0, n1, n2 = lab.names
    # creation order + bin-packing put manual, batch-a, train and svc-a's replica 0 on n0
    lab.run_job(job("manual", "manual"))
    lab.run_job(job("batch-a", "batch"))
    lab.run_job(job("train", "training", checkpoint_dir=str(lab.root / "ckpt")))
    lab.run_job(job("svc-a", "service", replicas=2, spread=True))
    lab.run_job(job("svc-b", "service"))
    lab.run_job(job("batch-b", "batch"))
    before = {a.id: a for a in lab.attempts() if a.state is S.RUNNING}
    assert len(before) == 7, lab.summary()
    on_n0 = {a.job for a in before.values() if a.node == n0}
    assert on_n0 == {"manual", "batch-a", "train", "svc-a"}, lab.summary()
    assert {a.replica for a in before.values() if a.job == "svc-a"} == {0, 1}
    assert len(where(lab, "svc-a")) == 2, "spread: the two replicas share a node"
    assert sorted(p.attempt for p in lab.alive()) == sorted(before), "a running attempt has no live process"

    lab.sim.set_mode(n0, "xid79")
    report = lab.reconcile()

    node = lab.nodes()[n0]
    assert node.state is NodeState.QUARANTINED and "xid 79" in node.reason
    assert any(e.kind == "node-state" and e.node == n0 and "-> quarantined" in e.message for e in report.events)
    jobs = lab.jobs()
    # services: replica 0 runs elsewhere, still spread over two nodes
    assert jobs["svc-a"].state is JobState.RUNNING
    svc = lab.running("svc-a")
    assert sorted(a.replica for a in svc) == [0, 1] and n0 not in {a.node for a in svc}, lab.summary()
    assert len({a.node for a in svc}) == 2
    # batch and training: requeued (a node-failure restart) and running on another node
    for name in ("batch-a", "train"):
        assert jobs[name].state is JobState.RUNNING, lab.summary()
        assert jobs[name].restarts == 1
        (a,) = lab.running(name)
        assert a.node != n0 and a.n == 2
    # training keeps its checkpoint dir and learns it was restarted
    (t2,) = lab.running("train")
    env = lab.attempt_file(t2, "env").read_text()
    assert f"GRIDCTL_CHECKPOINT_DIR={lab.root / 'ckpt'}" in env and "GRIDCTL_RESTART_COUNT=1" in env
    # manual: failed, and says why it was not moved
    assert jobs["manual"].state is JobState.FAILED
    assert "manual class" in jobs["manual"].reason and "node-lost" in jobs["manual"].reason
    assert not lab.live("manual")
    # untouched jobs on healthy nodes keep their first attempt
    for name in ("svc-b", "batch-b"):
        assert [a.n for a in lab.live(name)] == [1] and jobs[name].restarts == 0

    # the story in the events
    d = lab.describe("batch-a")
    ended = messages(d, "attempt-ended")
    assert any("attempt batch-a.1 on " + n0 + " lost" in m and "xid 79" in m and "requeued" in m for m in ended), ended
    assert any(m.startswith("attempt batch-a.2 placed on ") for m in messages(d, "attempt-starting"))
    assert any(m.startswith("attempt batch-a.2 running on ") for m in messages(d, "attempt-running"))
    kinds = [e["kind"] for e in d["events"]]
    assert kinds.index("attempt-ended") < max(i for i, k in enumerate(kinds) if k == "attempt-starting")
    d = lab.describe("manual")
    assert any("manual.1 on " + n0 + " lost" in m and "manual class" in m for m in messages(d, "attempt-ended"))
    assert any("running -> failed" in m for m in messages(d, "job-state"))

    # on the nodes: exactly one process per job replica, none on the broken node
    alive = lab.alive_by_replica()
    assert alive == {("svc-a", 0): 1, ("svc-a", 1): 1, ("svc-b", 0): 1, ("batch-a", 0): 1, ("batch-b", 0): 1,
                     ("train", 0): 1}, lab.summary()
    assert not [p for p in lab.alive() if p.node == n0]
    assert sorted(p.attempt for p in lab.alive()) == sorted(a.id for a in lab.attempts() if a.state is S.RUNNING)


# ---------------------------------------------------------------- 2. silence: hedge, grace, fence

@requires_root
def test_silent_node_hedges_services_then_requeues_batch_and_fences_stale_copies(make_lab):
    lab = make_lab("bh")
    n0, n1, n2 = lab.names
    lab.run_job(job("svc", "service"))
    lab.run_job(job("batch", "batch"))
    lab.run_job(job("train", "training", checkpoint_dir=str(lab.root / "ckpt")))
    assert where(lab, "svc") == where(lab, "batch") == where(lab, "train") == {n0}, lab.summary()
    first = {a.job: a for a in lab.attempts()}

    lab.blackhole(n0)
    silenced = lab.reconcile()
    # services hedge at once: a new attempt elsewhere, the old one silent (not killed, not lost)
    svc = {a.n: a for a in lab.attempts("svc")}
    assert svc[1].state is S.SILENT and svc[1].node == n0
    assert svc[2].state is S.RUNNING and svc[2].node != n0
    assert any(e.kind == "hedge" and e.job == "svc" for e in silenced.events)
    # batch and training stay: silent, job still running, reason names unreachable_grace
    for name in ("batch", "train"):
        (a,) = lab.attempts(name)
        assert a.state is S.SILENT, lab.summary()
        j = lab.job(name)
        assert j.state is JobState.RUNNING and "unreachable_grace" in j.reason and n0 in j.reason, j.reason
    assert lab.nodes()[n0].health.value == "unreachable"

    # until the grace has passed nothing is requeued; then batch and training requeue elsewhere
    t0 = min(a.silent_since for a in lab.attempts() if a.state is S.SILENT)
    lab.reconcile_until(lambda: lab.job("batch").restarts == 1 and lab.job("train").restarts == 1, timeout=20,
                        pause=0, what="batch and training requeued after unreachable_grace")
    for name in ("batch", "train"):
        old, new = lab.attempts(name)
        assert old.state is S.LOST and "unreachable_grace 4s" in old.reason and old.ended_at - t0 >= 4.0
        assert new.state is S.RUNNING and new.node != n0
        assert lab.job(name).state is JobState.RUNNING
    assert lab.attempts("svc")[0].state is S.LOST     # the hedged replica's silent copy: lost after the grace too
    assert len(lab.attempts("svc")) == 2, "a silent copy was hedged more than once"
    # the silent node's copies may still run there: silence killed nothing
    assert {p.attempt for p in lab.alive() if p.node == n0} == {"svc.1", "batch.1", "train.1"}

    lab.unblackhole(n0)
    back = lab.reconcile()
    # the node answers: its stale copies are killed (fenced), and that is an event
    assert {p.attempt for p in lab.alive() if p.node == n0} == set(), lab.summary()
    for a in (first["svc"], first["batch"], first["train"]):
        assert lab.attempts(a.job)[0].state is S.LOST        # lost after the grace, above; the kill is the fence
    fenced = sorted(e.message.split()[1] for e in back.events if e.kind == "attempt-fenced" and e.node == n0)
    assert fenced == ["batch.1", "svc.1", "train.1"], [e.message for e in back.events]
    assert all(a.reaped for a in lab.attempts() if a.node == n0)
    assert lab.alive_by_replica() == {("svc", 0): 1, ("batch", 0): 1, ("train", 0): 1}, lab.summary()
    lab.reconcile()
    assert lab.alive_by_replica() == {("svc", 0): 1, ("batch", 0): 1, ("train", 0): 1}, lab.summary()
    for name in ("svc", "batch", "train"):
        assert [a.state for a in lab.live(name)] == [S.RUNNING]
        assert lab.job(name).state is JobState.RUNNING


# ---------------------------------------------------------------- 3. heartbeats and hangs

def test_job_without_heartbeat_is_hung_killed_and_handled_by_its_class(make_lab):
    lab = make_lab("hb", count=2)
    hang = {"hang_timeout": "3s", "backoff": "1s"}
    lab.run_job(job("stuck", "batch", command="sleep 600", recovery=hang))
    lab.run_job(job("stuck-svc", "service", command="sleep 600", recovery=hang))
    lab.run_job(job("beats", "batch", command='while :; do touch "$GRIDCTL_HEARTBEAT"; sleep 1; done',
                    recovery=hang))
    assert lab.alive_ids() == ["beats.1", "stuck-svc.1", "stuck.1"]
    lab.reconcile_until(lambda: lab.job("stuck").state is JobState.FAILED, timeout=15, pause=0.5,
                        what="the silent batch job is declared hung")
    (a,) = lab.attempts("stuck")
    assert a.state is S.HUNG and "hang_timeout 3s" in a.reason and "no heartbeat for" in a.reason
    assert lab.job("stuck").reason == "hung (no heartbeat) after 1 attempt"
    assert "stuck.1" not in lab.alive_ids(), "a hung attempt was not killed"
    # the service is restarted instead (its class), and its hung copy is gone too
    lab.reconcile_until(lambda: any(a.n == 2 and a.state is S.RUNNING for a in lab.attempts("stuck-svc")),
                        timeout=10, pause=0.5, what="the hung service is restarted")
    svc = lab.attempts("stuck-svc")
    assert svc[0].state is S.HUNG and lab.job("stuck-svc").state is JobState.RUNNING
    assert lab.job("stuck-svc").failures >= 1
    assert "stuck-svc.1" not in lab.alive_ids()
    # the job that touches $GRIDCTL_HEARTBEAT (and writes no output) is never hung
    time.sleep(max(0.0, lab.attempts("beats")[0].started_at + 5.5 - time.time()))   # well past hang_timeout
    lab.reconcile()
    (b,) = lab.attempts("beats")
    assert b.state is S.RUNNING and lab.job("beats").state is JobState.RUNNING
    assert lab.output("beats.1") == "" and "beats.1" in lab.alive_ids()
    d = lab.describe("stuck")
    assert any("stuck.1" in m and "hung" in m for m in messages(d, "attempt-ended"))
    assert any("running -> failed: hung (no heartbeat) after 1 attempt" in m for m in messages(d, "job-state"))


# ---------------------------------------------------------------- 4. exit codes

def test_exit_codes_follow_the_class_rules(make_lab):
    lab = make_lab("ex", count=2)
    lab.run_job(job("retry-once", "batch", command="exit 3", recovery={"retries": 1, "backoff": "1s"}))
    lab.run_job(job("no-retry", "batch", command="exit 3", recovery={"retries": 0}))
    lab.run_job(job("manual-3", "manual", command="exit 3", recovery={}))
    lab.run_job(job("ok", "batch", command="echo done; exit 0"))
    lab.run_job(job("infra", "batch", recovery={"infra_exit_codes": [42], "backoff": "1s"},
                    command='[ "$GRIDCTL_RESTART_COUNT" = 0 ] && exit 42; exit 0'))
    names = ["retry-once", "no-retry", "manual-3", "ok", "infra"]
    lab.reconcile_until(lambda: all(j.state.terminal for j in lab.jobs().values()), timeout=20, pause=0.5,
                        what="every job ends")
    jobs = lab.jobs()
    assert jobs["retry-once"].state is JobState.FAILED
    assert "exit code 3 after 2 attempts" in jobs["retry-once"].reason
    assert [(a.state, a.exit_code) for a in lab.attempts("retry-once")] == [(S.EXITED, 3)] * 2
    assert jobs["no-retry"].state is JobState.FAILED and "exit code 3 after 1 attempt" in jobs["no-retry"].reason
    assert len(lab.attempts("no-retry")) == 1
    assert jobs["manual-3"].state is JobState.FAILED and "exit code 3 after 1 attempt" in jobs["manual-3"].reason
    assert len(lab.attempts("manual-3")) == 1, "a manual job was retried"
    assert jobs["ok"].state is JobState.SUCCEEDED and jobs["ok"].reason == "succeeded"
    assert lab.output("ok.1") == "done\n"
    # an infra exit code is a node failure: requeued (a restart, not a failure), on another node
    assert jobs["infra"].state is JobState.SUCCEEDED, lab.summary()
    first, second = lab.attempts("infra")
    assert first.exit_code == 42 and "infra exit code" in first.reason and second.exit_code == 0
    assert second.node != first.node
    assert (jobs["infra"].restarts, jobs["infra"].failures) == (1, 0)
    assert jobs["retry-once"].failures == 2 and jobs["retry-once"].restarts == 0
    rows = lab.jobs_json()
    assert {n: rows[n]["state"] for n in names} == {"retry-once": "failed", "no-retry": "failed",
                                                    "manual-3": "failed", "ok": "succeeded", "infra": "succeeded"}
    assert not lab.alive_ids()


# ---------------------------------------------------------------- 5. no capacity

def test_pending_job_says_why_each_node_rejects_it_and_starts_when_one_frees(make_lab):
    lab = make_lab("cap", count=2)
    c0, c1 = lab.names
    lab.run_job(job("half", "batch", gpus=2))
    assert where(lab, "half") == {c0}
    lab.run_job(job("three", "batch", gpus=3))
    assert where(lab, "three") == {c1}
    assert lab.cli("cordon", c0).returncode == 0 and lab.cli("cordon", c1).returncode == 0
    lab.run_job(job("small", "batch"))
    small = lab.job("small")
    assert small.state is JobState.PENDING and not lab.attempts("small")
    assert small.reason == f"no node fits 1xGPU: {c0}, {c1} cordoned", small.reason     # one clause, not one per node
    row = lab.jobs_json()["small"]
    assert row["state"] == "pending" and row["reason"] == small.reason
    assert where(lab, "half") == {c0}, "cordon stopped running work"
    res = lab.cli("uncordon", c1)
    assert res.returncode == 0, res.stderr
    lab.reconcile()
    assert lab.job("small").state is JobState.RUNNING and where(lab, "small") == {c1}
    assert "small.1" in lab.alive_ids()
    assert lab.cli("uncordon", c0).returncode == 0
    # a job no node could ever fit (5 of 4 GPUs) is refused when submitted (test_cli_lifecycle);
    # this one fits a node, but no node has 4 free GPUs now
    lab.run_job(job("big", "batch", gpus=4, recovery={"pending_timeout": "4s"}))
    big = lab.job("big")
    assert big.state is JobState.PENDING
    assert big.reason == f"no node fits 4xGPU: {c0} has 2 free GPUs, {c1} has 0 free GPUs", big.reason
    # pending_timeout: the job that fits nowhere now fails with a no-capacity reason
    lab.reconcile_until(lambda: lab.job("big").state is JobState.FAILED, timeout=10, pause=0.5,
                        what="pending_timeout fails the job")
    big = lab.job("big")
    assert big.reason_code == "no-capacity"
    assert big.reason.startswith("no-capacity after pending ") and "(pending_timeout 4s)" in big.reason
    assert f"{c1} has 0 free GPUs" in big.reason, big.reason       # `three` and `small` hold c1's four
    assert not lab.attempts("big")


# ---------------------------------------------------------------- 6. a blip is not a failure

@requires_root
def test_node_silent_for_one_pass_kills_no_batch_job_and_hedges_a_service_once(make_lab):
    lab = make_lab("bl")
    n0 = lab.names[0]
    lab.run_job(job("svc", "service"))
    lab.run_job(job("batch", "batch"))
    assert where(lab, "svc") == where(lab, "batch") == {n0}
    (batch1,) = lab.attempts("batch")
    pid = next(p.pid for p in lab.alive() if p.attempt == "batch.1")

    lab.blackhole(n0)
    lab.reconcile()
    lab.unblackhole(n0)
    assert lab.attempts("batch")[0].state is S.SILENT
    for _ in range(3):
        lab.reconcile()
        time.sleep(0.3)

    # the batch job never moved: same attempt, same process, no restart
    (b,) = lab.attempts("batch")
    assert b.state is S.RUNNING and b.id == batch1.id
    assert lab.job("batch").restarts == 0 and lab.job("batch").state is JobState.RUNNING
    assert next(p.pid for p in lab.alive() if p.attempt == "batch.1") == pid
    d = lab.describe("batch")
    assert messages(d, "attempt-back") and not messages(d, "attempt-ended")
    # the service was hedged once; its stale copy was stopped when the node answered
    d = lab.describe("svc")
    assert len(messages(d, "hedge")) == 1
    svc = lab.attempts("svc")
    assert [a.state for a in svc] == [S.KILLED, S.RUNNING], lab.summary()
    assert "stale copy" in svc[0].reason
    assert lab.alive_by_replica() == {("svc", 0): 1, ("batch", 0): 1}, lab.summary()


# ---------------------------------------------------------------- 7. passes killed mid-failover

@requires_root
def test_passes_killed_at_random_during_failover_leave_one_copy_of_every_replica(make_lab):
    lab = make_lab("ck", health={"recover_after": 1})
    many = {"max_restarts": 1000, **FAST_RECOVERY}
    lab.run_job(job("svc", "service", replicas=2, spread=True))
    lab.run_job(job("batch-a", "batch", recovery=many))
    lab.run_job(job("batch-b", "batch", recovery=many))
    lab.run_job(job("train", "training", recovery=many, checkpoint_dir=str(lab.root / "ckpt")))
    want = Counter({("svc", 0): 1, ("svc", 1): 1, ("batch-a", 0): 1, ("batch-b", 0): 1, ("train", 0): 1})
    assert lab.alive_by_replica() == want
    seed = int(os.environ.get("GRIDCTL_CRASH_SEED", "20261127"))   # set it to explore other schedules
    rng = random.Random(seed)
    faulted: dict[str, str] = {}          # node -> "silent" | "xid79"; at most one at a time
    killed = 0
    started = time.monotonic()
    for i in range(50):
        roll = rng.random()
        if faulted and roll < 0.3:
            node, kind = faulted.popitem()
            if kind == "silent":
                lab.unblackhole(node)
            else:
                lab.sim.set_mode(node, "healthy")
                assert lab.cli("uncordon", node).returncode == 0
        elif not faulted and roll < 0.5:
            node = rng.choice(lab.names)
            if rng.random() < 0.6:
                lab.blackhole(node)
                faulted[node] = "silent"
            else:
                lab.sim.set_mode(node, "xid79")
                faulted[node] = "xid79"
        proc = subprocess.Popen([*GRIDCTL, "reconcile", "-q", "-f", str(lab.path)], stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True)
        if rng.random() < 0.6:
            try:
                proc.wait(rng.uniform(0.05, 1.5))
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGKILL)
                killed += 1
        _, err = proc.communicate(timeout=60)
        assert "Traceback" not in err, err
        assert_one_running_per_replica(lab.attempts())
    assert killed >= 10, f"only {killed} passes were killed mid-way (seed {seed}): the test proves little"

    for node, kind in faulted.items():
        if kind == "silent":
            lab.unblackhole(node)
        else:
            lab.sim.set_mode(node, "healthy")
            assert lab.cli("uncordon", node).returncode == 0

    def settled() -> bool:
        live = [a for a in lab.attempts() if a.state.live]
        return (all(a.state is S.RUNNING for a in live) and Counter((a.job, a.replica) for a in live) == want
                and lab.alive_by_replica() == want)

    lab.reconcile_until(settled, timeout=30, pause=0.5, what=f"one running copy of every replica (seed {seed})")
    elapsed = time.monotonic() - started
    assert lab.integrity() == "ok"
    for name, j in lab.jobs().items():
        assert j.state is JobState.RUNNING, lab.summary()
    running = sorted(a.id for a in lab.attempts() if a.state is S.RUNNING)
    assert lab.alive_ids() == running, "a process runs on a node for an attempt the store has ended"
    assert elapsed < 120, f"the crash test took {elapsed:.0f}s"


# ---------------------------------------------------------------- 8. the CLI

def test_run_prints_job_node_and_gpus_and_passes_values_to_the_node_literally(make_lab):
    lab = make_lab("cli", count=2)
    res = lab.run_job(job("from-file", "batch"))
    (a,) = lab.attempts("from-file")
    assert "job from-file: running" in res.stdout and f"running on {a.node}" in res.stdout
    assert f"GPUs {a.gpus[0]}" in res.stdout and a.gpus[0].startswith("GPU-")

    pwned = lab.root / "pwned-XYZ"
    script = ('printf "env=%s\\n" "$K"; printf "q=%s\\n" "$Q"; printf "arg=%s\\n" "$1"; '
              'printf "gpus=%s\\n" "$CUDA_VISIBLE_DEVICES"')
    res = lab.cli("run", "--name", "flags", "--gpus", "1", "--class", "batch",
                  "--env", f"K=$(touch {pwned})", "--env", "Q=it's \"quoted\" `touch " + str(pwned) + "`",
                  "--", "sh", "-c", script, "sh", f";touch {pwned}")
    assert res.returncode == 0, res.stderr
    (f,) = lab.attempts("flags")
    assert res.stdout.startswith("job flags: ") and f"on {f.node}" in res.stdout and f"GPUs {f.gpus[0]}" in res.stdout
    lab.reconcile_until(lambda: lab.job("flags").state is JobState.SUCCEEDED, timeout=10, pause=0.3)
    logs = gridctl("logs", "flags", "--stdout", "-f", lab.path)
    assert logs.returncode == 0, logs.stderr
    assert logs.stdout.splitlines() == [f"env=$(touch {pwned})", "q=it's \"quoted\" `touch " + str(pwned) + "`",
                                        f"arg=;touch {pwned}", f"gpus={f.gpus[0]}"]
    # a job file's values travel the same way: work_dir and checkpoint_dir are data, not shell
    lab.run_job(job("ckpt", "training", command='printf "%s\\n" "$GRIDCTL_CHECKPOINT_DIR"; pwd',
                    checkpoint_dir=f"/tmp/$(touch {pwned})", work_dir=f"/nonexistent;touch {pwned}"))
    lab.reconcile_until(lambda: lab.job("ckpt").state is JobState.SUCCEEDED, timeout=10, pause=0.3)
    out = gridctl("logs", "ckpt", "--stdout", "-f", lab.path).stdout.splitlines()
    assert out[0] == f"/tmp/$(touch {pwned})"
    assert not pwned.exists(), "a value reached a shell on the node"


BAD_RUNS = [
    (["--name", "Bad Name", "--", "true"], "--name: invalid name 'Bad Name'"),
    (["--name", "x;touch /tmp/pwned-XYZ", "--", "true"], "--name: invalid name 'x;touch /tmp/pwned-XYZ'"),
    (["--name", "$(reboot)", "--", "true"], "--name: invalid name '$(reboot)'"),
    (["--name", "ok", "--env", "BAD-KEY=1", "--", "true"], "--env: invalid environment variable name 'BAD-KEY'"),
    (["--name", "ok", "--env", "$(touch /tmp/pwned-XYZ)=1", "--", "true"],
     "--env: invalid environment variable name '$(touch /tmp/pwned-XYZ)'"),
    (["--name", "ok", "--env", "GRIDCTL_JOB=x", "--", "true"], "--env: GRIDCTL_JOB is set by gridctl"),
    (["--name", "ok", "--env", "NOVALUE", "--", "true"], "--env 'NOVALUE': expected KEY=VALUE"),
    (["--name", "ok", "--pool", "gpu;reboot", "--", "true"], "pool 'gpu;reboot': no such pool"),
    (["--name", "ok", "--class", "batch", "--replicas", "2", "--", "true"], "only service jobs have replicas"),
]


def test_bad_run_flags_are_one_line_errors_with_exit_2(make_lab):
    lab = make_lab("bad", count=1)
    for args, words in BAD_RUNS:
        res = lab.cli("run", *args)
        assert res.returncode == 2, (args, res.stdout, res.stderr)
        assert words in res.stderr and res.stderr.count("\n") == 1, (args, res.stderr)
    bad = lab.root / "bad.yaml"
    bad.write_text("name: ok\ncommand: 'true'\nenv:\n  'A;B': x\n")
    res = lab.cli("run", str(bad))
    assert res.returncode == 2 and res.stderr.count("\n") == 1, res.stderr
    assert f"{bad}:3 env: " in res.stderr and "invalid environment variable name 'A;B'" in res.stderr
    assert not lab.jobs(), "a rejected job was recorded"


def test_cancel_kills_the_process_and_drain_moves_services_first(make_lab):
    lab = make_lab("dr", count=2)
    d0, d1 = lab.names
    lab.run_job(job("svc", "service"))
    lab.run_job(job("batch", "batch"))
    lab.run_job(job("doomed", "batch"))
    assert where(lab, "svc") == where(lab, "batch") == where(lab, "doomed") == {d0}

    res = lab.cli("cancel", "doomed")
    assert res.returncode == 0 and "job doomed: cancelled - by user" in res.stdout, res.stdout + res.stderr
    (c,) = lab.attempts("doomed")
    assert c.state is S.KILLED and c.reason == "cancelled by user"
    assert "doomed.1" not in lab.alive_ids()

    res = lab.cli("drain", d0)
    assert res.returncode == 0, res.stderr
    assert f"{d0} drained: no live attempts left" in res.stdout, res.stdout
    old, new = lab.attempts("svc")
    assert (old.state, new.state, new.node) == (S.KILLED, S.RUNNING, d1), lab.summary()
    assert old.reason == "drained: replaced by attempt 2"
    # the replacement ran before the old copy was told to stop: on the node, and in the events
    assert lab.attempt_file(new, "pid").stat().st_mtime_ns < lab.attempt_file(old, "stopped").stat().st_mtime_ns
    kinds = [(e["kind"], e["message"].split()[1]) for e in lab.describe("svc")["events"]]
    assert kinds.index(("attempt-running", "svc.2")) < kinds.index(("attempt-ended", "svc.1"))
    # batch: stopped on the draining node and requeued elsewhere, not counted as a failure
    b_old, b_new = lab.attempts("batch")
    assert b_old.state is S.KILLED and f"node {d0} is draining" in b_old.reason
    assert b_new.state is S.RUNNING and b_new.node == d1
    assert lab.job("batch").state is JobState.RUNNING and lab.job("batch").failures == 0
    assert lab.alive_by_replica() == {("svc", 0): 1, ("batch", 0): 1}, lab.summary()
    assert not [p for p in lab.alive() if p.node == d0]
    assert lab.nodes()[d0].cordoned
