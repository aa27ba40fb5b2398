"""Open many TCP connections at once, yielding each as it completes.

Called by reconcile/observe.sweep before SSH handshakes, so a dead node costs a file descriptor for
connect_timeout instead of a worker thread: the sweep's wall time stays one connect timeout plus one
probe timeout however many nodes are dead.
"""

from __future__ import annotations

import errno
import ipaddress
import resource
import selectors
import socket
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Hashable, Iterable, Iterator

from .errors import Unreachable


def raise_fd_limit(wanted: int) -> None:
    """Lift the soft open-files limit toward `wanted` (bounded by the hard limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return False


def connect_many(targets: Iterable[tuple[Hashable, str, int, float]]
                 ) -> Iterator[tuple[Hashable, socket.socket | Unreachable]]:
    """For each (key, host, port, timeout): yield (key, connected blocking socket) or (key, Unreachable)."""
    sel = selectors.DefaultSelector()
    deadlines: dict[Hashable, float] = {}
    pending_dns: dict[Hashable, tuple[Future, str, int]] = {}
    resolver = ThreadPoolExecutor(max_workers=8, thread_name_prefix="gridctl-dns")
    start = time.monotonic()
    try:
        for key, host, port, timeout in targets:
            deadlines[key] = start + timeout
            if _is_ip(host):
                err = _start(sel, key, host, port)
                if err is not None:
                    yield key, err
            else:
                pending_dns[key] = (resolver.submit(socket.getaddrinfo, host, port, type=socket.SOCK_STREAM),
                                    host, port)
        while sel.get_map() or pending_dns:
            for key, (fut, host, port) in list(pending_dns.items()):
                if fut.done():
                    del pending_dns[key]
                    try:
                        address = fut.result()[0][4][0]
                    except (socket.gaierror, IndexError, OSError) as e:
                        yield key, Unreachable(f"cannot resolve {host}: {getattr(e, 'strerror', None) or e}")
                        continue
                    err = _start(sel, key, address, port, host)
                    if err is not None:
                        yield key, err
            now = time.monotonic()
            for key, (fut, host, port) in list(pending_dns.items()):
                if now >= deadlines[key]:
                    del pending_dns[key]
                    yield key, Unreachable(f"cannot resolve {host}: lookup timed out")
            for sel_key, _ in sel.select(timeout=0.05 if pending_dns else _next_wait(sel, deadlines)):
                key, host, port = sel_key.data
                sock = sel_key.fileobj
                sel.unregister(sock)
                code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if code == 0:
                    sock.setblocking(True)
                    yield key, sock
                else:
                    sock.close()
                    yield key, _refusal(host, port, code)
            now = time.monotonic()
            for sel_key in list(sel.get_map().values()):
                key, host, port = sel_key.data
                if now >= deadlines[key]:
                    sel.unregister(sel_key.fileobj)
                    sel_key.fileobj.close()
                    yield key, Unreachable(f"connect to {host}:{port} timed out after "
                                           f"{deadlines[key] - start:g}s")
    finally:
        for sel_key in list(sel.get_map().values()):
            sel_key.fileobj.close()
        sel.close()
        resolver.shutdown(wait=False, cancel_futures=True)


def _next_wait(sel: selectors.BaseSelector, deadlines: dict) -> float:
    now = time.monotonic()
    soonest = min((deadlines[k.data[0]] for k in sel.get_map().values()), default=now)
    return max(0.0, min(soonest - now, 1.0))


def _start(sel: selectors.BaseSelector, key, address: str, port: int, shown: str | None = None):
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    try:
        sock = socket.socket(family, socket.SOCK_STREAM)
    except OSError as e:
        return Unreachable(f"cannot open a socket: {e.strerror}")
    sock.setblocking(False)
    code = sock.connect_ex((address, port))
    if code not in (0, errno.EINPROGRESS, errno.EWOULDBLOCK):
        sock.close()
        return _refusal(shown or address, port, code)
    sel.register(sock, selectors.EVENT_WRITE, (key, shown or address, port))
    return None


def _refusal(host: str, port: int, code: int) -> Unreachable:
    if code == errno.ECONNREFUSED:
        return Unreachable(f"connection refused by {host}:{port}")
    return Unreachable(f"connect to {host}:{port}: {errno.errorcode.get(code, code)}")
