"""A client belongs to the event loop it was opened in; using it from another one is an error.

These tests call ``asyncio.run()`` themselves, as a script would, against a fake Monica
server that runs on an event loop of its own in another thread.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from conftest import ServerThread

from monica_async import MonicaClient, MonicaError
from monica_async.testing import FakeMonicaServer

KEY = "test-key"
IMAGE = "https://img.test/cat.png"


@pytest.fixture(scope="module")
def server() -> Iterator[FakeMonicaServer]:
    """A fake server that outlives the tests' own event loops."""
    with ServerThread(api_key=KEY, process_images=False) as server:
        yield server


@pytest.fixture
def sessions(monkeypatch: pytest.MonkeyPatch) -> list[aiohttp.ClientSession]:
    """Record every ``aiohttp.ClientSession`` created while the test runs."""
    created: list[aiohttp.ClientSession] = []
    real = aiohttp.ClientSession

    def tracking(*args: Any, **kwargs: Any) -> aiohttp.ClientSession:
        session = real(*args, **kwargs)
        created.append(session)
        return session

    monkeypatch.setattr(aiohttp, "ClientSession", tracking)
    return created


async def _use_upscale(client: MonicaClient) -> object:
    return await client.upscale(IMAGE)


async def _use_upscale_many(client: MonicaClient) -> object:
    return [outcome async for outcome in client.upscale_many([IMAGE])]


async def _use_upscale_all(client: MonicaClient) -> object:
    return await client.upscale_all([IMAGE])


async def _use_download(client: MonicaClient) -> object:
    return await client.download(IMAGE, Path("never-written.png"))


async def _use_async_with(client: MonicaClient) -> object:
    async with client:
        return None


Use = Callable[[MonicaClient], Coroutine[Any, Any, object]]
USES = [_use_upscale, _use_upscale_many, _use_upscale_all, _use_download, _use_async_with]


def _opened_in_a_finished_run(
    server: FakeMonicaServer, sessions: list[aiohttp.ClientSession]
) -> MonicaClient:
    """A client that served a call under an ``asyncio.run()`` that has returned.

    The client is left open, as a script that forgot to close it would; its session's
    connections are closed behind its back so that the test leaks no socket.
    """
    client = MonicaClient(KEY, base_url=server.base_url)

    async def first_run() -> None:
        await client.upscale(IMAGE)
        for session in sessions:
            await session.close()

    asyncio.run(first_run())
    return client


@pytest.mark.parametrize("use", USES)
def test_a_client_used_under_a_second_asyncio_run_says_how_to_fix_it(
    server: FakeMonicaServer, sessions: list[aiohttp.ClientSession], use: Use
) -> None:
    """Every use under a second ``asyncio.run()`` raises a MonicaError naming the fix."""
    client = _opened_in_a_finished_run(server, sessions)
    sent = server.stats.total

    with pytest.raises(MonicaError) as raised:
        asyncio.run(use(client))

    message = str(raised.value)
    assert "opened in another event loop (closed now)" in message
    assert "create the client inside the event loop that uses it" in message
    assert "asyncio.run()" in message
    assert sent == server.stats.total


def test_a_client_used_from_a_running_loop_of_another_thread_is_refused(
    server: FakeMonicaServer,
) -> None:
    """A client opened on a loop that still runs in another thread is refused as well."""
    other = ServerThread(api_key=KEY, process_images=False)
    with other:
        client = MonicaClient(KEY, base_url=server.base_url)
        other.run(client.upscale(IMAGE))
        try:
            with pytest.raises(MonicaError, match=r"opened in another event loop, which") as raised:
                asyncio.run(client.upscale(IMAGE))
            assert "closed now" not in str(raised.value)
        finally:
            other.run(client.aclose())


def test_one_client_per_asyncio_run_works(server: FakeMonicaServer) -> None:
    """The fix the message gives: a client created inside each run serves every run."""

    async def main() -> str:
        async with MonicaClient(KEY, base_url=server.base_url) as client:
            return (await client.upscale(IMAGE)).url

    urls = [asyncio.run(main()) for _ in range(2)]

    assert [True, True] == [url.startswith(server.base_url) for url in urls]
