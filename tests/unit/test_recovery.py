"""recovery.decide / policy / backoff: the DESIGN section 5 table, class by outcome, table-style.

Guards against: a batch job retried forever (or never), a training job restarted after its own
crash, a manual job moved behind the user's back, a service left dead after it exited 0, a backoff
that never grows (a crash loop hammering a node) or grows without bound, and terminal reasons
that do not read like DESIGN's ("exit code 3 after 2 attempts").
Infra exit codes are mapped to node failures by the planner: see test_job_planner.py.
"""

from __future__ import annotations

import pytest

from gridctl.recovery import (DEFAULT_MAX_BACKOFF, DEFAULT_UNREACHABLE_GRACE, Outcome, Policy, backoff, decide,
                              policy)

O = Outcome


def pol(job_class: str, **recovery) -> Policy:
    return policy(job_class, recovery)


def run(job_class: str, outcome: Outcome, *, exit_code: int | None = None, restarts: int = 0, failures: int = 0,
        attempts: int = 1, detail: str = "", **recovery):
    return decide(job_class, pol(job_class, **recovery), outcome, exit_code=exit_code, restarts=restarts,
                  failures=failures, attempts=attempts, detail=detail)


# ---------------------------------------------------------------- the table: class x outcome -> action

TABLE = [
    # class, outcome, exit code, action, code
    ("service", O.NODE, None, "retry", "node-lost"),
    ("service", O.EXIT, 3, "retry", "exit-code"),
    ("service", O.HUNG, None, "retry", "hung"),
    ("service", O.OK, 0, "retry", "restart"),
    ("service", O.DURATION, None, "retry", "max-duration"),
    ("service", O.DRAIN, None, "retry", "drained"),
    ("service", O.START, None, "retry", "failed-to-start"),
    ("batch", O.NODE, None, "retry", "node-lost"),
    ("batch", O.EXIT, 3, "fail", "exit-code"),          # retries default 0
    ("batch", O.HUNG, None, "fail", "hung"),
    ("batch", O.OK, 0, "succeed", "succeeded"),
    ("batch", O.DURATION, None, "fail", "max-duration"),
    ("batch", O.DRAIN, None, "retry", "drained"),
    ("batch", O.START, None, "retry", "failed-to-start"),
    ("training", O.NODE, None, "retry", "node-lost"),
    ("training", O.EXIT, 3, "fail", "exit-code"),
    ("training", O.HUNG, None, "fail", "hung"),
    ("training", O.OK, 0, "succeed", "succeeded"),
    ("training", O.DURATION, None, "fail", "max-duration"),
    ("training", O.DRAIN, None, "retry", "drained"),
    ("manual", O.NODE, None, "fail", "node-lost"),
    ("manual", O.EXIT, 3, "fail", "exit-code"),
    ("manual", O.HUNG, None, "fail", "hung"),
    ("manual", O.OK, 0, "succeed", "succeeded"),
    ("manual", O.DURATION, None, "fail", "max-duration"),
    ("manual", O.DRAIN, None, "fail", "drained"),
    ("manual", O.START, None, "fail", "failed-to-start"),
] + [(c, O.CANCEL, None, "fail", "cancelled") for c in ("service", "batch", "training", "manual")] \
  + [(c, O.SUPERSEDED, None, "retry", "superseded") for c in ("service", "batch", "training", "manual")]


@pytest.mark.parametrize("job_class, outcome, exit_code, action, code", TABLE,
                         ids=[f"{c}-{o.value}" for c, o, *_ in TABLE])
def test_design_table_class_by_outcome(job_class, outcome, exit_code, action, code):
    d = run(job_class, outcome, exit_code=exit_code)
    assert (d.action, d.code) == (action, code), d.words


@pytest.mark.parametrize("job_class", ["service", "batch", "training"])
def test_node_failure_is_rerouted_at_once_without_delay(job_class):
    d = run(job_class, O.NODE, detail="node n1 rebooted")
    assert d.action == "retry" and d.delay == 0.0
    assert d.restarts == 1 and d.failures == 0


