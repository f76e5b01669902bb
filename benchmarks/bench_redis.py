"""Benchmark RedisRateLimit: the cost of one acquisition and the accuracy of a shared limit.

It starts its own redis-server on a free loopback port (persistence off) and the fake
Monica server in its own process, then measures:

1. Acquisition cost: Redis round trips and latency of ``acquire()`` when a slot is
   free at once (one script call) and when the caller has to wait (a second call on
   waking), next to a bare PING on the same connection.
2. Accuracy: 1, 4 and 8 worker processes, each with its own MonicaClient and a
   RedisRateLimit on one key, upscale a share of the same total; the fake server's
   own arrival times give the worst sliding window and the steady combined rate.
3. Outage: 3 worker processes share 30 per second; redis-server is killed 10 s into
   the run and started again (empty) 10 s later. Printed: the worst window at the
   server before, during and after the outage, the failed inputs, and how long after
   the restart each process books through Redis again and takes the whole shared
   limit again.

    python benchmarks/bench_redis.py [--requests 20 --per 1.0 --total 200]
    python benchmarks/bench_redis.py --scenarios outage [--outage-at 10 --outage-for 10]

Needs the ``redis`` extra and a ``redis-server`` binary (``$REDIS_SERVER`` or PATH).
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import itertools
import json
import logging
import math
import os
import re
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
from typing import Any

import attrs
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


class RedisProcess:
    """A throwaway redis-server on one loopback port, persistence off, that can be
    killed and started again (empty, like a lost cache node) on the same port."""

    def __init__(self, directory: str) -> None:
        binary = os.environ.get("REDIS_SERVER") or shutil.which("redis-server")
        if binary is None:
            sys.exit("redis-server not found: install it or set REDIS_SERVER")
        self.binary = binary
        self.directory = directory
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:<port>/0``."""
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        """Start the server and wait until it answers PING."""
        argv = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
        argv += ["--appendonly", "no", "--dir", self.directory, "--loglevel", "warning"]
        self.process = subprocess.Popen(argv, stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + 15
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                pass
            if time.monotonic() > deadline or self.process.poll() is not None:
                sys.exit("redis-server did not start")
            time.sleep(0.01)

    def kill(self) -> None:
        """Kill the server (SIGKILL): its connections break at once, its data is lost."""
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None


@contextmanager
def redis_server() -> Iterator[RedisProcess]:
    """Run a throwaway redis-server on loopback for the length of a ``with``."""
    with tempfile.TemporaryDirectory() as directory:
        server = RedisProcess(directory)
        server.start()
        try:
            yield server
        finally:
            server.kill()


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


class _Events(logging.Handler):
    """What the limiter logs, with the ``time.monotonic()`` of each message."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.events: list[tuple[float, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.events.append((time.monotonic(), record.getMessage()))


def urls_for(args: argparse.Namespace) -> Iterator[str]:
    """``--images`` made-up URLs, or as many as can start within ``--seconds`` of the go."""
    deadline = None if args.seconds is None else time.monotonic() + args.seconds
    for i in itertools.count():
        if (args.images is not None and i >= args.images) or (
            deadline is not None and time.monotonic() >= deadline
        ):
            return
        yield f"https://img.example/{args.name}/{i}.png"


async def worker(args: argparse.Namespace) -> None:
    """One worker process: wait for the go line, upscale, print a summary as JSON."""
    events = _Events()
    logger = logging.getLogger("monica_async")
    logger.addHandler(events)
    logger.setLevel(logging.INFO)
    limit = RedisRateLimit(
        args.redis_url, args.requests, args.per, margin=args.margin, key=args.key
    )
    failures = inputs = 0
    async with (
        limit,
        MonicaClient(
            API_KEY, base_url=args.base_url, rate_limit=limit, max_concurrency=args.concurrency
        ) as client,
    ):
        print("READY", flush=True)
        await asyncio.to_thread(sys.stdin.readline)
        async for outcome in client.upscale_many(urls_for(args)):
            inputs += 1
            failures += not outcome.ok
    print(json.dumps({"inputs": inputs, "failures": failures, "events": events.events}))


def start_workers(
    count: int, args: argparse.Namespace, base_url: str, url: str, *options: str
) -> list[subprocess.Popen[str]]:
    """Start *count* workers on one fresh key and wait until each is READY."""
    key = uuid.uuid4().hex
    processes = []
    for n in range(count):
        argv = [sys.executable, __file__, "--worker", "--name", f"w{n}", "--key", key]
        argv += ["--base-url", base_url, "--redis-url", url, *options]
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
    return processes


def go(processes: list[subprocess.Popen[str]]) -> None:
    """Let every worker start."""
    for process in processes:
        assert process.stdin is not None
        process.stdin.write("go\n")
        process.stdin.flush()


def summaries(processes: list[subprocess.Popen[str]]) -> list[dict[str, Any]]:
    """Wait for the workers; their summaries (``{"exit": code}`` for one that crashed)."""
    results: list[dict[str, Any]] = []
    for process in processes:
        out, _ = process.communicate(timeout=600)
        lines = out.splitlines()
        if process.returncode != 0 or not lines:
            results.append({"exit": process.returncode, "inputs": 0, "failures": 0, "events": []})
        else:
            results.append({"exit": 0, **json.loads(lines[-1])})
    return results


def run_workers(count: int, args: argparse.Namespace, base_url: str, url: str) -> int:
    """Run *count* workers together on one fresh key; return the failed inputs."""
    images = str(args.total // count)
    processes = start_workers(count, args, base_url, url, "--images", images)
    go(processes)
    return sum(summary["failures"] for summary in summaries(processes))


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


# -- 3. a Redis outage ------------------------------------------------------------------


def windows_by_start(times: list[float], per: float) -> list[tuple[float, int]]:
    """(start, arrivals) of the window ``[t, t + per)`` starting at each arrival *t*."""
    return [(t, bisect.bisect_left(times, t + per) - i) for i, t in enumerate(times)]


@attrs.frozen
class Outage:
    """What the outage scenario measured (times in seconds from the go)."""

    killed: float
    restarted: float
    ended: float
    # phase -> (worst window, arrivals per second over the phase)
    phases: dict[str, tuple[int, float]]
    inputs: int
    failures: int
    exits: list[int]
    shares: list[str]  # per process, the local limit it fell back to
    back_on_redis: list[float | None]  # per process, seconds after the restart
    whole_limit: list[float | None]


def first_after(events: list[list[Any]], since: float, text: str) -> float | None:
    """Seconds from *since* to the first message containing *text* logged after it."""
    return next((t - since for t, message in events if t >= since and text in message), None)


def fallback_share(events: list[list[Any]]) -> str:
    """The local limit of the first fallback warning, such as ``10/1.0s``."""
    for _, message in events:
        found = re.search(r"local limit of (\d+) per (\S+?)s\b", message)
        if found:
            return f"{found[1]}/{found[2]}s"
    return "none"


def outage(args: argparse.Namespace, redis_process: RedisProcess) -> Outage:
    """Run the workers through a Redis outage; see the module docstring."""
    per = args.per
    length = args.outage_at + args.outage_for + args.outage_after
    with fake_monica() as base_url:
        fake_stats(base_url, reset=True)
        options = ("--seconds", str(length), "--concurrency", str(args.concurrency))
        processes = start_workers(
            args.outage_processes, args, base_url, redis_process.url, *options
        )
        began = time.monotonic()
        go(processes)
        time.sleep(max(0.0, began + args.outage_at - time.monotonic()))
        killed = time.monotonic()
        redis_process.kill()
        time.sleep(max(0.0, killed + args.outage_for - time.monotonic()))
        restarted = time.monotonic()
        redis_process.start()
        results = summaries(processes)
        times = sorted(fake_stats(base_url).accepted_times)
    ended = times[-1] if times else restarted
    windows = windows_by_start(times, per)
    bounds = {
        "before the outage": (-math.inf, killed - per),
        "the outage (from the kill)": (killed - per, restarted - per),
        "after the restart": (restarted - per, math.inf),
    }
    spans = {
        "before the outage": (began, killed),
        "the outage (from the kill)": (killed, restarted),
        "after the restart": (restarted, ended),
    }
    phases = {}
    for phase, (low, high) in bounds.items():
        worst = max((n for t, n in windows if low < t <= high), default=0)
        first, last = spans[phase]
        count = bisect.bisect_left(times, last) - bisect.bisect_left(times, first)
        phases[phase] = (worst, count / max(last - first, 1e-9))
    return Outage(
        killed=killed - began,
        restarted=restarted - began,
        ended=ended - began,
        phases=phases,
        inputs=sum(r["inputs"] for r in results),
        failures=sum(r["failures"] for r in results),
        exits=[r["exit"] for r in results],
        shares=[fallback_share(r["events"]) for r in results],
        back_on_redis=[first_after(r["events"], restarted, "reachable again") for r in results],
        whole_limit=[first_after(r["events"], restarted, "whole shared limit") for r in results],
    )


def print_outage(args: argparse.Namespace, result: Outage) -> None:
    """Print the outage scenario's table."""
    limit, count = args.requests, args.outage_processes
    margin = default_margin(args.per) if args.margin is None else args.margin
    target = limit + limit // count
    print(
        f"\nRedis outage: {count} processes share {limit} per {args.per:g} s (margin "
        f"{margin * 1000:g} ms), {args.concurrency} in flight each; redis-server killed at "
        f"{result.killed:.1f} s, restarted empty at {result.restarted:.1f} s, last arrival at "
        f"{result.ended:.1f} s\n"
    )
    print(f"{'phase':<28}{'worst window':>14}{'target':>8}{'rate /s':>9}")
    for phase, (worst, rate) in result.phases.items():
        print(f"{phase:<28}{f'{worst}/{limit}':>14}{target:>8}{rate:>9.1f}")

    def seconds(values: list[float | None]) -> str:
        return " ".join("never" if v is None else f"{v:.2f}" for v in values)

    print(f"inputs {result.inputs}, failed {result.failures}, worker exit codes {result.exits}")
    print(f"local limit during the outage (per process): {' '.join(result.shares)}")
    print(f"back on Redis, s after the restart (per process): {seconds(result.back_on_redis)}")
    print(f"whole shared limit again, s after the restart:    {seconds(result.whole_limit)}")
    print(
        f"(worst window: most arrivals at the server in any {args.per:g} s starting in the "
        f"phase; a window holding the kill counts in the outage, one holding the restart "
        f"after it; target: limit + limit/processes)"
    )


# -- main -----------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    """Read the options (the worker's included)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--scenarios",
        type=lambda text: text.split(","),
        default=["cost", "accuracy", "outage"],
        help="which to run, of cost,accuracy,outage (all)",
    )
    parser.add_argument(
        "--requests", type=int, default=None, help="the shared limit (20; 30 for the outage)"
    )
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
    parser.add_argument("--outage-processes", type=int, default=3, help="(%(default)s)")
    parser.add_argument("--outage-at", type=float, default=10.0, help="kill at, s (%(default)s)")
    parser.add_argument("--outage-for", type=float, default=10.0, help="down for, s (%(default)s)")
    parser.add_argument(
        "--outage-after", type=float, default=10.0, help="run on after the restart, s (%(default)s)"
    )
    parser.add_argument(
        "--concurrency", type=int, default=16, help="attempts in flight per worker (%(default)s)"
    )
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--name", help=argparse.SUPPRESS)
    parser.add_argument("--key", help=argparse.SUPPRESS)
    parser.add_argument("--base-url", help=argparse.SUPPRESS)
    parser.add_argument("--redis-url", help=argparse.SUPPRESS)
    parser.add_argument("--images", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--seconds", type=float, default=None, help=argparse.SUPPRESS)
    return parser.parse_args()


def main() -> None:
    """Run the chosen benchmarks and print their tables."""
    args = parse_args()
    if args.worker:
        asyncio.run(worker(args))
        return
    unknown = set(args.scenarios) - {"cost", "accuracy", "outage"}
    if unknown:
        sys.exit(f"--scenarios: unknown {sorted(unknown)}; choose from cost,accuracy,outage")
    chosen = args.requests
    with redis_server() as redis_process:
        url = redis_process.url
        if "cost" in args.scenarios:
            cost = asyncio.run(acquisition_cost(url, args.acquisitions))
            print(f"\nAcquisition cost on loopback ({args.acquisitions} sequential calls)\n")
            print(f"{'case':<26}{'round trips':>12}{'p50 us':>10}{'p99 us':>10}")
            for case, trips, p50, p99 in cost:
                print(f"{case:<26}{trips:>12.2f}{p50:>10.0f}{p99:>10.0f}")
            print("('waited': the spacing between starts, booked 10000 us apart, not a latency)")
        if "accuracy" in args.scenarios:
            args.requests = 20 if chosen is None else chosen
            print_accuracy(args, accuracy(args, url))
        if "outage" in args.scenarios:
            args.requests = 30 if chosen is None else chosen
            print_outage(args, outage(args, redis_process))


def print_accuracy(args: argparse.Namespace, rows: list[Row]) -> None:
    """Print the accuracy scenario's table."""
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
