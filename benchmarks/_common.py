"""What every benchmark shares: the fake server process, its stats, window maths, RSS, tables."""

from __future__ import annotations

import bisect
import concurrent.futures
import json
import multiprocessing
import os
import signal
import statistics
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from typing import IO, Any, Self, TypeVar

from monica_async.testing import API_PATH, RESET_PATH, STATS_PATH, FakeServerStats

__all__ = [
    "API_KEY",
    "FakeServer",
    "Table",
    "first_window",
    "images",
    "median",
    "peak_rss_bytes",
    "rss_bytes",
    "side_by_side",
    "sliding_counts",
    "steady_rate",
    "worst_window",
]

T = TypeVar("T")
R = TypeVar("R")

API_KEY = "bench-key"
#: Seconds the fake server gets to print READY before the benchmark gives up.
_START_TIMEOUT = 30.0

# urllib honours *_proxy variables; the fake server is on loopback and must be reached directly.
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class FakeServer:
    """``python -m monica_async.testing`` in its own process, for the length of a ``with``.

    Args:
        options: Extra command-line options, e.g. ``["--latency", "0.05"]``.
        program: What to run instead of ``-m monica_async.testing`` (a script that
            takes the same options).
    """

    def __init__(
        self, *options: str, program: Sequence[str] = ("-m", "monica_async.testing")
    ) -> None:
        self.options = list(options)
        self.program = list(program)
        self.base_url = ""
        self._process: subprocess.Popen[str] | None = None

    def __enter__(self) -> Self:
        argv = [sys.executable, *self.program, "--port", "0", "--no-images"]
        argv += ["--api-key", API_KEY, "--seed", "1", *self.options]
        self._process = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True
        )
        assert self._process.stdout is not None
        line = _read_line(self._process.stdout, _START_TIMEOUT)
        if not line.startswith("READY "):
            self.__exit__(None, None, None)
            raise RuntimeError(f"the fake server did not start: {line!r} ({argv})")
        self.base_url = line.split(maxsplit=1)[1].strip()
        return self

    def pin(self) -> str:
        """Put the server on the last CPU and this process on the others.

        On a small machine the scheduler otherwise moves both processes around, and
        that noise is larger than the differences being measured.
        """
        cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
        if len(cpus) < 2:
            return "not pinned (one CPU)"
        os.sched_setaffinity(self.pid, {cpus[-1]})
        os.sched_setaffinity(0, set(cpus[:-1]))
        return f"server on CPU {cpus[-1]}, clients on {cpus[:-1]}"

    def unpin(self) -> None:
        """Let this process run on every CPU again."""
        if hasattr(os, "sched_setaffinity"):
            os.sched_setaffinity(0, range(os.cpu_count() or 1))

    def __exit__(self, *exc_info: object) -> None:
        process = self._process
        if process is None:
            return
        self._process = None
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if process.stdout is not None:
            process.stdout.close()

    @property
    def pid(self) -> int:
        """The server process's id."""
        assert self._process is not None
        return self._process.pid

    @property
    def endpoint(self) -> str:
        """The upscale URL."""
        return self.base_url + API_PATH

    def stats(self) -> FakeServerStats:
        """What the server saw since it started or was last reset."""
        with _DIRECT.open(self.base_url + STATS_PATH, timeout=60) as response:
            return FakeServerStats.from_json(json.load(response))

    def reset(self) -> None:
        """Forget the server's stats (call between runs)."""
        request = urllib.request.Request(self.base_url + RESET_PATH, method="POST")
        with _DIRECT.open(request, timeout=60) as response:
            response.read()


def _read_line(stream: IO[str], timeout: float) -> str:
    """One line of *stream*, or ``""`` after *timeout* seconds."""
    # readline() has no timeout: read in a thread so that a server that never starts
    # fails the benchmark instead of hanging it.
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.append(stream.readline()), daemon=True)
    reader.start()
    reader.join(timeout)
    return lines[0] if lines else ""


def images(base_url: str, count: int) -> Iterator[str]:
    """*count* distinct image URLs on the fake server's host, generated lazily."""
    return (f"{base_url}/images/{i}.png" for i in range(count))


