"""The watch screen rendered to text: every state visible, columns dropped to fit 80 columns.

Guards against: a screen that wraps or overflows on an 80-column terminal, a node or job state that
is not shown, and a partition warning that never appears.
"""

from __future__ import annotations

from rich.console import Console

from gridctl import screen
from gridctl.models import (Attempt, AttemptState, Event, Health, JobRecord, JobState, NodeRecord,
                            NodeState)

NOW = 1_800_000_000.0


def _node(name: str, state: NodeState, reason: str, **kw) -> NodeRecord:
    return NodeRecord(name=name, pool="sim", provider="local", host="local", port=22, state=state,
                      health=Health.HEALTHY, reason=reason, gpus_expected=4, gpus_seen=4,
                      last_seen=kw.pop("last_seen", NOW - 1), **kw)


def _snapshot(**kw) -> screen.Snapshot:
    nodes = [
        _node("n-ready", NodeState.READY, "4 GPUs healthy"),
        _node("n-suspect", NodeState.SUSPECT, "unreachable: connection refused", last_seen=NOW - 40),
        _node("n-quar", NodeState.QUARANTINED, "xid 79 on GPU 3 (0000:8a:00.0): fell off the bus", last_seen=NOW - 300),
        _node("n-prov", NodeState.PROVISIONING, "waiting for the first healthy probe", last_seen=None),
        _node("n-cord", NodeState.READY, "4 GPUs healthy", cordoned=True, cordon_reason="maintenance"),
        _node("n-drain", NodeState.READY, "4 GPUs healthy", cordoned=True, cordon_reason="drain", draining=True),
    ]
    spec = {"class": "service", "replicas": 2, "gpus": 1}
    jobs = [
        JobRecord("web", spec, JobState.RUNNING, "2/2 replicas running", "running", NOW - 600, NOW),
        JobRecord("etl", {"class": "batch", "gpus": 2}, JobState.PENDING,
                  "no node fits 2xH100: n-ready has 1 free GPU, n-quar quarantined", "pending", NOW - 60, NOW),
        JobRecord("eval", {"class": "batch", "gpus": 1}, JobState.FAILED, "exit code 3 after 2 attempts",
                  "exit-code", NOW - 900, NOW, failures=2, attempts_made=2),
        JobRecord("train", {"class": "training", "gpus": 1}, JobState.SUCCEEDED, "succeeded", "succeeded", NOW - 90, NOW),
        JobRecord("old", {"class": "manual", "gpus": 1}, JobState.CANCELLED, "by user", "cancelled", NOW - 90, NOW),
    ]
    attempts = [
        Attempt("web.1", "web", 1, 0, "n-ready", AttemptState.RUNNING, gpus=("GPU-a",), created_at=NOW - 600),
        Attempt("web.2", "web", 2, 1, "n-suspect", AttemptState.SILENT, gpus=("GPU-b",), created_at=NOW - 600),
    ]
    events = [
        Event(NOW - 5, "node-state", "ready -> quarantined: xid 79 on GPU 3", node="n-quar", severity="warning"),
        Event(NOW - 4, "alert", "host key changed", node="n-suspect", severity="alert"),
        Event(NOW - 3, "attempt-starting", "attempt web.3 placed on n-ready (GPUs 1)", job="web", node="n-ready"),
    ]
    base = dict(fleet="test", now=NOW, nodes=nodes, gpus={"n-ready": screen.GpuSummary(71.0, 55.0)}, jobs=jobs,
                attempts=attempts, events=events, last_pass=NOW - 1, pass_s=0.4, next_pass_at=NOW + 1,
                interval=2.0, stale_after=60.0)
    base.update(kw)
    return screen.Snapshot(**base)


def _text(snap: screen.Snapshot, width: int) -> str:
    console = Console(width=width, record=True, color_system=None, file=open("/dev/null", "w"))
    console.print(screen.render(snap, width))
    return console.export_text()


def test_every_state_job_and_event_is_on_the_screen():
    text = _text(_snapshot(), 160)
    for word in ("n-ready", "n-suspect", "n-quar", "n-prov", "n-cord", "n-drain", "ready", "suspect", "quarantined",
                 "provisioning", "cordoned", "(drain)"):
        assert word in text, word
    for word in ("web", "etl", "eval", "train", "old", "running", "pending", "failed", "succeeded", "cancelled",
                 "exit code 3 after 2 attempts", "no node fits 2xH100"):
        assert word in text, word
    assert "host key changed" in text and "placed on n-ready" in text
    assert "71°C" in text and "55%" in text
    assert "6 nodes" in text and "GPUs 2/24 used" in text and "pass 0.4s" in text


def test_80_columns_fit_and_keep_the_important_columns():
    text = _text(_snapshot(), 80)
    assert max(len(line) for line in text.splitlines()) <= 80
    header_nodes = next(line for line in text.splitlines() if line.startswith("NODE "))
    header_jobs = next(line for line in text.splitlines() if line.startswith("JOB "))
    assert "STATE" in header_nodes and "SEEN" in header_nodes and "POOL" not in header_nodes
    assert "STATE" in header_jobs and "REASON" in header_jobs and "CLASS" not in header_jobs


def test_160_columns_show_everything():
    text = _text(_snapshot(), 160)
    header_nodes = next(line for line in text.splitlines() if line.startswith("NODE "))
    header_jobs = next(line for line in text.splitlines() if line.startswith("JOB "))
    for col in ("POOL", "STATE", "GPUS", "TEMP", "UTIL", "SEEN", "REASON"):
        assert col in header_nodes
    for col in ("CLASS", "STATE", "NODE", "GPUS", "ATT", "AGE", "REASON"):
        assert col in header_jobs


def test_last_seen_ages_and_staleness_colours():
    snap = _snapshot()
    by_name = {n.name: n for n in snap.nodes}
    assert str(screen._seen(snap, by_name["n-ready"])) == "1s ago"
    assert screen._seen(snap, by_name["n-ready"]).style == "green"
    assert screen._seen(snap, by_name["n-suspect"]).style == "yellow"     # 40 s: past 2 intervals, within stale_after
    assert screen._seen(snap, by_name["n-quar"]).style == "red"           # 5 min: stale
    assert str(screen._seen(snap, by_name["n-prov"])) == "never"


def test_partition_warning_and_note():
    text = _text(_snapshot(partitions=("fleet",), note="demo: injected xid79 on n-ready"), 100)
    assert "PARTITION SUSPECTED (fleet)" in text
    assert "demo: injected xid79 on n-ready" in text


def test_event_line_is_one_greppable_line():
    line = screen.event_line(Event(NOW, "node-state", "ready -> quarantined: xid 79", node="n1", job=None,
                                   severity="warning"))
    assert "\n" not in line
    assert line.startswith("2027-01-15T08:00:00Z warning node-state")
    assert "node=n1" in line and line.endswith("ready -> quarantined: xid 79")
