"""The batch engine against the fake server on loopback, judged by the server's records."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator

import pytest

from monica_async import (
    AuthenticationError,
    InternalServerError,
    InvalidRequestError,
    MonicaClient,
    RateLimit,
    RateLimitError,
    RetryPolicy,
    set_testing,
)
from monica_async.testing import FakeMonicaServer, Fault

KEY = "test-key"


def urls(count: int, prefix: str = "img") -> list[str]:
    """Distinct loopback image URLs (never fetched: the server does no image work)."""
    return [f"http://127.0.0.1:9/{prefix}/{i}.png" for i in range(count)]


def max_in_window(times: list[float], per: float) -> int:
    """The most start times in any window of `per` seconds."""
    ordered = sorted(times)
    best = j = 0
    for i, start in enumerate(ordered):
        while ordered[j] <= start - per:
            j += 1
        best = max(best, i - j + 1)
    return best


def client_tasks(before: set[asyncio.Task[object]]) -> set[asyncio.Task[object]]:
    """Tasks started since *before*, other than the fake server's (its connection
    handlers, and the event loop accepting connections for it)."""
    server_side = ("RequestHandler", "_accept_connection")
    return {
        task
        for task in asyncio.all_tasks() - before - {asyncio.current_task()}
        if not any(name in repr(task.get_coro()) for name in server_side)
    }


@pytest.fixture
async def server() -> AsyncIterator[FakeMonicaServer]:
    """A fake server without image work, so the client is what is measured."""
    async with FakeMonicaServer(api_key=KEY, process_images=False) as fake:
        yield fake


@pytest.fixture
def instant_retries() -> Iterator[None]:
    """Retries happen but their waits last 0 seconds."""
    set_testing(True)
    yield
    set_testing(False)


def client_for(server: FakeMonicaServer, **kwargs: object) -> MonicaClient:
    """A client aimed at *server*."""
    return MonicaClient(api_key=KEY, base_url=server.base_url, **kwargs)  # type: ignore[arg-type]


async def test_every_input_gets_exactly_one_outcome(server: FakeMonicaServer) -> None:
    """Each index appears once, with the source it was given, all succeeded."""
    inputs = urls(300)
    async with client_for(server) as client:
        outcomes = [o async for o in client.upscale_many(inputs)]
    assert sorted(o.index for o in outcomes) == list(range(300))
    assert all(o.ok for o in outcomes)
    assert {o.source for o in outcomes} == set(inputs)
    assert server.stats.total == 300


async def test_ordered_mode_yields_in_input_order(server: FakeMonicaServer) -> None:
    """ordered=True yields index 0, 1, 2, ... even when later inputs finish first."""
    server.latency = (0.0, 0.02)
    async with client_for(server) as client:
        indexes = [o.index async for o in client.upscale_many(urls(100), ordered=True)]
    assert indexes == list(range(100))


async def test_upscale_all_returns_a_list_in_input_order(server: FakeMonicaServer) -> None:
    """upscale_all keeps input order and the source of each input."""
    inputs = urls(50)
    async with client_for(server) as client:
        outcomes = await client.upscale_all(inputs)
    assert [o.source for o in outcomes] == inputs


async def test_async_iterable_input(server: FakeMonicaServer) -> None:
    """An async generator of URLs works like a list."""

    async def produce() -> AsyncIterator[str]:
        for url in urls(40):
            await asyncio.sleep(0)
            yield url

    async with client_for(server) as client:
        outcomes = await client.upscale_all(produce())
    assert [o.index for o in outcomes if o.ok] == list(range(40))


async def test_invalid_inputs_get_an_error_outcome_and_cost_no_request(
    server: FakeMonicaServer,
) -> None:
    """Invalid URLs become InvalidRequestError outcomes; only valid ones reach the server."""
    inputs: list[object] = ["not a url", *urls(3), "", 42, "ftp://127.0.0.1/x.png"]
    async with client_for(server) as client:
        outcomes = await client.upscale_all(inputs)  # type: ignore[arg-type]
    failed = [o.index for o in outcomes if not o.ok and isinstance(o.error, InvalidRequestError)]
    assert failed == [0, 4, 5, 6]
    assert [o.ok for o in outcomes[1:4]] == [True, True, True]
    assert server.stats.total == 3


@pytest.mark.parametrize("images", ["http://127.0.0.1:9/one.png", b"http://x/y.png", 42, None])
async def test_a_non_iterable_batch_is_refused_at_the_call(
    server: FakeMonicaServer, images: object
) -> None:
    """A single URL string, bytes or a non-iterable fail at once, naming the type."""
    async with client_for(server) as client:
        with pytest.raises(InvalidRequestError) as info:
            client.upscale_many(images)  # type: ignore[arg-type]
    assert str(info.value).endswith(f"got {type(images).__name__}")
    assert server.stats.total == 0


async def test_peak_in_flight_never_exceeds_max_concurrency(server: FakeMonicaServer) -> None:
    """With slow answers the server sees at most max_concurrency at once, and close to it."""
    server.latency = 0.05
    async with client_for(server, max_concurrency=8) as client:
        outcomes = await client.upscale_all(urls(120))
    assert all(o.ok for o in outcomes)
    assert 6 <= server.stats.peak_concurrency <= 8


async def test_single_calls_and_batches_share_the_bound(server: FakeMonicaServer) -> None:
    """Many upscale() callers plus a batch on one client stay under one bound."""
    server.latency = 0.03
    async with client_for(server, max_concurrency=5) as client:
        singles = [client.upscale(url) for url in urls(40, "single")]
        batch = client.upscale_all(urls(40, "batch"))
        results = await asyncio.gather(*singles, batch)
    assert len(results) == 41
    assert server.stats.peak_concurrency <= 5
    assert server.stats.total == 80


async def test_cancelled_caller_frees_its_place(server: FakeMonicaServer) -> None:
    """A caller cancelled mid-request frees its place at once; the others finish."""
    server.latency = 0.3
    async with client_for(server, max_concurrency=1) as client:
        doomed = asyncio.create_task(client.upscale(urls(1, "doomed")[0]))
        await asyncio.sleep(0.1)
        doomed.cancel()
        began = time.monotonic()
        result = await client.upscale(urls(1, "next")[0])
    assert result.attempts == 1
    assert time.monotonic() - began < 5
    assert doomed.cancelled()


@pytest.mark.timeout(30)
async def test_no_sliding_window_exceeds_the_rate_limit(server: FakeMonicaServer) -> None:
    """From the server's clock: the first window and every later one hold <= the limit."""
    limit = RateLimit(20, per=0.5)
    async with client_for(server, rate_limit=limit, max_concurrency=16) as client:
        outcomes = await client.upscale_all(urls(100))
    times = server.stats.accepted_times
    assert all(o.ok for o in outcomes)
    assert max_in_window(times, 0.5) <= 20
    first = min(times)
    assert sum(1 for t in times if t < first + 0.5) <= 20
    steady = (len(times) - 1) / (max(times) - first)
    assert steady > 0.8 * 40


