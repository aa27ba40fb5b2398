"""The store under abuse (issue 11, items 8 and 12): a damaged state file, a write lock held by
someone else for longer than busy_timeout, and a state file deleted under a running loop. Each
ends as one clear line, never a traceback; a briefly locked store skips passes instead of killing
the loop, and a replaced store stops the loop loudly instead of writing into a deleted file.
"""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import time

import pytest

from helpers import GRIDCTL, gridctl, write_local_fleet


@pytest.fixture
def fleet(tmp_path):
    path = write_local_fleet(tmp_path, "abuse")
    assert gridctl("reconcile", "-f", path).returncode == 0
    return path


def _one_line_error(res: subprocess.CompletedProcess) -> str:
    assert "Traceback" not in res.stderr, res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    return lines[0]


def test_a_damaged_state_file_is_one_line_naming_it(fleet, tmp_path):
    db = tmp_path / "state.db"
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    size = db.stat().st_size
    assert size > 8192
    with open(db, "r+b") as f:          # scribble over every page after the header page
        f.seek(4096)
        f.write(b"\xa5" * (size - 4096))
    for command in (("nodes",), ("jobs",), ("reconcile",)):
        res = gridctl(*command, "-f", fleet)
        assert res.returncode != 0
        line = _one_line_error(res)
        assert "state.db" in line and "damaged" in line, line


def _loop(fleet, *extra):
    return subprocess.Popen([*GRIDCTL, "reconcile", "-f", str(fleet), "--loop", "--interval", "1s", *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _stop(proc) -> tuple[str, str]:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
    try:
        return proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.communicate()


def test_a_store_locked_longer_than_busy_timeout_skips_passes_and_the_loop_goes_on(fleet, tmp_path):
    proc = _loop(fleet)
    try:
        time.sleep(3)
        holder = sqlite3.connect(tmp_path / "state.db", isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")
        time.sleep(13)                   # over the loop's 10 s busy_timeout
        assert proc.poll() is None, _stop(proc)
        holder.execute("COMMIT")
        holder.close()
        time.sleep(5)
        assert proc.poll() is None, _stop(proc)
    finally:
        out, err = _stop(proc)
    assert "Traceback" not in err, err
    assert "store busy" in err, err
    res = gridctl("events", "-f", fleet, "--json")
    assert '"pass-skipped"' in res.stdout, res.stdout[-2000:]


def test_a_state_file_deleted_under_a_running_loop_stops_it_loudly(fleet, tmp_path):
    proc = _loop(fleet)
    try:
        time.sleep(3)
        for suffix in ("", "-wal", "-shm"):
            (tmp_path / f"state.db{suffix}").unlink(missing_ok=True)
        proc.wait(timeout=30)
    finally:
        out, err = _stop(proc)
    assert proc.returncode == 1, (out, err)
    line = _one_line_error(subprocess.CompletedProcess([], 1, out, err))
    assert "state.db" in line and ("removed" in line or "replaced" in line), line
    assert not (tmp_path / "state.db").exists() or (tmp_path / "state.db").stat().st_size == 0


def test_a_state_dir_open_to_others_is_warned_about(fleet, tmp_path):
    import os
    os.chmod(tmp_path, 0o777)
    res = gridctl("nodes", "-f", fleet)
    assert res.returncode == 0
    assert f"warning: state dir {tmp_path} is writable by others (mode 777)" in res.stderr, res.stderr
    os.chmod(tmp_path, 0o700)
    assert "warning" not in gridctl("nodes", "-f", fleet).stderr


def test_an_error_quoting_a_huge_input_stays_one_short_line(tmp_path):
    (tmp_path / "fleet.yaml").write_text(f"fleet: f\nstate: {tmp_path}/s.db\npools: [{{name: p, provider: local, "
                                         f"count: 1, dir: {tmp_path}/n, gpu: {{type: H100, count: 1}}}}]\n")
    res = gridctl("run", "-f", tmp_path / "fleet.yaml", "--name", "a", "--env", "x" * 100_000, "--", "true")
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert all(len(line) < 400 for line in res.stderr.splitlines()), [len(x) for x in res.stderr.splitlines()]