def test_service_node_failure_says_rerouted_and_batch_says_requeued():
    assert run("service", O.NODE).words == "rerouted"
    assert run("batch", O.NODE).words == "requeued (1 of 3 restarts)"
    assert run("training", O.NODE, restarts=1).words == "requeued (2 of 3 restarts)"


@pytest.mark.parametrize("restarts", [0, 5, 50, 500])
def test_service_is_rerouted_however_often_its_nodes_failed(restarts):
    d = run("service", O.NODE, restarts=restarts)
    assert d.action == "retry" and d.restarts == restarts + 1


@pytest.mark.parametrize("job_class, restarts, max_restarts, action", [
    ("batch", 0, None, "retry"), ("batch", 2, None, "retry"), ("batch", 3, None, "fail"),   # default 3
    ("training", 2, None, "retry"), ("training", 3, None, "fail"),
    ("batch", 0, 0, "fail"), ("batch", 4, 5, "retry"), ("batch", 5, 5, "fail"),
])
def test_batch_and_training_requeue_up_to_max_restarts(job_class, restarts, max_restarts, action):
    d = run(job_class, O.NODE, restarts=restarts, attempts=restarts + 1, detail="node n1 rebooted",
            max_restarts=max_restarts)
    assert d.action == action
    if action == "fail":
        limit = max_restarts if max_restarts is not None else 3
        assert d.words == (f"node-lost after {restarts + 1} attempt{'s' if restarts else ''} "
                           f"(max_restarts {limit}): node n1 rebooted")


def test_manual_node_failure_fails_and_says_why():
    d = run("manual", O.NODE, detail="node n1 quarantined: xid 79")
    assert d.action == "fail"
    assert d.words == "node-lost (manual class: never moved automatically): node n1 quarantined: xid 79"


@pytest.mark.parametrize("failures, action", [(0, "retry"), (1, "retry"), (2, "fail")])
def test_batch_retries_while_retries_are_left(failures, action):
    d = run("batch", O.EXIT, exit_code=3, failures=failures, attempts=failures + 1, retries=2)
    assert d.action == action
    assert d.failures == failures + 1


def test_batch_retry_says_how_many_are_left_and_when():
    d = run("batch", O.EXIT, exit_code=3, retries=2)
    assert d.words == "exit code 3: retry 1, 2 left in 10s"
    assert d.delay == 10.0


def test_batch_failure_reads_exit_code_3_after_2_attempts():
    d = run("batch", O.EXIT, exit_code=3, failures=1, attempts=2, retries=1)
    assert (d.action, d.code, d.words) == ("fail", "exit-code", "exit code 3 after 2 attempts")


def test_one_attempt_is_singular():
    assert run("batch", O.EXIT, exit_code=3).words == "exit code 3 after 1 attempt"


def test_a_process_that_vanished_without_an_exit_code_is_its_own_failure():
    d = run("batch", O.EXIT, exit_code=None)
    assert d.words == "process vanished without an exit code after 1 attempt"


def test_hung_batch_job_fails_as_hung_when_no_retries_are_left():
    d = run("batch", O.HUNG, attempts=2, failures=1, retries=1)
    assert (d.action, d.code, d.words) == ("fail", "hung", "hung (no heartbeat) after 2 attempts")


@pytest.mark.parametrize("retries", [None, 5])
def test_training_fails_on_its_own_exit_whatever_retries_say(retries):
    assert run("training", O.EXIT, exit_code=1, retries=retries).action == "fail"


def test_manual_never_retried_even_with_retries_set():
    assert run("manual", O.EXIT, exit_code=1, retries=5).action == "fail"
    assert run("manual", O.NODE, max_restarts=5).action == "fail"


def test_service_restarts_with_backoff_on_a_crash():
    d = run("service", O.EXIT, exit_code=1, failures=2)
    assert d.action == "retry"
    assert d.delay == 20.0                      # 5s doubled twice
    assert d.words == "exit code 1: restarting in 20s"
    assert d.failures == 3


