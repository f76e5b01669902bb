"""download(): atomic, checked, capped, unauthenticated and retried, over real sockets."""

from __future__ import annotations

import asyncio
import errno
import io
import logging
import os
import re
import socket
import stat
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from aiohttp import web
from aioresponses import aioresponses

from monica_async import (
    APIConnectionError,
    APIResponseValidationError,
    APITimeoutError,
    InvalidRequestError,
    MonicaClient,
    NotFoundError,
    PermissionDeniedError,
    RetryPolicy,
    UpscaleResult,
)
from monica_async._download import image_is_complete, remove_stale_temporaries

#: Enough of a PNG for the checks: its signature, then (after filler) its end chunk.
PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 8 + b"\x00\x00\x00\x00IEND\xaeB`\x82"
Start = Callable[[Callable[[web.Request], Awaitable[web.StreamResponse]]], Awaitable[str]]


@pytest.fixture
async def client(api_key: str, no_retry_sleep: None) -> AsyncIterator[MonicaClient]:
    """A client that retries downloads twice at most, without sleeping."""
    async with MonicaClient(base_url="https://api.test", retry=RetryPolicy(max_attempts=2)) as api:
        yield api


def files_in(folder: Path) -> list[str]:
    """Names in *folder*, hidden temporary files included."""
    return sorted(path.name for path in folder.iterdir())


def image_handler(
    body: bytes = PNG, content_type: str = "image/png", seen: list[web.Request] | None = None
) -> Callable[[web.Request], Awaitable[web.Response]]:
    """A handler that answers every request with *body*."""

    async def handler(request: web.Request) -> web.Response:
        if seen is not None:
            seen.append(request)
        return web.Response(body=body, content_type=content_type)

    return handler


async def no_type_handler(request: web.Request) -> web.StreamResponse:
    """Answer with bytes and no Content-Type at all (aiohttp's server would add one)."""
    assert request.transport is not None
    request.transport.write(
        b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\nConnection: close\r\n\r\nplain bytes"
    )
    request.transport.close()
    return web.Response()


async def dropping_handler(request: web.Request) -> web.StreamResponse:
    """Promise 100 kB, send 1 kB, then close the connection."""
    response = web.StreamResponse(headers={"Content-Type": "image/png", "Content-Length": "100000"})
    await response.prepare(request)
    await response.write(PNG[:1000])
    assert request.transport is not None
    request.transport.close()
    return response


# -- success -------------------------------------------------------------------------


@pytest.mark.parametrize("as_result", [True, False])
@pytest.mark.parametrize("as_str", [True, False])
async def test_download_writes_the_image_and_returns_the_path(
    loopback: Start, client: MonicaClient, tmp_path: Path, as_result: bool, as_str: bool
) -> None:
    """The image lands at the path (folders created), which is returned as a Path."""
    url = await loopback(image_handler()) + "/out/cat.png"
    target = tmp_path / "nested" / "cat@2x.png"
    source: UpscaleResult | str = (
        UpscaleResult(url=url, source="https://images.test/cat.png", scale=2) if as_result else url
    )
    path = await client.download(source, str(target) if as_str else target)
    assert (target, PNG, ["cat@2x.png"]) == (path, target.read_bytes(), files_in(target.parent))


async def test_download_sends_no_authorization(
    loopback: Start, client: MonicaClient, tmp_path: Path, api_key: str
) -> None:
    """The image host never sees the API key; it sees the library's User-Agent."""
    seen: list[web.Request] = []
    url = await loopback(image_handler(seen=seen)) + "/cat.png"
    await client.download(url, tmp_path / "cat.png")
    [request] = seen
    assert "Authorization" not in request.headers
    assert api_key not in str(dict(request.headers))
    assert request.headers["User-Agent"].startswith("monica-async/")


@pytest.mark.parametrize(
    "body",
    [
        PNG,
        b"\xff\xd8\xff\xe0" + bytes(64),
        b"GIF89a" + bytes(64),
        b"GIF87a" + bytes(64),
        b"RIFF\x00\x10\x00\x00WEBPVP8 " + bytes(64),
        b"BM" + bytes(64),
        b"II*\x00" + bytes(64),
        b"MM\x00*" + bytes(64),
    ],
)
@pytest.mark.parametrize("content_type", ["application/octet-stream", "binary/octet-stream"])
async def test_image_recognised_by_magic_bytes(
    loopback: Start, client: MonicaClient, tmp_path: Path, body: bytes, content_type: str
) -> None:
    """Without an image/* content type, a known image signature is enough."""
    url = await loopback(image_handler(body, content_type)) + "/x"
    path = await client.download(url, tmp_path / "x.img")
    assert body == path.read_bytes()


