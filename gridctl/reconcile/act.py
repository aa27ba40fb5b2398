"""Carry out a pass's actions with no transaction open: attempt launches and stops over each
node's transport, and cloud calls through the pools' providers, all concurrently.

Called by reconcile_once between apply (the plan written) and record (the answers written).
Failures come back as results, never raised, so one bad node or cloud cannot stop the others.
The one write made here is a fallback pool's launch intent, recorded (through `record_intent`)
just before that pool is asked, so a launch is never made that the store does not know of.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

import providers
from providers.base import (CapacityError, LaunchRequest, ProviderError, QuotaError, TransientError,
                            new_request_id)

from ..errors import GridctlError
from ..launcher import LaunchResult, attempt_token, launch_script, parse_launch, parse_stop, stop_script
from ..spec import Fleet
from .actions import CloudLaunch, CloudResult, CloudRetire, Launch, Results, Stop, StopResult
from ..models import InventoryNode
from .observe import Transports

LAUNCH_TIMEOUT_S = 20.0


def _run(transports: Transports, node: InventoryNode, script: str, timeout: float) -> str:
    res = transports.for_target(node.target).run(node.target, "sh -s", script.encode(), timeout)
    return res.stdout.decode("utf-8", "replace")


def launch_one(transports: Transports, node: InventoryNode, launch: Launch, key: bytes) -> LaunchResult:
    script = launch_script(launch.work_dir, launch.spec, attempt_token(key, launch.spec.attempt_id))
    try:
        out = _run(transports, node, script, LAUNCH_TIMEOUT_S)
    except GridctlError as e:
        return LaunchResult(False, None, f"{type(e).__name__}: {e}", uncertain=True)
    return parse_launch(out)


def stop_one(transports: Transports, node: InventoryNode | None, stop: Stop, key: bytes) -> StopResult:
    if node is None:
        return StopResult(stop, False, "node not in the inventory")
    script = stop_script(stop.work_dir, stop.attempt_id, stop.reason, attempt_token(key, stop.attempt_id), stop.grace_s)
    try:
        out = _run(transports, node, script, stop.grace_s + 15.0)
    except GridctlError as e:
        return StopResult(stop, False, str(e))
    word = parse_stop(out)
    # pid-mismatch: the attempt's own process is gone (its pid now belongs to another); nothing was signalled
    done = ("killed", "terminated", "gone", "absent", "pid-mismatch")
    return StopResult(stop, (word.split() or [""])[0] in done, word)


def carry_out(transports: Transports, nodes: dict[str, InventoryNode], launches: list[Launch], stops: list[Stop],
              key: bytes, concurrency: int = 32) -> tuple[list[tuple[Launch, LaunchResult]], list[StopResult]]:
    """Stops and launches at once, but one at a time per node: a one-shot transport (keep=False)
    closes a node's connection when its command ends, which would cut off a second command on
    that node mid-way. A launch's `then_stop` runs only after that launch succeeded."""
    if not launches and not stops:
        return [], []
    names = {s.node for s in stops} | {ln.node for ln in launches} | {s.node for ln in launches for s in ln.then_stop}
    locks = {name: threading.Lock() for name in names}

    def stop(s: Stop) -> StopResult:
        with locks[s.node]:
            return stop_one(transports, nodes.get(s.node), s, key)

    def launch(ln: Launch) -> LaunchResult:
        with locks[ln.node]:
            return launch_one(transports, nodes[ln.node], ln, key)

    with ThreadPoolExecutor(max_workers=max(1, min(concurrency, len(launches) + len(stops))),
                            thread_name_prefix="gridctl-act") as pool:
        stop_futs = [pool.submit(stop, s) for s in stops]
        launch_futs = [(ln, pool.submit(launch, ln)) for ln in launches if ln.node in nodes]
        launched = [(ln, fut.result()) for ln, fut in launch_futs]
        # drain hand-over: the old copy stops only once its replacement has started
        stop_futs += [pool.submit(stop, s) for ln, res in launched if res.ok for s in ln.then_stop]
        stopped = [f.result() for f in stop_futs]
    return launched, stopped


def _failure(e: ProviderError) -> dict:
    return {"error": f"{type(e).__name__}: {e}", "refused": isinstance(e, (CapacityError, QuotaError)),
            "retry_after_s": e.delay if isinstance(e, TransientError) else None}


def _launch_in_pools(fleet: Fleet, call: CloudLaunch, state_dir: Path,
                     record_intent: Callable[[str, str, int], None]) -> list[CloudResult]:
    """The call's pool, then its fallbacks in order while each refuses for capacity or quota."""
    out = []
    for i, name in enumerate((call.pool, *call.fallbacks)):
        request = call.request_id
        if i > 0:
            request = new_request_id()
            record_intent(name, request, call.count)
        pool = fleet.pool(name)
        try:
            got = providers.get(pool.provider)(fleet.fleet, pool, state_dir).launch(LaunchRequest(request, call.count))
        except ProviderError as e:
            out.append(CloudResult(call, name, request, **_failure(e)))
            if out[-1].refused and call.job:
                continue
            return out
        out.append(CloudResult(call, name, request, instances=tuple(i.id for i in got)))
        return out
    return out


def _retire(fleet: Fleet, call: CloudRetire, state_dir: Path) -> CloudResult:
    pool = fleet.pool(call.pool)
    try:
        adapter = providers.get(pool.provider)(fleet.fleet, pool, state_dir)
        if call.triage:
            adapter.stop([call.instance], triage=True)
        else:
            adapter.terminate([call.instance])
    except ProviderError as e:
        return CloudResult(call, call.pool, **_failure(e))
    return CloudResult(call, call.pool, instances=(call.instance,))


def call_clouds(fleet: Fleet, calls: list[CloudLaunch | CloudRetire], state_dir: Path,
                record_intent: Callable[[str, str, int], None]) -> list[CloudResult]:
    """Every cloud call of the pass, in order, one at a time (SDK clients are made per call, and
    boto3's default session is not safe to share across threads)."""
    out: list[CloudResult] = []
    for call in calls:
        if isinstance(call, CloudRetire):
            out.append(_retire(fleet, call, state_dir))
        else:
            out += _launch_in_pools(fleet, call, state_dir, record_intent)
    return out


def act(fleet: Fleet, transports: Transports, nodes: dict[str, InventoryNode], launches: list[Launch],
        stops: list[Stop], calls: list[CloudLaunch | CloudRetire], state_dir: Path,
        record_intent: Callable[[str, str, int], None], key: bytes) -> Results:
    """Node actions and cloud calls at the same time. `key`: the store's attempt key (tokens)."""
    if not calls:
        return Results(*carry_out(transports, nodes, launches, stops, key, fleet.health.concurrency))
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="gridctl-clouds") as ex:
        clouds = ex.submit(call_clouds, fleet, calls, state_dir, record_intent)
        launched, stopped = carry_out(transports, nodes, launches, stops, key, fleet.health.concurrency)
        return Results(launched, stopped, clouds.result())
