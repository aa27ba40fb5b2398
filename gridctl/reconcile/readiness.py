"""Readiness checks of service replicas, made from the controller as a load balancer would
(DESIGN section 11): an HTTP GET of the readiness path (2xx = ready) or a TCP connect, each
bounded by the spec's timeout. Part of a pass's observe step, run beside the probe sweep.

Called by reconcile_once with the targets facts.ready_targets lists; the planner
(attempts.apply_readiness) turns the results into ready / not ready and restarts.
"""

from __future__ import annotations

import http.client
import socket
import time
from concurrent.futures import ThreadPoolExecutor

from ..models import ReadyCheck, ReadyTarget


def check_one(t: ReadyTarget) -> ReadyCheck:
    """One check; never raises."""
    try:
        if t.http_path is None:
            socket.create_connection((t.host, t.port), timeout=t.timeout_s).close()
            return ReadyCheck(True, "port accepts connections", time.time())
        conn = http.client.HTTPConnection(t.host, t.port, timeout=t.timeout_s)
        try:
            conn.request("GET", t.http_path, headers={"User-Agent": "gridctl-readiness"})
            status = conn.getresponse().status
        finally:
            conn.close()
        return ReadyCheck(200 <= status < 300, f"HTTP {status}", time.time())
    except socket.timeout:
        return ReadyCheck(False, f"timed out after {t.timeout_s:g}s", time.time())
    except ConnectionRefusedError:
        return ReadyCheck(False, "connection refused", time.time())
    except (OSError, http.client.HTTPException) as e:
        return ReadyCheck(False, f"{type(e).__name__}: {e}"[:120], time.time())


def check_all(targets: list[ReadyTarget], concurrency: int = 32) -> dict[str, ReadyCheck]:
    if not targets:
        return {}
    with ThreadPoolExecutor(max_workers=max(1, min(concurrency, len(targets))),
                            thread_name_prefix="gridctl-ready") as pool:
        return dict(zip((t.attempt for t in targets), pool.map(check_one, targets)))