@pytest.mark.timeout(60)
async def test_mixed_faults_end_with_every_input_succeeding_once(
    server: FakeMonicaServer, instant_retries: None
) -> None:
    """429s (with and without Retry-After), 5xx, drops and hangs: all inputs succeed once."""
    server.retry_after = 0
    server.queue_faults(
        [
            Fault.HTTP_429,
            Fault.HTTP_429_NO_RETRY_AFTER,
            Fault.HTTP_500,
            Fault.HTTP_502,
            Fault.HTTP_503,
            Fault.HTTP_504,
            Fault.DROP,
            Fault.HANG,
        ]
        * 3
    )
    retry = RetryPolicy(max_attempts=10)
    # A strict, generous limit: the default adaptive one would rightly slow down after
    # the injected 429s, which is not what this test is about.
    limit = RateLimit(1000)
    async with client_for(server, retry=retry, timeout=0.5, rate_limit=limit) as client:
        outcomes = await client.upscale_all(urls(60))
    assert [o.index for o in outcomes if not o.ok] == []
    assert server.stats.by_status.get(200) == 60
    assert max(o.result.attempts for o in outcomes) >= 2


async def test_authentication_error_stops_the_batch(server: FakeMonicaServer) -> None:
    """After a 401 no more requests go out; every input still gets an outcome."""
    async with MonicaClient(api_key="wrong", base_url=server.base_url, max_concurrency=4) as client:
        outcomes = await client.upscale_all(urls(200))
    assert len(outcomes) == 200
    assert all(isinstance(o.error, AuthenticationError) for o in outcomes)
    assert server.stats.total <= 4


async def test_breaking_out_stops_the_batch_and_leaves_nothing_pending(
    server: FakeMonicaServer,
) -> None:
    """Leaving the loop early cancels in-flight requests; no task is left behind."""
    server.latency = 0.05
    before = asyncio.all_tasks()
    async with client_for(server) as client:
        stream = client.upscale_many(urls(1000))
        async with contextlib.aclosing(stream):  # type: ignore[type-var]
            async for outcome in stream:
                assert outcome.ok
                break
        leftover = client_tasks(before)
    assert leftover == set()
    assert server.stats.total < 100


