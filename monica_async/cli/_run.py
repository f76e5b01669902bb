"""``monica-upscale run``: upscale every URL of an input, recording each outcome.

The flow: inputs are streamed from a reader thread (never held in a list) into
``MonicaClient.upscale_many``; each outcome (and its download, if asked for) is
appended to the results file as soon as it is known. ``--resume`` skips what the
results file says succeeded; ``--shard`` keeps one residue class of line numbers.

Streams: stdout carries only data (the records, with ``--output -``); the banner,
progress, notes, log records and summary go to stderr.

Stopping: the first SIGINT or SIGTERM stops taking inputs; inputs still waiting for
the rate limiter (or between retries) are dropped without a record, requests in
flight get ``grace`` seconds to finish and be recorded; a second signal, or the end
of the grace period, cancels them. Nothing cancelled is recorded, so ``--resume``
sends it again.

An error every further request would get stops the run the same way, at once: a
refused key (exit status 2) or a spent balance (:data:`EXIT_QUOTA`, with the command
that resumes once the balance is topped up).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import signal
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import IO, Any, Final, TextIO
from urllib.parse import urlsplit

from monica_async._client import MonicaClient
from monica_async._config import (
    BASE_URL_ENV,
    DEFAULT_BASE_URL,
    MAX_AUTO_CONCURRENCY,
    Limits,
    RetryPolicy,
)
from monica_async._download import remove_stale_temporaries
from monica_async._exceptions import (
    APIError,
    AuthenticationError,
    InvalidRequestError,
    MonicaError,
    PermissionDeniedError,
    QuotaExceededError,
    StorageError,
)
from monica_async._models import Outcome, UpscaleResult
from monica_async._ratelimit import AdaptiveRateLimit, RateLimit, RateLimiter
from monica_async._stats import ClientStats
from monica_async._storage import CHECK_NAME, ObjectLocation, Storage
from monica_async._validation import is_loopback_host

from ._buckets import check_input_stores, clean_unfinished_uploads
from ._directory import DirectorySource, open_directory
from ._inputs import CHUNK, InputRecord, InputSource, count_inputs, open_input, stream_inputs
from ._options import RunOptions, UsageError
from ._output import (
    ResultLog,
    StreamLog,
    download_name,
    error_fields,
    input_key,
    now_iso,
    problem_record,
    read_done,
)
from ._progress import (
    BarReporter,
    PlainReporter,
    QuietReporter,
    Reporter,
    Tally,
    log_through,
    summary,
)

__all__ = [
    "EXIT_FAILED",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_OUTPUT_CLOSED",
    "EXIT_QUOTA",
    "EXIT_USAGE",
    "execute",
]

EXIT_OK: Final = 0
EXIT_FAILED: Final = 1
EXIT_USAGE: Final = 2
#: The key's balance is spent: top it up, then ``--resume``. ``EX_TEMPFAIL`` of
#: sysexits.h, "try again later".
EXIT_QUOTA: Final = 75
EXIT_INTERRUPTED: Final = 130
#: The reader of ``--output -`` went away: the status of a process killed by SIGPIPE.
EXIT_OUTPUT_CLOSED: Final = 141

#: Seconds between two refreshes of the progress display.
TICK: Final = 0.2
#: Errors every further request of the run would get too: they stop it at once.
_RUN_STOPPERS: Final = (AuthenticationError, PermissionDeniedError, QuotaExceededError)
#: Failures (their record's error type) that no retry can turn into a success: the
#: input itself is wrong (not a URL, a line that cannot be read).
_NEVER_SUCCEED: Final = frozenset({"InputError", "InvalidRequestError"})


class _Stopped(MonicaError):
    """Raised in place of an attempt that had not started when the run was stopped."""


class _StoppableLimiter:
    """Wraps the real limiter so that a stop frees every caller waiting for a slot.

    Those callers have sent nothing (or are between retries): ending them at once
    is what lets a stopped run wait only for the requests really in flight.
    """

    def __init__(self, inner: RateLimiter) -> None:
        self.inner = inner
        self.stopped = asyncio.Event()

    def __repr__(self) -> str:
        return repr(self.inner)

    def __getattr__(self, name: str) -> Any:
        # The client sizes its concurrency from the limiter's rate and burst
        # (``requests``, ``per``, ``rate``, ``effective_burst``): show the inner one's.
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)

    async def acquire(self) -> float:
        """Wait for the inner limiter, unless the run stops first."""
        if self.stopped.is_set():
            raise _Stopped("the run was stopped before this attempt started")
        slot = asyncio.ensure_future(self.inner.acquire())
        stop = asyncio.ensure_future(self.stopped.wait())
        try:
            await asyncio.wait({slot, stop}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
            if not slot.done():
                slot.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await slot
        if slot.cancelled():
            raise _Stopped("the run was stopped before this attempt started")
        return slot.result()

    async def on_rate_limited(self, retry_after: float | None, started: float) -> float:
        """Forward to the inner limiter."""
        return await self.inner.on_rate_limited(retry_after, started)

    async def on_success(self, started: float) -> None:
        """Forward to the inner limiter."""
        await self.inner.on_success(started)

    async def aclose(self) -> None:
        """Forward to the inner limiter."""
        await self.inner.aclose()


def _limiter(options: RunOptions) -> RateLimiter:
    rate = options.rate
    if options.redis_url is not None:
        if rate is None:
            raise UsageError("--redis-url needs --rate: the limit the shards share, e.g. 60/min")
        from monica_async._redis import RedisRateLimit

        # One budget per API key, shared by every process using it; Redis stores the
        # name in clear, so it holds a digest of the key, never the key.
        digest = hashlib.sha256(options.api_key.encode()).hexdigest()[:16]
        try:
            return RedisRateLimit(
                options.redis_url, rate.requests, per=rate.per, key=f"monica-upscale:{digest}"
            )
        except ModuleNotFoundError:
            raise UsageError(
                '--redis-url needs the redis package: pip install "monica-async[redis]"'
            ) from None
        except InvalidRequestError as exc:
            raise UsageError(
                f"--redis-url must be a URL such as redis://localhost:6379/0 ({exc})"
            ) from None
    if rate is None:
        return AdaptiveRateLimit()
    return RateLimit(rate.requests, per=rate.per)


def _base_url(options: RunOptions) -> str:
    """The API root to use, checked here so that a refusal names the flag to change."""
    if options.base_url is not None:
        url, where = options.base_url, "--base-url"
    elif os.environ.get(BASE_URL_ENV):
        url, where = os.environ[BASE_URL_ENV], BASE_URL_ENV
    else:
        return DEFAULT_BASE_URL
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
        raise UsageError(
            f"{where} must be an absolute http(s) URL without query or fragment, such as "
            f"{DEFAULT_BASE_URL}, got {url!r}"
        )
    if _plain_http_elsewhere(url) and not options.allow_insecure_http:
        raise UsageError(
            f"{where} {url!r} is plain http: the API key would travel unencrypted; use "
            "https, or add --allow-insecure-http if this network is trusted"
        )
    return url


def _plain_http_elsewhere(url: str) -> bool:
    """Tell whether *url* is plain http to another machine."""
    parts = urlsplit(url)
    return parts.scheme.lower() == "http" and not is_loopback_host(parts.hostname)


def _client(options: RunOptions, limiter: RateLimiter) -> MonicaClient:
    retry = None if options.retries is None else RetryPolicy(max_attempts=options.retries + 1)
    kwargs: dict[str, Any] = {}
    if options.timeout is not None:
        kwargs["timeout"] = options.timeout
    return MonicaClient(
        options.api_key,
        base_url=_base_url(options),
        retry=retry,
        max_concurrency=options.concurrency,
        rate_limit=limiter,
        limits=Limits(in_flight=options.in_flight),
        allow_insecure_http=options.allow_insecure_http,
        staging=options.staging,
        **kwargs,
    )


def _disk_error(error: OSError, path: Path | str) -> OSError:
    """*error* of writing a download, naming the file and the option that chose its place."""
    return type(error)(f"cannot write {str(path)!r} (--download-dir): {error.strerror or error}")


def _success(
    record: InputRecord, result: UpscaleResult, began: float, path: str | None
) -> dict[str, Any]:
    return {
        "line": record.line,
        "source": record.source,
        "ok": True,
        "result": result.url,
        "path": path,
        "attempts": result.attempts,
        "elapsed": round(time.monotonic() - began, 3),
        "request_id": result.request_id,
        "error": None,
        "time": now_iso(),
    }


def _failure(
    record: InputRecord,
    error: Exception,
    began: float,
    *,
    stage: str,
    result: UpscaleResult | None = None,
) -> dict[str, Any]:
    if result is not None:
        attempts, request_id = result.attempts, result.request_id
    elif isinstance(error, APIError):
        attempts, request_id = error.attempts, error.request_id
    else:
        attempts, request_id = 0, None
    return {
        "line": record.line,
        "source": record.source,
        "ok": False,
        "result": None if result is None else result.url,
        "path": None,
        "attempts": attempts,
        "elapsed": round(time.monotonic() - began, 3),
        "request_id": request_id,
        "error": error_fields(error, stage),
        "time": now_iso(),
    }


class _Run:
    """One execution of ``run``: the state shared by its coroutines."""

    def __init__(
        self,
        options: RunOptions,
        source: InputSource | DirectorySource,
        log: ResultLog | StreamLog,
        client: MonicaClient,
        limiter: _StoppableLimiter,
        reporter: Reporter,
        tally: Tally,
        done: set[int],
    ) -> None:
        self.options = options
        self.source = source
        self.log = log
        self.client = client
        self.limiter = limiter
        self.reporter = reporter
        self.tally = tally
        self.done = done
        self.stop = asyncio.Event()
        self.interrupted = False
        #: The reader of ``--output -`` went away: nothing more can be recorded.
        self.output_closed = False
        self.consumer: asyncio.Task[None] | None = None
        #: The error that stopped the run because every request would get it.
        self.refusal: MonicaError | None = None
        self.taken: dict[int, tuple[InputRecord, float]] = {}
        self.downloads: set[asyncio.Task[None]] = set()
        # Automatic concurrency can grow to its ceiling: downloads may follow it.
        self.download_slots = asyncio.Semaphore(options.concurrency or MAX_AUTO_CONCURRENCY)
        self.records = stream_inputs(self.source, self.keep, self.stop)
        #: The first inputs, read before the run starts (see check_stores).
        self.ahead: list[InputRecord] = []

    # -- inputs -------------------------------------------------------------------

    def keep(self, record: InputRecord) -> bool:
        """Tell whether this run handles *record* (runs in the reader thread)."""
        shard = self.options.shard
        if shard is not None and not shard.takes(record.line):
            return False
        if self.done and input_key(record.line, record.source) in self.done:
            self.tally.skipped += 1
            return False
        return True

    async def check_stores(self) -> None:
        """Read the first inputs ahead, and stop if a bucket they name cannot be read."""
        try:
            async for record in self.records:
                self.ahead.append(record)
                if len(self.ahead) >= CHUNK:
                    break
            await check_input_stores(self.ahead)
        except BaseException:
            await self.records.aclose()
            raise

    async def inputs(self) -> AsyncIterator[InputRecord]:
        """The inputs read ahead, then the rest."""
        ahead, self.ahead = self.ahead, []
        for record in ahead:
            yield record
        async for record in self.records:
            yield record

    async def urls(self) -> AsyncIterator[str]:
        """The URLs for ``upscale_many``; remembers which input each batch index is."""
        index = 0
        async for record in self.inputs():
            if record.url is None:
                self.write(problem_record(record), ok=False, error_type="InputError")
                continue
            # upscale_many numbers inputs in the order it pulls them, from 0.
            self.taken[index] = (record, time.monotonic())
            index += 1
            yield record.url

    # -- records ------------------------------------------------------------------

    def write(self, line: dict[str, Any], *, ok: bool, error_type: str = "") -> None:
        """Append one record and count it."""
        if self.output_closed:
            return
        try:
            self.log.write(line)
        except BrokenPipeError:
            # Like `yes | head`: the reader has what it wanted; stop without a fuss.
            self.output_closed = True
            self.request_stop()
            if self.consumer is not None:
                self.consumer.cancel()
            return
        if ok:
            self.tally.succeeded += 1
        else:
            self.tally.failed[error_type] += 1

    def settle(self, outcome: Outcome) -> None:
        """Record an outcome, or start its download."""
        record, began = self.taken.pop(outcome.index)
        if not outcome.ok:
            error = outcome.error
            if isinstance(error, _Stopped):
                return
            # An input the client refused to send (not a URL, an object it could not
            # read, a file it could not stage) failed at the input stage.
            stage = "input" if isinstance(error, InvalidRequestError | StorageError) else "upscale"
            self.write(
                _failure(record, error, began, stage=stage),
                ok=False,
                error_type=type(error).__name__,
            )
            if isinstance(error, _RUN_STOPPERS):
                self.fail_fast(error)
            return
        if not self.options.downloads:
            self.write(_success(record, outcome.result, began, None), ok=True)
            return
        task = asyncio.create_task(self.download(record, outcome.result, began))
        self.downloads.add(task)
        task.add_done_callback(self.downloads.discard)

    async def download(self, record: InputRecord, result: UpscaleResult, began: float) -> None:
        """Download one result and record the input (a failed download fails the input)."""
        name = download_name(record.line, record.source, result.url)
        prefix = self.options.download_prefix
        path: Path | str
        if prefix is not None:
            path = ObjectLocation.parse(prefix, what="--download-dir", prefix=True).child(name).url
        else:
            assert self.options.download_dir is not None
            path = self.options.download_dir / name
        try:
            if _plain_http_elsewhere(result.url) and not self.options.allow_insecure_http:
                raise InvalidRequestError(
                    f"the result URL is plain http from {urlsplit(result.url).hostname!r}; "
                    "add --allow-insecure-http to download it anyway"
                )
            await self.client.download(result, path)
        except (MonicaError, OSError) as exc:  # OSError: the local disk, not the API
            error = _disk_error(exc, path) if isinstance(exc, OSError) else exc
            self.write(
                _failure(record, error, began, stage="download", result=result),
                ok=False,
                error_type=type(exc).__name__,
            )
        else:
            self.write(_success(record, result, began, str(path)), ok=True)
        finally:
            self.download_slots.release()

    def fail_fast(self, error: MonicaError) -> None:
        """Stop after an error that every further request would get too."""
        if self.refusal is None:
            self.refusal = error
            self.request_stop()

    # -- the batch ------------------------------------------------------------------

    async def consume(self) -> None:
        """Run the batch to its end (or to a stop), then wait for the downloads."""
        stream = self.client.upscale_many(
            self.urls(), scale=self.options.scale, workers=self.options.concurrency
        )
        try:
            async with contextlib.aclosing(stream):
                async for outcome in stream:
                    if self.options.downloads and outcome.ok:
                        # Back-pressure: no more downloads at once than requests.
                        await self.download_slots.acquire()
                    self.settle(outcome)
            if self.downloads:
                await asyncio.gather(*self.downloads)
        finally:
            for task in list(self.downloads):
                task.cancel()
            if self.downloads:
                await asyncio.gather(*self.downloads, return_exceptions=True)

    def request_stop(self) -> None:
        """Stop taking inputs and free the callers waiting for the rate limiter."""
        self.stop.set()
        self.limiter.stopped.set()

    async def ticker(self) -> None:
        """Refresh the progress display until cancelled."""
        while True:
            await asyncio.sleep(TICK)
            self.reporter.tick(self.client.stats)


#: Called once a run has ended, with what it counted and the client's counters.
OnFinish = Callable[[Tally, ClientStats], None]


async def execute(
    options: RunOptions,
    *,
    stdin: IO[bytes] | None = None,
    out: TextIO | None = None,
    err: TextIO | None = None,
    on_finish: OnFinish | None = None,
) -> int:
    """Run ``monica-upscale run`` with *options*; return the exit status.

    *out* (stdout) receives only the records, and only with ``--output -``;
    everything meant for people goes to *err* (stderr). Usage errors are printed
    there as one line (exit status 2); nothing raises for them.
    """
    out = sys.stdout if out is None else out
    err = sys.stderr if err is None else err
    try:
        return await _execute(options, stdin, out, err, on_finish)
    except UsageError as exc:
        print(f"monica-upscale: error: {exc}", file=err, flush=True)
        return EXIT_USAGE


def _reporter(options: RunOptions, tally: Tally, out: TextIO, err: TextIO) -> Reporter:
    if options.verbosity < 0:
        return QuietReporter(tally, err)
    use_bar = options.progress_bar
    if use_bar is None:
        # Records printed on the same terminal would tear a bar apart.
        use_bar = err.isatty() and not (options.to_stdout and out.isatty())
    if use_bar:
        return BarReporter(tally, err)
    return PlainReporter(tally, err, options.log_interval)


async def _execute(
    options: RunOptions,
    stdin: IO[bytes] | None,
    out: TextIO,
    err: TextIO,
    on_finish: OnFinish | None,
) -> int:
    output = options.output
    done: set[int] = set()
    if options.to_stdout:
        if options.resume:
            raise UsageError(
                "--resume reads what an earlier run wrote to --output, and -o - writes to "
                "stdout, which cannot be read back: pass --output FILE to resume"
            )
    elif options.resume:
        done = read_done(output).done
    elif output.exists() and output.stat().st_size > 0:
        raise UsageError(
            f"--output {str(output)!r} already has results: add --resume to continue that "
            "run, or choose another file"
        )
    if options.download_dir is not None:
        try:
            options.download_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UsageError(
                f"cannot create --download-dir {str(options.download_dir)!r}: {exc.strerror or exc}"
            ) from None
        _check_writable(options.download_dir)
        # What a killed run was writing; a live run's files are locked and stay.
        remove_stale_temporaries(options.download_dir)
    async with contextlib.AsyncExitStack() as stack:
        source = _open_source(options, sys.stdin.buffer if stdin is None else stdin)
        stack.callback(source.close)
        await _check_storage(options)
        await clean_unfinished_uploads(options, err)
        inner = _limiter(options)
        stack.push_async_callback(inner.aclose)
        limiter = _StoppableLimiter(inner)
        try:
            client = _client(options, limiter)
        except MonicaError as exc:
            raise UsageError(str(exc)) from None
        stack.push_async_callback(client.aclose)
        log = StreamLog(out) if options.to_stdout else ResultLog(output)
        stack.callback(log.close)
        tally = Tally()
        reporter = _reporter(options, tally, out, err)
        run = _Run(options, source, log, client, limiter, reporter, tally, done)
        await run.check_stores()
        with log_through(reporter, options.verbosity):
            return await _drive(run, on_finish)
    raise AssertionError("unreachable")  # pragma: no cover - the exit stack never swallows


def _check_writable(directory: Path) -> None:
    """Fail now, naming the option, when no file can be written in *directory*.

    Otherwise every input would be upscaled (and billed) before its download failed,
    and ``--resume`` would upscale them all again.
    """
    probe = directory / CHECK_NAME
    try:
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT, 0o600))
    except OSError as exc:
        raise UsageError(
            f"cannot write files in --download-dir {str(directory)!r}: {exc.strerror or exc}; "
            "nothing was sent"
        ) from None
    with contextlib.suppress(OSError):
        os.unlink(probe)


def _retry_hint(tally: Tally, hint: str | None) -> str | None:
    """*hint* (the ``--resume`` command) if some failure of the run could succeed on a
    retry; ``None`` when every one would fail again as it is."""
    return hint if any(name not in _NEVER_SUCCEED for name in tally.failed) else None


def _open_source(options: RunOptions, stdin: IO[bytes]) -> InputSource | DirectorySource:
    if options.input != "-" and os.path.isdir(options.input):
        if options.staging is None:
            raise UsageError(
                f"INPUT {options.input!r} is a directory: its images are uploaded to a "
                "staging location to be sent; add --staging s3://bucket/prefix/ "
                "(or gs://, az://)"
            )
        return open_directory(options.input, skip=options.download_dir)
    return open_input(options.input, options.input_format, stdin=stdin)


async def _check_storage(options: RunOptions) -> None:
    """Fail at once, in one line, when no result or no local file could be written."""
    checks = [("--download-dir", options.download_prefix), ("--staging", options.staging)]
    storage = None
    for flag, url in checks:
        if url is None:
            continue
        try:
            if storage is None:
                storage = Storage.configure()
            await storage.check_writable(ObjectLocation.parse(url, what=flag, prefix=True))
        except (InvalidRequestError, StorageError) as exc:
            raise UsageError(f"{flag}: {exc}") from None


def _describe(run: _Run) -> str:
    options = run.options
    kind = "directory" if isinstance(run.source, DirectorySource) else run.source.format.value
    parts = [f"Upscaling {options.input!r} ({kind})"]
    if options.shard is not None:
        parts.append(f"shard {options.shard}")
    if options.rate is not None:
        parts.append(f"rate {options.rate}")
    if options.in_flight is not None:
        parts.append(f"concurrency automatic, at most {options.in_flight}")
    else:
        parts.append(f"concurrency {options.concurrency or 'automatic'}")
    if run.done:
        parts.append(f"resuming: {len(run.done)} already done")
    where = "stdout" if options.to_stdout else repr(str(options.output))
    return ", ".join(parts) + f"; results to {where}"


def _count_in_background(run: _Run) -> None:
    """Count the inputs of a regular file in a daemon thread; set the total when done."""
    loop = asyncio.get_running_loop()
    source = run.source
    assert isinstance(source, InputSource), "only a file is counted"
    shard = run.options.shard
    done = run.done

    def keep(record: InputRecord) -> bool:
        if shard is not None and not shard.takes(record.line):
            return False
        return not (done and input_key(record.line, record.source) in done)

    def count() -> None:
        try:
            total = count_inputs(source.name, source.format, source.url_column, keep)
        except Exception:  # only the progress display's total is lost, never the run
            return
        with contextlib.suppress(RuntimeError):  # the loop closed first
            loop.call_soon_threadsafe(run.reporter.set_total, total)

    threading.Thread(target=count, name="monica-input-counter", daemon=True).start()


class _Signals:
    """SIGINT and SIGTERM during a run: the first stops it gently, the second cancels."""

    def __init__(self, run: _Run, consumer: asyncio.Task[None]) -> None:
        self.run = run
        self.consumer = consumer
        self.loop = asyncio.get_running_loop()
        self.grace_timer: asyncio.TimerHandle | None = None
        self.installed: list[signal.Signals] = []

    def install(self) -> None:
        """Handle both signals, where the loop can (the main thread, not Windows)."""
        for signum in (signal.SIGINT, signal.SIGTERM):
            try:
                self.loop.add_signal_handler(signum, self.on_signal, signum.name)
            except (NotImplementedError, RuntimeError):  # not the main thread, or Windows
                continue
            self.installed.append(signum)

    def remove(self) -> None:
        """Give the signals back and forget a pending grace period."""
        for signum in self.installed:
            self.loop.remove_signal_handler(signum)
        if self.grace_timer is not None:
            self.grace_timer.cancel()

    def on_signal(self, name: str) -> None:
        """Stop taking inputs, or cancel what is in flight if already stopping."""
        run = self.run
        if run.interrupted:
            run.reporter.note(f"{name} again: cancelling the requests in flight")
            self.consumer.cancel()
            return
        run.interrupted = True
        run.request_stop()
        grace = run.options.grace
        run.reporter.note(
            f"{name}: taking no more inputs; waiting up to {grace:g}s for the "
            f"{run.client.stats.in_flight} request(s) in flight (send it again to cancel them)"
        )
        self.grace_timer = self.loop.call_later(grace, self.consumer.cancel)


async def _drive(run: _Run, on_finish: OnFinish | None) -> int:
    options = run.options
    run.reporter.start(_describe(run))
    if run.source.regular_file:
        _count_in_background(run)
    failure, stats = await _consume(run)
    run.log.close()
    if on_finish is not None:
        on_finish(run.tally, stats)
    for line in summary(
        run.tally,
        stats,
        output="stdout" if options.to_stdout else str(options.output),
        download_dir=options.download_target,
        interrupted=run.interrupted,
    ):
        run.reporter.note(line)
    if failure is not None:
        raise failure
    return _exit_status(run)


async def _consume(run: _Run) -> tuple[UsageError | None, ClientStats]:
    """Run the batch with the signals handled and progress shown; say what failed it."""
    consumer = asyncio.create_task(run.consume(), name="monica-upscale-run")
    run.consumer = consumer
    ticker = asyncio.create_task(run.ticker(), name="monica-upscale-progress")
    signals = _Signals(run, consumer)
    signals.install()
    failure: UsageError | None = None
    try:
        await consumer
    except asyncio.CancelledError:
        if not (run.interrupted or run.output_closed):
            raise
    except (UsageError, MonicaError, OSError) as exc:
        failure = _as_usage_error(exc)
    finally:
        signals.remove()
        ticker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await ticker
        stats: ClientStats = run.client.stats
        run.reporter.stop(stats)
    return failure, stats


def _as_usage_error(exc: UsageError | MonicaError | OSError) -> UsageError:
    """The one-line error that ends a run the batch itself failed."""
    if isinstance(exc, UsageError):
        return exc
    if isinstance(exc, MonicaError):
        return UsageError(str(exc))
    return UsageError(f"writing the results failed: {exc.strerror or exc}")


def _exit_status(run: _Run) -> int:
    """Say how the run ended, on stderr, and return its exit status."""
    options = run.options
    # -o - cannot be resumed: no hint that would be refused.
    hint = None if options.to_stdout else options.resume_command
    if isinstance(run.refusal, QuotaExceededError):
        run.reporter.alert(_quota_message(run, run.refusal, hint))
        return EXIT_QUOTA
    if run.refusal is not None:
        raise UsageError(
            f"the API refused the key ({run.refusal}); check MONICA_API_KEY or "
            "--api-key-file, and --base-url"
        )
    if run.output_closed:
        run.reporter.note("stdout was closed by its reader: stopped")
        return EXIT_OUTPUT_CLOSED
    if run.interrupted:
        _report_interrupted(run, hint)
        return EXIT_INTERRUPTED
    if run.tally.failures:
        _report_failures(run, hint)
        return EXIT_FAILED
    return EXIT_OK


def _quota_message(run: _Run, error: QuotaExceededError, hint: str | None) -> str:
    """What to say when the balance ran out: what happened, what is left, how to go on."""
    if hint:
        then = f"then run:\n  {hint}"
    elif run.options.to_stdout:
        then = "then send again the inputs whose records failed (-o - cannot be resumed)"
    else:
        then = "then run the same command with --resume"
    return (
        f"monica-upscale: error: the balance of this API key is exhausted ({error}); "
        f"stopped sending: {run.tally.succeeded} input(s) upscaled in this run, the others "
        f"were not. Top the balance up (plan and billing on the Monica dashboard), {then}"
    )


def _report_interrupted(run: _Run, hint: str | None) -> None:
    if run.options.verbosity < 0:
        run.reporter.alert(
            "monica-upscale: interrupted" + (f"; to resume, run: {hint}" if hint else "")
        )
    elif hint:
        run.reporter.note(f"To resume, run:\n  {hint}")


def _report_failures(run: _Run, hint: str | None) -> None:
    tally = run.tally
    hint = _retry_hint(tally, hint)
    if run.options.verbosity >= 0:
        if hint:
            run.reporter.note(
                f"{tally.failures} input(s) failed; to retry only those, run:\n  {hint}"
            )
        return
    kinds = ", ".join(f"{name} {count}" for name, count in tally.failed.most_common())
    where = "on stdout" if run.options.to_stdout else f"in {str(run.options.output)!r}"
    run.reporter.alert(
        f"monica-upscale: {tally.failures} of {tally.done} input(s) failed ({kinds}); "
        f"their records {where} say why" + (f"; to retry only those, run: {hint}" if hint else "")
    )


def resume_command(prog: str, argv: list[str]) -> str:
    """The command line that resumes the run started with *argv*."""
    import shlex

    args = list(argv)
    if "--resume" not in args:
        args.append("--resume")
    return shlex.join([*shlex.split(prog), *args])
