"""Alert hooks: the pure delivery rules (table-style), the spec's `alerts:` checks through the real
console script, the event kind catalogue against the code, and a command hook's send.

Guards against: a hook paged for events below its severity or outside its kinds, a failing hook
tried at every pass, a batch sent twice by two rounds at once, giving up too early or never, an
idempotency key that changes between resends, node text that pings a Slack channel, a URL's token
shown to a person, and bad `alerts:` entries accepted (or a traceback instead of one line).
"""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from gridctl.alerts.rules import (MAX_BACKOFF_S, Hook, Sent, after_send, backoff_s, batch_key, body, claimed,
                                  describe, label, next_batch, wants)
from gridctl.alerts.send import send
from gridctl.models import EVENT_KINDS, Delivery, Event
from gridctl.store import connect, deliveries, queries, write_tx

GRIDCTL = [sys.executable, "-c", "from gridctl.cli import main; main()"]
ROOT = Path(__file__).resolve().parents[2]

HOOK = Hook(key="k1", label="webhook https://hooks.example/…", webhook="https://hooks.example/x",
            min_severity="warning", timeout_s=5.0, max_tries=3, backoff_s=5.0)


def ev(kind="node-state", severity="warning", node="gpu-1", message="ready -> quarantined") -> Event:
    return Event(1000.0, kind, message, node=node, severity=severity)


@pytest.mark.parametrize("min_severity, kinds, event, wanted", [
    ("warning", None, ev(severity="info"), False),
    ("warning", None, ev(severity="warning"), True),
    ("warning", None, ev(severity="alert"), True),
    ("alert", None, ev(severity="warning"), False),
    ("info", None, ev(severity="info"), True),
    ("info", frozenset({"alert"}), ev(kind="node-state", severity="alert"), False),
    ("info", frozenset({"alert", "node-state"}), ev(kind="node-state", severity="info"), True),
    ("warning", frozenset({"attempt-ended"}), ev(kind="attempt-ended", severity="info"), False),
])
def test_a_hook_takes_only_events_at_its_severity_and_of_its_kinds(min_severity, kinds, event, wanted):
    hook = Hook(key="k", label="l", min_severity=min_severity, kinds=kinds)
    assert wants(hook, event) is wanted


def d(event_id, tries=0, next_try_at=None, state="pending", error="") -> Delivery:
    return Delivery(event_id, "k1", state, tries, next_try_at, error)


@pytest.mark.parametrize("pending, now, limit, batch", [
    ([], 100.0, 10, []),
    ([d(3), d(1), d(2)], 100.0, 10, [1, 2, 3]),                          # oldest first
    ([d(1), d(2), d(3)], 100.0, 2, [1, 2]),                              # at most `limit`; the rest next round
    ([d(1, 1, 105.0), d(2)], 100.0, 10, []),                             # a retry waits: the new event waits with it
    ([d(1, 1, 100.0), d(2)], 100.0, 10, [1, 2]),                         # due now: old and new in one request
    ([d(1, 0, 99.0)], 100.0, 10, [1]),                                   # a claim that ran out (sender killed)
])
def test_next_batch_waits_for_a_hooks_backoff_and_sends_old_and_new_together(pending, now, limit, batch):
    assert [x.event_id for x in next_batch(pending, now, limit)] == batch


def test_a_claimed_batch_is_not_picked_again_until_the_hooks_timeout_has_passed():
    batch = claimed([d(1), d(2)], HOOK, 100.0)
    assert next_batch(batch, 104.0) == []
    assert [x.event_id for x in next_batch(batch, 100.0 + HOOK.timeout_s + 2.0)] == [1, 2]


@pytest.mark.parametrize("tries, wait", [(1, 5.0), (2, 10.0), (3, 20.0), (4, 40.0), (30, MAX_BACKOFF_S)])
def test_backoff_doubles_per_try_up_to_a_cap(tries, wait):
    assert backoff_s(HOOK, tries) == wait


@pytest.mark.parametrize("before, sent, after", [
    (d(1), Sent(True), d(1, 1, None, "delivered")),
    (d(1, 1, 99.0, error="HTTP 503"), Sent(True), d(1, 2, None, "delivered")),
    (d(1), Sent(False, "HTTP 503"), d(1, 1, 105.0, "pending", "HTTP 503")),
    (d(1, 1), Sent(False, "timed out"), d(1, 2, 110.0, "pending", "timed out")),
    (d(1, 2), Sent(False, "HTTP 503"), d(1, 3, None, "failed", "HTTP 503")),   # max_tries 3: given up
])
def test_a_sends_answer_makes_each_delivery_delivered_retried_or_failed(before, sent, after):
    assert after_send(before, sent, HOOK, 100.0) == after


