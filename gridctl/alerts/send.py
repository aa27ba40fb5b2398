"""Sending one batch to one alert hook: an HTTP POST or a command with the batch on stdin.

Called by gridctl/alerts/deliver.py. Never raises: every failure is a `Sent(ok=False, error)` in
a few words. `send_all` bounds the whole round: a send still running at the deadline is left to
its daemon thread and counted as timed out (a resend later is harmless: delivery is at least once).
"""

from __future__ import annotations

import http.client
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request

from .. import __version__
from ..textsafe import safe
from .rules import Hook, Sent

MAX_ERROR_CHARS = 200           # of a command's stderr kept as the reason it failed
MAX_ANSWER_BYTES = 64 * 1024    # of a webhook's answer read (and ignored) before closing


def send(hook: Hook, batch: str, body: bytes) -> Sent:
    """One try of one batch; ok on a 2xx answer or exit status 0, within hook.timeout_s."""
    if hook.webhook:
        return _post(hook.webhook, batch, body, hook.timeout_s)
    return _run(list(hook.command), body, hook.timeout_s)


def send_all(batches: list[tuple[Hook, str, bytes]], deadline_s: float) -> list[Sent]:
    """Send each batch in its own thread; whatever has not answered within deadline_s is
    `timed out`. The answers come back in the order of `batches`."""
    answers: list[Sent | None] = [None] * len(batches)

    def one(i: int, hook: Hook, batch: str, body: bytes) -> None:
        answers[i] = send(hook, batch, body)

    threads = [threading.Thread(target=one, args=(i, *b), name="gridctl-alert", daemon=True)
               for i, b in enumerate(batches)]
    for t in threads:
        t.start()
    end = time.monotonic() + deadline_s
    for t in threads:
        t.join(max(0.0, end - time.monotonic()))
    return [a if a is not None else Sent(False, "timed out") for a in answers]


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """A redirect is an answer we do not follow: a webhook's URL is what the spec says."""

    def redirect_request(self, *args, **kwargs):
        return None


def _post(url: str, batch: str, body: bytes, timeout_s: float) -> Sent:
    request = urllib.request.Request(url, data=body, method="POST", headers={
        "Content-Type": "application/json", "User-Agent": f"gridctl/{__version__}", "Idempotency-Key": batch})
    opener = urllib.request.build_opener(_NoRedirects())
    try:
        with opener.open(request, timeout=timeout_s) as answer:
            answer.read(MAX_ANSWER_BYTES)
            status = answer.status
    except urllib.error.HTTPError as e:
        e.close()
        return Sent(False, f"HTTP {e.code}")
    except urllib.error.URLError as e:
        reason = e.reason
        if isinstance(reason, (TimeoutError, socket.timeout)):
            return Sent(False, "timed out")
        return Sent(False, safe(getattr(reason, "strerror", None) or reason)[:MAX_ERROR_CHARS])
    except (TimeoutError, socket.timeout):
        return Sent(False, "timed out")
    except (OSError, ValueError, http.client.HTTPException) as e:
        return Sent(False, safe(getattr(e, "strerror", None) or repr(e))[:MAX_ERROR_CHARS])
    return Sent(True) if 200 <= status < 300 else Sent(False, f"HTTP {status}")


def _run(argv: list[str], body: bytes, timeout_s: float) -> Sent:
    try:
        done = subprocess.run(argv, input=body, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              timeout=timeout_s, check=False, start_new_session=True)
    except subprocess.TimeoutExpired:
        return Sent(False, "timed out")
    except OSError as e:
        return Sent(False, safe(f"{argv[0]}: {e.strerror or e}")[:MAX_ERROR_CHARS])
    if done.returncode == 0:
        return Sent(True)
    lines = done.stderr.decode("utf-8", "replace").strip().splitlines()
    why = f"exit {done.returncode}" if done.returncode > 0 else f"killed by signal {-done.returncode}"
    return Sent(False, (f"{why}: {safe(lines[-1])}" if lines else why)[:MAX_ERROR_CHARS])
