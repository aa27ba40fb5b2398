"""`gridctl demo`, `watch` (under a pseudo-terminal and piped), `chaos` and `init`, run as a user would.

Guards against: a demo that hangs, crashes or leaves job processes behind; a watch that does not
redraw or does not exit cleanly on Ctrl-C; chaos touching a real node; init writing a spec that
`validate` refuses or overwriting a file.
"""

from __future__ import annotations

import os
import pty
import re
import select
import signal
import subprocess
import time
from pathlib import Path

import pytest

from helpers import GRIDCTL, gridctl


def _env(tmp_path: Path, **extra) -> dict:
    env = dict(os.environ)
    env.update(HOME=str(tmp_path / "home"), XDG_STATE_HOME=str(tmp_path / "state"), **extra)
    (tmp_path / "home").mkdir(exist_ok=True)
    env.pop("GRIDCTL_FLEET", None)
    return env


def _local_fleet(tmp_path: Path, count: int = 2) -> Path:
    path = tmp_path / "fleet.yaml"
    path.write_text(f"""
fleet: sim
state: {tmp_path}/state.db
health: {{interval: 1s, probe_timeout: 3s}}
pools:
  - name: sim
    provider: local
    count: {count}
    dir: {tmp_path}/nodes
    gpu: {{type: H100, count: 4, memory_gb: 80}}
""")
    return path


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def test_demo_recovers_every_affected_job_and_leaves_nothing_running(tmp_path):
    started = time.monotonic()
    res = subprocess.run([*GRIDCTL, "demo", "--duration", "20", "--plain", "--keep"], capture_output=True, text=True,
                         env=_env(tmp_path), timeout=120)
    took = time.monotonic() - started
    assert res.returncode == 0, (res.stdout[-3000:], res.stderr[-2000:], took)
    assert "Traceback" not in res.stderr
    out = res.stdout
    assert "Recovery" in out and "every affected job recovered" in out, out[-3000:]
    rows = [line for line in out.splitlines() if re.match(r"^\s*(xid79|down) on sim-\d", line)]
    assert rows and all("not recovered" not in r for r in rows), rows
    assert {r.split()[0] for r in rows} == {"xid79", "down"}
    assert "injected xid79" in out and "injected down" in out
    root = Path(re.search(r"fleet of 3 simulated nodes in (\S+);", out).group(1))
    try:
        pids = [int(p.read_text()) for p in root.glob("nodes/*/work/attempts/*/pid")]
        assert len(pids) >= 6                  # 4 first attempts + replacements
        assert [p for p in pids if _alive(p)] == []
        assert "fleet kept in" in out
    finally:
        subprocess.run(["rm", "-rf", str(root)])


def test_demo_refuses_an_unknown_fault(tmp_path):
    res = subprocess.run([*GRIDCTL, "demo", "--fault", "bogus"], capture_output=True, text=True, env=_env(tmp_path))
    assert res.returncode == 2
    assert res.stderr.strip().count("\n") == 0 and "unknown fault 'bogus'" in res.stderr


def _read_for(fd: int, seconds: float) -> bytes:
    out = b""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        ready, _, _ = select.select([fd], [], [], 0.2)
        if ready:
            try:
                chunk = os.read(fd, 65536)
            except OSError:
                break
            if not chunk:
                break
            out += chunk
    return out


def test_watch_redraws_under_a_terminal_and_exits_cleanly_on_ctrl_c(tmp_path):
    fleet = _local_fleet(tmp_path)
    master, slave = pty.openpty()
    proc = subprocess.Popen([*GRIDCTL, "watch", "-f", str(fleet)], stdin=slave, stdout=slave, stderr=slave,
                            env=_env(tmp_path, COLUMNS="100", LINES="40", TERM="xterm-256color"),
                            start_new_session=True)
    os.close(slave)
    try:
        screen = _read_for(master, 5.0)
        os.killpg(proc.pid, signal.SIGINT)
        rc = proc.wait(timeout=15)
        screen += _read_for(master, 0.5)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        os.close(master)
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", screen.decode("utf-8", "replace"))
    assert rc in (0, 130), text[-2000:]
    assert "Traceback" not in text
    assert "sim-0" in text and "sim-1" in text and "NODES" in text
    clocks = set(re.findall(r"fleet sim\s+(\d\d:\d\d:\d\d)", text))
    assert len(clocks) >= 3, clocks          # redrawn at least once a second


