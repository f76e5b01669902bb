"""A batch through the queue: enqueue a file of URLs, wait for every job, write the outcomes.

The multi-machine alternative to ``monica-upscale run --shard``: the workers, on as
many machines as you like, pull the jobs as they free up, so a slow or lost machine
holds up nothing (its jobs run again elsewhere). This command only enqueues and
waits; it never calls Monica.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from typing import TextIO

from .queue import job_queue
from .settings import Settings

#: Jobs enqueued per round trip to Redis.
CHUNK = 1000


def read_urls(lines: Iterable[str]) -> list[str]:
    """The URLs of *lines*: one per line, blank lines and ``#`` comments skipped."""
    stripped = (line.strip() for line in lines)
    return [line for line in stripped if line and not line.startswith("#")]


async def run_batch(settings: Settings, urls: list[str], output: TextIO, log: TextIO) -> int:
    """Enqueue *urls*, write one JSON line per job to *output* in input order.

    Returns:
        The exit status: 0 when every job is done, 1 when some failed.
    """
    began = time.monotonic()
    queue = job_queue(settings)
    async with queue.worker:
        ids: list[str] = []
        for start in range(0, len(urls), CHUNK):
            ids += await queue.submit_many(urls[start : start + CHUNK])
        print(f"enqueued {len(ids)} jobs; waiting for the workers", file=log, flush=True)
        failed = 0
        # In input order: the queue is first in, first out, so an earlier job is
        # usually finished by the time a later one is, and each wait is short.
        for url, job_id in zip(urls, ids, strict=True):
            job = await queue.wait(job_id)
            failed += job.status == "failed"
            output.write(json.dumps({"url": url, **job.to_json()}) + "\n")
            output.flush()
    elapsed = time.monotonic() - began
    print(f"{len(ids) - failed} done, {failed} failed in {elapsed:.1f} s", file=log, flush=True)
    return 1 if failed else 0
