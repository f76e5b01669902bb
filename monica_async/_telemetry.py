"""OpenTelemetry traces and metrics of the client, through the global providers.

Optional: the ``otel`` extra brings opentelemetry-api, and the application configures
an SDK (``trace.set_tracer_provider``, ``metrics.set_meter_provider``, or the
``opentelemetry-instrument`` launcher). Without the API, or with no SDK configured,
each hook returns ``None`` after reading two module globals, and the client skips the
rest.

What is emitted (names that dashboards can rely on):

- span ``monica.upscale`` (INTERNAL) around each upscale call or batch input that
  passed validation: ``monica.scale``, ``monica.attempts``, ``monica.limiter.wait``
  (seconds waited on the rate limiter, all attempts), ``monica.request_id`` when
  known; on failure status ERROR and ``error.type``, the exception's class name;
- under it, span ``POST`` (CLIENT) per HTTP attempt, after the HTTP client semantic
  conventions: ``http.request.method``, ``server.address``, ``server.port``,
  ``url.full`` (no credentials, query or fragment), ``http.response.status_code``,
  ``http.request.resend_count`` from the second attempt on, ``error.type`` on
  failure (the status code for an HTTP error answer, else the exception's class);
- span ``GET`` (CLIENT) per download attempt, the same way;
- histogram ``http.client.request.duration`` (s) per attempt, with those attributes
  but ``url.full``; histogram ``monica.limiter.wait`` (s) per attempt; counter
  ``monica.upscale.outcomes`` with ``outcome`` = ``ok`` or the error's class name.

Nothing carries the API key, and URLs lose their query, where presigned URLs keep
their signature (``url.full`` drops it, an error description shows ``?<redacted>``);
the body of an error answer, or of a 200 that breaks the contract, is left out, as it
may quote them. While an attempt's span
is current, OpenTelemetry's "suppress HTTP instrumentation" context key is set, so
that opentelemetry-instrumentation-aiohttp-client does not add a second span (and a
second duration) for the same request.
"""

from __future__ import annotations

import contextlib
import functools
import os
import time
from contextvars import ContextVar
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import urlsplit

from ._exceptions import APIError, APIResponseValidationError, APIStatusError
from ._redact import safe_url, scrub_text
from ._version import __version__

if TYPE_CHECKING:
    from ._models import UpscaleResult

__all__ = [
    "HTTP_DURATION",
    "LIMITER_WAIT",
    "UPSCALE_OUTCOMES",
    "UPSCALE_SPAN",
    "attempt_started",
    "download_started",
    "upscale_started",
]

#: The context of an attempt that nothing traces.
_UNTRACED: Final = contextlib.nullcontext()

