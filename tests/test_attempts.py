"""Every request that may have reached the server is an attempt: counted, traced, bounded.

Judged from the server's side: a server that reads each request whole and then drops
the connection (it may have done the work, and may bill it) receives no more POSTs than
``max_attempts`` allows, and the error says how many it received.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from opentelemetry import metrics as otel_metrics
from opentelemetry import trace as otel_trace
from opentelemetry.metrics import _internal as metrics_internal
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.util._once import Once
from raw_servers import DroppingServer

from monica_async import APIConnectionError, MonicaClient, RetryPolicy

IMAGE = "https://images.test/cat.png"


@pytest.fixture
async def dropping(no_retry_sleep: None, api_key: str) -> AsyncIterator[DroppingServer]:
    """A :class:`DroppingServer`, answering until told to drop."""
    server = DroppingServer()
    await server.start()
    yield server
    await server.stop()


def _reset_providers() -> None:
    # The API lets a process set its global providers once; tests set and reset them.
    otel_trace._TRACER_PROVIDER = None
    otel_trace._TRACER_PROVIDER_SET_ONCE = Once()
    metrics_internal._METER_PROVIDER = None
    metrics_internal._METER_PROVIDER_SET_ONCE = Once()


@pytest.fixture
def recorded() -> Iterator[tuple[InMemorySpanExporter, InMemoryMetricReader]]:
    """The OpenTelemetry SDK set globally, recording spans and metrics in memory."""
    _reset_providers()
    spans = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
    reader = InMemoryMetricReader()
    meter_provider = MeterProvider(metric_readers=[reader])
    otel_trace.set_tracer_provider(tracer_provider)
    otel_metrics.set_meter_provider(meter_provider)
    yield spans, reader
    meter_provider.shutdown()
    tracer_provider.shutdown()
    _reset_providers()


def _duration_count(reader: InMemoryMetricReader) -> int:
    data = reader.get_metrics_data()
    points: list[Any] = [
        point
        for resource in (data.resource_metrics if data else [])
        for scope in resource.scope_metrics
        for metric in scope.metrics
        if metric.name == "http.client.request.duration"
        for point in metric.data.data_points
    ]
    return sum(point.count for point in points)


async def _fail_after_a_full_pool(
    server: DroppingServer, policy: RetryPolicy
) -> APIConnectionError:
    """Fill the client's pool with a 40-input batch, then make one call the server drops."""
    async with MonicaClient(base_url=server.base_url, retry=policy, max_concurrency=16) as client:
        outcomes = await client.upscale_all([IMAGE] * 40)
        assert all(outcome.ok for outcome in outcomes)
        server.drop = True
        with pytest.raises(APIConnectionError) as caught:
            await client.upscale(IMAGE)
        stats = client.stats
    assert (40 + caught.value.attempts, 1) == (stats.attempts, stats.requests - 40)
    return caught.value


async def test_one_attempt_is_one_post(dropping: DroppingServer) -> None:
    """``max_attempts=1`` with a pool full of kept-alive connections: the server receives
    exactly one POST for the call, and the error says one attempt was made."""
    error = await _fail_after_a_full_pool(dropping, RetryPolicy(max_attempts=1))
    assert (1, 1) == (dropping.dropped, error.attempts)


async def test_four_attempts_are_at_most_four_posts(dropping: DroppingServer) -> None:
    """``max_attempts=4``: at most four POSTs reach the server, and ``attempts`` is the
    number it received."""
    error = await _fail_after_a_full_pool(dropping, RetryPolicy(max_attempts=4))
    assert dropping.dropped <= 4
    assert dropping.dropped == error.attempts


@pytest.mark.parametrize("max_attempts", [1, 4])
async def test_one_span_and_one_duration_per_post(
    dropping: DroppingServer,
    recorded: tuple[InMemorySpanExporter, InMemoryMetricReader],
    max_attempts: int,
) -> None:
    """Every POST the server received has its own span and its own duration point, and the
    resend count of each span follows the attempts."""
    spans, reader = recorded
    await _fail_after_a_full_pool(dropping, RetryPolicy(max_attempts=max_attempts))
    posts = [span for span in spans.get_finished_spans() if span.name == "POST"]
    resends = sorted(
        int(span.attributes.get("http.request.resend_count", 0))  # type: ignore[union-attr,arg-type]
        for span in posts
    )
    assert (dropping.received, dropping.received) == (len(posts), _duration_count(reader))
    assert list(range(dropping.dropped)) == resends[-dropping.dropped :]
