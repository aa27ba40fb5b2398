"""TCP connecting: one socket with a timeout (connect_socket), or many SSH servers at once (connect_many).

connect_many is called by reconcile/observe.sweep before SSH handshakes, so a dead node costs a file
descriptor for connect_timeout instead of a worker thread. Connects in flight are bounded by a window:
many nodes may share one SSH endpoint (a gateway with many ports, or one sshd for many addresses). A
connection the server has not accept()ed yet sits in its listen queue (OpenSSH's holds 128); when that
queue is full the kernel drops further SYNs, and healthy nodes' connects time out. So there are two
bounds: all sockets in flight (`window`: dead nodes wait out their timeout here), and connections the
server is working on for us (`answer_window`: a SYN younger than one retransmit timeout, a connection
the server has not spoken on yet (an SSH server's banner), and sockets the caller is still using).
"""

from __future__ import annotations

import errno
import ipaddress
import resource
import selectors
import socket
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable, Hashable, Iterable, Iterator

from .errors import Unreachable

CONNECT_WINDOW = 256    # sockets in flight, most of them dead nodes' SYNs waiting out their timeout
# connections a server is answering for us (observe.sweep passes its concurrency, 64 by default): far
# within OpenSSH's listen backlog of 128, as a plain thread pool of that size would be
ANSWER_WINDOW = 64
# Linux's initial retransmit timeout: a SYN unanswered this long was dropped or went to a dead node, so it
# stops counting against the answer window (it still holds its place in the window)
SYN_RTO_S = 1.0
_DNS_POLL_S = 0.05
_HELD_POLL_S = 0.02     # how soon a socket the caller takes up frees its place in the window

_CONNECTING, _SPOKEN = "connecting", "spoken"     # what a socket in the selector waits for
Result = tuple[Hashable, "socket.socket | Unreachable"]


def raise_fd_limit(wanted: int) -> None:
    """Lift the soft open-files limit toward `wanted` (bounded by the hard limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def connect_socket(host: str, port: int, timeout: float) -> socket.socket:
    """Called by transport.SshTransport for one connection: a plain TCP connect with a timeout,
    classified as Unreachable: refused, timed out, no route, DNS."""
    try:
        return socket.create_connection((host, port), timeout=timeout)
    except socket.gaierror as e:
        raise Unreachable(f"cannot resolve {host}: {e.strerror}") from e
    except (socket.timeout, TimeoutError):
        raise Unreachable(f"connect to {host}:{port} timed out after {timeout:g}s") from None
    except ConnectionRefusedError:
        raise Unreachable(f"connection refused by {host}:{port}") from None
    except OSError as e:
        raise Unreachable(f"connect to {host}:{port}: {e.strerror or e}") from e


def watch_silence(sock, silent_s: int) -> bool:
    """Let the kernel find a dark peer within ~silent_s: a keepalive probe every idle second and the
    connection ended (ETIMEDOUT) when nothing at all came back for silent_s, with or without our data in
    flight (TCP_USER_TIMEOUT). The node's kernel answers the probes: no process on either side wakes,
    so a resident session pays nothing to be watched (issue 13). False where the options do not exist."""
    if type(sock) not in (socket.socket, _WatchedSocket) or not hasattr(socket, "TCP_USER_TIMEOUT"):
        return False
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, max(1, silent_s))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, silent_s * 1000)
    except OSError:
        return False
    sock.__class__ = _WatchedSocket      # same layout: only how its errors read changes
    return True


SILENT_WORDS = "no answer from the node to TCP keepalives"


class NodeSilent(ConnectionError):
    """The kernel ended a watched connection: the node answered nothing for the watch's limit."""


class _WatchedSocket(socket.socket):
    """A socket under watch_silence. The kernel giving up on the peer (ETIMEDOUT from recv or send) is
    raised as NodeSilent, not as the TimeoutError a socket timeout also raises: paramiko reads that as
    "nothing yet", then sees an end of file, and the node's silence would look like a closed session."""
    __slots__ = ()

    def recv(self, n: int, flags: int = 0) -> bytes:
        return _watched(super().recv, n, flags)

    def send(self, data, flags: int = 0) -> int:
        return _watched(super().send, data, flags)


def _watched(call, *args):
    try:
        return call(*args)
    except TimeoutError as e:
        if e.errno == errno.ETIMEDOUT:
            raise NodeSilent(errno.ETIMEDOUT, SILENT_WORDS) from e
        raise


def connect_many(targets: Iterable[tuple[Hashable, str, int, float]], window: int = CONNECT_WINDOW,
                 held: Callable[[], int] = lambda: 0, answer_window: int = ANSWER_WINDOW) -> Iterator[Result]:
    """Called by observe.sweep. For each (key, host, port, timeout) yield (key, blocking socket the server
    has spoken on, or closed) or (key, Unreachable) exactly once, as each completes.

    At most `window` targets are in flight: a DNS lookup, a SYN sent, or a connection whose server has not
    sent its first bytes yet, plus (as `held()` counts them) sockets already yielded that the caller is
    still using. Of those, at most `answer_window` are answering: held, connected, or a SYN sent less than
    SYN_RTO_S ago. The rest wait their turn. A target's `timeout` runs from when it enters the window
    (its SYN, not the call), and again from the TCP connect for the server's first bytes, so one queued
    behind dead nodes still gets all of it. When every target is dead the wall time is about
    ceil(len(targets) / window) timeouts. Closing the generator early closes every socket not yet yielded.
    """
    queue = deque(targets)
    connector = _Connector()
    try:
        while queue or connector.in_flight():
            while (queue and connector.in_flight() + held() < max(1, window)
                   and connector.answering() + held() < max(1, answer_window)):
                key, host, port, timeout = queue.popleft()
                failed = connector.start(key, host, port, timeout)
                if failed is not None:
                    yield key, failed
            yield from connector.step(_HELD_POLL_S if queue else 1.0)
    finally:
        connector.close()


