"""What every HTTP exchange of the client shares: headers, error mapping, log-safe URLs.

The one boundary where aiohttp's exceptions become the library's (:func:`map_transport_error`)
and where a non-200 answer becomes an :class:`~monica_async.APIStatusError`
(:func:`status_error`), for API calls and downloads alike; also how much of an answer
is read (:func:`read_capped`), which proxy a request goes through (:class:`EnvProxies`)
and whether a request's connection was a reused one (:func:`connections_opened`).
"""

from __future__ import annotations

import contextlib
import contextvars
import errno
import ipaddress
import json
import os
import platform
import re
import urllib.request
from collections.abc import Mapping
from html.parser import HTMLParser
from typing import Any, Final
from urllib.parse import urlsplit

import aiohttp
import attrs

from . import _retry
from ._exceptions import (
    APIConnectionError,
    APIError,
    APIStatusError,
    APITimeoutError,
    excerpt,
    status_error_class,
)
from ._redact import safe_url, scrub_error
from ._text import without_object_reprs
from ._validation import is_loopback_host
from ._version import __version__

__all__ = [
    "MAX_ANSWER_BYTES",
    "USER_AGENT",
    "EnvProxies",
    "ReuseAwareConnector",
    "connections_opened",
    "declared_within",
    "loggable_url",
    "map_transport_error",
    "parse_error_body",
    "read_capped",
    "read_error_body",
    "readable_text",
    "request_id",
    "status_error",
    "tells_reuse",
]

USER_AGENT: Final = (
    f"monica-async/{__version__} aiohttp/{aiohttp.__version__} python/{platform.python_version()}"
)
_REQUEST_ID_HEADERS: Final = ("x-request-id", "request-id", "x-amzn-requestid", "x-trace-id")
#: What is read of an API answer, a 200 or an error: an upscale answer is a short JSON
#: object and an error page a few KiB, so more than this is a server (or proxy) gone wrong.
MAX_ANSWER_BYTES: Final = 256 * 1024
#: Longest message made of an error body that is not the API's JSON.
_MESSAGE_LIMIT: Final = 200
#: What of an HTML page is parsed for its text: a title or a first paragraph is near the top.
_HTML_PARSE_LIMIT: Final = 64 * 1024
_HTML_START: Final = re.compile(
    r"\s*(?:<!--.*?-->\s*)*<(?:!doctype\s+html|html|head|body)\b", re.IGNORECASE | re.DOTALL
)


def request_id(headers: Mapping[str, str]) -> str | None:
    """The server's id for this exchange, from the first id header it sent."""
    for name in _REQUEST_ID_HEADERS:
        value = headers.get(name)
        if value:
            return value
    return None


def loggable_url(url: str) -> str:
    """*url* without credentials, query or fragment (a presigned URL's signature), shortened."""
    return excerpt(safe_url(url), 80)


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


def declared_within(response: aiohttp.ClientResponse, limit: int) -> bool:
    """Whether *response* declares a length of at most *limit* bytes, uncompressed.

    Then nothing more can come, and aiohttp's own ``read()`` reads it whole.
    """
    length = response.content_length
    return length is not None and length <= limit and "content-encoding" not in response.headers


async def read_capped(response: aiohttp.ClientResponse, limit: int) -> tuple[bytes, bool]:
    """Read the body of *response* up to *limit* bytes; return it and whether it was whole.

    At most ``limit + 1`` bytes are ever held, whatever the server sends (or inflates
    to, when the body is compressed); a body over the limit is left unread. A body
    :func:`declared_within` the limit is read whole at once.
    """
    if declared_within(response, limit):
        return await response.read(), True
    content = response.content
    data = await content.read(limit + 1)
    if content.at_eof() or not data:
        # The common case: a short answer, all there in one read.
        return (data, True) if len(data) <= limit else (data[:limit], False)
    chunks = [data]
    size = len(data)
    while size <= limit:
        chunk = await content.read(limit + 1 - size)
        if not chunk:
            return b"".join(chunks), True
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)[:limit], False


