"""Readiness end to end on simulated nodes: real HTTP replicas started as gridctl jobs, checked
by real reconcile passes (issue 12). A replica joins the ready set only once /health answers 2xx;
a replica answering 503 leaves it after failure_threshold checks while its process keeps running,
and comes back after one good check; a replica never ready within ready_timeout is restarted.
Bad serving input is refused with one line and nothing recorded.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from helpers import gridctl, gridctl_json, stop_attempts, write_local_fleet

from gridctl import demo_replica

REPLICA = Path(demo_replica.__file__)


@pytest.fixture
def fleet(tmp_path):
    path = write_local_fleet(tmp_path, "serve")
    assert gridctl("reconcile", "-f", path).returncode == 0
    yield path
    stop_attempts(tmp_path)


def _endpoints(fleet) -> list[dict]:
    code, rows = gridctl_json("endpoints", "-f", fleet)
    assert code == 0
    return rows


def _passes(fleet, n: int) -> None:
    for _ in range(n):
        res = gridctl("reconcile", "-q", "-f", fleet)
        assert res.returncode == 0, res.stderr


def _run(fleet, name: str, *extra: str, env: dict[str, str] = {}) -> None:
    args = ["run", "-f", str(fleet), "--name", name, "--port", "auto", *extra]
    for k, v in env.items():
        args += ["--env", f"{k}={v}"]
    res = gridctl(*args, "--", sys.executable, str(REPLICA))
    assert res.returncode == 0, res.stderr


def test_a_replica_is_ready_only_once_its_health_answers_2xx_and_leaves_on_503s(fleet, tmp_path):
    health = tmp_path / "health"
    health.write_text("503")
    _run(fleet, "web", "--ready-http", "/health", env={"HEALTH_FILE": str(health)})
    _passes(fleet, 2)
    (ep,) = _endpoints(fleet)
    assert (ep["ready"], ep["host"]) == (False, "127.0.0.1") and 20000 <= ep["port"] < 30000
    health.write_text("200")
    _passes(fleet, 1)
    (ep,) = _endpoints(fleet)
    assert ep["ready"] and ep["ready_since"]
    attempt = ep["attempt"]
    health.write_text("503")
    _passes(fleet, 2)                                        # failure_threshold is 3
    assert _endpoints(fleet)[0]["ready"]
    _passes(fleet, 1)
    (ep,) = _endpoints(fleet)
    assert not ep["ready"] and ep["attempt"] == attempt      # out of routing, same process
    code, jobs = gridctl_json("jobs", "-f", fleet)
    assert jobs[0]["state"] == "running"
    health.write_text("200")
    _passes(fleet, 1)
    assert _endpoints(fleet)[0]["ready"]
    code, events = gridctl_json("events", "--job", "web", "-f", fleet)
    kinds = [e["kind"] for e in events]
    assert kinds.count("replica-ready") == 2 and kinds.count("replica-not-ready") == 1


def test_a_replica_never_ready_within_ready_timeout_is_restarted(fleet, tmp_path):
    job = tmp_path / "slow.yaml"
    job.write_text(json.dumps({"name": "slow", "class": "service", "port": "auto",
                               "command": [sys.executable, str(REPLICA)], "env": {"START_DELAY_S": "600"},
                               "readiness": {"tcp": True, "ready_timeout": "2s", "timeout": "0.5s"},
                               "recovery": {"backoff": "1s"}}))
    assert gridctl("run", "-f", fleet, str(job)).returncode == 0
    import time
    time.sleep(3)
    _passes(fleet, 1)
    code, rows = gridctl_json("describe", "job", "slow", "-f", fleet)
    first = rows[0]["attempts"][0]
    assert first["state"] == "hung" and "ready_timeout 2s" in first["reason"], first


@pytest.mark.parametrize("flags, words", [
    (["--port", "0"], "port 0 is out of range"),
    (["--port", "70000"], "port 70000 is out of range"),
    (["--class", "batch", "--port", "auto"], "only service jobs have a port"),
    (["--ready-http", "/health"], "readiness needs a port"),
    (["--port", "auto", "--ready-http", "health"], "expected a path such as /health"),
])
def test_bad_serving_input_is_one_line_and_records_nothing(fleet, flags, words):
    res = gridctl("run", "-f", fleet, "--name", "bad", *flags, "--", "true")
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert words in res.stderr and len(res.stderr.strip().splitlines()) == 1, res.stderr
    code, jobs = gridctl_json("jobs", "-f", fleet)
    assert [j["name"] for j in jobs] == []


def test_a_fixed_port_clash_between_two_jobs_is_refused(fleet):
    assert gridctl("run", "-f", fleet, "--name", "one", "--port", "8123", "--", "sleep", "60").returncode == 0
    res = gridctl("run", "-f", fleet, "--name", "two", "--port", "8123", "--", "sleep", "60")
    assert res.returncode == 2 and "port 8123: already the fixed port of job one" in res.stderr, res.stderr
    code, jobs = gridctl_json("jobs", "-f", fleet)
    assert [j["name"] for j in jobs] == ["one"]