@pytest.mark.parametrize("delivery, text", [
    (d(1), "pending"),
    (d(1, 3, None, "failed", "HTTP 503"), "failed: HTTP 503 (3 tries)"),
    (d(1, 1, 110.0, "pending", "timed out"), "pending: timed out (1 try), next try in 10s"),
    (d(1, 1, None, "delivered"), "delivered"),
])
def test_a_delivery_reads_as_its_state_reason_and_tries(delivery, text):
    assert describe(delivery, 100.0) == text


def test_every_event_keeps_its_key_across_resends_and_the_batch_key_follows_its_events():
    events = [(7, ev()), (9, ev(kind="alert", severity="alert", message="host key changed"))]
    key1, first = body(HOOK, "prod", "s1", events)
    key2, again = body(HOOK, "prod", "s1", events)
    payload = json.loads(first)
    assert (key1, first) == (key2, again)
    assert payload["batch"] == key1 and payload["fleet"] == "prod" and payload["delivery"] == "at-least-once"
    assert [(e["key"], e["id"], e["kind"], e["severity"], e["node"]) for e in payload["events"]] == [
        ("prod/s1/7", 7, "node-state", "warning", "gpu-1"), ("prod/s1/9", 9, "alert", "alert", "gpu-1")]
    assert batch_key(HOOK, ["prod/s1/7"]) != key1
    assert body(HOOK, "prod", "s2", events)[1] != first       # another store's event 7 is another event


def test_slack_text_escapes_node_text_so_it_cannot_mention_a_channel_or_draw_escapes():
    slack = Hook(key="k", label="l", webhook="https://hooks.example/x", format="slack")
    _, raw = body(slack, "prod", "s1", [(1, ev(message="xid 79 <!channel> & <https://evil.example|click>\x1b[2J"))])
    payload = json.loads(raw)
    assert list(payload) == ["text"]
    assert payload["text"] == ("gridctl fleet prod: 1 event(s)\n[warning] node-state gpu-1: xid 79 &lt;!channel&gt; "
                               "&amp; &lt;https://evil.example|click&gt;")


@pytest.mark.parametrize("webhook, command, shown", [
    ("https://hooks.slack.example/services/T0/B0/SECRET", None, "webhook https://hooks.slack.example/…"),
    ("http://127.0.0.1:8080/", None, "webhook http://127.0.0.1:8080"),
    ("https://hooks.example?token=SECRET", None, "webhook https://hooks.example/…"),
    (None, ["/usr/local/bin/page", "--token", "SECRET"], "command /usr/local/bin/page"),
])
def test_a_hook_is_shown_without_the_path_query_or_arguments_that_hold_tokens(webhook, command, shown):
    assert label(webhook, command) == shown


def test_every_event_kind_the_code_records_is_in_the_catalogue_hooks_filter_by():
    """`kinds:` is checked against EVENT_KINDS: a kind recorded but missing there could never be chosen."""
    recorded = set()
    for path in (ROOT / "gridctl").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            if isinstance(func, ast.Name) and func.id == "Event" and len(node.args) > 1:
                arg = node.args[1]
            elif isinstance(func, ast.Attribute) and func.attr == "event" and node.args:
                arg = node.args[0]
            else:
                continue
            for const in ast.walk(arg):        # literals, and both arms of `"a" if x else "b"`
                if isinstance(const, ast.Constant) and isinstance(const.value, str):
                    recorded.add(const.value)
    recorded |= {"orphan-attempt", "instance-replaced", "instance-retired"}    # named through a variable
    assert len(recorded) > 25
    assert recorded - EVENT_KINDS == set(), "add these kinds to gridctl.models.EVENT_KINDS (and README Alert hooks)"


# ---------------------------------------------------------------- the store's record of deliveries

def test_a_new_hook_is_offered_only_events_recorded_after_it_and_deliveries_go_with_their_events(tmp_path):
    conn = connect(tmp_path / "s.db")
    with write_tx(conn):
        queries.add_events(conn, [ev(), ev()])
        assert deliveries.ensure_hook(conn, "k1", "webhook https://hooks.example/…") == 2
        queries.add_events(conn, [ev(kind="alert", severity="alert")])
        deliveries.queue(conn, "k1", [3], 100.0)
        deliveries.queue(conn, "k1", [3], 200.0)           # queued twice: still one delivery
        deliveries.save(conn, [d(3, 2, None, "failed", "HTTP 503")], 300.0)
    ((event_id, event, delivery, shown),) = deliveries.undelivered(conn)
    assert (event_id, event.kind, delivery, shown) == (3, "alert", d(3, 2, None, "failed", "HTTP 503"),
                                                        "webhook https://hooks.example/…")
    with write_tx(conn):
        conn.execute("DELETE FROM events WHERE id = 3")    # prune (issue 14 item 4) removes events
    assert deliveries.undelivered(conn) == [] and conn.execute("SELECT COUNT(*) FROM deliveries").fetchone()[0] == 0
    conn.close()


