"""The plain data of a pass's actions and of their answers: what the planners ask for
(attempt launches and stops, cloud calls) and what reconcile/act.py brings back.

Written by the planners (jobs, replicas, pools), carried out by act.py, read back by
plan.after_actions. No logic here.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..launcher import LaunchResult, LaunchSpec
from ..models import Attempt


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


@dataclass(frozen=True)
class CloudLaunch:
    """Ask a pool for `count` instances under one request id."""

    pool: str
    request_id: str
    count: int
    new: bool                            # a new intent (apply records it) or an open one re-issued
    job: str | None = None               # grown for this pending job
    fallbacks: tuple[str, ...] = ()      # pools to ask next, in order, on a capacity or quota refusal


@dataclass(frozen=True)
class CloudRetire:
    """Terminate an instance (or stop and tag it for triage)."""

    pool: str
    instance: str
    triage: bool
    why: str
    replacing: bool                      # quarantined: a replacement follows


@dataclass(frozen=True)
class CloudResult:
    """What one cloud call answered (act.call_clouds), as plain data."""

    call: CloudLaunch | CloudRetire
    pool: str                            # the pool asked (a fallback's, for a launch that fell over)
    request_id: str | None = None
    instances: tuple[str, ...] = ()
    error: str | None = None             # "CapacityError: ..." ; None when it worked
    refused: bool = False                # a capacity or quota refusal: the pool rests
    retry_after_s: float | None = None   # TransientError.delay: the pool rests that long


@dataclass(frozen=True)
class StopResult:
    stop: Stop
    ok: bool
    detail: str


@dataclass
class Results:
    """Every answer of one pass's actions."""

    launched: list[tuple[Launch, LaunchResult]] = field(default_factory=list)
    stopped: list[StopResult] = field(default_factory=list)
    cloud: list[CloudResult] = field(default_factory=list)
