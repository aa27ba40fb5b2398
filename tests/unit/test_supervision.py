"""The one staleness rule behind `gridctl status` and the warning of `jobs`, `nodes` and `run`.

Guards against: a writing command's own pass (`run`) passing for supervision, a dead loop going
unnoticed, a slow-but-alive loop reported dead, and a cron `reconcile` user warned forever.
"""

from __future__ import annotations

import pytest

from gridctl.models import PassRecord
from gridctl.supervision import supervision

NOW = 10_000.0


def p(mode: str, ended_ago: float, interval_s: float | None = None, duration_s: float = 1.0) -> PassRecord:
    return PassRecord("ctl.example", 4242, mode, interval_s, NOW - ended_ago - duration_s, duration_s, nodes=3)


@pytest.mark.parametrize("latest, ok, limit_s", [
    ({}, False, 120.0),                                                        # no pass ever
    ({"command": p("command", 1)}, False, 120.0),                              # only `run`'s own pass
    ({"loop": p("loop", 40, 15)}, True, 45.0),                                 # within 3 intervals
    ({"loop": p("loop", 46, 15)}, False, 45.0),                                # loop gone: 3 intervals passed
    ({"loop": p("loop", 100, 15, duration_s=40)}, True, 120.0),                # slow passes set the pace
    ({"loop": p("loop", 46, 15), "command": p("command", 1)}, False, 45.0),    # `run` hides no dead loop
    ({"once": p("once", 119)}, True, 120.0),                                   # cron: 2 minutes
    ({"once": p("once", 121)}, False, 120.0),
    ({"loop": p("loop", 3600, 15), "once": p("once", 30)}, True, 120.0),       # newest supervisor decides
    ({"loop": p("loop", 5, 15), "once": p("once", 300)}, True, 45.0),
])
def test_staleness_rule(latest, ok, limit_s):
    state = supervision(latest, NOW)
    assert (state.ok, state.limit_s) == (ok, limit_s)


def test_a_dead_loop_is_named_in_red_words():
    state = supervision({"loop": p("loop", 14 * 60, 15)}, NOW)
    assert state.summary() == ("no pass for 14m: nothing is reconciling this fleet "
                               "(last: loop every 15s on ctl.example pid 4242)")


def test_no_pass_ever_says_how_to_start_one():
    assert "nothing is reconciling this fleet" in supervision({}, NOW).summary()
    assert "gridctl reconcile --loop" in supervision({}, NOW).summary()


def test_a_live_loop_says_who_and_when():
    assert supervision({"loop": p("loop", 5, 15)}, NOW).summary() == \
        "last pass 5s ago: loop every 15s on ctl.example pid 4242 (took 1.0s, 3 nodes)"
