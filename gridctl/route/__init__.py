"""The data plane of a service job: `gridctl route` (cli/route.py) sends requests to ready replicas.

Two routers keep one contract. A router runs in the foreground until SIGINT or SIGTERM and then
returns (0): it stops listening, lets the requests in flight finish within a few seconds, and stops
whatever it started (HAProxy by PID). It follows the store's ready set (readyset.py) within about
a second, sends each request to a replica that is ready, and never to one that is not. A request
that failed before any response byte is tried again on another ready replica, never the one that
failed, and that replica is benched at once until it answers again. With no replica ready it
answers 503 `no ready replica of job JOB`. Each response says which attempt served it in the
`X-Gridctl-Replica` header. It logs `benched ATTEMPT (HOST:PORT): why` and `back in ATTEMPT` to
stderr.

- builtin.py: an asyncio reverse proxy on aiohttp (the default; pip-only).
- haproxy.py: writes an HAProxy configuration, starts `haproxy`, keeps its slots in step through
  the Runtime API.
"""

from __future__ import annotations

import re
import socket
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError

NO_READY = "no ready replica of job {job}\n"     # the 503 body, the same for both routers
REPLICA_HEADER = "X-Gridctl-Replica"
POLL_S = 0.5                                      # how often the ready set is read from the store


@dataclass(frozen=True)
class Settings:
    """What a router needs, checked by the CLI (route.settings)."""

    job: str
    db_path: Path
    host: str
    port: int
    connect_timeout_s: float = 1.0
    try_timeout_s: float = 2.0
    http_check: str | None = None     # the job's readiness path, when it declares `readiness.http`


def service_readiness(db_path: Path, job: str) -> str | None:
    """The readiness path of service `job` from its stored spec, or None (TCP checks). Called by the
    CLI before a router starts. Raises ConfigError for a job that does not exist or is no service."""
    from ..store import connect, queries
    conn = connect(db_path, create=False)
    try:
        record = queries.get_job(conn, job)
    finally:
        conn.close()
    if record is None:
        raise ConfigError(f"no job named {job} (gridctl jobs lists them)")
    if record.job_class != "service":
        raise ConfigError(f"job {job} is a {record.job_class} job: only service jobs take requests")
    readiness = record.spec.get("readiness")
    path = readiness.get("http") if isinstance(readiness, dict) else None
    if path is None:
        return None
    if not isinstance(path, str) or not _URL_PATH.match(path):
        # it goes into HAProxy's configuration and request lines: no spaces, quotes or line breaks
        raise ConfigError(f"job {job}: readiness.http {path!r} is not a URL path like /health")
    return path


_URL_PATH = re.compile(r"/[A-Za-z0-9._~!$&'()*+,;=:@%/?-]*\Z")


def parse_listen(text: str) -> tuple[str, int]:
    """`HOST:PORT` or `[V6]:PORT` -> (host, port). Raises ConfigError naming --listen."""
    host, sep, port = text.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"--listen {text}: expected HOST:PORT with a port from 1 to 65535, e.g. 127.0.0.1:8080")
    return host, int(port)


def check_free(host: str, port: int) -> None:
    """Fail early, in one line, when --listen cannot be bound (in use, no such address)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise ConfigError(f"--listen {host}:{port}: {e.strerror.lower()}") from None
    family, _, _, _, address = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(address)
        except OSError as e:
            raise ConfigError(f"--listen {host}:{port}: {(e.strerror or str(e)).lower()}") from None