def test_watch_without_a_terminal_prints_one_line_per_event(tmp_path):
    fleet = _local_fleet(tmp_path)
    proc = subprocess.Popen([*GRIDCTL, "watch", "-f", str(fleet)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=_env(tmp_path), start_new_session=True)
    try:
        time.sleep(4)
        os.killpg(proc.pid, signal.SIGINT)
        out, err = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode in (0, 130), err
    assert "Traceback" not in err
    lines = out.splitlines()
    assert any("node-added" in ln and "node=sim-0" in ln for ln in lines), out
    assert any("provisioning -> ready" in ln for ln in lines), out
    assert all(re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ ", ln) for ln in lines), out


def test_watch_once_and_no_reconcile(tmp_path):
    fleet = _local_fleet(tmp_path)
    env = _env(tmp_path)
    res = subprocess.run([*GRIDCTL, "watch", "-f", str(fleet), "--no-reconcile", "--once"], capture_output=True,
                         text=True, env=env)
    assert res.returncode == 1 and "no state yet" in res.stderr and "Traceback" not in res.stderr
    res = subprocess.run([*GRIDCTL, "watch", "-f", str(fleet), "--once"], capture_output=True, text=True, env=env)
    assert res.returncode == 0, res.stderr
    assert "sim-0" in res.stdout and "ready" in res.stdout and "NODES" in res.stdout


def test_chaos_changes_simulated_nodes_only(tmp_path):
    fleet = _local_fleet(tmp_path)
    env = _env(tmp_path)
    assert gridctl("chaos", "sim-1", "xid79", "-f", fleet, env=env).returncode == 0
    res = gridctl("reconcile", "-f", fleet, env=env)
    assert "sim-1: provisioning -> quarantined: xid 79" in res.stdout, res.stdout
    assert gridctl("chaos", "sim-1", "healthy", "-f", fleet, env=env).returncode == 0
    res = gridctl("chaos", "sim-1", "meltdown", "-f", fleet, env=env)
    assert res.returncode == 2 and "unknown mode 'meltdown'" in res.stderr
    real = tmp_path / "real.yaml"
    real.write_text("fleet: real\npools:\n  - name: onprem\n    provider: ssh\n    nodes:\n"
                    "      - {name: gpu-a, host: gpu-a.example}\n")
    started = time.monotonic()
    res = gridctl("chaos", "gpu-a", "xid79", "-f", real, env=env)
    assert res.returncode == 2 and "only changes simulated" in res.stderr, res.stderr
    assert time.monotonic() - started < 10      # refused before any probe


@pytest.mark.parametrize("provider", ["ssh", "local", "aws", "gcp"])
def test_init_writes_a_valid_spec_and_never_overwrites(tmp_path, provider):
    env = _env(tmp_path)
    path = tmp_path / f"{provider}.yaml"
    res = gridctl("init", "--provider", provider, "-o", path, env=env)
    assert res.returncode == 0, res.stderr
    assert gridctl("validate", "-f", path, env=env).returncode == 0
    before = path.read_text()
    assert "#" in before                       # commented
    res = gridctl("init", "--provider", provider, "-o", path, env=env)
    assert res.returncode == 2 and "--force" in res.stderr
    assert path.read_text() == before
    path.write_text("changed\n")
    assert gridctl("init", "--provider", provider, "-o", path, "--force", env=env).returncode == 0
    assert path.read_text() == before


def test_init_refuses_an_unknown_provider(tmp_path):
    res = gridctl("init", "--provider", "azure", "-o", tmp_path / "x.yaml", env=_env(tmp_path))
    assert res.returncode == 2 and "unknown provider 'azure'" in res.stderr
    assert not (tmp_path / "x.yaml").exists()
