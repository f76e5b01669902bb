"""Reading the command line's input: URL lists, CSV and JSON Lines, streamed.

Every input is one physical line, numbered from 1 counting every line (blank
lines, comments and a CSV header included). The numbering therefore depends only
on the file's bytes, so shards agree on it and ``--resume`` can recognise an input
it has seen.

One line, one outcome: a line that cannot be read (not UTF-8, longer than
:data:`MAX_LINE_BYTES`, JSON nested too deeply, a CSV field over the csv module's
limit, a CSV quote left open at the end of the line) becomes a problem record for
that line, and the next line is read on its own. A CSV record never spans lines, so
a stray quote cannot glue the following lines into one URL.

Inputs are read in a daemon thread and handed to the event loop in chunks, so a
slow pipe on stdin never blocks the event loop, and a huge file never sits in
memory: at most a few chunks are read ahead.
"""

from __future__ import annotations

import asyncio
import csv
import json
import os
import stat
import threading
from collections.abc import AsyncGenerator, Callable, Iterator
from typing import IO, Final, Protocol

import attrs

from ._options import InputFormat, UsageError

__all__ = [
    "InputRecord",
    "InputSource",
    "RecordSource",
    "count_inputs",
    "open_input",
    "stream_inputs",
]

#: Records handed from the reader thread to the event loop at once.
CHUNK: Final = 256
#: Chunks the reader thread may read ahead of the consumer.
READ_AHEAD: Final = 4
#: How much of a bad record is kept as its "source" in the output.
SOURCE_EXCERPT: Final = 200
#: Longest line read: a URL is at most 8 KiB, so a longer line is a broken file (one
#: without line breaks, say), reported and skipped without ever being held whole.
MAX_LINE_BYTES: Final = 1024 * 1024

_TOO_LONG: Final = f"the line is longer than {MAX_LINE_BYTES // 1024} KiB"
_NOT_UTF8: Final = "the line is not valid UTF-8"


_EXTENSIONS: Final = {
    ".csv": InputFormat.CSV,
    ".jsonl": InputFormat.JSONL,
    ".ndjson": InputFormat.JSONL,
    ".txt": InputFormat.TXT,
}


@attrs.frozen
class InputRecord:
    """One input: its line number and URL, or why the record could not be read."""

    line: int
    url: str | None
    problem: str | None = None
    raw: str = ""

    @property
    def source(self) -> str:
        """The URL, or an excerpt of the unreadable record."""
        return self.url if self.url is not None else self.raw[:SOURCE_EXCERPT]


@attrs.define(eq=False)
class InputSource:
    """An opened input: its format (detected) and the lines it starts with.

    Attributes:
        name: ``-`` for stdin, else the path as given.
        format: The format in use (never ``AUTO``).
        url_column: For CSV, the index of the ``url`` column.
        regular_file: The input is a regular file, so it can be read twice (to count).
    """

    name: str
    format: InputFormat
    stream: IO[bytes] = attrs.field(repr=False)
    url_column: int = 0
    regular_file: bool = False
    #: Lines already read to detect the format, replayed before the rest of the stream.
    _peeked: list[_Line] = attrs.field(factory=list, repr=False)

    def lines(self) -> Iterator[tuple[int, str, bool]]:
        """Yield ``(line number, text without the line ending, too long)`` for every line.

        The text of a line over :data:`MAX_LINE_BYTES` is its beginning only.
        """
        for number, (raw, too_long) in enumerate(
            _chain(self._peeked, _physical_lines(self.stream)), start=1
        ):
            text = raw.decode("utf-8", errors="replace")
            if number == 1:
                text = text.removeprefix("\ufeff")
            yield number, text.rstrip("\r\n"), too_long
        self._peeked = []

    def records(self) -> Iterator[InputRecord]:
        """Yield every input of the stream, in order; never raises for what a line holds."""
        if self.format is InputFormat.CSV:
            return self._csv_records()
        if self.format is InputFormat.JSONL:
            return self._jsonl_records()
        return self._txt_records()

    def _txt_records(self) -> Iterator[InputRecord]:
        for number, text, too_long in self.lines():
            url = text.strip()
            if too_long:
                yield InputRecord(number, None, _TOO_LONG, url)
                continue
            if not url or url.startswith("#"):
                continue
            yield _checked(number, url, url)

    def _jsonl_records(self) -> Iterator[InputRecord]:
        for number, text, too_long in self.lines():
            stripped = text.strip()
            if too_long:
                yield InputRecord(number, None, _TOO_LONG, stripped)
                continue
            if not stripped or stripped.startswith("#"):
                continue
            try:
                payload = json.loads(stripped)
            except ValueError:
                yield InputRecord(number, None, "the line is not valid JSON", stripped)
                continue
            except RecursionError:
                yield InputRecord(number, None, "the line's JSON is nested too deeply", stripped)
                continue
            url = payload.get("url") if isinstance(payload, dict) else None
            if not isinstance(url, str) or not url.strip():
                yield InputRecord(number, None, 'the line has no "url" string field', stripped)
                continue
            yield _checked(number, url.strip(), stripped)

    def _csv_records(self) -> Iterator[InputRecord]:
        header_seen = False
        for number, text, too_long in self.lines():
            if too_long:
                yield InputRecord(number, None, _TOO_LONG, text)
                continue
            row = _csv_row(text)
            if isinstance(row, str):
                if header_seen:
                    yield InputRecord(number, None, row, text)
                continue
            if not any(cell.strip() for cell in row):
                continue
            if not header_seen:
                # Format detection skipped "#" lines before the header; so does this.
                if row[0].lstrip().startswith("#"):
                    continue
                header_seen = True
                continue
            raw = ",".join(row)
            if self.url_column >= len(row) or not row[self.url_column].strip():
                yield InputRecord(number, None, "the row has no value in its url column", raw)
                continue
            yield _checked(number, row[self.url_column].strip(), raw)

    def close(self) -> None:
        """Close the stream (never stdin itself)."""
        if self.name != "-":
            self.stream.close()


