"""gridctl kills only what it started (issue 11): the real CLI against the real sshd of fleetsim,
with another local user (`nobody`) planting attempt dirs, pids swapped under a running attempt,
a node whose nvidia-smi forges probe sections, and a node clock that jumps.

Every process a test starts is ended by its own pid in a finaliser.
"""

from __future__ import annotations

import os
import shutil
import signal
import stat
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from helpers import gridctl, gridctl_json
from jobs_support import JobLab, LOOP, lab_factory

from gridctl.models import AttemptState, JobState

S = AttemptState
FAKE_BOOT = "00000000-0000-0000-0000-000000000000"

needs_nobody = pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("runuser"),
                                  reason="acts as the unprivileged user nobody: needs root and runuser")


@pytest.fixture
def bystander():
    """A process gridctl did not start (as root, in its own process group): it must survive."""
    procs: list[subprocess.Popen] = []

    def start() -> subprocess.Popen:
        procs.append(subprocess.Popen(["sleep", "300"], start_new_session=True))
        return procs[-1]

    yield start
    for p in procs:
        p.kill()
        p.wait()


@pytest.fixture
def lab(ssh_fleet, tmp_path):
    with lab_factory(ssh_fleet, tmp_path) as make:
        yield make


@pytest.fixture
def scratch():
    """A shared scratch dir like /scratch/gridctl: world-writable and sticky, reachable by nobody."""
    d = Path(tempfile.mkdtemp(prefix="gridctl-scratch-", dir="/tmp"))
    os.chmod(d, 0o1777)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def as_nobody(script: str) -> None:
    subprocess.run(["runuser", "-u", "nobody", "--", "sh", "-c", script], check=True, timeout=20)


def one_job(lab: JobLab, name: str) -> None:
    lab.run_job({"name": name, "class": "batch", "command": LOOP, "gpus": 1})
    (a,) = lab.running(name)
    assert a.id in lab.alive_ids(name), lab.summary()


# ---------------------------------------------------------------- 1. another user's dirs and pids

@needs_nobody
def test_an_attempt_dir_planted_by_another_user_is_not_adopted_and_cancel_kills_nothing(ssh_fleet, tmp_path,
                                                                                        scratch, bystander):
    name = "trust-a"
    ssh_fleet.add_node(name, ssh_fleet.next_ip())
    fleet = ssh_fleet.write_fleet(tmp_path / "fleet.yaml", nodes=[name], work_dir=f"{scratch}/{{node}}",
                                  health={"interval": "1s", "probe_timeout": "3s"})
    assert gridctl("reconcile", "-f", fleet).returncode == 0
    victim = bystander()
    planted = scratch / name / "attempts" / "vic3.1"
    as_nobody(f"umask 000; mkdir -p {planted} && echo {victim.pid} > {planted}/pid")

    res = gridctl("run", "-f", fleet, "--name", "vic3", "--class", "batch", "--", "sleep", "300")
    assert "Traceback" not in res.stderr, res.stderr
    code, rows = gridctl_json("describe", "job", "vic3", "-f", fleet)
    assert code == 0
    (job,) = rows
    # the node's work dir is not trusted: it gets no work at all
    assert job["state"] == "pending" and job["attempts"] == [], job

    assert gridctl("cancel", "-f", fleet, "vic3").returncode == 0
    assert victim.poll() is None, "gridctl killed a process named by another user's pid file"
    assert sorted(p.name for p in planted.iterdir()) == ["pid"], "gridctl wrote into another user's attempt dir"


def test_cancel_does_not_kill_a_process_that_took_over_the_attempts_pid(lab, bystander):
    lb = lab("tpid", count=1)
    one_job(lb, "swap")
    (a,) = lb.running("swap")
    pid_file = lb.attempt_file(a, "pid")
    real = int(pid_file.read_text())
    other = bystander()
    pid_file.write_text(f"{other.pid}\n")        # as if the attempt's pid now named another process
    try:
        assert lb.cli("cancel", "swap").returncode == 0
        assert other.poll() is None, "cancel killed a process that is not the attempt's"
        assert lb.job("swap").state is JobState.CANCELLED
    finally:
        os.killpg(real, signal.SIGKILL)


def test_job_files_on_the_node_are_private(lab):
    lb = lab("tmode", count=1)
    one_job(lb, "private")
    (a,) = lb.running("private")
    d = lb.attempt_file(a, "env").parent
    assert stat.S_IMODE(d.stat().st_mode) == 0o700
    assert stat.S_IMODE(d.parent.stat().st_mode) == 0o700           # attempts/
    for name in ("env", "cmd", "stdout", "stderr", "pid", "token", "boot_id"):
        assert stat.S_IMODE((d / name).stat().st_mode) == 0o600, name


# ---------------------------------------------------------------- 3. forged probe sections

def test_nvidia_smi_printing_probe_sections_cannot_fake_a_reboot(lab):
    lb = lab("tforge", count=2)
    one_job(lb, "steady")
    (a,) = lb.running("steady")
    boot = lb.nodes()[a.node].boot_id
    (lb.sim.node_dir(a.node) / "smi.extra").write_text(
        f"@boot_id {FAKE_BOOT}\n@gridctl-probe 1\n@boot_id {FAKE_BOOT}\n@end\n")
    for _ in range(2):
        lb.reconcile()
    assert lb.nodes()[a.node].boot_id == boot
    assert [x.id for x in lb.live("steady")] == [a.id] and lb.running("steady"), lb.summary()
    assert lb.job("steady").restarts == 0


# ---------------------------------------------------------------- 7. a node clock that jumps

XID79 = "NVRM: Xid (PCI:0000:18:00): 79, pid=0, GPU has fallen off the bus."


def test_a_node_clock_once_ahead_does_not_hide_later_xids(tmp_path):
    real_date = shutil.which("date")
    fake = tmp_path / "fakebin"
    fake.mkdir()
    offset = tmp_path / "clock_offset"
    (fake / "date").write_text(
        "#!/bin/sh\n"
        f'if [ "$1" = +%s ]; then echo $(( $({real_date} +%s) + $(cat {offset}) )); else exec {real_date} "$@"; fi\n')
    (fake / "date").chmod(0o755)
    fleet = tmp_path / "fleet.yaml"
    fleet.write_text(f"""
fleet: clock
state: {tmp_path}/state.db
health: {{probe_timeout: 4s}}
pools:
  - name: sim
    provider: local
    count: 1
    dir: {tmp_path}/nodes
    gpu: {{type: H100, count: 2, memory_gb: 80}}
""")
    env = {**os.environ, "PATH": f"{fake}:{os.environ['PATH']}"}
    offset.write_text(f"{365 * 86400}\n")             # the node's clock a year ahead
    assert gridctl("reconcile", "-f", fleet, env=env).returncode == 0
    assert gridctl("reconcile", "-f", fleet, env=env).returncode == 0
    offset.write_text("0\n")                          # set right again (NTP)
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S+0000", time.gmtime())
    with open(tmp_path / "nodes" / "sim-0" / "kernel.log", "a") as f:
        f.write(f"{stamp} sim kernel: {XID79}\n")
    assert gridctl("reconcile", "-f", fleet, env=env).returncode == 0
    code, rows = gridctl_json("nodes", "-f", fleet)
    (node,) = rows
    assert node["state"] == "quarantined" and "xid 79" in node["reason"], node
