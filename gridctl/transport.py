"""Run a command on a node over SSH (paramiko); simulated nodes run locally (localtransport.py).

Called by reconcile/observe.py. Every exec has a client-side monotonic deadline (paramiko's
recv_exit_status ignores channel timeouts, so we poll). SSH connections are cached per target and
reused across passes; a broken one is replaced transparently, once per call.
Errors come out typed: Unreachable, AuthFailed, HostKeyChanged/HostKeyUnknown, ProbeTimeout.
"""

from __future__ import annotations

import logging
import os
import select
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import paramiko

from .connect import SILENT_WORDS, NodeSilent, connect_socket, watch_silence
from .errors import AuthFailed, ProbeTimeout, TransportError, Unreachable
from .hostkeys import HostKeyStore
from .models import Target

# paramiko logs its transport thread's failures with tracebacks; we classify them ourselves
logging.getLogger("paramiko").addHandler(logging.NullHandler())

MAX_OUTPUT = 4 * 1024 * 1024
BANNER_TIMEOUT = 10.0
AUTH_TIMEOUT = 10.0
CHANNEL_TIMEOUT = 10.0
KEEPALIVE_S = 15
READER_WAKE_S = 30.0
# AEAD ciphers first: with the others paramiko checks each packet's MAC in Python (an HMAC, then a
# constant-time compare byte by byte: 15 % of an agent pass's CPU in a yappi profile); AES-GCM is one C call a packet.
# A server that offers neither gets paramiko's usual order.
AEAD_CIPHERS = ("aes128-gcm@openssh.com", "aes256-gcm@openssh.com")


@dataclass(frozen=True)
class RunResult:
    stdout: bytes
    stderr: bytes
    exit_code: int
    duration_s: float
    truncated: bool = False


STREAM_SILENCE_S = 10.0     # a followed stream's node that answers no keepalive this long is silent


class _Liveness:
    """While a followed command prints nothing, ask the server for a keepalive reply now and then:
    a node gone dark answers none, and TCP alone would wait many minutes to say so."""

    def __init__(self, transport: paramiko.Transport, silent_after_s: float, every_s: float = 3.0) -> None:
        self.transport = transport
        self.silent_after_s = silent_after_s
        self.every_s = every_s
        self.last = time.monotonic()
        self._asked: float | None = None
        self._answered = threading.Event()

    def heard(self) -> None:
        self.last = time.monotonic()

    def check(self, host: str) -> None:
        now = time.monotonic()
        if self._answered.is_set():
            self._answered.clear()
            self._asked = None
            self.last = now
        if self._asked is None and now - self.last >= self.every_s:
            self._asked = now
            threading.Thread(target=self._ask, name="gridctl-keepalive", daemon=True).start()
        if self._asked is not None and now - self._asked > self.silent_after_s:
            raise Unreachable(f"{host} silent: no answer to keepalives for {now - self._asked:.0f}s")

    def _ask(self) -> None:
        try:
            # any answer counts (OpenSSH refuses this request, and that refusal is an answer)
            self.transport.global_request("keepalive@openssh.com", wait=True)
        except Exception:  # a broken transport is seen by the caller's next is_active()
            return
        self._answered.set()


@dataclass
class _Conn:
    transport: paramiko.Transport
    lock: threading.Lock = field(default_factory=threading.Lock)