async def read_error_body(response: aiohttp.ClientResponse) -> bytes:
    """Up to :data:`MAX_ANSWER_BYTES` of an error answer's body; never raises.

    A body that breaks off (or stalls past the timeout) gives what came before: the
    status is what matters, and it is already known.
    """
    content = response.content
    chunks: list[bytes] = []
    size = 0
    with contextlib.suppress(aiohttp.ClientError, TimeoutError):
        while size < MAX_ANSWER_BYTES:
            chunk = await content.read(MAX_ANSWER_BYTES - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    return b"".join(chunks)


class _PageText(HTMLParser):
    """The title and the visible text of an HTML page (scripts and styles left out)."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.title: list[str] = []
        self.text: list[str] = []
        self._hidden = 0
        self._in_title = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in ("script", "style"):
            self._hidden += 1
        elif tag == "title":
            self._in_title = True

    def handle_endtag(self, tag: str) -> None:
        if tag in ("script", "style"):
            self._hidden = max(0, self._hidden - 1)
        elif tag == "title":
            self._in_title = False

    def handle_data(self, data: str) -> None:
        if not self._hidden:
            (self.title if self._in_title else self.text).append(data)


def readable_text(raw: str, content_type: str = "", limit: int = _MESSAGE_LIMIT) -> str:
    """A short one-line text for people made of a body that is not the API's JSON.

    An HTML page (a proxy's or a load balancer's error page) gives its title, else its
    visible text; anything else its text. Whitespace runs become one space.
    """
    if "html" in content_type.lower() or _HTML_START.match(raw):
        page = _PageText()
        try:
            page.feed(raw[:_HTML_PARSE_LIMIT])
            page.close()
        except Exception:  # pragma: no cover - html.parser is lenient; this is a guard
            pass  # reading an error's body must never raise
        title = " ".join(" ".join(page.title).split())
        raw = title or " ".join(page.text)
    return excerpt(" ".join(raw.split()), limit)


def status_error(
    status: int, raw: str, headers: Mapping[str, str], *, url: str, method: str = "POST"
) -> APIStatusError:
    """Build the error for a non-200 answer to a request for *url*; never raises.

    The error shows *url* as :func:`~monica_async._redact.safe_url` makes it, and the
    secrets of *url* are hidden in its message and body (servers quote what they got).
    """
    code, message = parse_error_body(raw)
    rid = request_id(headers)
    if message is None:
        message = readable_text(raw, headers.get("content-type", "")) or (
            f"HTTP {status} with an empty body"
        )
    if 300 <= status < 400:
        message = (
            f"unexpected redirect to {headers.get('location', '?')!r}; redirects are not "
            f"followed so that the API key never leaves the API host ({message})"
        )
    error = status_error_class(status, code, message)(
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
    scrub_error(error, urls=(url,))
    return error


def map_transport_error(
    exc: BaseException,
    method: str,
    url: str,
    *,
    timeout: aiohttp.ClientTimeout | float | None = None,
) -> APIError:
    """Map an aiohttp or timeout error to the library's error (the one boundary).

    *timeout*: the timeout the request ran under, so that a timeout's message names
    the limit it hit. The error shows *url* without its secrets, and the original
    (which becomes its ``__cause__``) has them hidden in place.
    """
    scrub_error(exc, urls=(url,))
    shown = safe_url(url)
    if isinstance(exc, TimeoutError):
        message = f"{method} {shown} timed out{_timeout_detail(exc, timeout)}; {_TIMEOUT_HINT}"
        return APITimeoutError(message, method=method, url=shown)
    if isinstance(exc, aiohttp.ClientProxyConnectionError):
        detail = (
            f"cannot connect to the proxy {exc.host}:{exc.port} "
            f"({_os_reason(exc.os_error)}); check HTTPS_PROXY / HTTP_PROXY"
        )
    elif isinstance(exc, aiohttp.ClientConnectorDNSError):
        detail = f"cannot find the host {exc.host!r} ({_os_reason(exc.os_error)})"
    elif isinstance(exc, aiohttp.ClientConnectorError):
        if exc.os_error.errno == errno.ECONNREFUSED:
            detail = (
                f"cannot connect to {exc.host}:{exc.port}: connection refused "
                "(no server listens on that port)"
            )
        else:
            detail = f"cannot connect to {exc.host}:{exc.port} ({_os_reason(exc.os_error)})"
    elif isinstance(exc, aiohttp.ServerDisconnectedError):
        detail = "the server closed the connection without answering"
    elif isinstance(exc, aiohttp.ClientHttpProxyError):
        detail = f"the proxy answered {exc.status} {exc.message}; check HTTPS_PROXY / HTTP_PROXY"
    elif isinstance(exc, aiohttp.ClientPayloadError):
        detail = "the answer's body was cut short"
    elif isinstance(exc, aiohttp.ClientResponseError):
        detail = f"invalid HTTP answer ({exc.message})"
    else:
        text = without_object_reprs(str(exc))
        detail = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    error = APIConnectionError(f"{method} {shown} failed: {detail}", method=method, url=shown)
    scrub_error(error, urls=(url,))
    return error


_TIMEOUT_HINT: Final = "pass a larger timeout= to MonicaClient or to the call"


def _timeout_detail(exc: BaseException, timeout: aiohttp.ClientTimeout | float | None) -> str:
    """Which limit of *timeout* the attempt hit, in seconds, as a message goes on."""
    if isinstance(timeout, int | float):
        timeout = aiohttp.ClientTimeout(total=float(timeout))
    if timeout is None:
        return f" ({type(exc).__name__})"
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        # connect (a pooled connection included) or sock_connect: the shorter ran out.
        limits = [t for t in (timeout.connect, timeout.sock_connect) if t is not None]
        if limits:
            return f": no connection within {min(limits):g}s (the connect limit of timeout=)"
    elif isinstance(exc, aiohttp.ServerTimeoutError):
        if timeout.sock_read is not None:
            return f": no data for {timeout.sock_read:g}s (the sock_read limit of timeout=)"
    elif timeout.total is not None:
        return f" after {timeout.total:g}s (the timeout of one attempt)"
    return f" ({type(exc).__name__})"


def _os_reason(error: OSError) -> str:
    """What went wrong, in the system's words: asyncio words a refused connect as
    ``Connect call failed ('127.0.0.1', 80)``, which says less than ``Connection refused``."""
    if isinstance(error.errno, int) and error.errno > 0:
        return os.strerror(error.errno)
    return error.strerror or str(error) or type(error).__name__


@attrs.frozen
class EnvProxies:
    """The standard proxy variables, read once: which proxy a URL goes through.

    ``HTTPS_PROXY`` for https URLs, ``HTTP_PROXY`` for http URLs (lower-case names
    first), ``NO_PROXY`` for the hosts reached directly, as aiohttp's ``trust_env``,
    requests and curl read them. Unlike ``trust_env``, the environment is read once
    rather than on every request (aiohttp reads it in a thread for each one), loopback
    hosts are never proxied, and ``~/.netrc`` is never consulted: its passwords would
    be sent to image hosts, and an entry for the API host would clash with the
    ``Authorization`` header.
    """

    proxies: Mapping[str, str] = attrs.field(factory=dict)

    @classmethod
    def from_environment(cls) -> EnvProxies:
        """Read ``http_proxy``, ``https_proxy`` and ``no_proxy`` (any case) now."""
        found = urllib.request.getproxies_environment()
        return cls({k: v for k, v in found.items() if k in ("http", "https", "no") and v})

    def for_url(self, url: str) -> str | None:
        """The proxy URL for a request to *url*, or ``None`` to connect directly.

        Credentials in the proxy URL (``http://user:pass@proxy:3128``) become its
        ``Proxy-Authorization``, as aiohttp does with any proxy URL.
        """
        if not self.proxies:
            return None
        parts = urlsplit(url)
        proxy = self.proxies.get(parts.scheme.lower())
        # A proxy elsewhere cannot reach this machine's loopback on our behalf (the local
        # stand-in server, the demo): loopback is always reached directly.
        if proxy is None or not parts.hostname or is_loopback_host(parts.hostname):
            return None
        port = parts.port or (443 if parts.scheme.lower() == "https" else 80)
        if _bypassed(parts.hostname, port, self.proxies.get("no", "")):
            return None
        return proxy if "://" in proxy else "http://" + proxy


def _bypassed(host: str, port: int, no_proxy: str) -> bool:
    """Whether ``NO_PROXY`` names *host* (and *port*): ``*``, names with their
    subdomains (``example.com``, ``.example.com``), ``name:port``, IP addresses and
    networks (``10.0.0.0/8``)."""
    host = host.lower().rstrip(".")
    try:
        address: ipaddress.IPv4Address | ipaddress.IPv6Address | None = ipaddress.ip_address(host)
    except ValueError:
        address = None
    for entry in no_proxy.lower().split(","):
        entry = entry.strip()
        if entry == "*":
            return True
        name, wanted_port = entry, None
        if entry.startswith("["):  # [::1] or [::1]:8080
            name, _, rest = entry[1:].partition("]")
            wanted_port = rest[1:] if rest.startswith(":") else None
        elif entry.count(":") == 1:
            name, _, wanted_port = entry.partition(":")
        if wanted_port is not None and wanted_port != str(port):
            continue
        name = name.removeprefix("*").lstrip(".").rstrip(".")
        if not name:
            continue
        if "/" in name:
            with contextlib.suppress(ValueError):
                if address is not None and address in ipaddress.ip_network(name, strict=False):
                    return True
            continue
        if host == name or host.endswith("." + name):
            return True
    return False


class _Opened:
    """How many connections the requests of a task opened (a mutable cell)."""

    __slots__ = ("count",)

    def __init__(self) -> None:
        self.count = 0


_opened: contextvars.ContextVar[_Opened | None] = contextvars.ContextVar(
    "monica_opened", default=None
)


def connections_opened() -> int:
    """How many new connections the requests of this task have opened so far.

    Read before a request and again when it fails: the same count means the request
    went out on a reused connection. Counted by :class:`ReuseAwareConnector`, so only
    meaningful for requests through a session with that connector.
    """
    cell = _opened.get()
    if cell is None:
        # Once per task: a cell, not a new value per request (no context copy then).
        cell = _Opened()
        _opened.set(cell)
    return cell.count


#: Whether aiohttp still opens connections through the method the connector hooks.
_HOOKED: Final = callable(getattr(aiohttp.TCPConnector, "_create_connection", None))


def tells_reuse(session: aiohttp.ClientSession) -> bool:
    """Whether :func:`connections_opened` counts the connections *session* opens, and
    it has opened one (none opened, none can be reused)."""
    connector = session.connector
    return _HOOKED and isinstance(connector, ReuseAwareConnector) and connector.opened > 0


class ReuseAwareConnector(aiohttp.TCPConnector):
    """A ``TCPConnector`` that counts the connections each task's requests open.

    A keep-alive connection can be closed by the server at the very moment a request
    is written to it; that failure says nothing about the server and is worth an
    immediate retry, which only a reused connection deserves (see
    :func:`connections_opened`). Only opening a connection is hooked: a request
    on a pooled one, the hot path, costs nothing more, where a trace config costs a
    dozen hooks a request and a hook on ``connect`` a coroutine and a context change.
    The hook is aiohttp's ``_create_connection``, unchanged in signature since 3.0;
    without it (:func:`tells_reuse` is then false), no resend is made at once and
    the retry policy retries as for any dropped connection.
    """

    #: Connections opened so far, by every task.
    opened = 0

    async def _create_connection(self, req: Any, traces: Any, timeout: Any) -> Any:
        protocol = await super()._create_connection(req, traces, timeout)
        self.opened += 1
        cell = _opened.get()
        if cell is not None:
            cell.count += 1
        return protocol