async def test_signature_split_across_chunks_is_recognised(
    loopback: Start, client: MonicaClient, tmp_path: Path
) -> None:
    """A first chunk shorter than the signature does not hide it (WebP, 12 bytes)."""
    body = b"RIFF\x00\x10\x00\x00WEBPVP8 " + bytes(4096)

    async def handler(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        await response.prepare(request)
        await response.write(body[:4])
        await asyncio.sleep(0.05)
        await response.write(body[4:])
        await response.write_eof()
        return response

    url = await loopback(handler) + "/x.webp"
    path = await client.download(url, tmp_path / "x.webp")
    assert body == path.read_bytes()


async def test_download_follows_redirects(
    loopback: Start, client: MonicaClient, tmp_path: Path
) -> None:
    """A download may be redirected (storage hosts do): it carries no credentials."""

    async def handler(request: web.Request) -> web.StreamResponse:
        if request.path == "/short":
            raise web.HTTPFound("/real/cat.png")
        return await image_handler()(request)

    url = await loopback(handler) + "/short"
    path = await client.download(url, tmp_path / "cat.png")
    assert PNG == path.read_bytes()


# -- refusals ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "content_type", "says"),
    [
        (b"<html>not found</html>", "text/html", "is not an image (content-type 'text/html')"),
        (b'{"error": "x"}', "application/json", "is not an image"),
        (b"plain bytes", "application/octet-stream", "is not an image"),
        (b"", "image/png", "is empty"),
    ],
)
async def test_not_an_image_is_refused_and_nothing_is_left(
    loopback: Start,
    client: MonicaClient,
    tmp_path: Path,
    body: bytes,
    content_type: str,
    says: str,
) -> None:
    """A body that is not an image raises and leaves neither file nor temporary file."""
    url = await loopback(image_handler(body, content_type)) + "/x.png"
    with pytest.raises(APIResponseValidationError, match="download") as caught:
        await client.download(url, tmp_path / "x.png")
    assert says in str(caught.value)
    assert ("GET", url, []) == (caught.value.method, caught.value.url, files_in(tmp_path))


async def test_body_without_content_type_and_signature_is_refused(
    loopback: Start, client: MonicaClient, tmp_path: Path
) -> None:
    """No Content-Type and no known signature: refused, saying the type is missing."""
    url = await loopback(no_type_handler) + "/x.png"
    with pytest.raises(APIResponseValidationError, match="content-type 'missing'"):
        await client.download(url, tmp_path / "x.png")
    assert [] == files_in(tmp_path)


async def test_size_cap_from_content_length(
    loopback: Start, client: MonicaClient, tmp_path: Path
) -> None:
    """A declared size over max_bytes is refused before reading, without retry."""
    seen: list[web.Request] = []
    url = await loopback(image_handler(PNG, seen=seen)) + "/big.png"
    with pytest.raises(APIResponseValidationError) as caught:
        await client.download(url, tmp_path / "big.png", max_bytes=1000)
    assert f"is {len(PNG)} bytes, over the 1000 limit" in str(caught.value)
    assert (1, []) == (len(seen), files_in(tmp_path))


