"""``monica-upscale``: the command line (``run``, ``demo``, ``serve-fake``).

Run it as ``monica-upscale ...`` or ``python -m monica_async ...``. stdout is for
data (the records of ``run -o -``, the ``READY`` line of ``serve-fake``); everything
meant for people goes to stderr. Exit statuses: 0 every input succeeded, 1 some
failed, 2 a usage or configuration error (one line on stderr), 75 the API key's
balance ran out (top it up, then ``--resume``), 130 interrupted (SIGINT or SIGTERM),
141 the reader of ``run -o -`` went away.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Final, NoReturn, TextIO

from monica_async._config import (
    API_KEY_ENV,
    BASE_URL_ENV,
    DEFAULT_BASE_URL,
    DEFAULT_MAX_ATTEMPTS,
    DEFAULT_MAX_CONCURRENCY,
    DEFAULT_TIMEOUT,
    MAX_AUTO_CONCURRENCY,
)
from monica_async._exceptions import InvalidRequestError
from monica_async._storage import ObjectLocation, is_object_url
from monica_async._text import RATE_EXAMPLES
from monica_async._validation import ALLOWED_SCALES
from monica_async._version import __version__

from ._demo import DEMO_MAX_COUNT, DEMO_MIN_COUNT, DEMO_RATE
from ._options import (
    DEFAULT_GRACE,
    InputFormat,
    RateSpec,
    RunOptions,
    ShardSpec,
    UsageError,
)
from ._progress import require_rich
from ._run import EXIT_INTERRUPTED, EXIT_OUTPUT_CLOSED, EXIT_USAGE, execute, resume_command

__all__ = ["entry", "main"]

PROG = "monica-upscale"


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line on stderr, exit status 2."""

    def error(self, message: str) -> NoReturn:
        """Report *message* in one line and exit with status 2."""
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _int_at_least(low: int) -> argparse._ActionType:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = low - 1
        if value < low:
            raise argparse.ArgumentTypeError(f"must be an integer >= {low}, got {text!r}")
        return value

    return parse


def _int_in(low: int, high: int) -> argparse._ActionType:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = low - 1
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(
                f"must be an integer from {low} to {high}, got {text!r}"
            )
        return value

    return parse


def _seconds(allow_zero: bool) -> argparse._ActionType:
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = -1.0
        if not (value >= 0 if allow_zero else value > 0) or value != value or value == float("inf"):
            bound = ">= 0" if allow_zero else "> 0"
            raise argparse.ArgumentTypeError(f"must be a number of seconds {bound}, got {text!r}")
        return value

    return parse


RUN_EXAMPLES: Final = f"""\
examples:
  {PROG} run urls.txt -o results.jsonl
      a file of URLs (or a .csv with a url column, or .jsonl with a url field)
  produce-urls | {PROG} run - -o - | jq -c 'select(.ok | not)'
      URLs from stdin (-), one JSON record per input to stdout (-o -)
  {PROG} run urls.txt -o results.jsonl --rate 10/min --in-flight 8 --download-dir upscaled/
      at most 60 requests a minute (5/s and 10/30s work too), results downloaded
  {PROG} run urls.txt -o results.jsonl --resume
      after Ctrl-C or a crash: skip what succeeded, send the rest again
  {PROG} run urls.txt -o part-0.jsonl --shard 0/4 --rate 60/min \\
      --redis-url redis://localhost:6379/0
      shard 0 of 4 processes that share one rate limit through Redis
  {PROG} run photos/ -o results.jsonl --staging s3://bucket/tmp/ \\
      --download-dir s3://bucket/upscaled/
      the images of a folder, staged in a bucket to be sent, results to the bucket
      (the storage extra; credentials from AWS_ACCESS_KEY_ID etc.)

The API key comes from {API_KEY_ENV} or --api-key-file, never from a flag.
stdout carries only the records (with -o -); progress, notes and the summary go
to stderr. Exit status: 0 all succeeded, 1 some failed, 2 usage error,
75 the key's balance ran out (top it up, then --resume), 130 interrupted,
141 the reader of -o - went away."""


