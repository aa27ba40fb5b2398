"""Pure: how long a failover took, from the attempts and events the store keeps.

Called by demo.Demo.outcomes (which knows when it injected its fault) and by metrics (which does
not, and takes the node's last healthy probe before the detection as the fault's time). One rule
for both, so the demo's figures and the exported gauges can never disagree.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

from .models import Attempt, Event

DETECTION_KINDS = ("attempt-ended", "attempt-silent", "attempt-moving")
CLOCK_SLACK_S = 0.5     # a replacement recorded in the pass that saw the fault may start a hair before it


@dataclass(frozen=True)
class Failover:
    """One attempt that left its node because the node failed: the fault's time and the two spans."""

    job: str
    attempt: str
    node: str
    fault_at: float
    detect_s: float | None      # fault -> first event that took the attempt off its node
    recover_s: float | None     # fault -> first replacement started (or, with until_ready, ready) on another node


def failover_times(fault_at: float, job: str, attempt_id: str, node: str, events: Iterable[Event],
                   attempts: Iterable[Attempt], *, until_ready: bool = False) -> Failover:
    """Detection: the first `attempt-ended` / `attempt-silent` event naming the attempt at or after
    the fault. Recovery: the first attempt of the same job started on another node since the fault;
    with `until_ready` (a service with a readiness check), the first `replica-ready` event of such an
    attempt, since a replica that runs but does not answer serves nobody. Either is None while it has
    not happened."""
    events = list(events)
    detected = [e.time for e in events if e.job == job and e.time >= fault_at and e.kind in DETECTION_KINDS
                and f"attempt {attempt_id} " in e.message]
    replacements = [a for a in attempts if a.job == job and a.node != node and a.started_at is not None
                    and a.started_at >= fault_at - CLOCK_SLACK_S]
    if until_ready:
        recovered = [e.time for e in events if e.kind == "replica-ready" and e.job == job
                     and any(e.message.startswith(f"attempt {a.id} ") for a in replacements)]
    else:
        recovered = [a.started_at for a in replacements]
    return Failover(job, attempt_id, node, fault_at, min(detected) - fault_at if detected else None,
                    min(recovered) - fault_at if recovered else None)