class SshTransport:
    """A cache of authenticated paramiko Transports, one per (user, host, port, jump)."""

    def __init__(self, keep: bool = True) -> None:
        self.keep = keep                         # False: close each connection after its command
        self._conns: dict[tuple, _Conn] = {}
        self._lock = threading.Lock()
        self._stores: dict[Path, HostKeyStore] = {}
        self._pkeys: dict[Path, paramiko.PKey] = {}
        self._agent_keys: list | None = None

    # -- public

    def needs_socket(self, target: Target) -> bool:
        """Called by observe.sweep before it connects many nodes at once (connect.connect_many): True when
        run(target) would open a new direct TCP connection, so the caller may connect it and pass the socket
        in. False when a kept connection will be reused or the node is reached through a proxy jump (its
        socket is a channel of the jump host)."""
        return target.proxy_jump is None and not self._kept(target)

    def run(self, target: Target, command: str, stdin: bytes, timeout: float,
            sock: socket.socket | None = None) -> RunResult:
        """Exec command with stdin; the whole exec (not the connect) is bounded by timeout.

        sock: a connected socket to the target, when needs_socket(target) said so; run owns it from then
        on (uses it, or closes it when a kept connection came up meanwhile)."""
        reused = sock is None and self._kept(target)
        conn = self._connection(target, sock)
        # a live sshd opens a channel in milliseconds: on a kept connection, waiting longer than a
        # connect timeout for it means the node (or the path to it) went silent
        open_s = max(1.0, min(target.connect_timeout, timeout)) if reused else min(CHANNEL_TIMEOUT, timeout)
        try:
            try:
                return self._exec(conn.transport, command, stdin, timeout, open_s)
            except _Silent as e:
                self._drop(target)
                raise Unreachable(f"no answer on the open connection in {open_s:g}s ({e})") from e
            except _Broken as e:
                self._drop(target)
                if not reused:
                    raise Unreachable(f"connection lost: {e}") from e
            # a cached connection died between passes: reconnect once, transparently
            return self._exec(self._connection(target, None).transport, command, stdin, timeout,
                              min(CHANNEL_TIMEOUT, timeout))
        finally:
            if not self.keep:
                self._drop(target)

    def stream(self, target: Target, command: str, out, timeout: float | None) -> int | None:
        """Run command, copying its stdout to `out` as it arrives; returns the exit code."""
        conn = self._connection(target, None)
        try:
            chan = conn.transport.open_session(timeout=CHANNEL_TIMEOUT)
        except (paramiko.SSHException, OSError, EOFError) as e:
            raise Unreachable(f"cannot open a session: {_words(e)}") from e
        deadline = None if timeout is None else time.monotonic() + timeout
        alive = _Liveness(conn.transport, silent_after_s=max(2 * target.connect_timeout, STREAM_SILENCE_S))
        try:
            chan.settimeout(1.0)
            chan.exec_command(command)
            chan.shutdown_write()
            while True:
                try:
                    data = chan.recv(65536)
                except socket.timeout:
                    if not conn.transport.is_active():
                        raise Unreachable("connection lost") from None
                    if deadline is not None and time.monotonic() > deadline:
                        raise ProbeTimeout(f"no end in {timeout:g}s") from None
                    alive.check(target.host)
                    continue
                if not data:
                    break
                alive.heard()
                out.write(data)
                out.flush()
            return chan.recv_exit_status()
        finally:
            _close_quietly(chan)

    def open_stream(self, target: Target, command: str, sock: socket.socket | None = None,
                    silent_s: int | None = None) -> "ChannelStream":
        """Start a long-lived command (the resident agent) on the kept connection; its stdin and stdout
        as a byte stream. Raises what run raises when connecting; the stream is the caller's to close.
        silent_s: the kernel ends the connection when the node's side answers nothing that long
        (connect.watch_silence); the stream then says why (ChannelStream.lost)."""
        conn = self._connection(target, sock)
        if silent_s and watch_silence(conn.transport.sock, silent_s):
            conn.transport.set_keepalive(0)     # the kernel's keepalives watch it now, at no cost to us
        try:
            chan = conn.transport.open_session(timeout=min(CHANNEL_TIMEOUT, max(target.connect_timeout, 1.0)))
            chan.exec_command(command)
        except (paramiko.SSHException, OSError, EOFError) as e:
            self._drop(target)
            raise Unreachable(f"cannot open a session: {_words(e)}") from e
        return ChannelStream(chan)

    def forget(self, target: Target) -> None:
        """Close the kept connection to target (it went silent): the next call connects afresh."""
        self._drop(target)

    def close(self) -> None:
        with self._lock:
            conns, self._conns = list(self._conns.values()), {}
        for conn in conns:
            conn.transport.close()

    # -- connecting

    def _kept(self, target: Target) -> bool:
        conn = self._conns.get(target.key)
        return conn is not None and conn.transport.is_active()

    def _connection(self, target: Target, sock: socket.socket | None) -> _Conn:
        with self._lock:
            conn = self._conns.get(target.key)
        if conn is not None and conn.transport.is_active():
            if sock is not None:
                sock.close()
            return conn
        try:
            transport = self._handshake(target, sock if sock is not None else self._open_socket(target))
        except _Dropped:
            # sshd closed before its banner (MaxStartups, LoginGraceTime): a fresh connect, once
            transport = self._handshake(target, self._open_socket(target))
        conn = _Conn(transport)
        with self._lock:
            old = self._conns.get(target.key)
            self._conns[target.key] = conn
        if old is not None:
            old.transport.close()
        return conn

    def _drop(self, target: Target) -> None:
        with self._lock:
            conn = self._conns.pop(target.key, None)
        if conn is not None:
            conn.transport.close()

    def _open_socket(self, target: Target):
        if target.proxy_jump is not None:
            jump = self._connection(target.proxy_jump, None).transport
            try:
                return jump.open_channel("direct-tcpip", (target.host, target.port), ("127.0.0.1", 0),
                                         timeout=target.connect_timeout)
            except (paramiko.SSHException, OSError, EOFError) as e:
                raise Unreachable(f"via {target.proxy_jump.host}: {_words(e)}") from e
        return connect_socket(target.host, target.port, target.connect_timeout)

    def _handshake(self, target: Target, sock) -> paramiko.Transport:
        store = self._store(target.known_hosts)
        t = paramiko.Transport(sock)
        # the same explicit bounds SSHClient.connect(timeout, banner_timeout, auth_timeout, channel_timeout) sets
        t.banner_timeout = min(BANNER_TIMEOUT, max(target.connect_timeout, 1.0))
        t.auth_timeout = AUTH_TIMEOUT
        t.channel_timeout = CHANNEL_TIMEOUT
        t.handshake_timeout = BANNER_TIMEOUT + target.connect_timeout
        options = t.get_security_options()
        options.ciphers = (tuple(c for c in AEAD_CIPHERS if c in options.ciphers)
                           + tuple(c for c in options.ciphers if c not in AEAD_CIPHERS))
        pinned = store.key_types(target.host, target.port)
        if pinned:
            # ask for a pinned type first, but accept any: a server that now offers only another type
            # presents it, and store.check calls that what it is, a changed host key (not silence)
            ours = set(pinned) | ({"rsa-sha2-256", "rsa-sha2-512"} if "ssh-rsa" in pinned else set())
            options.key_types = sorted(options.key_types, key=lambda k: k not in ours)
        try:
            t.start_client(timeout=BANNER_TIMEOUT + target.connect_timeout)
            store.check(target.host, target.port, t.get_remote_server_key(), target.host_key_policy)
            self._authenticate(t, target)
        except TransportError:   # ours, already classified (host key, auth, closed during auth)
            t.close()
            raise
        except paramiko.AuthenticationException as e:
            t.close()
            raise AuthFailed(f"{target.user}@{target.host}: {_words(e)}") from e
        except (paramiko.SSHException, OSError, EOFError) as e:
            t.close()
            if isinstance(e, (EOFError, ConnectionResetError)) or isinstance(e.__context__, (EOFError, ConnectionResetError)):
                raise _Dropped(f"connection closed by {target.host}:{target.port} before the SSH handshake") from e
            raise Unreachable(_words(e)) from e
        except Exception as e:  # paramiko re-raises whatever killed its reader thread: UnicodeDecodeError, struct.error...
            t.close()
            raise Unreachable(f"SSH handshake with {target.host}:{target.port} failed: "
                              f"{type(e).__name__}: {_words(e)}") from e
        t.set_keepalive(KEEPALIVE_S)
        # paramiko's reader thread wakes every 0.1 s by default to look at its keepalive timer and whether
        # it was closed; with hundreds of connections kept those wake-ups were most of an idle loop's CPU.
        # The cost: after close() the thread may sit in recv until this timeout (a daemon thread; Linux does
        # not wake a recv when another thread closes the descriptor)
        t.sock.settimeout(READER_WAKE_S)
        return t

    def _authenticate(self, t: paramiko.Transport, target: Target) -> None:
        tried = []
        for pkey in self._keys_for(target):
            try:
                t.auth_publickey(target.user, pkey)
            except paramiko.BadAuthenticationType as e:
                raise AuthFailed(f"{target.user}@{target.host}: server allows only {', '.join(e.allowed_types)}") from e
            except paramiko.AuthenticationException as e:
                if not t.is_active():
                    raise Unreachable(f"{target.host}:{target.port} closed the connection during authentication") from e
                tried.append(pkey.get_name())
                continue
            if t.is_authenticated():
                return
        raise AuthFailed(f"{target.user}@{target.host}: no key accepted (tried {len(tried)}: "
                         f"{', '.join(tried) or 'none available'})")

    def _keys_for(self, target: Target) -> list:
        keys = []
        for path in target.keys:
            pkey = self._load_key(path)
            if pkey is not None:
                keys.append(pkey)
        if self._agent_keys is None:
            try:
                self._agent_keys = list(paramiko.Agent().get_keys())
            except (paramiko.SSHException, OSError):
                self._agent_keys = []
        return keys + self._agent_keys

    def _load_key(self, path: Path):
        path = Path(os.path.expanduser(path))
        if path not in self._pkeys:
            try:
                self._pkeys[path] = paramiko.PKey.from_path(path)
            except FileNotFoundError:
                return None
            except paramiko.PasswordRequiredException:
                raise AuthFailed(f"key {path} is encrypted: add it to ssh-agent") from None
            except (paramiko.SSHException, OSError, ValueError) as e:
                raise AuthFailed(f"cannot load key {path}: {_words(e)}") from e
        return self._pkeys[path]

    def _store(self, path: Path) -> HostKeyStore:
        path = Path(os.path.expanduser(path))
        with self._lock:
            if path not in self._stores:
                self._stores[path] = HostKeyStore(path)
            return self._stores[path]

    # -- executing

    def _exec(self, t: paramiko.Transport, command: str, stdin: bytes, timeout: float,
              open_s: float = CHANNEL_TIMEOUT) -> RunResult:
        start = time.monotonic()
        deadline = start + timeout
        try:
            chan = t.open_session(timeout=min(open_s, timeout))
        except (paramiko.SSHException, OSError, EOFError) as e:
            if t.is_active() and "Timeout" in str(e):
                raise _Silent(_words(e)) from e
            raise _Broken(_words(e)) from e
        try:
            chan.settimeout(max(0.1, deadline - time.monotonic()))
            chan.exec_command(command)
            if stdin:
                chan.sendall(stdin)
            chan.shutdown_write()
            out, err, truncated = _drain(chan, deadline)
            if chan.exit_status == -1 and not t.is_active():
                # the connection died before the command ended: what came so far is not its answer
                # (a launch may have started its process all the same)
                raise _Broken("connection lost before the command finished")
            return RunResult(bytes(out), bytes(err), chan.recv_exit_status(), time.monotonic() - start, truncated)
        except socket.timeout:
            raise ProbeTimeout(f"no answer in {timeout:g}s") from None
        except (paramiko.SSHException, OSError, EOFError) as e:
            if not t.is_active():
                raise _Broken(_words(e)) from e
            raise TransportError(f"exec failed: {_words(e)}") from e
        finally:
            _close_quietly(chan)


