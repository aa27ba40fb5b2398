"""The controller's end of the agent protocol against a node that writes what it likes: framing,
bounds, versions, garbage. The node is a byte stream fed by the test (no process, no network), read
both ways the controller reads one: by a reader thread of its own, and (like an SSH channel) by the
shared thread that polls every session's descriptor."""

from __future__ import annotations

import json
import os
import queue
import time

import pytest

from gridctl.agent.session import MAX_LINE, PROTOCOL, AgentSession, ProtocolError, SessionSilent, bootstrap


class NodeStream:
    """What a node writes, chunk by chunk; what we write is kept."""

    def __init__(self, *chunks: bytes) -> None:
        self.chunks: queue.Queue = queue.Queue()
        for c in chunks:
            self.chunks.put(c)
        self.written = bytearray()
        self.closed = False

    def write(self, data: bytes) -> None:
        self.written += data

    def read(self, n: int) -> bytes:
        return self.chunks.get()

    def close(self) -> None:
        self.closed = True
        self.chunks.put(b"")


class _Signalled(queue.Queue):
    def __init__(self, fd: int) -> None:
        super().__init__()
        self.fd = fd

    def put(self, item, *args, **kwargs) -> None:
        super().put(item, *args, **kwargs)
        os.write(self.fd, b"*")


class PolledStream(NodeStream):
    """The same node read like an SSH channel: a descriptor readable while a chunk waits, and a read
    that never blocks (the shared hub thread's way)."""

    def __init__(self, *chunks: bytes) -> None:
        super().__init__()
        self.rfd, wfd = os.pipe()
        self.chunks = _Signalled(wfd)
        for c in chunks:
            self.chunks.put(c)

    def fileno(self) -> int:
        return self.rfd

    def read_now(self, n: int) -> bytes | None:
        os.read(self.rfd, 1)
        return self.chunks.get_nowait()


Stream = NodeStream


@pytest.fixture(autouse=True, params=["reader-thread", "polled-hub"])
def stream_kind(request, monkeypatch):
    monkeypatch.setitem(globals(), "Stream", PolledStream if request.param == "polled-hub" else NodeStream)
    return request.param


def line(**msg) -> bytes:
    return (json.dumps(msg) + "\n").encode()


HELLO = line(t="hello", v=PROTOCOL, caps=["probe"], pid=7)


def started(*chunks: bytes) -> tuple[AgentSession, NodeStream]:
    stream = Stream(HELLO, *chunks)
    session = AgentSession(stream)
    session.start(2)
    return session, stream


def test_bootstrap_ships_agent_then_its_modules_by_length():
    data = bootstrap()
    size, _, rest = data.partition(b"\n")
    agent = rest[:int(size)]
    assert b"def main(stdin)" in agent
    count, _, rest = rest[int(size):].partition(b"\n")
    names = []
    for _ in range(int(count)):
        head, _, rest = rest.partition(b"\n")
        name, length = head.split()
        names.append(name.decode())
        rest = rest[int(length):]
    assert names[:2] == ["gridctl_node_attempts", "gridctl_node_host"] and rest == b""


def test_result_text_comes_back_for_its_request():
    session, stream = started()
    stream.write = lambda data: (stream.written.extend(data),
                                 stream.chunks.put(line(t="hb") + line(t="result", id=1, out="@n end\n")))
    assert session.request({"nonce": "ab" * 8}, 2, 2)[0] == "@n end\n"
    sent = json.loads(stream.written[len(bootstrap()):].decode())
    assert sent["op"] == "probe" and sent["id"] == 1


def test_a_result_split_across_reads_is_joined():
    session, stream = started()
    whole = line(t="result", id=1, out="x" * 1000)
    stream.write = lambda data: (stream.chunks.put(whole[:100]), stream.chunks.put(whole[100:]))
    assert session.request({}, 2, 2)[0] == "x" * 1000


def test_garbage_line_ends_session_with_words():
    session, stream = started(b"\x00\xffnot json at all\n")
    with pytest.raises(ProtocolError, match="not JSON"):
        session.request({}, 2, 2)
    deadline = time.monotonic() + 2          # the reading thread closes it right after saying why
    while not stream.closed and time.monotonic() < deadline:
        time.sleep(0.01)
    assert stream.closed


def test_ten_megabyte_line_ends_session_without_keeping_it():
    session, stream = started(*([b"a" * (1 << 20)] * 10))
    with pytest.raises(ProtocolError, match=f"over {MAX_LINE} bytes"):
        session.request({}, 5, 5)


def test_answer_to_a_request_never_sent_ends_session():
    session, stream = started()
    stream.chunks.put(line(t="result", id=99, out="forged"))
    with pytest.raises(ProtocolError, match="did not send"):
        session.request({}, 2, 2)


def test_unknown_message_kind_ends_session():
    session, _ = started(line(t="exec", cmd="rm -rf /"))
    with pytest.raises(ProtocolError, match="unknown message kind"):
        session.request({}, 2, 2)


def test_partial_line_then_end_of_stream_is_a_lost_session():
    session, stream = started(b'{"t": "resu', b"")
    with pytest.raises(ProtocolError, match="ended"):
        session.request({}, 2, 2)


def test_other_protocol_version_is_refused_at_start():
    stream = Stream(line(t="hello", v=PROTOCOL + 1, caps=[]))
    with pytest.raises(ProtocolError, match=f"protocol {PROTOCOL + 1}"):
        AgentSession(stream).start(2)