# -- sliding-window maths on the server's arrival times -------------------------------


def worst_window(times: Sequence[float], per: float = 1.0) -> int:
    """Most *times* inside any half-open window ``[t, t + per)``."""
    ordered = sorted(times)
    worst = 0
    start = 0
    for end, t in enumerate(ordered):
        while ordered[start] <= t - per:
            start += 1
        worst = max(worst, end - start + 1)
    return worst


def first_window(times: Sequence[float], per: float = 1.0) -> int:
    """How many *times* fall within *per* seconds of the first one."""
    ordered = sorted(times)
    if not ordered:
        return 0
    return bisect.bisect_left(ordered, ordered[0] + per)


def steady_rate(times: Sequence[float], skip: float = 1.0) -> float | None:
    """Arrivals per second after the first *skip* seconds (the start-up burst left out)."""
    ordered = sorted(times)
    if not ordered:
        return None
    later = ordered[bisect.bisect_left(ordered, ordered[0] + skip) :]
    if len(later) < 2 or later[-1] == later[0]:
        return None
    return (len(later) - 1) / (later[-1] - later[0])


def sliding_counts(times: Sequence[float], per: float = 1.0) -> list[tuple[float, int]]:
    """For each arrival: (seconds since the first, arrivals in the *per* seconds up to it)."""
    ordered = sorted(times)
    out = []
    start = 0
    for end, t in enumerate(ordered):
        while ordered[start] <= t - per:
            start += 1
        out.append((round(t - ordered[0], 4), end - start + 1))
    return out


# -- process measurements --------------------------------------------------------------


def rss_bytes() -> int:
    """Resident set size of this process now."""
    with open(f"/proc/{os.getpid()}/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss_bytes() -> int:
    """Highest resident set size of this process so far (the kernel's own record)."""
    # VmHWM, not getrusage's ru_maxrss: Linux carries ru_maxrss across execve, so a
    # child started by a big parent would report the parent's peak as its own.
    with open(f"/proc/{os.getpid()}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024  # in kB
    raise RuntimeError("no VmHWM in /proc/self/status")


def side_by_side(function: Callable[[T], R], inputs: Sequence[T]) -> list[R]:
    """``[function(x) for x in inputs]``, each call in a process of its own, all at once."""
    # spawn, not fork: the caller may have threads, and each child starts clean.
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(len(inputs), mp_context=context) as pool:
        return list(pool.map(function, inputs))


def median(values: Sequence[float]) -> float:
    """The median, or NaN when there are no values."""
    return statistics.median(values) if values else float("nan")


# -- output ---------------------------------------------------------------------------


class Table:
    """A fixed-width text table: a title, a header row and rows of cells."""

    def __init__(self, title: str, columns: Sequence[str]) -> None:
        self.title = title
        self.columns = list(columns)
        self.rows: list[list[str]] = []
        self.notes: list[str] = []

    def add(self, *cells: object) -> None:
        """Append a row; floats are shown with sensible precision."""
        self.rows.append([_cell(c) for c in cells])

    def note(self, text: str) -> None:
        """Add a line printed under the table."""
        self.notes.append(text)

    def render(self) -> str:
        """The table as text."""
        widths = [len(c) for c in self.columns]
        for row in self.rows:
            widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]

        def line(cells: Sequence[str]) -> str:
            first, *rest = cells
            parts = [first.ljust(widths[0])]
            parts += [c.rjust(w) for c, w in zip(rest, widths[1:], strict=True)]
            return "  ".join(parts).rstrip()

        out = [f"## {self.title}", "", line(self.columns), line(["-" * w for w in widths])]
        out += [line(row) for row in self.rows]
        if self.notes:
            out.append("")
            out += self.notes
        return "\n".join(out)


def _cell(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if value != value:  # NaN
            return "-"
        magnitude = abs(value)
        if magnitude >= 100:
            return f"{value:,.0f}"
        if magnitude >= 10:
            return f"{value:.1f}"
        return f"{value:.3f}" if magnitude < 1 else f"{value:.2f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


Json = dict[str, Any]
