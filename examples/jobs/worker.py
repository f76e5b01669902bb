"""A worker: runs upscale jobs from the queue, under the key's limit shared in Redis.

Start as many as you like, on any machine that reaches Redis: they share the key's
rate through one ``RedisRateLimit`` (named after a digest of the API key), and each
runs at most ``--concurrency`` jobs at once. SIGTERM or Ctrl-C stops a worker after
its running jobs finish (``--grace`` seconds at most; the rest go back to the queue).
A worker that dies without stopping (SIGKILL, a lost machine) loses nothing: its
jobs run again on another worker after ``--reclaim-after`` seconds.
"""

from __future__ import annotations

import functools
import logging

from .queue import job_queue, monica_worker_state
from .settings import Settings

logger = logging.getLogger("examples.jobs.worker")


async def run_worker(
    settings: Settings, *, api_key: str, concurrency: int, reclaim_after: float, grace: int
) -> None:
    """Run jobs until told to stop."""
    lifespan = functools.partial(monica_worker_state, settings, api_key, concurrency)
    queue = job_queue(
        settings,
        concurrency=concurrency,
        reclaim_after=reclaim_after,
        grace=grace,
        lifespan=lifespan,
    )
    logger.info(
        "worker: %d jobs at once; the key's limit %d per %g s, %d in flight, shared in "
        "Redis; a dead worker's jobs run again after %g s",
        concurrency,
        settings.requests,
        settings.per,
        settings.in_flight,
        reclaim_after,
    )
    await queue.worker.run_async()
