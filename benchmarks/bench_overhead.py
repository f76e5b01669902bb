"""The client's own CPU per request, with the network taken out.

Every contender talks to the same in-process stand-in for ``aiohttp.ClientSession``:
``post()`` answers 200 with a fixed body after one pass through the event loop, so
what is left is each contender's own Python (and the event loop's task switches).
The throughput benchmark's ratio is blurred by the machine's drift; this one is
steady enough to say where monica-async's time per request goes.

With opentelemetry-api installed and no SDK configured (the state of the plain rows),
the client's telemetry hooks are also timed alone, per request; a row with the SDK's
providers set (spans and metrics recorded in memory, exported nowhere) shows what
tracing costs when it is on.

    python -m benchmarks --only overhead
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import time
from collections.abc import Callable, Coroutine, Generator, Iterator
from types import TracebackType
from typing import Any, cast

import aiohttp

from monica_async import MonicaClient, _telemetry

from ._common import Json, Table

NAME = "overhead"

BASE_URL = "http://127.0.0.1:8080"
ENDPOINT = f"{BASE_URL}/v1/image/tool/upscale"
HEADERS = {"Authorization": "Bearer bench-key", "Content-Type": "application/json"}
_BODY = b'{"image": "http://127.0.0.1:8080/results/0.png"}'
# Lower-case names: a plain dict stands in for aiohttp's case-insensitive headers.
_ANSWER_HEADERS = {"content-type": "application/json", "content-length": str(len(_BODY))}

#: A contender: (requests, concurrency) -> requests answered with an image.
Contender = Callable[[int, int], Coroutine[Any, Any, int]]


class _Body:
    """The body as a stream, all of it arrived with the headers (as a short answer does)."""

    def __init__(self) -> None:
        self._left = _BODY

    def read_nowait(self, n: int = -1) -> bytes:
        piece = self._left if n < 0 else self._left[:n]
        self._left = self._left[len(piece) :]
        return piece

    async def read(self, n: int = -1) -> bytes:
        return self.read_nowait(n)

    def is_eof(self) -> bool:
        return True

    def at_eof(self) -> bool:
        return not self._left


class _Answer:
    status = 200
    headers = _ANSWER_HEADERS
    content_length = len(_BODY)

    def __init__(self) -> None:
        self.content = _Body()

    async def read(self) -> bytes:
        return self.content.read_nowait()

    def release(self) -> None:
        """Nothing to give back."""


class _Exchange:
    """What ``post()`` returns: awaited, or entered with ``async with``, as aiohttp's is."""

    def __await__(self) -> Generator[Any, None, _Answer]:
        yield from asyncio.sleep(0).__await__()  # a real answer comes in a later turn
        return _Answer()

    async def __aenter__(self) -> _Answer:
        return await self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        return None


class StandInSession:
    """Just enough of ``aiohttp.ClientSession`` for an upscale call: no sockets."""

    closed = False
    trace_configs: list[aiohttp.TraceConfig] = []  # noqa: RUF012 - read only

    def post(self, url: str, **kwargs: object) -> _Exchange:
        """Answer 200 with an image URL."""
        return _Exchange()

    async def close(self) -> None:
        """Nothing to close."""


def _urls(count: int) -> Iterator[str]:
    return (f"{BASE_URL}/images/{i}.png" for i in range(count))


async def raw_workers(count: int, concurrency: int) -> int:
    """The throughput benchmark's baseline: workers posting and parsing, nothing else."""
    session = StandInSession()
    urls = _urls(count)
    ok = 0

    async def worker() -> None:
        nonlocal ok
        for url in urls:
            body = json.dumps({"image": url, "scale": 2}).encode()
            async with session.post(ENDPOINT, data=body, headers=HEADERS) as answer:
                raw = await answer.read()
            done = answer.status == 200 and "image" in json.loads(raw)
            ok += done

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return ok


def _client(concurrency: int) -> MonicaClient:
    session = cast(aiohttp.ClientSession, StandInSession())
    return MonicaClient(
        "bench-key", base_url=BASE_URL, session=session, max_concurrency=concurrency
    )


async def upscale_workers(count: int, concurrency: int) -> int:
    """Workers calling ``MonicaClient.upscale()``: validation, limiter, retries' first try."""
    urls = _urls(count)
    ok = 0
    async with _client(concurrency) as client:

        async def worker() -> None:
            nonlocal ok
            for url in urls:
                await client.upscale(url)
                ok += 1

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return ok


async def upscale_many(count: int, concurrency: int) -> int:
    """``upscale_many``: the above plus the batch's workers, channel and outcomes."""
    ok = 0
    async with _client(concurrency) as client:
        async for outcome in client.upscale_many(_urls(count)):
            ok += outcome.ok
    return ok


