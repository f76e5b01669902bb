"""The fake Monica server: contract, pictures, knobs, stats and life cycle.

Every request goes to 127.0.0.1 through a plain ``aiohttp.ClientSession``.
"""

from __future__ import annotations

import asyncio
import email.utils
import hashlib
import inspect
import io
import json
import os
import signal
import struct
import subprocess
import sys
import textwrap
import time
import zlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import attrs
import pytest
import pytest_asyncio
from aiohttp import web
from multidict import CIMultiDict
from PIL import Image

from monica_async.testing import (
    API_PATH,
    RESET_PATH,
    STATS_PATH,
    FakeMonicaServer,
    FakeServerStats,
    Fault,
    make_sample_image,
    serve_fake_main,
)

KEY = "test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
REPO = Path(__file__).resolve().parent.parent


@attrs.frozen
class Answer:
    """What a request got back."""

    status: int
    headers: CIMultiDict[str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def error(self) -> dict[str, str]:
        return self.json()["error"]  # type: ignore[no-any-return]


@pytest_asyncio.fixture
async def server() -> AsyncIterator[FakeMonicaServer]:
    async with FakeMonicaServer(api_key=KEY, seed=1234) as srv:
        yield srv


@pytest_asyncio.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


async def send(
    session: aiohttp.ClientSession,
    url: str,
    *,
    method: str = "POST",
    body: Any = None,
    data: bytes | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 20.0,
) -> Answer:
    """Send one request and read the whole answer."""
    hdrs = dict(AUTH if headers is None else headers)
    if body is not None:
        data = json.dumps(body).encode()
        hdrs.setdefault("Content-Type", "application/json")
    async with session.request(
        method, url, data=data, headers=hdrs, timeout=aiohttp.ClientTimeout(total=timeout)
    ) as response:
        return Answer(response.status, CIMultiDict(response.headers), await response.read())


async def upscale(session: aiohttp.ClientSession, server: FakeMonicaServer, image: str) -> Answer:
    return await send(session, server.upscale_url, body={"image": image, "scale": 2})


async def download_picture(session: aiohttp.ClientSession, url: str) -> Image.Image:
    answer = await send(session, url, method="GET", headers={})
    assert answer.status == 200
    assert answer.headers["Content-Type"] == "image/png"
    picture = Image.open(io.BytesIO(answer.body))
    assert picture.format == "PNG"
    return picture


async def wait_until(predicate: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


# -- life cycle ---------------------------------------------------------------------


async def test_base_url_is_loopback_on_an_os_chosen_port(server: FakeMonicaServer) -> None:
    """The server listens on 127.0.0.1, on a port the OS picked (port=0 by default)."""
    assert server.base_url.startswith("http://127.0.0.1:")
    assert int(server.base_url.rsplit(":", 1)[1]) > 0
    assert server.upscale_url == server.base_url + API_PATH


async def test_start_and_stop_without_context_manager(session: aiohttp.ClientSession) -> None:
    """start()/stop() work without ``async with``; stop is idempotent; restarting is refused."""
    srv = FakeMonicaServer(process_images=False)
    with pytest.raises(RuntimeError, match="not started"):
        _ = srv.base_url
    await srv.start()
    try:
        answer = await upscale(session, srv, "http://127.0.0.1:1/a.png")
        assert answer.status == 200
    finally:
        await srv.stop()
    await srv.stop()
    with pytest.raises(RuntimeError, match="starts once"):
        await srv.start()


async def test_stop_with_a_hung_request_in_flight_is_quick(session: aiohttp.ClientSession) -> None:
    """Stopping with a HANG in flight returns at once and the client sees a disconnect."""
    srv = FakeMonicaServer(process_images=False)
    await srv.start()
    srv.queue_faults([Fault.HANG])
    pending = asyncio.create_task(upscale(session, srv, "http://127.0.0.1:1/a.png"))
    await wait_until(lambda: srv.stats.hung == 1)
    started = time.monotonic()
    await srv.stop()
    assert time.monotonic() - started < 2.0
    with pytest.raises(aiohttp.ServerDisconnectedError):
        await pending


async def test_stop_cancels_slow_requests_after_the_shutdown_timeout(
    session: aiohttp.ClientSession,
) -> None:
    """A request sleeping a long latency is cut off after about ``shutdown_timeout``."""
    srv = FakeMonicaServer(process_images=False, latency=30.0, shutdown_timeout=0.2)
    await srv.start()
    pending = asyncio.create_task(upscale(session, srv, "http://127.0.0.1:1/a.png"))
    await wait_until(lambda: srv.stats.in_flight == 1)
    started = time.monotonic()
    await srv.stop()
    assert time.monotonic() - started < 2.0
    with pytest.raises(aiohttp.ClientError):
        await pending


def test_works_without_pillow() -> None:
    """Without Pillow the package imports and ``process_images=False`` serves; True says why not."""
    script = textwrap.dedent(
        """
        import asyncio, sys
        sys.modules["PIL"] = None  # makes `import PIL` fail as if not installed
        import aiohttp
        from monica_async.testing import FakeMonicaServer

        async def main():
            async with FakeMonicaServer(process_images=False) as server:
                body = {"image": "http://x.test/a", "scale": 2}
                auth = {"Authorization": "Bearer test-key"}
                async with aiohttp.ClientSession() as s:
                    async with s.post(server.upscale_url, json=body, headers=auth) as r:
                        print(r.status)
            try:
                await FakeMonicaServer().start()
            except ImportError as exc:
                print("ImportError:", exc)

        asyncio.run(main())
        """
    )
    done = subprocess.run(
        [sys.executable, "-W", "error", "-c", script],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    lines = done.stdout.splitlines()
    assert lines[0] == "200"
    assert "Pillow is needed" in lines[1]
    assert "process_images=False" in lines[1]


# -- contract: routes, auth, bodies ---------------------------------------------------

GOOD_IMAGE = "http://127.0.0.1:9/a.png"
BAD_BODIES: list[tuple[str, bytes, str | None, str, str]] = [
    # id, raw body, Content-Type, error code, words the message must contain
    (
        "extra-field",
        b'{"image": "%s", "scale": 2, "x": 1}',
        "application/json",
        "unknown_field",
        "unknown field 'x'",
    ),
    (
        "missing-image",
        b'{"scale": 2}',
        "application/json",
        "missing_field",
        "missing required field 'image'",
    ),
    (
        "missing-scale",
        b'{"image": "%s"}',
        "application/json",
        "missing_field",
        "missing required field 'scale'",
    ),
    ("missing-both", b"{}", "application/json", "missing_field", "'image' and 'scale'"),
    (
        "image-int",
        b'{"image": 5, "scale": 2}',
        "application/json",
        "invalid_image",
        "'image' must be a string (a URL), got integer",
    ),
    ("image-null", b'{"image": null, "scale": 2}', "application/json", "invalid_image", "got null"),
    (
        "image-list",
        b'{"image": ["a"], "scale": 2}',
        "application/json",
        "invalid_image",
        "got array",
    ),
    (
        "scale-3",
        b'{"image": "%s", "scale": 3}',
        "application/json",
        "invalid_scale",
        "'scale' must be one of [2], got 3",
    ),
    (
        "scale-0",
        b'{"image": "%s", "scale": 0}',
        "application/json",
        "invalid_scale",
        "one of [2], got 0",
    ),
    (
        "scale-float",
        b'{"image": "%s", "scale": 2.0}',
        "application/json",
        "invalid_scale",
        "'scale' must be an integer, got number: 2.0",
    ),
    (
        "scale-bool",
        b'{"image": "%s", "scale": true}',
        "application/json",
        "invalid_scale",
        "must be an integer, got boolean: true",
    ),
    (
        "scale-string",
        b'{"image": "%s", "scale": "2"}',
        "application/json",
        "invalid_scale",
        'must be an integer, got string: "2"',
    ),
    (
        "scale-null",
        b'{"image": "%s", "scale": null}',
        "application/json",
        "invalid_scale",
        "got null",
    ),
    (
        "body-array",
        b'[{"image": "%s", "scale": 2}]',
        "application/json",
        "invalid_body",
        "must be a JSON object, got array",
    ),
    (
        "body-string",
        b'"hello"',
        "application/json",
        "invalid_body",
        "must be a JSON object, got string",
    ),
    ("body-null", b"null", "application/json", "invalid_body", "got null"),
    ("not-json", b"image=a&scale=2", "application/json", "invalid_json", "not valid JSON"),
    (
        "truncated-json",
        b'{"image": "%s", "sca',
        "application/json",
        "invalid_json",
        "not valid JSON",
    ),
    (
        "nan",
        b'{"image": "%s", "scale": NaN}',
        "application/json",
        "invalid_json",
        "NaN is not allowed",
    ),
    (
        "not-utf8",
        b'{"image": "\xff\xfe", "scale": 2}',
        "application/json",
        "invalid_json",
        "not valid JSON",
    ),
    ("empty-body", b"", "application/json", "empty_body", "request body is empty"),
    (
        "text-plain",
        b'{"image": "%s", "scale": 2}',
        "text/plain",
        "invalid_content_type",
        "must be application/json, got 'text/plain'",
    ),
    (
        "form",
        b"image=a&scale=2",
        "application/x-www-form-urlencoded",
        "invalid_content_type",
        "must be application/json",
    ),
    (
        "no-content-type",
        b'{"image": "%s", "scale": 2}',
        None,
        "invalid_content_type",
        "missing Content-Type",
    ),
    (
        "image-not-url",
        b'{"image": "not a url", "scale": 2}',
        "application/json",
        "invalid_image_url",
        "must not contain spaces",
    ),
    (
        "image-relative",
        b'{"image": "/a.png", "scale": 2}',
        "application/json",
        "invalid_image_url",
        "absolute http(s) URL",
    ),
    (
        "image-ftp",
        b'{"image": "ftp://127.0.0.1/a.png", "scale": 2}',
        "application/json",
        "invalid_image_url",
        "absolute http(s) URL",
    ),
    (
        "image-empty",
        b'{"image": "", "scale": 2}',
        "application/json",
        "invalid_image_url",
        "non-empty",
    ),
]


@pytest.mark.parametrize(
    ("raw", "content_type", "code", "words"),
    [pytest.param(*case[1:], id=case[0]) for case in BAD_BODIES],
)
async def test_bad_body_gets_400_saying_why(
    server: FakeMonicaServer,
    session: aiohttp.ClientSession,
    raw: bytes,
    content_type: str | None,
    code: str,
    words: str,
) -> None:
    """Each contract violation in the body is a 400 whose error code and message name it."""
    data = raw.replace(b"%s", GOOD_IMAGE.encode())
    headers = dict(AUTH)
    if content_type is not None:
        headers["Content-Type"] = content_type
    # aiohttp adds application/octet-stream to bytes bodies unless told to skip it.
    async with session.post(
        server.upscale_url,
        data=data,
        headers=headers,
        skip_auto_headers=["Content-Type"],
    ) as response:
        assert response.status == 400
        assert response.content_type == "application/json"
        error = (await response.json())["error"]
    assert error["code"] == code
    assert words in error["message"]
    assert server.stats.by_status == {400: 1}


@pytest.mark.parametrize("path", ["/", "/v1/image/tool/upscale/", "/v1/image/tool/enhance"])
async def test_unknown_path_is_404_with_error_body(
    server: FakeMonicaServer, session: aiohttp.ClientSession, path: str
) -> None:
    """Paths other than the endpoint answer 404 with the JSON error body."""
    answer = await send(session, server.base_url + path, body={"image": GOOD_IMAGE, "scale": 2})
    assert answer.status == 404
    assert answer.error["code"] == "not_found"
    assert path in answer.error["message"]


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE", "PATCH"])
async def test_other_methods_are_405_with_error_body(
    server: FakeMonicaServer, session: aiohttp.ClientSession, method: str
) -> None:
    """Methods other than POST on the endpoint answer 405, ``Allow: POST`` and the error body."""
    answer = await send(session, server.upscale_url, method=method)
    assert answer.status == 405
    assert answer.headers["Allow"] == "POST"
    assert answer.error["code"] == "method_not_allowed"
    assert method in answer.error["message"]


@pytest.mark.parametrize(
    ("headers", "code"),
    [
        pytest.param({}, "missing_api_key", id="missing"),
        pytest.param({"Authorization": "Bearer wrong-key"}, "invalid_api_key", id="wrong-key"),
        pytest.param({"Authorization": f"Basic {KEY}"}, "invalid_authorization", id="basic"),
        pytest.param({"Authorization": "Bearer "}, "invalid_authorization", id="empty-token"),
        pytest.param({"Authorization": KEY}, "invalid_authorization", id="no-scheme"),
    ],
)
async def test_bad_auth_is_401(
    server: FakeMonicaServer, session: aiohttp.ClientSession, headers: dict[str, str], code: str
) -> None:
    """A missing or wrong bearer key is a 401 error body (never echoing the key), counted."""
    answer = await send(
        session, server.upscale_url, body={"image": GOOD_IMAGE, "scale": 2}, headers=headers
    )
    assert answer.status == 401
    assert answer.error["code"] == code
    assert answer.headers["WWW-Authenticate"] == "Bearer"
    assert "wrong-key" not in answer.body.decode()
    assert server.stats.auth_failures == 1
    assert server.stats.attempts_by_image == {}


async def test_bearer_scheme_is_case_insensitive(
    server: FakeMonicaServer, session: aiohttp.ClientSession
) -> None:
    """``bearer <key>`` is accepted like ``Bearer <key>``."""
    server.process_images = False
    answer = await send(
        session,
        server.upscale_url,
        body={"image": GOOD_IMAGE, "scale": 2},
        headers={"Authorization": f"bearer {KEY}"},
    )
    assert answer.status == 200


async def test_api_key_none_accepts_any_key(session: aiohttp.ClientSession) -> None:
    """With ``api_key=None`` any non-empty bearer key is accepted."""
    async with FakeMonicaServer(api_key=None, process_images=False) as srv:
        for key in ("a", "b"):
            answer = await send(
                session,
                srv.upscale_url,
                body={"image": GOOD_IMAGE, "scale": 2},
                headers={"Authorization": f"Bearer {key}"},
            )
            assert answer.status == 200


async def test_every_response_has_a_request_id(
    server: FakeMonicaServer, session: aiohttp.ClientSession
) -> None:
    """Answers of every kind carry a distinct ``x-request-id``."""
    picture = server.sample_image(8, 8)
    answers = [
        await upscale(session, server, picture),
        await send(session, server.upscale_url, body={"image": picture, "scale": 3}),
        await send(session, server.upscale_url, body={"image": picture}, headers={}),
        await send(session, server.base_url + "/nope", method="GET"),
        await send(session, server.upscale_url, method="GET"),
        await send(session, picture, method="GET"),
        await send(session, server.base_url + STATS_PATH, method="GET"),
    ]
    assert [a.status for a in answers] == [200, 400, 401, 404, 405, 200, 200]
    ids = [a.headers["x-request-id"] for a in answers]
    assert len(set(ids)) == len(ids)


# -- real pictures ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("width", "height", "fmt"),
    [
        (1, 1, "PNG"),
        (37, 5, "PNG"),
        (640, 480, "PNG"),
        (300, 200, "JPEG"),
        (123, 321, "WEBP"),
    ],
)
async def test_round_trip_doubles_the_picture(
    server: FakeMonicaServer, session: aiohttp.ClientSession, width: int, height: int, fmt: str
) -> None:
    """The answer names a PNG on this server exactly twice the input's size."""
    answer = await upscale(session, server, server.sample_image(width, height, fmt))
    assert answer.status == 200
    assert answer.headers["Content-Type"].startswith("application/json")
    result_url = answer.json()["image"]
    assert set(answer.json()) == {"image"}
    assert result_url.startswith(server.base_url + "/results/")
    picture = await download_picture(session, result_url)
    assert picture.size == (width * 2, height * 2)


async def test_resize_is_lanczos(server: FakeMonicaServer, session: aiohttp.ClientSession) -> None:
    """The result equals Pillow's own LANCZOS resize of the input, pixel for pixel."""
    source = make_sample_image(50, 30, "PNG", seed=3)
    answer = await upscale(session, server, server.add_image(source))
    picture = await download_picture(session, answer.json()["image"])
    expected = Image.open(io.BytesIO(source)).resize((100, 60), Image.Resampling.LANCZOS)
    assert picture.mode == expected.mode
    assert picture.tobytes() == expected.tobytes()


@pytest.mark.parametrize("mode", ["RGBA", "LA", "L", "P", "1", "CMYK", "I;16", "I", "F"])
async def test_picture_modes_are_upscaled(
    server: FakeMonicaServer, session: aiohttp.ClientSession, mode: str
) -> None:
    """Palette, grey, bilevel, alpha, 16/32-bit grey, float and CMYK inputs come back as 2x PNGs."""
    picture = Image.open(io.BytesIO(make_sample_image(20, 10))).convert("RGB")
    converted = (
        picture.convert("L").convert(mode) if mode in ("I;16", "I", "F") else picture.convert(mode)
    )
    buffer = io.BytesIO()
    # PNG cannot hold CMYK, I or F: JPEG and TIFF can.
    converted.save(buffer, format={"CMYK": "JPEG", "I": "TIFF", "F": "TIFF"}.get(mode, "PNG"))
    answer = await upscale(session, server, server.add_image(buffer.getvalue()))
    assert answer.status == 200, answer.body
    result = await download_picture(session, answer.json()["image"])
    assert result.size == (40, 20)


async def test_largest_input_gives_largest_output(
    server: FakeMonicaServer, session: aiohttp.ClientSession
) -> None:
    """A 2048x2048 input (the documented maximum) is upscaled to 4096x4096."""
    answer = await upscale(session, server, server.sample_image(2048, 2048))
    assert answer.status == 200
    picture = await download_picture(session, answer.json()["image"])
    assert picture.size == (4096, 4096)


@pytest.mark.parametrize(("width", "height"), [(2049, 8), (8, 2049)])
async def test_input_over_2048_is_400_with_sizes(
    server: FakeMonicaServer, session: aiohttp.ClientSession, width: int, height: int
) -> None:
    """An input wider or taller than 2048 is a 400 naming its size and the limit."""
    answer = await upscale(session, server, server.sample_image(width, height))
    assert answer.status == 400
    assert answer.error["code"] == "image_too_large"
    assert f"{width}x{height}" in answer.error["message"]
    assert "2048x2048" in answer.error["message"]


async def test_output_over_limit_is_400_with_sizes(
    server: FakeMonicaServer, session: aiohttp.ClientSession
) -> None:
    """An output over ``max_output_size`` is a 400 naming both sizes (the limit is settable)."""
    server.max_output_size = (100, 100)
    answer = await upscale(session, server, server.sample_image(60, 40))
    assert answer.status == 400
    assert answer.error["code"] == "image_too_large"
    assert "120x80" in answer.error["message"]
    assert "100x100" in answer.error["message"]


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims *width* x *height* and whose pixels are missing."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        body = kind + payload
        return struct.pack(">I", len(payload)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b"")


@pytest.mark.parametrize(("width", "height"), [(3000, 3000), (20000, 20000)])
async def test_huge_claimed_size_is_400_before_decoding(
    server: FakeMonicaServer, session: aiohttp.ClientSession, width: int, height: int
) -> None:
    """A header claiming a huge size (even a decompression bomb) is a 400 image_too_large."""
    answer = await upscale(session, server, server.add_image(png_header_only(width, height)))
    assert answer.status == 400
    assert answer.error["code"] == "image_too_large"
    assert "2048x2048" in answer.error["message"]


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"this is not a picture", id="text"),
        pytest.param(b"", id="empty"),
        pytest.param(make_sample_image(40, 40, "PNG")[:200], id="truncated-png"),
        pytest.param(b"\x89PNG\r\n\x1a\n" + b"\x00" * 64, id="png-magic-only"),
        pytest.param(make_sample_image(40, 40, "JPEG")[:-300], id="truncated-jpeg"),
    ],
)
async def test_unreadable_picture_is_400(
    server: FakeMonicaServer, session: aiohttp.ClientSession, data: bytes
) -> None:
    """Bytes Pillow cannot decode are a 400 ``invalid_image``, never a 500."""
    answer = await upscale(session, server, server.add_image(data, name="broken.bin"))
    assert answer.status == 400
    assert answer.error["code"] == "invalid_image"