async def test_size_cap_while_streaming(
    loopback: Start, api_key: str, no_retry_sleep: None, tmp_path: Path
) -> None:
    """A chunked body that grows past the client's max_download_bytes is cut off."""

    async def handler(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "image/png"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        for _ in range(3):
            await response.write(PNG[:1000])
        await response.write_eof()
        return response

    url = await loopback(handler) + "/big.png"
    async with MonicaClient(max_download_bytes=2500) as client:
        with pytest.raises(APIResponseValidationError, match="over the 2500-byte limit"):
            await client.download(url, tmp_path / "big.png")
    assert [] == files_in(tmp_path)


async def test_size_cap_allows_exactly_the_limit(
    loopback: Start, client: MonicaClient, tmp_path: Path
) -> None:
    """An image of exactly max_bytes is accepted."""
    url = await loopback(image_handler(PNG)) + "/x.png"
    path = await client.download(url, tmp_path / "x.png", max_bytes=len(PNG))
    assert PNG == path.read_bytes()


async def test_plain_http_to_remote_host_refused(
    mock_http: aioresponses, client: MonicaClient, tmp_path: Path
) -> None:
    """A plain-http download from a non-loopback host is refused before any request."""
    with pytest.raises(InvalidRequestError, match="allow_insecure_http"):
        await client.download("http://cdn.test/x.png", tmp_path / "x.png")
    assert ({}, []) == (mock_http.requests, files_in(tmp_path))


async def test_plain_http_allowed_when_asked(
    mock_http: aioresponses, api_key: str, tmp_path: Path
) -> None:
    """With allow_insecure_http=True a plain-http download is made."""
    mock_http.get("http://cdn.test/x.png", body=PNG, content_type="image/png")
    async with MonicaClient(allow_insecure_http=True) as client:
        path = await client.download("http://cdn.test/x.png", tmp_path / "x.png")
    assert PNG == path.read_bytes()


@pytest.mark.parametrize("url", ["not a url", "/relative.png", "ftp://cdn.test/x.png", ""])
async def test_invalid_download_url_refused(
    mock_http: aioresponses, client: MonicaClient, tmp_path: Path, url: str
) -> None:
    """An invalid URL raises InvalidRequestError and sends nothing."""
    with pytest.raises(InvalidRequestError):
        await client.download(url, tmp_path / "x.png")
    assert {} == mock_http.requests


# -- failures: never a partial file ----------------------------------------------------


async def test_connection_dropped_mid_body_leaves_nothing(
    loopback: Start, client: MonicaClient, tmp_path: Path
) -> None:
    """A body cut short raises APIConnectionError (after retries) and leaves no file at all."""
    count: list[int] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        count.append(1)
        return await dropping_handler(request)

    url = await loopback(handler) + "/x.png"
    with pytest.raises(APIConnectionError) as caught:
        await client.download(url, tmp_path / "x.png")
    assert (2, 2, []) == (caught.value.attempts, len(count), files_in(tmp_path))


async def test_unreachable_image_server_is_a_connection_error(
    client: MonicaClient, tmp_path: Path
) -> None:
    """Nothing listening where the image should be: APIConnectionError, nothing written."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(APIConnectionError, match="cannot connect"):
        await client.download(f"http://127.0.0.1:{port}/x.png", tmp_path / "x.png")
    assert [] == files_in(tmp_path)


async def test_failed_download_keeps_the_existing_file(
    loopback: Start, client: MonicaClient, tmp_path: Path
) -> None:
    """A failure leaves whatever was at the destination untouched."""
    target = tmp_path / "x.png"
    target.write_bytes(b"previous")
    url = await loopback(dropping_handler) + "/x.png"
    with pytest.raises(APIConnectionError):
        await client.download(url, target)
    assert (b"previous", ["x.png"]) == (target.read_bytes(), files_in(tmp_path))


async def test_successful_download_replaces_the_existing_file(
    loopback: Start, client: MonicaClient, tmp_path: Path
) -> None:
    """A complete download replaces the destination in one rename."""
    target = tmp_path / "x.png"
    target.write_bytes(b"previous")
    url = await loopback(image_handler()) + "/x.png"
    await client.download(url, target)
    assert (PNG, ["x.png"]) == (target.read_bytes(), files_in(tmp_path))


async def test_transient_failure_is_retried(
    loopback: Start, client: MonicaClient, tmp_path: Path
) -> None:
    """A 503 from the image host is retried and the download then succeeds."""
    count: list[int] = []

    async def handler(request: web.Request) -> web.Response:
        count.append(1)
        if len(count) == 1:
            return web.Response(status=503, text="busy")
        return await image_handler()(request)

    url = await loopback(handler) + "/x.png"
    path = await client.download(url, tmp_path / "x.png")
    assert (PNG, 2, ["x.png"]) == (path.read_bytes(), len(count), files_in(tmp_path))


async def test_not_found_is_not_retried(
    loopback: Start, client: MonicaClient, tmp_path: Path
) -> None:
    """A 404 (an expired result URL) raises NotFoundError after one request."""
    count: list[int] = []

    async def handler(request: web.Request) -> web.Response:
        count.append(1)
        return web.Response(status=404, text="<Error><Code>NoSuchKey</Code></Error>")

    url = await loopback(handler) + "/x.png"
    with pytest.raises(NotFoundError) as caught:
        await client.download(url, tmp_path / "x.png")
    assert ("GET", 1, []) == (caught.value.method, len(count), files_in(tmp_path))
    assert "NoSuchKey" in caught.value.body


async def test_slow_body_times_out_and_leaves_nothing(
    loopback: Start, api_key: str, tmp_path: Path
) -> None:
    """A per-call timeout cuts a stalled body off: APITimeoutError and no file."""

    async def handler(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "image/png"})
        await response.prepare(request)
        await response.write(PNG[:100])
        await asyncio.sleep(30)
        return response

    url = await loopback(handler) + "/x.png"
    async with MonicaClient(retry=RetryPolicy(max_attempts=1)) as client:
        with pytest.raises(APITimeoutError):
            await client.download(url, tmp_path / "x.png", timeout=0.3)
    assert [] == files_in(tmp_path)


async def test_cancelled_download_leaves_nothing(
    loopback: Start, client: MonicaClient, tmp_path: Path
) -> None:
    """Cancelling a download halfway removes its temporary file."""
    started = asyncio.Event()

    async def handler(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "image/png"})
        await response.prepare(request)
        await response.write(PNG[:100])
        started.set()
        await asyncio.sleep(30)
        return response

    url = await loopback(handler) + "/x.png"
    task = asyncio.create_task(client.download(url, tmp_path / "x.png"))
    await asyncio.wait_for(started.wait(), timeout=10)
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert [] == files_in(tmp_path)


async def test_download_error_attributes(
    mock_http: aioresponses, client: MonicaClient, tmp_path: Path, api_key: str
) -> None:
    """A refused download's error names the GET and the URL, never the key."""
    mock_http.get("https://cdn.test/x.png", status=403, body="denied", repeat=True)
    with pytest.raises(PermissionDeniedError) as caught:
        await client.download("https://cdn.test/x.png", tmp_path / "x.png")
    error = caught.value
    assert ("GET", "https://cdn.test/x.png", 403, 1) == (
        error.method,
        error.url,
        error.status,
        error.attempts,
    )
    assert api_key not in repr(error)


@pytest.mark.parametrize("max_bytes", [0, -1, "1MB", True])
async def test_invalid_max_bytes_is_refused(
    mock_http: aioresponses, client: MonicaClient, tmp_path: Path, max_bytes: object
) -> None:
    """download(max_bytes=...) must be a positive number of bytes."""
    with pytest.raises(InvalidRequestError, match="max_bytes"):
        await client.download("https://cdn.test/x.png", tmp_path / "x.png", max_bytes=max_bytes)  # type: ignore[arg-type]
    assert {} == mock_http.requests


async def test_large_image_streams_in_many_chunks(
    loopback: Start, client: MonicaClient, tmp_path: Path
) -> None:
    """An image larger than one read arrives whole."""
    body = PNG + bytes(range(256)) * 2048
    url = await loopback(image_handler(body)) + "/big.png"
    path = await client.download(url, tmp_path / "big.png")
    assert body == path.read_bytes()


@pytest.mark.parametrize(("sent", "body"), [(b"gone", "gone"), (b"", "")])
async def test_error_body_cut_short_still_gives_the_status_error(
    loopback: Start, client: MonicaClient, tmp_path: Path, sent: bytes, body: str
) -> None:
    """Reading an error body never raises: a 404 whose body breaks off is still a 404."""

    async def handler(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(status=404, headers={"Content-Length": "5000"})
        await response.prepare(request)
        if sent:
            await response.write(sent)
        assert request.transport is not None
        request.transport.close()
        return response

    url = await loopback(handler) + "/x.png"
    with pytest.raises(NotFoundError) as caught:
        await client.download(url, tmp_path / "x.png")
    assert (404, body, [], "GET") == (
        caught.value.status,
        caught.value.body,
        files_in(tmp_path),
        caught.value.method,
    )


@pytest.mark.skipif(os.name != "posix", reason="file modes are POSIX")
async def test_downloaded_file_has_the_usual_permissions(
    loopback: Start, client: MonicaClient, tmp_path: Path
) -> None:
    """The image gets the mode any new file gets (the umask's), not a temp file's 0600."""
    url = await loopback(image_handler()) + "/x.png"
    path = await client.download(url, tmp_path / "x.png")
    reference = tmp_path / "reference"
    reference.write_bytes(b"")
    assert stat.S_IMODE(reference.stat().st_mode) == stat.S_IMODE(path.stat().st_mode)


# -- a file written is a whole image ----------------------------------------------------------

JPEG = b"\xff\xd8\xff\xe0" + bytes(range(256)) * 8 + b"\xff\xd9"
GIF = b"GIF89a" + bytes(range(256)) * 8 + b"\x00;"
WEBP = b"RIFF" + (4 + 2048).to_bytes(4, "little") + b"WEBP" + bytes(range(256)) * 8
WHOLE_IMAGES = [
    pytest.param(PNG, "image/png", id="png"),
    pytest.param(JPEG, "image/jpeg", id="jpeg"),
    pytest.param(GIF, "image/gif", id="gif"),
    pytest.param(WEBP, "image/webp", id="webp"),
]


def unsized_handler(
    *bodies: bytes, content_type: str = "image/png", seen: list[int] | None = None
) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """Send the n-th body (the last one repeats) with neither Content-Length nor chunking,
    ending it by closing the connection: the client cannot know whether it is all."""

    async def handler(request: web.Request) -> web.StreamResponse:
        count = len(seen) if seen is not None else 0
        if seen is not None:
            seen.append(1)
        assert request.transport is not None
        request.transport.write(
            f"HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\nConnection: close\r\n\r\n".encode()
            + bodies[min(count, len(bodies) - 1)]
        )
        request.transport.close()
        return web.Response()

    return handler


@pytest.mark.parametrize(("body", "content_type"), WHOLE_IMAGES)
async def test_whole_image_without_content_length_is_saved(
    loopback: Start, client: MonicaClient, tmp_path: Path, body: bytes, content_type: str
) -> None:
    """Without a Content-Length, an image that ends where its format says is complete."""
    url = await loopback(unsized_handler(body, content_type=content_type)) + "/x"
    path = await client.download(url, tmp_path / "x.img")
    assert body == path.read_bytes()


@pytest.mark.parametrize(("body", "content_type"), WHOLE_IMAGES)
async def test_image_cut_short_without_content_length_is_retried_then_fails(
    loopback: Start, client: MonicaClient, tmp_path: Path, body: bytes, content_type: str
) -> None:
    """A body that stops half-way, with no Content-Length to tell, is no success and no file."""
    seen: list[int] = []
    handler = unsized_handler(body[: len(body) // 2], content_type=content_type, seen=seen)
    url = await loopback(handler) + "/x"
    with pytest.raises(APIConnectionError, match="cut short") as caught:
        await client.download(url, tmp_path / "x.img")
    assert (2, 2, []) == (caught.value.attempts, len(seen), files_in(tmp_path))


async def test_image_cut_short_then_whole_succeeds(
    loopback: Start, client: MonicaClient, tmp_path: Path
) -> None:
    """A cut-short body is retried like a dropped connection; the next whole one is saved."""
    seen: list[int] = []
    url = await loopback(unsized_handler(PNG[:500], PNG, seen=seen)) + "/x.png"
    path = await client.download(url, tmp_path / "x.png")
    assert (PNG, 2, ["x.png"]) == (path.read_bytes(), len(seen), files_in(tmp_path))


async def test_body_shorter_than_its_content_length_is_no_success(
    mock_http: aioresponses, client: MonicaClient, tmp_path: Path
) -> None:
    """The byte count is checked against Content-Length (a transport may not check it)."""
    url = "https://cdn.test/x.png"
    mock_http.get(url, body=PNG[:100], headers={"Content-Length": str(len(PNG))}, repeat=True)
    with pytest.raises(APIConnectionError, match=f"100 of the {len(PNG)} bytes"):
        await client.download(url, tmp_path / "x.png")
    assert [] == files_in(tmp_path)


def _bmp() -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 30, 30)).save(out, "BMP")
    return out.getvalue()


async def test_other_format_is_decoded_with_pillow_to_tell_it_is_whole(
    loopback: Start, client: MonicaClient, tmp_path: Path
) -> None:
    """A format without a checked end marker (BMP) is decoded: a cut one is refused."""
    bmp = _bmp()
    whole = await loopback(unsized_handler(bmp, content_type="image/bmp")) + "/whole.bmp"
    cut = await loopback(unsized_handler(bmp[:2000], content_type="image/bmp")) + "/cut.bmp"
    saved = await client.download(whole, tmp_path / "whole.bmp")
    with pytest.raises(APIConnectionError, match="cut short"):
        await client.download(cut, tmp_path / "cut.bmp")
    assert (bmp, ["whole.bmp"]) == (saved.read_bytes(), files_in(tmp_path))


async def test_other_format_is_kept_when_pillow_is_missing(
    loopback: Start, client: MonicaClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without Pillow nothing can tell a BMP is whole: it is saved as before."""
    monkeypatch.setitem(sys.modules, "PIL", None)
    body = b"BM" + bytes(200)
    url = await loopback(unsized_handler(body, content_type="image/bmp")) + "/x.bmp"
    path = await client.download(url, tmp_path / "x.bmp")
    assert body == path.read_bytes()


async def test_format_pillow_does_not_know_is_kept(
    loopback: Start, client: MonicaClient, tmp_path: Path
) -> None:
    """An image/* body nobody can check (Pillow does not recognise it) is saved as before."""
    body = b"\x00\x00\x00\x1cftypavif" + bytes(200)
    url = await loopback(unsized_handler(body, content_type="image/avif")) + "/x.avif"
    path = await client.download(url, tmp_path / "x.avif")
    assert body == path.read_bytes()


@pytest.mark.parametrize(
    ("first", "tail", "size", "expected"),
    [
        (PNG[:16], PNG[-32:], len(PNG), True),
        (PNG[:16], PNG[-40:-8], len(PNG) - 8, False),
        (JPEG[:16], JPEG[-32:], len(JPEG), True),
        (JPEG[:16], JPEG[-34:-2], len(JPEG) - 2, False),
        (GIF[:16], GIF[-32:], len(GIF), True),
        (GIF[:16], GIF[-33:-1], len(GIF) - 1, False),
        (WEBP[:16], WEBP[-32:], len(WEBP), True),
        (WEBP[:16], WEBP[-33:-1], len(WEBP) - 1, False),
        (b"BM" + bytes(14), bytes(32), 100, None),
        (b"II*\x00" + bytes(12), bytes(32), 100, None),
    ],
)
def test_image_is_complete_reads_each_formats_end(
    first: bytes, tail: bytes, size: int, expected: bool | None
) -> None:
    """PNG's IEND, JPEG's EOI, GIF's trailer, WebP's RIFF size; None for other formats."""
    assert expected == image_is_complete(first, tail, size)


# -- leftovers of killed runs ---------------------------------------------------------------


def test_stale_temporary_files_are_removed_and_nothing_else(tmp_path: Path) -> None:
    """Only names of the library's temporary pattern go; other files, folders and links stay."""
    stale = [".cat.png.0123456789abcdef.part", ".1-x-a1b2c3d4.webp.fedcba9876543210.part"]
    kept = [
        "cat.png",
        ".cat.png.part",
        "cat.png.0123456789abcdef.part",
        ".cat.png.0123456789ABCDEF.part",
        ".cat.png.0123456789abcde.part",
        ".cat.png.0123456789abcdef.part.bak",
    ]
    for name in stale + kept:
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / ".dir.0123456789abcdef.part").mkdir()
    outside = tmp_path.parent / f"{tmp_path.name}-target.png"
    outside.write_bytes(b"keep me")
    (tmp_path / ".link.png.0123456789abcdef.part").symlink_to(outside)
    removed = remove_stale_temporaries(tmp_path)
    expected = sorted([*kept, ".dir.0123456789abcdef.part", ".link.png.0123456789abcdef.part"])
    assert (2, expected, b"keep me") == (removed, files_in(tmp_path), outside.read_bytes())


def test_cleanup_of_a_missing_folder_removes_nothing(tmp_path: Path) -> None:
    """A folder that cannot be listed is no error: there is nothing to clean."""
    assert 0 == remove_stale_temporaries(tmp_path / "absent")


async def test_temporary_name_taken_by_a_cleanup_is_replaced(
    loopback: Start, client: MonicaClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cleanup that locks a new temporary file before its download does makes the
    download start over with another name; the image still arrives."""
    fcntl = pytest.importorskip("fcntl")
    real_flock = fcntl.flock
    calls: list[int] = []

    def busy_once(fd: int, operation: int) -> None:
        calls.append(fd)
        if len(calls) == 1:
            raise BlockingIOError("held by a cleanup")
        real_flock(fd, operation)

    monkeypatch.setattr(fcntl, "flock", busy_once)
    url = await loopback(image_handler()) + "/x.png"
    path = await client.download(url, tmp_path / "x.png")
    # The first name is left to the cleanup that took it.
    assert (PNG, 2, 1) == (
        path.read_bytes(),
        len(calls),
        len([p for p in tmp_path.iterdir() if p.name.endswith(".part")]),
    )


async def test_file_system_without_locks_still_downloads(
    loopback: Start, client: MonicaClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where flock is not supported, the download goes ahead unlocked (and ends in place)."""
    fcntl = pytest.importorskip("fcntl")

    def unsupported(fd: int, operation: int) -> None:
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", unsupported)
    url = await loopback(image_handler()) + "/x.png"
    path = await client.download(url, tmp_path / "x.png")
    assert (PNG, ["x.png"]) == (path.read_bytes(), files_in(tmp_path))


async def test_live_download_keeps_its_temporary_file(
    loopback: Start, client: MonicaClient, tmp_path: Path
) -> None:
    """A cleanup while another download writes leaves its file alone; the download completes."""
    release = asyncio.Event()
    started = asyncio.Event()

    async def handler(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "image/png"})
        response.content_length = len(PNG)
        await response.prepare(request)
        await response.write(PNG[:100])
        started.set()
        await release.wait()
        await response.write(PNG[100:])
        return response

    url = await loopback(handler) + "/x.png"
    download = asyncio.create_task(client.download(url, tmp_path / "x.png"))
    await asyncio.wait_for(started.wait(), 10)
    [part] = [p for p in tmp_path.iterdir() if p.name.endswith(".part")]
    removed = remove_stale_temporaries(tmp_path)
    release.set()
    path = await asyncio.wait_for(download, 10)
    assert (0, PNG, ["x.png"], False) == (
        removed,
        path.read_bytes(),
        files_in(tmp_path),
        part.exists(),
    )


async def test_an_unwritable_folder_names_the_file_asked_for(
    loopback: Start, client: MonicaClient, unwritable_dir: Path
) -> None:
    """A download into a folder that takes no file fails with the OSError of the path
    the caller gave, not of a hidden temporary file."""
    url = await loopback(image_handler()) + "/x.png"
    with pytest.raises(PermissionError) as caught:
        await client.download(url, unwritable_dir / "x.png")
    assert (errno.EACCES, str(unwritable_dir / "x.png")) == (
        caught.value.errno,
        caught.value.filename,
    )


async def test_a_timeout_names_its_seconds_and_the_option(
    loopback: Start, api_key: str, tmp_path: Path
) -> None:
    """A download that gets no answer in time says after how long, and which option
    sets it."""

    async def stall(request: web.Request) -> web.StreamResponse:
        await asyncio.sleep(30)
        return web.Response()

    url = await loopback(stall) + "/x.png"
    async with MonicaClient(retry=RetryPolicy(max_attempts=1), timeout=0.3) as client:
        with pytest.raises(APITimeoutError) as caught:
            await client.download(url, tmp_path / "x.png")
    assert (
        f"GET {url} timed out after 0.3s (the timeout of one attempt); pass a larger "
        "timeout= to MonicaClient or to the call"
    ) == str(caught.value)


async def test_download_attempts_are_logged_at_debug_with_their_target(
    loopback: Start, client: MonicaClient, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Each download attempt is one DEBUG line: the URL without its query, the status,
    the attempt and the file it goes to."""
    answers = iter([web.Response(status=503), None])

    async def flaky(request: web.Request) -> web.Response:
        return next(answers) or web.Response(body=PNG, content_type="image/png")

    base = await loopback(flaky)
    target = tmp_path / "x.png"
    with caplog.at_level(logging.DEBUG, logger="monica_async"):
        await client.download(f"{base}/x.png?X-Amz-Signature=0ddba11", target)

    lines = [r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG]
    assert [
        f"GET {base}/x.png -> 503 (attempt 1, to {target})",
        f"GET {base}/x.png -> 200 (attempt 2, to {target})",
    ] == [re.sub(r" in \d+\.\d{3}s", "", line) for line in lines]
