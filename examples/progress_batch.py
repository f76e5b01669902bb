"""Upscale a list of image URLs with a progress bar.

    MONICA_API_KEY=... python examples/progress_batch.py urls.txt --output results.jsonl

``urls.txt`` holds one image URL per line (blank lines and ``#`` comments are
skipped); ``-`` reads the list from stdin. Each input gets one JSON line in
``--output`` as it finishes, and a summary is printed at the end. The exit status
is 0 when every input succeeded, 1 when some failed, 2 when the batch could not run.

The client reads ``MONICA_API_KEY`` and ``MONICA_BASE_URL`` from the environment, so
the same script runs against the real service and against the fake server of
``monica_async.testing``. Needs rich (the ``cli`` extra).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import time
from pathlib import Path
from typing import TextIO

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from monica_async import MonicaClient, MonicaError, Outcome, RateLimit


def read_urls(source: TextIO) -> list[str]:
    """The URLs of *source*: one per line, blank lines and ``#`` comments skipped."""
    urls: list[str] = []
    for line in source:
        line = line.strip()
        if line and not line.startswith("#"):
            urls.append(line)
    return urls


def record(outcome: Outcome) -> dict[str, object]:
    """One line of the results file."""
    return {
        "index": outcome.index,
        "source": outcome.source,
        "ok": outcome.ok,
        "image": outcome.result.url if outcome.ok else None,
        "attempts": outcome.result.attempts if outcome.ok else None,
        "error": None if outcome.ok else f"{type(outcome.error).__name__}: {outcome.error}",
    }


async def upscale_list(
    urls: list[str], results: TextIO, *, concurrency: int, per_minute: int | None
) -> list[Outcome]:
    """Upscale *urls* with a progress bar on stderr; return the failed outcomes."""
    limit = None if per_minute is None else RateLimit(per_minute, per=60.0)
    failed: list[Outcome] = []
    progress = Progress(
        TextColumn("upscaling"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("[green]{task.fields[ok]} ok[/] [red]{task.fields[failed]} failed[/]"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
    )
    async with MonicaClient(max_concurrency=concurrency, rate_limit=limit) as client:
        with progress:
            bar = progress.add_task("upscaling", total=len(urls), ok=0, failed=0)
            # aclosing: leaving the loop early (Ctrl-C) cancels the requests in flight now.
            async with contextlib.aclosing(client.upscale_many(urls)) as outcomes:
                async for outcome in outcomes:
                    results.write(json.dumps(record(outcome)) + "\n")
                    if not outcome.ok:
                        failed.append(outcome)
                    done = progress.tasks[bar].completed + 1
                    progress.update(bar, completed=done, failed=len(failed), ok=done - len(failed))
    return failed


def main(argv: list[str] | None = None) -> int:
    """Run the batch; return the exit status."""
    parser = argparse.ArgumentParser(description="Upscale a list of image URLs.")
    parser.add_argument("urls", help="a file with one URL per line, or - for stdin")
    parser.add_argument("--output", "-o", default="results.jsonl", help="JSON Lines results")
    parser.add_argument("--concurrency", type=int, default=16, help="requests at once")
    parser.add_argument("--rate", type=int, default=None, help="at most N requests a minute")
    args = parser.parse_args(argv)

    try:
        if args.urls == "-":
            urls = read_urls(sys.stdin)
        else:
            with open(args.urls, encoding="utf-8") as source:
                urls = read_urls(source)
    except OSError as exc:
        print(f"error: cannot read {args.urls}: {exc.strerror}", file=sys.stderr)
        return 2

    began = time.monotonic()
    try:
        with Path(args.output).open("w", encoding="utf-8") as results:
            failed = asyncio.run(
                upscale_list(urls, results, concurrency=args.concurrency, per_minute=args.rate)
            )
    except MonicaError as exc:  # no API key, or an invalid option: nothing was sent
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"interrupted; the results so far are in {args.output}", file=sys.stderr)
        return 130

    elapsed = time.monotonic() - began
    print(f"{len(urls) - len(failed)} succeeded, {len(failed)} failed in {elapsed:.1f}s")
    for outcome in failed:
        print(f"  #{outcome.index} {outcome.source}: {outcome.error}")
    print(f"results: {args.output}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
