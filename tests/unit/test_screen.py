"""gridctl.screen rendered to plain text at 80 and 160 columns, and the one-line event format.

Guards against: a node, job or event that the screen silently leaves out; a screen wider than an
80-column terminal; the important columns (NODE, STATE, JOB) dropped before the decorative ones;
"last seen" ages in the wrong unit; a partition that the screen does not warn about; and a drift in
the `watch --plain` line format that scripts grep.
"""

from __future__ import annotations

import io
import time

import pytest
from rich.console import Console

from gridctl import screen
from gridctl.models import (Attempt, AttemptState, Event, Health, JobRecord, JobState, NodeRecord,
                            NodeState)

NOW = 1_700_000_000.0

NODE_STATES = {            # node name -> the state word the screen shows for it
    "gpu-ready": "ready",
    "gpu-suspect": "suspect",
    "gpu-quar": "quarantined",
    "gpu-prov": "provisioning",
    "gpu-cord": "cordoned",
    "gpu-drain": "cordoned (drain)",
}
JOB_STATES = {"web": "running", "etl": "pending", "train": "succeeded", "eval": "failed", "old": "cancelled"}
EVENT_MESSAGES = ("xid79-on-gpu3", "unreachable-twice", "host-key-changed")


def node(name: str, state: NodeState, *, seen_ago: float | None, **kw) -> NodeRecord:
    return NodeRecord(name=name, pool="onprem", provider="ssh", host=f"{name}.example", port=22, state=state,
                      health=Health.HEALTHY, gpus_expected=4, gpus_seen=kw.pop("gpus_seen", 4),
                      last_seen=None if seen_ago is None else NOW - seen_ago, **kw)


def attempt(job: str, n: int, node_name: str, state: AttemptState, gpus: tuple[str, ...] = ("GPU-0",),
            replica: int = 0) -> Attempt:
    return Attempt(id=f"{job}.{n}", job=job, n=n, replica=replica, node=node_name, state=state, gpus=gpus,
                   created_at=NOW - 500, started_at=NOW - 490)


def make_snapshot(**overrides) -> screen.Snapshot:
    nodes = [
        node("gpu-ready", NodeState.READY, seen_ago=5, reason="4 GPUs healthy"),
        node("gpu-suspect", NodeState.SUSPECT, seen_ago=300, reason="unreachable: timed out"),
        node("gpu-quar", NodeState.QUARANTINED, seen_ago=3 * 3600, reason="xid 79: fell off the bus", gpus_seen=3),
        node("gpu-prov", NodeState.PROVISIONING, seen_ago=None, reason="not probed yet", gpus_seen=None),
        node("gpu-cord", NodeState.READY, seen_ago=3 * 86400, reason="4 GPUs healthy", cordoned=True,
             cordon_reason="bios update"),
        node("gpu-drain", NodeState.READY, seen_ago=20, reason="4 GPUs healthy", cordoned=True,
             cordon_reason="draining", draining=True),
    ]
    jobs = [
        JobRecord("web", {"class": "service", "gpus": 1, "replicas": 2}, JobState.RUNNING,
                  "2/2 replicas running", "running", created_at=NOW - 7200, attempts_made=2),
        JobRecord("etl", {"class": "batch", "gpus": 8}, JobState.PENDING, "no node has 8 free GPUs",
                  "pending", created_at=NOW - 30),
        JobRecord("train", {"class": "training", "gpus": 2}, JobState.SUCCEEDED, "exited 0", "succeeded",
                  created_at=NOW - 3 * 86400, attempts_made=2, restarts=1),
        JobRecord("eval", {"class": "batch", "gpus": 1}, JobState.FAILED, "exit 3, 3 failures", "failed",
                  created_at=NOW - 600, attempts_made=3, failures=3),
        JobRecord("old", {"class": "service", "gpus": 1}, JobState.CANCELLED, "cancelled by alice", "cancelled",
                  created_at=NOW - 120, attempts_made=1),
    ]
    attempts = [
        attempt("web", 1, "gpu-ready", AttemptState.RUNNING, ("GPU-0",), replica=0),
        attempt("web", 2, "gpu-drain", AttemptState.RUNNING, ("GPU-1",), replica=1),
        attempt("train", 1, "gpu-quar", AttemptState.LOST, ("GPU-2", "GPU-3")),
        attempt("train", 2, "gpu-ready", AttemptState.EXITED, ("GPU-2", "GPU-3")),
        attempt("eval", 3, "gpu-cord", AttemptState.EXITED),
        attempt("old", 1, "gpu-ready", AttemptState.KILLED),
    ]
    events = [   # newest first, as screen.snapshot orders them
        Event(NOW - 10, "host-key", "host-key-changed", node="gpu-cord", severity="info"),
        Event(NOW - 20, "attempt-silent", "unreachable-twice", node="gpu-suspect", job="web", severity="warning"),
        Event(NOW - 30, "node-state", "ready -> quarantined: xid79-on-gpu3", node="gpu-quar", severity="alert"),
    ]
    base = dict(fleet="prod", now=NOW, nodes=nodes,
                gpus={"gpu-ready": screen.GpuSummary(max_temp_c=61.4, util_pct=37.0)},
                jobs=jobs, attempts=attempts, events=events, last_pass=NOW - 2, pass_s=0.4,
                next_pass_at=NOW + 13, interval=15.0, stale_after=60.0)
    base.update(overrides)
    return screen.Snapshot(**base)


