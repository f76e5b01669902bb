"""Arguments are checked before any byte is sent; valid URLs are sent exactly as given."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from aiohttp import web
from aioresponses import aioresponses
from yarl import URL

from monica_async import ALLOWED_SCALES, InvalidRequestError, MonicaClient, _validation
from monica_async._validation import (
    MAX_URL_LENGTH,
    is_loopback_host,
    validate_image_url,
    validate_scale,
)

ENDPOINT = "https://api.test/v1/image/tool/upscale"
RESULT = "https://cdn.test/out.png"

INVALID_IMAGES: list[tuple[Any, str]] = [
    (None, "image must be a URL string, got NoneType"),
    (42, "image must be a URL string, got int"),
    (b"https://images.test/a.png", "image must be a URL string, got bytes"),
    (["https://images.test/a.png"], "image must be a URL string, got list"),
    (URL("https://images.test/a.png"), "image must be a URL string, got URL"),
    ("", "image must be a non-empty URL"),
    ("   ", "image must be a non-empty URL"),
    ("\t\n", "image must be a non-empty URL"),
    ("/images/a.png", "image must be an absolute http(s) URL"),
    ("images.test/a.png", "image must be an absolute http(s) URL"),
    ("//images.test/a.png", "image must be an absolute http(s) URL"),
    ("ftp://images.test/a.png", "image must be an absolute http(s) URL"),
    ("file:///etc/passwd", "image must be an absolute http(s) URL"),
    ("data:image/png;base64,iVBORw0KGgo=", "image must be an absolute http(s) URL"),
    ("https://", "image must be an absolute http(s) URL"),
    ("https:///a.png", "image must be an absolute http(s) URL"),
    ("https://:443/a.png", "image must be an absolute http(s) URL"),
    ("https://images.test/a b.png", "must not contain spaces or control characters"),
    (" https://images.test/a.png", "must not contain spaces or control characters"),
    ("https://images.test/a.png\n", "must not contain spaces or control characters"),
    ("https://images.test/a\tb.png", "must not contain spaces or control characters"),
    ("https://images.test/a\x00.png", "must not contain spaces or control characters"),
    ("https://images.test/a\x7f.png", "must not contain spaces or control characters"),
    ("https://images.test/a\x9b.png", "must not contain spaces or control characters"),
    ("https://images.test/a\u00a0b.png", "must not contain spaces or control characters"),
    ("https://images.test/a\u3000b.png", "must not contain spaces or control characters"),
    ("https://[::1/a.png", "image is not a valid URL"),
    ("https://images.test:99999/a.png", "image is not a valid URL"),
    ("https://images.test:port/a.png", "image is not a valid URL"),
    ("https://images.test/" + "a" * MAX_URL_LENGTH, f"at most {MAX_URL_LENGTH} characters"),
]

VALID_IMAGES = [
    "https://images.test/cat.png",
    "http://images.test/cat.png",
    "HTTPS://IMAGES.TEST/CAT.PNG",
    "https://bücher.example/katze.png",
    "https://例え.テスト/画像.png",
    "https://xn--bcher-kva.example/katze.png",
    "https://images.test/%E7%8C%AB/cat%20photo.png",
    "https://images.test/a%2Fb.png?sig=abc%3D%3D&x=1",
    "https://images.test/cat.png#fragment",
    "https://user:p%40ss@images.test/cat.png",
    "https://[2001:db8::1]:8443/cat.png",
    "https://images.test:8443/cat.png",
    "https://images.test/" + "a" * (MAX_URL_LENGTH - len("https://images.test/")),
]


@pytest.mark.parametrize(("image", "says"), INVALID_IMAGES)
async def test_invalid_image_is_refused_before_sending(
    mock_http: aioresponses, api_key: str, image: Any, says: str
) -> None:
    """An invalid image raises InvalidRequestError naming the argument; nothing is sent."""
    async with MonicaClient(base_url="https://api.test") as client:
        with pytest.raises(InvalidRequestError, match="image") as caught:
            await client.upscale(image)
    assert says in str(caught.value)
    assert {} == mock_http.requests


@pytest.mark.parametrize("scale", [3, 4, 1, 0, -2, True, False, 2.0, "2", None, [2]])
async def test_invalid_scale_is_refused_before_sending(
    mock_http: aioresponses, api_key: str, scale: Any
) -> None:
    """A scale outside the enum (bool, float and str included) is refused with the choices."""
    async with MonicaClient(base_url="https://api.test") as client:
        with pytest.raises(InvalidRequestError) as caught:
            await client.upscale("https://images.test/cat.png", scale=scale)
    assert f"scale must be one of (2,), got {scale!r}" == str(caught.value)
    assert {} == mock_http.requests


@pytest.mark.parametrize("image", VALID_IMAGES)
async def test_valid_image_is_sent_unchanged(
    mock_http: aioresponses, api_key: str, image: str
) -> None:
    """Valid URLs (IDN, percent-encoding, query, port, IPv6) reach the body as given."""
    mock_http.post(ENDPOINT, payload={"image": RESULT})
    async with MonicaClient(base_url="https://api.test") as client:
        result = await client.upscale(image)
    [call] = mock_http.requests[("POST", URL(ENDPOINT))]
    assert {"image": image, "scale": 2} == json.loads(call.kwargs["data"])
    assert image == result.source


@pytest.mark.parametrize(
    "image",
    [
        "https://bücher.example/katze.png",
        "https://例え.テスト/画像.png?größe=groß",
        "https://images.test/%E7%8C%AB/cat%20photo.png?a=%2F%3F",
    ],
)
async def test_server_receives_the_url_unchanged(loopback: Any, api_key: str, image: str) -> None:
    """Over a real socket, the server decodes the very string the caller passed."""
    received: list[Any] = []

    async def handler(request: web.Request) -> web.Response:
        received.append(await request.json())
        return web.json_response({"image": RESULT})

    base_url = await loopback(handler)
    async with MonicaClient(base_url=base_url) as client:
        await client.upscale(image)
    assert [{"image": image, "scale": 2}] == received


def test_allowed_scales_is_the_spec_enum() -> None:
    """The set of scales lives in one public constant, today only 2."""
    assert (2,) == ALLOWED_SCALES


@pytest.mark.parametrize("scale", ALLOWED_SCALES)
def test_validate_scale_accepts_allowed(scale: int) -> None:
    """Each allowed scale passes through unchanged."""
    assert scale == validate_scale(scale)


@pytest.mark.parametrize("image", VALID_IMAGES)
def test_validate_image_url_returns_its_input(image: str) -> None:
    """The validator returns the URL unmodified (no normalising, no re-encoding)."""
    assert image == validate_image_url(image)


def test_long_url_message_names_the_length() -> None:
    """A too-long URL's message says the limit and the length, not the URL itself."""
    image = "https://images.test/" + "a" * 10_000
    with pytest.raises(InvalidRequestError) as caught:
        validate_image_url(image)
    assert f"image URL must be at most {MAX_URL_LENGTH} characters, got {len(image)}" == str(
        caught.value
    )


