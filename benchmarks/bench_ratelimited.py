"""The 429 behaviour: what a client does when the server's limit is below its pace.

The fake server allows 20 requests per sliding second (``--rate-limit 20/1``, which
answers 429 with ``Retry-After`` in whole seconds); 16 workers with no client-side
limit send the same requests. Counted by the server: 429s per accepted request,
and the accepted rate.

(a) monica-async's default client (an AdaptiveRateLimit with no limit until a
    429, then a shared pause and paced traffic);
(b) monica-async with ``RateLimit.adaptive(start=5)``;
(c) raw aiohttp workers that honour ``Retry-After`` each for itself (sleep, retry);
(d) raw aiohttp workers that ignore it and retry at once.

    python -m benchmarks --only 429
"""

from __future__ import annotations

import asyncio
import functools
import json
import time
from collections import Counter
from collections.abc import Callable, Coroutine
from typing import Any

import aiohttp

from monica_async import MonicaClient, RateLimit, RateLimiter

from ._common import API_KEY, FakeServer, Json, Table, images, side_by_side, worst_window
from .bench_throughput import HEADERS, _body

NAME = "429"

SERVER_LIMIT = (20, 1.0)
WORKERS = 16

#: A contender: (base_url, requests) -> final errors by name (empty when all succeeded).
Contender = Callable[[str, int], Coroutine[Any, Any, Counter[str]]]


def monica(make_limiter: Callable[[], RateLimiter | None]) -> Contender:
    """monica-async's ``upscale_many`` with the limiter *make_limiter* builds."""

    async def run(base_url: str, count: int) -> Counter[str]:
        errors: Counter[str] = Counter()
        async with MonicaClient(
            API_KEY, base_url=base_url, max_concurrency=WORKERS, rate_limit=make_limiter()
        ) as client:
            async for outcome in client.upscale_many(images(base_url, count), workers=WORKERS):
                if not outcome.ok:
                    errors[type(outcome.error).__name__] += 1
        return errors

    return run


def raw(honour_retry_after: bool) -> Contender:
    """Raw aiohttp workers that retry every 429 until accepted, sleeping or not."""

    async def run(base_url: str, count: int) -> Counter[str]:
        endpoint = f"{base_url}/v1/image/tool/upscale"
        urls = images(base_url, count)
        async with aiohttp.ClientSession() as session:

            async def worker() -> None:
                for url in urls:
                    while True:
                        async with session.post(endpoint, data=_body(url), headers=HEADERS) as r:
                            raw = await r.read()
                            retry_after = r.headers.get("Retry-After")
                        if r.status == 200:
                            json.loads(raw)
                            break
                        if r.status != 429:
                            raise RuntimeError(f"unexpected HTTP {r.status}")
                        if honour_retry_after:
                            await asyncio.sleep(float(retry_after or 1))

            await asyncio.gather(*(worker() for _ in range(WORKERS)))
        return Counter()

    return run


CONTENDERS: dict[str, Callable[[], Contender]] = {
    "(a) monica-async default": lambda: monica(lambda: None),
    "(b) monica-async RateLimit.adaptive(start=5)": lambda: monica(
        lambda: RateLimit.adaptive(start=5)
    ),
    "(c) aiohttp, Retry-After per request": lambda: raw(True),
    "(d) aiohttp, immediate retry": lambda: raw(False),
}


def measure(name: str, *, count: int) -> Json:
    """Run contender *name* against a fresh rate-limited server; the server's counts."""
    requests, per = SERVER_LIMIT
    with FakeServer("--rate-limit", f"{requests}/{per:g}") as server:
        began = time.perf_counter()
        errors = asyncio.run(CONTENDERS[name]()(server.base_url, count))
        wall = time.perf_counter() - began
        stats = server.stats()
    accepted = stats.accepted
    refused = stats.by_status.get(429, 0)
    return {
        "accepted": accepted,
        "rate_limited": refused,
        "ratio": refused / accepted if accepted else None,
        "wall": wall,
        "accepted_rate": accepted / wall,
        "worst_window": worst_window(stats.accepted_times, per),
        "errors": dict(errors),
    }


def run(quick: bool) -> Json:
    """Every contender, 400 requests (120 quick); quick runs them side by side."""
    count = 120 if quick else 400
    names = list(CONTENDERS)
    if quick:
        # Each contender has a server of its own, so running them at once changes only
        # how busy the CPUs are, and the figures are about the server's clock.
        measured = side_by_side(functools.partial(measure, count=count), names)
        rows = dict(zip(names, measured, strict=True))
    else:
        rows = {name: measure(name, count=count) for name in names}
    return {
        "requests": count,
        "workers": WORKERS,
        "server_limit": f"{SERVER_LIMIT[0]}/{SERVER_LIMIT[1]:g}s",
        "side_by_side": quick,
        "rows": rows,
    }


def table(result: Json) -> str:
    """Render :func:`run`'s result."""
    how = "run side by side" if result["side_by_side"] else "run one after another"
    out = Table(
        f"429s: server limit {result['server_limit']}, {result['workers']} workers, "
        f"{result['requests']:,} requests, no client-side limit ({how})",
        ["client", "429s/accepted", "429s", "wall s", "accepted/s", "worst window", "failed"],
    )
    for name, row in result["rows"].items():
        failed = ", ".join(f"{k} {v}" for k, v in row["errors"].items()) or "0"
        out.add(
            name,
            row["ratio"],
            row["rate_limited"],
            row["wall"],
            row["accepted_rate"],
            row["worst_window"],
            failed,
        )
    return out.render()
