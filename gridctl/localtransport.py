"""Run a command for a simulated (`provider: local`) node as a local subprocess, with the same
contract as transport.SshTransport (deadlines, typed errors). Called by reconcile/observe.py.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import time
from pathlib import Path

from .connect import SILENT_WORDS
from .errors import ProbeTimeout, Unreachable
from .models import Target
from .transport import MAX_OUTPUT, RunResult


class LocalTransport:
    """Runs commands as local subprocesses for `provider: local` simulated nodes."""

    def needs_socket(self, target: Target) -> bool:
        """See SshTransport.needs_socket: a simulated node is a subprocess, never a socket."""
        return False

    def run(self, target: Target, command: str, stdin: bytes, timeout: float, sock=None) -> RunResult:
        assert target.local_dir is not None
        if (target.local_dir / "down").exists():
            raise Unreachable("simulated node is down (connection timed out)")
        start = time.monotonic()
        env = {**os.environ, **dict(target.local_env)}
        proc = subprocess.Popen(["sh", "-c", command], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, env=env, start_new_session=True)
        try:
            out, err = proc.communicate(stdin, timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            raise ProbeTimeout(f"no answer in {timeout:g}s") from None
        return RunResult(out[:MAX_OUTPUT], err[:65536], proc.returncode, time.monotonic() - start,
                         len(out) > MAX_OUTPUT)

    def stream(self, target: Target, command: str, out, timeout: float | None) -> int | None:
        """Run command, copying its stdout to `out` as it comes; returns the exit code."""
        assert target.local_dir is not None
        if (target.local_dir / "down").exists():
            raise Unreachable("simulated node is down (connection timed out)")
        env = {**os.environ, **dict(target.local_env)}
        proc = subprocess.Popen(["sh", "-c", command], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env,
                                start_new_session=True)
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            while True:
                chunk = proc.stdout.read1(65536)
                if not chunk:
                    break
                out.write(chunk)
                out.flush()
                if deadline is not None and time.monotonic() > deadline:
                    raise ProbeTimeout(f"no end in {timeout:g}s")
        finally:
            if proc.poll() is None:
                _kill_group(proc)
        return proc.wait()

    def open_stream(self, target: Target, command: str, sock=None, silent_s: int | None = None) -> "ProcessStream":
        """See SshTransport.open_stream: the command as a local subprocess of the simulated node."""
        assert target.local_dir is not None
        if (target.local_dir / "down").exists():
            raise Unreachable("simulated node is down (connection timed out)")
        env = {**os.environ, **dict(target.local_env)}
        proc = subprocess.Popen(["sh", "-c", command], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, env=env, start_new_session=True)
        return ProcessStream(proc, target.local_dir / "down", silent_s)

    def forget(self, target: Target) -> None:
        pass

    def close(self) -> None:
        pass


class ProcessStream:
    """A subprocess's stdin/stdout as the byte stream an agent session reads (see ChannelStream)."""

    def __init__(self, proc: subprocess.Popen, down: Path, silent_s: int | None = None) -> None:
        self.proc = proc
        self.down = down        # while this file exists the simulated node is dark: nothing passes
        self.silent_s = silent_s    # like a TCP connection the kernel watches: dark this long, it ends

    def write(self, data: bytes) -> None:
        if self.down.exists():
            return
        self.proc.stdin.write(data)
        self.proc.stdin.flush()

    def read(self, n: int) -> bytes:
        while True:
            if self.silent_s and not select.select([self.proc.stdout], [], [], 0.5)[0]:
                if self._dark_for() > self.silent_s:
                    self.proc.stdout.close()
                    return b""
                continue
            data = self.proc.stdout.read1(n)
            if not data:
                self.proc.stdout.close()
                return data
            if self._dark_for() == 0:
                return data

    def _dark_for(self) -> float:
        """How long the simulated node has been dark (0 while it is up): since its `down` file was written."""
        try:
            since = self.down.stat().st_mtime
        except FileNotFoundError:
            return 0.0
        return max(0.0, time.time() - since)

    def lost(self) -> str | None:
        """See ChannelStream.lost: the simulated connection ended because the node stayed dark."""
        if self.silent_s and self._dark_for() > self.silent_s:
            return f"{SILENT_WORDS} (simulated node down)"
        return None

    def pending(self) -> bool:
        return not self.down.exists() and bool(select.select([self.proc.stdout], [], [], 0)[0])

    def close(self) -> None:
        # kill first: a writer blocked on a node that reads nothing holds stdin's lock until then, and
        # the reader's pipe ends with the group (the reader closes stdout when it sees the end)
        _kill_group(self.proc)
        try:
            self.proc.stdin.close()
        except (OSError, ValueError):
            pass


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()