def test_no_hello_is_refused_at_start():
    stream = Stream(b"sh: 1: python3: not found\n")
    with pytest.raises(ProtocolError, match="did not start"):
        AgentSession(stream).start(2)


def test_silent_session_is_reported_as_silence_not_an_answer():
    session, _ = started()
    session.last_heard = time.monotonic() - 5
    with pytest.raises(SessionSilent):
        session.request({}, 3, 2)


def test_heartbeats_without_result_time_out():
    session, stream = started()
    for _ in range(20):
        stream.chunks.put(line(t="hb"))
    with pytest.raises(TimeoutError):
        session.request({}, 0.5, 5)


def test_pushed_xid_reaches_the_callback():
    seen = []
    stream = Stream(HELLO, line(t="xid", xid=79, gpu=3, bus_id="00000000:48:00.0"))
    AgentSession(stream, on_xid=seen.append).start(2)
    deadline = time.monotonic() + 2
    while not seen and time.monotonic() < deadline:
        time.sleep(0.01)
    assert seen and seen[0]["xid"] == 79


def test_lines_waiting_unread_are_not_silence():
    """A controller too busy to read is not a silent node: the stream says bytes are waiting."""
    session, stream = started()
    stream.pending = lambda: True
    session.last_heard = time.monotonic() - 5
    with pytest.raises(TimeoutError):
        session.request({}, 0.5, 2)


def test_a_request_the_agent_can_no_longer_take_marks_the_session_ended():
    """An agent killed just before a pass: the write fails before its end of stream is read."""
    session, stream = started()

    def broken_pipe(data: bytes) -> None:
        raise BrokenPipeError(32, "Broken pipe")
    stream.write = broken_pipe
    with pytest.raises(ProtocolError, match="cannot send"):
        session.request({}, 2, 2)
    assert session.ended


def test_a_polled_stream_is_read_by_the_shared_thread_not_one_of_its_own(stream_kind):
    session, stream = started()
    stream.write = lambda data: stream.chunks.put(line(t="result", id=1, out="ok\n"))   # answered when asked
    assert session.request({}, 2, 2)[0] == "ok\n"
    assert session._reader.is_alive() is (stream_kind == "reader-thread")


def test_both_ends_agree_on_the_heartbeat():
    """The agent's heartbeat is what the controller's silence rule counts on (2 x HEARTBEAT_S)."""
    from gridctl.agent import node_agent, session as controller
    from gridctl.agent.sessions import SILENT_AFTER_S
    assert node_agent.HEARTBEAT_S == controller.HEARTBEAT_S and SILENT_AFTER_S == 2 * controller.HEARTBEAT_S


def test_a_pass_on_live_sessions_asks_every_node_with_at_most_window_requests_in_flight():
    """AgentSessions.ask_live: the sweep's thread sends and awaits every live node's request itself, never
    more than `window` at once (what a shared endpoint would get from a thread pool of that size)."""
    import threading
    from gridctl.agent.sessions import AgentSessions
    lock = threading.Lock()
    flying, most, answered = [0], [0], []

    def node(name: str):
        stream = Stream(HELLO)

        def write(data: bytes) -> None:
            if not data.startswith(b"{"):
                return                  # the bootstrap
            ident = json.loads(data)["id"]
            with lock:
                flying[0] += 1
                most[0] = max(most[0], flying[0])

            def answer() -> None:
                time.sleep(0.02)
                with lock:
                    flying[0] -= 1
                    answered.append(name)
                stream.chunks.put(line(t="result", id=ident, out=f"@{name}\n"))
            threading.Thread(target=answer, daemon=True).start()
        stream.write = write
        return stream

    sessions = AgentSessions()
    try:
        names = [f"n{i}" for i in range(12)]
        for name in names:                    # start each session (its first probe goes the per-node way)
            assert sessions.probe(name, lambda name=name: node(name), {}, 2).text == f"@{name}\n"
        most[0] = 0
        got = sessions.ask_live({name: ({}, 2.0) for name in names + ["no-session"]}, window=3)
    finally:
        sessions.close()
    assert {n: a.text for n, a in got.items()} == {n: f"@{n}\n" for n in names}
    assert all(a.kind == "text" and 0 <= a.took_s < 2 for a in got.values())
    assert 1 <= most[0] <= 3, most[0]


def test_an_agent_slow_to_start_keeps_starting_while_the_node_uses_the_sh_probe():
    """A busy node's python3 may take longer than a probe's time to say hello: that is not a failed start
    (30 passes on the sh probe), the agent is asked again at the next pass and used once it answers."""
    from gridctl.agent.sessions import AgentSessions
    stream = Stream()

    def write(data: bytes) -> None:
        if data.startswith(b"{"):
            stream.chunks.put(line(t="result", id=json.loads(data)["id"], out="@late\n"))
    stream.write = write
    sessions = AgentSessions()
    try:
        first = sessions.probe("n", lambda: stream, {}, 0.3)
        assert (first.kind, first.problem) == ("sh", None)
        assert sessions.path("n") == "sh (agent starting)"
        stream.chunks.put(HELLO)
        deadline = time.monotonic() + 5
        second = sessions.probe("n", lambda: pytest.fail("shipped twice"), {}, 2)
        while second.kind == "sh" and time.monotonic() < deadline:     # the hello is read by another thread
            time.sleep(0.05)
            second = sessions.probe("n", lambda: pytest.fail("shipped twice"), {}, 2)
        assert (second.kind, second.text) == ("text", "@late\n")
        assert [e.kind for e in sessions.take_events()] == ["agent-started"]
        assert sessions.path("n") == "agent"
    finally:
        sessions.close()
