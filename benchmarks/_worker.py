"""One client process of the combination scenarios (``benchmarks/_scenarios.py``).

Run as a script with one argument, a JSON object (see :func:`build_limiter` and
:func:`run`). It builds a MonicaClient as the scenario says, prints ``READY``, waits for
a line on stdin (so that every process starts together), runs one batch and prints one
JSON line: the outcome of each input, the automatic concurrency seen, the client's
counters and what the library logged (each record with its ``time.monotonic()``).

    python benchmarks/_worker.py '{"base_url": "http://127.0.0.1:8000", "images": 20}'
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import sys
import time
from collections.abc import Iterator
from typing import Any

import monica_async
from monica_async import AdaptiveRateLimit, MonicaClient, RateLimit, RateLimiter

API_KEY = "bench-key"


class _Records(logging.Handler):
    """Keeps what the library logs, each record with the ``time.monotonic()`` it came at."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.records: list[tuple[float, str, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append((time.monotonic(), record.levelname, record.getMessage()))


def build_limiter(spec: dict[str, Any]) -> RateLimiter | None:
    """The limiter a spec asks for: ``default`` (none given), ``ratelimit``,
    ``adaptive`` (started at ``start``), ``redis`` (shared on ``key``)."""
    kind = spec.get("limiter", "default")
    requests, per = spec.get("requests"), spec.get("per", 1.0)
    if kind == "default":
        return None
    burst = spec.get("burst")
    if kind == "ratelimit":
        return RateLimit(requests, per=per, burst=burst)
    if kind == "adaptive":
        return AdaptiveRateLimit(start=spec.get("start"))
    if kind == "redis":
        return monica_async.RedisRateLimit(
            spec["redis_url"], requests, per, burst=burst, key=spec["key"]
        )
    raise SystemExit(f"unknown limiter {kind!r}")


def urls(spec: dict[str, Any], began: float) -> Iterator[str]:
    """``images`` URLs, or as many as start within ``seconds`` of *began*."""
    images, seconds = spec.get("images"), spec.get("seconds")
    for i in itertools.count():
        if images is not None and i >= images:
            return
        if seconds is not None and time.monotonic() - began >= seconds:
            return
        yield f"{spec['base_url']}/images/{spec.get('name', 'w')}-{i}.png"


def client_options(spec: dict[str, Any], limiter: RateLimiter | None) -> dict[str, Any]:
    """MonicaClient's keyword arguments for the spec."""
    options: dict[str, Any] = {"base_url": spec["base_url"]}
    if limiter is not None:
        options["rate_limit"] = limiter
    if spec.get("concurrency") is not None:
        options["max_concurrency"] = spec["concurrency"]
    if spec.get("limits") is not None:
        limits = spec["limits"]
        options["limits"] = monica_async.Limits(
            rate=limits.get("rate"), in_flight=limits.get("in_flight")
        )
    return options


async def run(spec: dict[str, Any]) -> dict[str, Any]:
    """Wait for the go line, run the batch, return what the scenario judges."""
    records = _Records()
    logger = logging.getLogger("monica_async")
    logger.addHandler(records)
    logger.setLevel(logging.INFO)
    limiter = build_limiter(spec)
    outcomes: list[tuple[int, str | None]] = []
    peak = 0
    async with contextlib.AsyncExitStack() as stack:
        if limiter is not None:
            stack.push_async_callback(limiter.aclose)
        client = await stack.enter_async_context(
            MonicaClient(API_KEY, **client_options(spec, limiter))
        )
        print("READY", flush=True)
        await asyncio.to_thread(sys.stdin.readline)
        began = time.monotonic()

        async def sample() -> None:
            nonlocal peak
            while True:
                peak = max(peak, client.stats.concurrency)
                await asyncio.sleep(0.05)

        sampler = asyncio.create_task(sample())
        try:
            async for outcome in client.upscale_many(urls(spec, began)):
                error = None if outcome.ok else type(outcome.error).__name__
                outcomes.append((outcome.index, error))
        finally:
            sampler.cancel()
        ended = time.monotonic()
        stats = client.stats
    return {
        "outcomes": outcomes,
        "began": began,
        "ended": ended,
        "concurrency_peak": max(peak, stats.concurrency),
        "concurrency_final": stats.concurrency,
        "concurrency_reason": stats.concurrency_reason,
        "rate": stats.rate,
        "rate_limited": stats.rate_limited,
        "attempts": stats.attempts,
        "logs": records.records,
    }


def main() -> None:
    """Run one worker from the JSON spec in ``argv[1]``."""
    spec = json.loads(sys.argv[1])
    print(json.dumps(asyncio.run(run(spec))), flush=True)


if __name__ == "__main__":
    main()
