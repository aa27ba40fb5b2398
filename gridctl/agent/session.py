"""The controller's end of one node's resident agent session: ship the agent, frame and bound what
comes back, match results to requests. Called by gridctl/agent/sessions.py (one per node).

Everything the node writes is untrusted: lines are bounded (MAX_LINE), must be JSON objects of the
kinds the protocol names, and a result must carry an id we sent. Any breach ends the session with a
ProtocolError (the caller drops it, reconnects later and says so in the node's observation).
"""
from __future__ import annotations

import json
import selectors
import threading
import time
from dataclasses import dataclass
from importlib import resources
from typing import Callable

PROTOCOL = 1
# Two kinds of silence. The network: the kernel probes every idle connection each second and ends it when
# the node answers nothing for NET_SILENT_S (connect.watch_silence): no process wakes for it. The agent:
# it writes a line at least every HEARTBEAT_S (node_agent.HEARTBEAT_S), a sign of life between passes
# that costs the controller a wake-up per line, so it is rare; a pass's request has its own deadline.
HEARTBEAT_S = 10.0
NET_SILENT_S = 2
MAX_LINE = 6 * 1024 * 1024        # a result carries at most probe.MAX_OUTPUT_BYTES of text, JSON-escaped
# the loader is the command line: fixed, no secret; the agent's source follows on stdin
LOADER = ("python3 -c 'import sys;r=sys.stdin.buffer;g={\"__name__\":\"gridctl_node_agent\"};"
          "exec(compile(r.read(int(r.readline(16))),\"node_agent.py\",\"exec\"),g);g[\"main\"](r)'")


class ProtocolError(Exception):
    """The node broke the protocol (garbage, an over-long line, an unknown id) or the session ended."""


class SlowStart(ProtocolError):
    """No hello yet and nothing wrong seen: the agent may still be starting."""


class SessionSilent(Exception):
    """No line (not even a heartbeat) for longer than the session allows."""


def _source(name: str) -> bytes:
    return resources.files("gridctl.agent").joinpath(name).read_bytes()


def _binding_source() -> bytes | None:
    """nvidia-ml-py's pynvml.py as installed here (a gridctl dependency); None when absent."""
    try:
        import importlib.util
        spec = importlib.util.find_spec("pynvml")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.origin or not spec.origin.endswith(".py"):
        return None
    with open(spec.origin, "rb") as f:
        return f.read()


_BOOTSTRAP: bytes | None = None


def bootstrap() -> bytes:
    """What follows LOADER on stdin: the agent's source, then its modules (cached per process)."""
    global _BOOTSTRAP
    if _BOOTSTRAP is None:
        agent = _source("node_agent.py")
        modules = [("gridctl_node_attempts", _source("node_attempts.py")), ("gridctl_node_host", _source("node_host.py"))]
        binding = _binding_source()
        if binding is not None:
            modules.append(("pynvml", binding))
        body = b"".join(f"{name} {len(src)}\n".encode() + src for name, src in modules)
        _BOOTSTRAP = f"{len(agent)}\n".encode() + agent + f"{len(modules)}\n".encode() + body
    return _BOOTSTRAP


@dataclass(frozen=True)
class Hello:
    version: int
    caps: tuple[str, ...]
    pid: int | None


class _Hub:
    """One thread that reads every session whose stream can be polled (fileno() + read_now(n): an SSH
    channel). A heartbeat then wakes one shared thread, not a thread per session (the controller's
    CPU per pass and idle, issue 13); other streams (simulated nodes' pipes) keep a reader thread each."""

    def __init__(self) -> None:
        self._sel = selectors.DefaultSelector()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def add(self, fd: int, session: "AgentSession") -> None:
        with self._lock:
            self._sel.register(fd, selectors.EVENT_READ, session)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="gridctl-agent-hub", daemon=True)
                self._thread.start()

    def remove(self, fd: int, session: "AgentSession") -> None:
        """Stop reading fd for session (never for a later session that was given the same fd number)."""
        with self._lock:
            try:
                if self._sel.get_key(fd).data is session:
                    self._sel.unregister(fd)
            except (KeyError, ValueError, OSError):     # already gone (ended, or closed twice)
                pass

    def _run(self) -> None:
        while True:
            # epoll sees sessions added while it waits; the timeout bounds that for selectors that do not
            for key, _ in self._sel.select(0.5):
                if not key.data.pump():
                    self.remove(key.fd, key.data)


HUB = _Hub()