def test_service_restarts_at_once_on_exit_0():
    d = run("service", O.OK, exit_code=0)
    assert d.action == "retry" and d.delay == 0.0


@pytest.mark.parametrize("attempts, words", [(1, "succeeded"), (3, "succeeded after 3 attempts")])
def test_success_words(attempts, words):
    assert run("batch", O.OK, exit_code=0, attempts=attempts).words == words


@pytest.mark.parametrize("outcome", list(Outcome), ids=lambda o: o.value)
def test_counters_never_go_backwards(outcome):
    d = run("batch", outcome, exit_code=1, restarts=1, failures=1, attempts=3, retries=3)
    assert d.restarts >= 1 and d.failures >= 1


def test_failed_launch_is_retried_after_a_short_delay_and_counts_as_a_restart():
    d = run("batch", O.START)
    assert d.action == "retry" and d.delay == 2.0 and d.restarts == 1


# ---------------------------------------------------------------- backoff

@pytest.mark.parametrize("failures, expected", [
    (0, 0.0), (1, 10.0), (2, 20.0), (3, 40.0), (4, 80.0), (5, 160.0), (6, 300.0), (7, 300.0), (60, 300.0),
])
def test_backoff_doubles_per_failure_and_is_capped(failures, expected):
    assert backoff(pol("batch"), failures) == expected


def test_backoff_cap_and_base_are_overridable():
    p = pol("batch", backoff=1.0, max_backoff=5.0)
    assert [backoff(p, n) for n in range(1, 6)] == [1.0, 2.0, 4.0, 5.0, 5.0]


def test_zero_backoff_retries_at_once():
    assert backoff(pol("batch", backoff=0.0), 3) == 0.0


# ---------------------------------------------------------------- policy(): defaults and overrides

@pytest.mark.parametrize("job_class, max_restarts, retries, backoff_s", [
    ("service", None, None, 5.0), ("batch", 3, 0, 10.0), ("training", 3, 0, 30.0), ("manual", 0, 0, 10.0),
])
def test_policy_class_defaults(job_class, max_restarts, retries, backoff_s):
    p = pol(job_class)
    assert (p.max_restarts, p.retries, p.backoff) == (max_restarts, retries, backoff_s)
    assert p.max_backoff == DEFAULT_MAX_BACKOFF == 300.0
    assert p.unreachable_grace == DEFAULT_UNREACHABLE_GRACE == 120.0
    assert p.hang_timeout is None and p.max_duration is None and p.pending_timeout is None
    assert p.infra_exit_codes == frozenset()


def test_policy_overrides_win_and_none_means_the_class_default():
    p = policy("batch", {"max_restarts": 7, "retries": None, "backoff": 2, "max_backoff": 60, "hang_timeout": 90,
                         "unreachable_grace": 30, "infra_exit_codes": [134, 77], "max_duration": 3600,
                         "pending_timeout": None})
    assert p.max_restarts == 7 and p.retries == 0
    assert (p.backoff, p.max_backoff, p.hang_timeout, p.unreachable_grace) == (2.0, 60.0, 90, 30.0)
    assert p.infra_exit_codes == frozenset({77, 134})
    assert p.max_duration == 3600 and p.pending_timeout is None


def test_policy_reads_a_validated_job_specs_recovery_block():
    from gridctl.jobspec import JobSpec
    spec = JobSpec.model_validate({"name": "t", "class": "training", "command": "x",
                                   "recovery": {"backoff": "1m", "unreachable_grace": "5m", "infra_exit_codes": [74]}})
    p = policy(spec.job_class, spec.recovery.model_dump())
    assert (p.backoff, p.unreachable_grace, p.infra_exit_codes, p.max_restarts) == (60.0, 300.0, frozenset({74}), 3)


def test_policy_of_an_unknown_class_raises():
    with pytest.raises(KeyError):
        policy("daemon", {})
