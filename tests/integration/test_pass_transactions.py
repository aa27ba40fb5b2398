"""The shape of one pass, counted through SQLite's trace callback: one read transaction (the
facts), one write for the plan, one for the actions' answers, and nothing else: no statement
outside a transaction, no write between network calls.

Guards against a pass that goes back and forth with the store (reading again after its own
writes, deciding in the write step), which lets a concurrent command's change be half-seen.
"""

from __future__ import annotations

import time

from helpers import stop_attempts, write_local_fleet
from txcount import TxCounter

from gridctl.jobspec import JobSpec
from gridctl.models import JobRecord
from gridctl.reconcile import reconcile_once
from gridctl.reconcile.observe import Transports
from gridctl.spec import load_fleet
from gridctl.store import connect, queries, write_tx


def _fleet(tmp_path):
    return load_fleet(write_local_fleet(tmp_path, "tx", gpus=2))


def test_a_pass_that_launches_reads_once_writes_the_plan_once_and_the_answers_once(tmp_path):
    fleet = _fleet(tmp_path)
    conn = connect(tmp_path / "state.db")
    transports = Transports(keep=False)
    try:
        reconcile_once(fleet, conn, transports, tmp_path)          # nodes become known
        spec = JobSpec.model_validate({"name": "web", "class": "service", "replicas": 2, "gpus": 1,
                                       "command": "sleep 300"})
        with write_tx(conn):
            now = time.time()
            queries.insert_job(conn, JobRecord("web", spec.to_store(), created_at=now, updated_at=now))
        with TxCounter(conn) as tx:
            report = reconcile_once(fleet, conn, transports, tmp_path)
        assert report.launches == 2
        assert tx.kinds() == ["read", "write", "write"], tx.transactions
        live = [a for a in queries.load_attempts(conn, jobs=["web"]) if a.state.live]
        assert sorted(a.state.value for a in live) == ["running", "running"]
    finally:
        stop_attempts(tmp_path)
        transports.close()
        conn.close()


def test_a_quiet_pass_has_the_same_three_transactions(tmp_path):
    fleet = _fleet(tmp_path)
    conn = connect(tmp_path / "state.db")
    transports = Transports(keep=False)
    try:
        reconcile_once(fleet, conn, transports, tmp_path)
        with TxCounter(conn) as tx:
            reconcile_once(fleet, conn, transports, tmp_path)
        assert tx.kinds() == ["read", "write", "write"], tx.transactions
    finally:
        transports.close()
        conn.close()
