"""The resident agent sessions of one loop: one per node, kept across passes. Called by
reconcile/observe._probe_one (through Transports.agents) in loop mode, or once with `--agent`.

Per pass a node's probe is one request on its session. A node where the agent cannot start (no
python3, a refused channel, no hello) keeps the sh probe and is retried after RETRY_PASSES passes.
A session that breaks (the agent crashed, the node wrote garbage) is dropped and re-shipped: an
event says so and the pass falls back to the sh probe, so no verdict changes because of it. Silence
is never evidence: a connection the kernel ended because the node answered nothing for NET_SILENT_S
(its keepalives, session.py), or a session without a line for SILENT_AFTER_S, makes the node's
observation `unreachable` (suspect, nothing killed); the next pass connects afresh. Pushed XIDs,
silence and sessions that end wake the loop (`wake`).
"""
from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, replace
from typing import Callable

from ..models import Event
from .session import HEARTBEAT_S, AgentSession, ProtocolError, SessionSilent, SlowStart

SILENT_AFTER_S = 2 * HEARTBEAT_S
START_TIMEOUT_S = 10.0
RETRY_PASSES = 30
START_GRACE_S = 60.0   # an agent without a hello after a probe's time keeps starting this long
WATCH_S = 0.5          # the silence watcher's period (a dark connection ends and wakes the loop by itself)


@dataclass(frozen=True)
class AgentAnswer:
    """What the agent path gave for one node: probe text (to parse), or a failure kind with words.
    kind: "text" | "sh" (use the sh probe; `problem` says why, when it is news) | "silent" | "hung"."""

    kind: str
    text: str = ""
    problem: str | None = None
    took_s: float | None = None       # request sent -> its answer came (ask_live)
    came_at: float | None = None      # when a text answer came (monotonic)


def _due(flight: tuple) -> float:
    """When ask_live must look at an in-flight request even without an answer: its deadline, or when its
    session would turn silent (soon again, when it is past that with lines not yet read)."""
    _, session, _, sent_at, timeout_s = flight
    quiet_until = session.last_heard + SILENT_AFTER_S
    now = time.monotonic()
    return min(sent_at + timeout_s, quiet_until + 0.01 if quiet_until > now else now + 0.2)