SCOPE: Final = "monica_async"
UPSCALE_SPAN: Final = "monica.upscale"
HTTP_DURATION: Final = "http.client.request.duration"
LIMITER_WAIT: Final = "monica.limiter.wait"
UPSCALE_OUTCOMES: Final = "monica.upscale.outcomes"
#: The semantic conventions' advice for HTTP durations, extended to the minutes an
#: upscale attempt may take (the SDK's default buckets are meant for milliseconds).
_DURATION_BUCKETS: Final = (
    *(0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0),
    *(20.0, 30.0, 60.0, 120.0),
)
_WAIT_BUCKETS: Final = (0.0, 0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_DEFAULT_PORTS: Final = {"http": 80, "https": 443}
_DESCRIPTION_LIMIT: Final = 300

try:
    from opentelemetry import context as otel_context
    from opentelemetry import metrics as otel_metrics
    from opentelemetry import trace as otel_trace
    from opentelemetry.metrics import Counter, Histogram
    from opentelemetry.trace import Span, SpanKind, Status, StatusCode, Tracer
except ImportError:  # the otel extra is not installed: every hook returns None
    _INSTALLED = False
else:
    _INSTALLED = True

if _INSTALLED:
    from opentelemetry.metrics import _internal as _metrics_internal

    #: While an attempt's span is current, HTTP instrumentations (aiohttp-client)
    #: make no span of their own for the request.
    _SUPPRESS_HTTP: Any = getattr(otel_context, "_SUPPRESS_HTTP_INSTRUMENTATION_KEY", None)

    # The environment can name the providers; the API loads them on first demand.
    if "OTEL_PYTHON_TRACER_PROVIDER" in os.environ:
        otel_trace.get_tracer_provider()
    if "OTEL_PYTHON_METER_PROVIDER" in os.environ:
        otel_metrics.get_meter_provider()


if (
    _INSTALLED
    and hasattr(otel_trace, "_TRACER_PROVIDER")
    and hasattr(_metrics_internal, "_METER_PROVIDER")
):

    def _configured() -> bool:
        # The globals that set_tracer_provider() and set_meter_provider() fill. The
        # public getters look up os.environ on every call while nothing is set (about
        # 0.8 us each), too much for every request of an application without an SDK.
        return (
            otel_trace._TRACER_PROVIDER is not None or _metrics_internal._METER_PROVIDER is not None
        )

else:  # no API, or one whose globals moved: ask the public getters

    def _configured() -> bool:
        return _INSTALLED and _Tools.current() is not None


class _Tools:
    """The tracer and instruments of one pair of global providers (``None``: no-op)."""

    __slots__ = (
        "duration",
        "limiter_wait",
        "meter_provider",
        "outcomes",
        "tracer",
        "tracer_provider",
    )

    def __init__(
        self, tracer_provider: otel_trace.TracerProvider, meter_provider: otel_metrics.MeterProvider
    ) -> None:
        self.tracer_provider = tracer_provider
        self.meter_provider = meter_provider
        self.tracer: Tracer | None = None
        self.duration: Histogram | None = None
        self.limiter_wait: Histogram | None = None
        self.outcomes: Counter | None = None
        if not isinstance(
            tracer_provider, otel_trace.ProxyTracerProvider | otel_trace.NoOpTracerProvider
        ):
            self.tracer = tracer_provider.get_tracer(SCOPE, __version__)
        if not isinstance(
            meter_provider, _metrics_internal._ProxyMeterProvider | otel_metrics.NoOpMeterProvider
        ):
            meter = meter_provider.get_meter(SCOPE, __version__)
            self.duration = meter.create_histogram(
                HTTP_DURATION,
                unit="s",
                description="Duration of HTTP client requests.",
                explicit_bucket_boundaries_advisory=_DURATION_BUCKETS,
            )
            self.limiter_wait = meter.create_histogram(
                LIMITER_WAIT,
                unit="s",
                description="Seconds an attempt waited for the rate limiter before it started.",
                explicit_bucket_boundaries_advisory=_WAIT_BUCKETS,
            )
            self.outcomes = meter.create_counter(
                UPSCALE_OUTCOMES,
                unit="{upscale}",
                description="Finished upscale calls, by outcome: ok or the error's class name.",
            )

    @property
    def off(self) -> bool:
        """Whether both providers are no-ops."""
        return self.tracer is None and self.duration is None

    @classmethod
    def current(cls) -> _Tools | None:
        """The tools of the global providers, or ``None`` when neither records anything."""
        tracer_provider = otel_trace.get_tracer_provider()
        meter_provider = otel_metrics.get_meter_provider()
        global _cache
        tools = _cache
        if (
            tools is None
            or tools.tracer_provider is not tracer_provider
            or tools.meter_provider is not meter_provider
        ):
            tools = _cache = cls(tracer_provider, meter_provider)
        return None if tools.off else tools


#: The tools of the providers last seen (they change only when tests reset them).
_cache: _Tools | None = None


_upscale: ContextVar[_Upscale | None] = ContextVar("monica_async_upscale", default=None)


def upscale_started(scale: int) -> _Upscale | None:
    """Start tracing one upscale; ``None`` (do nothing more) without an SDK."""
    if not _configured():
        return None
    tools = _Tools.current()
    return None if tools is None else _Upscale(tools, scale)


def attempt_started(
    url: str, number: int, limiter_wait: float
) -> contextlib.AbstractContextManager[object]:
    """Trace API attempt *number*, which waited *limiter_wait* s for the limiter, for the
    ``with`` block of its exchange (a do-nothing context without an SDK)."""
    upscale = _upscale.get()
    if upscale is None:
        return _UNTRACED
    upscale.attempts += 1
    upscale.limiter_wait += limiter_wait
    tools = upscale.tools
    if tools.limiter_wait is not None:
        tools.limiter_wait.record(limiter_wait)
    return _Attempt(tools, "POST", url, number)


def download_started(url: str, number: int) -> contextlib.AbstractContextManager[object]:
    """Trace download attempt *number* for a ``with`` block (a do-nothing one without an SDK)."""
    if not _configured():
        return _UNTRACED
    tools = _Tools.current()
    return _UNTRACED if tools is None else _Attempt(tools, "GET", url, number)


class _Upscale:
    """The span and counts of one upscale, current while it runs."""

    __slots__ = ("attempts", "limiter_wait", "span", "tokens", "tools")

    def __init__(self, tools: _Tools, scale: int) -> None:
        self.tools = tools
        self.attempts = 0
        self.limiter_wait = 0.0
        self.span: Span | None = None
        otel_token = None
        if tools.tracer is not None:
            self.span = tools.tracer.start_span(
                UPSCALE_SPAN, kind=SpanKind.INTERNAL, attributes={"monica.scale": scale}
            )
            otel_token = otel_context.attach(otel_trace.set_span_in_context(self.span))
        self.tokens = (otel_token, _upscale.set(self))

    def succeeded(self, result: UpscaleResult) -> None:
        """End the span of a call that returned *result*."""
        self._end("ok", result.request_id, None)

    def failed(self, exc: BaseException) -> None:
        """End the span of a call that raised *exc* (cancellation included)."""
        request_id = exc.request_id if isinstance(exc, APIError) else None
        self._end(type(exc).__name__, request_id, exc)

    def _end(self, outcome: str, request_id: str | None, exc: BaseException | None) -> None:
        otel_token, token = self.tokens
        _upscale.reset(token)
        if self.tools.outcomes is not None:
            self.tools.outcomes.add(1, {"outcome": outcome})
        span = self.span
        if span is None:
            return
        span.set_attribute("monica.attempts", self.attempts)
        span.set_attribute(LIMITER_WAIT, self.limiter_wait)
        if request_id:
            span.set_attribute("monica.request_id", request_id)
        if exc is not None:
            span.set_attribute("error.type", outcome)
            span.set_status(Status(StatusCode.ERROR, describe(exc)))
        span.end()
        if otel_token is not None:
            otel_context.detach(otel_token)


class _Attempt:
    """The span and duration of one HTTP attempt."""

    __slots__ = ("attributes", "began", "span", "token", "tools")

    def __init__(self, tools: _Tools, method: str, url: str, number: int) -> None:
        self.tools = tools
        address, port, full = _target(url)
        self.attributes: dict[str, str | int] = {
            "http.request.method": method,
            "server.address": address,
            "server.port": port,
        }
        self.span: Span | None = None
        if tools.tracer is not None:
            attributes: dict[str, str | int] = {**self.attributes, "url.full": full}
            if number > 1:
                attributes["http.request.resend_count"] = number - 1
            self.span = tools.tracer.start_span(method, kind=SpanKind.CLIENT, attributes=attributes)
        self.began = time.monotonic()
        self.token: object = None

    def __enter__(self) -> _Attempt:
        """Make this span current for the attempt's exchange."""
        context = otel_context.get_current()
        if self.span is not None:
            context = otel_trace.set_span_in_context(self.span, context)
        if _SUPPRESS_HTTP is not None:
            context = otel_context.set_value(_SUPPRESS_HTTP, True, context)
        self.token = otel_context.attach(context)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """End the attempt: it raised *exc*, or succeeded."""
        otel_context.detach(self.token)  # type: ignore[arg-type]
        self._end(exc)

    def _end(self, exc: BaseException | None) -> None:
        attributes = self.attributes
        status: int | None = 200
        error_type: str | None = None
        if exc is not None:
            if isinstance(exc, APIStatusError | APIResponseValidationError):
                status = exc.status
            else:
                status = None
            if isinstance(exc, APIStatusError) and exc.status >= 400:
                error_type = str(exc.status)
            else:
                error_type = type(exc).__name__
        if status is not None:
            attributes["http.response.status_code"] = status
        if error_type is not None:
            attributes["error.type"] = error_type
        if self.tools.duration is not None:
            self.tools.duration.record(time.monotonic() - self.began, attributes)
        span = self.span
        if span is None:
            return
        if status is not None:
            span.set_attribute("http.response.status_code", status)
        if error_type is not None:
            span.set_attribute("error.type", error_type)
        if exc is not None:
            span.set_status(Status(StatusCode.ERROR, describe(exc)))
        span.end()


@functools.lru_cache(maxsize=256)
def _target(url: str) -> tuple[str, int, str]:
    """``server.address``, ``server.port`` and ``url.full`` (without credentials, query or
    fragment) of *url*."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = parts.port or _DEFAULT_PORTS.get(parts.scheme, 0)
    return host, port, safe_url(url)


def describe(exc: BaseException) -> str:
    """*exc* for a span's status: its class and message, URLs without query or credentials.

    Of an answer that is not 200, or a 200 that breaks the contract, only the status
    and the body's error code: a body may quote what it was sent, a presigned URL's
    signature or the API key included (the span of an attempt ends before the client
    hides the key in the error).
    """
    if isinstance(exc, APIStatusError):
        text = f"HTTP {exc.status}" + (f" {exc.code[:100]}" if exc.code else "")
    elif isinstance(exc, APIResponseValidationError):
        text = f"HTTP {exc.status}, a body that breaks the contract"
    else:
        text = scrub_text(str(exc))
    if len(text) > _DESCRIPTION_LIMIT:
        text = text[:_DESCRIPTION_LIMIT] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
