"""A real ``redis-server`` on a free loopback port, for the shared rate limit's tests.

Loaded with ``pytest_plugins`` by the modules that need it. Without the binary the
tests skip, except under ``CI=true``, where a missing Redis fails them instead.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import attrs
import pytest
import redis.asyncio

#: Seconds a fresh redis-server gets to answer PING.
STARTUP_TIMEOUT = 15.0


def redis_binary() -> str | None:
    """The redis-server to run: ``$REDIS_SERVER``, else the one on ``PATH``."""
    return shutil.which(os.environ.get("REDIS_SERVER") or "redis-server")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _pong(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


@attrs.define
class RedisServer:
    """One redis-server process, persistence off, that tests may stop and start again."""

    binary: str
    directory: Path
    port: int = attrs.field(factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:<port>/0``."""
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        """Start the server (on the same port as before) and wait until it answers PING."""
        assert self.process is None, "already running"
        # Persistence off: a restart must come back empty, like a lost cache node.
        self.process = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.directory),
                "--loglevel",
                "warning",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while not _pong(self.port):
            if self.process.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.process.returncode}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"redis-server did not answer PING on port {self.port}")
            time.sleep(0.02)

    def kill(self) -> None:
        """Kill the server (SIGKILL), as a crash would: connections break, data is lost."""
        if self.process is None:
            return
        self.process.kill()
        self.process.wait()
        self.process = None

    def stop(self) -> None:
        """Stop the server; connections to it break at once."""
        if self.process is None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process = None


def required_redis_binary() -> str:
    """The redis-server to run; skips the test without one (fails it under ``CI=true``)."""
    binary = redis_binary()
    if binary is None:
        reason = "redis-server not found on PATH (install Debian's redis-server package)"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{reason}; under CI=true the Redis tests must run")
        pytest.skip(reason)
    return binary


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A running redis-server of its own, stopped after the test."""
    server = RedisServer(binary=required_redis_binary(), directory=tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
async def redis_client(redis_server: RedisServer) -> AsyncIterator[redis.asyncio.Redis]:
    """A ``redis.asyncio.Redis`` connected to :func:`redis_server`, closed after the test."""
    client = redis.asyncio.Redis.from_url(redis_server.url)
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture
def dead_redis_url() -> str:
    """A redis:// URL on loopback where nothing listens."""
    return f"redis://127.0.0.1:{free_port()}/0"
