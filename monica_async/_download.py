"""Downloads of result images: streamed to a temporary file, renamed once complete.

The client's :meth:`~monica_async.MonicaClient.download` checks its arguments and
delegates here; the command line's downloads go through the same client method.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path
from typing import Final
from urllib.parse import urlsplit

import aiohttp

from . import _retry
from ._config import RetryPolicy
from ._exceptions import APIResponseValidationError, InvalidRequestError
from ._http import USER_AGENT, loggable_url, map_transport_error, status_error
from ._validation import is_loopback_host, validate_image_url

__all__ = ["byte_limit", "download", "looks_like_image"]

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
#: What is read of an error page's body: enough for any message, never a whole file.
_ERROR_BODY_LIMIT: Final = 64 * 1024


def looks_like_image(first: bytes) -> bool:
    """Whether *first* (the body's first 16 bytes) starts with a known image signature."""
    if first.startswith(b"RIFF") and first[8:12] == b"WEBP":
        return True
    return first.startswith(_IMAGE_MAGIC)


def byte_limit(name: str, value: object) -> int:
    """Check a byte limit argument called *name*."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidRequestError(f"{name} must be a number of bytes >= 1, got {value!r}")
    return value


async def download(
    session: aiohttp.ClientSession,
    url: str,
    target: Path,
    *,
    limit: int,
    timeout: aiohttp.ClientTimeout,
    policy: RetryPolicy,
    allow_insecure_http: bool,
) -> Path:
    """Stream the image at *url* to *target* atomically, retrying transient failures."""
    url = validate_image_url(url)
    host = urlsplit(url).hostname
    if url.lower().startswith("http:") and not (allow_insecure_http or is_loopback_host(host)):
        raise InvalidRequestError(
            f"refusing to download over plain http from {host!r}; "
            "pass allow_insecure_http=True to the client to allow it"
        )

    async def attempt(number: int) -> Path:
        return await _download_once(session, url, target, limit, timeout)

    return await _retry.retrying(attempt, policy, what=lambda: f"download {loggable_url(url)}")


async def _download_once(
    session: aiohttp.ClientSession,
    url: str,
    target: Path,
    limit: int,
    timeout: aiohttp.ClientTimeout,
) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    # Not mkstemp: the image would keep its 0600. O_EXCL is as safe and honours the umask.
    tmp = target.with_name(f".{target.name}.{secrets.token_hex(8)}.part")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    fd = os.open(tmp, flags, 0o666)
    try:
        with os.fdopen(fd, "wb") as out:
            try:
                async with session.get(
                    url, headers={"User-Agent": USER_AGENT}, timeout=timeout
                ) as response:
                    if response.status != 200:
                        raw = await _read_error_text(response)
                        raise status_error(
                            response.status, raw, response.headers, url=url, method="GET"
                        )
                    if response.content_length is not None and response.content_length > limit:
                        raise _not_downloadable(
                            url, f"is {response.content_length} bytes, over the {limit} limit"
                        )
                    content_type = response.headers.get("content-type", "")
                    size = 0
                    first = b""
                    async for chunk in response.content.iter_chunked(_CHUNK):
                        if len(first) < 16:
                            # The first chunk can be shorter than a signature (WebP's is 12).
                            first += chunk[: 16 - len(first)]
                        size += len(chunk)
                        if size > limit:
                            raise _not_downloadable(url, f"is over the {limit}-byte limit")
                        out.write(chunk)
            except (aiohttp.ClientError, TimeoutError) as exc:
                raise map_transport_error(exc, "GET", url) from exc
        if size == 0:
            raise _not_downloadable(url, "is empty")
        if not (content_type.startswith("image/") or looks_like_image(first)):
            raise _not_downloadable(
                url, f"is not an image (content-type {content_type or 'missing'!r})"
            )
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return target


async def _read_error_text(response: aiohttp.ClientResponse) -> str:
    try:
        raw = await response.content.read(_ERROR_BODY_LIMIT)
    except (aiohttp.ClientError, TimeoutError):
        return ""
    return raw.decode("utf-8", errors="replace")


def _not_downloadable(url: str, why: str) -> APIResponseValidationError:
    return APIResponseValidationError(f"the download from {url[:200]} {why}", method="GET", url=url)
