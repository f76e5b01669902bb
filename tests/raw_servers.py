"""Servers written on asyncio streams, for faults aiohttp's server cannot play."""

from __future__ import annotations

import asyncio

import attrs

ANSWER = b'{"image": "https://cdn.test/out.png"}'


@attrs.define
class DroppingServer:
    """Answers every request and keeps its connection alive, until :attr:`drop` is set;
    from then on it reads each request whole, counts it, and closes the connection
    without a byte of answer: a server that may have done the work and then failed."""

    drop: bool = False
    #: Requests read whole, answered or not.
    received: int = 0
    #: Requests read whole while :attr:`drop` was set.
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

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            while await read_request(reader):
                self.received += 1
                if self.drop:
                    self.dropped += 1
                    return
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                    + f"Content-Length: {len(ANSWER)}\r\n\r\n".encode()
                    + ANSWER
                )
                await writer.drain()
        finally:
            self._writers.discard(writer)
            writer.close()


async def read_request(reader: asyncio.StreamReader) -> bool:
    """Read one request, head and body; ``False`` when the client went away first."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n"):
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        await reader.readexactly(length)
    except (asyncio.IncompleteReadError, ConnectionError):
        return False
    return True
