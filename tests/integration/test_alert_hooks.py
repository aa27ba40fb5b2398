"""Alert hooks end to end: the real console script on a simulated local fleet, a real HTTP receiver
on 127.0.0.1 (tests/servers/hookreceiver.py) and a real command hook.

Guards against: a node failure nobody is told about, a hook that is down losing events or being
retried forever, a hook that hangs holding up the pass, a loop killed between send and record
losing the event (it is sent again with the same key: at least once), and a command hook not
getting the batch on stdin.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from helpers import GRIDCTL, gridctl, gridctl_json, write_local_fleet
from providers.local import write_node
from servers.hookreceiver import Receiver


@pytest.fixture
def receiver():
    made: list[Receiver] = []

    def make(*answers) -> Receiver:
        made.append(Receiver(answers).start())
        return made[-1]
    yield make
    for r in made:
        r.stop()


def fleet_with(tmp_path, name: str, alerts: str, count: int = 2) -> Path:
    path = write_local_fleet(tmp_path, name, count=count)
    path.write_text(path.read_text() + "alerts:\n" + alerts)
    return path


def reconcile(path: Path) -> subprocess.CompletedProcess:
    res = gridctl("reconcile", "-f", path, timeout=120)
    assert res.returncode == 0 and "Traceback" not in res.stderr, res.stdout + res.stderr
    return res


def undelivered(path: Path) -> list[dict]:
    code, rows = gridctl_json("events", "--undelivered", "-f", path)
    assert code == 0
    return rows


def test_broken_nodes_are_posted_to_the_webhook_as_one_batch_after_the_pass(tmp_path, receiver):
    hook = receiver()
    path = fleet_with(tmp_path, "batch", f"  - webhook: {hook.url}\n    kinds: [node-state, alert]\n", count=3)
    reconcile(path)                                     # nodes added and ready: info, below the hook's warning
    write_node(tmp_path / "nodes" / "sim-1", "sim-1", gpus=1, mode="xid79")
    write_node(tmp_path / "nodes" / "sim-2", "sim-2", gpus=1, mode="ecc")
    reconcile(path)

    assert hook.wait_for(1, 5)
    assert len(hook.requests) == 1, hook.requests
    headers, body = hook.requests[0]
    assert body["fleet"] == "batch" and body["delivery"] == "at-least-once"
    assert headers["Idempotency-Key"] == body["batch"] and headers["Content-Type"] == "application/json"
    assert [(e["kind"], e["severity"], e["node"], e["message"].split(":")[0]) for e in body["events"]] == [
        ("node-state", "warning", "sim-1", "ready -> quarantined"),
        ("node-state", "warning", "sim-2", "ready -> quarantined")]
    assert len({e["key"] for e in body["events"]}) == 2
    assert all(e["key"].startswith("batch/") and e["key"].endswith(f"/{e['id']}") for e in body["events"])
    assert undelivered(path) == []
    reconcile(path)                                     # nothing new: nothing sent again
    assert len(hook.requests) == 1


def test_a_hook_answering_503_twice_gets_the_event_on_the_third_pass_with_its_tries_recorded(tmp_path, receiver):
    hook = receiver(503, 503)
    path = fleet_with(tmp_path, "retry", f"  - webhook: {hook.url}\n    backoff: 0s\n")
    reconcile(path)
    write_node(tmp_path / "nodes" / "sim-0", "sim-0", gpus=1, mode="xid79")
    reconcile(path)
    (row,) = undelivered(path)
    assert (row["kind"], row["node"], row["delivery"], row["tries"], row["error"], row["status"]) == \
        ("node-state", "sim-0", "pending", 1, "HTTP 503", "pending: HTTP 503 (1 try)")
    assert row["hook"] == f"webhook http://127.0.0.1:{hook.server.server_address[1]}/…"
    reconcile(path)
    assert [(r["tries"], r["status"]) for r in undelivered(path)] == [(2, "pending: HTTP 503 (2 tries)")]
    reconcile(path)
    assert undelivered(path) == []
    keys = [[e["key"] for e in events] for events in hook.events()]
    assert len(keys) == 3 and keys[0] == keys[1] == keys[2] and len(keys[0]) == 1


def test_a_hook_that_keeps_failing_is_given_up_after_max_tries_and_shown_failed(tmp_path, receiver):
    hook = receiver(503, 503, 503)
    path = fleet_with(tmp_path, "giveup", f"  - webhook: {hook.url}\n    backoff: 0s\n    max_tries: 2\n")
    reconcile(path)
    write_node(tmp_path / "nodes" / "sim-1", "sim-1", gpus=1, mode="ecc")
    for _ in range(3):
        reconcile(path)
    assert len(hook.requests) == 2
    (row,) = undelivered(path)
    assert (row["delivery"], row["status"]) == ("failed", "failed: HTTP 503 (2 tries)")
    res = gridctl("events", "--undelivered", "-f", path, env={**os.environ, "COLUMNS": "250"})
    assert res.returncode == 0 and "failed: HTTP 503 (2 tries)" in res.stdout and "gridctl-token" not in res.stdout
    path.write_text(path.read_text().split("alerts:")[0])      # the hook taken out of the spec
    assert [r["status"] for r in undelivered(path)] == ["failed: HTTP 503 (2 tries) (hook no longer in the spec)"]


def test_a_hook_that_never_answers_does_not_hold_up_the_pass(tmp_path, receiver):
    hook = receiver("hold")                 # takes the request and never answers (until the test ends)
    path = fleet_with(tmp_path, "hang", f"  - webhook: {hook.url}\n    timeout: 1s\n")
    reconcile(path)
    write_node(tmp_path / "nodes" / "sim-0", "sim-0", gpus=1, mode="xid79")
    res = reconcile(path)                   # returns at all while the receiver still holds the request
    assert "pass " in res.stdout and "quarantined" in res.stdout
    assert f"warning: alert hook webhook http://127.0.0.1:{hook.server.server_address[1]}/…: timed out; 1 event(s) " \
           "kept for a later pass" in res.stderr.replace("\n", " ")
    assert len(hook.requests) == 1
    (row,) = undelivered(path)
    assert (row["delivery"], row["tries"], row["error"]) == ("pending", 1, "timed out")


def test_a_command_hook_gets_the_batch_as_json_on_stdin(tmp_path):
    out = tmp_path / "paged.json"
    script = tmp_path / "page-oncall"
    script.write_text("#!/bin/sh\ncat > \"$1\"\n")
    script.chmod(0o755)
    path = fleet_with(tmp_path, "cmd", f"  - command: [{script}, {out}]\n    min_severity: info\n"
                                       "    kinds: [node-state]\n")
    reconcile(path)
    body = json.loads(out.read_text())
    assert body["fleet"] == "cmd"
    assert sorted((e["node"], e["message"]) for e in body["events"]) == [
        ("sim-0", "provisioning -> ready: 1 GPUs healthy"), ("sim-1", "provisioning -> ready: 1 GPUs healthy")]
    assert undelivered(path) == []


def test_a_loop_killed_between_send_and_record_sends_the_event_again_with_the_same_key(tmp_path, receiver):
    hook = receiver("hold")                 # the first request is held open while the test kills the loop
    path = fleet_with(tmp_path, "kill", f"  - webhook: {hook.url}\n    timeout: 4s\n    backoff: 0s\n")
    reconcile(path)
    write_node(tmp_path / "nodes" / "sim-1", "sim-1", gpus=1, mode="xid79")
    loop = subprocess.Popen([*GRIDCTL, "reconcile", "--loop", "--interval", "1s", "-f", str(path)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert hook.wait_for(1, 60), "the loop never sent the batch"
        os.kill(loop.pid, signal.SIGKILL)   # sent, its answer not yet back: nothing recorded
        loop.wait(30)
    finally:
        if loop.poll() is None:
            os.kill(loop.pid, signal.SIGKILL)
            loop.wait(30)
    hook.release()
    (row,) = undelivered(path)
    assert (row["node"], row["delivery"], row["tries"]) == ("sim-1", "pending", 0)

    again = subprocess.Popen([*GRIDCTL, "reconcile", "--loop", "--interval", "1s", "-f", str(path)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert hook.wait_for(2, 60), "the restarted loop never sent the batch again"
        deadline = time.monotonic() + 60
        while undelivered(path) and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        os.kill(again.pid, signal.SIGKILL)
        again.wait(30)
    assert undelivered(path) == []
    first, second = hook.events()[:2]
    assert [e["key"] for e in first] == [e["key"] for e in second] and len(first) == 1
    assert first[0]["node"] == "sim-1"
    # the receiver's side of at least once: dedup by key leaves the one event
    seen = {e["key"]: e for events in hook.events() for e in events}
    assert [(e["kind"], e["node"]) for e in seen.values()] == [("node-state", "sim-1")]
