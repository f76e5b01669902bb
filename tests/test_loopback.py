"""The client against real aiohttp servers on 127.0.0.1: sockets, timing and concurrency."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from monica_async import (
    APIConnectionError,
    APIStatusError,
    APITimeoutError,
    MonicaClient,
    RetryPolicy,
)

IMAGE = "https://images.test/cat.png"
RESULT = "https://cdn.test/cat@2x.png"
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Start = Callable[[Handler], Awaitable[str]]

pytestmark = pytest.mark.usefixtures("api_key", "no_retry_sleep")


def counting(handler: Handler) -> tuple[Handler, list[web.Request]]:
    """Wrap *handler* so that every request it receives is recorded."""
    seen: list[web.Request] = []

    async def wrapper(request: web.Request) -> web.StreamResponse:
        seen.append(request)
        return await handler(request)

    return wrapper, seen


async def ok(request: web.Request) -> web.Response:
    """Answer like the API."""
    return web.json_response({"image": RESULT})


async def hang_up(request: web.Request) -> web.Response:
    """Close the connection without answering."""
    assert request.transport is not None
    request.transport.close()
    return web.Response()


async def stall(request: web.Request) -> web.Response:
    """Answer far too late."""
    await asyncio.sleep(30)
    return web.json_response({"image": RESULT})


def scripted(*handlers: Handler) -> Handler:
    """Answer the n-th request with the n-th handler (the last one repeats)."""
    calls = 0

    async def handler(request: web.Request) -> web.StreamResponse:
        nonlocal calls
        calls += 1
        return await handlers[min(calls, len(handlers)) - 1](request)

    return handler


def status(code: int, **headers: str) -> Handler:
    """A handler answering *code* with *headers*."""

    async def handler(request: web.Request) -> web.Response:
        return web.json_response(
            {"error": {"code": "x", "message": "no"}}, status=code, headers=headers
        )

    return handler


# -- broken connections --------------------------------------------------------------


async def test_dropped_connection_is_retried_then_reported(loopback: Start) -> None:
    """A server that hangs up on every attempt gives APIConnectionError after all attempts."""
    handler, seen = counting(hang_up)
    base_url = await loopback(handler)
    async with MonicaClient(base_url=base_url, retry=RetryPolicy(max_attempts=3)) as client:
        with pytest.raises(APIConnectionError) as caught:
            await client.upscale(IMAGE)
    assert (3, 3) == (caught.value.attempts, len(seen))
    assert isinstance(caught.value.__cause__, aiohttp.ClientError)
    assert not isinstance(caught.value, APITimeoutError)


async def test_dropped_connection_then_success(loopback: Start) -> None:
    """One hang-up costs one retry, then the call succeeds."""
    handler, seen = counting(scripted(hang_up, ok))
    base_url = await loopback(handler)
    async with MonicaClient(base_url=base_url) as client:
        result = await client.upscale(IMAGE)
    assert (RESULT, 2, 2) == (result.url, result.attempts, len(seen))


async def test_garbled_answer_is_a_connection_error_without_the_key(
    loopback: Start, api_key: str
) -> None:
    """An answer that is not HTTP maps to APIConnectionError; no link of the chain shows the key."""

    async def garbled(request: web.Request) -> web.Response:
        assert request.transport is not None
        request.transport.write(b"HTTP/1.1 2x0 OK\r\n\r\n")
        request.transport.close()
        return web.Response()

    base_url = await loopback(garbled)
    async with MonicaClient(base_url=base_url, retry=RetryPolicy(max_attempts=1)) as client:
        with pytest.raises(APIConnectionError, match="invalid HTTP answer") as caught:
            await client.upscale(IMAGE)
    chain: list[BaseException] = []
    exc: BaseException | None = caught.value
    while exc is not None:
        chain.append(exc)
        exc = exc.__cause__ or exc.__context__
    assert any(isinstance(link, aiohttp.ClientResponseError) for link in chain)
    for link in chain:
        assert api_key not in str(link)
        assert api_key not in repr(link)


# -- timeouts ------------------------------------------------------------------------


async def test_slow_answer_hits_the_client_timeout(loopback: Start) -> None:
    """An answer slower than the client's timeout raises APITimeoutError, after retries."""
    handler, seen = counting(stall)
    base_url = await loopback(handler)
    async with MonicaClient(
        base_url=base_url, timeout=0.2, retry=RetryPolicy(max_attempts=2)
    ) as client:
        with pytest.raises(APITimeoutError) as caught:
            await client.upscale(IMAGE)
    assert (2, 2) == (caught.value.attempts, len(seen))


