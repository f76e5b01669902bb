"""HTTP edges against real servers on 127.0.0.1: capped answers, closed keep-alive
connections, answers that break the contract, Retry-After syntax, HTML error pages."""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import attrs
import pytest
from aiohttp import web

from monica_async import (
    APIConnectionError,
    APIResponseValidationError,
    InternalServerError,
    MonicaClient,
    RetryPolicy,
)
from monica_async._exceptions import excerpt
from monica_async._http import MAX_ANSWER_BYTES

IMAGE = "https://images.test/cat.png"
RESULT = "https://cdn.test/cat@2x.png"
ANSWER = b'{"image": "https://cdn.test/cat@2x.png"}'
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Start = Callable[[Handler], Awaitable[str]]

pytestmark = pytest.mark.usefixtures("api_key", "no_retry_sleep")


# -- answers are read up to a cap ---------------------------------------------------------------

HUGE = 50 * 1024 * 1024
#: What a server may have written when the client stops reading: the cap plus what the
#: sockets' buffers took. A bound far below HUGE, not a measurement.
SENT_BOUND = 16 * 1024 * 1024


def huge_answer(status: int, sent: list[int], *, sized: bool) -> Handler:
    """Stream HUGE bytes of JSON-ish text, counting what was written before the client left."""

    async def handler(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(status=status, headers={"Content-Type": "application/json"})
        if sized:
            response.content_length = HUGE
        await response.prepare(request)
        chunk = b" " * 65536
        written = 0
        try:
            while written < HUGE:
                await response.write(chunk)
                written += len(chunk)
        except (ConnectionError, RuntimeError):
            pass
        finally:
            sent.append(written)
        return response

    return handler


@pytest.mark.parametrize("sized", [True, False], ids=["content-length", "chunked"])
async def test_huge_200_answer_fails_fast_without_being_read(loopback: Start, sized: bool) -> None:
    """A 200 over the cap is a validation error, raised without reading the rest."""
    sent: list[int] = []
    base_url = await loopback(huge_answer(200, sent, sized=sized))
    async with MonicaClient(base_url=base_url) as client:
        with pytest.raises(APIResponseValidationError, match="over 256 KiB") as caught:
            await client.upscale(IMAGE)
    await _settled(sent, 1)
    assert (1, True, True) == (
        caught.value.attempts,
        len(caught.value.body) <= 600,
        sent[0] < SENT_BOUND,
    )


async def test_huge_error_body_is_read_up_to_the_cap_on_every_attempt(loopback: Start) -> None:
    """A 500 with 50 MB of body still gives InternalServerError; each attempt reads a little."""
    sent: list[int] = []
    base_url = await loopback(huge_answer(500, sent, sized=True))
    async with MonicaClient(base_url=base_url, retry=RetryPolicy(max_attempts=2)) as client:
        with pytest.raises(InternalServerError) as caught:
            await client.upscale(IMAGE)
    await _settled(sent, 2)
    assert (2, 500, [True, True]) == (
        caught.value.attempts,
        caught.value.status,
        [n < SENT_BOUND for n in sent],
    )


async def test_answer_at_the_cap_is_read(loopback: Start) -> None:
    """The cap is inclusive: a 200 of exactly MAX_ANSWER_BYTES is parsed as usual."""
    body = ANSWER[:-1] + b" " * (MAX_ANSWER_BYTES - len(ANSWER)) + b"}"

    async def handler(request: web.Request) -> web.Response:
        return web.Response(body=body, content_type="application/json")

    async with MonicaClient(base_url=await loopback(handler)) as client:
        result = await client.upscale(IMAGE)
    assert RESULT == result.url


async def test_answers_come_back_on_one_kept_alive_connection(loopback: Start) -> None:
    """Answers taken as they arrive, and the response released, leave the connection
    in the pool: one client's calls one after another all use the same one."""
    peers: list[Any] = []

    async def handler(request: web.Request) -> web.Response:
        peers.append(request.transport.get_extra_info("peername") if request.transport else None)
        return web.Response(body=ANSWER, content_type="application/json")

    async with MonicaClient(base_url=await loopback(handler), max_concurrency=1) as client:
        urls = [(await client.upscale(IMAGE)).url for _ in range(5)]
    assert ([RESULT] * 5, 1) == (urls, len(set(peers)))


async def test_a_session_with_trace_configs_still_hears_of_the_answer(loopback: Start) -> None:
    """An injected session's trace configs are told of the answer's body, as aiohttp's
    read() tells them (the client takes the body another way when nothing listens)."""
    chunks: list[bytes] = []

    async def on_chunk(
        session: aiohttp.ClientSession,
        context: Any,
        params: aiohttp.TraceResponseChunkReceivedParams,
    ) -> None:
        chunks.append(params.chunk)

    async def handler(request: web.Request) -> web.Response:
        return web.Response(body=ANSWER, content_type="application/json")

    tracing = aiohttp.TraceConfig()
    tracing.on_response_chunk_received.append(on_chunk)
    base_url = await loopback(handler)
    async with (
        aiohttp.ClientSession(trace_configs=[tracing]) as session,
        MonicaClient(base_url=base_url, session=session) as client,
    ):
        result = await client.upscale(IMAGE)
    assert (RESULT, [ANSWER]) == (result.url, chunks)


async def _settled(sent: list[int], count: int) -> None:
    """Wait until *count* handlers noticed the client left (a bound, not a speed check)."""
    for _ in range(1000):
        if len(sent) >= count:
            return
        await asyncio.sleep(0.01)


# -- a keep-alive connection the server had closed -------------------------------------------


@attrs.define
class OneShotServer:
    """Answers the first request of each connection, then drops the connection when the
    next request arrives on it (or, with *broken_answer*, starts an answer and drops it)."""

    broken_answer: bool = False
    #: Drop with a TCP reset instead of a clean close.
    reset: bool = False
    connections: int = 0
    answered: int = 0
    dropped: int = 0
    port: int = 0
    _server: asyncio.Server | None = None
    _writers: set[asyncio.StreamWriter] = attrs.Factory(set)

    @property
    def base_url(self) -> str:
        """Where it listens."""
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        """Listen on an ephemeral port of 127.0.0.1."""
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Stop listening and close what is open."""
        assert self._server is not None
        self._server.close()
        for writer in self._writers:
            writer.close()
        await self._server.wait_closed()

    async def _read_request(self, reader: asyncio.StreamReader) -> bool:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError):
            return False
        length = 0
        for line in head.split(b"\r\n"):
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        await reader.readexactly(length)
        return True

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.add(writer)
        try:
            if not await self._read_request(reader):
                return
            self.answered += 1
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                + f"Content-Length: {len(ANSWER)}\r\n\r\n".encode()
                + ANSWER
            )
            await writer.drain()
            if not await self._read_request(reader):
                return
            self.dropped += 1
            if self.broken_answer:
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{")
                await writer.drain()
            if self.reset:
                sock = writer.get_extra_info("socket")
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        finally:
            writer.close()


@pytest.fixture
async def one_shot() -> AsyncIterator[OneShotServer]:
    """A server that closes each connection after one answer (see :class:`OneShotServer`)."""
    server = OneShotServer()
    await server.start()
    yield server
    await server.stop()


@pytest.mark.parametrize("reset", [False, True], ids=["closed", "reset"])
async def test_closed_keep_alive_connection_is_resent_at_once_as_an_attempt(
    one_shot: OneShotServer, retry_waits: list[float], reset: bool
) -> None:
    """Back-to-back calls on connections the server closes after one answer: each call's
    request on the closed connection counts as its first attempt, the second goes at
    once (no backoff) on a new connection and succeeds."""
    one_shot.reset = reset
    async with MonicaClient(base_url=one_shot.base_url) as client:
        results = [await client.upscale(IMAGE) for _ in range(10)]
    assert ([1] + [2] * 9, [0.0] * 9, 10, 9) == (
        [r.attempts for r in results],
        retry_waits,
        one_shot.answered,
        one_shot.dropped,
    )


@pytest.mark.parametrize("reset", [False, True], ids=["closed", "reset"])
async def test_closed_keep_alive_connection_with_one_attempt_fails(
    one_shot: OneShotServer, retry_waits: list[float], reset: bool
) -> None:
    """With one attempt allowed, a request the server read on a kept-alive connection and
    dropped is that attempt: the call fails and nothing is sent again."""
    one_shot.reset = reset
    async with MonicaClient(
        base_url=one_shot.base_url, retry=RetryPolicy(max_attempts=1)
    ) as client:
        await client.upscale(IMAGE)
        with pytest.raises(APIConnectionError) as caught:
            await client.upscale(IMAGE)
    error = caught.value
    assert (1, True, [], 1, 1) == (
        error.attempts,
        error.reused_connection,
        retry_waits,
        one_shot.answered,
        one_shot.dropped,
    )


async def test_batch_on_closed_keep_alive_connections_counts_every_request(
    one_shot: OneShotServer, retry_waits: list[float]
) -> None:
    """40 inputs through 8 workers: every input succeeds, the attempts the results report
    add up to the requests the server read, and every resend went without a backoff."""
    async with MonicaClient(base_url=one_shot.base_url, max_concurrency=8) as client:
        outcomes = await client.upscale_all([IMAGE] * 40)
    attempts = [o.result.attempts for o in outcomes]
    assert (one_shot.answered + one_shot.dropped, 40) == (sum(attempts), one_shot.answered)
    assert set(retry_waits) <= {0.0}


async def test_answer_broken_after_it_began_is_a_normal_failure(
    one_shot: OneShotServer,
) -> None:
    """Once the answer began, a dropped reused connection is an attempt like any other."""
    one_shot.broken_answer = True
    async with MonicaClient(base_url=one_shot.base_url, retry=RetryPolicy(max_attempts=1)) as c:
        await c.upscale(IMAGE)
        with pytest.raises(APIConnectionError) as caught:
            await c.upscale(IMAGE)
    assert (1, 1, 1) == (caught.value.attempts, one_shot.answered, one_shot.dropped)


async def test_fresh_connection_dropped_is_a_normal_failure(loopback: Start) -> None:
    """A new connection closed without an answer is retried with backoff, as attempts."""
    seen: list[int] = []

    async def hang_up(request: web.Request) -> web.Response:
        seen.append(1)
        assert request.transport is not None
        request.transport.close()
        return web.Response()

    policy = RetryPolicy(max_attempts=2)
    async with MonicaClient(base_url=await loopback(hang_up), retry=policy) as client:
        with pytest.raises(APIConnectionError) as caught:
            await client.upscale(IMAGE)
    assert (2, 2) == (caught.value.attempts, len(seen))


# -- a 200 that breaks the contract ----------------------------------------------------------


@pytest.mark.parametrize(
    "image",
    [
        "aliquip",
        "ftp://cdn.test/x.png",
        "/results/x.png",
        "//cdn.test/x.png",
        "https://",
        "https://cdn.test/a b.png",
    ],
)
async def test_200_whose_image_is_not_an_http_url_is_refused(loopback: Start, image: str) -> None:
    """The server's answer is at fault: APIResponseValidationError, not retried."""
    seen: list[int] = []

    async def handler(request: web.Request) -> web.Response:
        seen.append(1)
        return web.json_response({"image": image})

    async with MonicaClient(base_url=await loopback(handler)) as client:
        with pytest.raises(APIResponseValidationError, match="absolute http\\(s\\) URL") as caught:
            await client.upscale(IMAGE)
    assert (1, 1) == (caught.value.attempts, len(seen))


# -- Retry-After as RFC 9110 writes it ---------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "honoured"),
    [("10", True), ("1e1", False), ("1_0", False), ("10.0", False), ("-0", False)],
)
async def test_retry_after_is_digits_only(
    loopback: Start, unlimited: Any, retry_waits: list[float], value: str, honoured: bool
) -> None:
    """Only digits (or an HTTP-date) are a Retry-After; other numbers fall back to backoff."""
    calls: list[int] = []

    async def handler(request: web.Request) -> web.Response:
        calls.append(1)
        if len(calls) == 1:
            return web.json_response({}, status=429, headers={"Retry-After": value})
        return web.json_response({"image": RESULT})

    base_url = await loopback(handler)
    async with MonicaClient(base_url=base_url, rate_limit=unlimited) as client:
        await client.upscale(IMAGE)
    [wait] = retry_waits
    assert (honoured, [10.0 if honoured else None]) == (wait >= 10, unlimited.rate_limited)


