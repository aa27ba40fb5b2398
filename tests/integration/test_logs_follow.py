"""`gridctl logs -F` when the node goes dark (issue 11, item 14): it must not hang forever on a
dead TCP connection. Keepalives that get no answer end it within a bounded time, saying the node
is silent; a node that is merely quiet (a job printing nothing) keeps it following."""

from __future__ import annotations

import subprocess
import time

import pytest

from fleetsim import requires_root
from helpers import GRIDCTL
from jobs_support import lab_factory


@pytest.fixture
def lab(ssh_fleet, tmp_path):
    with lab_factory(ssh_fleet, tmp_path, count=1) as make:
        yield make("follow")


@requires_root
def test_logs_follow_ends_saying_the_node_is_silent_when_it_goes_dark(lab):
    # a job that prints once, then nothing: quiet is not silent, the follow goes on past the keepalive limit
    assert lab.run_job({"name": "talk", "class": "batch", "command": "echo hello; sleep 600", "gpus": 1}).returncode == 0
    (node,) = lab.names
    follow = subprocess.Popen([*GRIDCTL, "logs", "talk", "-F", "-f", str(lab.path)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(14)
        assert follow.poll() is None, follow.communicate()
        lab.blackhole(node)
        t0 = time.monotonic()
        out, err = follow.communicate(timeout=60)
        took = time.monotonic() - t0
    finally:
        if follow.poll() is None:
            follow.kill()
            follow.communicate()
    assert follow.returncode == 1, (out, err)
    assert "silent" in err and node in err and "Traceback" not in err, err
    assert took < 45, took            # bounded by keepalives, not by TCP's retransmission timeout
    assert out == "[stdout] hello\n"    # both streams, each line marked
