"""Pure: what the nodes say about each live attempt of this pass (part of the job planner).

Called by jobs.plan_jobs first. A quarantined or rebooted node that answers is evidence: its
attempts are lost at once. A silent node is not: its attempts become `silent`, and are lost only
after `unreachable_grace` (never while our side looks partitioned). A node that answered fully
reports each attempt's pid, exit code and heartbeat; an attempt that stays quiet past
`hang_timeout` or runs past `max_duration` is ended and stopped.
"""

from __future__ import annotations

from dataclasses import replace

from ..models import Attempt, Outcome, ReadyCheck
from .jobs import S, JobPass, NodeView, ago, short


def fenced(jp: JobPass) -> None:
    for name, view in sorted(jp.views.items()):
        for r in sorted((r for r in view.reports.values() if r.fenced), key=lambda r: r.id):
            jp.event("attempt-fenced", f"attempt {r.id} on {name} was still running after gridctl ended it: "
                     "killed (fenced)", job=r.id.rsplit(".", 1)[0], node=name, severity="warning")



def judge(jp: JobPass) -> None:
    for a in sorted(jp.attempts.values(), key=lambda a: (a.job, a.n)):
        if not a.state.live or a.job not in jp.specs:
            continue
        view = jp.views.get(a.node)
        if view is None:
            jp.end(a, S.LOST, Outcome.NODE, f"node {a.node} is no longer in the fleet")
        elif view.rebooted:
            jp.end(a, S.LOST, Outcome.NODE, f"node {a.node} rebooted")
        elif view.answered and view.condemned and not spared(jp, a, view):
            # evidence from this very probe (a fatal finding, or failures confirmed); a node
            # quarantined for silence that now answers, or one slow probe of a quarantined node,
            # is not: its attempts are judged by their own reports below
            jp.end(a, S.LOST, Outcome.NODE, f"node {a.node} quarantined: {short(view.record.reason)}", stop=True,
                   grace_s=1.0)
        elif view.answered and view.complete:
            _answered(jp, a, view)
        elif not view.answered:
            _silent(jp, a, view)
        # answered but incomplete and not quarantined: no news about this attempt this pass


def spared(jp: JobPass, a: Attempt, view: NodeView) -> bool:
    """A service replica on a condemned node whose faults are on GPUs it does not hold: it serves on
    until its replacement is ready (replicas.keep_placed moves it, make-before-break). Its own GPU
    faulty, a node-wide fault, or an incomplete probe: no."""
    spec = jp.specs.get(a.job)
    if spec is None or spec.job_class != "service" or not view.complete or view.fault_gpus is None or not a.gpus:
        return False
    index = {g.uuid: g.index for g in view.gpus}
    return all(u in index and index[u] not in view.fault_gpus for u in a.gpus)


