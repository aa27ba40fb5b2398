"""One slow probe kills nothing; a confirmed hang does (DESIGN section 3, "a hang is confirmed,
never assumed"). Real sshd, the fleetsim nodes, and `gridctl reconcile` passes through the real CLI,
while a `training` and a `service` job run on the node that turns slow."""

from __future__ import annotations

import pytest
import yaml

from helpers import gridctl, gridctl_json
from jobs_support import FAST_RECOVERY, JobLab, LOOP, lab_factory

from gridctl.models import AttemptState, JobState, NodeState
from gridctl.probe import ProbeBudget
from providers.local import slow_smi_once

S = AttemptState
# generous, so that on a loaded test machine only the injected slowness overruns a budget
PROBE_TIMEOUT_S = 10
SMI_S = ProbeBudget(PROBE_TIMEOUT_S).smi_s            # what the node's `timeout` gives nvidia-smi
HEALTH = {"probe_timeout": f"{PROBE_TIMEOUT_S}s", "unhealthy_after": 2, "recover_after": 3}
# with 3s, nvidia-smi gets 1s and its KILL comes 2s later: a call that ignores TERM always
# outlasts the client's deadline, however fast the rest of the probe is
SHORT_PROBE_TIMEOUT_S = 3


@pytest.fixture
def make_lab(ssh_fleet, tmp_path):
    with lab_factory(ssh_fleet, tmp_path, count=2, health=HEALTH) as make:
        yield make


def start_jobs(lab: JobLab) -> dict[str, str]:
    """A training job and a service replica, both on the first node (bin-packing); job -> attempt id."""
    lab.run_job({"name": "train", "class": "training", "command": LOOP, "gpus": 2,
                 "checkpoint_dir": str(lab.root / "ckpt"), "recovery": dict(FAST_RECOVERY)})
    lab.run_job({"name": "svc", "class": "service", "command": LOOP, "gpus": 1, "recovery": dict(FAST_RECOVERY)})
    running = {a.job: a for a in lab.attempts() if a.state is S.RUNNING}
    assert {j: a.node for j, a in running.items()} == {"train": lab.names[0], "svc": lab.names[0]}, lab.summary()
    return {j: a.id for j, a in running.items()}


def cli_pass(lab: JobLab, fleet=None) -> None:
    res = lab.cli("reconcile") if fleet is None else gridctl("reconcile", "-f", fleet)
    assert res.returncode == 0, res.stdout + res.stderr


def short_probe_fleet(lab: JobLab):
    """The lab's fleet file (same nodes, same store) with a 3s probe_timeout."""
    spec = yaml.safe_load(lab.path.read_text())
    spec["health"]["probe_timeout"] = f"{SHORT_PROBE_TIMEOUT_S}s"
    path = lab.path.with_name("fleet-short-probe.yaml")
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def events(lab: JobLab) -> list[dict]:
    code, rows = gridctl_json("events", "-f", lab.path)
    assert code == 0
    return rows


def hang_for_one_probe(lab: JobLab, node: str) -> None:
    lab.sim.set_mode(node, "hang")
    cli_pass(lab)
    lab.sim.set_mode(node, "healthy")


def smi_slow_once(lab: JobLab, node: str) -> None:
    slow_smi_once(lab.sim.node_dir(node), 1.5 * SMI_S)
    cli_pass(lab)


def probe_past_its_deadline_once(lab: JobLab, node: str) -> None:
    # nvidia-smi ignores TERM, so only `timeout -k 2`'s KILL ends it: the probe cannot finish in time
    slow_smi_once(lab.sim.node_dir(node), 60, ignore_term=True)
    cli_pass(lab, short_probe_fleet(lab))


