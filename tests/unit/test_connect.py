"""connect.connect_many against real sockets on 127.0.0.1: dead targets (a listener whose backlog is full
drops every further SYN, no root needed), slow ones (answered on a SYN retransmit), silent ones (connected,
no banner), refused ones, and the window of connects in flight."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading

import pytest

from gridctl.connect import connect_many, connect_socket, watch_silence
from gridctl.errors import Unreachable


class DeadEndpoint:
    """A listener with backlog 0 and one queued connection: the kernel drops every further SYN."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(0)
        self.port = self.sock.getsockname()[1]
        self.filler = socket.create_connection(("127.0.0.1", self.port), timeout=2)
        self._accepted: list[socket.socket] = []

    def answer_after(self, delay_s: float) -> None:
        """Start accepting after delay_s: SYNs dropped until then succeed on their retransmit."""
        def accept() -> None:
            self.sock.settimeout(10)
            try:
                while True:
                    conn = self.sock.accept()[0]
                    conn.sendall(BANNER)
                    self._accepted.append(conn)
            except OSError:
                return
        threading.Timer(delay_s, accept).start()

    def close(self) -> None:
        for s in (self.filler, self.sock, *self._accepted):
            s.close()


@pytest.fixture
def dead():
    endpoint = DeadEndpoint()
    yield endpoint
    endpoint.close()


BANNER = b"SSH-2.0-OpenSSH_9.2\r\n"

# a separate process, so its sockets are not counted among ours
SSH_LIKE_SERVER = """
import socket, sys
s = socket.socket(); s.bind(("127.0.0.1", 0)); s.listen(64)
print(s.getsockname()[1], flush=True)
held = []
while True:
    c = s.accept()[0]; c.sendall(%r); held.append(c)
""" % BANNER


@pytest.fixture
def live():
    """A server that accepts at once and speaks first, as sshd does."""
    proc = subprocess.Popen([sys.executable, "-c", SSH_LIKE_SERVER], stdout=subprocess.PIPE, text=True)
    try:
        yield int(proc.stdout.readline())
    finally:
        proc.kill()
        proc.wait()


def _open_sockets() -> int:
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            count += os.readlink(f"/proc/self/fd/{fd}").startswith("socket:")
        except OSError:
            continue
    return count


def _collect(results) -> dict:
    out = {}
    for key, got in results:
        assert key not in out, f"{key} reported twice"
        out[key] = got
        if isinstance(got, socket.socket):
            got.close()
            out[key] = "connected"
    return out


def test_dead_target_is_unreachable_after_its_connect_timeout(dead):
    [(key, got)] = list(connect_many([("n1", "127.0.0.1", dead.port, 0.3)]))
    assert key == "n1"
    assert isinstance(got, Unreachable)
    assert str(got) == f"connect to 127.0.0.1:{dead.port} timed out after 0.3s"


def test_connected_server_that_never_speaks_is_unreachable_after_the_timeout():
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)          # the kernel completes the handshake; nobody accepts or sends a banner
    port = silent.getsockname()[1]
    try:
        [(_, got)] = list(connect_many([("n1", "127.0.0.1", port, 0.3)]))
    finally:
        silent.close()
    assert str(got) == f"no SSH banner from 127.0.0.1:{port} in 0.3s"


def test_yielded_socket_has_the_banner_waiting(live):
    [(_, sock)] = list(connect_many([("n1", "127.0.0.1", live, 2.0)]))
    try:
        sock.settimeout(0)
        assert sock.recv(100) == BANNER
    finally:
        sock.close()


def test_connects_in_flight_never_exceed_the_window(dead):
    baseline = _open_sockets()
    seen = []
    results = {}
    for key, got in connect_many([(f"n{i}", "127.0.0.1", dead.port, 0.2) for i in range(12)], window=4):
        seen.append(_open_sockets() - baseline)
        results[key] = got
    assert sorted(results) == sorted(f"n{i}" for i in range(12))
    assert all(isinstance(r, Unreachable) for r in results.values())
    # at each yield the reported socket is already closed: at most window - 1 others are in flight
    assert max(seen) == 3, seen


