"""store.connect / migrations / queries on a real SQLite file under tmp_path.

Guards against: a state file others can read, a database from a newer gridctl being silently
downgraded, sqlite's own exceptions leaking to the user, unbounded observation history, and a
failed pass leaving half its writes behind.
"""

from __future__ import annotations

import json
import os
import sqlite3
import stat
from dataclasses import replace

import pytest

from gridctl.errors import StoreError
from gridctl.models import (PassRecord, Contact, Event, Finding, GpuReading, Health, NodeRecord, NodeState, Observation,
                            Severity, Verdict)
from gridctl.store import connect, write_tx
from gridctl.store import deliveries, migrations, queries


@pytest.fixture
def db(tmp_path):
    conn = connect(tmp_path / "state" / "fleet.db")
    yield conn
    conn.close()


def node(name="n1", **kw) -> NodeRecord:
    base = dict(name=name, pool="p", provider="local", host="local", port=22)
    base.update(kw)
    return NodeRecord(**base)


def observation(name="n1", t=1000.0, temp=41.0) -> tuple[Observation, Verdict]:
    o = Observation(node=name, contact=Contact.OK, started_at=t, duration_s=0.2, node_time=int(t), boot_id="b1",
                    gpus=(GpuReading(index=0, bus_id="0000:18:00.0", temperature_c=temp),), complete=True)
    return o, Verdict(Health.HEALTHY, (), "1 GPUs healthy")


# ---------------------------------------------------------------- connect

def test_new_store_file_is_private(tmp_path):
    path = tmp_path / "state" / "fleet.db"
    connect(path).close()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700


def test_existing_store_file_is_made_private(tmp_path):
    path = tmp_path / "fleet.db"
    path.touch(mode=0o644)
    os.chmod(path, 0o644)
    connect(path).close()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_pragmas(db):
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    assert db.execute("PRAGMA busy_timeout").fetchone()[0] >= 1000
    assert db.execute("PRAGMA user_version").fetchone()[0] == migrations.SCHEMA_VERSION


def test_migrating_from_empty_creates_the_schema(tmp_path):
    path = tmp_path / "fleet.db"
    sqlite3.connect(path).close()    # an empty sqlite file, version 0
    conn = connect(path)
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"nodes", "observations", "events", "meta"} <= tables
    assert conn.execute("PRAGMA user_version").fetchone()[0] == migrations.SCHEMA_VERSION
    conn.close()


def test_connect_twice_is_a_no_op_migration(tmp_path):
    path = tmp_path / "fleet.db"
    conn = connect(path)
    with write_tx(conn):
        queries.save_node(conn, node(), 1.0)
    conn.close()
    conn = connect(path)
    assert list(queries.load_nodes(conn)) == ["n1"]
    assert migrations.migrate(conn) == migrations.SCHEMA_VERSION
    conn.close()


def test_refuses_a_database_from_a_newer_gridctl(tmp_path):
    path = tmp_path / "fleet.db"
    raw = sqlite3.connect(path)
    raw.execute(f"PRAGMA user_version = {migrations.SCHEMA_VERSION + 1}")
    raw.close()
    with pytest.raises(StoreError, match="newer") as e:
        connect(path)
    assert str(path) in str(e.value)
    raw = sqlite3.connect(path)
    assert raw.execute("PRAGMA user_version").fetchone()[0] == migrations.SCHEMA_VERSION + 1   # left alone
    raw.close()


def test_a_file_that_is_not_a_database_gives_store_error(tmp_path):
    path = tmp_path / "fleet.db"
    path.write_bytes(b"this is a text file, not SQLite\n" * 200)
    with pytest.raises(StoreError) as e:
        connect(path)
    assert not isinstance(e.value, sqlite3.Error)
    assert str(path) in str(e.value) and "not a gridctl state file" in str(e.value)


def test_a_directory_in_place_of_the_file_gives_store_error(tmp_path):
    path = tmp_path / "fleet.db"
    path.mkdir()
    with pytest.raises(StoreError, match="cannot open state file"):
        connect(path)


