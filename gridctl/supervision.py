"""Pure: is anything reconciling this fleet? The one staleness rule, read from the passes table.

Called by `gridctl status` and by `jobs`, `nodes` and `run` (which warn on stderr when nothing is).
No I/O; tested table-style.

Only a supervisor's passes count: a loop (`reconcile --loop`, `watch`, `demo`) or `gridctl
reconcile` run once (by cron, say). The pass a writing command runs for itself (`run`, `cancel`,
`drain`) does not: nothing watches the job after that command returns. The newest supervising
pass decides: a loop's is stale after LOOP_INTERVALS of its interval, a single pass's after
NO_LOOP_LIMIT_S (a loop whose passes take longer than its interval: of its last pass's duration).
"""

from __future__ import annotations

from dataclasses import dataclass

from .models import PassRecord

LOOP_INTERVALS = 3
NO_LOOP_LIMIT_S = 120.0
SUPERVISORS = ("loop", "once")


@dataclass(frozen=True)
class Supervision:
    ok: bool
    last: PassRecord | None          # the newest supervising pass, if any
    age_s: float | None              # since it ended
    limit_s: float                   # older than this is stale

    def summary(self) -> str:
        """One line for a person: who reconciles and when it last did, or that nothing does."""
        from .timefmt import age
        if self.last is None:
            return "no reconcile pass recorded: nothing is reconciling this fleet (start `gridctl reconcile --loop`)"
        how = (f"loop every {age(self.last.interval_s)}" if self.last.mode == "loop" and self.last.interval_s
               else "`gridctl reconcile` once")
        who = f"{how} on {self.last.host} pid {self.last.pid}"
        if self.ok:
            return f"last pass {age(self.age_s)} ago: {who} (took {self.last.duration_s:.1f}s, {self.last.nodes} nodes)"
        return f"no pass for {age(self.age_s)}: nothing is reconciling this fleet (last: {who})"


def supervision(latest: dict[str, PassRecord], now: float) -> Supervision:
    """`latest`: mode -> the newest pass of that mode (queries.latest_passes)."""
    runs = [p for mode, p in latest.items() if mode in SUPERVISORS]
    if not runs:
        return Supervision(False, None, None, NO_LOOP_LIMIT_S)
    last = max(runs, key=lambda p: p.ended_at)
    # a pass longer than the interval starts the next one late: the slower of the two sets the pace
    limit = (LOOP_INTERVALS * max(last.interval_s, last.duration_s) if last.mode == "loop" and last.interval_s
             else NO_LOOP_LIMIT_S)
    age_s = max(0.0, now - last.ended_at)
    return Supervision(age_s <= limit, last, age_s, limit)
