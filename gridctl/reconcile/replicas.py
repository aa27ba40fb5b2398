"""Pure: keep every replica of every job placed (part of the job planner).

Called by jobs.plan_jobs after attempts.judge. Per job: apply the recovery decision of each
attempt that ended this pass (recovery.decide), cancel, then per replica keep one live copy:
a drain's make-before-break hand-over, a hedge for a service on a silent node, a new attempt
after backoff, or the reason why none fits.
"""

from __future__ import annotations

from dataclasses import replace

from ..jobspec import JobSpec
from ..launcher import LaunchSpec, build_env
from ..models import Attempt, JobRecord, JobState, NodeRecord, NodeState, Outcome, service_host
from ..placement import Offer, Placement, Request, free_port, place
from ..recovery import Decision, Policy, Step, decide
from .jobs import S, JobPass, Launch, ReplicaState, Stop, ago, short


def unavailable(rec: NodeRecord) -> str | None:
    """Why a node takes no new work now (draining, cordoned, not ready), None if it does. Also
    what `run --dry-run` reads from the store."""
    if rec.draining:
        return "draining"
    if rec.cordoned:
        return "cordoned"
    if rec.state is not NodeState.READY:
        return f"{rec.state.value} ({short(rec.reason, 50)})" if rec.reason else rec.state.value
    return None


def offers(jp: JobPass) -> dict[str, Offer]:
    out = {}
    # ports are held per address: simulated nodes share this machine's, so they share its ports
    host_of = {name: service_host(v.record.host) for name, v in jp.views.items()}
    ports_at: dict[str, set[int]] = {}
    for a in jp.attempts.values():
        if a.port is not None and (a.state.live or _may_hold_port(a)):
            ports_at.setdefault(host_of.get(a.node, a.node), set()).add(a.port)
    for name, v in sorted(jp.views.items()):
        rec = v.record
        why = unavailable(rec)
        here = [a for a in jp.attempts.values() if a.node == name and a.state.live]
        replicas: dict[str, int] = {}
        for a in here:
            replicas[a.job] = replicas.get(a.job, 0) + 1
        held = frozenset(g for a in here for g in a.gpus)
        out[name] = Offer(name, rec.pool, v.gpus, held, why, replicas, frozenset(ports_at.get(host_of[name], ())),
                          foreign=v.busy_gpus - held)
    return out


def _may_hold_port(a: Attempt) -> bool:
    """An ended copy whose process nobody saw exit and whose node has not confirmed it gone (not
    reaped): given up on a silent node, it may still be bound to its port on that address."""
    return not a.reaped and a.exit_code is None


def keep_placed(jp: JobPass) -> None:
    places = offers(jp)
    for job in sorted(jp.jobs.values(), key=lambda j: (j.created_at, j.name)):
        spec = jp.specs.get(job.name)
        if spec is None:
            job = replace(job, state=JobState.FAILED, reason="stored spec is unreadable by this version of gridctl",
                          reason_code="bad-spec", updated_at=jp.now)
            jp.plan.jobs[job.name] = job
            continue
        _job(jp, job, spec, places)


def _apply_ended(jp: JobPass, job: JobRecord, spec: JobSpec) -> JobRecord:
    p = jp.policies[job.name]
    for e in sorted((e for e in jp.ended if e.attempt.job == job.name), key=lambda e: e.attempt.n):
        a = e.attempt
        if job.state.terminal and not job.cancel_requested:
            continue
        d: Decision = decide(spec.job_class, p, e.outcome, exit_code=a.exit_code, restarts=job.restarts,
                             failures=job.failures, attempts=job.attempts_made, detail=e.detail)
        jp.event("attempt-ended", f"attempt {a.id} on {a.node} {a.state.value}: {e.detail}"
                 + ("" if e.outcome in (Outcome.SUPERSEDED,) else f"; {d.words}"),
                 job=job.name, node=a.node, severity="info" if e.outcome is Outcome.OK else "warning")
        if e.outcome is Outcome.SUPERSEDED:
            continue
        job = replace(job, restarts=d.restarts, failures=d.failures)
        if d.action is Step.FAIL and spec.job_class == "service" and e.outcome is not Outcome.CANCEL:
            d = replace(d, action=Step.RETRY)
        if d.action is Step.FAIL:
            job = replace(job, state=JobState.FAILED, reason=d.words, reason_code=d.code)
        elif d.action is Step.SUCCEED:
            job = replace(job, state=JobState.SUCCEEDED, reason=d.words, reason_code="succeeded")
        else:
            wait = jp.now + d.delay
            job = replace(job, next_try_at=max(job.next_try_at or 0, wait) if d.delay else job.next_try_at,
                          reason=d.words, reason_code=d.code)
    return job