def _verbosity_options(parser: argparse.ArgumentParser) -> None:
    loudness = parser.add_mutually_exclusive_group()
    loudness.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        help="print errors only: no banner, progress or summary",
    )
    loudness.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=0,
        help="-v: show each retry and its reason; -vv: every HTTP attempt too (on stderr; "
        "the API key is never shown)",
    )


def _progress_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--progress",
        choices=["auto", "bar", "plain"],
        default="auto",
        help="a progress bar, or a plain line every few seconds (default auto: a bar when "
        "stderr is a terminal)",
    )


def build_parser() -> argparse.ArgumentParser:
    """The parser for every subcommand."""
    parser = _Parser(
        prog=PROG,
        description="Upscale images with the Monica API, many at a time.",
        epilog=f"Try `{PROG} demo` first: it runs offline. `{PROG} COMMAND --help` tells more.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    run = commands.add_parser(
        "run",
        help="upscale every URL listed in INPUT",
        description=(
            "Upscale every URL listed in INPUT (a text file of URLs, a CSV with a url "
            "column, or JSON Lines with a url field; - reads stdin), writing one JSON "
            "line per input to --output. An input may also be an object URL (s3://, "
            "gs://, az://) or, with --staging, a local file; INPUT may be a directory "
            "of images."
        ),
        epilog=RUN_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    run.add_argument(
        "input",
        metavar="INPUT",
        help="file of URLs, - for stdin, or a directory of images (needs --staging)",
    )
    run.add_argument(
        "-o",
        "--output",
        required=True,
        metavar="FILE",
        help="results file, one JSON line per input (appended to with --resume); "
        "- writes them to stdout",
    )
    run.add_argument(
        "--download-dir",
        metavar="DIR",
        help="download each result into DIR, or into an object prefix such as s3://bucket/out/",
    )
    run.add_argument(
        "--staging",
        metavar="URL",
        help="upload local files here (s3://bucket/tmp/, gs://..., az://...) to send them",
    )
    run.add_argument(
        "--concurrency",
        type=_int_at_least(1),
        default=None,
        metavar="N",
        help="requests (and downloads) in flight at most (default: automatic, from the "
        f"rate and the latency, {DEFAULT_MAX_CONCURRENCY} to {MAX_AUTO_CONCURRENCY})",
    )
    run.add_argument(
        "--rate",
        metavar="N/UNIT",
        help=f"your key's rate limit, e.g. {RATE_EXAMPLES} (a new Monica key: 10/min); "
        "retries count too (default: adaptive, no limit until the server answers 429)",
    )
    run.add_argument(
        "--in-flight",
        type=_int_at_least(1),
        default=None,
        metavar="N",
        help="requests your key allows at once (a new Monica key: 8): the automatic "
        "concurrency never passes it",
    )
    run.add_argument(
        "--scale", type=int, choices=ALLOWED_SCALES, default=2, help="scale factor (default 2)"
    )
    run.add_argument(
        "--resume",
        action="store_true",
        help="skip inputs whose latest line in --output is a success (not with -o -)",
    )
    run.add_argument(
        "--shard", metavar="K/N", help="take only inputs whose line number is K modulo N"
    )
    run.add_argument(
        "--redis-url", metavar="URL", help="share --rate between processes through this Redis"
    )
    run.add_argument(
        "--base-url",
        metavar="URL",
        help=f"API root (default: {BASE_URL_ENV}, else {DEFAULT_BASE_URL})",
    )
    run.add_argument(
        "--allow-insecure-http",
        action="store_true",
        help="accept a plain http:// --base-url (and result URLs) on another machine; "
        "the API key then travels unencrypted",
    )
    run.add_argument(
        "--retries",
        type=_int_at_least(0),
        metavar="N",
        help=f"retries per input (default {DEFAULT_MAX_ATTEMPTS - 1})",
    )
    run.add_argument(
        "--timeout",
        type=_seconds(False),
        metavar="S",
        help=f"seconds per attempt (default {DEFAULT_TIMEOUT.total:g})",
    )
    run.add_argument(
        "--api-key-file", metavar="FILE", help=f"read the API key from FILE, not {API_KEY_ENV}"
    )
    run.add_argument(
        "--grace",
        type=_seconds(True),
        default=DEFAULT_GRACE,
        metavar="S",
        help=f"after Ctrl-C, seconds for requests in flight to finish (default {DEFAULT_GRACE:g})",
    )
    run.add_argument(
        "--input-format",
        choices=[f.value for f in InputFormat],
        default="auto",
        help="format of INPUT (default: from the extension, else from the first line)",
    )
    _progress_option(run)
    _verbosity_options(run)

    demo = commands.add_parser(
        "demo",
        help="an offline demonstration against a local fake server",
        description=(
            "Start a fake Monica server on 127.0.0.1, draw sample pictures and upscale "
            "them with the real `run` code, showing retries, rate limits and errors; "
            "write the results and an index.html gallery. Four inputs fail on purpose."
        ),
    )
    demo.add_argument(
        "--count",
        type=_int_in(DEMO_MIN_COUNT, DEMO_MAX_COUNT),
        default=24,
        metavar="N",
        help=f"pictures, {DEMO_MIN_COUNT} to {DEMO_MAX_COUNT} (default 24): four fail on "
        f"purpose, the rest are paced at {DEMO_RATE}",
    )
    demo.add_argument(
        "--output-dir",
        default="monica-demo",
        metavar="DIR",
        help="where to write the pictures, results and gallery (default ./monica-demo)",
    )
    demo.add_argument(
        "--seed",
        type=int,
        default=7,
        metavar="N",
        help="seed of the pictures and faults: the same seed, the same demo (default 7)",
    )
    demo.add_argument(
        "--quota",
        type=_int_at_least(0),
        default=None,
        metavar="N",
        help="the fake key's balance runs out after N successful calls: see the run stop, "
        "then the demo tops the balance up and resumes",
    )
    demo.add_argument(
        "--documented-limits",
        action="store_true",
        help="the fake server plays Monica's default limits for a new key, 5 times faster "
        "(10 requests per 12 s, 8 in flight), and the run its defaults instead of "
        f"{DEMO_RATE}",
    )
    _progress_option(demo)
    _verbosity_options(demo)

    commands.add_parser(
        "serve-fake",
        help="run the fake Monica server until Ctrl-C (see serve-fake --help)",
        add_help=False,
    )
    return parser


def _api_key(key_file: str | None) -> str:
    if key_file is not None:
        try:
            key = Path(key_file).read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
            raise UsageError(f"cannot read --api-key-file {key_file!r}: {reason}") from None
        if not key:
            raise UsageError(f"--api-key-file {key_file!r} is empty")
        return key
    key = os.environ.get(API_KEY_ENV, "").strip()
    if not key:
        raise UsageError(f"no API key: set {API_KEY_ENV}, or pass --api-key-file FILE")
    return key


def _progress(choice: str) -> bool | None:
    return {"auto": None, "bar": True, "plain": False}[choice]


def _verbosity(args: argparse.Namespace) -> int:
    return -1 if args.quiet else min(2, args.verbose)


def run_options(args: argparse.Namespace, resume_hint: str | None) -> RunOptions:
    """Check the ``run`` arguments and turn them into :class:`RunOptions`."""
    rate = None if args.rate is None else RateSpec.parse(args.rate)
    shard = None if args.shard is None else ShardSpec.parse(args.shard)
    if args.redis_url is not None and rate is None:
        raise UsageError("--redis-url needs --rate: the limit the shards share, e.g. 60/min")
    if args.in_flight is not None and args.concurrency is not None:
        raise UsageError(
            "give --in-flight (what your key allows at once) or --concurrency (a fixed "
            "number), not both"
        )
    download_dir = download_prefix = None
    if args.download_dir is not None and is_object_url(args.download_dir):
        download_prefix = _object_prefix("--download-dir", args.download_dir)
    elif args.download_dir is not None:
        download_dir = Path(args.download_dir)
    staging = None if args.staging is None else _object_prefix("--staging", args.staging)
    return RunOptions(
        input=args.input,
        output=Path(args.output),
        api_key=_api_key(args.api_key_file),
        download_dir=download_dir,
        download_prefix=download_prefix,
        staging=staging,
        concurrency=args.concurrency,
        in_flight=args.in_flight,
        rate=rate,
        scale=args.scale,
        resume=args.resume,
        shard=shard,
        redis_url=args.redis_url,
        base_url=args.base_url,
        retries=args.retries,
        timeout=args.timeout,
        grace=args.grace,
        input_format=InputFormat(args.input_format),
        resume_command=resume_hint,
        progress_bar=_progress(args.progress),
        allow_insecure_http=args.allow_insecure_http,
        verbosity=_verbosity(args),
    )


def _object_prefix(flag: str, url: str) -> str:
    try:
        return ObjectLocation.parse(url, what=flag, prefix=True).url
    except InvalidRequestError as exc:
        raise UsageError(str(exc)) from None


def _prog_for_hint() -> str:
    name = os.path.basename(sys.argv[0]) if sys.argv else ""
    if name.startswith(PROG):
        return PROG
    return f"{shlex.quote(sys.executable)} -m monica_async"


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line with *argv* (default: ``sys.argv[1:]``); return the exit status."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list[:1] == ["serve-fake"]:
        return _serve_fake(args_list[1:])
    args = build_parser().parse_args(args_list)
    try:
        require_rich()
        if args.command == "demo":
            from ._demo import run_demo

            return asyncio.run(
                run_demo(
                    count=args.count,
                    output_dir=Path(args.output_dir),
                    seed=args.seed,
                    progress_bar=_progress(args.progress),
                    verbosity=_verbosity(args),
                    quota=args.quota,
                    documented_limits=args.documented_limits,
                )
            )
        options = run_options(args, resume_command(_prog_for_hint(), args_list))
        status = asyncio.run(execute(options))
        if status == EXIT_OUTPUT_CLOSED:
            _silence(sys.stdout)
        _silence_if_closed(sys.stderr)
        return status
    except UsageError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr, flush=True)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr, flush=True)
        return EXIT_INTERRUPTED


