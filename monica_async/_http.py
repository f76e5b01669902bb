"""What every HTTP exchange of the client shares: headers, error mapping, log-safe URLs.

The one boundary where aiohttp's exceptions become the library's (:func:`map_transport_error`)
and where a non-200 answer becomes an :class:`~monica_async.APIStatusError`
(:func:`status_error`), for API calls and downloads alike.
"""

from __future__ import annotations

import json
import platform
from collections.abc import Mapping
from typing import Final
from urllib.parse import urlsplit

import aiohttp

from . import _retry
from ._exceptions import (
    APIConnectionError,
    APIError,
    APIStatusError,
    APITimeoutError,
    excerpt,
    status_error_class,
)
from ._version import __version__

__all__ = [
    "USER_AGENT",
    "loggable_url",
    "map_transport_error",
    "parse_error_body",
    "request_id",
    "status_error",
]

USER_AGENT: Final = (
    f"monica-async/{__version__} aiohttp/{aiohttp.__version__} python/{platform.python_version()}"
)
_REQUEST_ID_HEADERS: Final = ("x-request-id", "request-id", "x-amzn-requestid", "x-trace-id")


def request_id(headers: Mapping[str, str]) -> str | None:
    """The server's id for this exchange, from the first id header it sent."""
    for name in _REQUEST_ID_HEADERS:
        value = headers.get(name)
        if value:
            return value
    return None


def loggable_url(url: str) -> str:
    """*url* without credentials, query or fragment (a presigned URL's signature), shortened."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    port = f":{parts.port}" if parts.port is not None else ""
    return excerpt(f"{parts.scheme}://{host}{port}{parts.path}", 80)


def parse_error_body(raw: str) -> tuple[str | None, str | None]:
    """Read ``{"error": {"code": ..., "message": ...}}``; never raises."""
    try:
        payload = json.loads(raw)
    except ValueError:
        return None, None
    if not isinstance(payload, dict):
        return None, None
    error = payload.get("error")
    if isinstance(error, dict):
        code, message = error.get("code"), error.get("message")
        return (
            None if code is None else str(code),
            message if isinstance(message, str) and message else None,
        )
    if isinstance(error, str) and error:
        return None, error
    message = payload.get("message")
    return None, message if isinstance(message, str) and message else None


def status_error(
    status: int, raw: str, headers: Mapping[str, str], *, url: str, method: str = "POST"
) -> APIStatusError:
    """Build the error for a non-200 answer; reading the body never raises."""
    code, message = parse_error_body(raw)
    rid = request_id(headers)
    if message is None:
        message = excerpt(raw.strip(), 200) or f"HTTP {status} with an empty body"
    if 300 <= status < 400:
        message = (
            f"unexpected redirect to {headers.get('location', '?')!r}; redirects are not "
            f"followed so that the API key never leaves the API host ({message})"
        )
    error = status_error_class(status)(
        message,
        status=status,
        code=code,
        body=raw,
        retry_after=_retry.parse_retry_after(headers),
        method=method,
        url=url,
        request_id=rid,
    )
    hint = headers.get("x-should-retry", "").strip().lower()
    if hint in ("true", "false"):
        error.should_retry_hint = hint == "true"  # type: ignore[attr-defined]
    return error


def map_transport_error(exc: BaseException, method: str, url: str) -> APIError:
    """Map an aiohttp or timeout error to the library's error (the one boundary).

    The original is redacted in place, since it becomes the ``__cause__``.
    """
    _redact_request_info(exc)
    if isinstance(exc, TimeoutError):
        return APITimeoutError(
            f"{method} {url} timed out ({type(exc).__name__})", method=method, url=url
        )
    if isinstance(exc, aiohttp.ClientConnectorError):
        detail = (
            f"cannot connect to {exc.host}:{exc.port} ({exc.os_error.strerror or exc.os_error})"
        )
    elif isinstance(exc, aiohttp.ServerDisconnectedError):
        detail = "the server closed the connection without answering"
    elif isinstance(exc, aiohttp.ClientPayloadError):
        detail = "the answer's body was cut short"
    elif isinstance(exc, aiohttp.ClientResponseError):
        detail = f"invalid HTTP answer ({exc.message})"
    else:
        detail = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return APIConnectionError(f"{method} {url} failed: {detail}", method=method, url=url)


def _redact_request_info(exc: BaseException) -> None:
    """Hide the API key that aiohttp keeps in ``ClientResponseError.request_info``.

    Its ``repr`` (shown by debuggers, test runners and ``%r`` logging) prints the
    request headers, ``Authorization`` included.
    """
    if not isinstance(exc, aiohttp.ClientResponseError):
        return
    info = exc.request_info
    if info is None or "Authorization" not in info.headers:
        return
    headers = info.headers.copy()
    headers["Authorization"] = "<redacted>"
    redacted = info._replace(headers=type(info.headers)(headers))
    exc.request_info = redacted
    exc.args = (redacted, exc.history)
