"""Which ended jobs may leave the store (delete, prune, retention), and the removal itself on a
real SQLite store.

Guards against: deleting the attempt row a node's kill list still needs (a copy that outlived its
stop would then run unwatched), a reused job name reusing an attempt id a node still keeps, and
prune taking live or recent jobs.
"""

from __future__ import annotations

import pytest

from gridctl.lifecycle import prunable, prune_store, why_kept
from gridctl.models import Attempt, AttemptState, Event, JobRecord, JobState, NodeRecord, NodeState
from gridctl.store import connect, queries, write_tx

NOW = 1_000_000.0
DAY = 86400.0


def job(name: str, state: JobState = JobState.SUCCEEDED, updated_at: float = NOW - 10 * DAY, **kw) -> JobRecord:
    return JobRecord(name=name, spec={"name": name, "class": "batch", "command": "true", "gpus": 1}, state=state,
                     created_at=updated_at - 60, updated_at=updated_at, **kw)


def att(job_name: str, n: int, node: str = "n1", state: AttemptState = AttemptState.KILLED,
        reaped: bool = False) -> Attempt:
    return Attempt(id=f"{job_name}.{n}", job=job_name, n=n, replica=0, node=node, state=state, created_at=NOW - DAY,
                   ended_at=NOW - DAY, reaped=reaped)


@pytest.mark.parametrize("j, unreaped, why", [
    (job("a"), [], None),
    (job("a", JobState.RUNNING), [], "job a is running: only an ended job is deleted (cancel it first, or --force)"),
    (job("a", JobState.PENDING), [], "job a is pending: only an ended job is deleted (cancel it first, or --force)"),
    (job("a", JobState.CANCELLED), [att("a", 1)], "job a: its copies on n1 are not yet confirmed gone (the next "
                                                  "probe of that node kills any still alive and confirms)"),
    (job("a", JobState.CANCELLED), [att("a", 1, node="gone")], None),       # no probe goes to a removed node
    (job("a", JobState.CANCELLED), [att("b", 1)], None),                    # another job's attempt
    (job("a", JobState.FAILED, restart_asked=1), [], "job a has a restart waiting for the next pass"),
])
def test_why_kept(j, unreaped, why):
    assert why_kept(j, unreaped, {"n1", "n2"}) == why


def test_prunable_takes_only_old_ended_jobs_whose_copies_are_confirmed_gone():
    jobs = [job("old-done"), job("old-fenced", JobState.CANCELLED), job("recent", updated_at=NOW - DAY),
            job("old-running", JobState.RUNNING), job("old-failed", JobState.FAILED)]
    assert prunable(jobs, [att("old-fenced", 2)], {"n1"}, NOW - 7 * DAY) == ["old-done", "old-failed"]


def test_prune_store_keeps_what_the_kill_list_needs_and_a_new_job_of_a_deleted_name_numbers_after_it(tmp_path):
    conn = connect(tmp_path / "state.db")
    try:
        with write_tx(conn):
            queries.save_node(conn, NodeRecord(name="n1", pool="p", provider="ssh", host="n1.example", port=22,
                                               state=NodeState.READY), NOW)
            for j in (job("old"), job("fenced", JobState.CANCELLED), job("recent", updated_at=NOW - DAY)):
                queries.insert_job(conn, j)
                queries.save_job(conn, j)
            conn.execute("UPDATE jobs SET attempts_made = 7 WHERE name = 'old'")
            queries.save_attempt(conn, att("old", 7, reaped=True))
            queries.save_attempt(conn, att("fenced", 1))                   # on n1's kill list
            queries.add_events(conn, [Event(NOW - 9 * DAY, "attempt-ended", "old news", job="old"),
                                      Event(NOW - 9 * DAY, "node-state", "old node news", node="n1"),
                                      Event(NOW - DAY, "node-state", "fresh news", node="n1")])
        with write_tx(conn):
            done = prune_store(conn, jobs_before=NOW - 7 * DAY, events_before=NOW - 7 * DAY, now=NOW)
        assert (done.jobs, done.kept) == (["old"], 1)
        assert done.events == 1                 # "old news" went with its job; "old node news" by age
        assert sorted(queries.load_jobs(conn)) == ["fenced", "recent"]
        assert [a.id for a in queries.load_attempts(conn, unreaped=True)] == ["fenced.1"]
        assert [e.message for e in queries.list_events(conn)] == ["fresh news"]
        with write_tx(conn):
            assert queries.insert_job(conn, job("old", JobState.PENDING, updated_at=NOW))
        assert queries.get_job(conn, "old").attempts_made == 7       # its next attempt is old.8, never old.1
    finally:
        conn.close()


def test_a_retention_batch_is_not_filled_by_jobs_a_silent_node_keeps(tmp_path, monkeypatch):
    import gridctl.lifecycle as lifecycle
    monkeypatch.setattr(lifecycle, "JOBS_PER_PASS", 2)
    conn = connect(tmp_path / "state.db")
    try:
        with write_tx(conn):
            queries.save_node(conn, NodeRecord(name="n1", pool="p", provider="ssh", host="n1.example", port=22,
                                               state=NodeState.SUSPECT), NOW)
            for i, name in enumerate(["kept-a", "kept-b", "done"]):       # the kept ones are the oldest
                j = job(name, JobState.CANCELLED, updated_at=NOW - 20 * DAY + i)
                queries.insert_job(conn, j)
                queries.save_job(conn, j)
            queries.save_attempt(conn, att("kept-a", 1))
            queries.save_attempt(conn, att("kept-b", 1))
        with write_tx(conn):
            done = prune_store(conn, jobs_before=NOW - 7 * DAY, events_before=None, now=NOW, limit=True)
        assert done.jobs == ["done"]
    finally:
        conn.close()
