"""Downloads of result images: streamed to a temporary file, renamed once complete.

The client's :meth:`~monica_async.MonicaClient.download` checks its arguments and
delegates here; the command line's downloads go through the same client method.
:func:`image_body` is the one place a result's bytes are fetched and checked: files
(here) and objects in a store (``_storage``) are both written from it.

A file is renamed into place only when it is a whole image: as long as the server's
``Content-Length`` says, or, without one, ending where its format says it ends (or,
for other formats, decoding with Pillow when it is installed). While it is written,
the temporary file is locked, so that :func:`remove_stale_temporaries` can tell the
leftovers of a killed process from the files of a live one.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import os
import re
import secrets
import time
import warnings
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable
from pathlib import Path
from typing import Final, TypeVar
from urllib.parse import urlsplit

import aiohttp

from . import _retry, _telemetry
from ._config import RetryPolicy
from ._exceptions import (
    APIConnectionError,
    APIResponseValidationError,
    APIStatusError,
    InvalidRequestError,
)
from ._http import (
    USER_AGENT,
    EnvProxies,
    loggable_url,
    map_transport_error,
    read_error_body,
    status_error,
)
from ._redact import safe_url
from ._validation import is_loopback_host, validate_image_url

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows, where an open file cannot be deleted anyway
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "ImageBody",
    "byte_limit",
    "checked_source",
    "download",
    "image_body",
    "image_is_complete",
    "is_temporary_name",
    "logged_attempt",
    "looks_like_image",
    "remove_stale_temporaries",
]

logger = logging.getLogger("monica_async")

T = TypeVar("T")

_IMAGE_MAGIC: Final = (
    b"\x89PNG\r\n\x1a\n",
    b"\xff\xd8\xff",
    b"GIF87a",
    b"GIF89a",
    b"BM",
    b"II*\x00",
    b"MM\x00*",
)
_CHUNK: Final = 64 * 1024
#: The end of a body kept to check the image's own end marker.
_TAIL: Final = 32
#: ``.<target name>.<16 hex digits>.part``: the only names the cleanup ever removes.
_TEMPORARY_NAME: Final = re.compile(r"\..+\.[0-9a-f]{16}\.part", re.S)
_PNG_END: Final = b"IEND\xaeB`\x82"
_JPEG_END: Final = b"\xff\xd9"
#: The last data block's terminator, then the trailer: a lone ";" is too easy to hit.
_GIF_END: Final = b"\x00;"


def looks_like_image(first: bytes) -> bool:
    """Whether *first* (the body's first 16 bytes) starts with a known image signature."""
    if first.startswith(b"RIFF") and first[8:12] == b"WEBP":
        return True
    return first.startswith(_IMAGE_MAGIC)


def image_is_complete(first: bytes, tail: bytes, size: int) -> bool | None:
    """Whether an image of *size* bytes ends where its format says it ends.

    Args:
        first: The body's first 16 bytes.
        tail: Its last 32 bytes.
        size: Its length.

    Returns:
        ``None`` for a format without an end marker checked here (TIFF, BMP, ...).
    """
    if first.startswith(b"\x89PNG\r\n\x1a\n"):
        return _PNG_END in tail  # IEND is the last chunk: present, nothing is missing
    if first.startswith(b"\xff\xd8\xff"):
        return _JPEG_END in tail
    if first.startswith((b"GIF87a", b"GIF89a")):
        return tail.endswith(_GIF_END)
    if first.startswith(b"RIFF") and first[8:12] == b"WEBP":
        return size >= 8 + int.from_bytes(first[4:8], "little")
    return None


def _decodes(source: Path | bytes | bytearray) -> bool | None:
    """Whether Pillow decodes the image (a file, or bytes) whole; ``None`` when it cannot tell."""
    try:
        from PIL import Image, UnidentifiedImageError
    except ImportError:
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a large image's DecompressionBombWarning
            opened = source if isinstance(source, Path) else io.BytesIO(source)
            with Image.open(opened) as image:
                image.load()
    except (UnidentifiedImageError, Image.DecompressionBombError):
        return None
    except (OSError, SyntaxError, ValueError, EOFError):
        return False
    return True


def is_temporary_name(name: str) -> bool:
    """Whether *name* is that of a download's temporary file."""
    return _TEMPORARY_NAME.fullmatch(name) is not None


def remove_stale_temporaries(directory: Path) -> int:
    """Remove the temporary files that killed downloads left in *directory*; count them.

    Only files named like a download's temporary file are considered, and of those only
    the ones no live download holds (its lock is free), so a run sharing the folder
    with another keeps its files. Never raises for a file it cannot remove.
    """
    removed = 0
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return 0
    for entry in entries:
        with contextlib.suppress(OSError):
            if not is_temporary_name(entry.name) or not entry.is_file(follow_symlinks=False):
                continue
            if fcntl is None:  # pragma: no cover - Windows refuses to delete an open file
                os.unlink(entry.path)
                removed += 1
                continue
            fd = os.open(entry.path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                os.unlink(entry.path)
                removed += 1
            finally:
                os.close(fd)
    return removed


def byte_limit(name: str, value: object) -> int:
    """Check a byte limit argument called *name*."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidRequestError(f"{name} must be a number of bytes >= 1, got {value!r}")
    return value


def checked_source(url: str, allow_insecure_http: bool) -> str:
    """Check the URL of an image to download: absolute http(s), plain http only for loopback."""
    url = validate_image_url(url)
    host = urlsplit(url).hostname
    if url.lower().startswith("http:") and not (allow_insecure_http or is_loopback_host(host)):
        raise InvalidRequestError(
            f"refusing to download over plain http from {host!r}; "
            "pass allow_insecure_http=True to the client to allow it"
        )
    return url


async def download(
    session: aiohttp.ClientSession,
    url: str,
    target: Path,
    *,
    limit: int,
    timeout: aiohttp.ClientTimeout,
    policy: RetryPolicy,
    allow_insecure_http: bool,
    proxies: EnvProxies | None = None,
) -> Path:
    """Stream the image at *url* to *target* atomically, retrying transient failures.

    *proxies*: where the proxy of each request comes from (``None``: the session's own
    settings).
    """
    url = checked_source(url, allow_insecure_http)
    proxy = None if proxies is None else proxies.for_url(url)

    async def attempt(number: int) -> Path:
        with _telemetry.download_started(url, number):
            once = _download_once(session, url, target, limit, timeout, proxy)
            return await logged_attempt(once, url, str(target), number)

    return await _retry.retrying(attempt, policy, what=lambda: f"download {loggable_url(url)}")


async def logged_attempt(call: Awaitable[T], url: str, target: str, number: int) -> T:
    """Await download attempt *number*, *call*, and log it at DEBUG.

    One line per attempt, as for API calls, naming the image (its URL without the
    query) and where it goes, so that the lines of a batch's downloads can be told
    apart: ``GET https://cdn.test/r.png -> 200 in 0.052s (attempt 1, to out/cat.png)``.
    """
    if not logger.isEnabledFor(logging.DEBUG):
        return await call
    started = time.monotonic()
    outcome = "no answer"
    try:
        answer = await call
    except APIStatusError as exc:
        outcome = str(exc.status)
        raise
    except BaseException as exc:
        outcome = f"failed ({type(exc).__name__})"
        raise
    else:
        outcome = "200"
    finally:
        logger.debug(
            "GET %s -> %s in %.3fs (attempt %d, to %s)",
            loggable_url(url),
            outcome,
            time.monotonic() - started,
            number,
            target,
        )
    return answer


class ImageBody:
    """The body of an image being downloaded, read as checked chunks.

    :meth:`chunks` yields the body as it arrives and raises, instead of ending, when
    what arrived is not a whole image: empty, over the limit, not an image, shorter
    than its ``Content-Length``, or without one, not ending where its format says. A
    writer commits its file or object only once the iteration ended normally, after
    :meth:`confirm` for the formats only decoding can tell.
    """

    def __init__(
        self,
        url: str,
        response: aiohttp.ClientResponse,
        limit: int,
        timeout: aiohttp.ClientTimeout | None = None,
    ) -> None:
        self.url = url
        self._timeout = timeout
        self.content_type = response.headers.get("content-type", "")
        self._response = response
        self._limit = limit
        self._expected = response.content_length
        # A compressed body is inflated: its length is not the Content-Length.
        self._encoded = response.headers.get("content-encoding", "identity").lower() != "identity"
        self._undecided = False
        self._size = 0

    async def chunks(self) -> AsyncGenerator[bytes, None]:
        """Yield the body; raise :class:`APIError` if it breaks off or is no whole image."""
        url, limit = self.url, self._limit
        size = 0
        first = b""
        tail = b""
        try:
            async for chunk in self._response.content.iter_chunked(_CHUNK):
                if len(first) < 16:
                    # The first chunk can be shorter than a signature (WebP's is 12).
                    first += chunk[: 16 - len(first)]
                tail = (tail + chunk[-_TAIL:])[-_TAIL:]
                size += len(chunk)
                if size > limit:
                    raise _not_downloadable(url, f"is over the {limit}-byte limit")
                yield chunk
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise map_transport_error(exc, "GET", url, timeout=self._timeout) from exc
        if size == 0:
            raise _not_downloadable(url, "is empty")
        if not (self.content_type.startswith("image/") or looks_like_image(first)):
            raise _not_downloadable(
                url, f"is not an image (content-type {self.content_type or 'missing'!r})"
            )
        expected = self._expected
        if expected is not None and not self._encoded:
            if size != expected:
                raise _cut_short(url, f"{size} of the {expected} bytes announced")
            return
        self._size = size
        complete = image_is_complete(first, tail, size)
        if complete is False:
            raise _cut_short(
                url, f"{size} bytes without Content-Length, and the image is not whole"
            )
        self._undecided = complete is None

    @property
    def undecided(self) -> bool:
        """Whether only decoding can tell that the body is whole (no length, no end marker)."""
        return self._undecided

    async def confirm(self, source: Path | bytes | bytearray) -> None:
        """After :meth:`chunks`, decode *source* (the body) if that is what tells it is whole.

        Raises:
            APIConnectionError: Pillow says the image is cut short (retried).
        """
        if self._undecided and await asyncio.to_thread(_decodes, source) is False:
            raise _cut_short(
                url=self.url, what="without Content-Length, and the image is not whole"
            )


@contextlib.asynccontextmanager
async def image_body(
    session: aiohttp.ClientSession,
    url: str,
    *,
    limit: int,
    timeout: aiohttp.ClientTimeout,
    proxy: str | None = None,
) -> AsyncIterator[ImageBody]:
    """GET *url* (no credentials sent) and hand over its body once the answer is a 200.

    Raises:
        APIStatusError: The image server answered another status.
        APIResponseValidationError: The announced length is over *limit*.
        APIConnectionError: The image server could not be reached.
    """
    try:
        async with session.get(
            url, headers={"User-Agent": USER_AGENT}, timeout=timeout, proxy=proxy
        ) as response:
            if response.status != 200:
                raw = (await read_error_body(response)).decode("utf-8", errors="replace")
                raise status_error(response.status, raw, response.headers, url=url, method="GET")
            expected = response.content_length
            if expected is not None and expected > limit:
                raise _not_downloadable(url, f"is {expected} bytes, over the {limit} limit")
            yield ImageBody(url, response, limit, timeout)
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise map_transport_error(exc, "GET", url, timeout=timeout) from exc


def _create_temporary(target: Path) -> tuple[Path, int]:
    """Create and lock a new temporary file beside *target*; return its path and descriptor."""
    # Not mkstemp: the image would keep its 0600. O_EXCL is as safe and honours the umask.
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    while True:
        tmp = target.with_name(f".{target.name}.{secrets.token_hex(8)}.part")
        fd = os.open(tmp, flags, 0o666)
        if fcntl is None:  # pragma: no cover - Windows
            return tmp, fd
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pass  # a cleanup holds it, about to remove it: take another name
        except OSError:
            return tmp, fd  # a file system without locks: the file goes unprotected
        else:
            # A cleanup may have locked and removed the file between its creation and
            # the lock: then the name is free again and this descriptor is an orphan.
            with contextlib.suppress(FileNotFoundError):
                if os.path.samestat(os.fstat(fd), os.stat(tmp)):
                    return tmp, fd
        os.close(fd)


async def _download_once(
    session: aiohttp.ClientSession,
    url: str,
    target: Path,
    limit: int,
    timeout: aiohttp.ClientTimeout,
    proxy: str | None,
) -> Path:
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp, fd = _create_temporary(target)
    except OSError as exc:
        _raise_unwritable(exc, target)
        raise
    try:
        with os.fdopen(fd, "wb") as out:
            async with image_body(session, url, limit=limit, timeout=timeout, proxy=proxy) as body:
                async for chunk in body.chunks():
                    out.write(chunk)
            out.flush()
            await body.confirm(tmp)
            if fcntl is not None:
                # Renamed while still open, so the lock covers the file until it is in place.
                os.replace(tmp, target)
        if fcntl is None:  # pragma: no cover - Windows cannot rename an open file
            os.replace(tmp, target)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(exc, OSError) and not isinstance(exc, aiohttp.ClientError):
            _raise_unwritable(exc, target)
        raise
    return target


def _raise_unwritable(error: OSError, target: Path) -> None:
    """Raise *error* of the local disk again naming *target*, the file the caller asked
    for, instead of its temporary file; return if there is nothing to say better."""
    if error.errno is not None:
        # OSError() picks the subclass of the errno: PermissionError, FileNotFoundError...
        raise OSError(error.errno, error.strerror or str(error), str(target)) from error


def _not_downloadable(url: str, why: str) -> APIResponseValidationError:
    shown = safe_url(url)
    return APIResponseValidationError(
        f"the download from {shown[:200]} {why}", method="GET", url=shown
    )


def _cut_short(url: str, what: str) -> APIConnectionError:
    # Retried like a dropped connection: the next attempt may well get it all.
    shown = safe_url(url)
    return APIConnectionError(
        f"GET {shown} failed: the image was cut short ({what})", method="GET", url=shown
    )