def _job(jp: JobPass, job: JobRecord, spec: JobSpec, offers: dict[str, Offer]) -> None:
    before = (job.state, job.reason)
    if job.cancel_requested and job.state is not JobState.CANCELLED:
        for a in jp.live(job.name):
            if a.state is S.SILENT:
                jp.end(a, S.KILLED, Outcome.CANCEL, f"cancelled by {job.cancel_by} (node silent: killed when it answers)")
            else:
                jp.end(a, S.KILLED, Outcome.CANCEL, f"cancelled by {job.cancel_by}", stop=True)
        _apply_ended(jp, job, spec)   # records the attempt events
        job = replace(job, state=JobState.CANCELLED, reason=f"by {job.cancel_by}", reason_code="cancelled",
                      next_try_at=None)
        _finish(jp, job, before)
        return
    if job.restart_asked > job.restart_done:
        job = _restart(jp, job)
    job = _apply_ended(jp, job, spec)
    jp.jobs[job.name] = job     # the decision (counters, backoff) is what the replicas see
    if job.state.terminal:
        for a in jp.live(job.name):
            jp.end(a, S.KILLED, Outcome.CANCEL, f"job {job.state.value}", stop=a.state is not S.SILENT)
        _finish(jp, job, before)
        return
    p = jp.policies[job.name]
    notes: list[str] = []
    running = 0
    for r in range(spec.replicas):
        state, note = _replica(jp, job, spec, p, r, offers)
        if state is ReplicaState.RUNNING:
            running += 1
        if note:
            notes.append(note if spec.replicas == 1 else f"replica {r}: {note}")
        job = jp.jobs[job.name]
    if job.state.terminal:        # a replica's end decided the job (e.g. a drained manual job)
        _finish(jp, job, before)
        return
    if running:
        job = replace(job, state=JobState.RUNNING, pending_since=None)
        head = (f"{running}/{spec.replicas} replicas running" if spec.replicas > 1 else "running")
        reason = "; ".join([head] + notes) if notes else (head if spec.replicas > 1 else _where(jp, job.name))
        job = replace(job, reason=reason, reason_code="running")
    else:
        pending_since = job.pending_since or jp.now
        job = replace(job, state=JobState.PENDING, pending_since=pending_since,
                      reason="; ".join(notes) or "waiting", reason_code="pending")
        silent = [a for a in jp.live(job.name) if a.state is S.SILENT]
        if silent:
            job = replace(job, state=JobState.RUNNING, pending_since=None, reason_code="silent")
        elif p.pending_timeout and jp.now - pending_since > p.pending_timeout:
            job = replace(job, state=JobState.FAILED, reason_code="no-capacity",
                          reason=f"no-capacity after pending {ago(jp.now - pending_since)} "
                                 f"(pending_timeout {p.pending_timeout:g}s): {short(job.reason, 200)}")
            for a in jp.live(job.name):
                jp.end(a, S.KILLED, Outcome.CANCEL, "job failed", stop=True)
    _finish(jp, job, before)


def _restart(jp: JobPass, job: JobRecord) -> JobRecord:
    """`gridctl restart`: every live copy stops through the usual stop (TERM, the grace, KILL; a copy
    on a silent node is fenced when it answers), the counters start again, and the new attempts
    start after the stop grace: break-before-make, also for services."""
    live = jp.live(job.name)
    for a in live:
        jp.end(a, S.KILLED, Outcome.CANCEL, "restarted by user", stop=a.state is not S.SILENT)
        jp.event("attempt-ended", f"attempt {a.id} on {a.node} killed: restarted by user", job=job.name, node=a.node)
    stopped = {a.id for a in live}
    jp.ended = [e for e in jp.ended if e.attempt.id not in stopped]     # no recovery decision for these
    jp.event("job-restart", f"restarted by user ({len(live)} live attempt(s) stopped)", job=job.name)
    return replace(job, state=JobState.PENDING, reason="restarted by user", reason_code="restart", restarts=0,
                   failures=0, pending_since=jp.now, next_try_at=jp.now + jp.grace_s if live else None,
                   restart_done=job.restart_asked)


def _where(jp: JobPass, name: str) -> str:
    live = [a for a in jp.live(name) if a.state in (S.RUNNING, S.STARTING)]
    if not live:
        return "running"
    a = live[0]
    verb = "starting" if a.state is S.STARTING else "running"
    return f"{verb} on {a.node} (attempt {a.n})"