async def test_image_url_that_404s_is_400(
    server: FakeMonicaServer, session: aiohttp.ClientSession
) -> None:
    """An image URL answering 404 is a 400 that says so."""
    answer = await upscale(session, server, server.base_url + "/images/missing.png")
    assert answer.status == 400
    assert answer.error["code"] == "image_download_failed"
    assert "HTTP 404" in answer.error["message"]


async def test_image_on_a_closed_loopback_port_is_400(
    server: FakeMonicaServer, session: aiohttp.ClientSession
) -> None:
    """A loopback image URL nobody listens on is a 400 ``image_download_failed``."""
    answer = await upscale(session, server, "http://127.0.0.1:9/a.png")
    assert answer.status == 400
    assert answer.error["code"] == "image_download_failed"


async def test_localhost_image_urls_are_fetched(
    server: FakeMonicaServer, session: aiohttp.ClientSession
) -> None:
    """``localhost`` counts as loopback and resolves to this machine."""
    url = server.sample_image(10, 10).replace("127.0.0.1", "localhost")
    answer = await upscale(session, server, url)
    assert answer.status == 200


@pytest.fixture
def connections() -> Iterator[list[str]]:
    """Hosts every aiohttp connector is asked to connect to during the test."""
    hosts: list[str] = []
    original = aiohttp.BaseConnector.connect

    async def spy(self: aiohttp.BaseConnector, req: Any, *args: Any, **kwargs: Any) -> Any:
        hosts.append(req.url.host)
        return await original(self, req, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(aiohttp.BaseConnector, "connect", spy)
        yield hosts


@pytest.mark.parametrize(
    "image",
    [
        "http://example.invalid/a.png",
        "http://10.0.0.1/a.png",
        "https://10.0.0.1:8443/a.png",
        "http://[2001:db8::1]/a.png",
        "http://127.0.0.1.example.invalid/a.png",
        "http://0.0.0.0/a.png",
        "http://[::ffff:10.0.0.1]/a.png",
    ],
)
async def test_non_loopback_image_is_refused_without_connecting(
    server: FakeMonicaServer,
    session: aiohttp.ClientSession,
    connections: list[str],
    image: str,
) -> None:
    """An image host off this machine is a 400 at once, with no connection attempted."""
    started = time.monotonic()
    answer = await upscale(session, server, image)
    assert time.monotonic() - started < 1.0
    assert answer.status == 400
    assert answer.error["code"] == "image_host_not_allowed"
    assert "loopback" in answer.error["message"]
    assert connections == ["127.0.0.1"]  # the test's own request, nothing else


async def test_redirects_are_not_followed(
    server: FakeMonicaServer, session: aiohttp.ClientSession, connections: list[str]
) -> None:
    """A loopback image URL redirecting elsewhere is a 400; the redirect is not followed."""

    async def redirect(request: web.Request) -> web.Response:
        raise web.HTTPFound("http://10.0.0.1/a.png")

    app = web.Application()
    app.router.add_get("/a.png", redirect)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        port = runner.addresses[0][1]
        answer = await upscale(session, server, f"http://127.0.0.1:{port}/a.png")
    finally:
        await runner.cleanup()
    assert answer.status == 400
    assert "HTTP 302" in answer.error["message"]
    assert "10.0.0.1" not in connections


async def test_no_images_mode_answers_a_stable_derived_url(session: aiohttp.ClientSession) -> None:
    """``process_images=False`` fetches nothing and answers ``/results/<sha1>.png``, a PNG."""
    image = "https://example.invalid/photo.png"
    async with FakeMonicaServer(process_images=False) as srv:
        first = await upscale(session, srv, image)
        second = await upscale(session, srv, image)
        digest = hashlib.sha1(image.encode()).hexdigest()
        assert first.status == second.status == 200
        assert first.json() == second.json() == {"image": f"{srv.base_url}/results/{digest}.png"}
        picture = await download_picture(session, first.json()["image"])
    assert picture.size == (1, 1)


def test_sample_pictures_have_the_requested_size_and_format() -> None:
    """make_sample_image gives the asked format and size, the same bytes for the same args."""
    for fmt in ("PNG", "JPEG", "WEBP", "jpg"):
        data = make_sample_image(31, 17, fmt)
        picture = Image.open(io.BytesIO(data))
        assert picture.size == (31, 17)
        assert picture.format == ("JPEG" if fmt == "jpg" else fmt)
        assert data == make_sample_image(31, 17, fmt)
    with pytest.raises(ValueError, match="format must be one of"):
        make_sample_image(10, 10, "BMP")
    with pytest.raises(ValueError, match="at least 1"):
        make_sample_image(0, 10)


async def test_add_image_serves_the_bytes(
    server: FakeMonicaServer, session: aiohttp.ClientSession
) -> None:
    """add_image serves the exact bytes with a sniffed type; equal bytes get equal URLs."""
    data = make_sample_image(5, 5, "WEBP")
    url = server.add_image(data)
    assert url == server.add_image(data)
    assert url != server.add_image(data, name="other.webp")
    answer = await send(session, url, method="GET", headers={})
    assert answer.body == data
    assert answer.headers["Content-Type"] == "image/webp"
    with pytest.raises(ValueError, match="name must be"):
        server.add_image(data, name="../x")


def test_add_image_needs_a_started_server() -> None:
    """add_image before start() says to start the server first."""
    with pytest.raises(RuntimeError, match="start"):
        FakeMonicaServer().add_image(b"x")


# -- knobs --------------------------------------------------------------------------


def test_knobs_are_validated_on_assignment() -> None:
    """Bad knob values are refused at construction and at assignment, naming the knob."""
    srv = FakeMonicaServer(process_images=False)
    bad: list[tuple[str, Any]] = [
        ("latency", -1.0),
        ("latency", (2.0, 1.0)),
        ("latency", "fast"),
        ("rate_limit", (0, 1.0)),
        ("rate_limit", (5, 0)),
        ("max_concurrency", 0),
        ("fault_rate", 1.5),
        ("fault_weights", {}),
        ("fault_weights", {Fault.DROP: -1}),
        ("retry_after", -1),
        ("max_input_size", (0, 10)),
    ]
    for name, value in bad:
        with pytest.raises(ValueError, match=name):
            setattr(srv, name, value)
        with pytest.raises(ValueError, match=name):
            FakeMonicaServer(**{name: value})
    with pytest.raises(attrs.exceptions.FrozenAttributeError):
        srv.port = 1


async def test_fixed_latency_delays_answers_but_not_arrival_times(
    session: aiohttp.ClientSession,
) -> None:
    """Latency delays the answer; ``accepted_times`` holds the arrival, before the sleep."""
    async with FakeMonicaServer(process_images=False, latency=0.3) as srv:
        sent = time.monotonic()
        answer = await upscale(session, srv, GOOD_IMAGE)
        answered = time.monotonic()
        stats = srv.stats
    assert answer.status == 200
    assert answered - sent >= 0.3
    [arrival] = stats.accepted_times
    assert sent <= arrival < sent + 0.2
    assert stats.request_times == [arrival]


async def test_seeded_latency_is_repeatable(session: aiohttp.ClientSession) -> None:
    """Two servers with the same seed draw the same latencies; a range stays in bounds."""
    runs: list[list[float]] = []
    for _ in range(2):
        drawn: list[float] = []

        def latency(rng: Any, drawn: list[float] = drawn) -> float:
            drawn.append(rng.uniform(0.0, 0.01))
            return drawn[-1]

        async with FakeMonicaServer(process_images=False, latency=latency, seed=9) as srv:
            for _ in range(5):
                await upscale(session, srv, GOOD_IMAGE)
        runs.append(drawn)
    assert runs[0] == runs[1]
    assert len(runs[0]) == 5

    async with FakeMonicaServer(process_images=False, latency=(0.05, 0.1), seed=9) as srv:
        sent = time.monotonic()
        await upscale(session, srv, GOOD_IMAGE)
        assert time.monotonic() - sent >= 0.05


async def test_rate_limit_answers_429_with_retry_after(session: aiohttp.ClientSession) -> None:
    """Over the per-key limit: 429, ``Retry-After`` in whole seconds, an error body."""
    async with FakeMonicaServer(process_images=False, rate_limit=(2, 5.0)) as srv:
        statuses = [(await upscale(session, srv, GOOD_IMAGE)).status for _ in range(2)]
        limited = await upscale(session, srv, GOOD_IMAGE)
        stats = srv.stats
    assert statuses == [200, 200]
    assert limited.status == 429
    assert limited.headers["Retry-After"] in {"4", "5"}
    assert limited.error["code"] == "rate_limit_exceeded"
    assert "2 requests per 5 s" in limited.error["message"]
    assert stats.rate_limited == 1
    assert stats.accepted == 2


async def test_rate_limit_is_a_sliding_window(session: aiohttp.ClientSession) -> None:
    """Slots free one by one as each admitted request leaves the window; 429s take none."""
    async with FakeMonicaServer(process_images=False, rate_limit=(3, 1.0)) as srv:
        start = time.monotonic()
        assert [(await upscale(session, srv, GOOD_IMAGE)).status for _ in range(2)] == [200, 200]
        await asyncio.sleep(0.5)
        assert (await upscale(session, srv, GOOD_IMAGE)).status == 200
        for _ in range(3):  # refused ones must not push the window further
            refused = await upscale(session, srv, GOOD_IMAGE)
            assert refused.status == 429
            assert refused.headers["Retry-After"] == "1"  # never 0, even when nearly free
        await asyncio.sleep(max(0.0, start + 1.1 - time.monotonic()))
        # The first two left the window, the third (t=0.5 s) is still in it.
        statuses = [(await upscale(session, srv, GOOD_IMAGE)).status for _ in range(3)]
        stats = srv.stats
    assert statuses == [200, 200, 429]
    assert stats.accepted == 5
    assert stats.rate_limited == 4
    assert stats.by_status == {200: 5, 429: 4}


async def test_rate_limit_is_per_key(session: aiohttp.ClientSession) -> None:
    """Each API key has its own window."""
    async with FakeMonicaServer(api_key=None, process_images=False, rate_limit=(1, 60.0)) as srv:
        answers = [
            await send(
                session,
                srv.upscale_url,
                body={"image": GOOD_IMAGE, "scale": 2},
                headers={"Authorization": f"Bearer {key}"},
            )
            for key in ("a", "b", "a")
        ]
        srv.clear_rate_limits()
        again = await send(
            session,
            srv.upscale_url,
            body={"image": GOOD_IMAGE, "scale": 2},
            headers={"Authorization": "Bearer a"},
        )
    assert [a.status for a in answers] == [200, 200, 429]
    assert again.status == 200


async def test_max_concurrency_answers_429_beyond_the_cap(session: aiohttp.ClientSession) -> None:
    """With ``max_concurrency=2`` and slow answers, the rest of a burst gets 429s."""
    async with FakeMonicaServer(process_images=False, max_concurrency=2, latency=0.5) as srv:
        answers = await asyncio.gather(*(upscale(session, srv, GOOD_IMAGE) for _ in range(6)))
        stats = srv.stats
    assert sorted(a.status for a in answers) == [200, 200, 429, 429, 429, 429]
    refused = [a for a in answers if a.status == 429]
    assert all(a.error["code"] == "too_many_concurrent_requests" for a in refused)
    assert all(a.headers["Retry-After"] == "1" for a in refused)
    assert stats.concurrency_limited == 4


@pytest.mark.parametrize(
    ("fault", "status", "check"),
    [
        (Fault.HTTP_429, 429, "retry-after-seconds"),
        (Fault.HTTP_429_DATE, 429, "retry-after-date"),
        (Fault.HTTP_429_NO_RETRY_AFTER, 429, "no-retry-after"),
        (Fault.HTTP_500, 500, "json-error"),
        (Fault.HTTP_502, 502, "html"),
        (Fault.HTTP_503, 503, "json-error"),
        (Fault.HTTP_504, 504, "html"),
        (Fault.MALFORMED_NOT_JSON, 200, "not-json"),
        (Fault.MALFORMED_NO_IMAGE, 200, "json-without-image"),
    ],
)
async def test_answering_faults(
    server: FakeMonicaServer,
    session: aiohttp.ClientSession,
    fault: Fault,
    status: int,
    check: str,
) -> None:
    """Each answering fault kind has its status, headers and body, and is counted."""
    server.process_images = False
    server.queue_faults([fault])
    answer = await upscale(session, server, GOOD_IMAGE)
    assert answer.status == status
    retry_after = answer.headers.get("Retry-After")
    if check == "retry-after-seconds":
        assert retry_after == "1"
    elif check == "retry-after-date":
        assert retry_after is not None
        when = email.utils.parsedate_to_datetime(retry_after)
        assert 0 < when.timestamp() - time.time() <= 3
    elif check == "no-retry-after":
        assert retry_after is None
    elif check == "json-error":
        assert answer.error["code"]
    elif check == "html":
        assert answer.headers["Content-Type"].startswith("text/html")
    elif check == "not-json":
        with pytest.raises(ValueError):  # noqa: PT011 - any JSON decoding error
            answer.json()
    else:
        assert "image" not in answer.json()
    if check.startswith("retry-after") or check == "json-error":
        assert answer.error["code"]
    assert server.stats.faults_injected == {fault: 1}
    assert (await upscale(session, server, GOOD_IMAGE)).status == 200


async def test_retry_after_is_settable(
    server: FakeMonicaServer, session: aiohttp.ClientSession
) -> None:
    """``retry_after`` sets the seconds injected 429s announce, rounded up to whole seconds."""
    server.process_images = False
    server.retry_after = 6.2
    server.queue_faults([Fault.HTTP_429])
    assert (await upscale(session, server, GOOD_IMAGE)).headers["Retry-After"] == "7"


async def test_drop_fault_closes_the_connection(
    server: FakeMonicaServer, session: aiohttp.ClientSession
) -> None:
    """``Fault.DROP`` closes the connection without an answer; it is counted as dropped."""
    server.process_images = False
    server.queue_faults([Fault.DROP])
    with pytest.raises(aiohttp.ServerDisconnectedError):
        await upscale(session, server, GOOD_IMAGE)
    stats = server.stats
    assert stats.dropped == 1
    assert stats.by_status == {}
    assert stats.total == 1
    assert (await upscale(session, server, GOOD_IMAGE)).status == 200


async def test_hang_fault_outlasts_the_client_timeout(
    server: FakeMonicaServer, session: aiohttp.ClientSession
) -> None:
    """``Fault.HANG`` never answers; when the client gives up, the handler is freed."""
    server.process_images = False
    server.queue_faults([Fault.HANG])
    with pytest.raises(TimeoutError):
        await send(session, server.upscale_url, body={"image": GOOD_IMAGE, "scale": 2}, timeout=0.3)
    await wait_until(lambda: server.stats.in_flight == 0)
    stats = server.stats
    assert stats.hung == 1
    assert stats.disconnected == 1
    assert stats.by_status == {}


async def test_scripted_faults_apply_to_their_image_in_order(
    server: FakeMonicaServer, session: aiohttp.ClientSession
) -> None:
    """``script_faults(url, [503, 503])``: that image fails twice then succeeds; others never."""
    flaky, steady = server.sample_image(8, 8, name="flaky.png"), server.sample_image(8, 8)
    server.script_faults(flaky, [Fault.HTTP_503, Fault.HTTP_503])
    assert (await upscale(session, server, steady)).status == 200
    statuses = [(await upscale(session, server, flaky)).status for _ in range(3)]
    assert statuses == [503, 503, 200]
    assert server.stats.attempts_by_image == {flaky: 3, steady: 1}


async def test_none_in_a_script_answers_normally(
    server: FakeMonicaServer, session: aiohttp.ClientSession
) -> None:
    """A ``None`` step in a script lets that attempt through."""
    server.process_images = False
    server.script_faults(GOOD_IMAGE, [Fault.HTTP_500, None, Fault.HTTP_502])
    statuses = [(await upscale(session, server, GOOD_IMAGE)).status for _ in range(4)]
    assert statuses == [500, 200, 502, 200]


async def test_queued_faults_apply_to_the_next_requests(
    server: FakeMonicaServer, session: aiohttp.ClientSession
) -> None:
    """``queue_faults`` hits the next admitted requests in order, whatever their image."""
    server.process_images = False
    server.queue_faults([Fault.HTTP_500, Fault.HTTP_429])
    images = [f"http://127.0.0.1:9/{i}.png" for i in range(3)]
    statuses = [(await upscale(session, server, image)).status for image in images]
    assert statuses == [500, 429, 200]
    server.queue_faults([Fault.HTTP_500])
    server.clear_faults()
    assert (await upscale(session, server, GOOD_IMAGE)).status == 200


async def outcomes(session: aiohttp.ClientSession, srv: FakeMonicaServer, n: int) -> list[str]:
    results = []
    for _ in range(n):
        try:
            results.append(str((await upscale(session, srv, GOOD_IMAGE)).status))
        except aiohttp.ServerDisconnectedError:
            results.append("dropped")
    return results


async def test_fault_rate_is_seeded_and_weighted(session: aiohttp.ClientSession) -> None:
    """``fault_rate`` draws faults with the given weights; the same seed repeats the run."""
    runs = []
    for _ in range(2):
        async with FakeMonicaServer(process_images=False, fault_rate=0.5, seed=42) as srv:
            runs.append(await outcomes(session, srv, 60))
    assert runs[0] == runs[1]
    assert 10 <= sum(o != "200" for o in runs[0]) <= 50
    assert len(set(runs[0])) > 3  # several kinds drawn

    weights = {Fault.HTTP_500: 1.0, Fault.HTTP_503: 3.0}
    async with FakeMonicaServer(
        process_images=False, fault_rate=1.0, fault_weights=weights, seed=1
    ) as srv:
        drawn = await outcomes(session, srv, 40)
        injected = srv.stats.faults_injected
    assert set(drawn) == {"500", "503"}
    assert injected[Fault.HTTP_503] > injected[Fault.HTTP_500]


async def test_knobs_change_between_phases(
    server: FakeMonicaServer, session: aiohttp.ClientSession
) -> None:
    """Knobs are plain attributes: setting them changes the next requests' behaviour."""
    server.process_images = False
    server.fault_rate = 1.0
    server.fault_weights = {Fault.HTTP_503: 1.0}
    assert (await upscale(session, server, GOOD_IMAGE)).status == 503
    server.fault_rate = 0.0
    server.rate_limit = (1, 60.0)
    assert (await upscale(session, server, GOOD_IMAGE)).status == 200
    assert (await upscale(session, server, GOOD_IMAGE)).status == 429
    server.rate_limit = None
    assert (await upscale(session, server, GOOD_IMAGE)).status == 200


# -- stats --------------------------------------------------------------------------


async def test_stats_under_200_concurrent_requests() -> None:
    """200 concurrent requests: totals, statuses, peak concurrency and times add up."""
    async with (
        FakeMonicaServer(process_images=False, latency=0.5) as srv,
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as client,
    ):
        images = [f"http://127.0.0.1:9/{i}.png" for i in range(100)]
        answers = await asyncio.gather(*(upscale(client, srv, img) for img in images * 2))
        stats = srv.stats
    assert {a.status for a in answers} == {200}
    assert stats.total == 200
    assert stats.by_status == {200: 200}
    assert stats.accepted == 200
    assert stats.in_flight == 0
    assert 100 < stats.peak_concurrency <= 200
    assert stats.attempts_by_image == dict.fromkeys(images, 2)
    assert stats.request_times == sorted(stats.request_times)
    assert sorted(stats.accepted_times) == stats.request_times


async def test_stats_under_concurrent_real_upscales(
    server: FakeMonicaServer, session: aiohttp.ClientSession
) -> None:
    """50 concurrent real upscales of 10 pictures: each attempt counted for its image."""
    images = [server.sample_image(32 + i, 24, name=f"p{i}.png") for i in range(10)]
    answers = await asyncio.gather(*(upscale(session, server, img) for img in images * 5))
    assert {a.status for a in answers} == {200}
    stats = server.stats
    assert stats.total == 50
    assert stats.attempts_by_image == dict.fromkeys(images, 5)
    assert stats.peak_concurrency > 1
    assert len({a.json()["image"] for a in answers}) == 50


async def test_stats_are_a_snapshot_and_reset(
    server: FakeMonicaServer, session: aiohttp.ClientSession
) -> None:
    """``stats`` is a copy; ``reset_stats()`` starts from zero; downloads are not counted."""
    url = server.sample_image(4, 4)
    before = server.stats
    answer = await upscale(session, server, url)
    await download_picture(session, answer.json()["image"])
    assert before.total == 0
    assert server.stats.total == 1
    server.reset_stats()
    assert server.stats == FakeServerStats()


async def test_stats_and_reset_over_http(
    server: FakeMonicaServer, session: aiohttp.ClientSession
) -> None:
    """``GET /_fake/stats`` and ``POST /_fake/reset`` work without auth and are not counted."""
    server.process_images = False
    await upscale(session, server, GOOD_IMAGE)
    await send(session, server.upscale_url, body={"image": GOOD_IMAGE}, headers={})
    over_http = await send(session, server.base_url + STATS_PATH, method="GET", headers={})
    assert over_http.status == 200
    assert over_http.json()["by_status"] == {"200": 1, "401": 1}
    assert FakeServerStats.from_json(over_http.json()) == server.stats
    reset = await send(session, server.base_url + RESET_PATH, method="POST", headers={})
    assert reset.status == 200
    assert server.stats == FakeServerStats()


def test_stats_json_round_trip() -> None:
    """to_json gives JSON-ready data and from_json rebuilds equal stats."""
    stats = FakeServerStats(
        total=3,
        by_status={200: 2, 503: 1},
        attempts_by_image={"http://127.0.0.1/a.png": 3},
        accepted_times=[1.0, 2.0],
        request_times=[1.0, 1.5, 2.0],
        faults_injected={Fault.HTTP_503: 1},
    )
    data = json.loads(json.dumps(stats.to_json()))
    assert FakeServerStats.from_json(data) == stats


# -- other processes ------------------------------------------------------------------


def test_serve_fake_main_rejects_bad_arguments(capsys: pytest.CaptureFixture[str]) -> None:
    """Bad command-line values exit with status 2 and a message naming the option."""
    with pytest.raises(SystemExit) as exit_info:
        serve_fake_main(["--rate-limit", "lots"])
    assert exit_info.value.code == 2
    assert "--rate-limit: must look like 60/min" in capsys.readouterr().err


@pytest.mark.slow
async def test_module_runs_as_a_process(session: aiohttp.ClientSession) -> None:
    """``python -m monica_async.testing`` prints READY, serves, and exits 0 on SIGINT."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "monica_async.testing",
        "--port",
        "0",
        "--no-images",
        "--rate-limit",
        "100/1",
        "--seed",
        "1",
        cwd=REPO,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        line = (await asyncio.wait_for(process.stdout.readline(), 20)).decode()
        assert line.startswith("READY http://127.0.0.1:")
        base_url = line.split()[1]
        answer = await send(session, base_url + API_PATH, body={"image": GOOD_IMAGE, "scale": 2})
        assert answer.status == 200
        stats = await send(session, base_url + STATS_PATH, method="GET", headers={})
        assert stats.json()["total"] == 1
        process.send_signal(signal.SIGINT)
        out, err = await asyncio.wait_for(process.communicate(), 10)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode == 0, err.decode()
    assert out == b""


WITHOUT_PYTEST_ASYNCIO = """
import pytest


@pytest.mark.parametrize("name", ["fake_monica", "fake_monica_factory"])
def test_uses_a_fixture(request, name):
    request.getfixturevalue(name)
"""


@pytest.mark.slow
def test_plugin_fixtures_without_pytest_asyncio_name_it(tmp_path: Path) -> None:
    """Without pytest-asyncio, asking for a fixture fails with a message that names it."""
    (tmp_path / "test_no_asyncio.py").write_text(WITHOUT_PYTEST_ASYNCIO)
    script = (
        "import sys; sys.modules['pytest_asyncio'] = None\n"
        "import pytest\n"
        "sys.exit(pytest.main(['-q', '-p', 'monica_async.testing._plugin', "
        "'-p', 'no:cacheprovider', '-W', 'error', 'test_no_asyncio.py']))"
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(REPO), "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert 1 == done.returncode, done.stdout + done.stderr
    assert "2 failed" in done.stdout
    for name in ("fake_monica", "fake_monica_factory"):
        expected = f"the {name} fixture of monica_async.testing is async and needs pytest-asyncio"
        assert expected in done.stdout


def test_public_names_are_sorted_and_documented() -> None:
    """``monica_async.testing.__all__`` is sorted and its classes and functions have docstrings."""
    import monica_async.testing as testing

    # ruff's order (RUF022): CONSTANTS, then Classes, then functions, each alphabetical.
    def order(name: str) -> tuple[bool, bool, str]:
        return (not name.isupper(), not name[0].isupper(), name)

    assert testing.__all__ == sorted(testing.__all__, key=order)
    for name in testing.__all__:
        value = getattr(testing, name)
        if isinstance(value, type) or inspect.isfunction(value):
            assert value.__doc__, name


PLUGIN_TEST = """
import aiohttp
import pytest


@pytest.mark.asyncio
async def test_fake_monica(fake_monica):
    url = fake_monica.sample_image(4, 4)
    async with aiohttp.ClientSession() as s:
        async with s.post(fake_monica.upscale_url, json={"image": url, "scale": 2},
                          headers={"Authorization": "Bearer test-key"}) as r:
            assert r.status == 200


@pytest.mark.asyncio
async def test_factory(fake_monica_factory):
    a = await fake_monica_factory(process_images=False, api_key="k")
    b = await fake_monica_factory(process_images=False)
    assert a.base_url != b.base_url
"""


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["auto", "strict"])
def test_pytest_plugin_fixtures(tmp_path: Path, mode: str) -> None:
    """The plugin's ``fake_monica`` and ``fake_monica_factory`` work in auto and strict mode."""
    (tmp_path / "test_plugin_use.py").write_text(PLUGIN_TEST)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "pytest_asyncio.plugin",
            "-p",
            "monica_async.testing._plugin",
            "-p",
            "no:cacheprovider",
            "-W",
            "error",
            "-o",
            f"asyncio_mode={mode}",
            "-o",
            "asyncio_default_fixture_loop_scope=function",
            str(tmp_path),
        ],
        cwd=tmp_path,
        # No autoloading: the plugin is loaded explicitly whether or not the package
        # (and so its pytest11 entry point) is installed, and start-up stays fast.
        env={**os.environ, "PYTHONPATH": str(REPO), "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "2 passed" in done.stdout
