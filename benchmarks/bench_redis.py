"""Benchmark RedisRateLimit: the cost of one acquisition and the accuracy of a shared limit.

It starts its own redis-server on a free loopback port (persistence off) and the fake
Monica server in its own process, then measures:

1. Acquisition cost: Redis round trips and latency of ``acquire()`` when a slot is
   free at once (one script call) and when the caller has to wait (a second call on
   waking), next to a bare PING on the same connection.
2. Accuracy: 1, 4 and 8 worker processes, each with its own MonicaClient and a
   RedisRateLimit on one key, upscale a share of the same total; the fake server's
   own arrival times give the worst sliding window and the steady combined rate.

    python benchmarks/bench_redis.py [--requests 20 --per 1.0 --total 200]

Needs the ``redis`` extra and a ``redis-server`` binary (``$REDIS_SERVER`` or PATH).
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import itertools
import json
import math
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import redis.asyncio

from monica_async import MonicaClient, RedisRateLimit
from monica_async._redis import default_margin
from monica_async.testing import FakeServerStats

API_KEY = "bench-key"


# -- servers --------------------------------------------------------------------------


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextmanager
def redis_server() -> Iterator[str]:
    """Run a throwaway redis-server on loopback; yield its URL."""
    binary = os.environ.get("REDIS_SERVER") or shutil.which("redis-server")
    if binary is None:
        sys.exit("redis-server not found: install it or set REDIS_SERVER")
    port = free_port()
    with tempfile.TemporaryDirectory() as directory:
        argv = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
        argv += ["--appendonly", "no", "--dir", directory, "--loglevel", "warning"]
        process = subprocess.Popen(argv, stdout=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 15
            while True:
                try:
                    with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
                        sock.sendall(b"PING\r\n")
                        if sock.recv(16).startswith(b"+PONG"):
                            break
                except OSError:
                    pass
                if time.monotonic() > deadline or process.poll() is not None:
                    sys.exit("redis-server did not start")
                time.sleep(0.02)
            yield f"redis://127.0.0.1:{port}/0"
        finally:
            process.terminate()
            process.wait()


@contextmanager
def fake_monica() -> Iterator[str]:
    """Run the fake Monica server (answers at once, no limit) in its own process."""
    argv = [sys.executable, "-m", "monica_async.testing", "--port", "0", "--no-images"]
    process = subprocess.Popen([*argv, "--api-key", API_KEY], stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        line = process.stdout.readline().split()
        if line[:1] != ["READY"]:
            sys.exit(f"the fake server did not start: {line}")
        yield line[1]
    finally:
        process.terminate()
        process.wait()


def fake_stats(base_url: str, reset: bool = False) -> FakeServerStats:
    """Fetch (or reset, then fetch) the fake server's stats over HTTP."""
    if reset:
        request = urllib.request.Request(base_url + "/_fake/reset", method="POST")
        urllib.request.urlopen(request, timeout=10).close()
    with urllib.request.urlopen(base_url + "/_fake/stats", timeout=10) as answer:
        return FakeServerStats.from_json(json.load(answer))


# -- 1. the cost of one acquisition ---------------------------------------------------


async def evalsha_calls(client: redis.asyncio.Redis) -> int:
    """How many EVALSHA Redis has run so far."""
    stats = await client.info("commandstats")
    return int(stats.get("cmdstat_evalsha", {}).get("calls", 0))


def percentiles(samples: list[float]) -> tuple[float, float]:
    """p50 and p99 of *samples*, in microseconds."""
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]
    return statistics.median(ordered) * 1e6, p99 * 1e6