def test_long_invalid_value_is_shortened_in_messages() -> None:
    """An invalid value is quoted in the message, cut short when long."""
    with pytest.raises(InvalidRequestError) as caught:
        validate_image_url("ftp://images.test/" + "a" * 500)
    assert len(str(caught.value)) < 200
    assert str(caught.value).endswith("...")


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("localhost", True),
        ("LOCALHOST", True),
        ("127.0.0.1", True),
        ("127.1.2.3", True),
        ("::1", True),
        ("[::1]", True),
        (None, False),
        ("api.test", False),
        ("10.0.0.1", False),
        ("127.example.com", False),
        ("127.0.0.1.nip.io", False),
        ("::ffff:127.0.0.1", True),
        ("0:0:0:0:0:0:0:1", True),
    ],
)
def test_is_loopback_host(host: str | None, expected: bool) -> None:
    """Loopback names and addresses are recognised (plain http to them is harmless)."""
    assert expected == is_loopback_host(host)


@pytest.mark.parametrize(
    "url",
    [
        "http://a",
        "https://example.com/cat.png",
        "http://127.0.0.1:8080/x.png?sig=abc#frag",
        "http://host:0/",
        "http://a..b/",
        "http://-a.example/",
        "http://host:65535/p",
        "http://host:65536/p",
        "http://host:99999/p",
        "http://host:00080/p",
        "http://127.0.0.1:41234/images/1.png",
        "http://host:59999/p",
        "http://host:65529/p",
        "http://host:65530",
        "http://host:65600/p",
        "http://host:70000/p",
        "http://host:123456/p",
        "http://host.:80/p",
        "http://host-/p",
        "http://a.b-c.d:6553?q#f",
        "http://host:/p",
        "http://user:pw@host/p",
        "http://[::1]:80/p",
        "HTTP://HOST/P",
        "http://a\\b",
        "http:/a",
        "http:///a",
        "ftp://a/b",
    ],
)
def test_fast_path_agrees_with_the_full_parse(url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The one-regex shortcut accepts exactly what the full parse accepts."""

    def verdict() -> str:
        try:
            return validate_image_url(url)
        except InvalidRequestError as exc:
            return f"refused: {exc}"

    fast = verdict()
    monkeypatch.setattr(_validation, "_PLAIN_URL", re.compile(r"(?!)"))
    assert verdict() == fast


@pytest.mark.parametrize(
    "url",
    [
        "https://example.com/cat.png",
        "http://127.0.0.1:41234/images/1.png",
        "http://localhost:65535/a.png?x=1",
        "https://cdn.example.com:8443/p/q.jpg#f",
    ],
)
def test_fast_path_takes_common_urls(url: str) -> None:
    """Ordinary URLs, loopback ones on ephemeral ports included, skip the full parse."""
    assert _validation._PLAIN_URL.fullmatch(url)