def _finish(jp: JobPass, job: JobRecord, before: tuple) -> None:
    job = replace(job, updated_at=jp.now)
    jp.jobs[job.name] = job
    jp.plan.jobs[job.name] = job
    if job.state is not before[0]:
        sev = "warning" if job.state is JobState.FAILED else "info"
        jp.event("job-state", f"{before[0].value} -> {job.state.value}: {job.reason}", job=job.name, severity=sev)


def _replica(jp: JobPass, job: JobRecord, spec: JobSpec, p: Policy, r: int, offers: dict[str, Offer]) -> tuple[ReplicaState, str]:
    """Keep one live copy of replica r. Returns where it stands and a note for the job's reason."""
    live = jp.live(job.name, r)
    active = [a for a in live if a.state in (S.RUNNING, S.STARTING)]
    silent = [a for a in live if a.state is S.SILENT]
    # copies to move off their node: draining, or quarantined for faults on GPUs they do not hold
    # (attempts.spared kept those running)
    leaving = [a for a in active if jp.views.get(a.node) and (jp.views[a.node].record.draining
                                                              or jp.views[a.node].condemned)]
    if leaving and len(active) == len(leaving):
        a = leaving[0]
        if spec.job_class == "service":
            return _move(jp, job, spec, r, offers, a)
        jp.end(a, S.KILLED, Outcome.DRAIN, f"node {a.node} is draining", stop=True)
        job = _apply_ended(jp, jp.jobs[job.name], spec)
        jp.jobs[job.name] = job
        active = []
        if job.state.terminal:
            return ReplicaState.PENDING, job.reason
    if spec.readiness is not None and len(active) > 1:
        return _hand_over_when_ready(jp, active)
    if active:
        return ReplicaState.RUNNING, ""
    if silent:
        a = silent[0]
        view = jp.views.get(a.node)
        if spec.job_class != "service" or (view is not None and view.partitioned):
            left = max(0.0, p.unreachable_grace - (jp.now - (a.silent_since or jp.now)))
            what = "requeue" if spec.job_class != "service" else "hedge"
            return ReplicaState.SILENT, (f"node {a.node} silent for {ago(jp.now - (a.silent_since or jp.now))}; "
                              f"{what} after unreachable_grace ({ago(left)} left)"
                              if not (view and view.partitioned) else
                              f"node {a.node} silent (fleet partition suspected: waiting)")
        placed = _start(jp, job, spec, r, offers, exclude={s.node for s in silent}, why="hedge")
        if placed is True:
            jp.event("hedge", f"replica {r}: node {a.node} silent, hedging with a new attempt "
                     f"(the older copy is stopped when its node answers)", job=job.name, node=a.node,
                     severity="warning")
            return ReplicaState.RUNNING, ""
        return ReplicaState.SILENT, f"node {a.node} silent; no node for a hedge: {placed}"
    job = jp.jobs[job.name]
    if job.next_try_at and jp.now < job.next_try_at:
        return ReplicaState.PENDING, _backoff_note(jp, job, r)
    placed = _start(jp, job, spec, r, offers, exclude=set(), why="")
    if placed is True:
        return ReplicaState.RUNNING, ""
    jp.plan.unplaced.append(job.name)
    return ReplicaState.PENDING, placed


def _backoff_note(jp: JobPass, job: JobRecord, r: int) -> str:
    """Why replica r waits, built afresh each pass from the attempt that ended (never from the job's
    last reason, which already holds this note: it would repeat, and grow, with every pass)."""
    ended = [a for a in jp.attempts.values() if a.job == job.name and a.replica == r and not a.state.live]
    cause = max(ended, key=lambda a: a.n).reason if ended else "after a failure"
    return f"{cause}: next attempt in {ago(job.next_try_at - jp.now)}"


def _move(jp: JobPass, job: JobRecord, spec: JobSpec, r: int, offers: dict[str, Offer],
          a: Attempt) -> tuple[ReplicaState, str]:
    """Make-before-break for a service copy that must leave its node: with readiness, the old copy
    serves until its replacement is ready (a later pass, _hand_over_when_ready); without, until the
    replacement runs (act stops it right after the launch)."""
    view = jp.views[a.node]
    condemned = view.condemned and not view.record.draining
    why = (f"node {a.node} quarantined: {short(view.record.reason)}" if condemned
           else f"drained: {view.record.cordon_reason or 'drain'}")
    then_stop = () if spec.readiness is not None else (Stop(a.id, a.job, a.node, view.work_dir, why, jp.grace_s),)
    placed = _start(jp, job, spec, r, offers, exclude={a.node}, then_stop=then_stop,
                    why="quarantine" if condemned else "drain")
    if placed is not True:
        return ReplicaState.RUNNING, f"{'quarantine' if condemned else 'drain'} of {a.node} waits: {placed}"
    if condemned:
        jp.event("attempt-moving", f"attempt {a.id} on {a.node}: {why}; its own GPUs are fine, so it serves until "
                 f"its replacement is {'ready' if spec.readiness is not None else 'running'}", job=job.name,
                 node=a.node, severity="warning")
    return ReplicaState.RUNNING, ""


