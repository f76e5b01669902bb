"""Throughput and client CPU: monica-async next to raw aiohttp, httpx and aiometer.

The fake server answers at once (no latency) in its own process; every contender
sends the same requests (distinct image URLs, the same JSON body and headers, the
answer read and parsed) at the same concurrency. Each contender runs right next to
the baseline (raw aiohttp workers), many short times, in a different order each
round; see :func:`compare` for how the figures are taken.

    python -m benchmarks --only throughput
"""

from __future__ import annotations

import asyncio
import functools
import gc
import json
import time
from collections.abc import Callable, Coroutine
from typing import Any

import aiohttp
import aiometer
import attrs
import httpx

from monica_async import MonicaClient, RateLimit, RateLimiter

from ._common import API_KEY, FakeServer, Json, Table, images, median

NAME = "throughput"

HEADERS = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"}
BASELINE = "aiohttp workers"
#: httpx is an order of magnitude slower here; it gets this share of the requests so
#: that a round does not take minutes (its rate is still measured over seconds).
HTTPX_SHARE = 0.025

#: A contender: (base_url, requests, concurrency) -> requests answered 200 with an image.
Contender = Callable[[str, int, int], Coroutine[Any, Any, int]]


def _body(url: str) -> bytes:
    return json.dumps({"image": url, "scale": 2}).encode()


async def _post(session: aiohttp.ClientSession, endpoint: str, url: str) -> bool:
    async with session.post(endpoint, data=_body(url), headers=HEADERS) as response:
        raw = await response.read()
    return response.status == 200 and "image" in json.loads(raw)


async def aiohttp_workers(base_url: str, count: int, concurrency: int) -> int:
    """*concurrency* tasks pull from one shared iterator: one task per worker."""
    endpoint = f"{base_url}/v1/image/tool/upscale"
    urls = images(base_url, count)
    ok = 0
    async with aiohttp.ClientSession() as session:

        async def worker() -> None:
            nonlocal ok
            for url in urls:
                # Not `ok += await ...`: that reads `ok` before the await and loses updates.
                done = await _post(session, endpoint, url)
                ok += done

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return ok


async def aiohttp_gather(base_url: str, count: int, concurrency: int) -> int:
    """One task per request, a semaphore for the concurrency."""
    endpoint = f"{base_url}/v1/image/tool/upscale"
    semaphore = asyncio.Semaphore(concurrency)
    async with aiohttp.ClientSession() as session:

        async def one(url: str) -> bool:
            async with semaphore:
                return await _post(session, endpoint, url)

        done = await asyncio.gather(*(one(url) for url in images(base_url, count)))
    return sum(done)


async def httpx_semaphore(base_url: str, count: int, concurrency: int) -> int:
    """httpx.AsyncClient, one task per request, a semaphore for the concurrency."""
    endpoint = f"{base_url}/v1/image/tool/upscale"
    semaphore = asyncio.Semaphore(concurrency)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=120, trust_env=False) as client:

        async def one(url: str) -> bool:
            async with semaphore:
                response = await client.post(endpoint, content=_body(url), headers=HEADERS)
            return response.status_code == 200 and "image" in json.loads(response.content)

        done = await asyncio.gather(*(one(url) for url in images(base_url, count)))
    return sum(done)


async def aiometer_aiohttp(base_url: str, count: int, concurrency: int) -> int:
    """aiometer.amap over aiohttp with ``max_at_once``."""
    endpoint = f"{base_url}/v1/image/tool/upscale"
    ok = 0
    async with aiohttp.ClientSession() as session:
        post = functools.partial(_post, session, endpoint)
        # aiometer wants a sequence, not a generator.
        urls = list(images(base_url, count))
        async with aiometer.amap(post, urls, max_at_once=concurrency) as results:
            async for done in results:
                ok += done
    return ok


def monica(make_limiter: Callable[[], RateLimiter | None]) -> Contender:
    """monica-async's ``upscale_many`` with the limiter *make_limiter* builds."""

    async def run(base_url: str, count: int, concurrency: int) -> int:
        ok = 0
        async with MonicaClient(
            API_KEY, base_url=base_url, max_concurrency=concurrency, rate_limit=make_limiter()
        ) as client:
            async for outcome in client.upscale_many(images(base_url, count), workers=concurrency):
                ok += outcome.ok
        return ok

    return run


CONTENDERS: dict[str, Contender] = {
    BASELINE: aiohttp_workers,
    "aiohttp gather+semaphore": aiohttp_gather,
    "aiometer.amap (aiohttp)": aiometer_aiohttp,
    "httpx + semaphore": httpx_semaphore,
    "monica-async (default limiter)": monica(lambda: None),
    "monica-async RateLimit(10**6)": monica(lambda: RateLimit(10**6)),
}


@attrs.frozen
class Sample:
    """One measured run of one contender."""

    requests: int
    ok: int
    wall: float
    cpu: float

    @property
    def rate(self) -> float:
        """Requests per second."""
        return self.requests / self.wall

    @property
    def cpu_per_1k(self) -> float:
        """Client CPU seconds per 1,000 requests."""
        return 1000 * self.cpu / self.requests


