"""Metrics end to end: the real CLI on simulated fleets, a real Prometheus scraping `reconcile --loop
--metrics-addr` over a fleet behind a real sshd, the textfile parsed by prometheus_client's parser,
and `--metrics-addr` refused before any pass when it cannot be served."""

from __future__ import annotations

import json
import shutil
import socket
import sqlite3
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from promsamples import key, samples

from fleetsim import free_port
from helpers import GRIDCTL, gridctl, stop_attempts, write_local_fleet

from providers.local import write_node

PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"
WAIT_S = 20.0



def _store(tmp_path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(f"file:{tmp_path / 'state.db'}?mode=ro", uri=True)
    conn.row_factory = sqlite3.Row
    return conn


def test_textfile_reports_the_quarantined_node_and_the_failover(tmp_path, isolated_env):
    path = write_local_fleet(tmp_path, "mt", count=2, gpus=2)
    res = gridctl("run", "-f", path, "--name", "etl", "--class", "batch", "--gpus", "1", "--", "sleep", "300",
                  env=isolated_env)
    assert res.returncode == 0, res.stderr
    try:
        with _store(tmp_path) as conn:
            sick = conn.execute("SELECT node FROM attempts WHERE id = 'etl.1' AND state = 'running'").fetchone()[0]
        well = ({"sim-0", "sim-1"} - {sick}).pop()
        write_node(tmp_path / "nodes" / sick, sick, gpus=2, mode="xid79")
        assert gridctl("reconcile", "-f", path, env=isolated_env).returncode == 0
        out_dir = tmp_path / "textfile"
        out_dir.mkdir()
        res = gridctl("metrics", "-f", path, "--textfile", out_dir / "gridctl.prom", env=isolated_env)
        assert res.returncode == 0 and res.stdout == "" and res.stderr == "", res.stderr
        assert [p.name for p in out_dir.iterdir()] == ["gridctl.prom"]      # the temp file was renamed
        got = samples((out_dir / "gridctl.prom").read_text())
        res = gridctl("metrics", "-f", path, env=isolated_env)
        assert res.returncode == 0, res.stderr
        printed = samples(res.stdout)
        since = key("gridctl_seconds_since_last_pass")
        assert {k: v for k, v in printed.items() if k != since} == {k: v for k, v in got.items() if k != since}
        with _store(tmp_path) as conn:
            fault_at = conn.execute("SELECT MAX(time) FROM observations WHERE node = ? AND health = 'healthy'",
                                    (sick,)).fetchone()[0]
            detected = conn.execute("SELECT MIN(time) FROM events WHERE kind = 'attempt-ended' AND job = 'etl'"
                                    " AND message LIKE 'attempt etl.1 %'").fetchone()[0]
            new_node, started = conn.execute("SELECT node, started_at FROM attempts WHERE id = 'etl.2'").fetchone()
    finally:
        stop_attempts(tmp_path)
    assert new_node == well
    assert got[key("gridctl_node_state", node=sick, pool="sim", state="quarantined")] == 1.0
    assert got[key("gridctl_node_state", node=sick, pool="sim", state="ready")] == 0.0
    assert got[key("gridctl_node_state", node=well, pool="sim", state="ready")] == 1.0
    assert got[key("gridctl_node_findings", node=sick, pool="sim", code="xid", severity="fatal")] == 1.0
    assert got[key("gridctl_node_gpus_seen", node=sick, pool="sim")] == 1.0
    assert got[key("gridctl_node_gpus_expected", node=sick, pool="sim")] == 2.0
    assert got[key("gridctl_attempts_ended_total", **{"class": "batch", "outcome": "node"})] == 1.0
    assert got[key("gridctl_attempts_started_total", **{"class": "batch"})] == 2.0
    assert got[key("gridctl_job_restarts_total", **{"class": "batch"})] == 1.0
    assert got[key("gridctl_jobs", **{"class": "batch", "state": "running"})] == 1.0
    assert got[key("gridctl_last_failover_detection_seconds")] == pytest.approx(detected - fault_at)
    assert got[key("gridctl_last_failover_recovery_seconds")] == pytest.approx(started - fault_at)


def test_metrics_addr_in_use_exits_2_before_any_pass(tmp_path, isolated_env):
    path = write_local_fleet(tmp_path, "busy")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        addr = f"127.0.0.1:{taken.getsockname()[1]}"
        res = gridctl("reconcile", "-f", path, "--loop", "--metrics-addr", addr, env=isolated_env, timeout=30)
    assert (res.returncode, res.stderr) == (2, f"error: --metrics-addr {addr}: address already in use\n")
    assert not (tmp_path / "state.db").exists()          # no pass ran
    res = gridctl("reconcile", "-f", path, "--metrics-addr", "127.0.0.1:9", env=isolated_env)
    assert res.returncode == 2 and res.stderr.startswith("error: --metrics-addr: only with --loop"), res.stderr
    res = gridctl("watch", "-f", path, "--metrics-addr", "localhost", env=isolated_env)
    assert res.returncode == 2 and res.stderr.startswith("error: --metrics-addr localhost: expected HOST:PORT")
    assert not (tmp_path / "state.db").exists()


def test_watch_serves_metrics_while_its_loop_runs(tmp_path, isolated_env):
    path = write_local_fleet(tmp_path, "w", count=2)
    port = free_port()
    proc = subprocess.Popen([*GRIDCTL, "watch", "-f", str(path), "--plain", "--interval", "1s",
                             "--metrics-addr", f"127.0.0.1:{port}"], env=isolated_env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    got: dict = {}
    try:
        deadline = time.monotonic() + WAIT_S
        while time.monotonic() < deadline:
            try:
                got = samples(urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode())
            except OSError:
                got = {}
            if got.get(key("gridctl_node_state", node="sim-1", pool="sim", state="ready")) == 1.0:
                break
            assert proc.poll() is None, proc.stderr.read()
            time.sleep(0.2)
    finally:
        proc.terminate()
        proc.wait(10)
    assert got[key("gridctl_node_state", node="sim-0", pool="sim", state="ready")] == 1.0
    assert got[key("gridctl_passes_total", result="ran")] >= 1.0
    assert got[key("gridctl_probe_duration_seconds_count", node="sim-0")] >= 1.0


def _query(prom: str, expr: str) -> list[dict]:
    url = f"{prom}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    try:
        body = json.loads(urllib.request.urlopen(url, timeout=2).read())
    except OSError:
        return []
    return body["data"]["result"] if body.get("status") == "success" else []


def _wait_for(prom: str, expr: str, procs: list[subprocess.Popen]) -> list[dict]:
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        result = _query(prom, expr)
        if result:
            return result
        for p in procs:
            assert p.poll() is None, f"{p.args[0]} exited {p.returncode}"
        time.sleep(0.25)
    pytest.fail(f"Prometheus never answered {expr} within {WAIT_S:g}s")


@pytest.mark.skipif(not Path(PROMETHEUS).exists(), reason="prometheus is not installed (scripts/test installs it)")
def test_prometheus_scrapes_the_loop_and_sees_the_broken_node_quarantined(ssh_fleet, tmp_path):
    for name in ("prom0", "prom1"):
        ssh_fleet.add_node(name, ssh_fleet.next_ip())
    path = ssh_fleet.write_fleet(tmp_path / "fleet.yaml", nodes=["prom0", "prom1"], health={"interval": "1s"})
    gport, pport = free_port(), free_port()
    (tmp_path / "prometheus.yml").write_text(
        "global: {scrape_interval: 1s, scrape_timeout: 1s, evaluation_interval: 1s}\n"
        f"scrape_configs:\n  - job_name: gridctl\n    static_configs: [{{targets: ['127.0.0.1:{gport}']}}]\n")
    loop = subprocess.Popen([*GRIDCTL, "reconcile", "-f", str(path), "--loop", "-q", "--metrics-addr",
                             f"127.0.0.1:{gport}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    prom = subprocess.Popen([PROMETHEUS, f"--config.file={tmp_path / 'prometheus.yml'}",
                             f"--storage.tsdb.path={tmp_path / 'tsdb'}", f"--web.listen-address=127.0.0.1:{pport}"],
                            stdout=subprocess.DEVNULL, stderr=open(tmp_path / "prometheus.log", "wb"))
    api = f"http://127.0.0.1:{pport}"
    try:
        _wait_for(api, 'gridctl_node_state{node="prom1",state="ready"} == 1', [loop, prom])
        ssh_fleet.set_mode("prom1", "xid79")
        hit = _wait_for(api, 'gridctl_node_state{node="prom1",state="quarantined"} == 1', [loop, prom])
        assert hit[0]["metric"]["pool"] == "gpu" and float(hit[0]["value"][1]) == 1.0
        assert _query(api, 'gridctl_node_state{node="prom0",state="ready"}')[0]["value"][1] == "1"
        assert _query(api, 'gridctl_node_findings{node="prom1",code="xid",severity="fatal"}')[0]["value"][1] == "1"
        assert float(_query(api, "gridctl_pass_duration_seconds_count")[0]["value"][1]) >= 2
        assert float(_query(api, 'gridctl_probe_duration_seconds_count{node="prom1"}')[0]["value"][1]) >= 2
    finally:
        for p in (prom, loop):
            p.terminate()
        for p in (prom, loop):
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
        ssh_fleet.set_mode("prom1", "healthy")