async def test_garbage_collected_stream_cleans_up(server: FakeMonicaServer) -> None:
    """A plain `break` without aclosing still cancels the workers promptly."""
    server.latency = 0.05
    before = asyncio.all_tasks()
    async with client_for(server) as client:
        async for _ in client.upscale_many(urls(1000)):
            break
        for _ in range(20):
            await asyncio.sleep(0.01)
            if not client_tasks(before):
                break
        leftover = client_tasks(before)
    assert leftover == set()


async def test_cancelling_the_consumer_cancels_the_batch(server: FakeMonicaServer) -> None:
    """Cancelling the task that iterates stops the workers too."""
    server.latency = 0.05
    before = asyncio.all_tasks()
    async with client_for(server) as client:

        async def consume() -> None:
            async for _ in client.upscale_many(urls(1000)):
                pass

        task = asyncio.create_task(consume())
        await asyncio.sleep(0.2)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        leftover = client_tasks(before)
    assert leftover == set()


async def test_input_is_pulled_lazily_with_backpressure(server: FakeMonicaServer) -> None:
    """A slow consumer keeps the workers no more than workers + buffer inputs ahead."""
    pulled = 0

    def produce() -> Iterator[str]:
        nonlocal pulled
        for url in urls(10_000):
            pulled += 1
            yield url

    ahead: list[int] = []
    async with client_for(server) as client:
        stream = client.upscale_many(produce(), workers=4, buffer=8)
        async with contextlib.aclosing(stream):  # type: ignore[type-var]
            seen = 0
            async for _ in stream:
                seen += 1
                await asyncio.sleep(0.002)
                ahead.append(pulled - seen)
                if seen == 60:
                    break
    assert max(ahead) <= 4 + 8 + 1
    assert pulled < 100


async def test_an_error_raised_by_the_input_reaches_the_consumer(
    server: FakeMonicaServer,
) -> None:
    """If iterating the input raises, the batch stops and the consumer sees that error."""

    def produce() -> Iterator[str]:
        yield from urls(5)
        raise OSError("input file vanished")

    async with client_for(server) as client:
        with pytest.raises(OSError, match="input file vanished"):
            await client.upscale_all(produce())


async def test_one_failing_item_never_stops_the_batch(server: FakeMonicaServer) -> None:
    """An input whose every attempt fails leaves the others untouched."""
    inputs = urls(30)
    server.script_faults(inputs[7], [Fault.HTTP_500] * 5)
    async with client_for(server, retry=RetryPolicy(max_attempts=2, initial_backoff=0)) as client:
        outcomes = await client.upscale_all(inputs)
    assert [o.index for o in outcomes if not o.ok] == [7]
    error = outcomes[7].error
    assert isinstance(error, InternalServerError)
    assert error.attempts == 2


async def test_client_stats_count_what_happened(
    server: FakeMonicaServer, instant_retries: None
) -> None:
    """client.stats counts calls, attempts, retries and 429s."""
    server.retry_after = 0
    server.queue_faults([Fault.HTTP_429, Fault.HTTP_503])
    async with client_for(server, max_concurrency=1) as client:
        await client.upscale_all(urls(10))
        stats = client.stats
    assert (stats.requests, stats.succeeded, stats.failed) == (10, 10, 0)
    assert (stats.attempts, stats.retries, stats.rate_limited) == (12, 2, 1)
    assert stats.in_flight == 0
    assert stats.latency_p50 is not None
    assert stats.latency_p95 is not None
    assert stats.latency_p50 <= stats.latency_p95


@pytest.mark.timeout(60)
async def test_a_429_pauses_everyone_by_default() -> None:
    """Default client, server allowing 20 per sliding second: few 429s per accepted request."""
    async with FakeMonicaServer(api_key=KEY, process_images=False, rate_limit=(20, 1.0)) as fake:
        async with client_for(fake, max_concurrency=16) as client:
            outcomes = await client.upscale_all(urls(100))
        statuses = Counter(fake.stats.by_status)
    assert all(o.ok for o in outcomes)
    # A client that only honours Retry-After per request gets about 0.7; the shared
    # pause and paced resume keep it far lower. Generous bound: timing on shared CI.
    assert statuses[429] / statuses[200] < 0.5


async def test_a_long_retry_after_pauses_others_no_longer_than_the_policy_honours(
    server: FakeMonicaServer,
) -> None:
    """Retry-After: 3600 fails the call at once and pauses the limiter for max_retry_after."""
    server.retry_after = 3600
    server.queue_faults([Fault.HTTP_429])
    limit = RateLimit(100)
    retry = RetryPolicy(max_retry_after=1.0)
    async with client_for(server, rate_limit=limit, retry=retry) as client:
        with pytest.raises(RateLimitError) as info:
            await client.upscale(urls(1)[0])
    assert (info.value.retry_after, info.value.attempts) == (3600, 1)
    assert limit._pause.not_before - time.monotonic() < 1.5
