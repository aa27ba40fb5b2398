"""`run --dry-run`, the submit-time refusal, `delete`, `restart` and `prune` through the real console
script on a real store of a simulated local fleet.

Guards against: a dry run or a refused job writing anything, a refusal that is a traceback or not
exit 2, a deleted job's name staying taken, a restart that leaves the old copy running, and prune
deleting what a node's kill list still needs.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from gridctl.store import connect, queries

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
    assert out["replicas"][2]["reason"] == "no node fits 2xGPU: sim-0 has 0 free GPUs, sim-1 has 0 free GPUs"
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
