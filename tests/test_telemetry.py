"""OpenTelemetry: the spans and metrics the client emits through the global providers.

The tests set the SDK's providers with in-memory span and metric readers, run the
client against the fake Monica server, and read what was recorded.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import attrs
import pytest
from aiohttp import web
from opentelemetry import metrics as otel_metrics
from opentelemetry import trace as otel_trace
from opentelemetry.instrumentation.aiohttp_client import AioHttpClientInstrumentor
from opentelemetry.metrics import _internal as metrics_internal
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from opentelemetry.util._once import Once

from monica_async import (
    APIResponseValidationError,
    MonicaClient,
    PermissionDeniedError,
    RateLimit,
    RetryPolicy,
    _telemetry,
)
from monica_async.testing import FakeMonicaServer, Fault

KEY = "sk-otel-0123456789-SECRET"
SIGNATURE = "X-Amz-Signature=0ddba11c0ffee"
PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4
ROOT = Path(__file__).resolve().parent.parent


@attrs.define
class Recorded:
    """What the SDK recorded: finished spans and metric data points."""

    spans: InMemorySpanExporter
    reader: InMemoryMetricReader
    tracer_provider: TracerProvider

    def finished(self, name: str | None = None) -> list[ReadableSpan]:
        """Finished spans, oldest first, of one *name* or all."""
        spans = self.spans.get_finished_spans()
        return [span for span in spans if name is None or span.name == name]

    def points(self, metric: str) -> list[Any]:
        """The data points of *metric*."""
        data = self.reader.get_metrics_data()
        return [
            point
            for resource in (data.resource_metrics if data else [])
            for scope in resource.scope_metrics
            for recorded in scope.metrics
            if recorded.name == metric
            for point in recorded.data.data_points
        ]

    def unit(self, metric: str) -> str:
        """The unit *metric* was recorded in."""
        data = self.reader.get_metrics_data()
        assert data is not None
        units = {
            recorded.unit
            for resource in data.resource_metrics
            for scope in resource.scope_metrics
            for recorded in scope.metrics
            if recorded.name == metric
        }
        (unit,) = units
        return unit or ""


def _reset_global_providers() -> None:
    # The API lets a process set its global providers once; tests set and reset them
    # (OpenTelemetry's own test utilities do the same).
    otel_trace._TRACER_PROVIDER = None
    otel_trace._TRACER_PROVIDER_SET_ONCE = Once()
    metrics_internal._METER_PROVIDER = None
    metrics_internal._METER_PROVIDER_SET_ONCE = Once()


@pytest.fixture
def no_sdk() -> Iterator[None]:
    """No provider set, as in an application that configured no OpenTelemetry SDK."""
    _reset_global_providers()
    yield
    _reset_global_providers()


@pytest.fixture
def otel(no_sdk: None) -> Iterator[Recorded]:
    """The SDK's tracer and meter providers, set globally, recording in memory."""
    spans = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
    reader = InMemoryMetricReader()
    meter_provider = MeterProvider(metric_readers=[reader])
    otel_trace.set_tracer_provider(tracer_provider)
    otel_metrics.set_meter_provider(meter_provider)
    yield Recorded(spans, reader, tracer_provider)
    meter_provider.shutdown()
    tracer_provider.shutdown()


@pytest.fixture
async def server(no_retry_sleep: None) -> AsyncIterator[FakeMonicaServer]:
    """A fake Monica server that accepts any image URL."""
    async with FakeMonicaServer(api_key=KEY, process_images=False) as server:
        yield server


def client_for(server: FakeMonicaServer, **options: Any) -> MonicaClient:
    """A client of *server*."""
    return MonicaClient(KEY, base_url=server.base_url, **options)


def image(n: int = 0) -> str:
    """An image URL the fake server accepts."""
    return f"https://img.test/{n}.png"


def _port(server: FakeMonicaServer) -> int:
    return int(server.base_url.rsplit(":", 1)[1])


# -- the upscale span and its attempts ------------------------------------------------