class AgentSession:
    """One running agent over a byte stream (`stream`: write(bytes), read(n) -> bytes, b"" at the end,
    close(); with fileno() and read_now(n) -> bytes | None it is read by the shared HUB thread instead of a
    reader thread of its own). Lines are parsed as they come; `on_xid(event)` is called for pushed XIDs."""

    def __init__(self, stream, on_xid: Callable[[dict], None] = lambda e: None,
                 on_end: Callable[[], None] = lambda: None,
                 on_answer: Callable[["AgentSession"], None] = lambda s: None) -> None:
        self.stream = stream
        self.on_xid = on_xid
        self.on_end = on_end            # called once when the session breaks or ends under us
        self.on_answer = on_answer      # on_answer(self), no lock of ours held: a result came or the session broke
        self.hello: Hello | None = None
        self.broken: str | None = None
        self.ended = False              # the stream ended (the agent exited or crashed), not a protocol breach
        self.lost: str | None = None    # ... because the connection under it died: the node went dark
        self.last_heard = time.monotonic()
        self._cond = threading.Condition()
        self._results: dict[int, tuple[dict, float]] = {}     # id -> (message, monotonic time it came)
        self._next_id = 0
        self._buf = bytearray()
        self._fd: int | None = None
        self._reader = threading.Thread(target=self._read, name="gridctl-agent", daemon=True)

    def start(self, timeout_s: float, keep_slow: bool = False) -> Hello:
        """Ship the agent and wait for its hello; ProtocolError when none comes in timeout_s (SlowStart,
        the session left open, when keep_slow and nothing went wrong: see started)."""
        if hasattr(self.stream, "read_now") and hasattr(self.stream, "fileno"):
            self._fd = self.stream.fileno()
            HUB.add(self._fd, self)
        else:
            self._reader.start()
        try:
            self.stream.write(bootstrap())
        except Exception as e:
            self.close()
            raise ProtocolError(f"agent did not start: {self.broken or f'cannot ship it: {type(e).__name__}: {e}'}") from e
        return self.started(timeout_s, keep_slow)

    def started(self, timeout_s: float, keep_slow: bool = False, since: float | None = None) -> Hello:
        """The agent's hello, waiting up to timeout_s for it. None yet and nothing wrong seen: with
        keep_slow, SlowStart and the session stays open (a busy node's python3 may need longer: ask again
        later); else the session is closed and ProtocolError says why. since: when it was shipped."""
        with self._cond:
            self._cond.wait_for(lambda: self.hello is not None or self.broken is not None, timeout_s)
        if self.hello is None:
            waited = timeout_s if since is None else time.monotonic() - since
            if keep_slow and self.broken is None:
                raise SlowStart(f"agent did not start: no hello in {waited:.3g}s")
            why = self.broken or f"no hello in {waited:.3g}s"
            self.close()
            raise ProtocolError(f"agent did not start: {why}")
        if self.hello.version != PROTOCOL:
            self.close()
            raise ProtocolError(f"agent speaks protocol {self.hello.version}, we speak {PROTOCOL}")
        return self.hello

    def silent_for(self) -> float:
        return time.monotonic() - self.last_heard

    def request(self, args: dict, timeout_s: float, silent_after_s: float) -> tuple[str, float]:
        """Send one probe request; its result's text and when it came (as answer gives them). ProtocolError
        when the session broke, SessionSilent when nothing at all came for silent_after_s, TimeoutError
        when heartbeats came but no result in timeout_s."""
        ident = self.send(args)
        return self.answer(ident, time.monotonic() + timeout_s, silent_after_s, timeout_s)

    def send(self, args: dict) -> int:
        """Send one probe request; its id (for answer). ProtocolError when the session is over."""
        with self._cond:
            self._next_id += 1
            ident = self._next_id
        try:
            self.stream.write((json.dumps({**args, "id": ident, "op": "probe"}) + "\n").encode())
        except Exception as e:     # the agent is gone (a broken pipe, a closed channel)
            if self.broken is not None:
                raise ProtocolError(self.broken) from e         # we closed it: the node broke the protocol
            self._end(f"cannot send: {type(e).__name__}: {e}")
        return ident

    def answer(self, ident: int, deadline: float, silent_after_s: float, timeout_s: float) -> tuple[str, float]:
        """Request ident's result text and when it came (monotonic), waiting until `deadline` (timeout_s
        after the request was sent); see request."""
        with self._cond:
            while ident not in self._results:
                if self.broken is not None:
                    raise ProtocolError(self.broken)
                if self.silent_for() > silent_after_s and not self._unread():
                    raise SessionSilent(f"agent session silent for {self.silent_for():.1f}s")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"no answer in {timeout_s:g}s")
                # woken by a result or a break; otherwise only when the session could turn silent
                # (heartbeats move that moment on without a wake-up) or, past it with lines unread, soon
                until_silent = silent_after_s - self.silent_for()
                self._cond.wait(min(left, until_silent + 0.01 if until_silent > 0 else 0.2))
            msg, came_at = self._results.pop(ident)
        if msg["t"] == "error":
            raise ProtocolError(f"agent refused the request: {str(msg.get('what'))[:200]}")
        return msg["out"], came_at

    def ready(self, ident: int, deadline: float, silent_after_s: float) -> bool:
        """answer(ident, deadline, silent_after_s, ...) would return or raise now, without waiting."""
        with self._cond:
            return (ident in self._results or self.broken is not None or time.monotonic() >= deadline
                    or self.silent_for() > silent_after_s and not self._unread())

    def _unread(self) -> bool:
        """Lines that arrived but our reader has not taken yet (a busy controller is not a silent node)."""
        try:
            return bool(getattr(self.stream, "pending", lambda: False)())
        except Exception:         # a stream that cannot tell: judge by what was read
            return False

    def close(self) -> None:
        if self._fd is not None:
            HUB.remove(self._fd, self)
        try:
            self.stream.close()
        except Exception:       # already gone: closing is best effort
            pass

    # -- the reader

    def _read(self) -> None:
        """The reader thread of a stream the HUB cannot poll."""
        try:
            while self.broken is None:
                chunk = self.stream.read(65536)
                if not chunk:
                    self._end("agent session ended")
                self._take(chunk)
        except ProtocolError:
            return
        except Exception as e:     # the stream failed under us: the session is over
            self._end(f"agent session lost: {type(e).__name__}: {str(e)[:200]}", quiet=True)

    def pump(self) -> bool:
        """The HUB's call when the stream is readable: take what is there; False once the session is over."""
        try:
            chunk = self.stream.read_now(65536)
            if chunk is None:
                return self.broken is None
            if not chunk:
                self._end("agent session ended")
            self._take(chunk)
        except ProtocolError:
            return False
        except Exception as e:     # the stream failed under us: the session is over
            self._end(f"agent session lost: {type(e).__name__}: {str(e)[:200]}", quiet=True)
            return False
        return self.broken is None

    def _take(self, chunk: bytes) -> None:
        """Frame and handle the lines in chunk (with what came before it); raises ProtocolError on a breach."""
        buf = self._buf
        buf += chunk
        start = 0
        while True:
            cut = buf.find(b"\n", start)
            if cut < 0:
                break
            self._line(bytes(buf[start:cut]))
            start = cut + 1
        del buf[:start]
        if len(buf) > MAX_LINE:
            self._break(f"agent line over {MAX_LINE} bytes")

    def _line(self, line: bytes) -> None:
        if len(line) > MAX_LINE:
            self._break(f"agent line over {MAX_LINE} bytes")
        try:
            msg = json.loads(line)
        except ValueError:
            self._break(f"agent wrote a line that is not JSON: {line[:60]!r}")
        if not isinstance(msg, dict) or not isinstance(msg.get("t"), str):
            self._break(f"agent wrote a line that is not a message: {line[:60]!r}")
        self.last_heard = time.monotonic()
        kind = msg["t"]
        if kind == "hb" or kind == "note":
            return
        if kind == "hello":
            caps = msg.get("caps")
            self.hello = Hello(msg.get("v") if isinstance(msg.get("v"), int) else -1,
                               tuple(str(c)[:40] for c in caps[:20]) if isinstance(caps, list) else (),
                               msg.get("pid") if isinstance(msg.get("pid"), int) else None)
        elif kind == "xid":
            if isinstance(msg.get("xid"), int):
                self.on_xid(msg)
            return
        elif kind in ("result", "error"):
            ident = msg.get("id")
            if not isinstance(ident, int) or not 0 < ident <= self._next_id:
                self._break(f"agent answered a request we did not send (id {str(ident)[:20]})")
            if kind == "result" and not isinstance(msg.get("out"), str):
                self._break("agent result without output text")
            with self._cond:
                self._results[ident] = (msg, time.monotonic())
                self._cond.notify_all()
            self.on_answer(self)
            return
        else:
            self._break(f"agent wrote an unknown message kind {kind[:20]!r}")
        with self._cond:
            self._cond.notify_all()

    def _end(self, why: str, quiet: bool = False) -> None:
        """The stream ended or failed: the agent exited, or the connection under it died (`lost`: the
        node is silent, not the agent broken). Raises ProtocolError unless quiet."""
        try:
            lost = getattr(self.stream, "lost", lambda: None)()
        except Exception:       # a stream that cannot tell: the agent ended
            lost = None
        self.ended = True
        if lost:
            self.lost = lost
            why = f"agent session silent: {lost}"
        if quiet:
            self._mark(why)
        else:
            self._break(why)

    def _mark(self, why: str) -> None:
        with self._cond:
            first = self.broken is None
            if first:
                self.broken = why       # before closing: a write that fails on our close reads as this
        self.close()
        with self._cond:
            self._cond.notify_all()     # after closing: whoever is woken finds the session closed
        self.on_answer(self)
        if first and self.hello is not None:
            self.on_end()

    def _break(self, why: str) -> None:
        self._mark(why)
        raise ProtocolError(why)
