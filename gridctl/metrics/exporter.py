"""Prometheus exposition: the store's families at every scrape, the loop's own histograms, the
/metrics server and the textfile.

Called by cli/metrics.py (`gridctl metrics`, and `--metrics-addr` of `reconcile --loop` and `watch`).
prometheus_client is imported here, so only when metrics are asked for (`gridctl --help` never
pays for it). Every exposition goes through prometheus_client; nothing is hand-formatted.
"""

from __future__ import annotations

import errno
import socket
import sqlite3
import sys
import threading
import time
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest, start_http_server, \
    write_to_textfile
from prometheus_client.core import GaugeMetricFamily

from ..errors import ConfigError, GridctlError
from .families import families
from .snapshot import read_snapshot

PASS_BUCKETS_S = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0)
PROBE_BUCKETS_S = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 15.0, 30.0, 60.0)


class StoreCollector:
    """Reads the store at each collect (one read transaction) and yields families.families. One
    connection for the process, opened once the store exists; scrapes take turns on it.
    strict: a store that cannot be read raises (`gridctl metrics`); otherwise (a server) the scrape
    carries `gridctl_store_readable 0` and the reason goes to stderr once, never a traceback."""

    def __init__(self, db_path: Path, *, strict: bool = True):
        self.db_path = Path(db_path)
        self.strict = strict
        self._conn: sqlite3.Connection | None = None
        self._lock = threading.Lock()
        self._said: str | None = None

    def collect(self):
        readable = "gridctl_store_readable", "1 when this scrape could read the state store."
        try:
            snap = self._read()
        except GridctlError as e:
            if self.strict:
                raise
            if str(e) != self._said:
                self._said = str(e)
                print(f"warning: metrics: {e}", file=sys.stderr, flush=True)
            yield GaugeMetricFamily(*readable, value=0.0)
            return
        if snap is not None:        # None: no store yet (before the loop's first pass)
            yield from families(snap)
            yield GaugeMetricFamily(*readable, value=1.0)

    def _read(self):
        with self._lock:
            if self._conn is None:
                if not self.db_path.exists():
                    return None
                from ..store import connect
                self._conn = connect(self.db_path, create=False)
            try:
                return read_snapshot(self._conn, time.time())
            except sqlite3.DatabaseError as e:
                from ..store.db import damaged
                raise damaged(e) from None

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None


class PassMetrics:
    """What a running loop observes pass by pass; fed by Loop's on_pass callback."""

    def __init__(self, registry: CollectorRegistry):
        self.pass_s = Histogram("gridctl_pass_duration_seconds", "Wall time of each reconcile pass this process ran.",
                                buckets=PASS_BUCKETS_S, registry=registry)
        self.probe_s = Histogram("gridctl_probe_duration_seconds", "Wall time of each node's probe in this process's "
                                 "passes (an unreachable node: until its connect failed).", ["node"],
                                 buckets=PROBE_BUCKETS_S, registry=registry)
        self.passes = Counter("gridctl_passes", "Pass slots of this process's loop, by what happened: ran, busy "
                              "(another process held the pass lock), skipped (the store stayed locked).",
                              ["result"], registry=registry)
        for result in ("ran", "busy", "skipped"):
            self.passes.labels(result)
        self._nodes: set[str] = set()

    def observe(self, report) -> None:
        """A PassReport, or the loop's Busy / Skipped notice."""
        from ..reconcile import PassReport
        from ..reconcile.loop import Busy
        if not isinstance(report, PassReport):
            self.passes.labels("busy" if isinstance(report, Busy) else "skipped").inc()
            return
        self.passes.labels("ran").inc()
        self.pass_s.observe(report.duration_s)
        for node, seconds in report.probe_s.items():
            self.probe_s.labels(node).observe(seconds)
        for gone in self._nodes - report.probe_s.keys():    # left the fleet: its series go too
            self.probe_s.remove(gone)
        self._nodes = set(report.probe_s)


def store_registry(db_path: Path, *, strict: bool = True) -> tuple[CollectorRegistry, StoreCollector]:
    registry = CollectorRegistry(auto_describe=False)
    collector = StoreCollector(db_path, strict=strict)
    registry.register(collector)
    return registry, collector


def exposition(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)


def write_textfile(path: Path, registry: CollectorRegistry) -> None:
    """Atomically, for node_exporter's textfile collector: a temp file beside `path`, then a rename."""
    try:
        write_to_textfile(str(path), registry)
    except OSError as e:
        raise ConfigError(f"--textfile {path}: {e.strerror or e}") from None


def parse_addr(text: str) -> tuple[str, int]:
    """`HOST:PORT` or `[IPv6]:PORT` -> (host, port). Raises ConfigError naming the flag."""
    host, sep, port = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"--metrics-addr {text}: expected HOST:PORT with a port from 1 to 65535 "
                          "(e.g. 127.0.0.1:9100)")
    return host, int(port)


class MetricsServer:
    """/metrics over HTTP on a daemon thread; listening once the constructor returns."""

    def __init__(self, text: str, registry: CollectorRegistry):
        host, port = parse_addr(text)
        try:
            self._server, self._thread = start_http_server(port, addr=host, registry=registry)
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                raise ConfigError(f"--metrics-addr {text}: address already in use") from None
            words = e.strerror or str(e)
            if isinstance(e, socket.gaierror):
                words = f"cannot resolve {host}: {words}"
            raise ConfigError(f"--metrics-addr {text}: cannot listen: {words}") from None
        self.port = self._server.server_port

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


class LoopExporter:
    """`--metrics-addr` of a running loop: the store's families and the loop's own histograms."""

    def __init__(self, addr: str, db_path: Path):
        self.registry, self._collector = store_registry(db_path, strict=False)
        self.passes = PassMetrics(self.registry)
        self._server = MetricsServer(addr, self.registry)
        self.port = self._server.port

    def observe(self, report) -> None:
        self.passes.observe(report)

    def close(self) -> None:
        self._server.close()
        self._collector.close()
