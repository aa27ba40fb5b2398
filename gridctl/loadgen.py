"""A paced closed-loop HTTP load: `gridctl demo` sends it through its router (demo_traffic.py); the
serving end-to-end tests and benchmarks/serving.py use it too.

`workers` connections each send one GET at a time, spaced so that together they aim at `rate`
requests per second; a worker whose answer came late sends its next request at once, never a
burst to catch up (closed loop: a slow router slows the load, it does not pile up). It runs on
its own thread and event loop until stop(), or until `budget_s`; every request is recorded with
its wall-clock start, latency, status (0 when no HTTP answer came) and X-Gridctl-Replica.
Only 127.0.0.0/8 URLs are accepted.
"""

from __future__ import annotations

import asyncio
import ipaddress
import threading
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

import aiohttp

REQUEST_LIMIT_S = 30.0          # one request that takes longer than this is recorded as failed


@dataclass(frozen=True)
class Sample:
    start: float                # time.time() when the request was sent
    latency: float              # seconds until the whole answer was read (or the failure)
    status: int                 # 0: no HTTP answer
    replica: str                # the X-Gridctl-Replica header
    error: str = ""

    @property
    def ok(self) -> bool:
        return self.status == 200


class Load:
    """Started by start(); stop() ends it and returns the samples (also in .samples)."""

    def __init__(self, url: str, *, rate: float = 100.0, workers: int = 8, budget_s: float = 600.0):
        host = urlsplit(url).hostname or ""
        if ipaddress.ip_address(host) not in ipaddress.ip_network("127.0.0.0/8"):
            raise ValueError(f"load generator: {url} is not on 127.0.0.0/8")
        self.url, self.rate, self.workers, self.budget_s = url, rate, workers, budget_s
        self.samples: list[Sample] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), name="loadgen", daemon=True)

    def start(self) -> "Load":
        self._thread.start()
        return self

    def stop(self) -> list[Sample]:
        self._stop.set()
        self._thread.join(REQUEST_LIMIT_S + 5)
        return self.samples

    def failed(self) -> list[Sample]:
        return [s for s in list(self.samples) if not s.ok]

    async def _main(self) -> None:
        deadline = time.monotonic() + self.budget_s
        timeout = aiohttp.ClientTimeout(total=REQUEST_LIMIT_S)
        async with aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=0)) as session:
            await asyncio.gather(*(self._worker(session, i, deadline) for i in range(self.workers)))

    async def _worker(self, session: aiohttp.ClientSession, i: int, deadline: float) -> None:
        every = self.workers / self.rate
        due = time.monotonic() + every * i / self.workers
        while not self._stop.is_set() and time.monotonic() < deadline:
            wait = due - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            due = max(due + every, time.monotonic())
            self.samples.append(await self._one(session))

    async def _one(self, session: aiohttp.ClientSession) -> Sample:
        start, t0 = time.time(), time.monotonic()
        try:
            async with session.get(self.url) as r:
                await r.read()
                return Sample(start, time.monotonic() - t0, r.status, r.headers.get("X-Gridctl-Replica", ""))
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as e:
            return Sample(start, time.monotonic() - t0, 0, "", f"{type(e).__name__}: {e}"[:200])


def percentile(values: list[float], p: float) -> float | None:
    """Nearest-rank percentile (p in 0..100) of values; None for none."""
    if not values:
        return None
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, int(-(-p * len(ordered) // 100)) - 1))
    return ordered[k]
