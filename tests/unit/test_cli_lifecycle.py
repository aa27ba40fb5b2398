"""`run --dry-run`, the submit-time refusal, `delete`, `restart` and `prune` through the real console
script on a real store of a simulated local fleet.

Guards against: a dry run or a refused job writing anything, a refusal that is a traceback or not
exit 2, a deleted job's name staying taken, a restart that leaves the old copy running, and prune
deleting what a node's kill list still needs.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gridctl.store import connect, queries


def stop_attempts(root: Path) -> None:
    """End the processes this fleet's attempts started, by the pids in their attempt dirs."""
    for pid_file in root.glob("**/attempts/*/pid"):
        try:
            os.killpg(int(pid_file.read_text()), signal.SIGKILL)
        except (ProcessLookupError, ValueError, PermissionError):
            pass

GRIDCTL = [sys.executable, "-c", "from gridctl.cli import main; main()"]


def gridctl(*args) -> subprocess.CompletedProcess:
    return subprocess.run([*GRIDCTL, *map(str, args)], capture_output=True, text=True, timeout=120)


@pytest.fixture
def fleet(tmp_path) -> Path:
    """Two simulated nodes of 2 H100 each, reconciled once (ready)."""
    path = tmp_path / "fleet.yaml"
    path.write_text(f"fleet: life\nstate: {tmp_path / 'state.db'}\nhealth: {{probe_timeout: 10s}}\n"
                    f"pools:\n  - name: sim\n    provider: local\n    count: 2\n    dir: {tmp_path / 'nodes'}\n"
                    "    gpu: {type: H100, count: 2, memory_gb: 80}\n")
    done = gridctl("reconcile", "-f", path)
    assert done.returncode == 0, done.stderr
    return path


def dump(db: Path) -> list[str]:
    raw = sqlite3.connect(db)
    try:
        return list(raw.iterdump())
    finally:
        raw.close()


def one_error_line(res: subprocess.CompletedProcess, code: int) -> str:
    assert res.returncode == code, (res.stdout, res.stderr)
    assert "Traceback" not in res.stderr
    (line,) = res.stderr.strip().splitlines()
    return line


def test_dry_run_says_where_each_replica_would_go_and_records_nothing(fleet, tmp_path):
    before = dump(tmp_path / "state.db")
    res = gridctl("run", "-f", fleet, "--dry-run", "--json", "--name", "web", "--class", "service", "--replicas", "3",
                  "--gpus", "2", "--", "sleep", "60")
    assert res.returncode == 0, res.stderr
    (out,) = json.loads(res.stdout)
    assert out["dry_run"] is True
    assert [(r["node"], r["gpus"]) for r in out["replicas"]] == [("sim-0", [0, 1]), ("sim-1", [0, 1]), (None, [])]
    assert out["replicas"][2]["reason"] == "no node fits 2xGPU: sim-0, sim-1 have 0 free GPUs"
    assert dump(tmp_path / "state.db") == before


def test_dry_run_before_any_state_creates_no_store(tmp_path):
    path = tmp_path / "fleet.yaml"
    path.write_text(f"fleet: life\nstate: {tmp_path / 'state.db'}\npools:\n  - name: sim\n    provider: local\n"
                    f"    count: 1\n    dir: {tmp_path / 'nodes'}\n    gpu: {{type: H100, count: 2}}\n")
    res = gridctl("run", "-f", path, "--dry-run", "--name", "web", "--", "sleep", "60")
    assert res.returncode == 0, res.stderr
    assert "pending: no node fits 1xGPU: the fleet has no nodes yet" in " ".join(res.stdout.split())
    assert not (tmp_path / "state.db").exists()


@pytest.mark.parametrize("flags, why", [
    (("--gpus", "4"), "error: job big: no pool of this fleet could ever fit 4xGPU (pool sim: 2xH100 per instance, "
                      "4 GPUs asked)"),
    (("--gpu-type", "A100"), "error: job big: no pool of this fleet could ever fit 1xA100 (pool sim: 2xH100 per "
                             "instance, A100 asked)"),
])
def test_run_refuses_a_job_no_pool_could_ever_fit_and_records_nothing(fleet, tmp_path, flags, why):
    before = dump(tmp_path / "state.db")
    for dry in ((), ("--dry-run",)):
        assert one_error_line(gridctl("run", "-f", fleet, *dry, "--name", "big", *flags, "--", "sleep", "1"), 2) == why
    assert dump(tmp_path / "state.db") == before


