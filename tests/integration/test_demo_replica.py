"""The replica `gridctl demo` routes to (gridctl/demo_replica.py), run as a real process.

Guards against: a replacement replica that crashes (exit 1, then a restart after backoff) because
the copy it replaces still holds the port on a simulated node's shared address for a moment.
"""

from __future__ import annotations

import http.client
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from gridctl import demo_replica

REPLICA = Path(demo_replica.__file__)


def get(port: int, path: str) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", path)
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


def test_replica_waits_for_the_port_its_predecessor_still_holds_then_serves():
    predecessor = socket.socket()
    predecessor.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    predecessor.bind(("127.0.0.1", 0))
    predecessor.listen(8)
    port = predecessor.getsockname()[1]
    env = dict(os.environ, GRIDCTL_HOST="127.0.0.1", GRIDCTL_PORT=str(port), GRIDCTL_ATTEMPT="web.9")
    env.pop("HEALTH_FILE", None)
    proc = subprocess.Popen([sys.executable, str(REPLICA)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(1.0)             # the replica has started and found the port held
        predecessor.close()         # the old copy is gone
        deadline = time.monotonic() + 15
        answer = None
        while answer is None and proc.poll() is None and time.monotonic() < deadline:
            try:
                answer = get(port, "/work")
            except OSError:
                time.sleep(0.05)
        assert answer == (200, b"web.9\n"), (proc.poll(), proc.stderr.read() if proc.poll() is not None else "")
        assert get(port, "/health") == (200, b"ok\n")
    finally:
        predecessor.close()
        proc.kill()
        proc.wait()
