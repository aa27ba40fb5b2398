"""Is anything reconciling? The real console script against a real `reconcile --loop` process on a
simulated local fleet: while the loop runs `jobs` is quiet; once it is killed (SIGKILL: no chance
to say goodbye) and stays away, `jobs` warns on stderr and `--json` stdout stays valid.

Guards against: a `run` saying "running" while nothing supervises the job, a warning on stdout
that breaks --json, and `run`'s own pass passing for a controller.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

from helpers import GRIDCTL, gridctl, stop_attempts, write_local_fleet

DEADLINE_S = 60.0


def _until(check, what: str):
    """Poll check() until it returns something truthy; a bound, not a timing assertion."""
    end = time.monotonic() + DEADLINE_S
    while time.monotonic() < end:
        got = check()
        if got:
            return got
        time.sleep(0.3)
    raise AssertionError(f"never: {what}")


def test_a_killed_loop_makes_jobs_warn_and_status_say_so(tmp_path):
    fleet = write_local_fleet(tmp_path, "sup", count=1, gpus=1)
    ran = gridctl("run", "-f", fleet, "--name", "web", "--class", "batch", "--", "sleep", "300")
    try:
        assert ran.returncode == 0, ran.stderr
        # only `run`'s own pass so far: nothing supervises the job
        assert "nothing is reconciling this fleet" in ran.stderr
        loop = subprocess.Popen([*GRIDCTL, "reconcile", "--loop", "--interval", "1s", "-q", "-f", str(fleet)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            quiet = _until(lambda: (r := gridctl("jobs", "-f", fleet, "--json")).stderr == "" and r,
                           "jobs without a warning while the loop runs")
            assert [j["name"] for j in json.loads(quiet.stdout)] == ["web"]
            status = json.loads(gridctl("status", "-f", fleet, "--json").stdout)[0]
            assert (status["reconciling"], status["last_pass"]["mode"], status["last_pass"]["pid"],
                    status["last_pass"]["interval_s"]) == (True, "loop", loop.pid, 1.0)
        finally:
            os.kill(loop.pid, signal.SIGKILL)
            loop.wait()
        warned = _until(lambda: (r := gridctl("jobs", "-f", fleet, "--json")).stderr and r,
                        "jobs warns once the loop is gone")
        assert warned.returncode == 0
        assert [j["name"] for j in json.loads(warned.stdout)] == ["web"]      # stdout is still the JSON
        assert warned.stderr.startswith("warning: no pass for ")
        assert f"nothing is reconciling this fleet (last: loop every 1s on {os.uname().nodename} pid {loop.pid})" \
            in " ".join(warned.stderr.split())
        status = json.loads(gridctl("status", "-f", fleet, "--json").stdout)[0]
        assert status["reconciling"] is False and status["jobs"] == {"running": 1}
        assert "no pass for" in gridctl("status", "-f", fleet).stdout
    finally:
        stop_attempts(tmp_path)
