"""The command line's options as values, and the parsers of the compound ones."""

from __future__ import annotations

import enum
from pathlib import Path
from typing import Final

import attrs

from monica_async._text import parse_rate

__all__ = ["STDOUT", "InputFormat", "RateSpec", "RunOptions", "ShardSpec", "UsageError"]

DEFAULT_GRACE: Final = 10.0
#: Seconds between two progress lines when stderr is not a terminal.
DEFAULT_LOG_INTERVAL: Final = 5.0
#: ``--output -``: the records go to stdout.
STDOUT: Final = "-"


class UsageError(Exception):
    """A usage or configuration error: reported in one line, exit status 2."""


class InputFormat(enum.Enum):
    """How the input lists its URLs."""

    AUTO = "auto"
    TXT = "txt"
    CSV = "csv"
    JSONL = "jsonl"


@attrs.frozen
class ShardSpec:
    """``--shard K/N``: this process takes the inputs whose line number is K modulo N."""

    index: int
    count: int

    @classmethod
    def parse(cls, text: str) -> ShardSpec:
        """Parse ``K/N`` with ``0 <= K < N``.

        Raises:
            UsageError: *text* is not of that form.
        """
        left, sep, right = text.partition("/")
        try:
            index, count = int(left), int(right)
        except ValueError:
            index = count = -1
        if not sep or count < 1 or index < 0:
            raise UsageError(f"--shard must look like K/N with 0 <= K < N, e.g. 0/4, got {text!r}")
        if index >= count:
            raise UsageError(
                f"--shard K/N needs 0 <= K < N (shards are numbered 0 to {count - 1}), got {text!r}"
            )
        return cls(index, count)

    def takes(self, line: int) -> bool:
        """Tell whether the input starting on *line* belongs to this shard."""
        return line % self.count == self.index

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


@attrs.frozen
class RateSpec:
    """``--rate N/unit``: at most *requests* attempts per *per* seconds."""

    requests: int
    per: float

    @classmethod
    def parse(cls, text: str) -> RateSpec:
        """Parse ``60/min``, ``5/s``, ``1000/h``, ``10/30s``, ``100/1.5min`` or ``60/60``.

        Raises:
            UsageError: *text* is not of that form.
        """
        try:
            requests, per = parse_rate(text)
        except ValueError as exc:
            raise UsageError(f"--rate {exc}") from None
        return cls(requests, per)

    def __str__(self) -> str:
        unit = {1.0: "s", 60.0: "min", 3600.0: "h"}.get(self.per)
        return f"{self.requests}/{unit}" if unit else f"{self.requests}/{self.per:g}s"


@attrs.frozen(kw_only=True)
class RunOptions:
    """Everything ``monica-upscale run`` needs, checked.

    Attributes:
        input: Path of the input, ``-`` for stdin.
        output: The JSON Lines results file; ``-``: stdout.
        api_key: The API key (never printed).
        download_dir: Where to download results; ``None``: no downloads (or
            *download_prefix*).
        concurrency: Requests (and downloads) in flight at most; ``None``: automatic
            (the client's default).
        in_flight: Requests the key allows at once: the automatic concurrency's
            ceiling (``Limits.in_flight``); ``None``: unknown.
        rate: The key's rate limit; ``None``: adaptive (the client's default).
        scale: Scale factor.
        resume: Skip the inputs whose latest record in *output* is a success.
        shard: Take only this shard of the inputs.
        redis_url: Share *rate* between processes through this Redis.
        base_url: The API's root; ``None``: ``MONICA_BASE_URL`` or the real service.
        retries: Retries per input; ``None``: the client's default.
        timeout: Seconds per attempt; ``None``: the client's default.
        grace: Seconds in-flight requests get to finish after Ctrl-C.
        input_format: The input's format; ``AUTO`` detects it.
        resume_command: The command that resumes this run, printed on interruption.
        log_interval: Seconds between progress lines when stderr is not a terminal.
        progress_bar: Draw a progress bar (``None``: when stderr is a terminal).
        allow_insecure_http: Accept a plain ``http://`` API root that is not loopback.
        verbosity: -1 errors only, 0 normal, 1 retries too, 2 every attempt.
        download_prefix: An object URL prefix (``s3://bucket/prefix/``) to write
            results under, instead of *download_dir*.
        staging: Where local files are uploaded before being sent (an object URL prefix).
    """

    input: str
    output: Path
    api_key: str = attrs.field(repr=False)
    download_dir: Path | None = None
    concurrency: int | None = None
    in_flight: int | None = None
    rate: RateSpec | None = None
    scale: int = 2
    resume: bool = False
    shard: ShardSpec | None = None
    redis_url: str | None = attrs.field(default=None, repr=False)
    base_url: str | None = None
    retries: int | None = None
    timeout: float | None = None
    grace: float = DEFAULT_GRACE
    input_format: InputFormat = InputFormat.AUTO
    resume_command: str | None = None
    log_interval: float = DEFAULT_LOG_INTERVAL
    progress_bar: bool | None = None
    allow_insecure_http: bool = False
    verbosity: int = 0
    download_prefix: str | None = None
    staging: str | None = None

    @property
    def to_stdout(self) -> bool:
        """The records stream to stdout (``--output -``)."""
        return str(self.output) == STDOUT

    @property
    def downloads(self) -> bool:
        """Whether results are downloaded (to a folder or a bucket)."""
        return self.download_dir is not None or self.download_prefix is not None

    @property
    def download_target(self) -> str | None:
        """Where results go, as shown to the user."""
        if self.download_prefix is not None:
            return self.download_prefix
        return None if self.download_dir is None else str(self.download_dir)
