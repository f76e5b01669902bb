"""One worker process of the multi-process RedisRateLimit tests and benchmark.

It builds a MonicaClient whose limiter is a RedisRateLimit on the shared key, prints
``READY``, waits for a line on stdin (so that every worker starts together), runs a
batch and prints one JSON line per outcome, then ``{"done": <count>}``. Logs go to
stderr, each line starting with the ``time.monotonic()`` it was logged at. The API key
comes from ``MONICA_API_KEY``.

    python tests/redis_worker.py --base-url URL --redis-url URL --name w0 --images 20 \\
        --requests 10 --per 1.0 [--seconds 10]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import time
from collections.abc import Iterator

from monica_async import MonicaClient, RedisRateLimit


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Read the worker's options."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--redis-url", required=True)
    parser.add_argument("--name", required=True, help="distinguishes this worker's images")
    parser.add_argument("--images", type=int, required=True)
    parser.add_argument(
        "--seconds", type=float, default=None, help="stop taking new images this long after go"
    )
    parser.add_argument("--requests", type=int, required=True)
    parser.add_argument("--per", type=float, required=True)
    parser.add_argument("--burst", type=int, default=None)
    parser.add_argument("--margin", type=float, default=None)
    parser.add_argument("--key", default="workers")
    parser.add_argument("--on-unavailable", choices=("local", "fail"), default="local")
    parser.add_argument("--fallback-fraction", type=float, default=None)
    parser.add_argument("--concurrency", type=int, default=16)
    return parser.parse_args(argv)


def made_up_urls(name: str, images: int, seconds: float | None) -> Iterator[str]:
    """*images* URLs, fewer if *seconds* pass before the batch asks for the next one."""
    deadline = None if seconds is None else time.monotonic() + seconds
    for i in range(images):
        if deadline is not None and time.monotonic() >= deadline:
            return
        yield f"https://img.example/{name}/{i}.png"


async def run(args: argparse.Namespace) -> None:
    """Wait for the go line, then upscale made-up URLs and report outcomes."""
    limit = RedisRateLimit(
        args.redis_url,
        args.requests,
        args.per,
        burst=args.burst,
        margin=args.margin,
        key=args.key,
        on_unavailable=args.on_unavailable,
        fallback_fraction=args.fallback_fraction,
    )
    async with (
        limit,
        MonicaClient(
            base_url=args.base_url, rate_limit=limit, max_concurrency=args.concurrency
        ) as client,
    ):
        print("READY", flush=True)
        await asyncio.to_thread(sys.stdin.readline)
        count = 0
        urls = made_up_urls(args.name, args.images, args.seconds)
        async for outcome in client.upscale_many(urls):
            count += 1
            error = None if outcome.ok else type(outcome.error).__name__
            print(json.dumps({"index": outcome.index, "error": error}), flush=True)
    print(json.dumps({"done": count}), flush=True)


def stamp(record: logging.LogRecord) -> bool:
    """Give *record* the ``time.monotonic()`` it is logged at, which the tests compare."""
    record.monotonic = time.monotonic()
    return True


def main() -> None:
    """Run one worker."""
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="%(monotonic).6f %(levelname)s %(message)s",
    )
    for handler in logging.getLogger().handlers:
        handler.addFilter(stamp)
    asyncio.run(run(parse_args()))


if __name__ == "__main__":
    main()
