"""The world changes under a running pass, over a real sshd: a launch whose answer is lost, a node
that reboots while attempts run, a cordon committed between a pass's read and its write.

Guards against: a lost launch answer read as "the launch failed" (the process that did start is then
fenced and the job started again); a reboot judged as processes that vanished instead of as lost
attempts to requeue; a pass writing back the node row it read before `gridctl cordon` committed.

These tests use their own sshd, whose nodes each get their own environment (a `Match LocalAddress`
block per node address): their own boot id file, and their own PATH with test doubles of node tools
in front of the simulated ones.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from fleetsim import SshFleet
from helpers import GRIDCTL, by_name, gridctl_json
from jobs_support import FAST_RECOVERY, LOOP, lab_factory, messages

from gridctl.models import AttemptState, JobState
from providers.local import BIN_DIR, reboot

S = AttemptState


# ---------------------------------------------------------------- a fleet whose nodes have their own env

class EnvFleet(SshFleet):
    """SshFleet whose nodes can be given their own environment (sshd re-reads its config on SIGHUP)."""

    def __init__(self, root: Path):
        super().__init__(root)
        self.node_env: dict[str, dict[str, str]] = {}

    def set_env(self, name: str, **env: str) -> None:
        ip = self.nodes[name]["host"]
        self.node_env.setdefault(ip, {}).update(env)
        base = (self.root / "sshd_config").read_text().split("\nMatch ", 1)[0]
        blocks = []
        for addr, extra in sorted(self.node_env.items()):
            # a Match block's SetEnv replaces the global one: repeat what every node gets
            values = {"SHLVL": "1", "GRIDCTL_SIM_ROOT": str(self.sim_root),
                      "PATH": f"{BIN_DIR}:/usr/local/bin:/usr/bin:/bin", **extra}
            blocks.append(f"Match LocalAddress {addr}\n  SetEnv " + " ".join(f"{k}={v}" for k, v in values.items()))
        (self.root / "sshd_config").write_text(base.rstrip("\n") + "\n" + "\n".join(blocks) + "\n")
        pid_file = self.root / "sshd.pid"
        pid_file.unlink()
        os.kill(self._proc.pid, signal.SIGHUP)
        # sshd writes its pid file again once it listens with the new config
        deadline = time.monotonic() + 10
        while not pid_file.exists():
            assert self._proc.poll() is None, (self.root / "sshd.log").read_text()
            assert time.monotonic() < deadline, "sshd did not come back after SIGHUP"
            time.sleep(0.05)


@pytest.fixture(scope="module")
def env_fleet(tmp_path_factory):
    fleet = EnvFleet(tmp_path_factory.mktemp("envfleet"))
    fleet.start()
    yield fleet
    fleet.stop()


@pytest.fixture
def make_lab(env_fleet, tmp_path):
    with lab_factory(env_fleet, tmp_path, reconcile=False) as make:
        yield make


def job(name: str, cls: str, **extra) -> dict:
    return {"name": name, "class": cls, "command": LOOP, "gpus": 1, "recovery": dict(FAST_RECOVERY), **extra}


# ---------------------------------------------------------------- a launch whose answer is lost

CUTTING_CAT = r"""#!/bin/sh
# cat, except once: when the launch script reads back the pid of the attempt named in
# $GRIDCTL_TEST_CUT, the SSH session dies first (the process has started; its answer is lost)
T=$GRIDCTL_TEST_CUT
if [ -n "$T" ] && [ -f "$T" ]; then
  case "$1" in
    */attempts/"$(/bin/cat "$T")"/pid)
      mv "$T" "$T.done" 2>/dev/null || exec /bin/cat "$@"
      p=$PPID
      while [ "${p:-1}" -gt 1 ]; do
        if [ "$(/bin/cat /proc/$p/comm 2>/dev/null)" = sshd ]; then kill -9 "$p"; break; fi
        p=$(ps -o ppid= -p "$p" | tr -d ' ')
      done
      exit 1 ;;
  esac