async def test_per_call_timeout_shorter_than_the_clients(loopback: Start) -> None:
    """A short per-call timeout applies even when the client's is long."""
    base_url = await loopback(stall)
    async with MonicaClient(
        base_url=base_url, timeout=60, retry=RetryPolicy(max_attempts=1)
    ) as client:
        with pytest.raises(APITimeoutError):
            await client.upscale(IMAGE, timeout=0.2)


async def test_per_call_timeout_longer_than_the_clients(loopback: Start) -> None:
    """A long per-call timeout lets a slow answer through that the client's would cut."""

    async def slowish(request: web.Request) -> web.Response:
        await asyncio.sleep(0.4)
        return web.json_response({"image": RESULT})

    base_url = await loopback(slowish)
    async with MonicaClient(
        base_url=base_url, timeout=0.1, retry=RetryPolicy(max_attempts=1)
    ) as client:
        result = await client.upscale(IMAGE, timeout=30)
    assert RESULT == result.url


# -- concurrency and reuse -----------------------------------------------------------


@pytest.mark.parametrize("max_concurrency", [1, 8])
async def test_concurrent_calls_stay_within_max_concurrency(
    loopback: Start, max_concurrency: int
) -> None:
    """50 gathered calls on one client all succeed with at most max_concurrency in flight."""
    in_flight = 0
    peak = 0
    served = 0

    async def handler(request: web.Request) -> web.Response:
        nonlocal in_flight, peak, served
        in_flight += 1
        peak = max(peak, in_flight)
        try:
            await asyncio.sleep(0.01)
            served += 1
            return web.json_response({"image": f"{RESULT}?n={served}"})
        finally:
            in_flight -= 1

    base_url = await loopback(handler)
    async with MonicaClient(base_url=base_url, max_concurrency=max_concurrency) as client:
        results = await asyncio.gather(*(client.upscale(f"{IMAGE}?i={i}") for i in range(50)))
        stats = client.stats
    assert (50, 50, 50) == (len({r.url for r in results}), served, stats.succeeded)
    assert 1 <= peak <= max_concurrency
    assert [f"{IMAGE}?i={i}" for i in range(50)] == [r.source for r in results]


async def test_concurrency_really_happens(loopback: Start) -> None:
    """With max_concurrency=8, gathered calls do overlap at the server."""
    in_flight = 0
    peak = 0

    async def handler(request: web.Request) -> web.Response:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await asyncio.sleep(0.05)
        in_flight -= 1
        return web.json_response({"image": RESULT})

    base_url = await loopback(handler)
    async with MonicaClient(base_url=base_url, max_concurrency=8) as client:
        await asyncio.gather(*(client.upscale(IMAGE) for _ in range(16)))
    assert 2 <= peak <= 8


async def test_sequential_calls_reuse_one_connection(loopback: Start) -> None:
    """The client's one session keeps the connection alive between calls."""
    peers: set[Any] = set()

    async def handler(request: web.Request) -> web.Response:
        assert request.transport is not None
        peers.add(request.transport.get_extra_info("peername"))
        return web.json_response({"image": RESULT})

    base_url = await loopback(handler)
    async with MonicaClient(base_url=base_url) as client:
        for _ in range(10):
            await client.upscale(IMAGE)
    assert 1 == len(peers)


# -- retries over sockets ------------------------------------------------------------