class ChannelStream:
    """A running command's stdin/stdout over one SSH channel (see SshTransport.open_stream)."""

    def __init__(self, chan: paramiko.Channel) -> None:
        self.chan = chan

    def write(self, data: bytes) -> None:
        self.chan.sendall(data)

    def read(self, n: int) -> bytes:
        """Blocks until data or the end (b""): the reader thread's call."""
        while True:
            try:
                data = self.chan.recv(n)
            except socket.timeout:
                continue
            if data or self.chan.closed or self.chan.eof_received:
                return data
            if not self.chan.get_transport() or not self.chan.get_transport().is_active():
                return b""

    def fileno(self) -> int:
        """A descriptor that is readable while the channel holds data or has ended (paramiko's pipe)."""
        return self.chan.fileno()

    def read_now(self, n: int) -> bytes | None:
        """What the channel holds now (never blocks); b"" at the end; None when nothing is here yet."""
        if self.chan.recv_ready():
            return self.chan.recv(n)
        transport = self.chan.get_transport()
        if self.chan.closed or self.chan.eof_received or transport is None or not transport.is_active():
            return b""
        return None

    def lost(self) -> str | None:
        """Why the connection under this stream ended when the kernel gave up on a node that answers
        nothing (connect.watch_silence); None while it is up, or when it ended any other way. paramiko
        records the error before it closes the channels, so it is known when the stream ends."""
        error = getattr(self.chan.get_transport(), "saved_exception", None)
        return SILENT_WORDS if isinstance(error, NodeSilent) else None

    def pending(self) -> bool:
        """Bytes for this session already here: buffered in the channel, or unread on the socket."""
        if self.chan.recv_ready():
            return True
        transport = self.chan.get_transport()
        return transport is not None and bool(select.select([transport.sock], [], [], 0)[0])

    def close(self) -> None:
        _close_quietly(self.chan)


