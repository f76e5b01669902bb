"""Under faults: success rate, extra attempts and wall time with 20% injected faults.

The fake server injects a fault into 20% of the requests (``--fault-rate 0.2``, the
default mix: 429s with and without ``Retry-After``, 500/502/503/504, dropped
connections and malformed 200s; no hangs). monica-async runs with its default
limiter, which paces after a 429 and halves its rate on every burst of them, and
with a strict ``RateLimit`` far above the achievable rate, which only shares the
pause a 429 asks for: the difference is what the adaptive slowdown costs.

Malformed 200s are not retried by design (a 200 was already billed), so the
success rate stays below 100%; the final errors are broken down by type.

    python -m benchmarks --only faults
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections import Counter
from collections.abc import Callable

from monica_async import MonicaClient, RateLimit, RateLimiter

from ._common import API_KEY, FakeServer, Json, Table, images, side_by_side

NAME = "faults"

FAULT_RATE = 0.2
CONCURRENCY = 64
#: Seconds after which a variant stops taking outcomes (full run, --quick).
CAP = 120.0
QUICK_CAP = 5.0

VARIANTS: dict[str, Callable[[], RateLimiter | None]] = {
    "monica-async (default limiter)": lambda: None,
    "monica-async RateLimit(10**6)": lambda: RateLimit(10**6),
}


async def _upscale(
    base_url: str, count: int, limiter: RateLimiter | None, cap: float | None
) -> Json:
    errors: Counter[str] = Counter()
    done = ok = 0
    async with MonicaClient(
        API_KEY, base_url=base_url, max_concurrency=CONCURRENCY, rate_limit=limiter
    ) as client:
        began = time.perf_counter()
        stream = client.upscale_many(images(base_url, count), workers=CONCURRENCY)
        async with contextlib.aclosing(stream):
            async for outcome in stream:
                done += 1
                if outcome.ok:
                    ok += 1
                else:
                    errors[type(outcome.error).__name__] += 1
                if cap is not None and time.perf_counter() - began > cap:
                    break
        wall = time.perf_counter() - began
        stats = client.stats
    return {
        "requests": count,
        "done": done,
        "succeeded": ok,
        "success_rate": ok / done if done else None,
        "attempts": stats.attempts,
        "extra_attempts": (stats.attempts - done) / done if done else None,
        "rate_limited": stats.rate_limited,
        "wall": wall,
        "rate": done / wall,
        "errors": dict(errors),
        "limiter": repr(limiter) if limiter is not None else repr(client.rate_limit),
    }


def measure(name: str, *, count: int, cap: float | None) -> Json:
    """Run variant *name* over *count* inputs against a fresh faulty server."""
    with FakeServer("--fault-rate", str(FAULT_RATE)) as server:
        row = asyncio.run(_upscale(server.base_url, count, VARIANTS[name](), cap))
        row["server_by_status"] = {str(k): v for k, v in sorted(server.stats().by_status.items())}
    return row


def run(quick: bool) -> Json:
    """Each variant over 10,000 requests (2,000 quick), stopped after a time cap.

    The default limiter settles near a few requests per second under this fault mix,
    so 10,000 inputs would take over half an hour: each variant stops after
    ``CAP`` seconds and the table shows how far it got and at what rate.
    """
    count, cap = (2_000, QUICK_CAP) if quick else (10_000, CAP)
    names = list(VARIANTS)
    if quick:
        measured = side_by_side(functools.partial(measure, count=count, cap=cap), names)
    else:
        measured = [measure(name, count=count, cap=cap) for name in names]
    return {
        "fault_rate": FAULT_RATE,
        "concurrency": CONCURRENCY,
        "cap": cap,
        "side_by_side": quick,
        "rows": dict(zip(names, measured, strict=True)),
    }


def table(result: Json) -> str:
    """Render :func:`run`'s result."""
    out = Table(
        f"Under faults: --fault-rate {result['fault_rate']}, concurrency {result['concurrency']}",
        ["client", "done", "success", "extra attempts", "429s", "wall s", "req/s", "ETA all s"],
    )
    for name, row in result["rows"].items():
        out.add(
            name,
            row["done"],
            row["success_rate"],
            row["extra_attempts"],
            row["rate_limited"],
            row["wall"],
            row["rate"],
            row["requests"] / row["rate"],
        )
    for name, row in result["rows"].items():
        errors = ", ".join(f"{k} {v}" for k, v in sorted(row["errors"].items())) or "none"
        out.note(f"{name}: final errors: {errors}")
    out.note(
        f"Each variant stops after {result['cap']:g} s ('done' counts what finished); "
        "ETA: the time all requests would take at that rate."
    )
    if result["side_by_side"]:
        out.note("Quick mode runs the variants side by side.")
    return out.render()
