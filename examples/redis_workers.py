"""Several worker processes sharing one rate limit through Redis.

Offline, against the fake Monica server (started here) and a local Redis:

    redis-server --save "" --port 6379 &
    python examples/redis_workers.py --workers 4 --redis-url redis://127.0.0.1:6379/0

Each worker process has its own MonicaClient; all of them share 10 requests per
second through Redis. At the end the fake server says how many requests it accepted
and how many fell in its busiest second. Needs the ``redis`` and ``testing`` extras.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
from concurrent.futures import ProcessPoolExecutor

from monica_async import MonicaClient, RedisRateLimit
from monica_async.testing import FakeMonicaServer

API_KEY = "example-key"
REQUESTS, PER = 10, 1.0


async def work(name: str, base_url: str, redis_url: str, images: int) -> int:
    """Upscale *images* made-up URLs under the shared limit; return the successes."""
    limit = RedisRateLimit(redis_url, REQUESTS, PER, key="example:workers")
    urls = [f"https://img.example/{name}/{i}.png" for i in range(images)]
    async with limit, MonicaClient(API_KEY, base_url=base_url, rate_limit=limit) as client:
        outcomes = await client.upscale_all(urls)
    return sum(outcome.ok for outcome in outcomes)


def worker(name: str, base_url: str, redis_url: str, images: int) -> int:
    """The entry point of one worker process."""
    return asyncio.run(work(name, base_url, redis_url, images))


async def main() -> None:
    """Start the fake server, run the workers in processes, report what the server saw."""
    parser = argparse.ArgumentParser(description="worker processes sharing one limit")
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--images", type=int, default=10, help="per worker")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    args = parser.parse_args()

    loop = asyncio.get_running_loop()
    async with FakeMonicaServer(api_key=API_KEY, process_images=False) as server:
        with ProcessPoolExecutor(args.workers) as pool:
            done = await asyncio.gather(
                *(
                    loop.run_in_executor(
                        pool, worker, f"w{n}", server.base_url, args.redis_url, args.images
                    )
                    for n in range(args.workers)
                )
            )
        times = sorted(server.stats.accepted_times)
    busiest = max((bisect.bisect_left(times, t + PER) - i for i, t in enumerate(times)), default=0)
    print(f"workers' successes: {done}")
    print(f"server accepted {len(times)}; busiest {PER:g} s held {busiest} (limit {REQUESTS})")


if __name__ == "__main__":
    asyncio.run(main())