async def acquisition_cost(url: str, count: int) -> list[tuple[str, float, float, float]]:
    """Rows (case, Redis round trips per acquisition, p50 us, p99 us)."""
    client = redis.asyncio.Redis.from_url(url)
    rows = []
    try:
        pings = []
        for _ in range(count):
            began = time.perf_counter()
            await client.ping()
            pings.append(time.perf_counter() - began)
        rows.append(("PING (baseline)", 1.0, *percentiles(pings)))

        free = RedisRateLimit(client, 10**9, 1.0, burst=10**9, key=uuid.uuid4().hex)
        await free.acquire()  # SCRIPT LOAD happens once, here
        before = await evalsha_calls(client)
        samples = []
        for _ in range(count):
            began = time.perf_counter()
            await free.acquire()
            samples.append(time.perf_counter() - began)
        trips = (await evalsha_calls(client) - before) / count
        rows.append(("acquire, slot free", trips, *percentiles(samples)))

        # 100/s evenly: each acquisition sleeps until its slot 10 ms after the last
        # one, then confirms it; what is measured is the spacing between starts.
        paced = RedisRateLimit(client, 100, 1.0, key=uuid.uuid4().hex)
        await paced.acquire()
        waits = max(50, count // 20)
        before = await evalsha_calls(client)
        starts = []
        for _ in range(waits):
            await paced.acquire()
            starts.append(time.perf_counter())
        trips = (await evalsha_calls(client) - before) / waits
        gaps = [later - earlier for earlier, later in itertools.pairwise(starts)]
        rows.append(("acquire, waited (100/s)", trips, *percentiles(gaps)))
    finally:
        await client.aclose()
    return rows


# -- 2. accuracy of the combined rate -------------------------------------------------


async def worker(args: argparse.Namespace) -> None:
    """One worker process: wait for the go line, upscale --images URLs, print a summary."""
    limit = RedisRateLimit(
        args.redis_url, args.requests, args.per, margin=args.margin, key=args.key
    )
    urls = [f"https://img.example/{args.name}/{i}.png" for i in range(args.images)]
    failures = 0
    async with (
        limit,
        MonicaClient(API_KEY, base_url=args.base_url, rate_limit=limit) as client,
    ):
        print("READY", flush=True)
        await asyncio.to_thread(sys.stdin.readline)
        async for outcome in client.upscale_many(urls):
            failures += outcome.error is not None
    print(json.dumps({"failures": failures}), flush=True)


def run_workers(count: int, args: argparse.Namespace, base_url: str, url: str) -> int:
    """Run *count* workers together on one fresh key; return the failed inputs."""
    key = uuid.uuid4().hex
    share = args.total // count
    processes = []
    for n in range(count):
        argv = [sys.executable, __file__, "--worker", "--name", f"w{n}", "--key", key]
        argv += ["--base-url", base_url, "--redis-url", url, "--images", str(share)]
        argv += ["--requests", str(args.requests), "--per", str(args.per)]
        if args.margin is not None:
            argv += ["--margin", str(args.margin)]
        processes.append(
            subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        )
    for process in processes:
        assert process.stdout is not None
        if process.stdout.readline().strip() != "READY":
            sys.exit("a worker failed to start")
    failures = 0
    for process in processes:
        assert process.stdin is not None
        process.stdin.write("go\n")
        process.stdin.flush()
    for process in processes:
        out, _ = process.communicate(timeout=600)
        failures += json.loads(out.splitlines()[-1])["failures"]
    return failures


def worst_window(times: list[float], per: float) -> int:
    """The most arrivals in any window ``[t, t + per)`` of the sorted *times*."""
    return max((bisect.bisect_left(times, t + per) - i for i, t in enumerate(times)), default=0)


def steady_rate(times: list[float], per: float) -> float:
    """Arrivals per second over the whole windows between the first and last arrival."""
    windows = max(1, int((times[-1] - times[0]) // per))
    return bisect.bisect_left(times, times[0] + windows * per) / (windows * per)


def tightest_span(times: list[float], requests: int) -> float:
    """The shortest time holding ``requests + 1`` arrivals: under *per*, the limit broke."""
    spans = [times[i + requests] - times[i] for i in range(len(times) - requests)]
    return min(spans, default=math.inf)


Row = tuple[int, int, int, float, float, int]


def accuracy(args: argparse.Namespace, url: str) -> list[Row]:
    """Rows (processes, accepted, worst window, tightest span, steady rate, failures)."""
    rows = []
    with fake_monica() as base_url:
        for count in args.processes:
            fake_stats(base_url, reset=True)
            failures = run_workers(count, args, base_url, url)
            times = sorted(fake_stats(base_url).accepted_times)
            worst = worst_window(times, args.per)
            span = tightest_span(times, args.requests)
            rows.append((count, len(times), worst, span, steady_rate(times, args.per), failures))
    return rows


# -- main -----------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    """Read the options (the worker's included)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20, help="the shared limit (%(default)s)")
    parser.add_argument("--per", type=float, default=1.0, help="its window, s (%(default)s)")
    parser.add_argument(
        "--margin", type=float, default=None, help="window margin, s (RedisRateLimit's default)"
    )
    parser.add_argument("--total", type=int, default=200, help="requests per run (%(default)s)")
    parser.add_argument(
        "--processes",
        type=lambda text: [int(n) for n in text.split(",")],
        default=[1, 4, 8],
        help="process counts to compare (1,4,8)",
    )
    parser.add_argument("--acquisitions", type=int, default=2000, help="for the cost (%(default)s)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--name", help=argparse.SUPPRESS)
    parser.add_argument("--key", help=argparse.SUPPRESS)
    parser.add_argument("--base-url", help=argparse.SUPPRESS)
    parser.add_argument("--redis-url", help=argparse.SUPPRESS)
    parser.add_argument("--images", type=int, help=argparse.SUPPRESS)
    return parser.parse_args()


def main() -> None:
    """Run both benchmarks and print their tables."""
    args = parse_args()
    if args.worker:
        asyncio.run(worker(args))
        return
    with redis_server() as url:
        cost = asyncio.run(acquisition_cost(url, args.acquisitions))
        print(f"\nAcquisition cost on loopback ({args.acquisitions} sequential calls)\n")
        print(f"{'case':<26}{'round trips':>12}{'p50 us':>10}{'p99 us':>10}")
        for case, trips, p50, p99 in cost:
            print(f"{case:<26}{trips:>12.2f}{p50:>10.0f}{p99:>10.0f}")
        print("('waited': the spacing between starts, booked 10000 us apart, not a latency)")

        rows = accuracy(args, url)
    limit = args.requests
    margin = default_margin(args.per) if args.margin is None else args.margin
    print(
        f"\nCombined rate, limit {limit} per {args.per:g} s (margin {margin * 1000:g} ms), "
        f"{args.total} requests per run\n"
    )
    print(
        f"{'processes':>9}{'accepted':>10}{'worst window':>14}{'tightest':>10}"
        f"{'steady /s':>11}{'vs limit':>10}{'failed':>8}"
    )
    for count, accepted, worst, span, steady, failures in rows:
        print(
            f"{count:>9}{accepted:>10}{f'{worst}/{limit}':>14}{span * 1000:>8.0f}ms"
            f"{steady:>11.2f}{steady / (limit / args.per):>10.1%}{failures:>8}"
        )
    print(
        f"(worst window: most arrivals at the server in any {args.per:g} s; tightest: the "
        f"shortest time holding {limit + 1} arrivals, booked >= {(args.per + margin) * 1000:g} "
        "ms apart)"
    )


if __name__ == "__main__":
    main()
