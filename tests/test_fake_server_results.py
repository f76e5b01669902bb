"""The fake server's results: kept for download within a budget, dropped by a reset.

Every request goes to 127.0.0.1 through a plain ``aiohttp.ClientSession``.
"""

from __future__ import annotations

import io
from collections.abc import AsyncIterator

import aiohttp
import pytest
from PIL import Image

from monica_async.testing import RESET_PATH, FakeMonicaServer

KEY = "test-key"


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    """A plain client session."""
    async with aiohttp.ClientSession() as client:
        yield client


async def upscaled(session: aiohttp.ClientSession, server: FakeMonicaServer, image: str) -> str:
    """The result URL of one upscale of *image*."""
    async with session.post(
        server.upscale_url,
        json={"image": image, "scale": 2},
        headers={"Authorization": f"Bearer {KEY}"},
    ) as response:
        assert response.status == 200, await response.text()
        url: str = (await response.json())["image"]
        return url


async def status_of(session: aiohttp.ClientSession, url: str) -> int:
    """The status a GET of *url* answers."""
    async with session.get(url) as response:
        await response.read()
        return response.status


async def result_size(session: aiohttp.ClientSession, server: FakeMonicaServer) -> int:
    """The bytes one 32x32 result of this server's sample weighs."""
    async with session.get(await upscaled(session, server, server.sample_image(16, 16))) as answer:
        return len(await answer.read())


async def test_results_past_the_budget_are_dropped_oldest_first(
    session: aiohttp.ClientSession,
) -> None:
    """With room for three results, the first two of five answer 404, the last three 200."""
    async with FakeMonicaServer(api_key=KEY) as server:
        size = await result_size(session, server)
        server.clear_results()
        server.max_result_bytes = 3 * (size + 256) + 10
        picture = server.sample_image(16, 16)
        urls = [await upscaled(session, server, picture) for _ in range(5)]
        statuses = [await status_of(session, url) for url in urls]
    assert [404, 404, 200, 200, 200] == statuses


async def test_newest_result_is_kept_whatever_its_size(session: aiohttp.ClientSession) -> None:
    """A budget smaller than one result still serves the newest one, as a whole image."""
    async with FakeMonicaServer(api_key=KEY, max_result_bytes=0) as server:
        picture = server.sample_image(16, 16)
        first = await upscaled(session, server, picture)
        second = await upscaled(session, server, picture)
        async with session.get(second) as answer:
            data = await answer.read()
        with Image.open(io.BytesIO(data)) as image:
            size = image.size
        assert (404, (32, 32)) == (await status_of(session, first), size)


async def test_dropped_result_says_why(session: aiohttp.ClientSession) -> None:
    """The 404 of a dropped result names max_result_bytes."""
    async with FakeMonicaServer(api_key=KEY, max_result_bytes=0) as server:
        picture = server.sample_image(16, 16)
        first = await upscaled(session, server, picture)
        await upscaled(session, server, picture)
        async with session.get(first) as answer:
            body = await answer.json()
    assert "max_result_bytes" in body["error"]["message"]


async def test_reset_over_http_drops_the_results_and_keeps_the_images(
    session: aiohttp.ClientSession,
) -> None:
    """``POST /_fake/reset`` frees every result; images added by the test are still served."""
    async with FakeMonicaServer(api_key=KEY) as server:
        picture = server.sample_image(16, 16)
        results = [await upscaled(session, server, picture) for _ in range(3)]
        before = [await status_of(session, url) for url in results]
        async with session.post(server.base_url + RESET_PATH) as answer:
            assert answer.status == 200
        after = [await status_of(session, url) for url in results]
        image = await status_of(session, picture)
    assert ([200] * 3, [404] * 3, 200) == (before, after, image)


@pytest.mark.parametrize("value", [-1, 1.5, "1"])
def test_max_result_bytes_must_be_a_count(value: object) -> None:
    """max_result_bytes takes a whole number of bytes, 0 or more."""
    with pytest.raises(ValueError, match="max_result_bytes must be an integer >= 0"):
        FakeMonicaServer(max_result_bytes=value)  # type: ignore[arg-type]