fi
exec /bin/cat "$@"
"""


def test_a_launch_whose_answer_is_lost_is_found_running_by_the_next_probe(make_lab, tmp_path):
    lab = make_lab("cut", count=1)
    (n0,) = lab.names
    tools = tmp_path / "tools"
    tools.mkdir()
    (tools / "cat").write_text(CUTTING_CAT)
    (tools / "cat").chmod(0o755)
    cut = tmp_path / "cut-launch"
    lab.sim.set_env(n0, PATH=f"{tools}:{BIN_DIR}:/usr/local/bin:/usr/bin:/bin", GRIDCTL_TEST_CUT=str(cut))
    lab.reconcile()                                   # provisioning -> ready
    cut.write_text("lost.1")

    lab.run_job(job("lost", "batch"))                 # its pass launches lost.1; the answer never comes

    assert Path(f"{cut}.done").exists() and not cut.exists(), "the launch did not reach the cut"
    (a,) = lab.attempts("lost")
    assert a.state is S.STARTING, lab.summary()
    assert a.reason.startswith("launch answer lost ("), a.reason
    assert a.reason.endswith("); the next probe decides"), a.reason
    assert [p.attempt for p in lab.alive()] == ["lost.1"], "the process did start on the node"
    unconfirmed = messages(lab.describe("lost"), "attempt-unconfirmed")
    assert len(unconfirmed) == 1 and unconfirmed[0].startswith(f"attempt lost.1 on {n0}: launch answer lost ("), \
        unconfirmed

    lab.reconcile()                                   # the next probe finds the process

    (a,) = lab.attempts("lost")
    assert (a.id, a.state, a.reason) == ("lost.1", S.RUNNING, "running"), lab.summary()
    assert a.pid == lab.alive()[0].pid
    assert lab.job("lost").state is JobState.RUNNING
    assert [p.attempt for p in lab.alive()] == ["lost.1"], "one copy, the one that started"
    lab.reconcile()
    assert [(a.id, a.state) for a in lab.attempts("lost")] == [("lost.1", S.RUNNING)], lab.summary()


# ---------------------------------------------------------------- a reboot under running attempts

def test_a_node_that_reboots_under_running_attempts_loses_them_and_they_are_requeued(make_lab):
    lab = make_lab("boot", count=2, connect_timeout="5s")   # nothing here is silent: no need to be quick
    n0, n1 = lab.names
    for name in lab.names:
        lab.sim.set_env(name, GRIDCTL_BOOT_ID_FILE=str(lab.sim.node_dir(name) / "boot_id"))
    lab.reconcile()
    lab.run_job(job("etl", "batch"))
    lab.run_job(job("web", "service"))
    assert {a.id: a.node for a in lab.attempts()} == {"etl.1": n0, "web.1": n0}, lab.summary()
    old_boot = (lab.sim.node_dir(n0) / "boot_id").read_text().strip()
    assert lab.nodes()[n0].boot_id == old_boot, "the node reports its own simulated boot id"

    # the reboot: every process on the node is gone, and the kernel has a new boot id
    for p in lab.alive():
        if p.node == n0:
            os.killpg(p.pid, signal.SIGKILL)
    reboot(lab.sim.node_dir(n0))
    new_boot = (lab.sim.node_dir(n0) / "boot_id").read_text().strip()
    res = lab.cli("reconcile")
    assert res.returncode == 0, res.stdout + res.stderr

    node = lab.nodes()[n0]
    assert node.boot_id == new_boot and node.state.value == "ready", lab.summary()
    attempts = {a.id: a for a in lab.attempts()}
    for old in ("etl.1", "web.1"):
        assert (attempts[old].state, attempts[old].reason) == (S.LOST, f"node {n0} rebooted"), lab.summary()
    # requeued at once, away from the node where they were lost
    assert {i: (a.state, a.node) for i, a in attempts.items() if i not in ("etl.1", "web.1")} == {
        "etl.2": (S.RUNNING, n1), "web.2": (S.RUNNING, n1)}, lab.summary()
    jobs = lab.jobs()
    assert (jobs["etl"].state, jobs["etl"].restarts) == (JobState.RUNNING, 1)
    assert jobs["web"].state is JobState.RUNNING
    assert sorted(p.attempt for p in lab.alive()) == ["etl.2", "web.2"], lab.summary()
    code, events = gridctl_json("events", "-f", lab.path)
    assert code == 0
    rebooted = [e["message"] for e in events if e["kind"] == "node-rebooted"]
    assert len(rebooted) == 1 and f"{old_boot[:8]} -> {new_boot[:8]}" in rebooted[0], rebooted
    ended = [e["message"] for e in events if e["kind"] == "attempt-ended"]
    assert any(m.startswith(f"attempt etl.1 on {n0} lost: node {n0} rebooted; ") for m in ended), ended
    assert any(m.startswith(f"attempt web.1 on {n0} lost: node {n0} rebooted; ") for m in ended), ended
    assert not [m for m in ended if "vanished" in m], ended


# ---------------------------------------------------------------- a cordon committed while a pass runs

HOLDING_SMI = r"""#!/bin/sh
# nvidia-smi that, while the file $GRIDCTL_TEST_HOLD exists, says it was reached and waits for it to go
H=$GRIDCTL_TEST_HOLD
if [ -n "$H" ] && [ -f "$H" ]; then
  : >"$H.reached"
  i=0; while [ -f "$H" ] && [ $i -lt 200 ]; do sleep 0.05; i=$((i + 1)); done
fi
exec "__BIN__/nvidia-smi" "$@"
"""


def test_a_cordon_committed_while_a_pass_probes_is_not_undone_by_that_pass(make_lab, tmp_path):
    lab = make_lab("cord", count=1, health={"probe_timeout": "30s"}, connect_timeout="5s")
    (n0,) = lab.names
    tools = tmp_path / "tools"
    tools.mkdir()
    (tools / "nvidia-smi").write_text(HOLDING_SMI.replace("__BIN__", str(BIN_DIR)))
    (tools / "nvidia-smi").chmod(0o755)
    hold = tmp_path / "hold"
    lab.sim.set_env(n0, PATH=f"{tools}:{BIN_DIR}:/usr/local/bin:/usr/bin:/bin", GRIDCTL_TEST_HOLD=str(hold))
    lab.reconcile()
    before = lab.nodes()[n0]
    assert before.state.value == "ready" and not before.cordoned, lab.summary()

    hold.touch()
    reached = Path(f"{hold}.reached")
    proc = subprocess.Popen([*GRIDCTL, "reconcile", "-f", str(lab.path)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not reached.exists():      # the pass has read the store and is probing the node
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate(timeout=5)
            time.sleep(0.05)
        res = lab.cli("cordon", n0, "--reason", "bios update")
        assert res.returncode == 0, res.stdout + res.stderr
        assert lab.nodes()[n0].cordoned
    finally:
        hold.unlink(missing_ok=True)     # the probe answers; the pass writes the row it computed
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, out + err

    node = lab.nodes()[n0]
    assert node.last_seen > before.last_seen, "the pass wrote the node's row"
    assert (node.cordoned, node.cordon_reason) == (True, "bios update"), node
    code, rows = gridctl_json("nodes", "-f", lab.path)
    assert code == 0
    row = by_name(rows)[n0]
    assert (row["state"], row["cordoned"], row["cordon_reason"]) == ("ready", True, "bios update"), row