def measure(contender: Contender, base_url: str, count: int, concurrency: int) -> Sample:
    """Run *contender* once in a fresh event loop; time it (wall and this process's CPU)."""

    async def timed() -> Sample:
        wall, cpu = time.perf_counter(), time.process_time()
        ok = await contender(base_url, count, concurrency)
        return Sample(count, ok, time.perf_counter() - wall, time.process_time() - cpu)

    gc.collect()
    return asyncio.run(timed())


def compare(
    server: FakeServer,
    *,
    count: int,
    concurrencies: tuple[int, ...],
    rounds: int,
    contenders: dict[str, Contender] = CONTENDERS,
) -> Json:
    """Run every contender *rounds* times at each concurrency, each run paired with one of
    the baseline; best and median figures, and ratios to the baseline.

    The machine's speed drifts by tens of percent over seconds, and drift only ever
    slows a run down. Each contender's run sits next to a baseline run (before it in
    one round, after it in the next); the headline ratio compares the contender's best
    run with the best of its partner baseline runs (as ``timeit`` takes the least
    time), and the median of the pairs' ratios is shown beside it.
    """
    others = [name for name in contenders if name != BASELINE]
    samples: dict[int, dict[str, list[Sample]]] = {
        c: {name: [] for name in contenders} for c in concurrencies
    }
    # The baseline runs paired with each contender: its best is compared with theirs,
    # so that both bests are taken over the same number of runs.
    partners: dict[int, dict[str, list[Sample]]] = {
        c: {name: [] for name in others} for c in concurrencies
    }

    def one(name: str, n: int, concurrency: int) -> Sample:
        server.reset()
        sample = measure(contenders[name], server.base_url, n, concurrency)
        accepted = server.stats().accepted
        if sample.ok != n or accepted != n:
            raise RuntimeError(f"{name}: {sample.ok} ok, server accepted {accepted} of {n}")
        return sample

    for round_ in range(rounds):
        for concurrency in concurrencies:
            # Rotate the order so that no contender always runs first (cold) or last.
            shift = round_ % len(others)
            for i, name in enumerate(others[shift:] + others[:shift]):
                n = max(2 * concurrency, int(count * HTTPX_SHARE)) if "httpx" in name else count
                pair = [BASELINE, name] if (round_ + i) % 2 == 0 else [name, BASELINE]
                got = {who: one(who, n, concurrency) for who in pair}
                samples[concurrency][name].append(got[name])
                if n == count:
                    samples[concurrency][BASELINE].append(got[BASELINE])
                partners[concurrency][name].append(got[BASELINE])
    result: Json = {"requests": count, "rounds": rounds, "by_concurrency": {}}
    for concurrency in concurrencies:
        rows = {}
        for name in contenders:
            mine = samples[concurrency][name]
            base = partners[concurrency].get(name, mine)
            best = max(s.rate for s in mine)
            least_cpu = min(s.cpu_per_1k for s in mine)
            pairs = [s.rate / b.rate for s, b in zip(mine, base, strict=True)]
            rows[name] = {
                "requests": mine[0].requests,
                "rate": median([s.rate for s in mine]),
                "best_rate": best,
                "ratio": best / max(b.rate for b in base),
                "pair_ratio": median(pairs),
                "cpu_per_1k": median([s.cpu_per_1k for s in mine]),
                "least_cpu_per_1k": least_cpu,
                "cpu_ratio": min(b.cpu_per_1k for b in base) / least_cpu,
                "pair_ratios": [round(r, 3) for r in pairs],
                "rates": [round(s.rate, 1) for s in mine],
            }
        result["by_concurrency"][str(concurrency)] = rows
    return result


def run(quick: bool) -> Json:
    """The throughput benchmark: zero latency, concurrency 16 and 64."""
    count = 3_000 if quick else 4_000
    rounds = 1 if quick else 12
    with FakeServer() as server:
        pinning = server.pin()
        try:
            result = compare(server, count=count, concurrencies=(16, 64), rounds=rounds)
        finally:
            server.unpin()
    result["pinning"] = pinning
    return result


def table(result: Json) -> str:
    """Render :func:`run`'s result."""
    out = Table(
        f"Throughput, zero server latency ({result['requests']:,} requests a run, "
        f"{result['rounds']} round(s))",
        [
            "contender",
            "conc",
            "requests",
            "best req/s",
            "ratio",
            "pair ratio",
            "least CPU ms/1k",
            "CPU ratio",
        ],
    )
    for concurrency, rows in result["by_concurrency"].items():
        for name, row in rows.items():
            out.add(
                name,
                int(concurrency),
                row["requests"],
                row["best_rate"],
                row["ratio"],
                row["pair_ratio"],
                1000 * row["least_cpu_per_1k"],
                row["cpu_ratio"],
            )
    out.note(
        f"ratio: best run's rate over the best '{BASELINE}' run's (target for "
        "monica-async: >= 0.75). pair ratio: median over the rounds of a run's rate over "
        "the baseline run made right before or after it. CPU: the client process's CPU "
        "time per 1,000 requests in its least costly run; CPU ratio: the baseline's over "
        "the contender's. "
        f"Processes: {result.get('pinning', 'not pinned')}."
    )
    return out.render()
