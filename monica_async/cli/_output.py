"""The command line's results file (JSON Lines) and downloaded file names.

The results file is append-only. Each record is one complete line handed to the
kernel in a single ``write()``, so a process killed at any moment leaves at worst
one torn last line, which :func:`read_done` ignores and :class:`ResultLog`
terminates before appending.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, TextIO
from urllib.parse import unquote, urlsplit

import attrs

from monica_async._exceptions import APIResponseValidationError, APIStatusError, MonicaError

from ._inputs import InputRecord
from ._options import UsageError

__all__ = [
    "ResultLog",
    "ResumeState",
    "StreamLog",
    "download_line",
    "download_name",
    "error_fields",
    "input_key",
    "read_done",
]

#: Seconds between two ``fsync`` calls on the results file.
FSYNC_INTERVAL: Final = 1.0
_IMAGE_SUFFIXES: Final = (".png", ".jpg", ".jpeg", ".webp", ".gif")
_UNSAFE: Final = re.compile(r"[^A-Za-z0-9._-]+")
_STEM_LIMIT: Final = 60
#: What :func:`download_name` makes: the line, the stem, the hash, the suffix.
_DOWNLOAD_NAME: Final = re.compile(
    r"([1-9][0-9]*)-[A-Za-z0-9._-]+-[0-9a-f]{8}"
    f"(?:{'|'.join(map(re.escape, _IMAGE_SUFFIXES))})"
)


def input_key(line: int, source: str) -> int:
    """Identify an input by its line *and* its URL, so an edited input file is not trusted."""
    digest = hashlib.blake2b(f"{line}\n{source}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


@attrs.define
class ResumeState:
    """What an existing results file says.

    Attributes:
        done: Keys (:func:`input_key`) of the inputs whose latest record is a success.
        records: Records read.
        unreadable: Lines that were not valid records (a torn last line among them).
    """

    done: set[int] = attrs.field(factory=set)
    records: int = 0
    unreadable: int = 0


def read_done(path: Path) -> ResumeState:
    """Read the results file at *path* (missing: nothing done).

    Raises:
        UsageError: The file exists but cannot be read.
    """
    state = ResumeState()
    try:
        stream = open(path, "rb")  # noqa: SIM115 - closed below
    except FileNotFoundError:
        return state
    except OSError as exc:
        raise UsageError(f"cannot read --output {str(path)!r}: {exc.strerror or exc}") from None
    with stream:
        for raw in stream:
            try:
                record = json.loads(raw)
                key = input_key(int(record["line"]), str(record["source"]))
                ok = record["ok"] is True
            except (ValueError, KeyError, TypeError):
                state.unreadable += 1
                continue
            state.records += 1
            # The latest record of an input decides: a later failure undoes a success.
            if ok:
                state.done.add(key)
            else:
                state.done.discard(key)
    return state


class ResultLog:
    """The append-only results file: one JSON object per line, flushed line by line.

    Every line goes to the kernel in one ``os.write`` on an ``O_APPEND`` descriptor
    (no user-space buffer), so a killed process loses nothing that was written.
    ``fsync`` runs at most once a second and at close, which bounds what an operating
    system crash can lose without paying a disk flush per line.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        except OSError as exc:
            raise UsageError(
                f"cannot write --output {str(path)!r}: {exc.strerror or exc}"
            ) from None
        self._last_sync = time.monotonic()
        self._dirty = False
        self.lines = 0
        self._terminate_torn_line()

    def _terminate_torn_line(self) -> None:
        size = os.fstat(self._fd).st_size
        if size == 0:
            return
        with open(self.path, "rb") as existing:
            existing.seek(size - 1)
            last = existing.read(1)
        if last != b"\n":
            # A torn record from a killed run: end it, so the next one starts a line.
            self._write(b"\n")

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            written = os.write(self._fd, view)
            view = view[written:]
        self._dirty = True

    def write(self, record: dict[str, Any]) -> None:
        """Append *record* as one line."""
        self._write(record_line(record).encode())
        self.lines += 1
        now = time.monotonic()
        if now - self._last_sync >= FSYNC_INTERVAL:
            self._sync(now)

    def _sync(self, now: float) -> None:
        if self._dirty:
            os.fsync(self._fd)
            self._dirty = False
        self._last_sync = now

    def close(self) -> None:
        """Flush to disk and close. Idempotent."""
        if self._fd < 0:
            return
        try:
            self._sync(time.monotonic())
        finally:
            os.close(self._fd)
            self._fd = -1


class StreamLog:
    """``--output -``: one JSON line per record on a text stream, flushed line by line."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.lines = 0

    def write(self, record: dict[str, Any]) -> None:
        """Write *record* as one line and flush it to the reader.

        Raises:
            BrokenPipeError: The reader went away (``| head``, say).
        """
        self.stream.write(record_line(record))
        self.stream.flush()
        self.lines += 1

    def close(self) -> None:
        """Nothing to close: the stream is not ours."""


def record_line(record: dict[str, Any]) -> str:
    """*record* as one line of JSON Lines, newline included."""
    return json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n"


def now_iso() -> str:
    """The current UTC time, ISO 8601 with milliseconds."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def error_fields(error: BaseException, stage: str) -> dict[str, Any]:
    """The ``error`` object of a failure record."""
    status: int | None = None
    code: str | None = None
    if isinstance(error, APIStatusError):
        status, code = error.status, error.code
    elif isinstance(error, APIResponseValidationError):
        status = error.status
    message = getattr(error, "message", None) if isinstance(error, MonicaError) else None
    return {
        "stage": stage,
        "type": type(error).__name__,
        "status": status,
        "code": code,
        "message": message if isinstance(message, str) else str(error),
    }


def problem_record(record: InputRecord) -> dict[str, Any]:
    """The failure record of an input that could not be read (nothing was sent)."""
    return {
        "line": record.line,
        "source": record.source,
        "ok": False,
        "result": None,
        "path": None,
        "attempts": 0,
        "elapsed": 0.0,
        "request_id": None,
        "error": {
            "stage": "input",
            "type": "InputError",
            "status": None,
            "code": None,
            "message": f"line {record.line}: {record.problem}",
        },
        "time": now_iso(),
    }


def download_name(line: int, source: str, result_url: str) -> str:
    """A safe, unique file name for the result of the input on *line*.

    ``<line>-<sanitized source basename>-<8 hex digits of the source URL's hash><ext>``:
    no directory part can survive, and the line number and hash keep two inputs
    with the same basename apart.
    """
    basename = unquote(urlsplit(source).path.rsplit("/", 1)[-1])
    stem = basename.rsplit(".", 1)[0] if "." in basename else basename
    stem = _UNSAFE.sub("_", stem).strip("._-")[:_STEM_LIMIT] or "image"
    digest = hashlib.blake2b(source.encode(), digest_size=4).hexdigest()
    suffix = Path(urlsplit(result_url).path).suffix.lower()
    if suffix not in _IMAGE_SUFFIXES:
        suffix = ".png"
    return f"{line}-{stem}-{digest}{suffix}"


def download_line(name: str) -> int | None:
    """The line number in *name* if :func:`download_name` could have made it, else ``None``."""
    found = _DOWNLOAD_NAME.fullmatch(name)
    return int(found.group(1)) if found else None