def pid_alive(tmp_path: Path, attempt_id: str) -> bool:
    """A process of the attempt's group runs (zombies, which nobody here may reap, do not count)."""
    (pid_file,) = tmp_path.glob(f"nodes/*/**/attempts/{attempt_id}/pid")
    group = pid_file.read_text().strip()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[2] == group and fields[0] != "Z":
            return True
    return False


def until(check, what: str, tries: int = 60):
    for _ in range(tries):
        got = check()
        if got:
            return got
        time.sleep(0.5)
    raise AssertionError(f"never: {what}")


def job_row(fleet: Path, name: str) -> dict | None:
    rows = json.loads(gridctl("jobs", "-f", fleet, "--json").stdout)
    return next((r for r in rows if r["name"] == name), None)


@pytest.fixture
def cleanup(tmp_path):
    yield
    stop_attempts(tmp_path)


def test_delete_refuses_a_running_job_force_cancels_and_deletes_and_the_name_is_free_again(fleet, tmp_path, cleanup):
    assert gridctl("run", "-f", fleet, "--name", "web", "--", "sleep", "300").returncode == 0
    assert pid_alive(tmp_path, "web.1")
    line = one_error_line(gridctl("delete", "web", "-f", fleet), 1)
    assert line == ("error: job web is running: only an ended job is deleted (cancel it first, or --force); "
                    "nothing deleted")
    res = gridctl("delete", "web", "--force", "-f", fleet)
    assert res.returncode == 0, res.stderr
    assert " ".join(res.stdout.split()) == \
        "job web cancelled and deleted: 1 attempt(s) and its events removed; the name is free"
    assert not pid_alive(tmp_path, "web.1")          # the cancel's pass stopped it; the next confirmed it
    assert job_row(fleet, "web") is None
    assert gridctl("run", "-f", fleet, "--name", "web", "--", "sleep", "300").returncode == 0
    assert [a["n"] for a in job_row(fleet, "web")["attempts"]] == [2]      # never web.1 again
    conn = connect(tmp_path / "state.db", create=False)
    try:
        assert [e.kind for e in queries.job_events(conn, "web")] == ["job-created", "attempt-starting",
                                                                     "job-state", "attempt-running"]
    finally:
        conn.close()


def test_restart_replaces_the_running_copy_with_a_new_attempt(fleet, tmp_path, cleanup):
    assert gridctl("run", "-f", fleet, "--name", "web", "--", "sleep", "300").returncode == 0
    res = gridctl("restart", "web", "-f", fleet, "--json")
    assert res.returncode == 0, res.stderr
    (row,) = json.loads(res.stdout)
    assert (row["state"], row["reason"]) == ("pending", "restarted by user: next attempt in 5s")
    assert [(a["n"], a["state"], a["reason"]) for a in row["attempts"]] == [(1, "killed", "restarted by user")]
    until(lambda: not pid_alive(tmp_path, "web.1"), "the old copy is stopped (TERM, then KILL after the grace)")
    row = until(lambda: gridctl("reconcile", "-f", fleet) and (r := job_row(fleet, "web"))["state"] == "running" and r,
                "the new attempt runs")
    assert [(a["n"], a["state"]) for a in row["attempts"]] == [(1, "killed"), (2, "running")]
    assert pid_alive(tmp_path, "web.2")


def test_prune_bad_duration_is_one_line_exit_2(fleet):
    assert one_error_line(gridctl("prune", "--older-than", "banana", "-f", fleet), 2) == \
        "error: --older-than: expected a duration like 15s, 2m, 1h; got 'banana'"


def test_retention_in_the_spec_removes_ended_jobs_and_old_events_in_a_pass(fleet, tmp_path):
    assert gridctl("run", "-f", fleet, "--name", "etl", "--class", "batch", "--", "true").returncode == 0
    until(lambda: gridctl("reconcile", "-f", fleet) and job_row(fleet, "etl")["state"] == "succeeded", "etl ends")
    fleet.write_text(fleet.read_text().replace("health:", "retention: {jobs: 1s, events: 1h}\nhealth:"))
    until(lambda: gridctl("reconcile", "-f", fleet) and job_row(fleet, "etl") is None, "retention deletes etl")
    events = json.loads(gridctl("events", "-f", fleet, "--json").stdout)
    assert [e for e in events if e["job"] == "etl"] == []
    assert any(e["kind"] == "node-state" for e in events)                  # younger than 1h: kept
    assert gridctl("prune", "--older-than", "0s", "-f", fleet, "--json").returncode == 0
    assert json.loads(gridctl("events", "-f", fleet, "--json").stdout) == []