def rendered(snap: screen.Snapshot, width: int) -> str:
    console = Console(width=width, record=True, color_system=None, file=io.StringIO())
    console.print(screen.render(snap, width))
    return console.export_text()


def flat(text: str) -> str:
    """The text with every run of whitespace (line wraps included) as one space."""
    return " ".join(text.split())


def header_of(text: str, first: str) -> list[str]:
    """The column headers of the table whose header line starts with `first`."""
    line = next(ln for ln in text.splitlines() if ln.split()[:1] == [first])
    return line.split()


def row_of(text: str, name: str) -> str:
    return next(ln for ln in text.splitlines() if ln.split()[:1] == [name])


@pytest.mark.parametrize("width", [80, 160])
def test_every_node_name_and_state_is_shown_in_full(width):
    text = rendered(make_snapshot(), width)
    for name, state in NODE_STATES.items():
        assert any(ln.split()[:1] == [name] for ln in text.splitlines()), (name, text)
        assert state in row_of(text, name), (name, row_of(text, name))


def test_short_node_names_and_states_are_shown_at_80_columns():
    nodes = [node(f"n{i}", s, seen_ago=5, reason="r") for i, s in enumerate(NodeState)]
    text = rendered(make_snapshot(nodes=nodes), 80)
    for i, s in enumerate(NodeState):
        words = row_of(text, f"n{i}").split()
        assert words[0] == f"n{i}" and s.value in words


@pytest.mark.parametrize("width", [80, 160])
def test_every_job_and_event_is_on_the_screen(width):
    text = rendered(make_snapshot(), width)
    for name, state in JOB_STATES.items():
        assert state in row_of(text, name).split(), (name, row_of(text, name))
    for message in EVENT_MESSAGES:
        assert message in text
    assert "gridctl watch · fleet prod" in text
    assert time.strftime("%H:%M:%S", time.localtime(NOW)) in text.splitlines()[0]


@pytest.mark.parametrize("width", [80, 160])
def test_events_show_who_and_kind_before_the_message(width):
    text = rendered(make_snapshot(), width)
    assert "gpu-quar: node-state ready -> quarantined: xid79-on-gpu3" in text
    assert "gpu-suspect: attempt-silent unreachable-twice" in text   # the node wins over the job
    assert time.strftime("%H:%M:%S", time.localtime(NOW - 10)) + "  gpu-cord: host-key host-key-changed" in text
    lines = text.splitlines()
    at = [next(i for i, ln in enumerate(lines) if m in ln) for m in ("host-key-changed", "unreachable-twice",
                                                                      "xid79-on-gpu3")]
    assert at == sorted(at), "events are drawn in the snapshot's order (newest first)"