def _hand_over_when_ready(jp: JobPass, active: list[Attempt]) -> tuple[ReplicaState, str]:
    """Two live copies of one replica of a service with readiness (a drain's replacement, or a hedge
    whose silent original answers again): the newest ready copy stays and the others stop; while
    none of the newer copies is ready, every copy runs and routers keep using the ready ones."""
    newest = max(active, key=lambda a: a.n)
    ready = [a for a in active if a.ready and a.n == newest.n]
    if not ready:
        older = min(active, key=lambda a: a.n)
        return ReplicaState.RUNNING, f"{older.node}'s copy waits for attempt {newest.n} to be ready"
    keep = ready[0]
    for old in active:
        if old.id == keep.id:
            continue
        view = jp.views.get(old.node)
        drained = view is not None and view.record.draining
        reason = (f"drained: replaced by attempt {keep.n}, ready on {keep.node}" if drained else
                  f"node {old.node} quarantined: replaced by attempt {keep.n}, ready on {keep.node}"
                  if view is not None and view.condemned else
                  f"superseded: attempt {keep.n} is ready on {keep.node}")
        jp.put(replace(old, state=S.KILLED, ended_at=jp.now, outcome=Outcome.DRAIN if drained else Outcome.SUPERSEDED,
                       reason=reason, ready=False))
        jp.plan.stops.append(Stop(old.id, old.job, old.node, view.work_dir if view else "~/.gridctl", reason,
                                  jp.grace_s))
        jp.event("attempt-ended", f"attempt {old.id} on {old.node} killed: {reason}", job=old.job, node=old.node)
    return ReplicaState.RUNNING, ""


def _start(jp: JobPass, job: JobRecord, spec: JobSpec, r: int, offers: dict[str, Offer], *, exclude: set[str],
           then_stop: tuple["Stop", ...] = (), why: str) -> bool | str:
    failed_on = frozenset(a.node for a in jp.attempts.values() if a.job == job.name and a.outcome is not None
                          and a.outcome.failed_here)
    fixed = spec.port if isinstance(spec.port, int) else None
    req = Request(job.name, spec.gpus, spec.gpu_type, spec.gpu_memory_gb, spec.pool, spec.spreads,
                  avoid=failed_on, exclude=frozenset(exclude), port=fixed)
    got = place(req, list(offers.values()))
    if not isinstance(got, Placement):
        return got
    port = fixed if fixed is not None else free_port(offers[got.node].ports) if spec.port == "auto" else None
    job = jp.jobs[job.name]
    n = job.attempts_made + 1
    attempt_id = f"{job.name}.{n}"
    uuids = tuple(g.uuid for g in got.gpus)
    a = jp.put(Attempt(id=attempt_id, job=job.name, n=n, replica=r, node=got.node, state=S.STARTING,
                       reason="launching", gpus=uuids, created_at=jp.now, port=port))
    jp.jobs[job.name] = replace(job, attempts_made=n, next_try_at=None)
    o = offers[got.node]
    offers[got.node] = replace(o, used=o.used | set(uuids), replicas={**o.replicas, job.name: o.replicas.get(job.name, 0) + 1})
    if port is not None:
        host = service_host(jp.views[got.node].record.host)
        for name, other in offers.items():
            if service_host(jp.views[name].record.host) == host:
                offers[name] = replace(other, ports=other.ports | {port})
    view = jp.views[got.node]
    env = build_env(spec.env, job=job.name, attempt_id=attempt_id, replica=r, gpu_uuids=uuids,
                    restart_count=job.restarts + job.failures, checkpoint_dir=spec.checkpoint_dir, port=port,
                    host=service_host(view.record.host))
    jp.plan.launches.append(Launch(a, got.node, view.work_dir,
                                   LaunchSpec(attempt_id, spec.shell_command, env, spec.work_dir,
                                              spec.log_max_bytes, int(spec.retention)), then_stop))
    gpus = ",".join(str(g.index) for g in got.gpus) or "none"
    jp.event("attempt-starting", f"attempt {attempt_id} placed on {got.node} (GPUs {gpus}"
             + (f", port {port})" if port is not None else ")") + (f" [{why}]" if why else ""),
             job=job.name, node=got.node)
    return True

