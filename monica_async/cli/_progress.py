"""What the command line shows while it runs: a rich progress bar or plain log lines.

All of it goes to stderr: stdout is for data. rich is imported only here and only
when a bar is drawn, so ``import monica_async`` never needs it.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, Final, TextIO

import attrs

from monica_async._stats import ClientStats

from ._options import UsageError

if TYPE_CHECKING:
    from rich.progress import Progress

__all__ = [
    "BarReporter",
    "PlainReporter",
    "QuietReporter",
    "Reporter",
    "Tally",
    "format_seconds",
    "log_through",
    "require_rich",
]

#: ``-q``, nothing, ``-v``, ``-vv``: what the library's logger shows.
LOG_LEVELS: Final = {-1: logging.ERROR, 0: logging.WARNING, 1: logging.INFO, 2: logging.DEBUG}
LIBRARY_LOGGER: Final = "monica_async"

CLI_EXTRA_HINT = 'pip install "monica-async[cli]"'


def require_rich() -> None:
    """Raise :class:`UsageError` naming the extra to install when rich is missing."""
    try:
        import rich  # noqa: F401
    except ImportError:
        raise UsageError(f"the command line needs rich: {CLI_EXTRA_HINT}") from None


def require_pillow() -> None:
    """Raise :class:`UsageError` naming the extra to install when Pillow is missing."""
    try:
        import PIL  # noqa: F401
    except ImportError:
        raise UsageError(f"the demo needs Pillow: {CLI_EXTRA_HINT}") from None


@attrs.define
class Tally:
    """Counts of what a run did, as its records were written."""

    succeeded: int = 0
    failed: Counter[str] = attrs.field(factory=Counter)
    #: Inputs already done in the results file (``--resume``), counted by the reader.
    skipped: int = 0
    started: float = attrs.field(factory=time.monotonic)

    @property
    def failures(self) -> int:
        """Inputs that failed."""
        return sum(self.failed.values())

    @property
    def done(self) -> int:
        """Inputs with a record written in this run."""
        return self.succeeded + self.failures

    def elapsed(self) -> float:
        """Seconds since the run started."""
        return time.monotonic() - self.started

    def rate(self) -> float:
        """Records written per second."""
        elapsed = self.elapsed()
        return self.done / elapsed if elapsed > 0 else 0.0


def format_seconds(seconds: float) -> str:
    """``12.3s``, ``4m05s`` or ``2h03m``."""
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def _detail(tally: Tally, stats: ClientStats) -> str:
    return (
        f"ok {tally.succeeded} failed {tally.failures} retries {stats.retries} "
        f"429s {stats.rate_limited} {tally.rate():.1f}/s"
    )


class Reporter:
    """Shows a run's progress; subclasses draw a bar or print lines."""

    def __init__(self, tally: Tally, out: TextIO) -> None:
        self.tally = tally
        self.out = out
        self.total: int | None = None
        #: The reader of *out* went away (``2>&1 | head -1``): nothing more is shown.
        self.out_closed = False

    def start(self, description: str) -> None:
        """Begin showing progress."""

    def set_total(self, total: int) -> None:
        """The number of inputs this run will write records for, once counted."""
        self.total = total

    def tick(self, stats: ClientStats) -> None:
        """Refresh with the client's latest counters (called a few times a second)."""

    def note(self, message: str) -> None:
        """Print one line of information without disturbing the progress display."""
        self.alert(message)

    def alert(self, message: str) -> None:
        """Print one line that ``--quiet`` does not silence (an error)."""
        self.show(lambda: print(message, file=self.out, flush=True))

    def show(self, write: Callable[[], None]) -> None:
        """Call *write*, which writes to *out*, unless its reader went away; if it goes
        away now, show nothing more.

        What a run shows is a courtesy: its records and its exit status are what
        count, and neither may change because nobody reads stderr any more.
        """
        if self.out_closed:
            return
        try:
            write()
        except BrokenPipeError:
            self.out_closed = True

    def stop(self, stats: ClientStats) -> None:
        """Stop showing progress."""


class QuietReporter(Reporter):
    """``--quiet``: no banner, no progress, no summary; errors only."""

    def note(self, message: str) -> None:
        """Drop information."""