def test_sockets_the_caller_still_holds_count_in_the_window(live):
    # the server keeps a connection we have not used yet open for us: it takes a place in the window
    baseline = _open_sockets()
    held: list[socket.socket] = []
    seen = []
    for _, sock in connect_many([(f"n{i}", "127.0.0.1", live, 2.0) for i in range(8)], window=3,
                                held=lambda: len(held)):
        held.append(sock)
        seen.append(_open_sockets() - baseline)
        if len(held) == 3:
            held.pop(0).close()
    for sock in held:
        sock.close()
    assert len(seen) == 8
    assert max(seen) <= 3, seen


def test_live_connections_are_bounded_apart_from_dead_ones(dead, live):
    # dead nodes fill the window with SYNs; the server sees at most answer_window of our connections
    baseline = _open_sockets()
    held: list[socket.socket] = []
    seen, results = [], {}
    targets = [(f"dead{i}", "127.0.0.1", dead.port, 2.0) for i in range(4)]
    targets += [(f"live{i}", "127.0.0.1", live, 2.0) for i in range(6)]
    for key, got in connect_many(targets, window=10, answer_window=2, held=lambda: len(held)):
        results[key] = got
        if isinstance(got, socket.socket):
            held.append(got)
            seen.append(_open_sockets() - baseline)
            if len(held) == 2:
                held.pop(0).close()
    for sock in held:
        sock.close()
    assert sum(isinstance(r, Unreachable) for r in results.values()) == 4
    assert len(seen) == 6
    assert max(seen) <= 4 + 2, seen      # the dead nodes' SYNs, and two connections the server answers


def test_connect_queued_behind_the_window_gets_its_full_timeout(dead, live):
    targets = [("dead1", "127.0.0.1", dead.port, 0.3), ("dead2", "127.0.0.1", dead.port, 0.3),
               ("live", "127.0.0.1", live, 0.3)]
    results = _collect(connect_many(targets, window=1))
    assert results["live"] == "connected"
    assert isinstance(results["dead1"], Unreachable) and isinstance(results["dead2"], Unreachable)


def test_slow_target_answering_on_syn_retransmit_connects(dead):
    dead.answer_after(0.2)   # the first SYN is dropped; Linux retransmits it after about 1 s
    results = _collect(connect_many([("slow", "127.0.0.1", dead.port, 5.0)]))
    assert results == {"slow": "connected"}


def test_every_target_is_reported_once_whatever_it_does(dead, live):
    refused = socket.socket()
    refused.bind(("127.0.0.1", 0))
    refused_port = refused.getsockname()[1]
    refused.close()
    targets = [("live", "127.0.0.1", live, 2.0), ("dead", "127.0.0.1", dead.port, 0.3),
               ("refused", "127.0.0.1", refused_port, 2.0), ("live2", "127.0.0.1", live, 2.0)]
    results = _collect(connect_many(targets, window=2))
    assert results["live"] == results["live2"] == "connected"
    assert str(results["refused"]) == f"connection refused by 127.0.0.1:{refused_port}"
    assert str(results["dead"]) == f"connect to 127.0.0.1:{dead.port} timed out after 0.3s"


def test_connect_socket_says_refused_and_timed_out(dead):
    refused = socket.socket()
    refused.bind(("127.0.0.1", 0))
    port = refused.getsockname()[1]
    refused.close()
    with pytest.raises(Unreachable, match=f"^connection refused by 127.0.0.1:{port}$"):
        connect_socket("127.0.0.1", port, 2.0)
    with pytest.raises(Unreachable, match=rf"^connect to 127.0.0.1:{dead.port} timed out after 0.3s$"):
        connect_socket("127.0.0.1", dead.port, 0.3)


def test_a_watched_connection_is_left_to_the_kernel_and_still_carries_data():
    """watch_silence: keepalive each idle second and TCP_USER_TIMEOUT, so a dark node's connection ends
    by itself (the end to end case, an iptables DROP, is tests/integration/test_agent_loop.py)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    client = socket.create_connection(listener.getsockname(), timeout=5)
    server, _ = listener.accept()
    try:
        assert watch_silence(client, 2)
        assert client.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
        assert client.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == 1
        assert client.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT) == 2000
        client.sendall(b"ping")
        assert server.recv(4) == b"ping"
        server.sendall(b"pong")
        assert client.recv(4) == b"pong"
        a, b = socket.socketpair()          # not TCP: nothing to watch, and said so
        assert not watch_silence(a, 2)
        a.close()
        b.close()
    finally:
        client.close()
        server.close()
        listener.close()