@pytest.mark.parametrize("width", [80, 160])
def test_footer_counts_nodes_jobs_and_gpus(width):
    text = flat(rendered(make_snapshot(), width))
    assert "6 nodes (1 provisioning, 1 quarantined, 3 ready, 1 suspect)" in text
    assert "jobs 1 cancelled, 1 failed, 1 pending, 1 running, 1 succeeded" in text
    # total: seen GPUs where known (3 on the quarantined node), else expected; used: live attempts only
    assert "GPUs 2/23 used" in text
    assert "pass 0.4s" in text and "last 2s ago" in text and "next in 13s" in text


def test_footer_without_nodes_or_jobs_says_so():
    text = flat(rendered(make_snapshot(nodes=[], jobs=[], attempts=[], events=[]), 80))
    assert "no nodes yet" in text
    assert "jobs none" in text
    assert "GPUs 0/0 used" in text
    assert "no jobs (gridctl run ...)" in text
    assert "none yet" in text


def test_80_columns_fit_and_keep_node_state_and_job_columns():
    text = rendered(make_snapshot(), 80)
    too_long = [ln for ln in text.splitlines() if len(ln) > 80]
    assert not too_long, too_long
    nodes = header_of(text, "NODE")
    jobs = header_of(text, "JOB")
    assert {"NODE", "STATE", "REASON"} <= set(nodes), nodes
    assert {"JOB", "STATE", "NODE"} <= set(jobs), jobs
    assert "POOL" not in nodes
    assert "CLASS" not in jobs and "AGE" not in jobs
    # dropped from the least important: a column of higher priority goes only after every lower one
    assert "SEEN" in nodes and "GPUS" in nodes
    assert "ATT" in jobs and "REASON" in jobs


def test_160_columns_show_every_column():
    text = rendered(make_snapshot(), 160)
    assert header_of(text, "NODE") == ["NODE", "POOL", "STATE", "GPUS", "SEEN/EXP", "USED", "TEMP", "UTIL", "SEEN",
                                       "REASON"]
    assert header_of(text, "JOB") == ["JOB", "CLASS", "STATE", "NODE", "GPUS", "ATT", "AGE", "REASON"]
    assert max(len(ln) for ln in text.splitlines()) <= 160
    ready = row_of(text, "gpu-ready").split()
    assert ready[:6] == ["gpu-ready", "onprem", "ready", "4/4", "1", "61°C"]     # GPUS: as in `gridctl nodes`
    assert "37%" in ready


@pytest.mark.parametrize("width", [60, 72, 100, 120])
def test_no_line_is_wider_than_the_terminal(width):
    text = rendered(make_snapshot(), width)
    too_long = [ln for ln in text.splitlines() if len(ln) > width]
    assert not too_long, too_long
    assert "NODE" in header_of(text, "NODE") and "STATE" in header_of(text, "NODE")
    assert "JOB" in header_of(text, "JOB") and "STATE" in header_of(text, "JOB")


def test_last_seen_ages_use_the_right_unit():
    text = rendered(make_snapshot(), 160)
    seen = {name: row_of(text, name) for name in NODE_STATES}
    assert "5s ago" in seen["gpu-ready"]
    assert "5m ago" in seen["gpu-suspect"]
    assert "3h ago" in seen["gpu-quar"]
    assert "never" in seen["gpu-prov"]
    assert "3d ago" in seen["gpu-cord"]
    assert "20s ago" in seen["gpu-drain"]


@pytest.mark.parametrize("seconds, words", [
    (None, "never"), (-3, "0s"), (0, "0s"), (42, "42s"), (89, "89s"), (90, "2m"), (300, "5m"),
    (5399, "90m"), (5400, "2h"), (3 * 3600, "3h"), (172799, "48h"), (172800, "2d"), (10 * 86400, "10d"),
])
def test_age_wording(seconds, words):
    assert screen.age(seconds) == words


