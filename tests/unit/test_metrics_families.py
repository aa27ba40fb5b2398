"""Metrics: the families read from a real SQLite store, parsed back by prometheus_client's own
parser; failover timing (one function for demo and metrics); bounded labels; the Grafana
dashboard only naming families gridctl exports; the flag's bad input; no prometheus_client at
`gridctl --help`.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families
from promsamples import key, samples

from gridctl.errors import ConfigError, GridctlError
from gridctl.failover import failover_times
from gridctl.metrics.exporter import PassMetrics, exposition, parse_addr, store_registry
from gridctl.models import (Attempt, AttemptState, Contact, Event, Finding, GpuReading, Health, JobRecord, JobState,
                            NodeRecord, NodeState, Observation, Outcome, PassRecord, Severity, Verdict)
from gridctl.store import connect, queries, write_tx

REPO = Path(__file__).resolve().parents[2]
T0 = 1_700_000_000.0
GPU_UUID = "GPU-1a2b3c4d-0000-1111-2222-333344445555"



def _obs(node: str, t: float, health: Health, gpus=()) -> tuple[Observation, Verdict]:
    return (Observation(node=node, contact=Contact.OK, started_at=t, duration_s=0.25, gpus=gpus, complete=True),
            Verdict(health, (), health.value))


def _attempt(job: str, n: int, node: str, state: AttemptState, **kw) -> Attempt:
    return Attempt(id=f"{job}.{n}", job=job, n=n, replica=0, node=node, state=state, created_at=T0, **kw)


@pytest.fixture
def store(tmp_path):
    """Two nodes (a quarantined after xid 79, b ready), a batch job moved from a to b, a service
    pending, and three passes' meta. Times are fixed so every figure has one right answer."""
    path = tmp_path / "state.db"
    conn = connect(path)
    xid = Finding("xid", Severity.FATAL, "xid 79 on GPU 0 (0000:18:00.0): fell off the bus", gpu=0, needs_reset=True)
    hostile = GpuReading(index=0, uuid='GPU-x"} evil{a="1\n', temperature_c=99.0)
    fine = GpuReading(index=0, uuid=GPU_UUID, temperature_c=41.0, utilization_pct=37.0, memory_used_mib=1024,
                      memory_total_mib=81559, power_w=71.5)
    with write_tx(conn):
        queries.save_node(conn, NodeRecord("a", "sim", "local", "local", 22, state=NodeState.QUARANTINED,
                                           health=Health.UNHEALTHY, gpus_expected=1, gpus_seen=1, findings=(xid,),
                                           last_good=T0 + 10), T0)
        queries.save_node(conn, NodeRecord("b", "sim", "local", "local", 22, state=NodeState.READY,
                                           health=Health.HEALTHY, gpus_expected=1, gpus_seen=1, last_good=T0 + 20), T0)
        queries.record_observation(conn, *_obs("a", T0 + 9.0, Health.HEALTHY))        # last healthy: the fault's date
        queries.record_observation(conn, *_obs("a", T0 + 19.0, Health.UNHEALTHY, (hostile,)))
        queries.record_observation(conn, *_obs("b", T0 + 19.0, Health.HEALTHY, (fine,)))
        queries.insert_job(conn, JobRecord("etl", {"class": "batch"}, JobState.RUNNING, created_at=T0, updated_at=T0))
        queries.save_job(conn, JobRecord("etl", {"class": "batch"}, JobState.RUNNING, restarts=1, updated_at=T0))
        queries.insert_job(conn, JobRecord("web", {"class": "service"}, created_at=T0, updated_at=T0))
        queries.save_attempt(conn, _attempt("etl", 1, "a", AttemptState.LOST, started_at=T0 + 1, ended_at=T0 + 20.5,
                                            outcome=Outcome.NODE))
        queries.save_attempt(conn, _attempt("etl", 2, "b", AttemptState.RUNNING, started_at=T0 + 22.5))
        queries.add_events(conn, [Event(T0 + 20.5, "attempt-ended", "attempt etl.1 on a lost: node a quarantined",
                                        node="a", job="etl")])
        queries.record_pass(conn, PassRecord("ctl", 1, "loop", 2.0, T0 + 20.5, 2.5, nodes=2))
    yield path
    conn.close()


