"""How much of what a key allows each client uses, at latencies from 50 ms to 10 s.

A scenario matrix against the fake server in its own process: latency {0.05 s,
0.5 s, 2-4 s, 6-10 s} x server {20/s; 5/s; 20/s and 24 in flight}. For each, in
the same run, side by side (each contender with a server of its own):

- monica-async with no options (automatic concurrency, adaptive limiter);
- monica-async with ``RateLimit(R)`` matching the server (automatic concurrency);
- monica-async with the old fixed ``max_concurrency=16``;
- aiometer with ``max_at_once=16, max_per_second=R``;
- raw aiohttp with aiolimiter at R and a concurrency set by hand from Little's law
  (the expert's baseline: it knows R, the cap and the latency range).

Efficiency = ideal / wall, where ideal = n / min(R, Cs / L) + L for server rate R,
concurrency cap Cs and mean latency L; "429/ok" is 429s per accepted request, as
the server counted them. A contender still running at three times the ideal is
stopped, and its efficiency is taken over what it finished.

A scenario injects 5% random 429s (``--faults http_429``) with no binding limit:
the default client against one with a non-binding ``RateLimit``.

The last ones play Monica's documented limits, time-scaled 5x (10 per 12 s sliding
window, 8 in flight, 0.4-0.8 s per call): the default client on 60 inputs with and
without ``Retry-After``, on a raised key (60 per 12 s, 24 in flight, 200 inputs), the
limits stated with ``Limits``, and ``RateLimit(10, per=12)`` on 8 inputs of a fresh
window. Ideal there: ``(ceil(n / requests) - 1) * per + 0.8 s`` (every window's
allowance at once, the last call at the slowest latency).

    python -m benchmarks --only concurrency
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import math
import time
from collections.abc import Callable, Coroutine
from typing import Any

import aiohttp

import monica_async
from monica_async import MonicaClient, RateLimit

from ._common import API_KEY, FakeServer, Json, Table, images, side_by_side
from ._scenarios import Scenario, run_scenario
from .bench_throughput import HEADERS, _body

NAME = "concurrency"

#: (label, fake server --latency, mean, high)
LATENCIES: list[tuple[str, str, float, float]] = [
    ("0.05 s", "0.05", 0.05, 0.05),
    ("0.5 s", "0.5", 0.5, 0.5),
    ("2-4 s", "2,4", 3.0, 4.0),
    ("6-10 s", "6,10", 8.0, 10.0),
]
#: (label, requests per second, concurrency cap)
SERVERS: list[tuple[str, int, int | None]] = [
    ("20/s", 20, None),
    ("5/s", 5, None),
    ("20/s + 24 in flight", 20, 24),
]
#: Seconds of ideal work per scenario: ramp-up stays a small part of it.
IDEAL_SECONDS = 20.0
QUICK_IDEAL_SECONDS = 6.0
#: Fewest inputs per scenario (full run; a quick run takes a quarter).
MIN_INPUTS = 200
#: A contender still running at this multiple of the ideal is stopped.
STOP_AT = 3.0

Contender = Callable[[str, int, Json], Coroutine[Any, Any, int]]


async def _stream(client: MonicaClient, base_url: str, count: int, stop: float) -> int:
    done = 0
    began = time.perf_counter()
    stream = client.upscale_many(images(base_url, count))
    async with contextlib.aclosing(stream):
        async for _ in stream:
            done += 1
            if time.perf_counter() - began > stop:
                break
    return done


async def monica_default(base_url: str, count: int, s: Json) -> int:
    """monica-async, no options."""
    async with MonicaClient(API_KEY, base_url=base_url) as client:
        return await _stream(client, base_url, count, s["stop"])


async def monica_rate(base_url: str, count: int, s: Json) -> int:
    """monica-async with ``RateLimit(R)``."""
    async with MonicaClient(API_KEY, base_url=base_url, rate_limit=RateLimit(s["rate"])) as client:
        return await _stream(client, base_url, count, s["stop"])


async def monica_fixed(base_url: str, count: int, s: Json) -> int:
    """monica-async with the old default of 16 in flight (and the adaptive limiter)."""
    async with MonicaClient(API_KEY, base_url=base_url, max_concurrency=16) as client:
        return await _stream(client, base_url, count, s["stop"])


async def _post_until_accepted(session: aiohttp.ClientSession, endpoint: str, url: str) -> None:
    while True:
        async with session.post(endpoint, data=_body(url), headers=HEADERS) as response:
            await response.read()
            retry_after = response.headers.get("Retry-After")
        if response.status == 200:
            return
        if response.status != 429:
            raise RuntimeError(f"unexpected HTTP {response.status}")
        await asyncio.sleep(float(retry_after or 1))


async def aiometer_16(base_url: str, count: int, s: Json) -> int:
    """aiometer, 16 at once, R per second, each 429 retried after its Retry-After."""
    import aiometer

    endpoint = f"{base_url}/v1/image/tool/upscale"
    done = 0
    async with aiohttp.ClientSession() as session:
        began = time.perf_counter()
        async with aiometer.amap(
            functools.partial(_post_until_accepted, session, endpoint),
            list(images(base_url, count)),
            max_at_once=16,
            max_per_second=s["rate"],
        ) as results:
            async for _ in results:
                done += 1
                if time.perf_counter() - began > s["stop"]:
                    break
    return done


async def expert(base_url: str, count: int, s: Json) -> int:
    """Raw aiohttp workers, aiolimiter at R, concurrency set by Little's law."""
    from aiolimiter import AsyncLimiter

    endpoint = f"{base_url}/v1/image/tool/upscale"
    workers = math.ceil(s["rate"] * s["latency_high"] * 1.1) + 1
    if s["cap"] is not None:
        workers = min(workers, s["cap"])
    limiter = AsyncLimiter(s["rate"], 1.0)
    urls = images(base_url, count)
    done = 0
    began = time.perf_counter()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:

        async def worker() -> None:
            nonlocal done
            for url in urls:
                if time.perf_counter() - began > s["stop"]:
                    return
                while True:
                    async with (
                        limiter,
                        session.post(endpoint, data=_body(url), headers=HEADERS) as r,
                    ):
                        await r.read()
                        retry_after = r.headers.get("Retry-After")
                    if r.status == 200:
                        break
                    await asyncio.sleep(float(retry_after or 1))
                done += 1

        await asyncio.gather(*(worker() for _ in range(workers)))
    return done