# -- HTML error pages ---------------------------------------------------------------------------

NGINX_502 = (
    "<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
    "<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>nginx</center>\r\n"
    "</body>\r\n</html>\r\n"
)
UNTITLED = (
    "<!DOCTYPE html>\r\n<html><head><style>p { color: red }</style>"
    "<script>var x = '<b>';</script></head>\r\n<body><p>The proxy\r\n   could not\tconnect"
    " to&nbsp;the server &amp; gave up.</p></body></html>"
)


@pytest.mark.parametrize(
    ("page", "content_type", "message"),
    [
        (NGINX_502, "text/html", "502 Bad Gateway"),
        (NGINX_502, "text/plain", "502 Bad Gateway"),
        (UNTITLED, "text/html", "The proxy could not connect to the server & gave up."),
        (
            "<html><body>" + "word " * 100 + "</body></html>",
            "text/html",
            "word " * 40 + "... (299 more characters)",
        ),
    ],
)
async def test_html_error_page_becomes_short_text(
    loopback: Start, page: str, content_type: str, message: str
) -> None:
    """A proxy's page gives its title or its text, one line and bounded; body stays raw."""

    async def handler(request: web.Request) -> web.Response:
        return web.Response(status=502, text=page, content_type=content_type)

    base_url = await loopback(handler)
    async with MonicaClient(base_url=base_url, retry=RetryPolicy(max_attempts=1)) as client:
        with pytest.raises(InternalServerError) as caught:
            await client.upscale(IMAGE)
    assert (message, excerpt(page)) == (caught.value.message, caught.value.body)
