"""``python -m examples.jobs web|worker|batch``: the three commands of the jobs example.

    python -m examples.jobs web [--host 127.0.0.1] [--port 8000]
    python -m examples.jobs worker [--concurrency N] [--reclaim-after S] [--grace S]
    python -m examples.jobs batch urls.txt [--output results.jsonl]

Exit status: 0 on success (batch: every job done), 1 when some batch job failed,
2 when the configuration is unusable.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from .batch import read_urls, run_batch
from .queue import DEFAULT_GRACE, default_reclaim_after
from .settings import Settings, SettingsError
from .web import serve
from .worker import run_worker

ENVIRONMENT = """\
environment:
  MONICA_API_KEY    the key (workers)
  MONICA_BASE_URL   the API's address (workers; default: Monica's)
  REDIS_URL         the queue's and the shared limit's Redis (redis://127.0.0.1:6379/0)
  MONICA_RATE       the key's rate, all workers together (10/min; also 5/s, 10/12s)
  MONICA_IN_FLIGHT  the key's upscales in flight, all workers together (8)
"""


def _positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text!r}")
    return int(text)


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a number > 0, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The command line: ``web``, ``worker`` and ``batch``."""
    parser = argparse.ArgumentParser(
        prog="python -m examples.jobs",
        description="Monica upscales as jobs on a Redis queue.",
        epilog=ENVIRONMENT,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True)

    web = commands.add_parser("web", help="serve POST /jobs and GET /jobs/{id}")
    web.add_argument("--host", default="127.0.0.1", help="address to listen on (%(default)s)")
    web.add_argument("--port", type=int, default=8000, help="port; 0 picks a free one (8000)")

    worker = commands.add_parser("worker", help="run upscale jobs from the queue")
    worker.add_argument(
        "--concurrency",
        type=_positive_int,
        metavar="N",
        help=(
            "jobs this worker runs at once (default: MONICA_IN_FLIGHT). The workers of a "
            "key together should stay within MONICA_IN_FLIGHT: 4 each for two on a key of 8"
        ),
    )
    worker.add_argument(
        "--reclaim-after",
        type=_positive_float,
        metavar="S",
        help=(
            "seconds after which the jobs of a dead worker run elsewhere (default: twice "
            "the time the key takes to start MONICA_IN_FLIGHT upscales, at least 10)"
        ),
    )
    worker.add_argument(
        "--grace",
        type=_positive_int,
        default=DEFAULT_GRACE,
        metavar="S",
        help="seconds a stopping worker gives its running jobs (%(default)s)",
    )

    batch = commands.add_parser("batch", help="enqueue a file of URLs and wait for all of them")
    batch.add_argument("urls", help="a file of image URLs, one per line; - reads stdin")
    batch.add_argument("--output", type=Path, help="JSON lines, one per URL (default: stdout)")
    return parser


async def _serve(settings: Settings, host: str, port: int) -> None:
    runner = await serve(settings, host, port)
    bound = runner.addresses[0]
    print(f"listening on http://{bound[0]}:{bound[1]}", flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


def _worker(settings: Settings, args: argparse.Namespace) -> int:
    api_key = os.environ.get("MONICA_API_KEY")
    if not api_key:
        print("error: set MONICA_API_KEY to the key the worker upscales with", file=sys.stderr)
        return 2
    concurrency = args.concurrency or settings.in_flight
    if concurrency > settings.in_flight:
        print(
            f"error: --concurrency {concurrency} is over the key's MONICA_IN_FLIGHT "
            f"({settings.in_flight})",
            file=sys.stderr,
        )
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    work = run_worker(
        settings,
        api_key=api_key,
        concurrency=concurrency,
        reclaim_after=args.reclaim_after or default_reclaim_after(settings),
        grace=args.grace,
    )
    asyncio.run(work)
    return 0


def _batch(settings: Settings, args: argparse.Namespace) -> int:
    if args.urls == "-":
        urls = read_urls(sys.stdin)
    else:
        with open(args.urls, encoding="utf-8") as source:
            urls = read_urls(source)
    if args.output is None:
        return asyncio.run(run_batch(settings, urls, sys.stdout, sys.stderr))
    with args.output.open("w", encoding="utf-8") as output:
        return asyncio.run(run_batch(settings, urls, output, sys.stderr))


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; return the exit status."""
    args = build_parser().parse_args(argv)
    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.command == "worker":
        return _worker(settings, args)
    if args.command == "batch":
        return _batch(settings, args)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(settings, args.host, args.port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
