"""Run a :class:`FakeMonicaServer` in its own process (``python -m monica_async.testing``)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys

from ._server import DEFAULT_API_KEY, DEFAULT_HOST, FakeMonicaServer, Fault, Latency

__all__ = ["build_parser", "serve_fake_main"]


def _latency(text: str) -> Latency:
    try:
        if "," in text:
            low, high = (float(part) for part in text.split(",", 1))
            return (low, high)
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected seconds (0.05) or a range LOW,HIGH (0.01,0.1), got {text!r}"
        ) from None


def _rate_limit(text: str) -> tuple[int, float]:
    requests, sep, per = text.partition("/")
    try:
        if not sep:
            raise ValueError
        return (int(requests), float(per))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected REQUESTS/SECONDS, e.g. 60/60, got {text!r}"
        ) from None


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
    parser.add_argument("--port", type=int, default=0, help="port; 0 lets the OS pick (default)")
    parser.add_argument("--api-key", default=DEFAULT_API_KEY, help="accepted key (%(default)s)")
    parser.add_argument(
        "--any-key", action="store_true", help="accept any non-empty key instead of --api-key"
    )
    parser.add_argument(
        "--latency", type=_latency, default=None, metavar="S", help="seconds, or LOW,HIGH"
    )
    parser.add_argument(
        "--rate-limit",
        type=_rate_limit,
        default=None,
        metavar="N/PER",
        help="per-key sliding window, e.g. 60/60",
    )
    parser.add_argument("--max-concurrency", type=int, default=None, metavar="N")
    parser.add_argument("--fault-rate", type=float, default=0.0, metavar="F")
    parser.add_argument(
        "--faults",
        type=_fault_kinds,
        default=None,
        metavar="KIND[,KIND]",
        help="inject only these faults at --fault-rate, e.g. http_429 (default: the usual mix)",
    )
    parser.add_argument("--retry-after", type=float, default=1.0, metavar="S")
    parser.add_argument(
        "--no-images", action="store_true", help="answer at once without fetching or resizing"
    )
    parser.add_argument("--seed", type=int, default=None, metavar="N")
    return parser


def serve_fake_main(argv: list[str] | None = None, *, prog: str | None = None) -> int:
    """Parse *argv*, serve until SIGINT/SIGTERM and return the exit status.

    Prints exactly one line, ``READY <base_url>``, to stdout once listening.
    """
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    try:
        server = FakeMonicaServer(
            api_key=None if args.any_key else args.api_key,
            host=args.host,
            port=args.port,
            process_images=not args.no_images,
            latency=args.latency,
            rate_limit=args.rate_limit,
            max_concurrency=args.max_concurrency,
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
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # where the loop cannot take over SIGINT (Windows)
        pass
    return 0


async def _serve(server: FakeMonicaServer) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    async with server:
        print(f"READY {server.base_url}", flush=True)
        await stop.wait()
