"""Memory: the client's peak RSS over 10k, 100k and 1M inputs from a generator.

Each size runs in a fresh client process (so peaks do not mix) against a fake
server process of its own; only the client process is measured (the server keeps
every arrival time in its stats, which is its memory, not the client's).

Reported: RSS at the start (imports done, client open), the peak (the kernel's
``VmHWM``), and the growth per 100k inputs between the 10% mark and the end,
which stays near zero when nothing accumulates per input.

    python -m benchmarks --only memory
    python -m benchmarks.bench_memory --child 100000 http://127.0.0.1:PORT  # one size
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import time

from monica_async import MonicaClient

from ._common import (
    API_KEY,
    FakeServer,
    Json,
    Table,
    images,
    peak_rss_bytes,
    rss_bytes,
    side_by_side,
)

NAME = "memory"

CONCURRENCY = 64
MIB = 1024 * 1024


async def _child(count: int, base_url: str) -> Json:
    checkpoints: list[tuple[int, int]] = []
    every = max(1, count // 20)
    errors = 0
    async with MonicaClient(API_KEY, base_url=base_url, max_concurrency=CONCURRENCY) as client:
        start = rss_bytes()
        began = time.perf_counter()
        done = 0
        async for outcome in client.upscale_many(images(base_url, count), workers=CONCURRENCY):
            errors += not outcome.ok
            done += 1
            if done % every == 0:
                checkpoints.append((done, rss_bytes()))
        wall = time.perf_counter() - began
    end = rss_bytes()
    # From the 10% mark on, so that warm-up (connections, buffers, caches) is not growth.
    first = next(c for c in checkpoints if c[0] >= count // 10)
    growth = (end - first[1]) / ((count - first[0]) / 100_000) if count > first[0] else 0.0
    return {
        "count": count,
        "errors": errors,
        "wall": wall,
        "rate": count / wall,
        "rss_start": start,
        "rss_end": end,
        "rss_peak": peak_rss_bytes(),
        "growth_per_100k": growth,
        "checkpoints": checkpoints,
    }


def measure(count: int) -> Json:
    """Upscale *count* generated inputs in a fresh client process; its memory figures."""
    with FakeServer() as server:
        argv = [sys.executable, "-m", "benchmarks.bench_memory", "--child", str(count)]
        done = subprocess.run([*argv, server.base_url], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"memory child for {count} failed:\n{done.stderr}")
    result: Json = json.loads(done.stdout.splitlines()[-1])
    return result


def run(quick: bool) -> Json:
    """10k, 100k and 1M inputs (10k and 50k side by side when quick)."""
    counts = [10_000, 50_000] if quick else [10_000, 100_000, 1_000_000]
    # RSS does not depend on how busy the CPUs are: quick runs save the time.
    rows = side_by_side(measure, counts) if quick else [measure(count) for count in counts]
    return {"concurrency": CONCURRENCY, "side_by_side": quick, "rows": rows}


def table(result: Json) -> str:
    """Render :func:`run`'s result."""
    out = Table(
        f"Memory of upscale_many over a generator (concurrency {result['concurrency']}, "
        "client process only)",
        ["inputs", "RSS start MiB", "RSS peak MiB", "growth MiB/100k", "req/s", "errors"],
    )
    for row in result["rows"]:
        out.add(
            row["count"],
            row["rss_start"] / MIB,
            row["rss_peak"] / MIB,
            row["growth_per_100k"] / MIB,
            row["rate"],
            row["errors"],
        )
    out.note("growth: RSS change from the 10% mark to the end, per 100k inputs.")
    if result["side_by_side"]:
        out.note("Quick mode runs the sizes side by side, so req/s is not a throughput figure.")
    return out.render()


def main() -> None:
    """``--child COUNT BASE_URL``: run one size and print its figures as JSON."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_memory")
    parser.add_argument("--child", type=int, required=True, metavar="COUNT")
    parser.add_argument("base_url")
    args = parser.parse_args()
    print(json.dumps(asyncio.run(_child(args.child, args.base_url))))


if __name__ == "__main__":
    main()