def entry() -> NoReturn:
    """The ``monica-upscale`` program: :func:`main`, then exit with its status.

    Once obstore has run, the process ends without the interpreter's finalization,
    its output flushed. A thread of obstore's runtime that has just completed a
    Python future may still be on its way back: pyo3-async-runtimes completes one
    with ``loop.call_soon_threadsafe``, which releases the GIL around its write to
    the loop's wake-up socket. If the main thread finalizes the interpreter in that
    moment, taking the GIL back ends the thread with ``pthread_exit`` (Python up to
    3.13), whose unwinding cannot cross Rust frames: the process aborts (SIGABRT,
    status 134) after everything was printed, in about one run of two after a
    credential failure. Ending with ``os._exit`` leaves no finalization to race.
    """
    status = main()
    if "obstore" in sys.modules:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(OSError, ValueError):
                stream.flush()
        logging.shutdown()
        os._exit(status)
    sys.exit(status)


def _silence(stream: TextIO) -> None:
    """Point *stream* at /dev/null, so that the flush at exit does not fail once more."""
    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, stream.fileno())
        os.close(devnull)


def _silence_if_closed(stream: TextIO) -> None:
    """Silence *stream* if its reader went away (``2>&1 | head -1``).

    What could not be written is still buffered; the flush at exit would fail, and
    Python would then exit with status 120 instead of the run's own.
    """
    try:
        stream.flush()
    except BrokenPipeError:
        _silence(stream)


def _serve_fake(argv: list[str]) -> int:
    try:
        from monica_async.testing import serve_fake_main
    except ImportError as exc:
        print(f"{PROG}: error: serve-fake is unavailable: {exc}", file=sys.stderr, flush=True)
        return EXIT_USAGE
    return serve_fake_main(argv, prog=f"{PROG} serve-fake")
