"""The demo's per-fault router figures (demo_traffic.fault_figures, pure) and how the demo proves a
pid in an attempt dir is that attempt's before it signals it (launcher.local_attempt_pid).

Guards against: figures that count requests of another fault, take "before" from a window the
previous fault still disturbed, let failed requests into the latencies, or stop "during" at the
wrong time; a demo that freezes (SIGSTOP) a process that merely reuses an ended attempt's pid.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from gridctl.launcher import local_attempt_pid
from gridctl.demo_traffic import FailureKind, FaultWindow, Latency, failure_kinds, fault_figures
from gridctl.loadgen import Sample


def ok(start: float, ms: float) -> Sample:
    return Sample(start, ms / 1000, 200, "web.1")


def failed(start: float) -> Sample:
    return Sample(start, 0.002, 0, "", "ClientConnectorError: refused")


def test_requests_and_failures_count_from_a_fault_until_the_next_one():
    samples = [ok(1, 2), ok(9, 2), failed(11), ok(12, 3), failed(19), ok(21, 2), failed(35)]
    figs = fault_figures(samples, [FaultWindow(10, 15), FaultWindow(20, 25)])
    assert [(f.requests, f.failed) for f in figs] == [(3, 2), (2, 1)]


def test_before_starts_when_the_previous_fault_recovered_and_during_ends_at_recovery():
    samples = [ok(1, 1), ok(2, 1), ok(12, 500), ok(14, 400), ok(16, 9), ok(18, 9), ok(22, 700), ok(26, 5)]
    figs = fault_figures(samples, [FaultWindow(10, 15), FaultWindow(20, 25)])
    assert figs[0].before == Latency(0.001, 0.001)
    assert figs[0].during == Latency(0.4, 0.5)
    assert figs[1].before == Latency(0.009, 0.009)     # not the 500 ms the first fault caused
    assert figs[1].during == Latency(0.7, 0.7)


def test_a_fault_that_never_recovered_is_during_until_the_end():
    figs = fault_figures([ok(1, 1), ok(11, 30), ok(50, 90)], [FaultWindow(10, None)])
    assert figs[0].during == Latency(0.03, 0.09)
    assert figs[0].requests == 2


def test_failed_requests_count_as_failed_not_as_latency():
    figs = fault_figures([ok(1, 1), failed(11), ok(12, 4)], [FaultWindow(10, 20)])
    assert (figs[0].failed, figs[0].during) == (1, Latency(0.004, 0.004))


@pytest.mark.parametrize("latency, text", [
    (Latency(0.0021, 0.0119), "2/12 ms"),
    (Latency(0.002, 2.0134), "2/2013 ms"),
    (Latency(None, None), "-"),
])
def test_latency_text(latency, text):
    assert latency.text() == text


def test_no_samples_give_empty_figures():
    figs = fault_figures([], [FaultWindow(10, 12)])
    assert (figs[0].requests, figs[0].failed, figs[0].before.text(), figs[0].during.text()) == (0, 0, "-", "-")


def test_failures_are_grouped_by_what_came_back_most_frequent_first():
    bad = [Sample(12, 0.001, 503, ""), Sample(11, 0.001, 503, ""), failed(13),
           Sample(14, 2.0, 0, "", "ServerDisconnectedError: Server disconnected"), failed(15), failed(16)]
    assert failure_kinds(bad) == [FailureKind("no answer (ClientConnectorError)", 3, 13, 16),
                                  FailureKind("answered 503", 2, 11, 12),
                                  FailureKind("no answer (ServerDisconnectedError)", 1, 14, 14)]


def _start_ticks(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]


def test_attempt_pid_is_the_running_process_that_started_when_its_dir_says(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        (tmp_path / "pid").write_text(f"{proc.pid}\n")
        (tmp_path / "pid_start").write_text(_start_ticks(proc.pid) + "\n")
        assert local_attempt_pid(tmp_path) == proc.pid
        # the same pid with another start time is another process: never signalled
        (tmp_path / "pid_start").write_text(str(int(_start_ticks(proc.pid)) - 1) + "\n")
        assert local_attempt_pid(tmp_path) is None
    finally:
        proc.kill()
        proc.wait()
    (tmp_path / "pid_start").write_text("1\n")
    assert local_attempt_pid(tmp_path) is None                 # gone
    assert local_attempt_pid(tmp_path / "missing") is None