def _checked(line: int, url: str, raw: str) -> InputRecord:
    if "\ufffd" in url:
        return InputRecord(line, None, _NOT_UTF8, raw)
    return InputRecord(line, url, None, raw)


def _csv_row(text: str) -> list[str] | str:
    """The cells of one CSV line, or why the line cannot be read as one."""
    try:
        # The line ending is given back so that a quote left open swallows it (and
        # shows), instead of the reader pulling the next line into this record.
        row = next(csv.reader((text + "\n",)), [])
    except csv.Error as exc:
        return f"the line cannot be read as CSV ({exc})"
    if any("\n" in cell for cell in row):
        return "a quoted field is still open at the end of the line (a record is one line)"
    return row


#: A physical line: its bytes (only the beginning of a line over the limit) and
#: whether it was over the limit.
_Line = tuple[bytes, bool]


def _physical_lines(stream: IO[bytes]) -> Iterator[_Line]:
    """The lines of *stream*; a line over :data:`MAX_LINE_BYTES` is never held whole."""
    while True:
        raw = stream.readline(MAX_LINE_BYTES + 1)
        if not raw:
            return
        if len(raw) <= MAX_LINE_BYTES or raw.endswith(b"\n"):
            yield raw, False
            continue
        rest = raw
        while rest and not rest.endswith(b"\n"):
            rest = stream.readline(MAX_LINE_BYTES)
        yield raw[: 4 * SOURCE_EXCERPT], True


def _chain(first: list[_Line], rest: Iterator[_Line]) -> Iterator[_Line]:
    yield from first
    yield from rest


def open_input(name: str, fmt: InputFormat = InputFormat.AUTO, *, stdin: IO[bytes]) -> InputSource:
    """Open *name* (``-``: *stdin*), detect its format and check a CSV header.

    Raises:
        UsageError: The input cannot be opened or read, or a CSV has no url column.
    """
    regular = False
    if name == "-":
        stream = stdin
    else:
        try:
            stream = open(name, "rb")  # noqa: SIM115 - closed by InputSource.close
        except OSError as exc:
            raise UsageError(f"cannot read input {name!r}: {exc.strerror or exc}") from None
        try:
            regular = stat.S_ISREG(os.fstat(stream.fileno()).st_mode)
        except OSError:
            regular = False
    if fmt is InputFormat.AUTO and name != "-":
        for suffix, known in _EXTENSIONS.items():
            if name.lower().endswith(suffix):
                fmt = known
                break
    try:
        peeked, first = _peek(stream)
    except OSError as exc:
        if name != "-":
            stream.close()
        raise UsageError(f"cannot read input {name!r}: {exc.strerror or exc}") from None
    if fmt is InputFormat.AUTO:
        fmt = _sniff(first)
    source = InputSource(name, fmt, stream, regular_file=regular, peeked=peeked)
    if fmt is InputFormat.CSV:
        try:
            source.url_column = _url_column(name, first)
        except UsageError:
            source.close()
            raise
    return source


