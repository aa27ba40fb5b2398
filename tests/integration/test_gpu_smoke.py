"""scripts/gpu-smoke and scripts/gpu-smoke-agent, run as a lent GPU machine runs them but against a
simulated node (`--simulated`: providers/local's fake nvidia-smi and NVML), so the smoke test
cannot rot between loans of a real GPU: every import, probe, launch, stop, kill list and the
agent's NVML path is exercised here for real."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
STAGE_ONE = {"probe_idle", "launch_smoke.1", "job_holds_gpu", "launch_smoke.2", "attempt_alive", "compute_app_listed",
             "stop", "fenced", "stopped_not_reported", "reaped", "processes_gone", "compute_app_released"}
AGENT = {"nvml_binding", "hello", "nvml_probe", "sh_probe", "same_gpus"}


def _run(script: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "scripts" / script), *args], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)})


def _failed(report: dict) -> list[dict]:
    return [c for c in report["checks"] if not c["ok"]]


def test_gpu_smoke_on_a_simulated_node_passes_every_check_and_keeps_the_raw_outputs(tmp_path):
    res = _run("gpu-smoke", "--simulated", str(tmp_path))
    assert res.returncode == 0, res.stdout + res.stderr
    report = json.loads((tmp_path / "report.json").read_text())
    assert {c["name"] for c in report["checks"]} == STAGE_ONE | {"agent_stage"} | {"agent_" + n for n in AGENT}
    assert _failed(report) == [] and report["ok"] is True
    assert report["job_mode"] == "sim" and report["stop"] == "terminated"
    uuid = report["gpus"][0][1]
    assert [uuid, int(report["job_said"]["pid"])] in report["compute_apps_running"]
    assert report["compute_apps_after"] == []
    for name in ("probe_idle.out", "probe_running.out", "probe_after.out", "launch_smoke.1.out", "stop.out",
                 "compute_apps.csv", "agent/agent.out", "agent/sh.out", "agent/report.json"):
        assert (tmp_path / name).stat().st_size > 0, name
    assert (tmp_path / "smoke.1.stdout").read_text().startswith(f"visible={uuid} count=1 ")
    assert f"{report['job_said']['pid']}" in (tmp_path / "compute_apps.csv").read_text()
    assert "gpu-smoke: 18 checks, 0 failed" in res.stdout


def test_gpu_smoke_exits_1_naming_the_failed_checks_when_the_driver_is_gone(tmp_path):
    res = _run("gpu-smoke", "--simulated", "--sim-mode", "driver", str(tmp_path))
    assert res.returncode == 1, res.stdout + res.stderr
    report = json.loads((tmp_path / "report.json").read_text())
    assert [c["name"] for c in _failed(report)] == ["probe_idle", "agent_nvml_probe", "agent_sh_probe"]
    assert "FAIL probe_idle: complete=True nvidia-smi rc=9 gpus=0" in res.stdout
    assert "3 failed: probe_idle, agent_nvml_probe, agent_sh_probe" in res.stdout
    assert not (tmp_path / "launch_smoke.1.out").exists()    # nothing launched on a machine without a GPU


def test_gpu_smoke_agent_alone_on_a_simulated_node_reads_the_gpus_through_nvml(tmp_path):
    res = _run("gpu-smoke-agent", "--simulated", str(tmp_path))
    assert res.returncode == 0, res.stdout + res.stderr
    report = json.loads((tmp_path / "report.json").read_text())
    assert {c["name"] for c in report["checks"]} == AGENT and _failed(report) == []
    assert report["nvml_error"] is None and report["agent_gpus"] == report["sh_gpus"] == 1
    assert "nvml" in report["hello"]["caps"]
    assert (tmp_path / "agent.out").read_text().count("\n") > 3 and (tmp_path / "sh.out").stat().st_size > 0