class AgentSessions:
    def __init__(self, wake: Callable[[], None] = lambda: None) -> None:
        self.wake = wake
        self._sessions: dict[str, AgentSession] = {}
        self._sh: dict[str, list] = {}            # node -> [why, passes until the next try]
        self._slow: dict[str, tuple[AgentSession, float]] = {}   # node -> (session still starting, shipped at)
        self._events: list[Event] = []
        self._lock = threading.Lock()
        self._answers = threading.Condition()     # notified when any session has a result or broke (ask_live)
        self._poked: set[AgentSession] = set()    # ... those sessions, since ask_live last looked
        self._stop = threading.Event()
        self._watch = threading.Thread(target=self._watch_silence, name="gridctl-agent-watch", daemon=True)
        self._watch.start()

    def probe(self, name: str, open_stream: Callable[[], object], args: dict, timeout_s: float,
              again: bool = True) -> AgentAnswer:
        """One probe of node `name` on its session (started with open_stream() when there is none; an agent
        that ends during the request is re-shipped and asked once `again`). Raises what open_stream raises
        (the node's transport errors)."""
        with self._lock:
            session = self._sessions.get(name)
            waiting = self._sh.get(name)
        lost = self.take_lost(name)
        if lost is not None:
            return AgentAnswer("silent", problem=lost)
        if session is not None and session.broken is not None:
            self._drop(name)
            self._note(name, "agent-lost", f"agent session ended ({session.broken[:160]}): re-shipping the agent",
                       "warning")
            session = None
        if session is None:
            with self._lock:
                slow = self._slow.pop(name, None)
            try:
                if slow is not None:            # shipped at an earlier pass, its hello not come then
                    session, since = slow
                    hello = session.started(0, time.monotonic() - since < START_GRACE_S, since)
                elif waiting is not None and waiting[1] > 0:
                    waiting[1] -= 1
                    return AgentAnswer("sh")
                else:
                    session = AgentSession(open_stream(), on_xid=lambda e: self._pushed(name, e), on_end=self._ended,
                                           on_answer=self._answered)
                    since = time.monotonic()
                    hello = session.start(min(START_TIMEOUT_S, max(timeout_s, 2.0)), keep_slow=True)
            except SlowStart:
                # a busy node's python3 can take longer than a probe: the agent keeps starting while this
                # pass (and the next ones, up to START_GRACE_S) use the sh probe
                with self._lock:
                    self._slow[name] = (session, since)
                return AgentAnswer("sh")
            except ProtocolError as e:
                with self._lock:
                    self._sh[name] = [str(e), RETRY_PASSES]
                self._note(name, "agent-unavailable", f"{str(e)[:200]}: keeping the sh probe")
                return AgentAnswer("sh", problem=f"agent unavailable: {str(e)[:200]}")
            with self._lock:
                self._sessions[name] = session
                self._sh.pop(name, None)
            self._note(name, "agent-started", f"resident agent running (pid {hello.pid}; {', '.join(hello.caps)})")
        answer, error = self._settle(name, session, lambda: session.request(args, timeout_s, SILENT_AFTER_S))
        if answer is not None:
            return answer
        self._drop(name)
        if session.ended and again:
            self._note(name, "agent-lost", f"agent session ended ({str(error)[:160]}): re-shipping the agent",
                       "warning")
            return self.probe(name, open_stream, args, timeout_s, again=False)
        self._note(name, "agent-lost", f"agent session dropped: {str(error)[:200]}", "warning")
        return AgentAnswer("sh", problem=f"agent session dropped: {str(error)[:200]}")

    def ask_live(self, asks: dict[str, tuple[dict, float]], window: int = 64) -> dict[str, AgentAnswer]:
        """A pass on the sessions that are up (asks: name -> (args, timeout_s)), from this thread: requests
        are sent and their answers taken here as they come, with at most `window` in flight (the sweep's
        concurrency: an endpoint shared by many nodes runs no more of our probes at once than a thread
        pool would give it), the window refilled as each settles, so a slow node holds up no other. A
        pass costs the controller a write and a read per node and no thread of its own. Only settled
        answers come back (text, silent, hung), in the order they settled; a node without a live
        session, or whose agent ended or refused meanwhile, is left to probe() (re-ship, events, sh)."""
        todo = deque(asks.items())
        flying: list[tuple[str, AgentSession, int, float, float]] = []
        out: dict[str, AgentAnswer] = {}
        due = float("inf")        # when some request must be looked at unasked: its deadline, or its session's silence
        while todo or flying:
            while todo and len(flying) < max(1, window):
                name, (args, timeout_s) = todo.popleft()
                with self._lock:
                    session = self._sessions.get(name)
                if session is None or session.broken is not None:
                    continue
                try:
                    flying.append((name, session, session.send(args), time.monotonic(), timeout_s))
                except ProtocolError:
                    continue
                due = min(due, _due(flying[-1]))
            if not flying:
                continue
            with self._answers:       # woken by a session's answer (or break), else at `due`
                if not self._poked and time.monotonic() < due:
                    self._answers.wait(due - time.monotonic())
                poked, self._poked = self._poked, set()
            every = time.monotonic() >= due
            for flight in [f for f in flying if (every or f[1] in poked) and f[1].ready(f[2], f[3] + f[4], SILENT_AFTER_S)]:
                flying.remove(flight)
                name, session, ident, sent_at, timeout_s = flight
                answer, _ = self._settle(name, session,
                                         lambda: session.answer(ident, sent_at + timeout_s, SILENT_AFTER_S, timeout_s))
                if answer is not None:
                    out[name] = replace(answer, took_s=(answer.came_at or time.monotonic()) - sent_at)
            if every:
                due = min(map(_due, flying), default=float("inf"))
        return out

    def live(self, name: str) -> bool:
        with self._lock:
            session = self._sessions.get(name)
        return session is not None and session.broken is None

    def take_lost(self, name: str) -> str | None:
        """Why node `name`'s session ended with its connection (the node went dark), dropping it; else None."""
        with self._lock:
            session = self._sessions.get(name)
        if session is None or session.lost is None:
            return None
        self._drop(name)
        return session.broken

    def path(self, name: str) -> str:
        """Which path this node's probe takes now: `agent`, or `sh (why)`."""
        with self._lock:
            if name in self._sessions:
                return "agent"
            if name in self._slow:
                return "sh (agent starting)"
            waiting = self._sh.get(name)
        return f"sh ({waiting[0][:120]})" if waiting else "sh"

    def take_events(self) -> list[Event]:
        with self._lock:
            out, self._events = self._events, []
        return out

    def close(self) -> None:
        self._stop.set()
        with self._lock:
            sessions, self._sessions = list(self._sessions.values()), {}
            sessions += [session for session, _ in self._slow.values()]
            self._slow = {}
        for session in sessions:
            session.close()

    # -- inside

    def _settle(self, name: str, session: AgentSession, get: Callable[[], tuple[str, float]]) -> tuple[AgentAnswer | None, Exception | None]:
        """What one request on session came to (get() waits for its text and when it came). Silence (the session's, or the
        connection's: `lost`) and a hung agent drop the session; an agent that ended or refused gives
        (None, why) and the caller decides (re-ship, or the sh probe)."""
        try:
            text, came_at = get()
            return AgentAnswer("text", text, came_at=came_at), None
        except SessionSilent as e:
            self._drop(name)
            return AgentAnswer("silent", problem=str(e)), e
        except TimeoutError as e:
            self._drop(name)
            return AgentAnswer("hung", problem=f"agent: {e}"), e
        except ProtocolError as e:
            if session.lost is not None:
                self._drop(name)
                return AgentAnswer("silent", problem=str(e)), e
            return None, e

    def _drop(self, name: str) -> None:
        with self._lock:
            session = self._sessions.pop(name, None)
        if session is not None:
            session.close()

    def _note(self, node: str, kind: str, message: str, severity: str = "info") -> None:
        with self._lock:
            self._events.append(Event(time.time(), kind, message, node=node, severity=severity))

    def _pushed(self, name: str, event: dict) -> None:
        gpu = event.get("gpu")
        self._note(name, "xid-pushed", f"xid {event['xid']} on GPU {gpu if isinstance(gpu, int) else '?'} pushed by "
                   "the node's NVML event: probing now", "warning")
        self.wake()

    def _answered(self, session: AgentSession) -> None:
        with self._answers:
            self._poked.add(session)
            self._answers.notify_all()

    def _ended(self) -> None:
        """A session ended under us (the node went dark, the agent exited): its node's part of a pass now."""
        if not self._stop.is_set():
            self.wake()

    def _watch_silence(self) -> None:
        told: set[str] = set()
        while not self._stop.wait(WATCH_S):
            with self._lock:
                silent = {n for n, s in self._sessions.items() if s.broken is None and s.silent_for() > SILENT_AFTER_S}
            if silent - told:
                self.wake()
            told = silent
