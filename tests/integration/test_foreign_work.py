"""Work gridctl did not start, through the real probe on simulated nodes (issue 11, item 8): a GPU
running a compute process no attempt holds is not free (the pending reason says so), and when the
state file is lost under running jobs, the next pass reports their attempts as orphans, leaves
them running and never places new work on their GPUs."""

from __future__ import annotations

import json
import os

import pytest

from helpers import gridctl, gridctl_json, stop_attempts, write_local_fleet


@pytest.fixture
def fleet(tmp_path):
    path = write_local_fleet(tmp_path, "foreign", count=1, gpus=2)
    assert gridctl("reconcile", "-f", path).returncode == 0
    yield path
    stop_attempts(tmp_path)


def _uuids(fleet) -> list[str]:
    code, rows = gridctl_json("describe", "node", "sim-0", "-f", fleet)
    return [g["uuid"] for g in rows[0]["gpus"]]


def test_a_gpu_with_a_process_gridctl_did_not_start_is_busy(fleet, tmp_path):
    first = sorted(_uuids(fleet))[0]
    (tmp_path / "nodes" / "sim-0" / "apps").write_text(f"{first}, 4242\n")
    res = gridctl("run", "-f", fleet, "--name", "both", "--class", "batch", "--gpus", "2", "--", "sleep", "60")
    assert res.returncode == 0, res.stderr
    assert "sim-0 has 1 free GPU (1 busy with processes gridctl did not start)" in res.stdout, res.stdout
    res = gridctl("run", "-f", fleet, "--name", "one", "--class", "batch", "--gpus", "1", "--json", "--", "sleep",
                  "60")
    assert res.returncode == 0, res.stderr
    (attempt,) = json.loads(res.stdout)[0]["attempts"]
    assert attempt["gpus"] != [first]


def _copy_store(tmp_path, to):
    import sqlite3
    src = sqlite3.connect(tmp_path / "state.db")
    dst = sqlite3.connect(to)
    src.backup(dst)
    src.close()
    dst.close()


def _restore_store(tmp_path, copy):
    for suffix in ("", "-wal", "-shm"):
        (tmp_path / f"state.db{suffix}").unlink(missing_ok=True)
    if copy is not None:
        copy.rename(tmp_path / "state.db")


@pytest.mark.parametrize("store", ["restored from an older copy", "lost"])
def test_jobs_running_when_the_store_is_replaced_are_left_running_on_busy_gpus(fleet, tmp_path, store):
    copy = tmp_path / "older.db"
    _copy_store(tmp_path, copy)
    assert gridctl("run", "-f", fleet, "--name", "web", "--gpus", "1", "--", "sleep", "300").returncode == 0
    code, jobs = gridctl_json("jobs", "-f", fleet)
    (held,) = jobs[0]["attempts"][0]["gpus"]
    (tmp_path / "nodes" / "sim-0" / "apps").write_text(f"{held}, 777\n")     # the GPU as nvidia-smi shows it
    _restore_store(tmp_path, copy if store.startswith("restored") else None)
    assert gridctl("reconcile", "-f", fleet).returncode == 0
    code, events = gridctl_json("events", "-f", fleet)
    kind = "orphan-attempt" if store.startswith("restored") else "alert"       # lost: a new key, no token
    said = [e for e in events if e["kind"] == kind and "web.1" in e["message"]]
    assert len(said) == 1, events
    assert gridctl("jobs", "-f", fleet).returncode == 0
    res = gridctl("run", "-f", fleet, "--name", "new", "--class", "batch", "--gpus", "2", "--", "sleep", "60")
    assert "1 busy with processes gridctl did not start" in res.stdout, res.stdout
    assert gridctl("reconcile", "-f", fleet).returncode == 0
    code, events = gridctl_json("events", "-f", fleet)
    assert len([e for e in events if e["kind"] == kind and "web.1" in e["message"]]) == 1     # alerted once
    pid = int((tmp_path / "nodes" / "sim-0" / "work" / "attempts" / "web.1" / "pid").read_text())
    os.killpg(pid, 0)                                                         # still running: never killed