@contextlib.contextmanager
def _opentelemetry_sdk() -> Iterator[None]:
    """The SDK's global providers, recording spans and metrics in memory, for a ``with``."""
    from opentelemetry import metrics, trace
    from opentelemetry.metrics import _internal as metrics_internal
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.util._once import Once

    def reset() -> None:
        # The API sets a process's providers once; the benchmark takes them back so
        # that the other contenders run without an SDK, as OpenTelemetry's tests do.
        trace._TRACER_PROVIDER = None
        trace._TRACER_PROVIDER_SET_ONCE = Once()
        metrics_internal._METER_PROVIDER = None
        metrics_internal._METER_PROVIDER_SET_ONCE = Once()

    tracer_provider = TracerProvider()  # no span processor: recorded, exported nowhere
    meter_provider = MeterProvider(metric_readers=[InMemoryMetricReader()])
    reset()
    trace.set_tracer_provider(tracer_provider)
    metrics.set_meter_provider(meter_provider)
    try:
        yield
    finally:
        reset()
        meter_provider.shutdown()
        tracer_provider.shutdown()


async def upscale_workers_traced(count: int, concurrency: int) -> int:
    """``upscale()`` from workers with an OpenTelemetry SDK set up."""
    with _opentelemetry_sdk():
        return await upscale_workers(count, concurrency)


def _has_sdk() -> bool:
    try:
        import opentelemetry.sdk  # noqa: F401
    except ImportError:
        return False
    return True


CONTENDERS: dict[str, Contender] = {
    "raw loop": raw_workers,
    "MonicaClient.upscale() from workers": upscale_workers,
    "MonicaClient.upscale_many()": upscale_many,
}
if _has_sdk():
    CONTENDERS["upscale() with an OpenTelemetry SDK"] = upscale_workers_traced


def hooks_ns_per_request(calls: int = 300_000) -> float:
    """Nanoseconds the telemetry hooks of one request take with no SDK (timed alone).

    An upscale makes two hook calls when it succeeds at once: one for the call, one
    for the attempt (its ``is None`` tests are too cheap to time apart).
    """
    started_call, started_attempt = _telemetry.upscale_started, _telemetry.attempt_started
    gc.collect()
    began = time.perf_counter()
    for _ in range(calls):
        pass
    empty = time.perf_counter() - began
    began = time.perf_counter()
    for _ in range(calls):
        started_call(2)
        started_attempt(ENDPOINT, 1, 0.0)
    spent = time.perf_counter() - began
    return 1e9 * (spent - empty) / calls


def _cpu_us(contender: Contender, count: int, concurrency: int) -> float:
    gc.collect()
    began = time.process_time()
    ok = asyncio.run(contender(count, concurrency))
    spent = time.process_time() - began
    if ok != count:
        raise RuntimeError(f"{ok} of {count} succeeded")
    return 1e6 * spent / count


def run(quick: bool) -> Json:
    """Each contender, interleaved; the least CPU per request over the rounds."""
    count = 5_000 if quick else 30_000
    rounds = 2 if quick else 9
    result: Json = {"requests": count, "rounds": rounds, "by_concurrency": {}}
    if _telemetry.upscale_started(2) is None:
        result["otel_hooks_ns_without_sdk"] = min(hooks_ns_per_request() for _ in range(rounds))
    for concurrency in (16, 64):
        runs: dict[str, list[float]] = {name: [] for name in CONTENDERS}
        for _ in range(rounds):
            for name, contender in CONTENDERS.items():
                runs[name].append(_cpu_us(contender, count, concurrency))
        # The least is the run the machine disturbed least: noise only ever adds time.
        result["by_concurrency"][str(concurrency)] = {
            name: {"us_per_request": min(values), "runs": [round(v, 2) for v in values]}
            for name, values in runs.items()
        }
    return result


def table(result: Json) -> str:
    """Render :func:`run`'s result."""
    out = Table(
        f"Client CPU per request without network ({result['requests']:,} requests, least of "
        f"{result['rounds']} rounds)",
        ["contender", "conc", "CPU us/request", "over raw"],
    )
    for concurrency, rows in result["by_concurrency"].items():
        raw = rows["raw loop"]["us_per_request"]
        for name, row in rows.items():
            mine = row["us_per_request"]
            out.add(name, int(concurrency), mine, None if mine == raw else mine - raw)
    out.note(
        "An in-process stand-in answers every POST at once: no sockets, no server. "
        "'over raw' is monica-async's own work per request."
    )
    hooks = result.get("otel_hooks_ns_without_sdk")
    if hooks is not None:
        out.note(
            f"OpenTelemetry hooks with no SDK configured (the rows without one): {hooks:.0f} ns "
            "per request, timed alone (least of the rounds)."
        )
    return out.render()