# ---------------------------------------------------------------- a command hook, for real

def test_a_command_hook_that_exits_nonzero_is_a_failed_try_with_its_last_stderr_line(tmp_path):
    script = tmp_path / "page"
    script.write_text("#!/bin/sh\ncat > /dev/null\necho 'pager: no route' >&2\nexit 3\n")
    script.chmod(0o755)
    assert send(Hook(key="k", label="l", command=(str(script),), timeout_s=10), "b", b"{}") == \
        Sent(False, "exit 3: pager: no route")


def test_a_command_hook_that_hangs_is_killed_at_its_timeout(tmp_path):
    script = tmp_path / "page"
    script.write_text("#!/bin/sh\nexec sleep 60\n")
    script.chmod(0o755)
    assert send(Hook(key="k", label="l", command=(str(script),), timeout_s=0.5), "b", b"{}") == Sent(False, "timed out")


# ---------------------------------------------------------------- bad `alerts:` entries: one line each, exit 2

FLEET = "fleet: f\npools:\n  - name: a\n    provider: local\n    count: 1\n    dir: {root}/nodes\nalerts:\n"


def validate(tmp_path, alerts: str) -> subprocess.CompletedProcess:
    path = tmp_path / "fleet.yaml"
    path.write_text(FLEET.format(root=tmp_path) + alerts)
    return subprocess.run([*GRIDCTL, "validate", "-f", str(path)], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "XDG_STATE_HOME": str(tmp_path / "xdg")})


@pytest.mark.parametrize("alerts, error", [
    ("  - webhook: ftp://hooks.example/x\n",
     "8 alerts[0].webhook: must be an http:// or https:// URL with a host (got scheme 'ftp')"),
    ("  - webhook: hooks.example/x\n", "8 alerts[0].webhook: must be an http:// or https:// URL with a host"),
    ("  - command: [/nonexistent/page-oncall]\n", "8 alerts[0].command: /nonexistent/page-oncall: no such file"),
    ("  - command: [page-oncall-nowhere]\n", "8 alerts[0].command: 'page-oncall-nowhere' not found on PATH"),
    ("  - webhook: https://hooks.example/x\n    kinds: [node-stat]\n",
     "9 alerts[0].kinds: unknown event kind 'node-stat' (did you mean 'node-state'?)"),
    ("  - webhook: https://hooks.example/x\n    min_severity: critical\n",
     "9 alerts[0].min_severity: must be one of info, warning, alert (got 'critical')"),
    ("  - webhook: https://hooks.example/x\n    format: teams\n", "9 alerts[0].format: must be json or slack (got 'teams')"),
    ("  - webhook: https://hooks.example/x\n    timout: 3s\n", "9 alerts[0].timout: unknown key 'timout' (did you mean 'timeout'?)"),
    ("  - min_severity: alert\n", "8 alerts[0]: give exactly one of webhook: URL or command: [program, ...]"),
    ("  - webhook: https://hooks.example/x\n    kinds: []\n",
     "9 alerts[0].kinds: an empty list takes no event; leave kinds out for every kind"),
])
def test_a_bad_alert_hook_is_one_line_naming_file_line_and_field_exit_2(tmp_path, alerts, error):
    res = validate(tmp_path, alerts)
    assert (res.returncode, res.stdout, res.stderr) == (2, "", f"error: {tmp_path / 'fleet.yaml'}:{error}\n")


def test_a_command_that_is_not_executable_is_refused(tmp_path):
    script = tmp_path / "page"
    script.write_text("#!/bin/sh\n")
    script.chmod(0o644)
    res = validate(tmp_path, f"  - command: [{script}]\n")
    assert (res.returncode, res.stderr) == (2, f"error: {tmp_path / 'fleet.yaml'}:8 alerts[0].command: {script}: "
                                               "not executable\n")


def test_validate_lists_each_hook_without_its_secret_parts(tmp_path):
    res = validate(tmp_path, "  - webhook: https://hooks.example/T0/SECRET\n    kinds: [node-state, alert]\n"
                             "  - command: [sh, -c, 'cat >/dev/null']\n    min_severity: alert\n    format: slack\n")
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines()[1:] == [
        "alert hook: webhook https://hooks.example/…: warning and above, kinds node-state, alert, json, timeout 5s, 5 tries",
        f"alert hook: command {shutil.which('sh')}: alert and above, every kind, slack, timeout 5s, 5 tries"]
    assert "SECRET" not in res.stdout
