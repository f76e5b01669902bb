"""Run a :class:`FakeMonicaServer` in its own process (``python -m monica_async.testing``)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import signal
import sys
from collections.abc import Callable
from typing import Any

from monica_async._text import RATE_EXAMPLES, parse_rate

from ._server import (
    DEFAULT_API_KEY,
    DEFAULT_HOST,
    FakeMonicaServer,
    Fault,
    Latency,
    documented_limits,
)

__all__ = ["build_parser", "serve_fake_main"]


def _latency(text: str) -> Latency:
    try:
        if "," in text:
            low, high = (float(part) for part in text.split(",", 1))
            if 0 <= low <= high:
                return (low, high)
        elif float(text) >= 0:
            return float(text)
    except ValueError:
        pass
    raise argparse.ArgumentTypeError(
        f"must be seconds >= 0 (0.05) or a range LOW,HIGH with LOW <= HIGH (0.01,0.1), got {text!r}"
    )


def _rate_limit(text: str) -> tuple[int, float]:
    try:
        return parse_rate(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _number(low: float, high: float, what: str) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}")
        return value

    return parse


def _integer(low: int, high: int, what: str) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = low - 1
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}")
        return value

    return parse


def _fault_kinds(text: str) -> dict[Fault, float]:
    try:
        return {Fault(name.strip()): 1.0 for name in text.split(",") if name.strip()}
    except ValueError:
        kinds = ", ".join(fault.value for fault in Fault)
        raise argparse.ArgumentTypeError(f"faults are among {kinds}; got {text!r}") from None


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    """Return the argument parser of :func:`serve_fake_main`."""
    parser = argparse.ArgumentParser(
        prog=prog or "python -m monica_async.testing",
        description=(
            "Serve a fake Monica Upscale API on a local port. Prints 'READY <base_url>' "
            "once listening; stops on SIGINT or SIGTERM. Stats: GET <base_url>/_fake/stats."
        ),
    )
    parser.add_argument("--host", default=DEFAULT_HOST, help="address to listen on (%(default)s)")
    parser.add_argument(
        "--port",
        type=_integer(0, 65535, "a port from 0 to 65535"),
        default=0,
        help="port to listen on; 0 lets the system pick (default)",
    )
    parser.add_argument(
        "--api-key", default=DEFAULT_API_KEY, help="the one API key accepted (%(default)s)"
    )
    parser.add_argument(
        "--any-key", action="store_true", help="accept any non-empty key instead of --api-key"
    )
    parser.add_argument(
        "--latency",
        type=_latency,
        default=None,
        metavar="S",
        help="seconds each answer takes, or a range LOW,HIGH drawn at random (default 0)",
    )
    parser.add_argument(
        "--rate-limit",
        type=_rate_limit,
        default=None,
        metavar="N/UNIT",
        help=(
            f"answer 429 beyond N requests per sliding window and API key: {RATE_EXAMPLES} "
            "(the syntax of run --rate; default: no limit)"
        ),
    )
    parser.add_argument(
        "--max-concurrency",
        type=_integer(1, sys.maxsize, "an integer >= 1"),
        default=None,
        metavar="N",
        help="answer 429 to requests beyond N handled at once (default: no limit)",
    )
    parser.add_argument(
        "--documented-limits",
        action="store_true",
        help="play the limits Monica documents for a new key: 10 requests per minute "
        "(sliding window) and 8 in flight; --rate-limit and --max-concurrency override them",
    )
    parser.add_argument(
        "--time-scale",
        type=_number(0.0, math.inf, "a number > 0"),
        default=None,
        metavar="X",
        help="with --documented-limits, run their window X times faster: 5 gives 10 "
        "requests per 12 s (default 1)",
    )
    parser.add_argument(
        "--quota",
        type=_integer(0, sys.maxsize, "an integer >= 0"),
        default=None,
        metavar="N",
        help="the balance runs out after N successful calls: then 429 insufficient_quota; "
        'top it up with POST <base_url>/_fake/quota {"quota": N} (default: no quota)',
    )
    parser.add_argument(
        "--fault-rate",
        type=_number(0.0, 1.0, "a number from 0 to 1, e.g. 0.1"),
        default=0.0,
        metavar="F",
        help="fraction of requests, 0 to 1, answered with a random fault: 429, 500, 503, "
        "a dropped connection... (default 0)",
    )
    parser.add_argument(
        "--faults",
        type=_fault_kinds,
        default=None,
        metavar="KIND[,KIND]",
        help="inject only these faults at --fault-rate, e.g. http_429 (default: the usual mix)",
    )
    parser.add_argument(
        "--retry-after",
        type=_number(0.0, math.inf, "a number of seconds >= 0"),
        default=1.0,
        metavar="S",
        help="seconds the Retry-After header of a 429 asks for (default %(default)g)",
    )
    parser.add_argument(
        "--no-images", action="store_true", help="answer at once without fetching or resizing"
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=None,
        metavar="N",
        help="seed of the random faults and latencies, for a repeatable run",
    )
    return parser


def serve_fake_main(argv: list[str] | None = None, *, prog: str | None = None) -> int:
    """Parse *argv*, serve until SIGINT/SIGTERM and return the exit status.

    Prints exactly one line, ``READY <base_url>``, to stdout once listening.
    """
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    try:
        limits = _limits(args)
        server = FakeMonicaServer(
            api_key=None if args.any_key else args.api_key,
            host=args.host,
            port=args.port,
            process_images=not args.no_images,
            latency=args.latency,
            rate_limit=limits.get("rate_limit"),
            max_concurrency=limits.get("max_concurrency"),
            quota=args.quota,
            fault_rate=args.fault_rate,
            **({} if args.faults is None else {"fault_weights": args.faults}),
            retry_after=args.retry_after,
            seed=args.seed,
        )
    except ValueError as exc:
        parser.error(str(exc))
    try:
        asyncio.run(_serve(server))
    except ImportError as exc:
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        reason = os.strerror(exc.errno) if exc.errno else str(exc)
        print(
            f"{parser.prog}: error: cannot listen on {args.host} port {args.port}: "
            f"{reason}; choose another --port or --host",
            file=sys.stderr,
        )
        return 2
    except KeyboardInterrupt:  # where the loop cannot take over SIGINT (Windows)
        pass
    return 0


def _limits(args: argparse.Namespace) -> dict[str, Any]:
    """The rate limit and the concurrency cap asked for: the preset, then the flags."""
    if args.time_scale is not None and not args.documented_limits:
        raise ValueError("--time-scale scales --documented-limits: add --documented-limits")
    limits: dict[str, Any] = {}
    if args.documented_limits:
        limits.update(documented_limits(1.0 if args.time_scale is None else args.time_scale))
    if args.rate_limit is not None:
        limits["rate_limit"] = args.rate_limit
    if args.max_concurrency is not None:
        limits["max_concurrency"] = args.max_concurrency
    return limits


async def _serve(server: FakeMonicaServer) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    async with server:
        print(f"READY {server.base_url}", flush=True)
        await stop.wait()
