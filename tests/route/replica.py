"""A service replica for the routing tests: a real aiohttp server started as its own process.

`python replica.py HOST PORT NAME`. /health answers 200; /work answers NAME and 1 KiB (counted);
/stream writes n chunks, stopping halfway until /open is called on the replica directly (so a router
that buffered would deadlock the test instead of passing it); /count says how many requests it served.
"""

from __future__ import annotations

import asyncio
import sys

from aiohttp import web

served = 0
gates: dict[str, asyncio.Event] = {}


async def health(request: web.Request) -> web.Response:
    return web.Response(text="ok")


async def work(request: web.Request) -> web.Response:
    global served
    served += 1
    body = await request.read()
    size = int(request.query.get("size", "1024"))
    return web.Response(text=f"{NAME} {len(body)}\n" + "x" * max(0, size - len(NAME) - 10))


async def count(request: web.Request) -> web.Response:
    return web.Response(text=str(served))


async def stream(request: web.Request) -> web.StreamResponse:
    global served
    served += 1
    n = int(request.query.get("n", "1000"))
    gate = gates.setdefault(request.query.get("gate", "-"), asyncio.Event())
    resp = web.StreamResponse()
    resp.content_type = "text/event-stream"
    await resp.prepare(request)
    for i in range(n):
        if i == n // 2:
            await gate.wait()
        await resp.write(f"data: {i}\n\n".encode())
    await resp.write_eof()
    return resp


async def open_gate(request: web.Request) -> web.Response:
    gates.setdefault(request.query["gate"], asyncio.Event()).set()
    return web.Response(text="open")


if __name__ == "__main__":
    HOST, PORT, NAME = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    app = web.Application()
    app.add_routes([web.get("/health", health), web.route("*", "/work", work), web.get("/count", count),
                    web.get("/stream", stream), web.get("/open", open_gate)])
    web.run_app(app, host=HOST, port=PORT, print=None, access_log=None)