async def test_a_call_is_an_upscale_span_over_a_post_span(
    otel: Recorded, server: FakeMonicaServer
) -> None:
    """One INTERNAL ``monica.upscale`` span, one CLIENT ``POST`` span under it."""
    async with client_for(server) as client:
        result = await client.upscale(image())

    (upscale,) = otel.finished("monica.upscale")
    (post,) = otel.finished("POST")
    assert (SpanKind.INTERNAL, StatusCode.UNSET) == (upscale.kind, upscale.status.status_code)
    assert {
        "monica.scale": 2,
        "monica.attempts": 1,
        "monica.limiter.wait": client.stats.limiter_wait,
        "monica.request_id": result.request_id,
    } == dict(upscale.attributes or {})
    assert upscale.context is not None
    assert post.parent is not None
    assert upscale.context.span_id == post.parent.span_id
    assert (SpanKind.CLIENT, StatusCode.UNSET) == (post.kind, post.status.status_code)
    assert {
        "http.request.method": "POST",
        "server.address": "127.0.0.1",
        "server.port": _port(server),
        "url.full": f"{server.base_url}/v1/image/tool/upscale",
        "http.response.status_code": 200,
    } == dict(post.attributes or {})


async def test_a_retried_call_has_one_post_span_per_attempt(
    otel: Recorded, server: FakeMonicaServer
) -> None:
    """A 503 then a 200: two POST spans, the second with its resend count."""
    server.queue_faults([Fault.HTTP_503])
    async with client_for(server) as client:
        await client.upscale(image())

    (upscale,) = otel.finished("monica.upscale")
    posts = otel.finished("POST")
    assert [
        (503, "503", None, StatusCode.ERROR),
        (200, None, 1, StatusCode.UNSET),
    ] == [
        (
            (span.attributes or {}).get("http.response.status_code"),
            (span.attributes or {}).get("error.type"),
            (span.attributes or {}).get("http.request.resend_count"),
            span.status.status_code,
        )
        for span in posts
    ]
    assert (2, StatusCode.UNSET) == (
        (upscale.attributes or {})["monica.attempts"],
        upscale.status.status_code,
    )


async def test_a_failed_call_ends_its_span_in_error(
    otel: Recorded, server: FakeMonicaServer
) -> None:
    """Two 500s with two attempts allowed: ERROR, and the exception's class as error.type."""
    server.queue_faults([Fault.HTTP_500, Fault.HTTP_500])
    async with client_for(server, retry=RetryPolicy(max_attempts=2)) as client:
        with pytest.raises(Exception, match="HTTP 500") as raised:
            await client.upscale(image())

    (upscale,) = otel.finished("monica.upscale")
    attributes = dict(upscale.attributes or {})
    assert (StatusCode.ERROR, "InternalServerError", 2, raised.value.request_id) == (  # type: ignore[attr-defined]
        upscale.status.status_code,
        attributes["error.type"],
        attributes["monica.attempts"],
        attributes["monica.request_id"],
    )
    assert (upscale.status.description or "").startswith("InternalServerError: HTTP 500")
    assert ["500", "500"] == [(s.attributes or {})["error.type"] for s in otel.finished("POST")]


async def test_a_connection_failure_has_no_status_code(
    otel: Recorded, server: FakeMonicaServer
) -> None:
    """A dropped connection: error.type is the exception's class, no status code is set."""
    server.queue_faults([Fault.DROP])
    async with client_for(server, retry=RetryPolicy(max_attempts=1)) as client:
        with pytest.raises(Exception, match="closed the connection"):
            await client.upscale(image())

    (post,) = otel.finished("POST")
    (upscale,) = otel.finished("monica.upscale")
    assert ("APIConnectionError", False, StatusCode.ERROR) == (
        (post.attributes or {})["error.type"],
        "http.response.status_code" in (post.attributes or {}),
        post.status.status_code,
    )
    assert "APIConnectionError" == (upscale.attributes or {})["error.type"]


async def test_an_invalid_answer_keeps_its_status_and_names_the_error(
    otel: Recorded, server: FakeMonicaServer
) -> None:
    """A 200 that breaks the contract: status 200 and error.type APIResponseValidationError."""
    server.queue_faults([Fault.MALFORMED_NOT_JSON])
    async with client_for(server) as client:
        with pytest.raises(Exception, match="not JSON"):
            await client.upscale(image())

    (post,) = otel.finished("POST")
    (upscale,) = otel.finished("monica.upscale")
    assert (200, "APIResponseValidationError", "APIResponseValidationError") == (
        (post.attributes or {})["http.response.status_code"],
        (post.attributes or {})["error.type"],
        (upscale.attributes or {})["error.type"],
    )


