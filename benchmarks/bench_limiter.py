"""Rate-limit accuracy, as the server counts it: monica-async's RateLimit next to aiolimiter.

Every limiter is set to 100 requests per second; 64 workers send the same requests
through it. The fake server records when each request arrived, and the figures come
from those records: the most requests in any sliding 1 s window (a server enforcing
100/s refuses everything above 100), the requests in the first second, and the
steady rate after it.

    python -m benchmarks --only limiter
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable, Coroutine
from typing import Any

import aiohttp
import aiolimiter
import aiometer

from monica_async import MonicaClient, RateLimit

from ._common import (
    API_KEY,
    FakeServer,
    Json,
    Table,
    first_window,
    images,
    side_by_side,
    sliding_counts,
    steady_rate,
    worst_window,
)
from .bench_throughput import _post

NAME = "limiter"

RATE = 100
PER = 1.0
CONCURRENCY = 64

#: A limited run: (base_url, requests) -> requests answered 200.
Limited = Callable[[str, int], Coroutine[Any, Any, int]]


def monica(limit: RateLimit) -> Limited:
    """monica-async's ``upscale_many`` with *limit*."""

    async def run(base_url: str, count: int) -> int:
        ok = 0
        async with MonicaClient(
            API_KEY, base_url=base_url, max_concurrency=CONCURRENCY, rate_limit=limit
        ) as client:
            async for outcome in client.upscale_many(images(base_url, count), workers=CONCURRENCY):
                ok += outcome.ok
        return ok

    return run


async def aiolimiter_workers(base_url: str, count: int) -> int:
    """Raw aiohttp workers, each request behind ``async with AsyncLimiter(100, 1)``."""
    endpoint = f"{base_url}/v1/image/tool/upscale"
    limiter = aiolimiter.AsyncLimiter(RATE, PER)
    urls = images(base_url, count)
    ok = 0
    async with aiohttp.ClientSession() as session:

        async def worker() -> None:
            nonlocal ok
            for url in urls:
                async with limiter:
                    done = await _post(session, endpoint, url)
                ok += done

        await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    return ok


async def aiometer_rate(base_url: str, count: int) -> int:
    """aiometer.amap over aiohttp with ``max_per_second=100``."""
    endpoint = f"{base_url}/v1/image/tool/upscale"
    ok = 0
    async with aiohttp.ClientSession() as session:
        post = functools.partial(_post, session, endpoint)
        urls = list(images(base_url, count))
        async with aiometer.amap(
            post, urls, max_at_once=CONCURRENCY, max_per_second=RATE / PER
        ) as results:
            async for done in results:
                ok += done
    return ok


LIMITERS: dict[str, Callable[[], Limited]] = {
    "monica-async RateLimit(100, per=1.0)": lambda: monica(RateLimit(RATE, per=PER)),
    "aiolimiter AsyncLimiter(100, 1)": lambda: aiolimiter_workers,
    "monica-async RateLimit(100, per=1.0, burst=100)": lambda: monica(
        RateLimit(RATE, per=PER, burst=RATE)
    ),
    "aiometer max_per_second=100": lambda: aiometer_rate,
}


def measure(name: str, *, count: int) -> Json:
    """Run limiter *name* against a fresh server; the figures from its arrival times."""
    with FakeServer() as server:
        began = time.perf_counter()
        ok = asyncio.run(LIMITERS[name]()(server.base_url, count))
        wall = time.perf_counter() - began
        times = server.stats().accepted_times
    if ok != count or len(times) != count:
        raise RuntimeError(f"{name}: {ok} ok, server accepted {len(times)} of {count}")
    return {
        "worst_window": worst_window(times, PER),
        "first_second": first_window(times, PER),
        "steady_rate": steady_rate(times, PER),
        "wall": wall,
        "series": sliding_counts(times, PER),
    }


def run(quick: bool) -> Json:
    """Each limiter once, 1,000 requests (300 quick, side by side), concurrency 64."""
    count = 300 if quick else 1_000
    names = list(LIMITERS)
    measure_count = functools.partial(measure, count=count)
    measured = side_by_side(measure_count, names) if quick else [measure_count(n) for n in names]
    return {
        "requests": count,
        "rate": RATE,
        "per": PER,
        "concurrency": CONCURRENCY,
        "side_by_side": quick,
        "rows": dict(zip(names, measured, strict=True)),
    }


def table(result: Json) -> str:
    """Render :func:`run`'s result."""
    out = Table(
        f"Rate-limit accuracy at {result['rate']}/{result['per']:g} s "
        f"({result['requests']:,} requests, concurrency {result['concurrency']}; "
        "server-side arrival times)",
        ["limiter", "worst 1 s window", "first second", "steady req/s", "wall s"],
    )
    for name, row in result["rows"].items():
        out.add(name, row["worst_window"], row["first_second"], row["steady_rate"], row["wall"])
    out.note(
        f"A server enforcing {result['rate']} per sliding {result['per']:g} s would refuse "
        "every request above that in the worst window."
    )
    if result["side_by_side"]:
        out.note("Quick mode runs the limiters side by side: busier CPUs, more jitter.")
    return out.render()
