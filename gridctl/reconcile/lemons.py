"""Pure: lemon nodes, where attempts of several jobs failed while they ran fine elsewhere.

Called by jobs.plan_jobs last, with the attempts of any job that ended within the lemon window.
"""

from __future__ import annotations

from dataclasses import replace

from ..models import Attempt, AttemptState, NodeState, Outcome
from .jobs import JobPass, LemonRule


def find(jp: JobPass, history: list[Attempt], rule: LemonRule) -> None:
    recent = [a for a in list(history) + [e.attempt for e in jp.ended]
              if a.ended_at is not None and a.ended_at >= jp.now - rule.window_s
              and a.outcome in (Outcome.EXIT, Outcome.HUNG)]
    everything = {a.id: a for a in history}
    everything.update(jp.attempts)
    fine_elsewhere = {}
    for a in everything.values():
        if a.state is AttemptState.RUNNING or a.outcome is Outcome.OK:
            fine_elsewhere.setdefault(a.job, set()).add(a.node)
    by_node: dict[str, dict[str, Attempt]] = {}
    for a in recent:
        if fine_elsewhere.get(a.job, set()) - {a.node}:
            by_node.setdefault(a.node, {}).setdefault(a.job, a)
    for node, failures in sorted(by_node.items()):
        view = jp.views.get(node)
        if view is None or len(failures) < rule.after or view.record.state is NodeState.QUARANTINED:
            continue
        listed = ", ".join(f"{a.id} ({a.reason})" for a in list(failures.values())[:5])
        reason = (f"lemon: attempts of {len(failures)} different jobs failed here within "
                  f"{rule.window_s / 60:g}m while they ran fine elsewhere: {listed}")
        rec = replace(view.record, state=NodeState.QUARANTINED, reason=reason, needs_release=True,
                      state_since=jp.now)
        jp.plan.nodes[node] = rec
        jp.views[node] = replace(view, record=rec)
        jp.event("node-state", f"{view.record.state.value} -> quarantined: {reason}", node=node,
                 severity="warning")