async def test_limiter_wait_is_what_the_attempts_waited(
    otel: Recorded, server: FakeMonicaServer
) -> None:
    """With a paced limit the later calls wait; the spans say how long, as the stats do."""
    async with client_for(server, rate_limit=RateLimit(4, per=0.4)) as client:
        for n in range(3):
            await client.upscale(image(n))

    waits = [(s.attributes or {})["monica.limiter.wait"] for s in otel.finished("monica.upscale")]
    recorded = otel.points("monica.limiter.wait")
    assert isinstance(waits[-1], float)
    assert waits[-1] > 0
    assert client.stats.limiter_wait == pytest.approx(sum(waits))  # type: ignore[arg-type]
    assert (3, pytest.approx(sum(waits)), "s") == (  # type: ignore[arg-type]
        sum(point.count for point in recorded),
        sum(point.sum for point in recorded),
        otel.unit("monica.limiter.wait"),
    )


async def test_batch_inputs_each_get_a_span_and_an_outcome(
    otel: Recorded, server: FakeMonicaServer
) -> None:
    """Each input of a batch is a monica.upscale span with its own POST; outcomes are counted."""
    urls = [image(n) for n in range(3)]
    server.script_faults(urls[1], [Fault.HTTP_500])
    async with client_for(server, retry=RetryPolicy(max_attempts=1)) as client:
        outcomes = await client.upscale_all(urls, workers=3)

    upscales = otel.finished("monica.upscale")
    parents = {span.parent.span_id for span in otel.finished("POST") if span.parent}
    assert [True, False, True] == [outcome.ok for outcome in outcomes]
    assert {span.context.span_id for span in upscales if span.context} == parents
    assert 3 == len(upscales)
    assert {"ok": 2, "InternalServerError": 1} == {
        point.attributes["outcome"]: point.value for point in otel.points("monica.upscale.outcomes")
    }


@pytest.mark.parametrize("caller_span", [True, False], ids=["under-job", "no-span"])
async def test_a_growing_batchs_spans_are_children_of_the_callers(
    otel: Recorded, server: FakeMonicaServer, caller_span: bool
) -> None:
    """150 inputs with automatic concurrency, whose workers start while the target grows:
    every monica.upscale span is a child of the span current where the batch was made
    (``job``), or a root when there was none; never another input's."""
    server.latency = (0.02, 0.06)
    tracer = otel.tracer_provider.get_tracer("app")
    async with client_for(server, rate_limit=RateLimit(10**6)) as client:
        if caller_span:
            with tracer.start_as_current_span("job"):
                outcomes = await client.upscale_all([image(n) for n in range(150)])
        else:
            outcomes = await client.upscale_all([image(n) for n in range(150)])
        grown = client.stats.concurrency

    [job] = otel.finished("job") or [None]
    expected = job.context.span_id if job is not None and job.context else None
    parents = [
        span.parent.span_id if span.parent else None for span in otel.finished("monica.upscale")
    ]
    assert all(outcome.ok for outcome in outcomes)
    assert grown > 16  # workers were started as the target grew
    assert [expected] * 150 == parents


async def test_a_cancelled_call_ends_its_spans(otel: Recorded, server: FakeMonicaServer) -> None:
    """A call cancelled mid-attempt still ends both spans, with error.type CancelledError."""
    server.latency = 10.0
    async with client_for(server) as client:
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(client.upscale(image()), 0.3)

    assert ["CancelledError", "CancelledError"] == [
        (span.attributes or {})["error.type"] for span in otel.finished()
    ]
    assert otel_trace.get_current_span() is otel_trace.INVALID_SPAN


# -- metrics -----------------------------------------------------------------------------


async def test_each_attempt_records_its_duration_with_semantic_attributes(
    otel: Recorded, server: FakeMonicaServer
) -> None:
    """http.client.request.duration: one point per attempt, in seconds, by outcome."""
    server.queue_faults([Fault.HTTP_503])
    async with client_for(server) as client:
        await client.upscale(image())

    base = {"http.request.method": "POST", "server.address": "127.0.0.1"}
    base["server.port"] = _port(server)  # type: ignore[assignment]
    points = otel.points("http.client.request.duration")
    assert [
        ({**base, "http.response.status_code": 200}, 1),
        ({**base, "http.response.status_code": 503, "error.type": "503"}, 1),
    ] == sorted(
        ((dict(point.attributes), point.count) for point in points),
        key=lambda pair: len(pair[0]),
    )
    assert "s" == otel.unit("http.client.request.duration")
    assert all(0 < point.sum < 5 for point in points)