@pytest.mark.parametrize("fault, reason", [
    (hang_for_one_probe, f"nvidia-smi slow: no answer in {SMI_S}s (1 of 2)"),
    (smi_slow_once, f"nvidia-smi slow: no answer in {SMI_S}s (1 of 2)"),
    (probe_past_its_deadline_once, f"probe slow: no answer in {SHORT_PROBE_TIMEOUT_S}s while SSH answered (1 of 2)"),
], ids=["hang-for-one-probe", "smi-slow-once", "probe-past-deadline-once"])
def test_one_slow_probe_kills_nothing_and_the_node_returns_to_ready_by_itself(make_lab, fault, reason):
    lab = make_lab("sl")
    n0 = lab.names[0]
    first = start_jobs(lab)
    pids = {p.attempt: p.pid for p in lab.alive()}
    assert sorted(pids) == sorted(first.values())

    fault(lab, n0)
    node = lab.nodes()[n0]
    assert node.state is NodeState.SUSPECT and node.reason == reason, lab.summary()
    assert {a.id: a.state for a in lab.attempts()} == {i: S.RUNNING for i in first.values()}, lab.summary()

    for _ in range(3):                                  # recover_after healthy probes, no uncordon
        cli_pass(lab)
    node = lab.nodes()[n0]
    assert node.state is NodeState.READY and node.reason == "3 good probes in a row", lab.summary()
    # the same attempts, running, in the same processes: nothing killed, nothing requeued
    assert {a.id: (a.node, a.state) for a in lab.attempts()} == {i: (n0, S.RUNNING) for i in first.values()}
    assert {p.attempt: p.pid for p in lab.alive()} == pids
    for name in ("train", "svc"):
        job = lab.job(name)
        assert job.state is JobState.RUNNING and job.restarts == 0 and job.failures == 0, lab.summary()
    evs = events(lab)                                   # oldest first
    fault_at = next(i for i, e in enumerate(evs) if e["node"] == n0 and e["message"].startswith("ready -> suspect"))
    assert [e["message"] for e in evs[fault_at:] if e["job"] is not None] == []
    assert [e["message"].split(":")[0] for e in evs[fault_at:] if e["kind"] == "node-state"] == \
        ["ready -> suspect", "suspect -> ready"]


def test_hang_held_for_three_probes_quarantines_moves_the_jobs_and_clears_by_itself(make_lab):
    lab = make_lab("hq")
    n0, n1 = lab.names
    first = start_jobs(lab)
    lab.sim.set_mode(n0, "hang")

    cli_pass(lab)
    assert lab.nodes()[n0].state is NodeState.SUSPECT
    assert {a.id: a.state for a in lab.attempts()} == {i: S.RUNNING for i in first.values()}, lab.summary()

    cli_pass(lab)                                       # the second hang in a row confirms it
    node = lab.nodes()[n0]
    assert node.state is NodeState.QUARANTINED and not node.needs_release
    assert node.reason == f"nvidia-smi hung: no answer in {SMI_S}s (2 failed probes in a row)"
    attempts = {a.id: a for a in lab.attempts()}
    for old in first.values():
        assert attempts[old].state is S.LOST and "quarantined: nvidia-smi hung" in attempts[old].reason
    running = {a.job: a for a in attempts.values() if a.state is S.RUNNING}
    assert {j: (a.node, a.n) for j, a in running.items()} == {"train": (n1, 2), "svc": (n1, 2)}, lab.summary()
    assert lab.job("train").restarts == 1
    assert not [p for p in lab.alive() if p.node == n0], lab.summary()

    cli_pass(lab)                                       # third hang: nothing more to move
    assert lab.nodes()[n0].state is NodeState.QUARANTINED
    assert len(lab.attempts()) == 4

    lab.sim.set_mode(n0, "healthy")
    for _ in range(3):
        cli_pass(lab)
    node = lab.nodes()[n0]
    assert node.state is NodeState.READY and node.reason == "3 good probes in a row", lab.summary()
    assert {a.job: a.node for a in lab.attempts() if a.state is S.RUNNING} == {"train": n1, "svc": n1}
