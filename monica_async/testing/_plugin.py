"""pytest plugin: ``fake_monica`` and ``fake_monica_factory`` fixtures.

Registered through the ``pytest11`` entry point. The fixtures are async and need
pytest-asyncio (a test dependency only); without it they are still defined, and a
test that asks for one fails with a message that says to install it, instead of
pytest's "fixture not found".
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, Final

import pytest

from ._server import FakeMonicaServer, FakeServerFactory

__all__ = ["FakeServerFactory"]

_NEEDS_PYTEST_ASYNCIO: Final = (
    "the {name} fixture of monica_async.testing is async and needs pytest-asyncio: "
    'pip install pytest-asyncio, then set asyncio_mode = "auto" in pytest\'s configuration '
    "(or mark each test with @pytest.mark.asyncio)"
)

try:
    import pytest_asyncio
except ImportError:

    @pytest.fixture(name="fake_monica")
    def _fake_monica_needs_pytest_asyncio() -> FakeMonicaServer:
        """Fails: the fixture needs pytest-asyncio."""
        pytest.fail(_NEEDS_PYTEST_ASYNCIO.format(name="fake_monica"), pytrace=False)

    @pytest.fixture(name="fake_monica_factory")
    def _fake_monica_factory_needs_pytest_asyncio() -> FakeServerFactory:
        """Fails: the fixture needs pytest-asyncio."""
        pytest.fail(_NEEDS_PYTEST_ASYNCIO.format(name="fake_monica_factory"), pytrace=False)

else:

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