class _Connector:
    """The targets of one connect_many call that are in flight: DNS lookups, then non-blocking connects."""

    def __init__(self) -> None:
        self.sel = selectors.DefaultSelector()
        self.resolver: ThreadPoolExecutor | None = None
        self.lookups: dict[Hashable, tuple[Future, str, int]] = {}
        self.deadlines: dict[Hashable, tuple[float, float]] = {}     # key -> (deadline, timeout)
        self.syn_at: dict[Hashable, float] = {}

    def in_flight(self) -> int:
        return len(self.lookups) + len(self.sel.get_map())

    def answering(self) -> int:
        young = time.monotonic() - SYN_RTO_S
        return sum(1 for k in self.sel.get_map().values()
                   if k.data[3] == _SPOKEN or self.syn_at.get(k.data[0], 0.0) > young)

    def start(self, key, host: str, port: int, timeout: float) -> Unreachable | None:
        self.deadlines[key] = (time.monotonic() + timeout, timeout)
        if _is_ip(host):
            return self._connect(key, host, port, host)
        if self.resolver is None:
            self.resolver = ThreadPoolExecutor(max_workers=8, thread_name_prefix="gridctl-dns")
        self.lookups[key] = (self.resolver.submit(socket.getaddrinfo, host, port, type=socket.SOCK_STREAM),
                             host, port)
        return None

    def step(self, most_s: float) -> Iterator[Result]:
        """Wait up to most_s; yield what resolved badly, answered, was refused or ran out of time."""
        yield from self._resolved()
        for sel_key, _ in self.sel.select(timeout=self._wait_s(most_s)):
            key, host, port, phase = sel_key.data
            sock = sel_key.fileobj
            if phase == _SPOKEN:
                self.sel.unregister(sock)
                sock.setblocking(True)
                yield key, sock
                continue
            code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if code == 0:
                # accepted by the kernel, maybe still in the server's listen queue: wait for its banner
                self.deadlines[key] = (time.monotonic() + self.deadlines[key][1], self.deadlines[key][1])
                self.sel.modify(sock, selectors.EVENT_READ, (key, host, port, _SPOKEN))
            else:
                self.sel.unregister(sock)
                sock.close()
                yield key, _refusal(host, port, code)
        yield from self._expired()

    def _resolved(self) -> Iterator[Result]:
        for key, (fut, host, port) in list(self.lookups.items()):
            if not fut.done():
                continue
            del self.lookups[key]
            try:
                address = fut.result()[0][4][0]
            except (OSError, IndexError) as e:
                yield key, Unreachable(f"cannot resolve {host}: {getattr(e, 'strerror', None) or e}")
                continue
            failed = self._connect(key, address, port, host)
            if failed is not None:
                yield key, failed

    def _expired(self) -> Iterator[Result]:
        now = time.monotonic()
        for key, (fut, host, port) in list(self.lookups.items()):
            if now >= self.deadlines[key][0]:
                del self.lookups[key]
                yield key, Unreachable(f"cannot resolve {host}: lookup timed out")
        for sel_key in list(self.sel.get_map().values()):
            key, host, port, phase = sel_key.data
            if now >= self.deadlines[key][0]:
                self.sel.unregister(sel_key.fileobj)
                sel_key.fileobj.close()
                timeout = self.deadlines[key][1]
                yield key, Unreachable(f"no SSH banner from {host}:{port} in {timeout:g}s" if phase == _SPOKEN
                                       else f"connect to {host}:{port} timed out after {timeout:g}s")

    def _wait_s(self, most_s: float) -> float:
        if self.lookups:
            return min(_DNS_POLL_S, most_s)
        now = time.monotonic()
        soonest = min((self.deadlines[k.data[0]][0] for k in self.sel.get_map().values()), default=now + most_s)
        return max(0.0, min(soonest - now, most_s))

    def _connect(self, key, address: str, port: int, shown: str) -> Unreachable | None:
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        try:
            sock = socket.socket(family, socket.SOCK_STREAM)
        except OSError as e:
            return Unreachable(f"cannot open a socket: {e.strerror}")
        sock.setblocking(False)
        self.syn_at[key] = time.monotonic()
        code = sock.connect_ex((address, port))
        if code not in (0, errno.EINPROGRESS, errno.EWOULDBLOCK):
            sock.close()
            return _refusal(shown, port, code)
        try:
            self.sel.register(sock, selectors.EVENT_WRITE, (key, shown, port, _CONNECTING))
        except (OSError, ValueError) as e:
            sock.close()
            return Unreachable(f"connect to {shown}:{port}: cannot wait for it ({e})")
        return None

    def close(self) -> None:
        for sel_key in list(self.sel.get_map().values()):
            sel_key.fileobj.close()
        self.sel.close()
        if self.resolver is not None:
            self.resolver.shutdown(wait=False, cancel_futures=True)


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return False


def _refusal(host: str, port: int, code: int) -> Unreachable:
    if code == errno.ECONNREFUSED:
        return Unreachable(f"connection refused by {host}:{port}")
    return Unreachable(f"connect to {host}:{port}: {errno.errorcode.get(code, code)}")