async def test_metrics_alone_count_outcomes_without_spans(
    no_sdk: None, server: FakeMonicaServer
) -> None:
    """With only a meter provider set, outcomes are counted and no span is started."""
    reader = InMemoryMetricReader()
    meter_provider = MeterProvider(metric_readers=[reader])
    otel_metrics.set_meter_provider(meter_provider)
    try:
        async with client_for(server) as client:
            await client.upscale(image())
        recorded = Recorded(InMemorySpanExporter(), reader, TracerProvider())
        assert [1] == [point.value for point in recorded.points("monica.upscale.outcomes")]
        assert otel_trace.get_current_span() is otel_trace.INVALID_SPAN
    finally:
        meter_provider.shutdown()


# -- downloads ---------------------------------------------------------------------------


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def flaky_image(failures: int) -> Handler:
    """Answer 503 *failures* times, then a PNG."""
    left = [failures]

    async def handler(request: web.Request) -> web.StreamResponse:
        if left[0]:
            left[0] -= 1
            return web.Response(status=503, text=f"busy, come back ({request.query_string})")
        return web.Response(body=PNG, content_type="image/png")

    return handler


async def test_download_attempts_are_get_spans_without_the_query(
    otel: Recorded,
    server: FakeMonicaServer,
    loopback: Callable[[Handler], Awaitable[str]],
    tmp_path: Path,
) -> None:
    """Each download attempt is a CLIENT ``GET`` span; url.full drops the presigned query."""
    base = await loopback(flaky_image(1))
    url = f"{base}/results/cat.png?{SIGNATURE}&X-Amz-Expires=60"
    async with client_for(server) as client:
        await client.download(url, tmp_path / "cat.png")

    gets = otel.finished("GET")
    assert [(SpanKind.CLIENT, 503, None), (SpanKind.CLIENT, 200, 1)] == [
        (
            span.kind,
            (span.attributes or {})["http.response.status_code"],
            (span.attributes or {}).get("http.request.resend_count"),
        )
        for span in gets
    ]
    assert {f"{base}/results/cat.png"} == {(s.attributes or {})["url.full"] for s in gets}
    assert 2 == sum(point.count for point in otel.points("http.client.request.duration"))


async def test_no_secret_in_any_span_or_metric(
    otel: Recorded,
    server: FakeMonicaServer,
    loopback: Callable[[Handler], Awaitable[str]],
    tmp_path: Path,
) -> None:
    """Neither the API key nor a presigned URL's query appear anywhere, failures included."""
    base = await loopback(flaky_image(10))
    server.queue_faults([Fault.HTTP_503])
    async with client_for(server, retry=RetryPolicy(max_attempts=2)) as client:
        await client.upscale(f"https://user:pw@img.test/a.png?{SIGNATURE}")
        with pytest.raises(Exception, match="503"):
            await client.download(f"{base}/results/a.png?{SIGNATURE}", tmp_path / "a.png")

    spans = otel.finished()
    data = otel.reader.get_metrics_data()
    assert data is not None
    everything = "".join(span.to_json() for span in spans) + data.to_json()
    assert 2 <= len(otel.finished("GET"))
    assert "InternalServerError: HTTP 503" in everything  # the errors are described...
    for secret in (KEY, "X-Amz-Signature", "0ddba11c0ffee", "user:pw"):
        assert secret not in everything  # ...but not the secrets


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        ("GET https://h.test/a.png?sig=1 failed", "GET https://h.test/a.png?<redacted> failed"),
        ("at 'https://h.test/a#frag' now", "at 'https://h.test/a' now"),
        ("from https://u:p@h.test/x and http://v@h.test/y", "from https://h.test/x and http://h.test/y"),
        ("no URL here", "no URL here"),
    ],
)  # fmt: skip
def test_error_descriptions_drop_queries_and_credentials(message: str, expected: str) -> None:
    """A span's status description keeps a URL's host and path, and only marks its query."""
    assert f"ValueError: {expected}" == _telemetry.describe(ValueError(message))


@pytest.mark.parametrize(("code", "expected"), [(None, "HTTP 403"), ("denied", "HTTP 403 denied")])
def test_error_answers_are_described_by_status_and_code_only(
    code: str | None, expected: str
) -> None:
    """The body of an error answer, which may quote a presigned URL, stays out."""
    error = PermissionDeniedError(f"<SignatureProvided>{SIGNATURE}</>", status=403, code=code)

    assert f"PermissionDeniedError: {expected}" == _telemetry.describe(error)


# -- next to other instrumentation, and without an SDK ----------------------------------


