"""Brings benched replicas back: the builtin router's probe, every PROBE_EVERY_S seconds, of each
replica it benched. Called by builtin.Proxy (watch, forget, close) on its event loop."""

from __future__ import annotations

import asyncio
from typing import Callable

import aiohttp

from ..models import Endpoint

PROBE_EVERY_S = 0.5


class Prober:
    """A benched replica is back when a fresh TCP connection succeeds or, for a job with a readiness
    path, when that path answers 2xx/3xx. Idempotent: watching a watched replica changes nothing."""

    def __init__(self, connect_timeout_s: float, try_timeout_s: float, http_check: str | None,
                 back_in: Callable[[str], None]):
        self.connect_timeout_s, self.try_timeout_s, self.http_check = connect_timeout_s, try_timeout_s, http_check
        self.back_in = back_in
        self._tasks: dict[str, asyncio.Task] = {}

    def watch(self, e: Endpoint) -> None:
        if e.attempt not in self._tasks:
            self._tasks[e.attempt] = asyncio.create_task(self._until_back(e))

    def forget(self, attempt: str) -> None:
        task = self._tasks.pop(attempt, None)
        if task:
            task.cancel()

    async def close(self) -> None:
        for attempt in list(self._tasks):
            self.forget(attempt)

    async def _until_back(self, e: Endpoint) -> None:
        try:
            while True:
                await asyncio.sleep(PROBE_EVERY_S)
                if await self._answers(e):
                    self.back_in(e.attempt)
                    return
        finally:
            if self._tasks.get(e.attempt) is asyncio.current_task():
                del self._tasks[e.attempt]

    async def _answers(self, e: Endpoint) -> bool:
        if self.http_check:
            return await self._http_ok(e)
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection(e.host, e.port), self.connect_timeout_s)
        except (OSError, asyncio.TimeoutError):
            return False
        writer.close()
        return True

    async def _http_ok(self, e: Endpoint) -> bool:
        host = f"[{e.host}]" if ":" in e.host else e.host
        timeout = aiohttp.ClientTimeout(total=self.try_timeout_s, sock_connect=self.connect_timeout_s)
        try:
            async with aiohttp.ClientSession(timeout=timeout) as session:
                async with session.get(f"http://{host}:{e.port}{self.http_check}", allow_redirects=False) as r:
                    return r.status < 400
        except (aiohttp.ClientError, OSError, asyncio.TimeoutError):
            return False