def test_node_used_column_counts_live_attempts_only_and_gpus_means_seen_of_expected_as_in_nodes():
    text = rendered(make_snapshot(), 160)
    # gpu-ready holds web.1 (1 GPU, running); train.2 exited and old.1 was killed: they hold nothing
    assert row_of(text, "gpu-ready").split()[3:5] == ["4/4", "1"]
    assert row_of(text, "gpu-quar").split()[3:5] == ["3/4", "0"]
    assert row_of(text, "gpu-prov").split()[3:5] == ["-/4", "0"]
    assert row_of(text, "gpu-drain").split()[2:6] == ["cordoned", "(drain)", "4/4", "1"]


def test_cordoned_and_draining_nodes_say_why():
    text = rendered(make_snapshot(), 160)
    assert "[cordoned: bios update]" in row_of(text, "gpu-cord")
    assert "[cordoned: draining]" in row_of(text, "gpu-drain")
    assert "cordoned" not in row_of(text, "gpu-ready")


def test_job_rows_show_attempts_gpus_nodes_and_reason():
    text = rendered(make_snapshot(), 160)
    web = row_of(text, "web").split()
    assert web[:6] == ["web", "service", "running", "gpu-drain,gpu-ready", "1x2", "2/0"]
    assert web[6] == "2h"
    assert "replicas running" in row_of(text, "web")   # kept: more than one replica
    etl = row_of(text, "etl")
    assert etl.split()[3] == "-" and "no node has 8 free GPUs" in etl
    assert row_of(text, "train").split()[5] == "2/1"
    assert row_of(text, "eval").split()[5] == "3/3" and "exit 3, 3 failures" in row_of(text, "eval")
    assert "cancelled by alice" in row_of(text, "old")


def test_single_replica_running_job_hides_the_routine_reason():
    snap = make_snapshot(jobs=[JobRecord("solo", {"class": "service", "gpus": 1}, JobState.RUNNING,
                                         "running on gpu-ready (attempt 1)", "running", created_at=NOW)],
                         attempts=[attempt("solo", 1, "gpu-ready", AttemptState.RUNNING)])
    row = row_of(rendered(snap, 160), "solo")
    assert "running on gpu-ready" not in row
    assert row.split()[:3] == ["solo", "service", "running"]


@pytest.mark.parametrize("width", [80, 160])
def test_partition_warning_names_the_pools(width):
    text = flat(rendered(make_snapshot(partitions=("onprem", "lab")), width))
    assert "PARTITION SUSPECTED (onprem, lab): silent nodes are not quarantined" in text


def test_no_partition_warning_without_partitions():
    assert "PARTITION" not in rendered(make_snapshot(), 160)


def test_note_is_shown_under_the_footer():
    text = rendered(make_snapshot(note="demo: injected xid79 on gpu-ready"), 80)
    assert text.rstrip().splitlines()[-1].strip() == "demo: injected xid79 on gpu-ready"


def test_event_line_format_with_node_and_job():
    e = Event(time=0.0, kind="attempt-ended", message="attempt web.2 lost", node="gpu-a", job="web",
              severity="warning")
    assert screen.event_line(e) == \
        "1970-01-01T00:00:00Z warning attempt-ended      node=gpu-a job=web attempt web.2 lost"


def test_event_line_format_without_node_or_job():
    e = Event(time=86400 + 3661.7, kind="fleet-partition", message="3 of 4 nodes silent", severity="alert")
    assert screen.event_line(e) == "1970-01-02T01:01:01Z alert   fleet-partition    3 of 4 nodes silent"


def test_event_line_is_utc_and_one_line():
    e = Event(time=NOW, kind="node-added", message="added to pool sim (local)", node="sim-0")
    line = screen.event_line(e)
    assert line.startswith(time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(NOW)) + " info    node-added ")
    assert line.endswith(" node=sim-0 added to pool sim (local)")
    assert "\n" not in line