def test_state_dir_under_a_regular_file_gives_store_error(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(StoreError, match="cannot open state file"):
        connect(tmp_path / "file" / "x.db")


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions")
def test_unreadable_state_dir_gives_store_error(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o000)
    try:
        with pytest.raises(StoreError, match="permission denied"):
            connect(locked / "x.db")
    finally:
        locked.chmod(0o700)


def test_create_false_on_a_missing_store_says_run_reconcile(tmp_path):
    path = tmp_path / "none.db"
    with pytest.raises(StoreError, match="gridctl reconcile"):
        connect(path, create=False)
    assert not path.exists()


# ---------------------------------------------------------------- queries

def test_node_round_trip(db):
    findings = (Finding("xid", Severity.FATAL, "xid 79 on GPU 3 (0000:8a:00.0): fell off the bus", gpu=3,
                        needs_reset=True),
                Finding("auth-failed", Severity.UNHEALTHY, "refused", alert=True))
    n = node(state=NodeState.QUARANTINED, health=Health.UNHEALTHY, reason="xid 79", cordoned=True,
             cordon_reason="ops", failures=2, good=0, needs_release=True, boot_id="b1", last_seen=10.5,
             last_good=9.0, state_since=10.5, gpus_expected=8, gpus_seen=7, findings=findings)
    with write_tx(db):
        queries.save_node(db, n, 11.0)
        queries.save_node(db, node("n0"), 11.0)
    assert queries.load_nodes(db) == {"n0": node("n0"), "n1": n}
    assert list(queries.load_nodes(db)) == ["n0", "n1"]
    assert queries.get_node(db, "n1") == n
    assert queries.get_node(db, "nope") is None


def test_save_node_updates_in_place(db):
    with write_tx(db):
        queries.save_node(db, node(reason="a"), 1.0)
        queries.save_node(db, node(reason="b", state=NodeState.SUSPECT), 2.0)
    assert db.execute("SELECT COUNT(*) FROM nodes").fetchone()[0] == 1
    assert queries.get_node(db, "n1").reason == "b"


def test_record_observation_keeps_only_the_newest(db):
    with write_tx(db):
        queries.save_node(db, node("n1"), 1.0)
        queries.save_node(db, node("n2"), 1.0)
        for i in range(queries.OBSERVATIONS_KEPT + 15):
            queries.record_observation(db, *observation("n1", t=1000.0 + i, temp=float(i)))
        queries.record_observation(db, *observation("n2", t=5.0))
    count = dict(db.execute("SELECT node, COUNT(*) FROM observations GROUP BY node").fetchall())
    assert count == {"n1": queries.OBSERVATIONS_KEPT, "n2": 1}
    oldest = db.execute("SELECT MIN(time) FROM observations WHERE node = 'n1'").fetchone()[0]
    assert oldest == 1000.0 + 15
    latest = queries.latest_observation(db, "n1")
    assert latest["max_temp_c"] == float(queries.OBSERVATIONS_KEPT + 14)
    assert latest["gpus"][0]["bus_id"] == "0000:18:00.0" and latest["contact"] == "ok"
    assert queries.latest_max_temps(db) == {"n1": float(queries.OBSERVATIONS_KEPT + 14), "n2": 41.0}


def test_observation_for_an_unknown_node_violates_the_foreign_key(db):
    with pytest.raises(sqlite3.IntegrityError):
        with write_tx(db):
            queries.record_observation(db, *observation("ghost"))


def test_deleting_a_node_deletes_its_observations(db):
    with write_tx(db):
        queries.save_node(db, node(), 1.0)
        queries.record_observation(db, *observation())
    with write_tx(db):
        queries.delete_node(db, "n1")
    assert db.execute("SELECT COUNT(*) FROM observations").fetchone()[0] == 0
    assert queries.latest_observation(db, "n1") is None


def test_events_round_trip_with_since_node_and_limit(db):
    evs = [Event(100.0, "node-added", "added", node="a"),
           Event(200.0, "node-state", "ready -> suspect: x", node="b", severity="warning"),
           Event(300.0, "fleet-partition", "3 of 4 silent", severity="alert"),
           Event(400.0, "alert", "host key changed", node="a", job="j1", severity="alert")]
    with write_tx(db):
        queries.add_events(db, evs)
    assert queries.list_events(db) == evs                                   # oldest first
    assert queries.list_events(db, since=200.0) == evs[1:]
    assert queries.list_events(db, node="a") == [evs[0], evs[3]]
    assert queries.list_events(db, since=150.0, node="a") == [evs[3]]
    assert queries.list_events(db, limit=2) == evs[2:]                      # the newest two
    assert queries.list_events(db, node="nobody") == []


def test_meta_and_cordon(db):
    with write_tx(db):
        queries.set_meta(db, "partitions", "fleet")
        queries.save_node(db, node(), 1.0)
    assert queries.get_meta(db, "partitions") == "fleet"
    with write_tx(db):
        queries.set_meta(db, "partitions", None)
        cordoned = queries.set_cordon(db, "n1", True, "maintenance", 2.0)
        assert queries.set_cordon(db, "ghost", True, "x", 2.0) is None
    assert queries.get_meta(db, "partitions") is None
    assert cordoned.cordoned and queries.get_node(db, "n1").cordon_reason == "maintenance"
    with write_tx(db):
        queries.set_cordon(db, "n1", False, "ignored", 3.0)
    assert queries.get_node(db, "n1").cordoned is False and queries.get_node(db, "n1").cordon_reason == ""


# ---------------------------------------------------------------- write_tx

def test_write_tx_rolls_back_on_exception(db):
    with write_tx(db):
        queries.save_node(db, node(reason="before"), 1.0)
        queries.add_events(db, [Event(1.0, "node-added", "x", node="n1")])
    with pytest.raises(RuntimeError):
        with write_tx(db):
            queries.save_node(db, node(reason="after"), 2.0)
            queries.save_node(db, node("n2"), 2.0)
            queries.add_events(db, [Event(2.0, "node-state", "y", node="n1")])
            raise RuntimeError("killed mid-pass")
    assert not db.in_transaction
    assert {n: r.reason for n, r in queries.load_nodes(db).items()} == {"n1": "before"}
    assert [e.message for e in queries.list_events(db)] == ["x"]


def test_write_tx_is_visible_to_another_connection_only_after_commit(tmp_path):
    path = tmp_path / "fleet.db"
    a, b = connect(path), connect(path)
    try:
        with write_tx(a):
            queries.save_node(a, node(), 1.0)
            assert queries.load_nodes(b) == {}
        assert list(queries.load_nodes(b)) == ["n1"]
    finally:
        a.close()
        b.close()


def test_a_pass_writing_a_node_it_read_before_a_cordon_does_not_undo_the_cordon(db):
    with write_tx(db):
        queries.save_node(db, node(state=NodeState.READY, reason="4 GPUs healthy"), 1.0)
    seen_by_pass = queries.get_node(db, "n1")                   # the pass's read
    with write_tx(db):                                          # `gridctl drain` commits meanwhile
        queries.set_cordon(db, "n1", True, "bios update", 2.0, draining=True)
    with write_tx(db):                                          # the pass's write, from its read
        queries.save_node(db, replace(seen_by_pass, state=NodeState.SUSPECT, reason="probe slow"), 3.0)
    row = queries.get_node(db, "n1")
    assert (row.state, row.reason) == (NodeState.SUSPECT, "probe slow")
    assert (row.cordoned, row.cordon_reason, row.draining) == (True, "bios update", True)


def test_wal_side_files_are_private(tmp_path):
    path = tmp_path / "fleet.db"
    a = connect(path)
    with write_tx(a):
        queries.save_node(a, node(), 1.0)
    b = connect(path)   # side files exist while a connection is open; connect tightens them
    for suffix in ("-wal", "-shm"):
        side = tmp_path / f"fleet.db{suffix}"
        assert side.exists(), f"{side}: no side file to check"
        assert stat.S_IMODE(side.stat().st_mode) == 0o600
    a.close()
    b.close()


# ---------------------------------------------------------------- migrating a store that has rows

XID = {"code": "xid", "severity": "fatal", "message": "xid 79 on GPU 3 (0000:8a:00.0): fell off the bus", "gpu": 3,
       "needs_reset": True, "alert": False}
JOB_SPEC = {"name": "web", "class": "service", "command": "serve", "gpus": 1, "replicas": 2}


def _store_at_version(path, version: int) -> sqlite3.Connection:
    """A store as gridctl left it at schema `version`: the shipped migrations up to it, nothing newer."""
    raw = sqlite3.connect(path, isolation_level=None)
    for number in range(version):
        raw.execute("BEGIN")
        migrations.MIGRATIONS[number](raw)
        raw.execute(f"PRAGMA user_version = {number + 1}")
        raw.execute("COMMIT")
    return raw


def _fill(raw: sqlite3.Connection, version: int) -> None:
    """Rows a store of that version held, written with that version's columns only."""
    raw.execute("INSERT INTO nodes (name, pool, provider, host, port, state, health, reason, cordoned, cordon_reason,"
                " failures, good, needs_release, boot_id, last_seen, last_good, state_since, gpus_expected, gpus_seen,"
                " findings, updated_at) VALUES ('gpu-a', 'onprem', 'ssh', '10.0.0.5', 2222, 'quarantined', 'unhealthy',"
                " 'xid 79 on GPU 3', 1, 'rma', 2, 0, 1, 'boot-1', 100.5, 90.0, 95.0, 8, 7, ?, 100.5)", (json.dumps([XID]),))
    raw.execute("INSERT INTO nodes (name, pool, provider, host, port, state, health) VALUES"
                " ('gpu-b', 'onprem', 'ssh', 'gpu-b.example', 22, 'ready', 'healthy')")
    raw.execute("INSERT INTO observations (node, time, contact, health, reason, findings, gpus, max_temp_c, duration_s,"
                " boot_id, node_time) VALUES ('gpu-a', 100.5, 'ok', 'unhealthy', 'xid 79 on GPU 3', ?, ?, 71.5, 0.4,"
                " 'boot-1', 100)", (json.dumps([XID]), json.dumps([{"index": 0, "temperature_c": 71.5}])))
    raw.execute("INSERT INTO events (time, kind, severity, node, message) VALUES"
                " (100.5, 'node-state', 'warning', 'gpu-a', 'ready -> quarantined: xid 79 on GPU 3')")
    raw.execute("INSERT INTO meta (key, value) VALUES ('partitions', 'pool:onprem')")
    if version >= 2:
        raw.execute("UPDATE nodes SET draining = 1 WHERE name = 'gpu-a'")
        raw.execute("INSERT INTO jobs (name, spec, class, state, reason, reason_code, created_at, updated_at, restarts,"
                    " failures, next_try_at, pending_since, cancel_requested, attempts_made) VALUES ('web', ?, 'service',"
                    " 'running', '2/2 replicas running', 'running', 50.0, 100.5, 1, 0, NULL, NULL, 0, 3)",
                    (json.dumps(JOB_SPEC),))
        raw.execute("INSERT INTO attempts (id, job, n, replica, node, state, reason, gpus, created_at, started_at,"
                    " ended_at, exit_code, pid, heartbeat_at, silent_since, outcome, reaped) VALUES ('web.1', 'web', 1,"
                    " 0, 'gpu-a', 'lost', 'node gpu-a quarantined', '[\"GPU-1\"]', 50.0, 51.0, 100.5, NULL, 4242, 99.0,"
                    " NULL, 'node', 0)")
        raw.execute("INSERT INTO attempts (id, job, n, replica, node, state, reason, gpus, created_at, started_at, pid)"
                    " VALUES ('web.3', 'web', 3, 0, 'gpu-b', 'running', 'running', '[\"GPU-7\"]', 100.5, 101.0, 77)")
        raw.execute("INSERT INTO events (time, kind, severity, node, job, message) VALUES"
                    " (100.5, 'attempt-ended', 'warning', 'gpu-a', 'web', 'attempt web.1 on gpu-a lost')")
    if version >= 3:
        raw.execute("INSERT INTO launches (request_id, pool, count, created_at) VALUES ('req-1', 'aws-l4', 2, 99.0)")
    if version >= 4:
        raw.execute("""UPDATE nodes SET cloud = '{"zone": "us-east-1a", "spot": "true"}' WHERE name = 'gpu-b'""")
    if version >= 5:
        raw.execute("UPDATE attempts SET port = NULL, ready = 0 WHERE job = 'web'")


@pytest.mark.parametrize("version", range(1, migrations.SCHEMA_VERSION))
def test_a_store_from_an_earlier_version_keeps_its_rows_when_migrated(tmp_path, version):
    path = tmp_path / "fleet.db"
    raw = _store_at_version(path, version)
    _fill(raw, version)
    raw.close()

    conn = connect(path)
    try:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == migrations.SCHEMA_VERSION
        assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
        nodes = queries.load_nodes(conn)
        assert nodes["gpu-a"] == NodeRecord(
            name="gpu-a", pool="onprem", provider="ssh", host="10.0.0.5", port=2222, state=NodeState.QUARANTINED,
            health=Health.UNHEALTHY, reason="xid 79 on GPU 3", cordoned=True, cordon_reason="rma", failures=2, good=0,
            needs_release=True, boot_id="boot-1", last_seen=100.5, last_good=90.0, state_since=95.0, gpus_expected=8,
            gpus_seen=7, findings=(Finding("xid", Severity.FATAL, XID["message"], gpu=3, needs_reset=True),),
            draining=version >= 2)
        assert nodes["gpu-b"] == NodeRecord(
            name="gpu-b", pool="onprem", provider="ssh", host="gpu-b.example", port=22, state=NodeState.READY,
            health=Health.HEALTHY, reason="", cloud=(("spot", "true"), ("zone", "us-east-1a")) if version >= 4 else ())
        obs = queries.latest_observation(conn, "gpu-a")
        assert (obs["time"], obs["contact"], obs["boot_id"], obs["node_time"], obs["max_temp_c"]) == \
            (100.5, "ok", "boot-1", 100, 71.5)
        assert obs["findings"] == [XID]
        assert obs["probe_path"] == "sh"          # every observation before v10 came by the sh probe
        assert queries.kernel_log_positions(conn) == {}     # older observations have no boot-relative time
        assert queries.get_meta(conn, "partitions") == "pool:onprem"
        events = [(e.kind, e.node, e.job, e.message) for e in queries.list_events(conn)]
        assert events[0] == ("node-state", "gpu-a", None, "ready -> quarantined: xid 79 on GPU 3")
        if version >= 2:
            assert events[1:] == [("attempt-ended", "gpu-a", "web", "attempt web.1 on gpu-a lost")]
            job = queries.get_job(conn, "web")
            assert (job.spec, job.state.value, job.reason, job.restarts, job.attempts_made) == \
                (JOB_SPEC, "running", "2/2 replicas running", 1, 3)
            assert [(a.id, a.state.value, a.node, a.gpus, a.pid, a.outcome, a.reaped) for a in
                    queries.load_attempts(conn, jobs=["web"])] == [
                ("web.1", "lost", "gpu-a", ("GPU-1",), 4242, "node", False),
                ("web.3", "running", "gpu-b", ("GPU-7",), 77, None, False)]
            assert list(queries.load_jobs(conn, active_only=True)) == ["web"]
            assert job.cancel_by == "user"                   # v6's default for jobs written before it
            assert (job.restart_asked, job.restart_done) == (0, 0)   # v8: no restart asked
            assert [(a.port, a.ready, a.check_failures) for a in queries.load_attempts(conn, jobs=["web"])] == \
                [(None, False, 0), (None, False, 0)]         # v5's defaults: no port, not ready
        else:
            assert events[1:] == [] and queries.load_jobs(conn) == {}
        assert queries.open_launches(conn) == ({"aws-l4": ("req-1", 2, 99.0)} if version >= 3 else {})
        assert queries.latest_passes(conn) == {}            # v8: no pass recorded before it
        # and the migrated store takes the writes of this version
        with write_tx(conn):
            queries.save_node(conn, replace(nodes["gpu-b"], reason="4 GPUs healthy"), 200.0)
            queries.record_launch(conn, "req-2", "gcp-a100", 1, 200.0)
            queries.record_pass(conn, PassRecord("ctl.example", 7, "loop", 15.0, 199.0, 1.0, nodes=2))
        assert queries.get_node(conn, "gpu-b").reason == "4 GPUs healthy"
        assert queries.latest_passes(conn)["loop"].ended_at == 200.0
        # v9: alert hooks start after the events already there, and record deliveries of new ones
        assert deliveries.undelivered(conn) == [] and len(deliveries.store_id(conn)) == 16
        with write_tx(conn):
            assert deliveries.ensure_hook(conn, "k1", "webhook https://hooks.example/…") == len(events)
            queries.add_events(conn, [Event(200.0, "alert", "host key changed", node="gpu-b", severity="alert")])
            deliveries.queue(conn, "k1", [len(events) + 1], 200.0)
        assert [(i, e.kind, dl.state) for i, e, dl, _ in deliveries.undelivered(conn)] == \
            [(len(events) + 1, "alert", "pending")]
    finally:
        conn.close()


def test_the_passes_table_keeps_only_the_newest(db, monkeypatch):
    monkeypatch.setattr(queries, "PASSES_KEPT", 3)
    for i in range(5):
        with write_tx(db):
            queries.record_pass(db, PassRecord("ctl.example", 100 + i, "loop", 15.0, float(i), 0.5, nodes=2))
    assert [r["pid"] for r in db.execute("SELECT pid FROM passes ORDER BY id")] == [102, 103, 104]
    assert queries.latest_passes(db)["loop"].pid == 104
