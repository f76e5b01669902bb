"""The standard proxy variables, honoured for API calls and downloads.

A forwarding proxy on 127.0.0.1 stands in for a corporate one: it alone knows the
hosts ``api.test`` and ``cdn.test`` (it sends them to servers on 127.0.0.1), so a
request that does not go through it cannot succeed.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from urllib.parse import urlsplit

import attrs
import pytest
from aiohttp import web

from monica_async import APIConnectionError, MonicaClient, RetryPolicy
from monica_async._http import EnvProxies

IMAGE = "https://images.test/cat.png"
PNG = b"\x89PNG\r\n\x1a\n" + bytes(64) + b"\x00\x00\x00\x00IEND\xaeB`\x82"
Start = Callable[[Callable[[web.Request], Awaitable[web.StreamResponse]]], Awaitable[str]]
PROXY_VARIABLES = ["http_proxy", "https_proxy", "no_proxy", "all_proxy"]

pytestmark = pytest.mark.usefixtures("api_key", "no_retry_sleep")


@attrs.define
class ForwardProxy:
    """A plain HTTP forward proxy: records each request's line and headers, forwards
    absolute-form requests to ``routes[host]`` on 127.0.0.1, refuses CONNECT."""

    routes: dict[str, int]
    seen: list[tuple[str, dict[str, str]]] = attrs.Factory(list)
    port: int = 0
    _server: asyncio.Server | None = None

    async def start(self) -> None:
        """Listen on an ephemeral port of 127.0.0.1."""
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Stop listening."""
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()
            return
        line, *header_lines = head.decode("latin-1").split("\r\n")
        headers = {}
        for header in header_lines:
            if header:
                name, _, value = header.partition(":")
                headers[name.strip().lower()] = value.strip()
        self.seen.append((line, headers))
        method, target, _ = line.split(" ")
        if method == "CONNECT":
            writer.write(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
            writer.close()
            return
        body = await reader.readexactly(int(headers.get("content-length", "0")))
        parts = urlsplit(target)
        assert parts.hostname is not None
        up_reader, up_writer = await asyncio.open_connection(
            "127.0.0.1", self.routes[parts.hostname]
        )
        kept = {k: v for k, v in headers.items() if not k.startswith(("proxy-", "connection"))}
        up_writer.write(
            f"{method} {parts.path or '/'} HTTP/1.1\r\n".encode()
            + "".join(f"{k}: {v}\r\n" for k, v in kept.items()).encode()
            + b"Connection: close\r\n\r\n"
            + body
        )
        writer.write(await up_reader.read())
        up_writer.close()
        writer.close()


@pytest.fixture
def no_proxy_variables(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """A clean slate: none of the proxy variables, in either case."""
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)
    return monkeypatch


async def _serve(app: web.Application) -> tuple[web.AppRunner, int]:
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return runner, runner.addresses[0][1]


@pytest.fixture
async def proxy() -> AsyncIterator[ForwardProxy]:
    """The API (``api.test``) and the image host (``cdn.test``), reachable only through
    a :class:`ForwardProxy`."""

    async def upscale(request: web.Request) -> web.Response:
        return web.json_response({"image": "http://cdn.test/results/cat.png"})

    async def result(request: web.Request) -> web.Response:
        return web.Response(body=PNG, content_type="image/png")

    api_app, cdn_app = web.Application(), web.Application()
    api_app.router.add_post("/v1/image/tool/upscale", upscale)
    cdn_app.router.add_get("/results/cat.png", result)
    api, api_port = await _serve(api_app)
    cdn, cdn_port = await _serve(cdn_app)
    forward = ForwardProxy({"api.test": api_port, "cdn.test": cdn_port})
    await forward.start()
    yield forward
    await forward.stop()
    await api.cleanup()
    await cdn.cleanup()


async def test_http_proxy_carries_api_calls_and_downloads(
    proxy: ForwardProxy, no_proxy_variables: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """With HTTP_PROXY set, the upscale and the download go through the proxy."""
    no_proxy_variables.setenv("HTTP_PROXY", f"http://127.0.0.1:{proxy.port}")
    async with MonicaClient(base_url="http://api.test", allow_insecure_http=True) as client:
        result = await client.upscale(IMAGE)
        path = await client.download(result, tmp_path / "cat.png")
    assert (
        [
            "POST http://api.test/v1/image/tool/upscale HTTP/1.1",
            "GET http://cdn.test/results/cat.png HTTP/1.1",
        ],
        PNG,
    ) == ([line for line, _ in proxy.seen], path.read_bytes())


async def test_lower_case_variable_is_read_too(
    proxy: ForwardProxy, no_proxy_variables: pytest.MonkeyPatch
) -> None:
    """http_proxy works as HTTP_PROXY does, as curl and requests read it."""
    no_proxy_variables.setenv("http_proxy", f"127.0.0.1:{proxy.port}")
    async with MonicaClient(base_url="http://api.test", allow_insecure_http=True) as client:
        await client.upscale(IMAGE)
    assert ["POST http://api.test/v1/image/tool/upscale HTTP/1.1"] == [
        line for line, _ in proxy.seen
    ]


async def test_https_proxy_gets_a_connect_for_the_api_host(
    proxy: ForwardProxy, no_proxy_variables: pytest.MonkeyPatch
) -> None:
    """With HTTPS_PROXY set, an https API is reached through a CONNECT tunnel of the proxy;
    a proxy refusing it is a connection error that names the variables."""
    no_proxy_variables.setenv("HTTPS_PROXY", f"http://127.0.0.1:{proxy.port}")
    async with MonicaClient(base_url="https://api.test", retry=RetryPolicy(max_attempts=1)) as c:
        with pytest.raises(APIConnectionError, match="the proxy answered 403") as caught:
            await c.upscale(IMAGE)
    assert (["CONNECT api.test:443 HTTP/1.1"], True) == (
        [line for line, _ in proxy.seen],
        "HTTPS_PROXY" in str(caught.value),
    )


async def test_proxy_credentials_become_proxy_authorization(
    proxy: ForwardProxy, no_proxy_variables: pytest.MonkeyPatch
) -> None:
    """user:password in the proxy URL are sent to the proxy, never to the API."""
    no_proxy_variables.setenv("HTTP_PROXY", f"http://user:s3cret@127.0.0.1:{proxy.port}")
    async with MonicaClient(base_url="http://api.test", allow_insecure_http=True) as client:
        await client.upscale(IMAGE)
    [(_, headers)] = proxy.seen
    assert "Basic " + base64.b64encode(b"user:s3cret").decode() == headers["proxy-authorization"]


async def test_loopback_is_never_proxied(
    proxy: ForwardProxy, no_proxy_variables: pytest.MonkeyPatch, loopback: Start
) -> None:
    """A server on this machine (the fake server, the demo) is reached directly."""

    async def ok(request: web.Request) -> web.Response:
        return web.json_response({"image": "http://127.0.0.1/x.png"})

    no_proxy_variables.setenv("HTTP_PROXY", f"http://127.0.0.1:{proxy.port}")
    base_url = await loopback(ok)
    async with MonicaClient(base_url=base_url) as client:
        await client.upscale(IMAGE)
    assert [] == proxy.seen


@pytest.mark.parametrize(
    ("environment", "url", "expected"),
    [
        ({}, "https://api.test/x", None),
        ({"HTTPS_PROXY": "http://p:3128"}, "https://api.test/x", "http://p:3128"),
        ({"HTTPS_PROXY": "http://p:3128"}, "http://api.test/x", None),
        ({"HTTP_PROXY": "p:3128"}, "http://api.test/x", "http://p:3128"),
        (
            {"https_proxy": "http://lower:1", "HTTPS_PROXY": "http://upper:2"},
            "https://a.test/",
            "http://lower:1",
        ),
        ({"HTTPS_PROXY": "http://p:1", "NO_PROXY": "*"}, "https://api.test/x", None),
        ({"HTTPS_PROXY": "http://p:1", "NO_PROXY": "api.test"}, "https://api.test/x", None),
        ({"HTTPS_PROXY": "http://p:1", "NO_PROXY": "api.test"}, "https://v1.api.test/x", None),
        ({"HTTPS_PROXY": "http://p:1", "NO_PROXY": ".test"}, "https://api.test/x", None),
        ({"HTTPS_PROXY": "http://p:1", "NO_PROXY": "*.test"}, "https://api.test/x", None),
        ({"HTTPS_PROXY": "http://p:1", "NO_PROXY": "pi.test"}, "https://api.test/x", "http://p:1"),
        ({"HTTPS_PROXY": "http://p:1", "NO_PROXY": "a.test, api.test"}, "https://api.test/", None),
        ({"HTTPS_PROXY": "http://p:1", "NO_PROXY": "api.test:443"}, "https://api.test/", None),
        (
            {"HTTPS_PROXY": "http://p:1", "NO_PROXY": "api.test:8443"},
            "https://api.test/",
            "http://p:1",
        ),
        ({"HTTPS_PROXY": "http://p:1", "NO_PROXY": "10.0.0.0/8"}, "https://10.1.2.3/", None),
        (
            {"HTTPS_PROXY": "http://p:1", "NO_PROXY": "10.0.0.0/8"},
            "https://11.1.2.3/",
            "http://p:1",
        ),
        (
            {"HTTPS_PROXY": "http://p:1", "NO_PROXY": "[2001:db8::1]:443"},
            "https://[2001:db8::1]/",
            None,
        ),
        ({"HTTPS_PROXY": "http://p:1", "NO_PROXY": "2001:db8::1"}, "https://[2001:db8::1]/", None),
        ({"HTTPS_PROXY": "http://p:1"}, "https://localhost:8443/", None),
        ({"HTTPS_PROXY": "http://p:1"}, "https://127.0.0.2/", None),
        ({"HTTPS_PROXY": "http://p:1"}, "https://[::1]/", None),
    ],
)
def test_which_proxy_a_url_goes_through(
    no_proxy_variables: pytest.MonkeyPatch,
    environment: dict[str, str],
    url: str,
    expected: str | None,
) -> None:
    """HTTPS_PROXY / HTTP_PROXY by scheme (lower case first), NO_PROXY names, suffixes,
    ports and networks, and loopback always direct."""
    for name, value in environment.items():
        no_proxy_variables.setenv(name, value)
    assert expected == EnvProxies.from_environment().for_url(url)