@pytest.fixture
def aiohttp_instrumented(otel: Recorded) -> Iterator[None]:
    """opentelemetry-instrumentation-aiohttp-client, tracing every aiohttp session."""
    instrumentor = AioHttpClientInstrumentor()
    instrumentor.instrument(tracer_provider=otel.tracer_provider)
    yield
    instrumentor.uninstrument()


async def test_aiohttp_instrumentation_adds_no_second_span(
    otel: Recorded, aiohttp_instrumented: None, server: FakeMonicaServer
) -> None:
    """With the aiohttp instrumentation on, an attempt is still one CLIENT span, the client's."""
    server.queue_faults([Fault.HTTP_503])
    async with client_for(server) as client:
        await client.upscale(image())
    ours = [span for span in otel.finished() if span.kind is SpanKind.CLIENT]
    otel.spans.clear()

    async with aiohttp.ClientSession() as session, session.get(f"{server.base_url}/nowhere"):
        pass  # a request of the application's own: the instrumentation traces it

    assert ["monica_async", "monica_async"] == [
        span.instrumentation_scope.name for span in ours if span.instrumentation_scope
    ]
    (theirs,) = otel.finished()
    assert (SpanKind.CLIENT, "GET") == (theirs.kind, theirs.name)
    assert theirs.instrumentation_scope is not None
    assert "monica_async" != theirs.instrumentation_scope.name


async def test_without_an_sdk_the_hooks_do_nothing(no_sdk: None, server: FakeMonicaServer) -> None:
    """No provider configured: the hooks trace nothing, and calls work as before."""
    async with client_for(server) as client:
        result = await client.upscale(image())

    assert (None, _telemetry._UNTRACED, _telemetry._UNTRACED) == (
        _telemetry.upscale_started(2),
        _telemetry.download_started(result.url, 1),
        _telemetry.attempt_started(client.base_url, 1, 0.0),
    )
    assert otel_trace.get_current_span() is otel_trace.INVALID_SPAN


def test_without_opentelemetry_installed_the_client_works(tmp_path: Path) -> None:
    """With no opentelemetry package at all, the client imports and calls as ever."""
    program = "\n".join(
        [
            "import sys",
            "sys.modules['opentelemetry'] = None  # as if the package were not installed",
            "import asyncio",
            "from monica_async import MonicaClient, _telemetry",
            "from monica_async.testing import FakeMonicaServer",
            "async def main() -> None:",
            "    async with FakeMonicaServer(api_key='k', process_images=False) as server:",
            "        async with MonicaClient('k', base_url=server.base_url) as client:",
            "            print((await client.upscale('https://img.test/a.png')).url[:4])",
            "    print(_telemetry._INSTALLED, _telemetry.upscale_started(2))",
            "asyncio.run(main())",
        ]
    )
    done = subprocess.run(
        [sys.executable, "-W", "error", "-c", program],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert (0, ["http", "False None"]) == (done.returncode, done.stdout.splitlines()), done.stderr


def test_span_names_are_the_documented_ones() -> None:
    """The names dashboards rely on, as the module and the docs state them."""
    docs = (ROOT / "docs" / "observability.md").read_text("utf-8")
    names: Sequence[str] = (
        _telemetry.UPSCALE_SPAN,
        _telemetry.HTTP_DURATION,
        _telemetry.LIMITER_WAIT,
        _telemetry.UPSCALE_OUTCOMES,
    )
    assert ("monica.upscale", "http.client.request.duration") == names[:2]
    for name in (*names, "monica.attempts", "monica.request_id", "http.request.resend_count"):
        assert f"`{name}`" in docs


async def test_a_body_quoting_the_key_stays_out_of_every_span(
    otel: Recorded, loopback: Callable[[Handler], Awaitable[str]]
) -> None:
    """A 200 that is not JSON and quotes the key (a misbehaving proxy, say) fails the
    call; neither the attempt's span nor the call's shows the key."""

    async def echo(request: web.Request) -> web.Response:
        return web.Response(text=f"you sent {request.headers['Authorization']}")

    base = await loopback(echo)
    async with MonicaClient(KEY, base_url=base, retry=RetryPolicy(max_attempts=1)) as client:
        with pytest.raises(APIResponseValidationError):
            await client.upscale(image())

    spans = otel.finished()
    assert {"POST", "monica.upscale"} == {span.name for span in spans}
    assert [] == [span.name for span in spans if KEY in span.to_json()]