CONTENDERS: dict[str, Contender] = {
    "monica-async, no options": monica_default,
    "monica-async, RateLimit(R)": monica_rate,
    "monica-async, fixed 16": monica_fixed,
    "aiometer 16 at once, R/s": aiometer_16,
    "aiohttp + aiolimiter, Little's law": expert,
}


def measure(job: tuple[str, Json]) -> Json:
    """Run one contender against a server of its own; efficiency and 429s."""
    name, s = job
    options = ["--latency", s["latency_arg"], "--rate-limit", f"{s['rate']}/1"]
    if s["cap"] is not None:
        options += ["--max-concurrency", str(s["cap"])]
    options += s.get("extra", [])
    with FakeServer(*options) as server:
        began = time.perf_counter()
        done = asyncio.run(CONTENDERS[name](server.base_url, s["count"], s))
        wall = time.perf_counter() - began
        stats = server.stats()
    throughput = s["throughput"]
    ideal = done / throughput + s["latency"]
    return {
        "done": done,
        "wall": wall,
        "efficiency": ideal / wall,
        "per_accepted_429": stats.by_status.get(429, 0) / max(1, stats.accepted),
    }


def scenario(
    latency: tuple[str, str, float, float],
    server: tuple[str, int, int | None],
    ideal_s: float,
    min_inputs: int = MIN_INPUTS,
) -> Json:
    """The parameters of one cell of the matrix."""
    label, arg, mean, high = latency
    name, rate, cap = server
    throughput = min(rate, cap / mean) if cap is not None else float(rate)
    # At least MIN_INPUTS: finding a limit from scratch costs a few refusals, which must
    # stay a small part of the run even where the server allows only a few per second.
    count = max(min_inputs, math.ceil(throughput * ideal_s))
    ideal = count / throughput + mean
    return {
        "label": f"{label}, {name}",
        "latency_arg": arg,
        "latency": mean,
        "latency_high": high,
        "rate": rate,
        "cap": cap,
        "throughput": throughput,
        "count": count,
        "ideal": ideal,
        "stop": STOP_AT * ideal,
    }