async def test_retries_over_real_sockets(loopback: Start) -> None:
    """500, 503 and 429 (Retry-After: 0) are retried with the default limiter; then success."""
    handler, seen = counting(
        scripted(status(500), status(503), status(429, **{"Retry-After": "0"}), ok)
    )
    base_url = await loopback(handler)
    async with MonicaClient(base_url=base_url) as client:
        result = await client.upscale(IMAGE)
        stats = client.stats
    assert (4, 4, 3, 1) == (result.attempts, len(seen), stats.retries, stats.rate_limited)


async def test_401_over_real_sockets_is_not_retried(loopback: Start) -> None:
    """An authentication failure is final."""
    handler, seen = counting(status(401))
    base_url = await loopback(handler)
    async with MonicaClient(base_url=base_url) as client:
        with pytest.raises(APIStatusError) as caught:
            await client.upscale(IMAGE)
    assert (401, "x", 1) == (caught.value.status, caught.value.code, len(seen))


async def test_redirect_is_not_followed_and_the_key_stays(loopback: Start) -> None:
    """A 302 raises; the host it points to never receives a request (nor the key)."""
    elsewhere, received = counting(ok)
    target = await loopback(elsewhere)

    async def redirect(request: web.Request) -> web.Response:
        raise web.HTTPFound(target + "/v1/image/tool/upscale")

    base_url = await loopback(redirect)
    async with MonicaClient(base_url=base_url) as client:
        with pytest.raises(APIStatusError, match="redirect") as caught:
            await client.upscale(IMAGE)
    assert (302, []) == (caught.value.status, received)


# -- what the server sees ------------------------------------------------------------


async def test_server_sees_the_request_as_specified(loopback: Start, api_key: str) -> None:
    """POST /v1/image/tool/upscale with bearer auth, JSON body and the library's User-Agent."""
    handler, seen = counting(ok)
    bodies: list[Any] = []

    async def recording(request: web.Request) -> web.StreamResponse:
        bodies.append(await request.json())
        return await handler(request)

    base_url = await loopback(recording)
    async with MonicaClient(base_url=base_url + "/") as client:
        await client.upscale(IMAGE)
    [request] = seen
    assert (
        "POST",
        "/v1/image/tool/upscale",
        f"Bearer {api_key}",
        "application/json",
        [{"image": IMAGE, "scale": 2}],
    ) == (
        request.method,
        request.path,
        request.headers["Authorization"],
        request.headers["Content-Type"],
        bodies,
    )
    assert request.headers["User-Agent"].startswith("monica-async/")


async def test_injected_session_sends_the_library_user_agent(loopback: Start) -> None:
    """A caller's session still sends monica-async's User-Agent."""
    handler, seen = counting(ok)
    base_url = await loopback(handler)
    async with aiohttp.ClientSession() as session:
        async with MonicaClient(base_url=base_url, session=session) as client:
            await client.upscale(IMAGE)
        assert not session.closed
    assert seen[0].headers["User-Agent"].startswith("monica-async/")


# -- cancellation --------------------------------------------------------------------


async def test_cancelled_call_is_not_retried_and_the_client_still_works(loopback: Start) -> None:
    """Cancelling a call in flight raises CancelledError at once; the next call works."""
    arrived = asyncio.Event()

    async def first_stalls(request: web.Request) -> web.Response:
        if not arrived.is_set():
            arrived.set()
            await asyncio.sleep(30)
        return web.json_response({"image": RESULT})

    handler, seen = counting(first_stalls)
    base_url = await loopback(handler)
    async with MonicaClient(base_url=base_url) as client:
        task = asyncio.create_task(client.upscale(IMAGE))
        await asyncio.wait_for(arrived.wait(), timeout=10)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.sleep(0.05)
        assert 1 == len(seen)
        result = await client.upscale(IMAGE)
        stats = client.stats
    assert (RESULT, 2, 0) == (result.url, len(seen), stats.in_flight)