def test_store_families_have_the_right_values_after_a_node_is_quarantined(store):
    registry, collector = store_registry(store)
    try:
        got = samples(exposition(registry).decode())
    finally:
        collector.close()
    for state in NodeState:
        assert got[key("gridctl_node_state", node="a", pool="sim", state=state.value)] == \
            (1.0 if state is NodeState.QUARANTINED else 0.0)
        assert got[key("gridctl_node_state", node="b", pool="sim", state=state.value)] == \
            (1.0 if state is NodeState.READY else 0.0)
    assert got[key("gridctl_node_health", node="a", pool="sim", health="unhealthy")] == 1.0
    assert got[key("gridctl_node_findings", node="a", pool="sim", code="xid", severity="fatal")] == 1.0
    assert not [k for k in got if k[0] == "gridctl_node_findings" and ("node", "b") in k[1]]
    assert got[key("gridctl_node_gpus_seen", node="b", pool="sim")] == 1.0
    assert got[key("gridctl_node_gpus_expected", node="b", pool="sim")] == 1.0
    gpu = dict(node="b", gpu="0", uuid=GPU_UUID)
    assert got[key("gridctl_gpu_temperature_celsius", **gpu)] == 41.0
    assert got[key("gridctl_gpu_utilization_ratio", **gpu)] == pytest.approx(0.37)
    assert got[key("gridctl_gpu_memory_used_bytes", **gpu)] == 1024 * 1024 * 1024
    assert got[key("gridctl_gpu_memory_total_bytes", **gpu)] == 81559 * 1024 * 1024
    assert got[key("gridctl_gpu_power_watts", **gpu)] == 71.5
    assert got[key("gridctl_jobs", **{"class": "batch", "state": "running"})] == 1.0
    assert got[key("gridctl_jobs", **{"class": "service", "state": "pending"})] == 1.0
    assert got[key("gridctl_jobs", **{"class": "training", "state": "running"})] == 0.0
    assert got[key("gridctl_job_restarts_total", **{"class": "batch"})] == 1.0
    assert got[key("gridctl_attempts_started_total", **{"class": "batch"})] == 2.0
    assert got[key("gridctl_attempts_ended_total", **{"class": "batch", "outcome": "node"})] == 1.0
    assert got[key("gridctl_attempts_ended_total", **{"class": "batch", "outcome": "exit"})] == 0.0
    assert got[key("gridctl_last_pass_timestamp_seconds")] == T0 + 23.0
    assert got[key("gridctl_last_pass_duration_seconds")] == 2.5
    assert got[key("gridctl_seconds_since_last_pass")] == pytest.approx(time.time() - (T0 + 23.0), abs=60)
    # fault dated by a's last healthy probe (T0+9); detected T0+20.5; replacement started T0+22.5
    assert got[key("gridctl_last_failover_timestamp_seconds")] == T0 + 9.0
    assert got[key("gridctl_last_failover_detection_seconds")] == pytest.approx(11.5)
    assert got[key("gridctl_last_failover_recovery_seconds")] == pytest.approx(13.5)


def test_a_hostile_gpu_uuid_from_a_node_never_becomes_a_label_value(store):
    registry, collector = store_registry(store)
    try:
        text = exposition(registry).decode()
    finally:
        collector.close()
    got = samples(text)
    assert got[key("gridctl_gpu_temperature_celsius", node="a", gpu="0", uuid="")] == 99.0
    assert "evil" not in text


def test_labels_stay_bounded_no_job_or_attempt_ids(store):
    registry, collector = store_registry(store)
    try:
        got = samples(exposition(registry).decode())
    finally:
        collector.close()
    values = {v for _, labels in got for _, v in labels}
    assert not values & {"etl", "web", "etl.1", "etl.2"}
    names = {k for _, labels in got for k, _ in labels}
    assert names <= {"node", "pool", "state", "health", "code", "severity", "gpu", "uuid", "class", "outcome", "scope"}


def test_last_failover_is_dated_by_node_last_good_when_probe_history_is_trimmed(tmp_path):
    conn = connect(tmp_path / "state.db")
    try:
        with write_tx(conn):
            queries.save_node(conn, NodeRecord("a", "sim", "local", "local", 22, state=NodeState.QUARANTINED,
                                               last_good=T0 + 5), T0)
            queries.insert_job(conn, JobRecord("etl", {"class": "batch"}, created_at=T0, updated_at=T0))
            queries.save_attempt(conn, _attempt("etl", 1, "a", AttemptState.LOST, started_at=T0, ended_at=T0 + 8,
                                                outcome=Outcome.NODE))
            queries.add_events(conn, [Event(T0 + 8, "attempt-ended", "attempt etl.1 on a lost", node="a", job="etl")])
        registry, collector = store_registry(tmp_path / "state.db")
        got = samples(exposition(registry).decode())
        collector.close()
    finally:
        conn.close()
    assert got[key("gridctl_last_failover_detection_seconds")] == pytest.approx(3.0)
    assert key("gridctl_last_failover_recovery_seconds") not in got     # no replacement yet: no figure


def test_failover_times_takes_the_first_detection_and_the_first_replacement_elsewhere():
    events = [Event(105.0, "attempt-silent", "attempt j.1 on a: node silent, process state unknown", job="j"),
              Event(109.0, "attempt-ended", "attempt j.1 on a lost: silent for 4s", job="j"),
              Event(104.0, "attempt-ended", "attempt j.10 on c exited", job="j"),         # another attempt
              Event(99.0, "attempt-ended", "attempt j.1 on a exited", job="j")]          # before the fault
    attempts = [_attempt("j", 1, "a", AttemptState.LOST, started_at=50.0),
                _attempt("j", 2, "a", AttemptState.RUNNING, started_at=106.0),           # same node: no failover
                _attempt("j", 3, "b", AttemptState.RUNNING, started_at=107.0)]
    took = failover_times(100.0, "j", "j.1", "a", events, attempts)
    assert (took.detect_s, took.recover_s) == (5.0, 7.0)
    assert failover_times(100.0, "j", "j.1", "a", [], attempts[:2]).recover_s is None


