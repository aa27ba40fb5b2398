"""Added latency of `gridctl route` (builtin and haproxy) over calling a replica directly.

Starts one real replica (tests/route/replica.py, 1 KiB answers), a store saying it is ready, and each
router as `gridctl route`; then, per target and rate, a paced closed loop of GETs (workers wait for
each answer; a worker that falls behind does not sleep), bounded by --seconds. Prints p50 / p99 and
the rate reached. Also times how long a router takes to follow a ready-set change (store write ->
first request served by the newly ready replica). Prints figures; asserts nothing.

    python benchmarks/serving_router.py                 # 100 and 1000 req/s, 5 s each, both routers
    python benchmarks/serving_router.py --quick         # 1 s each: checks the benchmark works
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "tests" / "route")]

from routesim import Replica, Router, ServingStore, get_once, wait_until  # noqa: E402


async def paced(url: str, rate: float, seconds: float, workers: int) -> tuple[list[float], int, float]:
    """-> (latencies in s, errors, achieved rate)."""
    latencies: list[float] = []
    errors = 0
    start = time.monotonic()
    end = start + seconds

    async def worker(session: aiohttp.ClientSession, k: int) -> None:
        nonlocal errors
        due = start + k / rate
        while due < end:
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            t0 = time.perf_counter()
            try:
                async with session.get(url) as r:
                    await r.read()
                    if r.status != 200:
                        errors += 1
                    else:
                        latencies.append(time.perf_counter() - t0)
            except (aiohttp.ClientError, asyncio.TimeoutError):
                errors += 1
            due += workers / rate

    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=10)) as session:
        await asyncio.gather(*(worker(session, k) for k in range(workers)))
    return latencies, errors, (len(latencies) + errors) / (time.monotonic() - start)


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] * 1000 if values else float("nan")


def follow_times(store: ServingStore, router: Router, a_id: str, b_id: str, repeat: int) -> list[float]:
    """Seconds from a store write that makes the other replica the only ready one to the first answer from it."""
    times = []
    current, other = a_id, b_id
    for _ in range(repeat):
        t0 = time.monotonic()
        store.set_ready(other, True)
        store.set_ready(current, False)
        wait_until("the switch", lambda: get_once(router.url + "/work").replica == other, timeout_s=10, every_s=0.01)
        times.append(time.monotonic() - t0)
        current, other = other, current
    return times


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--rates", default="100,1000")
    ap.add_argument("--vias", default="builtin,haproxy")
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    seconds = 1.0 if args.quick else args.seconds
    rates = [float(r) for r in args.rates.split(",")]
    with tempfile.TemporaryDirectory(prefix="route-bench-") as tmp:
        store = ServingStore(Path(tmp))
        a, b = Replica("127.0.41.1", "a"), Replica("127.0.41.2", "b")
        try:
            a_id = store.add(a, 0, ready=True)
            b_id = store.add(b, 1, ready=False)
            targets = [("direct", f"http://{a.host}:{a.port}/work?size=1024", None)]
            for via in args.vias.split(","):
                router = Router(store, via)
                wait_until(f"{via} to serve", lambda: get_once(router.url + "/work").status == 200)
                targets.append((via, router.url + "/work?size=1024", router))
            print(f"{'target':8} {'rate/s':>7} {'reached/s':>9} {'p50 ms':>7} {'p99 ms':>7} {'errors':>6}  "
                  f"(+p50 vs direct)")
            base: dict[float, float] = {}
            for rate in rates:
                for name, url, _ in targets:
                    workers = max(2, int(rate / 50))
                    lat, errors, reached = asyncio.run(paced(url, rate, seconds, workers))
                    p50 = pct(lat, 0.5)
                    base.setdefault(rate, p50)
                    extra = "" if name == "direct" else f"(+{p50 - base[rate]:.2f} ms)"
                    print(f"{name:8} {rate:7.0f} {reached:9.0f} {p50:7.2f} {pct(lat, 0.99):7.2f} {errors:6d}  {extra}",
                          flush=True)
            for name, _, router in targets[1:]:
                times = follow_times(store, router, a_id, b_id, 3 if args.quick else 8)
                store.set_ready(a_id, True)
                store.set_ready(b_id, False)
                print(f"{name}: follows a ready-set change in median {statistics.median(times):.2f} s, "
                      f"max {max(times):.2f} s ({len(times)} changes)")
                router.stop()
        finally:
            a.kill()
            b.kill()
            store.close()


if __name__ == "__main__":
    main()
