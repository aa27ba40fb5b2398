"""Pure: decide what happens to every job and attempt in a pass (DESIGN section 5).

Called by reconcile.plan.plan after the node decisions of the same pass. Input: the jobs with
their parsed specs, their attempts, and a NodeView per node (its new record, what its probe
reported about attempt directories). Output: attempt and job rows to write, events, and the
launches / stops for reconcile/act.py to carry out. No I/O; tested table-style.

The pass is split by concern: `attempts.judge` (what each node says about each live attempt),
`replicas.keep_placed` (recovery decisions and new attempts), `lemons.find` (nodes that eat
jobs). They share one JobPass, the working state of the pass. `after_launch` and `handover`
decide what follows a launch's answer; reconcile.plan.after_actions calls them.

Evidence vs silence: a node that answers and is quarantined (or rebooted) loses its attempts at
once; a node that is merely silent loses nothing until `unreachable_grace`, and a service replica
on it is hedged by a new attempt elsewhere. Fencing: an attempt gridctl has ended is on its
node's kill list until the node's probe confirms it is gone.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field, replace

from ..jobspec import JobSpec, spec_from_store
from ..models import (Attempt, AttemptReport, AttemptState, Event, JobRecord, JobState, NodeRecord, Outcome,
                      ReadyCheck)
from ..placement import Gpu
from ..recovery import Decision, Policy, Step, decide, policy
from .actions import Launch, Stop

S = AttemptState


class ReplicaState(str, enum.Enum):
    """Where one replica of a job stands after this pass."""

    RUNNING = "running"
    PENDING = "pending"
    SILENT = "silent"


@dataclass(frozen=True)
class NodeView:
    """One node of this pass as the job planner needs it."""

    record: NodeRecord                       # after this pass's health decision
    answered: bool                           # the probe reached the node (it may have hung)
    complete: bool                           # the probe ran to its end: attempt reports are complete
    partitioned: bool = False                # silent while our side looks partitioned
    rebooted: bool = False
    condemned: bool = False                  # its probe is evidence its attempts are gone (health.condemns_attempts)
    fault_gpus: frozenset[int] | None = None  # condemned by faults on these GPU indexes only (health.fault_gpus)
    foreign: frozenset[str] = frozenset()    # attempt dirs there without their token (not ours, or swapped)
    busy_gpus: frozenset[str] = frozenset()  # GPU UUIDs with compute processes (ours or not)
    reports: dict[str, AttemptReport] = field(default_factory=dict)
    gpus: tuple[Gpu, ...] = ()
    work_dir: str = "~/.gridctl"


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


def short(text: str, n: int = 70) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


def ago(seconds: float) -> str:
    return f"{seconds:.0f}s"


def parse_specs(jobs: dict[str, JobRecord]) -> dict[str, JobSpec | None]:
    """Each stored spec parsed once; None for one this version cannot read (the job then fails)."""
    out: dict[str, JobSpec | None] = {}
    for name, job in jobs.items():
        try:
            out[name] = spec_from_store(job.spec)
        except ValueError:
            out[name] = None
    return out


class JobPass:
    """The working state of one planning pass, shared by attempts.py, replicas.py and lemons.py."""

    def __init__(self, jobs: dict[str, JobRecord], specs: dict[str, JobSpec | None], attempts: list[Attempt],
                 views: dict[str, NodeView], now: float, grace_s: float):
        self.now = now
        self.views = views
        self.grace_s = grace_s
        self.jobs = dict(jobs)
        self.attempts: dict[str, Attempt] = {a.id: a for a in attempts}
        self.plan = JobPlan()
        self.ended: list[Ended] = []
        self.specs: dict[str, JobSpec] = {name: s for name, s in specs.items() if s is not None and name in jobs}
        self.policies: dict[str, Policy] = {name: policy(s.job_class, s.recovery.model_dump())
                                            for name, s in self.specs.items()}

    def event(self, kind: str, message: str, *, job: str | None = None, node: str | None = None,
              severity: str = "info") -> None:
        self.plan.events.append(Event(self.now, kind, message, node=node, job=job, severity=severity))

    def put(self, a: Attempt) -> Attempt:
        self.attempts[a.id] = a
        self.plan.attempts[a.id] = a
        return a

    def end(self, a: Attempt, state: AttemptState, outcome: Outcome, reason: str, *, exit_code: int | None = None,
            stop: bool = False, grace_s: float | None = None) -> None:
        done = self.put(replace(a, state=state, reason=reason, ended_at=self.now, outcome=outcome,
                                exit_code=exit_code if exit_code is not None else a.exit_code, silent_since=None))
        self.ended.append(Ended(done, outcome, reason))
        if stop:
            view = self.views.get(a.node)
            self.plan.stops.append(Stop(a.id, a.job, a.node, view.work_dir if view else "~/.gridctl", reason,
                                        self.grace_s if grace_s is None else grace_s))

    def live(self, job: str, replica: int | None = None) -> list[Attempt]:
        return [a for a in self.attempts.values() if a.job == job and a.state.live
                and (replica is None or a.replica == replica)]


def plan_jobs(jobs: dict[str, JobRecord], attempts: list[Attempt], views: dict[str, NodeView], now: float, *,
              history: list[Attempt] = (), lemon: LemonRule = LemonRule(), stop_grace_s: float = 5.0,
              specs: dict[str, JobSpec | None] | None = None, checks: dict[str, ReadyCheck] | None = None) -> JobPlan:
    """Decide one pass for every active job. `attempts`: every attempt of these jobs (live ones
    included); `history`: attempts of any job that ended within the lemon window; `specs`: the
    jobs' parsed specs (parsed here when not given); `checks`: this pass's readiness checks."""
    from . import attempts as judging, lemons, replicas
    p = JobPass(jobs, parse_specs(jobs) if specs is None else specs, attempts, views, now, stop_grace_s)
    judging.fenced(p)
    judging.judge(p)
    judging.apply_readiness(p, checks or {})
    replicas.keep_placed(p)
    lemons.find(p, list(history), lemon)
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
                outcome=Outcome.START)
    try:
        spec = spec_from_store(job.spec)
        d = decide(spec.job_class, policy(spec.job_class, spec.recovery.model_dump()), Outcome.START, exit_code=None,
                   restarts=job.restarts, failures=job.failures, attempts=job.attempts_made, detail=detail)
    except ValueError:
        d = Decision(Step.RETRY, "failed-to-start", "retrying", delay=2.0, restarts=job.restarts,
                     failures=job.failures)
    job = replace(job, restarts=d.restarts, failures=d.failures, updated_at=now, reason_code=d.code,
                  reason=f"attempt {a.n} failed to start on {a.node}: {detail}; {d.words}")
    if d.action is Step.FAIL:
        job = replace(job, state=JobState.FAILED)
    else:
        job = replace(job, next_try_at=now + max(d.delay, 2.0))
    ev = Event(now, "attempt-ended", f"attempt {a.id} on {a.node} failed_to_start: {detail}; {d.words}", node=a.node,
               job=a.job, severity="warning")
    return job, a, [ev]


def handover(old: Attempt, new: Attempt, now: float) -> tuple[Attempt, Event] | None:
    """A drain's make-before-break: once the replacement runs, the old copy ends (its Stop follows).
    None when the old copy already ended some other way."""
    if not old.state.live:
        return None
    done = replace(old, state=S.KILLED, ended_at=now, outcome=Outcome.DRAIN,
                   reason=f"drained: replaced by attempt {new.n}")
    return done, Event(now, "attempt-ended", f"attempt {old.id} on {old.node} killed: drained, replaced by attempt "
                       f"{new.id} on {new.node}", node=old.node, job=old.job)
