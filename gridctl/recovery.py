"""Pure: workload class + how an attempt ended -> what happens to the job next (DESIGN section 5).

Called by reconcile/jobs.py once per attempt, in the pass where the attempt ends. No I/O.

| class    | node failure                  | exit != 0 / hung             | exit 0    |
|----------|-------------------------------|------------------------------|-----------|
| service  | reroute now                   | restart with backoff         | restart   |
| batch    | requeue, up to max_restarts   | retry while retries left     | succeeded |
| training | requeue (same checkpoint dir) | failed                       | succeeded |
| manual   | failed                        | failed                       | succeeded |
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from .models import Outcome

__all__ = ["Decision", "Outcome", "Policy", "Step", "backoff", "decide", "policy"]


class Step(str, enum.Enum):
    """What happens to the job after one of its attempts ended."""

    RETRY = "retry"
    SUCCEED = "succeed"
    FAIL = "fail"


@dataclass(frozen=True)
class Policy:
    max_restarts: int | None      # None: unlimited
    retries: int | None
    backoff: float
    max_backoff: float
    hang_timeout: float | None
    unreachable_grace: float
    infra_exit_codes: frozenset[int]
    max_duration: float | None
    pending_timeout: float | None


_CLASS_DEFAULTS = {
    "service": dict(max_restarts=None, retries=None, backoff=5.0),
    "batch": dict(max_restarts=3, retries=0, backoff=10.0),
    "training": dict(max_restarts=3, retries=0, backoff=30.0),
    "manual": dict(max_restarts=0, retries=0, backoff=10.0),
}
DEFAULT_UNREACHABLE_GRACE = 120.0
DEFAULT_MAX_BACKOFF = 300.0


def policy(job_class: str, recovery: dict) -> Policy:
    """The class defaults with the job's `recovery:` values on top."""
    base = _CLASS_DEFAULTS[job_class]
    r = {k: v for k, v in recovery.items() if v is not None}
    return Policy(
        max_restarts=r.get("max_restarts", base["max_restarts"]),
        retries=r.get("retries", base["retries"]),
        backoff=float(r.get("backoff", base["backoff"])),
        max_backoff=float(r.get("max_backoff", DEFAULT_MAX_BACKOFF)),
        hang_timeout=r.get("hang_timeout"),
        unreachable_grace=float(r.get("unreachable_grace", DEFAULT_UNREACHABLE_GRACE)),
        infra_exit_codes=frozenset(r.get("infra_exit_codes", ())),
        max_duration=r.get("max_duration"),
        pending_timeout=r.get("pending_timeout"),
    )


@dataclass(frozen=True)
class Decision:
    action: Step
    code: str                # reason code: exit-code, node-lost, hung, max-duration, ...
    words: str               # the human reason
    delay: float = 0.0       # wait before the next attempt
    restarts: int = 0        # the job's node-failure requeue count after this decision
    failures: int = 0        # the job's process-failure count after this decision


def backoff(p: Policy, failures: int) -> float:
    if failures <= 0:
        return 0.0
    return min(p.max_backoff, p.backoff * 2 ** (failures - 1))


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def decide(job_class: str, p: Policy, outcome: Outcome, *, exit_code: int | None, restarts: int, failures: int,
           attempts: int, detail: str = "") -> Decision:
    """The next step for a job whose attempt just ended. `attempts` counts the one that ended."""
    if outcome is Outcome.CANCEL:
        return Decision(Step.FAIL, "cancelled", "by user", restarts=restarts, failures=failures)
    if outcome in (Outcome.SUPERSEDED,):
        return Decision(Step.RETRY, "superseded", "stale copy replaced", restarts=restarts, failures=failures)
    if outcome is Outcome.OK:
        if job_class == "service":
            return Decision(Step.RETRY, "restart", "exited 0: service restarted", restarts=restarts, failures=failures)
        return Decision(Step.SUCCEED, "succeeded", f"succeeded after {_plural(attempts, 'attempt')}"
                        if attempts > 1 else "succeeded", restarts=restarts, failures=failures)
    if outcome is Outcome.DRAIN:
        if job_class == "manual":
            return Decision(Step.FAIL, "drained", "stopped by drain (manual class: never moved automatically)",
                            restarts=restarts, failures=failures)
        return Decision(Step.RETRY, "drained", f"moved off a draining node{': ' + detail if detail else ''}",
                        restarts=restarts, failures=failures)
    if outcome in (Outcome.NODE, Outcome.START):
        why = detail or ("launch failed" if outcome is Outcome.START else "node failed")
        code = "failed-to-start" if outcome is Outcome.START else "node-lost"
        if job_class == "manual":
            return Decision(Step.FAIL, code, f"{code} (manual class: never moved automatically): {why}", restarts=restarts, failures=failures)
        n = restarts + 1
        if p.max_restarts is not None and n > p.max_restarts:
            return Decision(Step.FAIL, code, f"{code} after {_plural(attempts, 'attempt')} "
                            f"(max_restarts {p.max_restarts}): {why}", restarts=n, failures=failures)
        delay = 2.0 if outcome is Outcome.START else 0.0
        verb = "rerouted" if job_class == "service" else "requeued"
        limit = "" if p.max_restarts is None else f" ({n} of {p.max_restarts} restarts)"
        return Decision(Step.RETRY, code, f"{verb}{limit}", delay=delay, restarts=n, failures=failures)
    if outcome is Outcome.DURATION:
        if job_class == "service":
            n = failures + 1
            return Decision(Step.RETRY, "max-duration", "ran past max_duration: restarted", delay=0.0, restarts=restarts,
                            failures=n)
        return Decision(Step.FAIL, "max-duration", f"max-duration ({detail})" if detail else "max-duration",
                        restarts=restarts, failures=failures + 1)
    # EXIT or HUNG: the process's own failure
    n = failures + 1
    what = f"exit code {exit_code}" if outcome is Outcome.EXIT and exit_code is not None else \
        ("hung (no heartbeat)" if outcome is Outcome.HUNG else "process vanished without an exit code")
    code = "hung" if outcome is Outcome.HUNG else "exit-code"
    if job_class == "service":
        delay = backoff(p, n)
        return Decision(Step.RETRY, code, f"{what}: restarting in {delay:g}s", delay=delay, restarts=restarts, failures=n)
    if job_class == "batch" and (p.retries is None or n <= p.retries):
        delay = backoff(p, n)
        left = "" if p.retries is None else f", {p.retries - n + 1} left"
        return Decision(Step.RETRY, code, f"{what}: retry {n}{left} in {delay:g}s", delay=delay, restarts=restarts,
                        failures=n)
    return Decision(Step.FAIL, code, f"{what} after {_plural(attempts, 'attempt')}", restarts=restarts, failures=n)