def run(quick: bool) -> Json:
    """Every scenario; the contenders of one scenario run side by side."""
    ideal_s = QUICK_IDEAL_SECONDS if quick else IDEAL_SECONDS
    latencies = LATENCIES[:3] if quick else LATENCIES
    rows: list[Json] = []
    for latency in latencies:
        for server in SERVERS:
            s = scenario(latency, server, ideal_s, MIN_INPUTS // 4 if quick else MIN_INPUTS)
            names = list(CONTENDERS)
            results = side_by_side(measure, [(n, s) for n in names])
            rows.append({**s, "results": dict(zip(names, results, strict=True))})
    faults = _random_429s(quick)
    return {"rows": rows, "random_429s": faults, "documented": documented_limits(quick)}


def _random_429s(quick: bool) -> Json:
    """5% random 429s, no binding limit: default client vs a non-binding RateLimit."""
    count = 300 if quick else 1500
    s = {
        "label": "0.5 s, 5% random 429s",
        "latency_arg": "0.5",
        "latency": 0.5,
        "latency_high": 0.5,
        "rate": 1000,
        "cap": None,
        "throughput": 1000.0,
        "count": count,
        "stop": 600.0,
        "extra": ["--fault-rate", "0.05", "--faults", "http_429"],
    }
    names = ["monica-async, no options", "monica-async, RateLimit(R)"]
    results = side_by_side(measure, [(n, s) for n in names])
    walls = {n: r["wall"] for n, r in zip(names, results, strict=True)}
    return {
        "count": count,
        "default_wall": walls[names[0]],
        "ratelimit_wall": walls[names[1]],
        "ratio": walls[names[0]] / walls[names[1]],
    }


#: Monica's documented default limits per key, time-scaled 5x: 10 per 60 s becomes 10
#: per 12 s; 8 in flight; a call takes 0.4-0.8 s.
DOCUMENTED = {"requests": 10, "per": 12.0, "in_flight": 8, "latency": "0.4,0.8", "slowest": 0.8}
#: A key whose limits were raised: 60 per 12 s, 24 in flight.
RAISED = {**DOCUMENTED, "requests": 60, "in_flight": 24}


def _documented_case(label: str, key: Json, images: int, client: Json, **extra: Any) -> Scenario:
    server = ("--rate-limit", f"{key['requests']}/{key['per']:g}s")
    server += ("--max-concurrency", str(key["in_flight"]), "--latency", key["latency"])
    return Scenario(
        label=label, server=server, client=client, images=images, deadline=300.0, **extra
    )


def documented_cases(quick: bool) -> list[tuple[Scenario, Json]]:
    """The documented-limit scenarios and the key each one plays."""
    n, raised_n = (30, 120) if quick else (60, 200)
    stated = {"rate": f"{DOCUMENTED['requests']}/{DOCUMENTED['per']:g}s", "in_flight": 8}
    cases = [
        (
            _documented_case(f"documented limits, {n} inputs, defaults", DOCUMENTED, n, {}),
            DOCUMENTED,
        ),
        (
            _documented_case("same, no Retry-After", DOCUMENTED, n, {}, retry_after=False),
            DOCUMENTED,
        ),
        (
            _documented_case(
                f"raised key (60 per 12 s, 24 in flight), {raised_n} inputs, defaults",
                RAISED,
                raised_n,
                {},
            ),
            RAISED,
        ),
        (
            _documented_case(
                "RateLimit(10, per=12), 8 inputs, fresh window",
                DOCUMENTED,
                8,
                {"limiter": "ratelimit", "requests": 10, "per": 12.0},
            ),
            DOCUMENTED,
        ),
    ]
    if hasattr(monica_async, "Limits"):
        cases.insert(
            2,
            (
                _documented_case(
                    f"documented limits, {n} inputs, Limits(rate='10/12s', in_flight=8)",
                    DOCUMENTED,
                    n,
                    {"limits": stated},
                ),
                DOCUMENTED,
            ),
        )
    return cases


def documented_limits(quick: bool) -> list[Json]:
    """Efficiency and 429s per accepted request against Monica's documented limits."""
    rows = []
    for s, key in documented_cases(quick):
        verdict = run_scenario(s)
        windows = math.ceil(verdict.inputs / key["requests"])
        ideal = (windows - 1) * key["per"] + key["slowest"]
        rows.append(
            {
                "label": s.label,
                "inputs": verdict.inputs,
                "failed": verdict.failed,
                "wall": verdict.wall,
                "ideal": ideal,
                "efficiency": ideal / verdict.wall,
                "per_accepted_429": verdict.refused_per_accepted,
                "problems": verdict.problems(),
            }
        )
    return rows


def documented_table(rows: list[Json]) -> str:
    """The documented-limit scenarios as a table."""
    out = Table(
        "Monica's documented limits, time-scaled 5x (10 per 12 s, 8 in flight, 0.4-0.8 s)",
        ["case", "wall s", "ideal s", "efficiency", "429/ok", "failed"],
    )
    for row in rows:
        out.add(
            row["label"],
            row["wall"],
            row["ideal"],
            row["efficiency"],
            row["per_accepted_429"],
            row["failed"],
        )
    return out.render()


def table(result: Json) -> str:
    """Render :func:`run`'s result: efficiency and 429s per accepted, side by side."""
    names = list(CONTENDERS)
    out = Table(
        "How many in flight: efficiency (ideal / wall) and 429s per accepted request",
        ["latency, server (n)", *names],
    )
    for row in result["rows"]:
        cells = [
            f"{r['efficiency']:.2f} / {r['per_accepted_429']:.3f}"
            for r in (row["results"][n] for n in names)
        ]
        out.add(f"{row['label']} ({row['count']})", *cells)
    faults = result["random_429s"]
    out.notes.append(
        f"5% random 429s, 0.5 s, no binding limit, {faults['count']} inputs: default "
        f"{faults['default_wall']:.1f} s, RateLimit(1000) {faults['ratelimit_wall']:.1f} s, "
        f"ratio {faults['ratio']:.2f}"
    )
    return out.render() + "\n\n" + documented_table(result["documented"])


def main() -> None:
    """``python -m benchmarks.bench_concurrency --documented [--quick]``: those rows only."""
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--documented", action="store_true", help="only the documented limits")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.documented:
        print(documented_table(documented_limits(args.quick)))
    else:
        print(table(run(args.quick)))


if __name__ == "__main__":
    main()
