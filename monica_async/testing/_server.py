"""A fake Monica Upscale server: a real aiohttp server on 127.0.0.1.

It keeps the published contract (``monica_async/openapi.yaml``) strictly, really
upscales pictures with Pillow, and can be told to misbehave: latency, a per-key
rate limit, a concurrency cap, a balance that runs out and injected faults, each
seedable. :func:`documented_limits` gives the limits Monica publishes for a new key.

How a request to ``POST /v1/image/tool/upscale`` is handled, in order:

1. ``Authorization: Bearer <key>`` is checked (401).
2. The body is checked against the contract (400); with ``process_images`` the
   image host must be a loopback address, checked before any connection is made.
3. The attempt is counted for its image, then the concurrency cap and the per-key
   sliding window are applied (429). Only well-formed requests reach the limits.
4. With a ``quota``, the request takes a unit of the balance, or gets 429
   ``insufficient_quota`` when none is left; only a 200 spends the unit.
5. A fault is chosen (per-image script, then the global queue, then ``fault_rate``).
6. ``latency`` is slept, then the fault is applied or the picture upscaled (200).

Error bodies are ``{"error": {"code": "...", "message": "..."}}``, their messages
worded as Monica's errors page words them where it has the case, and every answer
carries an ``x-request-id`` header. Codes used: ``missing_api_key``,
``invalid_authorization``, ``invalid_api_key`` (401); ``invalid_content_type``,
``empty_body``, ``invalid_json``, ``invalid_body``, ``unknown_field``,
``missing_field``, ``invalid_image``, ``invalid_scale``, ``invalid_image_url``,
``image_host_not_allowed``, ``image_download_failed``, ``image_too_large`` (400);
``not_found`` (404); ``method_not_allowed`` (405); ``rate_limit_exceeded``,
``too_many_concurrent_requests``, ``insufficient_quota`` (429); ``internal_error``,
``service_unavailable`` (5xx).

Times in :class:`FakeServerStats` are ``time.monotonic()`` readings of the process
the server runs in. On Linux that clock is system-wide, so readings fetched over
``GET /_fake/stats`` compare with another local process's ``time.monotonic()``.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import enum
import hashlib
import json
import logging
import math
import random
import re
import secrets
import socket
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping
from email.utils import formatdate
from types import MappingProxyType, TracebackType
from typing import Any, Final, Protocol, Self, TypeAlias, TypedDict
from urllib.parse import urlsplit

import aiohttp
import attrs
from aiohttp import web
from aiohttp.abc import AbstractResolver, ResolveResult

from monica_async._exceptions import InvalidRequestError, excerpt
from monica_async._text import without_object_reprs
from monica_async._validation import ALLOWED_SCALES, is_loopback_host, validate_image_url

from . import _images

__all__ = [
    "API_PATH",
    "DEFAULT_API_KEY",
    "DEFAULT_FAULT_WEIGHTS",
    "DOCUMENTED_MAX_CONCURRENCY",
    "DOCUMENTED_RATE_LIMIT",
    "QUOTA_CODE",
    "QUOTA_MESSAGE",
    "QUOTA_PATH",
    "RATE_LIMIT_MESSAGE",
    "RESET_PATH",
    "STATS_PATH",
    "FakeMonicaServer",
    "FakeServerFactory",
    "FakeServerStats",
    "Fault",
    "Latency",
    "LimitOptions",
    "documented_limits",
    "make_sample_image",
]

logger = logging.getLogger("monica_async.testing")

#: The one endpoint of the contract.
API_PATH: Final = "/v1/image/tool/upscale"
#: ``GET`` returns :meth:`FakeServerStats.to_json`; no auth, not counted.
STATS_PATH: Final = "/_fake/stats"
#: ``POST`` resets the stats and drops the results kept for download; no auth, not counted.
RESET_PATH: Final = "/_fake/reset"
#: ``GET`` returns ``{"quota": N}`` (``null``: no quota); ``POST {"quota": N}`` sets the
#: balance left (a top-up), ``{"quota": null}`` removes it. No auth, not counted.
QUOTA_PATH: Final = "/_fake/quota"

#: Monica's published default limits for Upscale, per key: 10 requests a minute...
DOCUMENTED_RATE_LIMIT: Final = (10, 60.0)
#: ...and 8 requests in flight at once.
DOCUMENTED_MAX_CONCURRENCY: Final = 8
#: Monica's wording of the two 429s (its errors page).
RATE_LIMIT_MESSAGE: Final = "Rate limit reached for requests"
QUOTA_MESSAGE: Final = "You exceeded your current quota, please check your plan and billing details"
QUOTA_CODE: Final = "insufficient_quota"

DEFAULT_API_KEY: Final = "test-key"
DEFAULT_HOST: Final = "127.0.0.1"
#: Seconds announced in ``Retry-After`` by injected 429s and the concurrency cap.
DEFAULT_RETRY_AFTER: Final = 1.0
#: Far past any sane client timeout; a hang still ends when the server stops.
DEFAULT_HANG_SECONDS: Final = 3600.0
#: Seconds :meth:`FakeMonicaServer.stop` lets requests in flight finish before cancelling.
DEFAULT_SHUTDOWN_TIMEOUT: Final = 0.5
DEFAULT_FETCH_TIMEOUT: Final = 10.0
#: The docs page's limits: inputs up to 2048x2048, outputs up to 4096x4096.
DEFAULT_MAX_INPUT_SIZE: Final = (2048, 2048)
DEFAULT_MAX_OUTPUT_SIZE: Final = (4096, 4096)
DEFAULT_MAX_DOWNLOAD_BYTES: Final = 64 * 1024 * 1024
#: Bytes of upscaled results kept for download; past them the oldest are dropped.
DEFAULT_MAX_RESULT_BYTES: Final = 1024 * 1024 * 1024
#: What a kept result counts for besides its bytes (its URL, its entry): so that a
#: long run of tiny results is bounded too.
_RESULT_OVERHEAD: Final = 256

REQUEST_ID_HEADER: Final = "x-request-id"

_FIELDS: Final = ("image", "scale")
_ROUTE_UPSCALE: Final = "upscale"
# Picture downloads and control endpoints are not what a client test measures.
_UNCOUNTED_ROUTES: Final = frozenset(
    {"images", "results", "fake-stats", "fake-reset", "fake-quota", "fake-quota-set"}
)
_NAME_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}")
_DERIVED_RESULT_RE: Final = re.compile(r"/results/[0-9a-f]{40}\.png")
_KEPT_RESULT_RE: Final = re.compile(r"/results/[0-9a-f]{32}\.png")
# After aborting a transport the handler only waits for aiohttp to cancel it
# (handler_cancellation=True), which happens within a loop iteration or two.
_AFTER_ABORT_WAIT: Final = 60.0


class Fault(enum.Enum):
    """Kinds of trouble the fake server can inject."""

    #: 429 with ``Retry-After: <seconds>`` (``retry_after``, rounded up).
    HTTP_429 = "http_429"
    #: 429 with ``Retry-After`` as an HTTP-date ``retry_after`` seconds ahead.
    HTTP_429_DATE = "http_429_date"
    #: 429 with no ``Retry-After`` header.
    HTTP_429_NO_RETRY_AFTER = "http_429_no_retry_after"
    #: 500 with a JSON error body.
    HTTP_500 = "http_500"
    #: 502 with an HTML body, as a gateway in front of the service would send.
    HTTP_502 = "http_502"
    #: 503 with a JSON error body.
    HTTP_503 = "http_503"
    #: 504 with an HTML body, as a gateway in front of the service would send.
    HTTP_504 = "http_504"
    #: The connection is closed without an answer.
    DROP = "drop"
    #: No answer for ``hang_seconds`` (then dropped); ends early when the server stops.
    HANG = "hang"
    #: 200 whose body is not JSON.
    MALFORMED_NOT_JSON = "malformed_not_json"
    #: 200 whose body is JSON without ``image``.
    MALFORMED_NO_IMAGE = "malformed_no_image"


#: Weights of the fault kinds drawn by ``fault_rate``. ``HANG`` is left out (weight 0)
#: because it costs a client its whole timeout; opt in through ``fault_weights``.
DEFAULT_FAULT_WEIGHTS: Final[Mapping[Fault, float]] = MappingProxyType(
    {
        Fault.HTTP_429: 3.0,
        Fault.HTTP_429_DATE: 1.0,
        Fault.HTTP_429_NO_RETRY_AFTER: 1.0,
        Fault.HTTP_500: 2.0,
        Fault.HTTP_502: 2.0,
        Fault.HTTP_503: 3.0,
        Fault.HTTP_504: 1.0,
        Fault.DROP: 1.0,
        Fault.HANG: 0.0,
        Fault.MALFORMED_NOT_JSON: 1.0,
        Fault.MALFORMED_NO_IMAGE: 1.0,
    }
)

#: Monica's wording of the errors its errors page lists, for the faults that play them.
_FAULT_WORDING: Final[Mapping[Fault, str]] = {
    Fault.HTTP_429: RATE_LIMIT_MESSAGE,
    Fault.HTTP_429_DATE: RATE_LIMIT_MESSAGE,
    Fault.HTTP_429_NO_RETRY_AFTER: RATE_LIMIT_MESSAGE,
    Fault.HTTP_500: "The server had an error while processing your request",
    Fault.HTTP_503: "The engine is currently overloaded, please try again later",
}

#: Seconds of latency: fixed, a ``(low, high)`` uniform range, or drawn by a callable
#: from the server's seeded ``random.Random``.
Latency: TypeAlias = float | tuple[float, float] | Callable[[random.Random], float]


class LimitOptions(TypedDict):
    """Keyword arguments of :class:`FakeMonicaServer` that set a key's limits."""

    rate_limit: tuple[int, float]
    max_concurrency: int


