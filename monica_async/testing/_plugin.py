"""pytest plugin: ``fake_monica`` and ``fake_monica_factory`` fixtures.

Registered through the ``pytest11`` entry point. The fixtures need pytest-asyncio
(a test dependency only); without it the plugin defines nothing.
"""

from __future__ import annotations

import importlib.util
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from ._server import FakeMonicaServer

__all__ = ["FakeServerFactory"]

#: Type of the ``fake_monica_factory`` fixture: ``await factory(**options)``.
FakeServerFactory = Callable[..., Awaitable[FakeMonicaServer]]

if importlib.util.find_spec("pytest_asyncio") is not None:
    import pytest_asyncio

    @pytest_asyncio.fixture
    async def fake_monica() -> AsyncIterator[FakeMonicaServer]:
        """A started ``FakeMonicaServer(api_key="test-key")``, stopped after the test."""
        async with FakeMonicaServer(api_key="test-key") as server:
            yield server

    @pytest_asyncio.fixture
    async def fake_monica_factory() -> AsyncIterator[FakeServerFactory]:
        """``await fake_monica_factory(**options)`` starts a server; all stop after the test."""
        servers: list[FakeMonicaServer] = []

        async def make(**options: Any) -> FakeMonicaServer:
            server = FakeMonicaServer(**options)
            await server.start()
            servers.append(server)
            return server

        try:
            yield make
        finally:
            for server in reversed(servers):
                await server.stop()
