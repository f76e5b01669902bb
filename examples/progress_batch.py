"""Upscale a list of image URLs with a progress bar.

    MONICA_API_KEY=... python examples/progress_batch.py urls.txt -o results.jsonl --rate 60/min

``urls.txt`` holds one image URL per line (blank lines and ``#`` comments are
skipped); ``-`` reads the list from stdin. Each input gets one JSON line in
``--output`` as it finishes, and a summary is printed at the end. ``--rate`` is
written as for ``monica-upscale run``: ``60/min``, ``5/s``, ``1000/h``. The exit status
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

#: Seconds in each unit of a rate.
UNITS = {"s": 1.0, "min": 60.0, "h": 3600.0}


def rate(text: str) -> RateLimit:
    """A rate written as ``monica-upscale run --rate`` takes it: ``60/min``, ``5/s``, ``1000/h``."""
    count, _, unit = text.partition("/")
    if not count.strip().isdigit() or int(count) < 1 or unit.strip() not in UNITS:
        raise argparse.ArgumentTypeError(f"must look like 60/min, 5/s or 1000/h, got {text!r}")
    return RateLimit(int(count), per=UNITS[unit.strip()])


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
    urls: list[str], results: TextIO, *, concurrency: int, limit: RateLimit | None
) -> list[Outcome]:
    """Upscale *urls* with a progress bar on stderr; return the failed outcomes."""
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


def build_parser() -> argparse.ArgumentParser:
    """The script's options."""
    parser = argparse.ArgumentParser(description="Upscale a list of image URLs.")
    parser.add_argument("urls", help="a file with one URL per line, or - for stdin")
    parser.add_argument("--output", "-o", default="results.jsonl", help="JSON Lines results")
    parser.add_argument("--concurrency", type=int, default=16, help="requests at once")
    parser.add_argument("--rate", type=rate, default=None, help="at most so many, e.g. 60/min")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the batch; return the exit status."""
    args = build_parser().parse_args(argv)

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
                upscale_list(urls, results, concurrency=args.concurrency, limit=args.rate)
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
