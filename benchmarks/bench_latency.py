"""Latency-bound efficiency: how close each contender gets to concurrency / latency.

The fake server waits 50 ms before every answer; at 64 requests in flight the ideal
rate is 64 / 0.05 = 1,280 requests per second. Efficiency is the achieved rate over
that ideal: what is lost is the client's own time between answers and requests.

    python -m benchmarks --only latency
"""

from __future__ import annotations

from . import bench_throughput
from ._common import FakeServer, Json, Table

NAME = "latency"

LATENCY = 0.05
CONCURRENCY = 64


def run(quick: bool) -> Json:
    """Every contender at 50 ms server latency and concurrency 64."""
    count = 640 if quick else 5_000
    rounds = 1 if quick else 3
    with FakeServer("--latency", str(LATENCY)) as server:
        result = bench_throughput.compare(
            server, count=count, concurrencies=(CONCURRENCY,), rounds=rounds
        )
    ideal = CONCURRENCY / LATENCY
    rows = result.pop("by_concurrency")[str(CONCURRENCY)]
    for row in rows.values():
        row["efficiency"] = row["rate"] / ideal
    return {**result, "latency": LATENCY, "concurrency": CONCURRENCY, "ideal": ideal, "rows": rows}


def table(result: Json) -> str:
    """Render :func:`run`'s result."""
    out = Table(
        f"Latency-bound: {result['latency'] * 1000:.0f} ms server latency, concurrency "
        f"{result['concurrency']} (ideal {result['ideal']:,.0f} req/s; "
        f"{result['requests']:,} requests, median of {result['rounds']} round(s))",
        ["contender", "requests", "req/s", "efficiency", "CPU ms/1k req"],
    )
    for name, row in result["rows"].items():
        out.add(name, row["requests"], row["rate"], row["efficiency"], 1000 * row["cpu_per_1k"])
    out.note("efficiency: achieved rate / (concurrency / latency).")
    return out.render()
