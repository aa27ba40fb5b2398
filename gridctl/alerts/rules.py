"""Pure decisions of alert delivery: which events a hook takes, which of its deliveries go in the
next batch, what a send's answer makes of each delivery, and the body of a batch.

Called by gridctl/alerts/deliver.py (a delivery round); table-tested in tests/unit/test_alert_rules.py.
Delivery is at least once: a batch whose answer was lost (the process killed between send and
record) is sent again with the same event keys, which a receiver dedups by.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from typing import Optional
from urllib.parse import urlsplit

from ..models import EVENT_SEVERITIES, Delivery, Event
from ..textsafe import safe

BATCH_MAX = 200                 # events in one request; the rest go in the next round
MAX_BACKOFF_S = 300.0           # the longest wait between two tries of one hook
CLAIM_GRACE_S = 2.0             # a batch in flight is not picked up by another round until its timeout + this


@dataclass(frozen=True)
class Hook:
    """An alert hook as delivery sees it (from spec.AlertHook by `hook_from_spec`)."""

    key: str                            # stable id of the target (webhook URL or argv): the store's hook
    label: str                          # what a person is shown: never a URL's path or query (tokens live there)
    webhook: Optional[str] = None
    command: tuple[str, ...] = ()
    min_severity: str = "warning"
    kinds: Optional[frozenset[str]] = None
    format: str = "json"
    timeout_s: float = 5.0
    max_tries: int = 5
    backoff_s: float = 5.0


@dataclass(frozen=True)
class Sent:
    """What one send came to: ok (2xx, exit 0), or why not ("HTTP 503", "timed out", "exit 3")."""

    ok: bool
    error: str = ""


def hook_from_spec(spec) -> Hook:
    """spec.AlertHook -> Hook."""
    target = json.dumps({"webhook": spec.webhook} if spec.webhook else {"command": list(spec.command)})
    return Hook(key=hashlib.sha256(target.encode()).hexdigest()[:16], label=label(spec.webhook, spec.command),
                webhook=spec.webhook, command=tuple(spec.command or ()), min_severity=spec.min_severity,
                kinds=frozenset(spec.kinds) if spec.kinds is not None else None, format=spec.format,
                timeout_s=spec.timeout, max_tries=spec.max_tries, backoff_s=spec.backoff)


def label(webhook: Optional[str], command) -> str:
    """"webhook https://hooks.example/…" or "command /usr/local/bin/page": no path, query or arguments."""
    if webhook:
        parts = urlsplit(webhook)
        host = parts.hostname or "?"
        port = f":{parts.port}" if parts.port else ""
        return f"webhook {parts.scheme}://{host}{port}" + ("/…" if parts.path not in ("", "/") or parts.query else "")
    return f"command {command[0]}"


def wants(hook: Hook, event: Event) -> bool:
    """The hook takes events at or above its min_severity, of its kinds (all kinds when unset)."""
    rank = EVENT_SEVERITIES.index(event.severity) if event.severity in EVENT_SEVERITIES else len(EVENT_SEVERITIES)
    return rank >= EVENT_SEVERITIES.index(hook.min_severity) and (hook.kinds is None or event.kind in hook.kinds)


def next_batch(pending: list[Delivery], now: float, limit: int = BATCH_MAX) -> list[Delivery]:
    """The hook's next batch: its oldest pending deliveries, or none while any of them waits
    (a retry's backoff or a batch in flight), so a failing hook is not tried at every pass."""
    if any(d.next_try_at is not None and d.next_try_at > now for d in pending):
        return []
    return sorted(pending, key=lambda d: d.event_id)[:limit]


def claimed(batch: list[Delivery], hook: Hook, now: float) -> list[Delivery]:
    """The batch marked in flight: no other round sends it before the hook's timeout has passed."""
    return [replace(d, next_try_at=now + hook.timeout_s + CLAIM_GRACE_S) for d in batch]


def backoff_s(hook: Hook, tries: int) -> float:
    """Wait after the `tries`-th failed try: backoff, doubled per try, at most MAX_BACKOFF_S."""
    return min(MAX_BACKOFF_S, hook.backoff_s * 2 ** max(0, tries - 1))


def after_send(d: Delivery, sent: Sent, hook: Hook, now: float) -> Delivery:
    """A delivery once its batch's answer is in: delivered; pending with a backoff; or failed
    after the hook's max_tries."""
    tries = d.tries + 1
    if sent.ok:
        return replace(d, state="delivered", tries=tries, next_try_at=None, error="")
    if tries >= hook.max_tries:
        return replace(d, state="failed", tries=tries, next_try_at=None, error=sent.error)
    return replace(d, state="pending", tries=tries, next_try_at=now + backoff_s(hook, tries), error=sent.error)


def describe(d: Delivery, now: float) -> str:
    """"failed: HTTP 503 (3 tries)", "pending: timed out (1 try), next try in 10s", "pending"."""
    if d.state == "delivered" or not d.tries:
        return d.state
    tries = f"{d.tries} {'try' if d.tries == 1 else 'tries'}"
    text = f"{d.state}: {d.error} ({tries})"
    if d.state == "pending" and d.next_try_at is not None and d.next_try_at > now:
        text += f", next try in {d.next_try_at - now:.0f}s"
    return text


def event_key(fleet: str, store_id: str, event_id: int) -> str:
    """An event's idempotency key: the same in every resend of it, never reused by another event."""
    return f"{fleet}/{store_id}/{event_id}"


def batch_key(hook: Hook, keys: list[str]) -> str:
    """The same events to the same hook: the same key (what `Idempotency-Key` carries)."""
    return hashlib.sha256(json.dumps([hook.key, keys]).encode()).hexdigest()[:32]


def body(hook: Hook, fleet: str, store_id: str, events: list[tuple[int, Event]]) -> tuple[str, bytes]:
    """(batch key, request body) of one batch: JSON with every event's key, or Slack's {"text": ...}."""
    keys = [event_key(fleet, store_id, i) for i, _ in events]
    batch = batch_key(hook, keys)
    if hook.format == "slack":
        return batch, json.dumps({"text": slack_text(fleet, events)}).encode()
    return batch, json.dumps({
        "fleet": fleet, "batch": batch, "delivery": "at-least-once",
        "events": [{"key": key, "id": i, "time": _iso(e.time), "kind": e.kind, "severity": e.severity,
                    "node": e.node, "job": e.job, "message": e.message} for key, (i, e) in zip(keys, events)],
    }).encode()


def slack_text(fleet: str, events: list[tuple[int, Event]]) -> str:
    """One line per event, escaped as Slack asks (&, <, >) so node text cannot mention @channel or link."""
    lines = [f"gridctl fleet {fleet}: {len(events)} event(s)"]
    for _, e in events:
        who = " ".join(x for x in (e.node, e.job) if x)
        lines.append(f"[{e.severity}] {e.kind}" + (f" {who}" if who else "") + f": {e.message}")
    text = "\n".join(safe(line) for line in lines)
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="seconds")