def _peek(stream: IO[bytes]) -> tuple[list[_Line], str | None]:
    """Read up to the first meaningful line; return what was read and that line's text."""
    peeked: list[_Line] = []
    for line in _physical_lines(stream):
        peeked.append(line)
        text = line[0].decode("utf-8", errors="replace").removeprefix("\ufeff").strip()
        if text and not text.startswith("#"):
            return peeked, text
    return peeked, None


def _sniff(first: str | None) -> InputFormat:
    if first is None:
        return InputFormat.TXT
    if first.startswith("{"):
        return InputFormat.JSONL
    if "," in first or ";" in first:
        cells = _csv_row(first)
        if not isinstance(cells, str) and any(cell.strip().lower() == "url" for cell in cells):
            return InputFormat.CSV
    return InputFormat.TXT


def _url_column(name: str, header: str | None) -> int:
    if header is None:
        return 0
    row = _csv_row(header)
    if isinstance(row, str):
        raise UsageError(f"input {name!r} is CSV but its header cannot be read: {row}")
    cells = [cell.strip().lower() for cell in row]
    if "url" not in cells:
        shown = ", ".join(cells[:10])
        raise UsageError(f"input {name!r} is CSV but has no 'url' column (columns: {shown})")
    return cells.index("url")


def count_inputs(
    name: str, fmt: InputFormat, url_column: int, keep: Callable[[InputRecord], bool]
) -> int:
    """Count the inputs of the regular file *name* that *keep* accepts (a second read)."""
    with open(name, "rb") as stream:
        again = InputSource(name, fmt, stream, url_column=url_column, regular_file=True)
        return sum(1 for record in again.records() if keep(record))


class RecordSource(Protocol):
    """What :func:`stream_inputs` reads: a file's :class:`InputSource` or a directory."""

    name: str

    def records(self) -> Iterator[InputRecord]:
        """Yield every input, in order."""
        ...


class _ReaderError:
    def __init__(self, error: BaseException) -> None:
        self.error = error


_Chunk = list[InputRecord] | _ReaderError | None


async def stream_inputs(
    source: RecordSource,
    keep: Callable[[InputRecord], bool],
    stop: asyncio.Event,
) -> AsyncGenerator[InputRecord, None]:
    """Yield the records of *source* that *keep* accepts, until the end or *stop* is set.

    The records are read by a daemon thread: a blocking read (a pipe that waits for
    its writer) holds neither the event loop nor the interpreter's exit.

    Raises:
        UsageError: Reading the input failed part way.
    """
    loop = asyncio.get_running_loop()
    chunks: asyncio.Queue[_Chunk] = asyncio.Queue()
    room = threading.Semaphore(READ_AHEAD)
    quit_reading = threading.Event()

    def deliver(item: _Chunk) -> bool:
        room.acquire()
        if quit_reading.is_set():
            return False
        try:
            loop.call_soon_threadsafe(chunks.put_nowait, item)
        except RuntimeError:  # the loop is closed: nobody is listening any more
            return False
        return True

    def read() -> None:
        batch: list[InputRecord] = []
        try:
            for record in source.records():
                if quit_reading.is_set():
                    return
                if keep(record):
                    batch.append(record)
                    if len(batch) >= CHUNK:
                        if not deliver(batch):
                            return
                        batch = []
            if batch and not deliver(batch):
                return
            deliver(None)
        except Exception as exc:  # handed to the event loop, which reports it
            deliver(_ReaderError(exc))

    thread = threading.Thread(target=read, name="monica-input-reader", daemon=True)
    thread.start()
    stopped = asyncio.ensure_future(stop.wait())
    try:
        while not stop.is_set():
            getter = asyncio.ensure_future(chunks.get())
            await asyncio.wait({getter, stopped}, return_when=asyncio.FIRST_COMPLETED)
            if not getter.done():
                getter.cancel()
                break
            item = getter.result()
            room.release()
            if item is None:
                break
            if isinstance(item, _ReaderError):
                error = item.error
                what = error.strerror if isinstance(error, OSError) else error
                raise UsageError(f"reading input {source.name!r} failed: {what}") from error
            for record in item:
                if stop.is_set():
                    break
                yield record
    finally:
        quit_reading.set()
        room.release()
        stopped.cancel()
