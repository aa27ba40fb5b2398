"""The agent's process table (gridctl/agent/node_host.py ProcTable), against real processes: /proc is
listed every LIST_S and a pid read when it appears, an nvidia-smi read on every scan, everything else
again only on the full re-read."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from gridctl.agent.node_host import ProcTable, procs, stuck_smi


@pytest.fixture
def spawn():
    started: list[subprocess.Popen] = []

    def start(argv: list[str]) -> subprocess.Popen:
        started.append(subprocess.Popen(argv, start_new_session=True))
        return started[-1]

    yield start
    for proc in started:
        proc.kill()
        proc.wait(5)


@pytest.fixture
def smi(tmp_path) -> str:
    """A program whose process is named nvidia-smi (a copy of sleep)."""
    path = tmp_path / "nvidia-smi"
    shutil.copy(shutil.which("sleep"), path)
    return str(path)


def _entry(table: list, pid: int):
    (found,) = [e for e in table if e[0] == pid]
    return found


def _until(check, timeout: float = 5.0) -> None:
    end = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < end, "the process did not get there"
        time.sleep(0.02)


LIST = ProcTable.LIST_S


def test_a_new_process_is_read_at_the_next_listing_and_a_gone_one_dropped(spawn, smi):
    table = ProcTable()
    table.scan(0.0)
    proc, gpu = spawn(["sleep", "300"]), spawn([smi, "300"])
    _until(lambda: Path(f"/proc/{gpu.pid}/comm").read_text().strip() == "nvidia-smi")
    assert not [e for e in table.scan(1.0) if e[0] in (proc.pid, gpu.pid)]      # not listed yet
    seen = table.scan(LIST + 0.5)
    pid, comm, state, pgid, start = _entry(seen, proc.pid)
    assert (comm, pgid) == ("sleep", proc.pid) and state in "RS" and start > 0
    assert _entry(seen, gpu.pid)[1] == "nvidia-smi"
    for p in (proc, gpu):
        p.kill()
        p.wait(5)
    assert not [e for e in table.scan(LIST + 1.0) if e[0] == gpu.pid]           # an nvidia-smi gone: at once
    assert [e for e in table.scan(LIST + 1.5) if e[0] == proc.pid]              # anything else: at the listing
    assert not [e for e in table.scan(2 * LIST + 1.0) if e[0] == proc.pid]


def test_nvidia_smi_is_read_again_on_every_scan_anything_else_on_the_full_read(spawn, smi):
    table = ProcTable()
    other, gpu = spawn(["sleep", "300"]), spawn([smi, "300"])
    table.scan(0.0)
    for proc in (other, gpu):
        os.kill(proc.pid, signal.SIGSTOP)
        _until(lambda: Path(f"/proc/{proc.pid}/stat").read_text().split(") ")[1][0] == "T")
    for now in (1.0, LIST + 0.5):                           # before and at the next listing
        seen = table.scan(now)
        assert _entry(seen, gpu.pid)[2] == "T"              # nvidia-smi: its state now
        assert _entry(seen, other.pid)[2] in "RS"           # not read again within FULL_S
    assert _entry(table.scan(ProcTable.FULL_S + 0.5), other.pid)[2] == "T"
    for proc in (other, gpu):
        os.kill(proc.pid, signal.SIGCONT)


def test_a_process_that_execs_nvidia_smi_counts_from_the_full_read(spawn, smi):
    table = ProcTable()
    proc = spawn(["sh", "-c", f"sleep 1; exec {smi} 300"])
    assert _entry(table.scan(0.0), proc.pid)[1] == "sh"
    _until(lambda: Path(f"/proc/{proc.pid}/comm").read_text().strip() == "nvidia-smi")
    assert _entry(table.scan(LIST + 0.5), proc.pid)[1] == "sh"
    assert _entry(table.scan(ProcTable.FULL_S + 0.5), proc.pid)[1] == "nvidia-smi"


def test_the_table_agrees_with_a_fresh_read_and_counts_no_sleeping_smi(spawn, smi):
    ours = [spawn([smi, "300"]), spawn([smi, "300"]), spawn(["sleep", "300"])]
    for proc in ours:
        _until(lambda: Path(f"/proc/{proc.pid}/comm").read_text().strip() in ("nvidia-smi", "sleep"))
    table = ProcTable()
    scanned = {e[0]: e for e in table.scan(0.0)}
    fresh = {e[0]: e for e in procs()}
    assert [scanned[p.pid] for p in ours] == [fresh[p.pid] for p in ours]
    assert [scanned[p.pid][1] for p in ours] == ["nvidia-smi", "nvidia-smi", "sleep"]
    assert stuck_smi(table.scan(1.0)) == 0                  # asleep, not in D
