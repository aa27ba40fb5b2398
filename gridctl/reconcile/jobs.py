"""Pure: decide what happens to every job and attempt in a pass (DESIGN section 5).

Called by reconcile_once after the node decisions of the same pass. Input: the jobs, their
attempts, and a NodeView per node (its new record, what its probe reported about attempt
directories). Output: attempt and job rows to write, events, and the launches / stops for
reconcile/act.py to carry out. No I/O; tested table-style.

Evidence vs silence: a node that answers and is quarantined (or rebooted) loses its attempts at
once; a node that is merely silent loses nothing until `unreachable_grace`, and a service replica
on it is hedged by a new attempt elsewhere. Fencing: an attempt gridctl has ended is on its
node's kill list until the node's probe confirms it is gone.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from ..jobspec import JobSpec, spec_from_store
from ..launcher import LaunchSpec, build_env
from ..models import (Attempt, AttemptReport, AttemptState, Event, Health, JobRecord, JobState, NodeRecord,
                      NodeState)
from ..placement import Gpu, Offer, Placement, Request, place
from ..recovery import Decision, Outcome, Policy, decide, policy

S = AttemptState


@dataclass(frozen=True)
class NodeView:
    """One node of this pass as the job planner needs it."""

    record: NodeRecord                       # after this pass's health decision
    answered: bool                           # the probe reached the node (it may have hung)
    complete: bool                           # the probe ran to its end: attempt reports are complete
    partitioned: bool = False                # silent while our side looks partitioned
    rebooted: bool = False
    reports: dict[str, AttemptReport] = field(default_factory=dict)
    gpus: tuple[Gpu, ...] = ()
    work_dir: str = "~/.gridctl"


@dataclass(frozen=True)
class Launch:
    attempt: Attempt
    node: str
    work_dir: str
    spec: LaunchSpec
    then_stop: tuple["Stop", ...] = ()       # drain: stop these attempts once this one runs


@dataclass(frozen=True)
class Stop:
    attempt_id: str
    job: str
    node: str
    work_dir: str
    reason: str
    grace_s: float = 5.0


@dataclass
class JobPlan:
    jobs: dict[str, JobRecord] = field(default_factory=dict)
    attempts: dict[str, Attempt] = field(default_factory=dict)     # changed or new, by id
    events: list[Event] = field(default_factory=list)
    launches: list[Launch] = field(default_factory=list)
    stops: list[Stop] = field(default_factory=list)
    nodes: dict[str, NodeRecord] = field(default_factory=dict)     # lemon quarantines
    unplaced: list[str] = field(default_factory=list)              # a job per replica that no node fits


@dataclass(frozen=True)
class Ended:
    attempt: Attempt
    outcome: Outcome
    detail: str


@dataclass(frozen=True)
class LemonRule:
    after: int = 3
    window_s: float = 3600.0


def _short(text: str, n: int = 70) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


def _ago(seconds: float) -> str:
    return f"{seconds:.0f}s"


class _Pass:
    """The working state of one planning pass (kept in one object so helpers stay small)."""

    def __init__(self, jobs: dict[str, JobRecord], attempts: list[Attempt], views: dict[str, NodeView],
                 now: float, grace_s: float):
        self.now = now
        self.views = views
        self.grace_s = grace_s
        self.jobs = dict(jobs)
        self.attempts: dict[str, Attempt] = {a.id: a for a in attempts}
        self.plan = JobPlan()
        self.ended: list[Ended] = []
        self.specs: dict[str, JobSpec] = {}
        self.policies: dict[str, Policy] = {}
        for name, job in jobs.items():
            try:
                self.specs[name] = spec_from_store(job.spec)
            except ValueError:
                continue
            self.policies[name] = policy(self.specs[name].job_class, self.specs[name].recovery.model_dump())

    # -- small helpers

    def event(self, kind: str, message: str, *, job: str | None = None, node: str | None = None,
              severity: str = "info") -> None:
        self.plan.events.append(Event(self.now, kind, message, node=node, job=job, severity=severity))

    def put(self, a: Attempt) -> Attempt:
        self.attempts[a.id] = a
        self.plan.attempts[a.id] = a
        return a

    def end(self, a: Attempt, state: AttemptState, outcome: Outcome, reason: str, *, exit_code: int | None = None,
            stop: bool = False, grace_s: float | None = None) -> None:
        done = self.put(replace(a, state=state, reason=reason, ended_at=self.now, outcome=outcome.value,
                                exit_code=exit_code if exit_code is not None else a.exit_code, silent_since=None))
        self.ended.append(Ended(done, outcome, reason))
        if stop:
            view = self.views.get(a.node)
            self.plan.stops.append(Stop(a.id, a.job, a.node, view.work_dir if view else "~/.gridctl", reason,
                                        self.grace_s if grace_s is None else grace_s))

    def live(self, job: str, replica: int | None = None) -> list[Attempt]:
        return [a for a in self.attempts.values() if a.job == job and a.state.live
                and (replica is None or a.replica == replica)]

    # -- step 0: fencing that the probes did (DESIGN section 5: the kill is an event)

    def fenced(self) -> None:
        for name, view in sorted(self.views.items()):
            for r in sorted((r for r in view.reports.values() if r.fenced), key=lambda r: r.id):
                self.event("attempt-fenced", f"attempt {r.id} on {name} was still running after gridctl ended it: "
                           "killed (fenced)", job=r.id.rsplit(".", 1)[0], node=name, severity="warning")

    # -- step 1: what the nodes say about each live attempt

    def observe_attempts(self) -> None:
        for a in sorted(self.attempts.values(), key=lambda a: (a.job, a.n)):
            if not a.state.live or a.job not in self.specs:
                continue
            view = self.views.get(a.node)
            if view is None:
                self.end(a, S.LOST, Outcome.NODE, f"node {a.node} is no longer in the fleet")
            elif view.rebooted:
                self.end(a, S.LOST, Outcome.NODE, f"node {a.node} rebooted")
            elif view.answered and view.record.state is NodeState.QUARANTINED and \
                    view.record.health in (Health.UNHEALTHY, Health.UNKNOWN):
                # evidence from this very probe; a node quarantined for silence that now answers
                # healthy is recovering, and its attempts are judged by their own reports below
                self.end(a, S.LOST, Outcome.NODE, f"node {a.node} quarantined: {_short(view.record.reason)}", stop=True,
                         grace_s=1.0)
            elif view.answered and view.complete:
                self._answered(a, view)
            elif not view.answered:
                self._silent(a, view)
            # answered but incomplete and not quarantined: no news about this attempt this pass

    def _answered(self, a: Attempt, view: NodeView) -> None:
        if a.state is S.SILENT:
            newer = [b for b in self.live(a.job, a.replica) if b.id != a.id and b.state is not S.SILENT]
            if newer:
                self.end(a, S.KILLED, Outcome.SUPERSEDED,
                         f"stale copy: replica {a.replica} moved to attempt {newer[0].n} while {a.node} was silent",
                         stop=True, grace_s=0.0)
                return
            a = self.put(replace(a, state=S.RUNNING if a.started_at else S.STARTING, silent_since=None,
                                 reason="node answers again"))
            self.event("attempt-back", f"attempt {a.id} on {a.node}: node answers again, attempt kept", job=a.job,
                       node=a.node)
        r = view.reports.get(a.id)
        p = self.policies[a.job]
        if r is None:
            if a.state is S.STARTING:
                self.end(a, S.FAILED_TO_START, Outcome.START,
                         f"not found on {a.node}: the launch did not happen (pass interrupted?)")
            else:
                self.end(a, S.LOST, Outcome.NODE, f"its directory vanished from {a.node}")
            return
        if r.alive:
            hb = a.heartbeat_at
            if r.heartbeat_at is not None and r.node_now is not None:
                hb = self.now - max(0, r.node_now - r.heartbeat_at)
            started = a.started_at or self.now
            first = a.state is S.STARTING
            a = self.put(replace(a, state=S.RUNNING, pid=r.pid or a.pid, heartbeat_at=hb, started_at=started,
                                 reason="running" if first or a.reason.startswith("node answers") else a.reason))
            if first:
                self.event("attempt-running", f"attempt {a.id} running on {a.node} (pid {r.pid})", job=a.job, node=a.node)
            quiet = self.now - max(hb or started, started)
            if p.hang_timeout and quiet > p.hang_timeout:
                self.end(a, S.HUNG, Outcome.HUNG, f"no heartbeat for {_ago(quiet)} (hang_timeout {p.hang_timeout:g}s): killed",
                         stop=True)
            elif p.max_duration and self.now - started > p.max_duration:
                self.end(a, S.KILLED, Outcome.DURATION, f"ran {_ago(self.now - started)}, past max_duration "
                         f"{p.max_duration:g}s: killed", stop=True)
            return
        if r.exit_code is not None:
            code = r.exit_code
            if code == 0:
                self.end(a, S.EXITED, Outcome.OK, "exited 0", exit_code=0)
            elif code in p.infra_exit_codes:
                self.end(a, S.EXITED, Outcome.NODE, f"exit code {code} (an infra exit code: counts as a node failure)",
                         exit_code=code)
            else:
                self.end(a, S.EXITED, Outcome.EXIT, f"exit code {code}", exit_code=code)
        elif r.pid is None and a.state is S.STARTING:
            self.end(a, S.FAILED_TO_START, Outcome.START, "the process never started")
        else:
            self.end(a, S.EXITED, Outcome.EXIT, "process vanished without an exit code (killed by a signal or OOM?)")

    def _silent(self, a: Attempt, view: NodeView) -> None:
        p = self.policies[a.job]
        if a.state is not S.SILENT:
            self.put(replace(a, state=S.SILENT, silent_since=self.now,
                             reason=f"node {a.node} silent: process state unknown"))
            self.event("attempt-silent", f"attempt {a.id} on {a.node}: node silent, process state unknown",
                       job=a.job, node=a.node, severity="warning")
            return
        silent_for = self.now - (a.silent_since or self.now)
        if view.partitioned:
            return   # our side may be cut off: start no requeues
        if silent_for >= p.unreachable_grace:
            self.end(a, S.LOST, Outcome.NODE, f"node {a.node} silent for {_ago(silent_for)} "
                     f"(unreachable_grace {p.unreachable_grace:g}s)")

    # -- step 2: per job, recovery decisions and new attempts

    def offers(self) -> dict[str, Offer]:
        out = {}
        for name, v in sorted(self.views.items()):
            rec = v.record
            why = None
            if rec.draining:
                why = "draining"
            elif rec.cordoned:
                why = "cordoned"
            elif rec.state is not NodeState.READY:
                why = f"{rec.state.value} ({_short(rec.reason, 50)})" if rec.reason else rec.state.value
            used = {g for a in self.attempts.values() if a.node == name and a.state.live for g in a.gpus}
            replicas: dict[str, int] = {}
            for a in self.attempts.values():
                if a.node == name and a.state.live:
                    replicas[a.job] = replicas.get(a.job, 0) + 1
            out[name] = Offer(name, rec.pool, v.gpus, frozenset(used), why, replicas)
        return out

    def decide_jobs(self) -> None:
        offers = self.offers()
        for job in sorted(self.jobs.values(), key=lambda j: (j.created_at, j.name)):
            spec = self.specs.get(job.name)
            if spec is None:
                job = replace(job, state=JobState.FAILED, reason="stored spec is unreadable by this version of gridctl",
                              reason_code="bad-spec", updated_at=self.now)
                self.plan.jobs[job.name] = job
                continue
            self._job(job, spec, offers)

    def _apply_ended(self, job: JobRecord, spec: JobSpec) -> JobRecord:
        p = self.policies[job.name]
        for e in sorted((e for e in self.ended if e.attempt.job == job.name), key=lambda e: e.attempt.n):
            a = e.attempt
            if job.state.terminal and not job.cancel_requested:
                continue
            d: Decision = decide(spec.job_class, p, e.outcome, exit_code=a.exit_code, restarts=job.restarts,
                                 failures=job.failures, attempts=job.attempts_made, detail=e.detail)
            self.event("attempt-ended", f"attempt {a.id} on {a.node} {a.state.value}: {e.detail}"
                       + ("" if e.outcome in (Outcome.SUPERSEDED,) else f"; {d.words}"),
                       job=job.name, node=a.node, severity="info" if e.outcome is Outcome.OK else "warning")
            if e.outcome is Outcome.SUPERSEDED:
                continue
            job = replace(job, restarts=d.restarts, failures=d.failures)
            if d.action == "fail" and spec.job_class == "service" and e.outcome is not Outcome.CANCEL:
                d = replace(d, action="retry")
            if d.action == "fail":
                job = replace(job, state=JobState.FAILED, reason=d.words, reason_code=d.code)
            elif d.action == "succeed":
                job = replace(job, state=JobState.SUCCEEDED, reason=d.words, reason_code="succeeded")
            else:
                wait = self.now + d.delay
                job = replace(job, next_try_at=max(job.next_try_at or 0, wait) if d.delay else job.next_try_at,
                              reason=d.words, reason_code=d.code)
        return job

    def _job(self, job: JobRecord, spec: JobSpec, offers: dict[str, Offer]) -> None:
        before = (job.state, job.reason)
        if job.cancel_requested and job.state is not JobState.CANCELLED:
            for a in self.live(job.name):
                if a.state is S.SILENT:
                    self.end(a, S.KILLED, Outcome.CANCEL, "cancelled by user (node silent: killed when it answers)")
                else:
                    self.end(a, S.KILLED, Outcome.CANCEL, "cancelled by user", stop=True)
            self._apply_ended(job, spec)   # records the attempt events
            job = replace(job, state=JobState.CANCELLED, reason="by user", reason_code="cancelled",
                          next_try_at=None)
            self._finish(job, before)
            return
        job = self._apply_ended(job, spec)
        self.jobs[job.name] = job     # the decision (counters, backoff) is what the replicas see
        if job.state.terminal:
            for a in self.live(job.name):
                self.end(a, S.KILLED, Outcome.CANCEL, f"job {job.state.value}", stop=a.state is not S.SILENT)
            self._finish(job, before)
            return
        p = self.policies[job.name]
        notes: list[str] = []
        running = 0
        for r in range(spec.replicas):
            state, note = self._replica(job, spec, p, r, offers)
            if state == "running":
                running += 1
            if note:
                notes.append(note if spec.replicas == 1 else f"replica {r}: {note}")
            job = self.jobs[job.name]
        if job.state.terminal:        # a replica's end decided the job (e.g. a drained manual job)
            self._finish(job, before)
            return
        if running:
            job = replace(job, state=JobState.RUNNING, pending_since=None)
            head = (f"{running}/{spec.replicas} replicas running" if spec.replicas > 1 else "running")
            reason = "; ".join([head] + notes) if notes else (head if spec.replicas > 1 else self._where(job.name))
            job = replace(job, reason=reason, reason_code="running")
        else:
            pending_since = job.pending_since or self.now
            job = replace(job, state=JobState.PENDING, pending_since=pending_since,
                          reason="; ".join(notes) or "waiting", reason_code="pending")
            silent = [a for a in self.live(job.name) if a.state is S.SILENT]
            if silent:
                job = replace(job, state=JobState.RUNNING, pending_since=None, reason_code="silent")
            elif p.pending_timeout and self.now - pending_since > p.pending_timeout:
                job = replace(job, state=JobState.FAILED, reason_code="no-capacity",
                              reason=f"no-capacity after pending {_ago(self.now - pending_since)} "
                                     f"(pending_timeout {p.pending_timeout:g}s): {_short(job.reason, 200)}")
                for a in self.live(job.name):
                    self.end(a, S.KILLED, Outcome.CANCEL, "job failed", stop=True)
        self._finish(job, before)

    def _where(self, name: str) -> str:
        live = [a for a in self.live(name) if a.state in (S.RUNNING, S.STARTING)]
        if not live:
            return "running"
        a = live[0]
        verb = "starting" if a.state is S.STARTING else "running"
        return f"{verb} on {a.node} (attempt {a.n})"

    def _finish(self, job: JobRecord, before: tuple) -> None:
        job = replace(job, updated_at=self.now)
        self.jobs[job.name] = job
        self.plan.jobs[job.name] = job
        if job.state is not before[0]:
            sev = "warning" if job.state is JobState.FAILED else "info"
            self.event("job-state", f"{before[0].value} -> {job.state.value}: {job.reason}", job=job.name, severity=sev)

    def _replica(self, job: JobRecord, spec: JobSpec, p: Policy, r: int, offers: dict[str, Offer]) -> tuple[str, str]:
        """Keep one live copy of replica r. Returns ("running" | "pending" | "silent", note)."""
        live = self.live(job.name, r)
        active = [a for a in live if a.state in (S.RUNNING, S.STARTING)]
        silent = [a for a in live if a.state is S.SILENT]
        draining = [a for a in active if self.views.get(a.node) and self.views[a.node].record.draining]
        if draining and len(active) == len(draining):
            a = draining[0]
            if spec.job_class == "service":
                view = self.views[a.node]
                old = Stop(a.id, a.job, a.node, view.work_dir, f"drained: {view.record.cordon_reason or 'drain'}",
                           self.grace_s)
                placed = self._start(job, spec, r, offers, exclude={a.node}, then_stop=(old,), why="drain")
                return "running", "" if placed is True else f"drain of {a.node} waits: {placed}"
            self.end(a, S.KILLED, Outcome.DRAIN, f"node {a.node} is draining", stop=True)
            job = self._apply_ended(self.jobs[job.name], spec)
            self.jobs[job.name] = job
            active = []
            if job.state.terminal:
                return "pending", job.reason
        if active:
            return "running", ""
        if silent:
            a = silent[0]
            view = self.views.get(a.node)
            if spec.job_class != "service" or (view is not None and view.partitioned):
                left = max(0.0, p.unreachable_grace - (self.now - (a.silent_since or self.now)))
                what = "requeue" if spec.job_class != "service" else "hedge"
                return "silent", (f"node {a.node} silent for {_ago(self.now - (a.silent_since or self.now))}; "
                                  f"{what} after unreachable_grace ({_ago(left)} left)"
                                  if not (view and view.partitioned) else
                                  f"node {a.node} silent (fleet partition suspected: waiting)")
            placed = self._start(job, spec, r, offers, exclude={s.node for s in silent}, why="hedge")
            if placed is True:
                self.event("hedge", f"replica {r}: node {a.node} silent, hedging with a new attempt "
                           f"(the older copy is stopped when its node answers)", job=job.name, node=a.node,
                           severity="warning")
                return "running", ""
            return "silent", f"node {a.node} silent; no node for a hedge: {placed}"
        job = self.jobs[job.name]
        if job.next_try_at and self.now < job.next_try_at:
            return "pending", f"{job.reason} (next attempt in {_ago(job.next_try_at - self.now)})"
        placed = self._start(job, spec, r, offers, exclude=set(), why="")
        if placed is True:
            return "running", ""
        self.plan.unplaced.append(job.name)
        return "pending", placed

    def _start(self, job: JobRecord, spec: JobSpec, r: int, offers: dict[str, Offer], *, exclude: set[str],
               then_stop: tuple["Stop", ...] = (), why: str) -> bool | str:
        failed_on = frozenset(a.node for a in self.attempts.values() if a.job == job.name and a.outcome in
                              (Outcome.EXIT.value, Outcome.HUNG.value, Outcome.NODE.value, Outcome.START.value))
        req = Request(job.name, spec.gpus, spec.gpu_type, spec.gpu_memory_gb, spec.pool, spec.spreads,
                      avoid=failed_on, exclude=frozenset(exclude))
        got = place(req, list(offers.values()))
        if not isinstance(got, Placement):
            return got
        job = self.jobs[job.name]
        n = job.attempts_made + 1
        attempt_id = f"{job.name}.{n}"
        uuids = tuple(g.uuid for g in got.gpus)
        a = self.put(Attempt(id=attempt_id, job=job.name, n=n, replica=r, node=got.node, state=S.STARTING,
                             reason="launching", gpus=uuids, created_at=self.now))
        self.jobs[job.name] = replace(job, attempts_made=n, next_try_at=None)
        o = offers[got.node]
        offers[got.node] = replace(o, used=o.used | set(uuids), replicas={**o.replicas, job.name: o.replicas.get(job.name, 0) + 1})
        view = self.views[got.node]
        env = build_env(spec.env, job=job.name, attempt_id=attempt_id, replica=r, gpu_uuids=uuids,
                        restart_count=job.restarts + job.failures, checkpoint_dir=spec.checkpoint_dir)
        self.plan.launches.append(Launch(a, got.node, view.work_dir,
                                         LaunchSpec(attempt_id, spec.shell_command, env, spec.work_dir,
                                                    spec.log_max_bytes, int(spec.retention)), then_stop))
        gpus = ",".join(str(g.index) for g in got.gpus) or "none"
        self.event("attempt-starting", f"attempt {attempt_id} placed on {got.node} (GPUs {gpus})"
                   + (f" [{why}]" if why else ""), job=job.name, node=got.node)
        return True

    # -- step 3: lemon nodes

    def lemons(self, history: list[Attempt], rule: LemonRule) -> None:
        recent = [a for a in list(history) + [e.attempt for e in self.ended]
                  if a.ended_at is not None and a.ended_at >= self.now - rule.window_s
                  and a.outcome in (Outcome.EXIT.value, Outcome.HUNG.value)]
        everything = {a.id: a for a in history}
        everything.update(self.attempts)
        fine_elsewhere = {}
        for a in everything.values():
            if a.state is S.RUNNING or a.outcome == Outcome.OK.value:
                fine_elsewhere.setdefault(a.job, set()).add(a.node)
        by_node: dict[str, dict[str, Attempt]] = {}
        for a in recent:
            if fine_elsewhere.get(a.job, set()) - {a.node}:
                by_node.setdefault(a.node, {}).setdefault(a.job, a)
        for node, failures in sorted(by_node.items()):
            view = self.views.get(node)
            if view is None or len(failures) < rule.after or view.record.state is NodeState.QUARANTINED:
                continue
            listed = ", ".join(f"{a.id} ({a.reason})" for a in list(failures.values())[:5])
            reason = (f"lemon: attempts of {len(failures)} different jobs failed here within "
                      f"{rule.window_s / 60:g}m while they ran fine elsewhere: {listed}")
            rec = replace(view.record, state=NodeState.QUARANTINED, reason=reason, needs_release=True,
                          state_since=self.now)
            self.plan.nodes[node] = rec
            self.views[node] = replace(view, record=rec)
            self.event("node-state", f"{view.record.state.value} -> quarantined: {reason}", node=node,
                       severity="warning")


def plan_jobs(jobs: dict[str, JobRecord], attempts: list[Attempt], views: dict[str, NodeView], now: float, *,
              history: list[Attempt] = (), lemon: LemonRule = LemonRule(), stop_grace_s: float = 5.0) -> JobPlan:
    """Decide one pass for every active job. `attempts`: every attempt of these jobs (live ones
    included); `history`: attempts of any job that ended within the lemon window."""
    p = _Pass(jobs, attempts, views, now, stop_grace_s)
    p.fenced()
    p.observe_attempts()
    p.decide_jobs()
    p.lemons(list(history), lemon)
    return p.plan


def after_launch(job: JobRecord, attempt: Attempt, ok: bool, pid: int | None, detail: str, now: float
                 ) -> tuple[JobRecord, Attempt, list[Event]]:
    """Record a launch's answer: the attempt runs, or failed to start (retried by the next pass)."""
    if ok:
        a = replace(attempt, state=S.RUNNING, pid=pid, started_at=now, heartbeat_at=now, reason="running")
        ev = Event(now, "attempt-running", f"attempt {a.id} running on {a.node} (pid {pid})", node=a.node, job=a.job)
        if job.state is JobState.PENDING or job.reason.startswith("starting on"):
            job = replace(job, state=JobState.RUNNING, reason=f"running on {a.node} (attempt {a.n})",
                          reason_code="running", pending_since=None, updated_at=now)
        return job, a, [ev]
    a = replace(attempt, state=S.FAILED_TO_START, reason=f"launch failed: {detail}", ended_at=now,
                outcome=Outcome.START.value)
    try:
        spec = spec_from_store(job.spec)
        d = decide(spec.job_class, policy(spec.job_class, spec.recovery.model_dump()), Outcome.START, exit_code=None,
                   restarts=job.restarts, failures=job.failures, attempts=job.attempts_made, detail=detail)
    except ValueError:
        d = Decision("retry", "failed-to-start", "retrying", delay=2.0, restarts=job.restarts, failures=job.failures)
    job = replace(job, restarts=d.restarts, failures=d.failures, updated_at=now, reason_code=d.code,
                  reason=f"attempt {a.n} failed to start on {a.node}: {detail}; {d.words}")
    if d.action == "fail":
        job = replace(job, state=JobState.FAILED)
    else:
        job = replace(job, next_try_at=now + max(d.delay, 2.0))
    ev = Event(now, "attempt-ended", f"attempt {a.id} on {a.node} failed_to_start: {detail}; {d.words}", node=a.node,
               job=a.job, severity="warning")
    return job, a, [ev]