def documented_limits(time_scale: float = 1.0) -> LimitOptions:
    """The limits Monica documents for a new key: 10 requests a minute, 8 in flight.

    Pass them to the server: ``FakeMonicaServer(**documented_limits())``. A
    *time_scale* above 1 shortens the window to keep tests fast: ``time_scale=5``
    allows 10 requests per 12 s (latency is not scaled; set it too).

    Raises:
        ValueError: *time_scale* is not a number > 0.
    """
    if (
        isinstance(time_scale, bool)
        or not isinstance(time_scale, int | float)
        or not 0 < time_scale < math.inf
    ):
        raise ValueError(
            f"time_scale must be a number > 0, e.g. 5 for 12 s windows, got {time_scale!r}"
        )
    requests, per = DOCUMENTED_RATE_LIMIT
    return {
        "rate_limit": (requests, per / time_scale),
        "max_concurrency": DOCUMENTED_MAX_CONCURRENCY,
    }


def _count(counter: dict[Any, int], key: Any) -> None:
    counter[key] = counter.get(key, 0) + 1


@attrs.define(kw_only=True)
class FakeServerStats:
    """What a :class:`FakeMonicaServer` saw since it started or was last reset.

    Counted: requests to the API path and to unknown paths. Not counted: picture
    downloads (``/images/...``, ``/results/...``) and ``/_fake/...`` endpoints.
    Times are ``time.monotonic()`` readings of the server's process.

    Attributes:
        total: Requests received.
        by_status: Answers sent, by HTTP status.
        attempts_by_image: Well-formed, authenticated requests per image URL.
        peak_concurrency: Most requests handled at once.
        in_flight: Requests being handled now.
        accepted_times: When each request answered 200 arrived (before any latency).
        request_times: When each request arrived.
        auth_failures: Requests answered 401.
        rate_limited: 429s from the per-key sliding window.
        concurrency_limited: 429s from ``max_concurrency``.
        quota_exceeded: 429s ``insufficient_quota``: no balance was left.
        quota_exceeded_times: When each of those requests arrived.
        faults_injected: Injected faults by kind.
        dropped: Connections closed without an answer (``Fault.DROP``).
        hung: Requests left hanging (``Fault.HANG``).
        disconnected: Requests abandoned before an answer (client gone or server stopped).
    """

    total: int = 0
    by_status: dict[int, int] = attrs.Factory(dict)
    attempts_by_image: dict[str, int] = attrs.Factory(dict)
    peak_concurrency: int = 0
    in_flight: int = 0
    accepted_times: list[float] = attrs.Factory(list)
    request_times: list[float] = attrs.Factory(list)
    auth_failures: int = 0
    rate_limited: int = 0
    concurrency_limited: int = 0
    quota_exceeded: int = 0
    quota_exceeded_times: list[float] = attrs.Factory(list)
    faults_injected: dict[Fault, int] = attrs.Factory(dict)
    dropped: int = 0
    hung: int = 0
    disconnected: int = 0

    @property
    def accepted(self) -> int:
        """Requests answered 200."""
        return len(self.accepted_times)

    def copy(self) -> FakeServerStats:
        """Return an independent copy."""
        return copy.deepcopy(self)

    def to_json(self) -> dict[str, Any]:
        """Return the stats as JSON-ready data (statuses and fault kinds become strings)."""
        data = attrs.asdict(self, recurse=False)
        data["by_status"] = {str(k): v for k, v in self.by_status.items()}
        data["attempts_by_image"] = dict(self.attempts_by_image)
        data["accepted_times"] = list(self.accepted_times)
        data["request_times"] = list(self.request_times)
        data["quota_exceeded_times"] = list(self.quota_exceeded_times)
        data["faults_injected"] = {k.value: v for k, v in self.faults_injected.items()}
        return data

    @classmethod
    def from_json(cls, payload: Mapping[str, Any]) -> FakeServerStats:
        """Rebuild stats from :meth:`to_json` output (e.g. ``GET /_fake/stats``)."""
        data = dict(payload)
        data["by_status"] = {int(k): v for k, v in payload.get("by_status", {}).items()}
        data["faults_injected"] = {
            Fault(k): v for k, v in payload.get("faults_injected", {}).items()
        }
        names = {a.name for a in attrs.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


class _State(enum.Enum):
    NEW = "new"
    RUNNING = "running"
    STOPPED = "stopped"


class _Reply(Exception):
    """Answer the request now with a JSON error."""

    def __init__(
        self, status: int, code: str, message: str, headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = dict(headers or {})

    def response(self) -> web.Response:
        return _error_response(self.status, self.code, self.message, self.headers)


class _Vanished(Exception):
    """The transport was aborted on purpose; there is nobody left to answer."""


def _error_response(
    status: int, code: str, message: str, headers: Mapping[str, str] | None = None
) -> web.Response:
    return web.json_response(
        {"error": {"code": code, "message": message}}, status=status, headers=headers
    )


def _from_http_exception(request: web.Request, exc: web.HTTPException) -> web.Response:
    headers = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
    if exc.status == 404:
        message = f"no such endpoint: {request.method} {request.path}; the API is POST {API_PATH}"
        return _error_response(404, "not_found", message)
    if exc.status == 405:
        allowed = exc.headers.get("Allow", "")
        message = f"method {request.method} is not allowed on {request.path}; use {allowed}"
        return _error_response(405, "method_not_allowed", message, headers)
    code = re.sub(r"\W+", "_", (exc.reason or "error").lower()).strip("_")
    return _error_response(exc.status, code, exc.text or exc.reason, headers)


def _gateway_page(status: int, reason: str) -> web.Response:
    title = f"{status} {reason}"
    html = f"<html><head><title>{title}</title></head><body><h1>{title}</h1></body></html>"
    return web.Response(status=status, text=html, content_type="text/html")


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def _show(value: object) -> str:
    return excerpt(json.dumps(value), 80)


def _reject_constant(name: str) -> object:
    raise ValueError(f"{name} is not allowed in JSON")


def _parse_upscale_body(content_type: str | None, raw: bytes) -> tuple[str, int]:
    """Check an upscale request body against the contract.

    Returns:
        The image URL and the scale.

    Raises:
        _Reply: A 400 naming the first problem found.
    """
    if content_type is None:
        raise _Reply(400, "invalid_content_type", "missing Content-Type; send application/json")
    if content_type != "application/json":
        raise _Reply(
            400,
            "invalid_content_type",
            f"Content-Type must be application/json, got {content_type!r}",
        )
    if not raw.strip():
        raise _Reply(
            400, "empty_body", 'request body is empty; send {"image": "<URL>", "scale": 2}'
        )
    try:
        payload = json.loads(raw, parse_constant=_reject_constant)
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError alike
        raise _Reply(400, "invalid_json", f"request body is not valid JSON: {exc}") from None
    if not isinstance(payload, dict):
        raise _Reply(
            400,
            "invalid_body",
            f"request body must be a JSON object, got {_json_type(payload)}: {_show(payload)}",
        )
    unknown = sorted(set(payload) - set(_FIELDS))
    if unknown:
        names = ", ".join(repr(name) for name in unknown)
        raise _Reply(
            400,
            "unknown_field",
            f"unknown field {names}: only 'image' and 'scale' are allowed",
        )
    missing = [name for name in _FIELDS if name not in payload]
    if missing:
        names = " and ".join(repr(name) for name in missing)
        raise _Reply(400, "missing_field", f"missing required field {names}")
    image, scale = payload["image"], payload["scale"]
    if not isinstance(image, str):
        raise _Reply(
            400,
            "invalid_image",
            f"'image' must be a string (a URL), got {_json_type(image)}: {_show(image)}",
        )
    # bool is an int subclass and 2.0 == 2: the contract wants a JSON integer.
    if type(scale) is not int:
        raise _Reply(
            400,
            "invalid_scale",
            f"'scale' must be an integer, got {_json_type(scale)}: {_show(scale)}",
        )
    if scale not in ALLOWED_SCALES:
        raise _Reply(
            400,
            "invalid_scale",
            f"'scale' must be one of {list(ALLOWED_SCALES)}, got {_show(scale)}",
        )
    try:
        validate_image_url(image)
    except InvalidRequestError as exc:
        raise _Reply(400, "invalid_image_url", str(exc)) from None
    return image, scale


class _LoopbackResolver(AbstractResolver):
    """Resolve ``localhost`` to loopback addresses and refuse every other name.

    The host of each image URL is checked before fetching; this resolver makes
    sure no name lookup can lead the fetcher off this machine all the same.
    """

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        if host.lower() != "localhost":
            raise OSError(f"the fake server only fetches from loopback hosts, not {host!r}")
        addresses = [("127.0.0.1", socket.AF_INET), ("::1", socket.AF_INET6)]
        return [
            ResolveResult(hostname=host, host=addr, port=port, family=fam, proto=0, flags=0)
            for addr, fam in addresses
            if family in (socket.AF_UNSPEC, fam)
        ]

    async def close(self) -> None:
        return None


def _check_latency(_: object, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value is None or callable(value):
        return
    if isinstance(value, tuple):
        if (
            len(value) == 2
            and all(isinstance(v, int | float) and not isinstance(v, bool) for v in value)
            and 0 <= value[0] <= value[1]
        ):
            return
        raise ValueError(f"latency range must be (low, high) with 0 <= low <= high, got {value!r}")
    if isinstance(value, int | float) and not isinstance(value, bool) and value >= 0:
        return
    raise ValueError(
        f"latency must be seconds >= 0, a (low, high) range or a callable, got {value!r}"
    )


def _check_rate_limit(_: object, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value is None:
        return
    ok = (
        isinstance(value, tuple)
        and len(value) == 2
        and type(value[0]) is int
        and value[0] >= 1
        and isinstance(value[1], int | float)
        and value[1] > 0
    )
    if not ok:
        raise ValueError(
            f"rate_limit must be (requests, per_seconds) with requests >= 1 and "
            f"per_seconds > 0, e.g. (60, 60.0), got {value!r}"
        )


def _check_max_concurrency(_: object, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value is not None and (type(value) is not int or value < 1):
        raise ValueError(f"max_concurrency must be None or an int >= 1, got {value!r}")


def _check_quota(_: object, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value is not None and (type(value) is not int or value < 0):
        raise ValueError(
            f"quota must be None or an int >= 0 (successful calls left), got {value!r}"
        )


def _check_fault_rate(_: object, attribute: attrs.Attribute[Any], value: Any) -> None:
    if not isinstance(value, int | float) or not 0.0 <= value <= 1.0:
        raise ValueError(f"fault_rate must be between 0.0 and 1.0, got {value!r}")


def _check_fault_weights(_: object, attribute: attrs.Attribute[Any], value: Any) -> None:
    for kind, weight in value.items():
        if not isinstance(kind, Fault) or not isinstance(weight, int | float) or weight < 0:
            raise ValueError(
                f"fault_weights must map Fault kinds to weights >= 0, got {kind!r}: {weight!r}"
            )
    if sum(value.values()) <= 0:
        raise ValueError("fault_weights must give at least one Fault a weight above 0")


def _check_non_negative(_: object, attribute: attrs.Attribute[Any], value: Any) -> None:
    if not isinstance(value, int | float) or value < 0:
        raise ValueError(f"{attribute.name} must be seconds >= 0, got {value!r}")


def _check_byte_count(_: object, attribute: attrs.Attribute[Any], value: Any) -> None:
    if type(value) is not int or value < 0:
        raise ValueError(f"{attribute.name} must be an integer >= 0, got {value!r}")


def _check_size(_: object, attribute: attrs.Attribute[Any], value: Any) -> None:
    if not (
        isinstance(value, tuple)
        and len(value) == 2
        and all(type(v) is int and v >= 1 for v in value)
    ):
        raise ValueError(f"{attribute.name} must be (width, height) in pixels, got {value!r}")


def _freeze_weights(value: Mapping[Fault, float]) -> Mapping[Fault, float]:
    return MappingProxyType(dict(value))


class _Results:
    """The results a server made, kept for download, oldest dropped past a budget of bytes.

    The newest result is always kept, however large. A dropped result that is being
    downloaded goes on being sent: the response holds its bytes.
    """

    def __init__(self) -> None:
        self._kept: dict[str, bytes] = {}  # in insertion order: oldest first
        self.size = 0

    def __len__(self) -> int:
        return len(self._kept)

    def add(self, path: str, data: bytes, budget: int) -> None:
        """Keep *data* at *path*; drop the oldest results while over *budget* bytes."""
        self._kept[path] = data
        self.size += len(data) + _RESULT_OVERHEAD
        while self.size > budget and len(self._kept) > 1:
            oldest = next(iter(self._kept))
            self.size -= len(self._kept.pop(oldest)) + _RESULT_OVERHEAD

    def get(self, path: str) -> bytes | None:
        """The result at *path*, unless it was dropped (or never made)."""
        return self._kept.get(path)

    def clear(self) -> None:
        """Drop every result."""
        self._kept.clear()
        self.size = 0


# eq=False: a server is a live object, equal only to itself (and hashable).
@attrs.define(kw_only=True, eq=False)
class FakeMonicaServer:
    """A local stand-in for the Monica Upscale API, for tests and benchmarks.

    Use it as ``async with FakeMonicaServer() as server:`` or call :meth:`start`
    and :meth:`stop`. The knobs are plain attributes: except ``host``, ``port`` and
    ``seed`` they can be changed while the server runs (assignments are validated).

    Args:
        api_key: The key accepted as ``Authorization: Bearer <key>``; ``None``
            accepts any non-empty key (each key gets its own rate window).
        host: Address to listen on.
        port: Port to listen on; 0 lets the OS pick (see :attr:`base_url`).
        process_images: Download, decode and really upscale each picture. When
            ``False`` nothing is fetched: the answer is immediate and names
            ``{base_url}/results/<sha1 of the image URL>.png`` (a 1x1 PNG).
        latency: Seconds added to each admitted request; see :data:`Latency`.
        rate_limit: ``(requests, per_seconds)`` per API key, as a sliding window;
            over it: 429 with ``Retry-After`` (whole seconds until a slot frees).
        max_concurrency: Admitted requests handled at once; more: 429.
            :func:`documented_limits` gives Monica's defaults for both.
        quota: Successful calls the balance still pays for, shared by every key;
            then 429 ``insufficient_quota`` with Monica's wording and no
            ``Retry-After``. Each 200 spends one; assign (or ``POST`` to
            :data:`QUOTA_PATH`) to top up. ``None`` (default): no quota.
        fault_rate: Probability of injecting a fault into an admitted request.
        fault_weights: Relative weights of the fault kinds ``fault_rate`` draws.
        retry_after: Seconds announced by injected 429s and concurrency 429s.
        hang_seconds: How long a ``Fault.HANG`` lasts (the server stopping ends it).
        seed: Seed of the random draws (latency, faults) for repeatable runs.
        max_input_size: Largest accepted input picture, ``(width, height)``.
        max_output_size: Largest output picture, ``(width, height)``.
        fetch_timeout: Seconds allowed for downloading an input picture.
        shutdown_timeout: Seconds :meth:`stop` waits for requests in flight (read
            by :meth:`start`).
        max_download_bytes: Largest input picture file accepted, in bytes.
        max_result_bytes: Bytes of upscaled results kept for download: past them
            the oldest are dropped (their URLs then answer 404), so that a long run
            stays bounded. The newest is always kept; :data:`RESET_PATH` and
            :meth:`clear_results` drop them all.
    """

    api_key: str | None = attrs.field(default=DEFAULT_API_KEY, repr=False)
    host: str = attrs.field(default=DEFAULT_HOST, on_setattr=attrs.setters.frozen)
    port: int = attrs.field(default=0, on_setattr=attrs.setters.frozen)
    process_images: bool = True
    latency: Latency | None = attrs.field(default=None, validator=_check_latency)
    rate_limit: tuple[int, float] | None = attrs.field(default=None, validator=_check_rate_limit)
    max_concurrency: int | None = attrs.field(default=None, validator=_check_max_concurrency)
    quota: int | None = attrs.field(default=None, validator=_check_quota)
    fault_rate: float = attrs.field(default=0.0, validator=_check_fault_rate)
    fault_weights: Mapping[Fault, float] = attrs.field(
        default=DEFAULT_FAULT_WEIGHTS, converter=_freeze_weights, validator=_check_fault_weights
    )
    retry_after: float = attrs.field(default=DEFAULT_RETRY_AFTER, validator=_check_non_negative)
    hang_seconds: float = attrs.field(default=DEFAULT_HANG_SECONDS, validator=_check_non_negative)
    seed: int | None = attrs.field(default=None, on_setattr=attrs.setters.frozen)
    max_input_size: tuple[int, int] = attrs.field(
        default=DEFAULT_MAX_INPUT_SIZE, validator=_check_size
    )
    max_output_size: tuple[int, int] = attrs.field(
        default=DEFAULT_MAX_OUTPUT_SIZE, validator=_check_size
    )
    fetch_timeout: float = attrs.field(default=DEFAULT_FETCH_TIMEOUT, validator=_check_non_negative)
    shutdown_timeout: float = attrs.field(
        default=DEFAULT_SHUTDOWN_TIMEOUT, validator=_check_non_negative
    )
    max_download_bytes: int = DEFAULT_MAX_DOWNLOAD_BYTES
    max_result_bytes: int = attrs.field(
        default=DEFAULT_MAX_RESULT_BYTES, validator=_check_byte_count
    )

    _rng: random.Random = attrs.field(init=False, repr=False)
    _stats: FakeServerStats = attrs.field(init=False, repr=False, factory=FakeServerStats)
    _state: _State = attrs.field(init=False, repr=False, default=_State.NEW)
    _runner: web.AppRunner | None = attrs.field(init=False, repr=False, default=None)
    _session: aiohttp.ClientSession | None = attrs.field(init=False, repr=False, default=None)
    _base_url: str | None = attrs.field(init=False, repr=False, default=None)
    _stopping: asyncio.Event | None = attrs.field(init=False, repr=False, default=None)
    _blobs: dict[str, tuple[bytes, str]] = attrs.field(init=False, repr=False, factory=dict)
    _results: _Results = attrs.field(init=False, repr=False, factory=_Results)
    _scripts: dict[str, deque[Fault | None]] = attrs.field(init=False, repr=False, factory=dict)
    _queue: deque[Fault | None] = attrs.field(init=False, repr=False, factory=deque)
    _windows: dict[str, deque[float]] = attrs.field(init=False, repr=False, factory=dict)
    _active: int = attrs.field(init=False, repr=False, default=0)
    #: Requests in progress holding a unit of the balance, not spent yet.
    _reserved: int = attrs.field(init=False, repr=False, default=0)

    def __attrs_post_init__(self) -> None:
        self._rng = random.Random(self.seed)

    # -- life cycle -------------------------------------------------------------

    async def start(self) -> None:
        """Start listening; :attr:`base_url` is known once this returns.

        Raises:
            RuntimeError: The server was started before (servers are single-use).
            ImportError: ``process_images`` is on and Pillow is not installed.
        """
        if self._state is not _State.NEW:
            raise RuntimeError(
                f"this FakeMonicaServer is {self._state.value}; a server starts once, "
                "create a new one"
            )
        if self.process_images:
            _images.require_pillow()
        self._stopping = asyncio.Event()
        app = web.Application(middlewares=[self._middleware])
        app.router.add_post(API_PATH, self._handle_upscale, name=_ROUTE_UPSCALE)
        app.router.add_get("/images/{name}", self._handle_blob, name="images")
        app.router.add_get("/results/{name}", self._handle_blob, name="results")
        app.router.add_get(STATS_PATH, self._handle_stats, name="fake-stats")
        app.router.add_post(RESET_PATH, self._handle_reset, name="fake-reset")
        app.router.add_get(QUOTA_PATH, self._handle_quota, name="fake-quota")
        app.router.add_post(QUOTA_PATH, self._handle_set_quota, name="fake-quota-set")
        # handler_cancellation: a client that gives up (e.g. on a hang) frees its handler.
        runner = web.AppRunner(
            app,
            access_log=None,
            handler_cancellation=True,
            shutdown_timeout=self.shutdown_timeout,
        )
        await runner.setup()
        try:
            site = web.TCPSite(runner, self.host, self.port)
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        bound_host, bound_port = runner.addresses[0][:2]
        shown = f"[{bound_host}]" if ":" in bound_host else bound_host
        self._base_url = f"http://{shown}:{bound_port}"
        self._runner = runner
        self._state = _State.RUNNING

    async def stop(self) -> None:
        """Stop listening and end every request in flight; safe to call twice.

        Hanging requests end at once (their connections are closed); others get
        ``shutdown_timeout`` seconds to finish before they are cancelled.
        """
        if self._state is not _State.RUNNING:
            self._state = _State.STOPPED
            return
        self._state = _State.STOPPED
        assert self._stopping is not None
        self._stopping.set()
        try:
            if self._runner is not None:
                await self._runner.cleanup()
        finally:
            self._runner = None
            if self._session is not None:
                await self._session.close()
                self._session = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    # -- public helpers ---------------------------------------------------------

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:<port>``, the value to give a client as its base URL."""
        if self._base_url is None:
            raise RuntimeError("the server is not started yet: await server.start() first")
        return self._base_url

    @property
    def upscale_url(self) -> str:
        """Full URL of the upscale endpoint."""
        return self.base_url + API_PATH

    @property
    def stats(self) -> FakeServerStats:
        """A snapshot of what the server saw (a copy: later requests do not change it)."""
        return self._stats.copy()

    def reset_stats(self) -> None:
        """Forget what the server saw; requests in flight stay counted in ``in_flight``."""
        in_flight = self._stats.in_flight
        self._stats = FakeServerStats(in_flight=in_flight, peak_concurrency=in_flight)

    def clear_results(self) -> None:
        """Drop every upscaled result kept for download (images added stay)."""
        self._results.clear()

    def add_image(
        self, data: bytes, *, name: str | None = None, content_type: str | None = None
    ) -> str:
        """Serve *data* from this server and return its URL.

        Args:
            data: The file's bytes (any bytes: a broken picture is a fine test input).
            name: Last path segment of the URL; by default the bytes' SHA-1 plus an
                extension, so equal bytes get equal URLs. Give distinct names to get
                distinct URLs for the same bytes.
            content_type: Served ``Content-Type``; by default sniffed from the bytes.
        """
        content_type = content_type or _images.sniff_content_type(data)
        if name is None:
            ext = {"image/png": ".png", "image/jpeg": ".jpg", "image/webp": ".webp"}
            name = hashlib.sha1(data).hexdigest() + ext.get(content_type, ".bin")
        elif not _NAME_RE.fullmatch(name):
            raise ValueError(
                f"name must be 1-200 characters of letters, digits, '.', '_' or '-', got {name!r}"
            )
        path = f"/images/{name}"
        url = self.base_url + path
        self._blobs[path] = (bytes(data), content_type)
        return url

    def sample_image(
        self, width: int, height: int, format: str = "PNG", *, name: str | None = None
    ) -> str:
        """Draw a test picture with Pillow, serve it and return its URL.

        Args:
            width: Width in pixels.
            height: Height in pixels.
            format: ``"PNG"``, ``"JPEG"`` or ``"WEBP"``.
            name: Last path segment of the URL; by default ``sample-<w>x<h>.<ext>``.
        """
        fmt = _images.normalize_format(format)
        data = _images.make_sample(width, height, fmt, seed=self.seed or 0)
        if name is None:
            name = f"sample-{width}x{height}.{fmt.lower()}"
        return self.add_image(data, name=name, content_type=_images.content_type_for(fmt))

    def script_faults(self, image_url: str, faults: Iterable[Fault | None]) -> None:
        """Make the next requests for *image_url* fail with *faults*, in order.

        ``None`` in the list means "answer normally this time". Scripts are used
        before the global queue and ``fault_rate``; calling again appends.
        """
        self._scripts.setdefault(image_url, deque()).extend(faults)

    def queue_faults(self, faults: Iterable[Fault | None]) -> None:
        """Apply *faults* to the next admitted requests, in order, whatever their image."""
        self._queue.extend(faults)

    def clear_faults(self) -> None:
        """Drop every scripted and queued fault (``fault_rate`` is left as it is)."""
        self._scripts.clear()
        self._queue.clear()

    def clear_rate_limits(self) -> None:
        """Empty every key's rate window, as if no request had been made."""
        self._windows.clear()

    # -- request handling -------------------------------------------------------

    @web.middleware
    async def _middleware(
        self,
        request: web.Request,
        handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
    ) -> web.StreamResponse:
        request_id = f"req-{uuid.uuid4().hex}"
        if request.match_info.route.name in _UNCOUNTED_ROUTES:
            try:
                response = await handler(request)
            except _Reply as exc:
                response = exc.response()
            except web.HTTPException as exc:
                response = _from_http_exception(request, exc)
        else:
            response = await self._counted(request, handler)
        response.headers[REQUEST_ID_HEADER] = request_id
        return response

    async def _counted(
        self,
        request: web.Request,
        handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
    ) -> web.StreamResponse:
        arrival = time.monotonic()
        stats = self._stats
        stats.total += 1
        stats.request_times.append(arrival)
        stats.in_flight += 1
        stats.peak_concurrency = max(stats.peak_concurrency, stats.in_flight)
        response: web.StreamResponse
        try:
            response = await handler(request)
        except _Reply as exc:
            response = exc.response()
        except web.HTTPException as exc:
            response = _from_http_exception(request, exc)
        except _Vanished:
            # Raised after the transport was aborted; aiohttp now cancels this task.
            await asyncio.sleep(_AFTER_ABORT_WAIT)
            raise
        except asyncio.CancelledError:
            stats.disconnected += 1
            raise
        except Exception as exc:
            logger.exception("fake Monica server failed on %s %s", request.method, request.path)
            response = _error_response(
                500,
                "internal_error",
                f"the fake server failed: {type(exc).__name__}: {without_object_reprs(str(exc))}",
            )
        finally:
            # Decrement the current stats: reset_stats() carries in_flight over.
            self._stats.in_flight -= 1
        _count(stats.by_status, response.status)
        if response.status == 200:
            stats.accepted_times.append(arrival)
        return response

    async def _handle_upscale(self, request: web.Request) -> web.StreamResponse:
        key = self._authenticate(request)
        raw = await request.read()
        content_type = request.content_type if "Content-Type" in request.headers else None
        image, scale = _parse_upscale_body(content_type, raw)
        if self.process_images:
            self._check_fetchable(image)
        _count(self._stats.attempts_by_image, image)
        self._admit(key)
        reserved = self._reserve_quota()
        # Chosen before the latency sleep, so scripts apply in arrival order.
        fault = self._choose_fault(image)
        self._active += 1
        spent = False
        try:
            response = await self._answer(request, image, scale, fault)
            spent = response.status == 200
            return response
        finally:
            self._active -= 1
            if reserved:
                self._settle_quota(spent)

    async def _answer(
        self, request: web.Request, image: str, scale: int, fault: Fault | None
    ) -> web.StreamResponse:
        """Sleep the latency, then inject *fault* or upscale."""
        delay = self._draw_latency()
        if delay > 0:
            await asyncio.sleep(delay)
        if fault is not None:
            _count(self._stats.faults_injected, fault)
            return await self._inject(request, fault)
        if not self.process_images:
            digest = hashlib.sha1(image.encode()).hexdigest()
            return web.json_response({"image": f"{self.base_url}/results/{digest}.png"})
        return await self._upscale(image, scale)

    def _reserve_quota(self) -> bool:
        """Hold a unit of the balance for this request; tell whether one is held.

        Raises:
            _Reply: 429 ``insufficient_quota`` when every unit is spent or held.
        """
        if self.quota is None:
            return False
        if self.quota - self._reserved <= 0:
            self._stats.quota_exceeded += 1
            self._stats.quota_exceeded_times.append(time.monotonic())
            raise _Reply(429, QUOTA_CODE, QUOTA_MESSAGE)
        self._reserved += 1
        return True

    def _settle_quota(self, spent: bool) -> None:
        """Give back the unit a request held, spending it if the request succeeded."""
        self._reserved -= 1
        if spent and self.quota is not None:
            self.quota = max(0, self.quota - 1)

    def _authenticate(self, request: web.Request) -> str:
        header = request.headers.get("Authorization")
        challenge = {"WWW-Authenticate": "Bearer"}
        scheme, _, token = (header or "").partition(" ")
        token = token.strip()
        if not header:
            problem = (
                "missing_api_key",
                "missing Authorization header; send 'Authorization: Bearer <API key>'",
            )
        elif scheme.lower() != "bearer" or not token:
            problem = (
                "invalid_authorization",
                f"Authorization header must be 'Bearer <API key>', got scheme {scheme!r}",
            )
        elif self.api_key is not None and not secrets.compare_digest(
            token.encode(), self.api_key.encode()
        ):
            problem = ("invalid_api_key", "Incorrect API key provided")
        else:
            return token
        self._stats.auth_failures += 1
        raise _Reply(401, *problem, headers=challenge)

    def _check_fetchable(self, image: str) -> None:
        host = urlsplit(image).hostname
        if not is_loopback_host(host):
            raise _Reply(
                400,
                "image_host_not_allowed",
                f"image host {host!r} is not a loopback address: this fake server only "
                "downloads from 127.0.0.0/8, ::1 and localhost (serve pictures with "
                "server.add_image() or server.sample_image())",
            )

    def _admit(self, key: str) -> None:
        limit = self.max_concurrency
        if limit is not None and self._active >= limit:
            self._stats.concurrency_limited += 1
            raise _Reply(
                429,
                "too_many_concurrent_requests",
                f"{RATE_LIMIT_MESSAGE}: more than {limit} at once for this API key; retry later",
                headers={"Retry-After": self._retry_after_header()},
            )
        if self.rate_limit is None:
            return
        requests, per = self.rate_limit
        now = time.monotonic()
        # Sliding-window log: the times of the admitted requests of the last `per`
        # seconds; a request is admitted while fewer than `requests` are in it.
        window = self._windows.setdefault(key, deque())
        while window and window[0] <= now - per:
            window.popleft()
        if len(window) >= requests:
            # The slot frees when the request `requests` places from the end leaves.
            frees_at = window[len(window) - requests] + per
            wait = max(1, math.ceil(frees_at - now))
            self._stats.rate_limited += 1
            raise _Reply(
                429,
                "rate_limit_exceeded",
                f"{RATE_LIMIT_MESSAGE}: over {requests} requests per {per:g} s for this API "
                f"key; retry in {wait} s",
                headers={"Retry-After": str(wait)},
            )
        window.append(now)

    def _choose_fault(self, image: str) -> Fault | None:
        script = self._scripts.get(image)
        if script:
            fault = script.popleft()
            if not script:
                del self._scripts[image]
            return fault
        if self._queue:
            return self._queue.popleft()
        if self.fault_rate > 0 and self._rng.random() < self.fault_rate:
            kinds = list(self.fault_weights)
            return self._rng.choices(kinds, weights=[self.fault_weights[k] for k in kinds])[0]
        return None

    def _draw_latency(self) -> float:
        spec = self.latency
        if spec is None:
            return 0.0
        if callable(spec):
            return max(0.0, float(spec(self._rng)))
        if isinstance(spec, tuple):
            return self._rng.uniform(*spec)
        return float(spec)

    def _retry_after_header(self) -> str:
        return str(math.ceil(self.retry_after))

    async def _inject(self, request: web.Request, fault: Fault) -> web.StreamResponse:
        wording = _FAULT_WORDING.get(fault)
        message = f"injected fault: {fault.value}"
        if wording is not None:
            message = f"{wording} ({message})"
        if fault is Fault.HTTP_429:
            return _error_response(
                429, "rate_limit_exceeded", message, {"Retry-After": self._retry_after_header()}
            )
        if fault is Fault.HTTP_429_DATE:
            when = formatdate(math.ceil(time.time() + self.retry_after), usegmt=True)
            return _error_response(429, "rate_limit_exceeded", message, {"Retry-After": when})
        if fault is Fault.HTTP_429_NO_RETRY_AFTER:
            return _error_response(429, "rate_limit_exceeded", message)
        if fault is Fault.HTTP_500:
            return _error_response(500, "internal_error", message)
        if fault is Fault.HTTP_502:
            return _gateway_page(502, "Bad Gateway")
        if fault is Fault.HTTP_503:
            return _error_response(503, "service_unavailable", message)
        if fault is Fault.HTTP_504:
            return _gateway_page(504, "Gateway Timeout")
        if fault is Fault.MALFORMED_NOT_JSON:
            return web.Response(
                status=200, text='{"image": "http://truncated', content_type="application/json"
            )
        if fault is Fault.MALFORMED_NO_IMAGE:
            return web.json_response({"status": "ok"})
        if fault is Fault.HANG:
            self._stats.hung += 1
            assert self._stopping is not None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self.hang_seconds)
        else:
            self._stats.dropped += 1
        if request.transport is not None:
            request.transport.abort()
        raise _Vanished

    async def _upscale(self, image: str, scale: int) -> web.Response:
        data = await self._download(image)
        try:
            result = await asyncio.to_thread(
                _images.upscale,
                data,
                scale,
                max_input=self.max_input_size,
                max_output=self.max_output_size,
            )
        except _images.ImageError as exc:
            raise _Reply(400, exc.code, exc.message) from None
        path = f"/results/{uuid.uuid4().hex}.png"
        self._results.add(path, result, self.max_result_bytes)
        return web.json_response({"image": self.base_url + path})

    async def _download(self, image: str) -> bytes:
        if self._session is None:
            connector = aiohttp.TCPConnector(resolver=_LoopbackResolver())
            self._session = aiohttp.ClientSession(connector=connector)
        limit = self.max_download_bytes
        try:
            async with self._session.get(
                image,
                allow_redirects=False,  # a redirect could point off this machine
                timeout=aiohttp.ClientTimeout(total=self.fetch_timeout),
            ) as response:
                if response.status != 200:
                    raise _Reply(
                        400,
                        "image_download_failed",
                        f"could not download the image: GET {image} answered HTTP "
                        f"{response.status}",
                    )
                data = bytearray()
                async for chunk in response.content.iter_chunked(256 * 1024):
                    data += chunk
                    if len(data) > limit:
                        raise _Reply(
                            400,
                            "image_too_large",
                            f"the image at {image} is larger than {limit} bytes",
                        )
                return bytes(data)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            reason = without_object_reprs(str(exc)) or type(exc).__name__
            raise _Reply(
                400, "image_download_failed", f"could not download the image {image}: {reason}"
            ) from None

    async def _handle_blob(self, request: web.Request) -> web.StreamResponse:
        found = self._blobs.get(request.path)
        if found is None and (result := self._results.get(request.path)) is not None:
            found = (result, "image/png")
        if found is None and _DERIVED_RESULT_RE.fullmatch(request.path):
            found = (_images.placeholder_png(), "image/png")
        if found is None and _KEPT_RESULT_RE.fullmatch(request.path):
            raise _Reply(
                404,
                "not_found",
                f"no result at {request.path}: results are kept up to max_result_bytes "
                f"({self.max_result_bytes} bytes), oldest dropped first, until a reset",
            )
        if found is None:
            raise _Reply(404, "not_found", f"nothing is served at {request.path}")
        data, content_type = found
        return web.Response(body=data, content_type=content_type)

    async def _handle_stats(self, request: web.Request) -> web.StreamResponse:
        return web.json_response(self._stats.to_json())

    async def _handle_reset(self, request: web.Request) -> web.StreamResponse:
        self.reset_stats()
        self.clear_results()
        return web.json_response({"reset": True})

    async def _handle_quota(self, request: web.Request) -> web.StreamResponse:
        return web.json_response({"quota": self.quota})

    async def _handle_set_quota(self, request: web.Request) -> web.StreamResponse:
        try:
            payload = await request.json()
            self.quota = payload["quota"]
        except (ValueError, TypeError, KeyError) as exc:
            reason = str(exc) if isinstance(exc, ValueError) else "expected a JSON object"
            raise _Reply(
                400, "invalid_quota", f'send {{"quota": N}} with N an int >= 0 or null ({reason})'
            ) from None
        return web.json_response({"quota": self.quota})


class FakeServerFactory(Protocol):
    """Type of the ``fake_monica_factory`` pytest fixture.

    ``await fake_monica_factory(**options)`` starts a :class:`FakeMonicaServer` with
    any of its keyword arguments; every server it started stops after the test.
    """

    def __call__(self, **options: Any) -> Awaitable[FakeMonicaServer]:
        """Start a server with *options* and return it."""
        ...


def make_sample_image(width: int, height: int, format: str = "PNG", *, seed: int = 0) -> bytes:
    """Return the bytes of a generated test picture (Pillow required).

    The same arguments always give the same bytes. ``format`` is ``"PNG"``,
    ``"JPEG"`` or ``"WEBP"``.
    """
    return _images.make_sample(width, height, format, seed=seed)