def test_pass_metrics_drop_nodes_that_left_the_fleet():
    from gridctl.reconcile import PassReport
    from gridctl.reconcile.loop import Busy
    registry = CollectorRegistry()
    live = PassMetrics(registry)
    live.observe(PassReport(T0, 1.5, [], [], frozenset(), {}, probe_s={"a": 0.2, "b": 0.3}))
    live.observe(PassReport(T0, 0.5, [], [], frozenset(), {}, probe_s={"b": 0.1}))
    live.observe(Busy(123, T0))
    got = samples(exposition(registry).decode())
    assert got[key("gridctl_pass_duration_seconds_count")] == 2.0
    assert got[key("gridctl_pass_duration_seconds_sum")] == 2.0
    assert got[key("gridctl_probe_duration_seconds_count", node="b")] == 2.0
    assert not [k for k in got if k[0].startswith("gridctl_probe_duration") and ("node", "a") in k[1]]
    assert got[key("gridctl_passes_total", result="ran")] == 2.0
    assert got[key("gridctl_passes_total", result="busy")] == 1.0


@pytest.mark.parametrize("text", ["9100", "127.0.0.1", "127.0.0.1:", ":9100", "127.0.0.1:0", "127.0.0.1:70000",
                                  "127.0.0.1:http"])
def test_bad_metrics_addr_names_the_flag(text):
    with pytest.raises(ConfigError) as e:
        parse_addr(text)
    assert str(e.value).startswith(f"--metrics-addr {text}: expected HOST:PORT")


def test_metrics_addr_accepts_ipv4_and_bracketed_ipv6():
    assert parse_addr("127.0.0.1:9100") == ("127.0.0.1", 9100)
    assert parse_addr("[::1]:9100") == ("::1", 9100)


def exported_names(store_path: Path) -> set[str]:
    """Every sample name gridctl can export: the store's families (a store with every figure) and a
    running loop's own."""
    registry, collector = store_registry(store_path)
    try:
        live = PassMetrics(registry)
        from gridctl.reconcile import PassReport
        live.observe(PassReport(T0, 1.0, [], [], frozenset(), {}, probe_s={"a": 0.2}))
        return {name for name, _ in samples(exposition(registry).decode())} | \
            {f.name for f in text_string_to_metric_families(exposition(registry).decode())}
    finally:
        collector.close()


def test_every_grafana_expr_names_a_family_gridctl_exports(store):
    dashboard = json.loads((REPO / "configs" / "grafana" / "gridctl.json").read_text())
    exprs = []

    def walk(value):
        if isinstance(value, dict):
            exprs.extend(v for k, v in value.items() if k == "expr" and isinstance(v, str))
            for v in value.values():
                walk(v)
        elif isinstance(value, list):
            for v in value:
                walk(v)

    walk(dashboard)
    assert len(exprs) >= 10
    names = exported_names(store)
    used = {m for e in exprs for m in re.findall(r"\bgridctl_[a-z_]+", e)}
    assert used and used - names == set()
    assert all(re.search(r"\bgridctl_[a-z_]+", e) for e in exprs), "an expr that names no gridctl family"


def test_gridctl_help_does_not_import_prometheus_client(tmp_path):
    code = ("import sys\nfrom gridctl.cli import main\nsys.argv = ['gridctl', '--help']\n"
            "try:\n    main()\nexcept SystemExit:\n    pass\n"
            "print('LOADED' if any(m.startswith('prometheus_client') for m in sys.modules) else 'CLEAN')\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=tmp_path,
                          env={"PYTHONPATH": str(REPO), "HOME": str(tmp_path), "PATH": "/usr/bin:/bin"})
    assert done.stdout.strip().endswith("CLEAN"), done.stdout + done.stderr


def test_a_store_from_before_the_passes_table_still_says_when_it_last_passed(tmp_path):
    conn = connect(tmp_path / "state.db")
    try:
        with write_tx(conn):
            queries.set_meta(conn, "last_pass", repr(T0))
            queries.set_meta(conn, "last_pass_s", "1.250")
        assert queries.last_pass_done(conn) == (T0, 1.25)
        with write_tx(conn):
            queries.record_pass(conn, PassRecord("ctl", 1, "once", None, T0 + 2, 0.5, nodes=1))
        assert queries.last_pass_done(conn) == (T0 + 2.5, 0.5)
    finally:
        conn.close()


def test_a_server_scrape_of_an_unreadable_store_says_so_in_a_gauge_and_one_stderr_line(tmp_path, capsys):
    path = tmp_path / "state.db"
    path.write_bytes(b"this is not a database" * 100)
    registry, collector = store_registry(path, strict=False)
    first, second = samples(exposition(registry).decode()), samples(exposition(registry).decode())
    assert first == second == {key("gridctl_store_readable"): 0.0}
    err = capsys.readouterr().err
    assert err.count("warning: metrics: ") == 1 and "Traceback" not in err, err
    strict, _ = store_registry(path)
    with pytest.raises(GridctlError):
        exposition(strict)
