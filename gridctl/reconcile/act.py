"""Carry out a pass's launches and stops on the nodes, concurrently, with no transaction open.

Called by reconcile_once between its two write transactions. Each action is one exec on the
node's transport; failures come back as results (never raised), so one bad node cannot stop
the others.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from ..errors import GridctlError
from ..launcher import LaunchResult, attempt_token, launch_script, parse_launch, parse_stop, stop_script
from .jobs import Launch, Stop
from .observe import InventoryNode, Transports

LAUNCH_TIMEOUT_S = 20.0


@dataclass(frozen=True)
class StopResult:
    stop: Stop
    ok: bool
    detail: str


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