class _Broken(Exception):
    """The SSH connection itself failed (not the command)."""


class _Silent(Exception):
    """The connection is up as far as we know, but the server did not answer in time."""


class _Dropped(Unreachable):
    """The server closed the TCP connection before the SSH handshake finished."""


def _drain(chan: paramiko.Channel, deadline: float) -> tuple[bytearray, bytearray, bool]:
    out, err = bytearray(), bytearray()
    while True:
        progressed = False
        while chan.recv_ready():
            data = chan.recv(65536)
            if len(out) < MAX_OUTPUT:
                out += data
            progressed = True
        while chan.recv_stderr_ready():
            data = chan.recv_stderr(65536)
            if len(err) < 65536:
                err += data
            progressed = True
        if len(out) >= MAX_OUTPUT:
            return out[:MAX_OUTPUT], err, True
        if (chan.exit_status_ready() and (chan.eof_received or chan.closed) and not chan.recv_ready()
                and not chan.recv_stderr_ready()):
            return out, err, False
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise socket.timeout()
        if not progressed:
            select.select([chan], [], [], min(remaining, 0.2))


def _close_quietly(chan: paramiko.Channel) -> None:
    """Close a channel whose connection may already be gone: the command's outcome is known by now, and a
    failure to say goodbye must not replace it."""
    try:
        chan.close()
    except (paramiko.SSHException, OSError, EOFError):
        pass


def _words(e: BaseException) -> str:
    text = str(e).strip() or type(e).__name__
    if "Error reading SSH protocol banner" in text:
        return "no SSH banner (sshd stalled)"
    return text.splitlines()[0][:200]
