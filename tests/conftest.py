"""Fixtures shared by the test suite: mocked HTTP, a loopback server, no-sleep retries."""

from __future__ import annotations

import asyncio
import inspect
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any, TypeVar

import aiohttp
import pytest
from aiohttp import web
from aioresponses import aioresponses
from aioresponses import core as aioresponses_core

import monica_async
from monica_async import _retry
from monica_async._retry import is_testing
from monica_async.testing import FakeMonicaServer

T = TypeVar("T")

#: A made-up key; tests look for it in logs, reprs and messages to prove it never leaks.
API_KEY = "sk-test-0123456789abcdef-SECRET"


class _CompatResponse(aiohttp.ClientResponse):
    """``ClientResponse`` that tolerates aioresponses 0.7.9 on aiohttp >= 3.14.

    aiohttp 3.14 made ``stream_writer`` a required keyword of ``ClientResponse``;
    aioresponses 0.7.9 does not pass it (pnuckowski/aioresponses#289, fix in #288).
    For a response whose request is already sent, aiohttp only reads
    ``stream_writer.output_size``, so a stand-in with that one attribute is enough.
    Remove this shim once an aioresponses release passes the argument itself.
    """

    def __init__(self, method: str, url: Any, **kwargs: Any) -> None:
        kwargs.setdefault("stream_writer", SimpleNamespace(output_size=0))
        super().__init__(method, url, **kwargs)


def _aioresponses_needs_shim() -> bool:
    accepts = inspect.signature(aiohttp.ClientResponse.__init__).parameters
    passes = inspect.getsource(aioresponses_core.RequestMatch._build_response)
    return "stream_writer" in accepts and "stream_writer" not in passes


@pytest.fixture
def mock_http(monkeypatch: pytest.MonkeyPatch) -> Iterator[aioresponses]:
    """Intercept every aiohttp request (use made-up hosts such as https://api.test)."""
    if _aioresponses_needs_shim():
        monkeypatch.setattr(aioresponses_core, "ClientResponse", _CompatResponse)
    with aioresponses() as mocked:
        yield mocked


@pytest.fixture
def no_retry_sleep() -> Iterator[None]:
    """Switch retry waits off with ``set_testing(True)``; restore the previous mode after."""
    previous = is_testing()
    monica_async.set_testing(True)
    yield
    monica_async.set_testing(previous)


@pytest.fixture
def api_key(monkeypatch: pytest.MonkeyPatch) -> str:
    """Set ``MONICA_API_KEY`` to a fake key and clear ``MONICA_BASE_URL``; return the key."""
    monkeypatch.setenv("MONICA_API_KEY", API_KEY)
    monkeypatch.delenv("MONICA_BASE_URL", raising=False)
    return API_KEY


class Unlimited:
    """A :class:`~monica_async.RateLimiter` that never waits and records the 429s it hears.

    The client's default limiter pauses in real time after a 429 (``set_testing``
    only removes retry waits); tests of retries use this one to stay instant.
    """

    def __init__(self) -> None:
        self.rate_limited: list[float | None] = []
        self.successes = 0

    async def acquire(self) -> float:
        """Never wait."""
        return 0.0

    async def on_rate_limited(self, retry_after: float | None, started: float) -> float:
        """Record the server's ``Retry-After``."""
        self.rate_limited.append(retry_after)
        return 0.0

    async def on_success(self, started: float) -> None:
        """Count accepted attempts."""
        self.successes += 1

    async def aclose(self) -> None:
        """Nothing to release."""


@pytest.fixture
def unlimited() -> Unlimited:
    """A rate limiter that never waits (see :class:`Unlimited`)."""
    return Unlimited()


@pytest.fixture
def retry_waits(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Record the seconds each retry asks to sleep, instead of sleeping."""
    waits: list[float] = []

    async def record(seconds: float) -> None:
        waits.append(seconds)

    monkeypatch.setattr(_retry, "_sleep", record)
    return waits


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@pytest.fixture
async def loopback() -> AsyncIterator[Callable[[Handler], Awaitable[str]]]:
    """Start real aiohttp servers on 127.0.0.1 (port 0); return ``start(handler) -> base URL``.

    The handler answers every method and path. Servers stop at teardown without
    waiting for handlers that are still sleeping.
    """
    runners: list[web.AppRunner] = []

    async def start(handler: Handler) -> str:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", handler)
        runner = web.AppRunner(app, shutdown_timeout=0.1)
        await runner.setup()
        runners.append(runner)
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        host, port = runner.addresses[0][:2]
        return f"http://{host}:{port}"

    yield start
    for runner in runners:
        await runner.cleanup()


class ServerThread:
    """A FakeMonicaServer on its own event loop in a daemon thread."""

    def __init__(self, **options: Any) -> None:
        self.server = FakeMonicaServer(**options)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._main, daemon=True)

    def _main(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_forever()
        self._loop.run_until_complete(self._loop.shutdown_default_executor())
        self._loop.close()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=30)

    def __enter__(self) -> FakeMonicaServer:
        self._thread.start()
        self.run(self.server.start())
        return self.server

    def __exit__(self, *exc_info: object) -> None:
        self.run(self.server.stop())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)


def _refuses_files(folder: Path) -> bool:
    """Whether no file can be created in *folder*."""
    probe = folder / ".monica-test-probe"
    try:
        probe.touch()
    except OSError:
        return True
    probe.unlink()
    return False


@pytest.fixture
def unwritable_dir(tmp_path: Path) -> Iterator[Path]:
    """A directory in which no file can be created, as on a read-only mount.

    A folder of mode 0555; for root, whom modes do not stop, the sysfs root (Linux),
    which refuses new files to anyone.
    """
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        for candidate in (folder, Path("/sys")):
            if candidate.is_dir() and _refuses_files(candidate):
                yield candidate
                return
        pytest.skip("no directory here refuses new files")
    finally:
        folder.chmod(0o755)