class PlainReporter(Reporter):
    """One progress line every *interval* seconds, for logs and pipes."""

    def __init__(self, tally: Tally, out: TextIO, interval: float) -> None:
        super().__init__(tally, out)
        self.interval = interval
        self._last = time.monotonic()

    def start(self, description: str) -> None:
        """Print what the run is about to do."""
        self.note(description)

    def _line(self, stats: ClientStats) -> str:
        tally = self.tally
        done = f"{tally.done}/{self.total}" if self.total is not None else f"{tally.done}"
        line = f"progress: {done} done, {_detail(tally, stats)}, {format_seconds(tally.elapsed())}"
        rate = tally.rate()
        if self.total is not None and rate > 0:
            line += f", ETA {format_seconds(max(0, self.total - tally.done) / rate)}"
        return line

    def tick(self, stats: ClientStats) -> None:
        """Print a progress line when *interval* has passed since the last one."""
        now = time.monotonic()
        if now - self._last >= self.interval:
            self._last = now
            self.note(self._line(stats))


class BarReporter(Reporter):
    """A rich progress bar with counts, rate and (when the total is known) ETA."""

    def __init__(self, tally: Tally, out: TextIO) -> None:
        super().__init__(tally, out)
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
        )

        # Narrow enough for an 80-column terminal: rich truncates what does not fit.
        self._progress: Progress = Progress(
            BarColumn(bar_width=20),
            MofNCompleteColumn(),
            TextColumn("{task.fields[detail]}"),
            TextColumn("ETA"),
            TimeRemainingColumn(compact=True),
            console=Console(file=out),
            refresh_per_second=5,
        )
        self._task = self._progress.add_task("upscaling", total=None, detail="", start=False)

    def start(self, description: str) -> None:
        """Print what the run is about to do and draw the bar."""
        self.note(description)
        self._progress.start()
        self._progress.start_task(self._task)

    def set_total(self, total: int) -> None:
        """Give the bar its end, which enables the ETA."""
        super().set_total(total)
        self._progress.update(self._task, total=total)

    def tick(self, stats: ClientStats) -> None:
        """Move the bar and refresh the counts."""
        fields: dict[str, Any] = {"detail": _detail(self.tally, stats)}
        self._progress.update(self._task, completed=self.tally.done, **fields)

    def alert(self, message: str) -> None:
        """Print above the bar."""
        console = self._progress.console
        self.show(lambda: console.print(message, highlight=False, markup=False, soft_wrap=True))

    def stop(self, stats: ClientStats) -> None:
        """Draw the final state and leave it on screen."""
        self.tick(stats)
        self._progress.stop()


def summary(
    tally: Tally,
    stats: ClientStats,
    *,
    output: str,
    download_dir: str | None,
    interrupted: bool,
) -> list[str]:
    """The lines printed at the end of a run."""
    elapsed = tally.elapsed()
    head = "Interrupted" if interrupted else "Finished"
    lines = [
        f"{head} in {format_seconds(elapsed)}: {tally.succeeded} succeeded, "
        f"{tally.failures} failed"
        + (f", {tally.skipped} skipped (already done)" if tally.skipped else "")
        + "."
    ]
    if tally.failed:
        by_type = ", ".join(f"{name} {count}" for name, count in tally.failed.most_common())
        lines.append(f"  failed by type: {by_type}")
    lines.append(f"  retries: {stats.retries}, rate limited (429): {stats.rate_limited}")
    latency = ""
    if stats.latency_p50 is not None and stats.latency_p95 is not None:
        latency = f"; latency p50 {stats.latency_p50:.2f}s, p95 {stats.latency_p95:.2f}s"
    rate = tally.done / elapsed if elapsed > 0 else 0.0
    lines.append(f"  throughput: {rate:.2f} inputs/s{latency}")
    lines.append(f"  results: {output}")
    if download_dir is not None:
        lines.append(f"  images: {download_dir}")
    return lines


class _LineHandler(logging.Handler):
    """Hands each formatted record to a function (the reporter's ``alert``)."""

    def __init__(self, sink: Callable[[str], None], level: int) -> None:
        super().__init__(level)
        self.sink = sink
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        """Write one record through the sink."""
        try:
            self.sink(self.format(record))
        except Exception:  # a logging call must never break the run
            self.handleError(record)


@contextlib.contextmanager
def log_through(reporter: Reporter, verbosity: int) -> Iterator[None]:
    """Show the library's log records through *reporter* while the block runs.

    *verbosity* is -1 (``--quiet``: errors), 0 (warnings), 1 (``-v``: retries, at
    INFO) or 2 (``-vv``: every attempt, at DEBUG). Records go through the reporter
    so that they print above a progress bar instead of through it. The logger's
    level is put back afterwards.
    """
    level = LOG_LEVELS[max(-1, min(2, verbosity))]
    logger = logging.getLogger(LIBRARY_LOGGER)
    handler = _LineHandler(reporter.alert, level)
    previous = logger.level
    if logger.getEffectiveLevel() > level:
        logger.setLevel(level)
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous)