def _answered(jp: JobPass, a: Attempt, view: NodeView) -> None:
    if a.state is S.SILENT:
        newer = [b for b in jp.live(a.job, a.replica) if b.id != a.id and b.state is not S.SILENT]
        spec = jp.specs.get(a.job)
        waits = bool(newer) and spec is not None and spec.readiness is not None and not any(b.ready for b in newer)
        if newer and not waits:
            jp.end(a, S.KILLED, Outcome.SUPERSEDED,
                   f"stale copy: replica {a.replica} moved to attempt {newer[0].n} while {a.node} was silent",
                   stop=True, grace_s=0.0)
            return
        # a service's hedge that is not serving yet: make-before-break, the original runs on until it is
        kept = f"kept until attempt {newer[0].n} is ready" if waits else "attempt kept"
        a = jp.put(replace(a, state=S.RUNNING if a.started_at else S.STARTING, silent_since=None,
                           reason="node answers again" + (f"; {kept}" if waits else "")))
        jp.event("attempt-back", f"attempt {a.id} on {a.node}: node answers again, {kept}", job=a.job, node=a.node)
    r = view.reports.get(a.id)
    p = jp.policies[a.job]
    if a.id in view.foreign:
        # its dir was swapped for one without our token: nothing there is ours to trust or kill
        jp.end(a, S.LOST, Outcome.NODE, f"its directory on {a.node} no longer holds its token (swapped?): "
               "left alone, not signalled")
        jp.event("alert", f"attempt {a.id} on {a.node}: its directory no longer holds its token", job=a.job,
                 node=a.node, severity="alert")
        return
    if r is not None and r.pid_mismatch:
        jp.end(a, S.EXITED, Outcome.EXIT, f"its pid {r.pid} now names another process on {a.node}: its own "
               "process is gone; nothing was signalled")
        jp.event("alert", f"attempt {a.id} on {a.node}: pid {r.pid} is held by a process gridctl did not start",
                 job=a.job, node=a.node, severity="alert")
        return
    if r is None:
        if a.state is S.STARTING:
            jp.end(a, S.FAILED_TO_START, Outcome.START,
                   f"not found on {a.node}: the launch did not happen (pass interrupted?)")
        else:
            jp.end(a, S.LOST, Outcome.NODE, f"its directory vanished from {a.node}")
        return
    if r.alive:
        hb = a.heartbeat_at
        if r.heartbeat_at is not None and r.node_now is not None:
            hb = jp.now - max(0, r.node_now - r.heartbeat_at)
        started = a.started_at or jp.now
        first = a.state is S.STARTING
        a = jp.put(replace(a, state=S.RUNNING, pid=r.pid or a.pid, heartbeat_at=hb, started_at=started,
                           reason="running" if first or a.reason.startswith("node answers") else a.reason))
        if first:
            jp.event("attempt-running", f"attempt {a.id} running on {a.node} (pid {r.pid})", job=a.job, node=a.node)
        quiet = jp.now - max(hb or started, started)
        if p.hang_timeout and quiet > p.hang_timeout:
            jp.end(a, S.HUNG, Outcome.HUNG, f"no heartbeat for {ago(quiet)} (hang_timeout {p.hang_timeout:g}s): killed",
                   stop=True)
        elif p.max_duration and jp.now - started > p.max_duration:
            jp.end(a, S.KILLED, Outcome.DURATION, f"ran {ago(jp.now - started)}, past max_duration "
                   f"{p.max_duration:g}s: killed", stop=True)
        return
    if r.exit_code is not None:
        code = r.exit_code
        if code == 0:
            jp.end(a, S.EXITED, Outcome.OK, "exited 0", exit_code=0)
        elif code in p.infra_exit_codes:
            jp.end(a, S.EXITED, Outcome.NODE, f"exit code {code} (an infra exit code: counts as a node failure)",
                   exit_code=code)
        else:
            jp.end(a, S.EXITED, Outcome.EXIT, f"exit code {code}", exit_code=code)
    elif r.pid is None and a.state is S.STARTING:
        jp.end(a, S.FAILED_TO_START, Outcome.START, "the process never started")
    else:
        jp.end(a, S.EXITED, Outcome.EXIT, "process vanished without an exit code (killed by a signal or OOM?)")


def _silent(jp: JobPass, a: Attempt, view: NodeView) -> None:
    p = jp.policies[a.job]
    if a.state is not S.SILENT:
        jp.put(replace(a, state=S.SILENT, silent_since=jp.now, ready=False, ready_since=None,
                       reason=f"node {a.node} silent: process state unknown"))
        jp.event("attempt-silent", f"attempt {a.id} on {a.node}: node silent, process state unknown",
                 job=a.job, node=a.node, severity="warning")
        return
    silent_for = jp.now - (a.silent_since or jp.now)
    if view.partitioned:
        return   # our side may be cut off: start no requeues
    if silent_for >= p.unreachable_grace:
        jp.end(a, S.LOST, Outcome.NODE, f"node {a.node} silent for {ago(silent_for)} "
               f"(unreachable_grace {p.unreachable_grace:g}s)")



def apply_readiness(jp: JobPass, checks: dict[str, ReadyCheck]) -> None:
    """Turn this pass's readiness checks into the ready set: ready on the first good check; out of
    routing after `failure_threshold` failed checks in a row (the process keeps running); ended
    and restarted when never ready within `ready_timeout`."""
    for attempt_id, check in sorted(checks.items()):
        a = jp.attempts.get(attempt_id)
        spec = jp.specs.get(a.job) if a is not None else None
        if a is None or a.state is not S.RUNNING or spec is None or spec.readiness is None:
            continue
        r = spec.readiness
        if check.ok:
            if not a.ready:
                a = jp.put(replace(a, ready=True, ready_since=jp.now, check_failures=0))
                jp.event("replica-ready", f"attempt {a.id} on {a.node} ready ({check.detail}), "
                         f"{ago(jp.now - (a.started_at or jp.now))} after start", job=a.job, node=a.node)
            elif a.check_failures:
                jp.put(replace(a, check_failures=0))
            continue
        fails = a.check_failures + 1
        if a.ready and fails >= r.failure_threshold:
            jp.put(replace(a, ready=False, ready_since=None, check_failures=fails))
            jp.event("replica-not-ready", f"attempt {a.id} on {a.node}: {fails} failed readiness checks in a row "
                     f"({check.detail}): out of routing, its process keeps running", job=a.job, node=a.node,
                     severity="warning")
        elif not a.ready and r.ready_timeout and jp.now - (a.started_at or jp.now) > r.ready_timeout:
            jp.end(a, S.HUNG, Outcome.HUNG, f"not ready {ago(jp.now - (a.started_at or jp.now))} after start "
                   f"(ready_timeout {r.ready_timeout:g}s; last check: {check.detail}): killed", stop=True)
        else:
            jp.put(replace(a, check_failures=fails))
