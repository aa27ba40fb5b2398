"""`gridctl route --via builtin`: an asyncio reverse proxy on aiohttp. Called by cli/route.py (run).

The contract is the package's (gridctl/route/__init__.py). How this one keeps it:
- a task reads the ready set every POLL_S seconds in a worker thread (readyset.ReadySet);
- each try takes a Lease from balance.Balancer and releases it in a finally, however the try ends;
- a try that fails before any response byte is retried on another replica when the request can be
  sent again: its body was buffered (up to BODY_BUFFER_BYTES), and either the request never left
  (refused, no connection within connect_timeout) or the method is idempotent (reset, empty answer,
  no first byte within try_timeout: a pooled keep-alive connection to a node that went dark swallows
  requests silently);
- every connection to a replica gives up once bytes it sent stay unacknowledged for connect_timeout
  (TCP_USER_TIMEOUT): a node gone dark swallows what is written on a kept-alive connection without
  a refusal, and a request that may not be sent again (a POST) would otherwise wait for the kernel's
  retransmissions (about 15 minutes); a slow replica still acknowledges at once, so it is not cut.
  (An idempotent request on such a connection is still bounded by try_timeout: aiohttp sends it once
  more on a fresh connection to the same replica, whose connect is dropped too);
- the replica that failed is benched at once and probed (prober.py) until it answers;
- responses are relayed chunk by chunk as they arrive (iter_any), never buffered.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import signal
import socket
import sys
from concurrent.futures import ThreadPoolExecutor

import aiohttp
from aiohttp import web

from . import NO_READY, POLL_S, REPLICA_HEADER, Settings
from .balance import Balancer, Lease
from .prober import Prober
from .readyset import ReadySet

IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})
BODY_BUFFER_BYTES = 1 << 20        # bodies up to this size are kept so a retry can send them again
MAX_TRIES = 4
STOP_GRACE_S = 5.0                 # how long requests in flight may finish after SIGTERM
# connection-scoped headers (RFC 9110 section 7.6.1) are not forwarded either way
HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "proxy-connection",
                        "te", "trailer", "transfer-encoding", "upgrade", "content-length"})


class TryFailed(Exception):
    """A try that produced no response byte. `resend`: the request may go to another replica."""

    def __init__(self, why: str, resend: bool):
        super().__init__(why)
        self.resend = resend


def run(settings: Settings) -> int:
    """Serve until SIGINT / SIGTERM; -> exit status 0."""
    return asyncio.run(_serve(settings))


async def _serve(s: Settings) -> int:
    proxy = Proxy(s)
    app = web.Application(client_max_size=0)
    app.router.add_route("*", "/{tail:.*}", proxy.handle)
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=STOP_GRACE_S)
    await runner.setup()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await proxy.start()
    try:
        await web.TCPSite(runner, s.host, s.port, backlog=1024).start()
        say(f"routing {s.host}:{s.port} to the ready replicas of {s.job} (builtin)")
        await stop.wait()
    finally:
        await runner.cleanup()
        await proxy.close()
    say("stopped")
    return 0


def say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


class Proxy:
    def __init__(self, s: Settings):
        self.s = s
        self.balancer = Balancer()
        self.readyset = ReadySet(s.db_path, s.job)
        self.session: aiohttp.ClientSession | None = None
        self.prober = Prober(s.connect_timeout_s, s.try_timeout_s, s.http_check, self._back_in)
        self._follow: asyncio.Task | None = None
        self._store_thread = ThreadPoolExecutor(1, thread_name_prefix="readyset")   # sqlite: one thread per connection

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=10, **_unacked_limit(self.s.connect_timeout_s))
        self.session = aiohttp.ClientSession(connector=connector, auto_decompress=False, cookie_jar=aiohttp.DummyCookieJar(),
                                             timeout=aiohttp.ClientTimeout(total=None, sock_connect=self.s.connect_timeout_s))
        await self._refresh()
        self._follow = asyncio.create_task(self._follow_store())

    async def close(self) -> None:
        if self._follow:
            self._follow.cancel()
        await self.prober.close()
        if self.session:
            await self.session.close()
        await asyncio.get_running_loop().run_in_executor(self._store_thread, self.readyset.close)
        self._store_thread.shutdown()

    async def _follow_store(self) -> None:
        while True:
            await asyncio.sleep(POLL_S)
            await self._refresh()

    async def _refresh(self) -> None:
        endpoints = await asyncio.get_running_loop().run_in_executor(self._store_thread, self.readyset.poll)
        if endpoints is None:
            return
        change = self.balancer.update(endpoints)
        for e in change.removed:
            self.prober.forget(e.attempt)
            say(f"left the ready set: {e.attempt} ({e.host}:{e.port})")
        for e in change.added:
            say(f"ready: {e.attempt} ({e.host}:{e.port})")

    def _back_in(self, attempt: str) -> None:
        if self.balancer.unbench(attempt):
            e = self.balancer.endpoint(attempt)
            say(f"back in {attempt} ({e.host}:{e.port})")

    def _bench(self, lease: Lease, why: str) -> None:
        e = lease.endpoint
        if self.balancer.bench(e.attempt):
            say(f"benched {e.attempt} ({e.host}:{e.port}): {why}")
            self.prober.watch(e)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """One client request: tries on up to MAX_TRIES replicas, each one not tried before."""
        body, replayable = await _read_body(request)
        tried: list[str] = []
        errors: list[str] = []
        while len(tried) < MAX_TRIES:
            lease = self.balancer.acquire(frozenset(tried))
            if lease is None:
                break
            tried.append(lease.endpoint.attempt)
            try:
                return await self._forward(request, lease, body)
            except TryFailed as e:
                self._bench(lease, str(e))
                errors.append(f"{lease.endpoint.attempt}: {e}")
                if not (e.resend and replayable):
                    break
        if not errors:
            text = NO_READY.format(job=self.s.job) if not len(self.balancer) else \
                f"no replica of job {self.s.job} answers just now ({len(self.balancer)} ready in the store, all benched)\n"
            return web.Response(status=503, text=text, headers={"Retry-After": "1"})
        return web.Response(status=502, text=f"every replica tried failed: {'; '.join(errors)}\n")

    async def _forward(self, request: web.Request, lease: Lease, body) -> web.StreamResponse:
        try:
            upstream = await self._open(request, lease, body)
            try:
                return await _relay(request, upstream, lease.endpoint.attempt)
            finally:
                upstream.release()
        finally:
            lease.release()

    async def _open(self, request: web.Request, lease: Lease, body) -> aiohttp.ClientResponse:
        """Send the request and wait for its response head. Raises TryFailed."""
        e = lease.endpoint
        idempotent = request.method in IDEMPOTENT
        sending = self.session.request(request.method, f"http://{_host(e.host)}:{e.port}{request.rel_url}",
                                       headers=_forwarded_headers(request), data=body, allow_redirects=False,
                                       skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding"))
        try:
            if not idempotent:
                return await sending
            if hasattr(asyncio, "timeout"):       # 3.11+: no extra task per request, unlike wait_for
                async with asyncio.timeout(self.s.try_timeout_s):
                    return await sending
            return await asyncio.wait_for(sending, self.s.try_timeout_s)
        except aiohttp.ClientConnectorError as err:
            why = os.strerror(err.errno).lower() if err.errno else str(err.os_error)
            raise TryFailed(f"cannot connect ({why})", True) from None
        except aiohttp.ServerTimeoutError:
            raise TryFailed(f"no connection within {self.s.connect_timeout_s:g}s", True) from None
        except asyncio.TimeoutError:
            raise TryFailed(f"no response within {self.s.try_timeout_s:g}s", idempotent) from None
        except (aiohttp.ClientError, OSError) as err:
            raise TryFailed(f"connection lost before a response ({type(err).__name__})", idempotent) from None


def _unacked_limit(seconds: float) -> dict:
    """TCPConnector arguments that make its sockets give up on unacknowledged data after `seconds`
    (Linux TCP_USER_TIMEOUT); none where aiohttp (< 3.12) or the platform cannot."""
    option = getattr(socket, "TCP_USER_TIMEOUT", None)
    if option is None or "socket_factory" not in inspect.signature(aiohttp.TCPConnector).parameters:
        return {}

    def factory(addr_info) -> socket.socket:
        family, kind, proto, _, _ = addr_info
        sock = socket.socket(family=family, type=kind, proto=proto)
        sock.setsockopt(socket.IPPROTO_TCP, option, max(1, round(seconds * 1000)))
        return sock

    return {"socket_factory": factory}


async def _read_body(request: web.Request):
    """-> (body to send, replayable). A body up to BODY_BUFFER_BYTES is read whole so a retry can
    resend it; a longer one is streamed through once (what was read, then the rest)."""
    if not request.body_exists:
        return None, True
    kept = bytearray()
    while True:
        chunk = await request.content.readany()
        if not chunk:
            return bytes(kept), True
        kept += chunk
        if len(kept) > BODY_BUFFER_BYTES:
            return _then_rest(bytes(kept), request.content), False


async def _then_rest(head: bytes, content):
    yield head
    async for chunk in content.iter_any():
        yield chunk


def _forwarded_headers(request: web.Request) -> dict:
    headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
    peer = request.remote or ""
    prior = request.headers.get("X-Forwarded-For")
    headers["X-Forwarded-For"] = f"{prior}, {peer}" if prior else peer
    headers.setdefault("X-Forwarded-Proto", request.scheme)
    return headers


async def _relay(request: web.Request, upstream: aiohttp.ClientResponse, attempt: str) -> web.StreamResponse:
    """Stream the replica's answer to the client as it comes. A replica that breaks off mid-answer
    cannot be retried (bytes went out): the client's connection is cut so it sees the truncation."""
    if upstream.content.is_eof() and request.method != "HEAD":
        # the whole answer came with its head: one write instead of head, body and end
        resp = web.Response(status=upstream.status, reason=upstream.reason, body=await upstream.content.read())
        _copy_headers(upstream, resp, keep_length=False)
        resp.headers[REPLICA_HEADER] = attempt
        return resp
    resp = web.StreamResponse(status=upstream.status, reason=upstream.reason)
    _copy_headers(upstream, resp, keep_length=True)
    resp.headers[REPLICA_HEADER] = attempt
    await resp.prepare(request)
    try:
        async for chunk in upstream.content.iter_any():
            await resp.write(chunk)
    except (aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError, aiohttp.ClientOSError, asyncio.TimeoutError):
        say(f"{attempt} broke off a response mid-way; cut the client's connection")
        if request.transport is not None:
            request.transport.close()
        return resp
    await resp.write_eof()
    return resp


def _copy_headers(upstream: aiohttp.ClientResponse, resp: web.StreamResponse, keep_length: bool) -> None:
    for k, v in upstream.headers.items():
        lower = k.lower()
        if lower not in HOP_BY_HOP or (keep_length and lower == "content-length"):
            resp.headers.add(k, v)


def _host(host: str) -> str:
    return f"[{host}]" if ":" in host else host
