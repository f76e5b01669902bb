"""Secrets never leave the library: the API key, and the userinfo and query of URLs sent.

Against real servers on 127.0.0.1: a refused connection, a 404 that quotes the query
it got, a 401 that quotes the key. Every error is looked at whole: ``str``, ``repr``,
its attributes, the traceback with its causes, and the log records of the call.
"""

from __future__ import annotations

import logging
import socket
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from urllib.parse import quote

import pytest
from aiohttp import web

from monica_async import (
    APIConnectionError,
    AuthenticationError,
    MonicaClient,
    NotFoundError,
    RetryPolicy,
)
from monica_async._redact import REDACTED, safe_url, scrub_text, url_secrets

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Start = Callable[[Handler], Awaitable[str]]

KEY = "sk-redact-0123456789abcdef-SECRET"
PASSWORD = "Pa55-hidden-word"
SIGNATURE = "0ddba11c0ffee5ec7e7"
CREDENTIAL = "AKIAEXAMPLE/20261201/us-east-1/s3/aws4_request"
#: Every form in which a secret could show, the percent-encoded credential included.
SECRETS = (KEY, PASSWORD, SIGNATURE, CREDENTIAL, quote(CREDENTIAL, safe=""))


def presigned(base: str) -> str:
    """A presigned-looking URL of ``/r.png`` on *base*, with a password in it too."""
    host = base.split("://", 1)[1]
    query = f"X-Amz-Signature={SIGNATURE}&X-Amz-Credential={quote(CREDENTIAL, safe='')}"
    return f"http://user:{PASSWORD}@{host}/r.png?{query}"


def everything(error: BaseException) -> str:
    """All a user or a log can see of *error*: str, repr, attributes, traceback, causes."""
    seen = [str(error), repr(error), repr(vars(error)), *traceback.format_exception(error)]
    cause = error.__cause__
    if cause is not None:
        seen += [str(cause), repr(cause), repr(cause.args)]
    return "\n".join(seen)


def leaked(text: str) -> list[str]:
    """The secrets found in *text*."""
    return [secret for secret in SECRETS if secret in text]


def closed_port() -> int:
    """A port of 127.0.0.1 on which nothing listens."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
async def client(no_retry_sleep: None) -> AsyncIterator[MonicaClient]:
    """A client with the made-up key, two attempts per call, never sleeping."""
    async with MonicaClient(
        KEY, base_url="http://127.0.0.1:9", retry=RetryPolicy(max_attempts=2)
    ) as client:
        yield client


@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    """Every record of the library, DEBUG included."""
    caplog.set_level(logging.DEBUG, logger="monica_async")
    return caplog


async def test_a_refused_connection_shows_no_secret(
    client: MonicaClient, logs: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    """A download that cannot connect names the host, keeps scheme, host and path, and
    shows neither the password nor the query, in the error or the log."""
    port = closed_port()
    with pytest.raises(APIConnectionError) as caught:
        await client.download(presigned(f"http://127.0.0.1:{port}"), tmp_path / "r.png")
    error = caught.value

    assert f"http://127.0.0.1:{port}/r.png" == error.url
    assert f"cannot connect to 127.0.0.1:{port}: connection refused" in str(error)
    assert [] == leaked(everything(error))
    assert [] == leaked(logs.text)
    assert 2 == error.attempts


async def test_a_404_quoting_the_query_shows_no_secret(
    client: MonicaClient, loopback: Start, logs: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    """An image server whose 404 quotes the path and query it got (raw and decoded)
    gives an error whose message and body have the values hidden, keys kept."""

    async def not_found(request: web.Request) -> web.Response:
        decoded = " ".join(request.query.values())
        return web.Response(status=404, text=f"no such key {request.path_qs} ({decoded})")

    base = await loopback(not_found)
    with pytest.raises(NotFoundError) as caught:
        await client.download(presigned(base), tmp_path / "r.png")
    error = caught.value

    assert f"{base}/r.png" == error.url
    assert f"/r.png?X-Amz-Signature={REDACTED}&X-Amz-Credential={REDACTED}" in error.body
    assert [] == leaked(everything(error))
    assert [] == leaked(logs.text)


async def test_a_401_quoting_the_key_shows_no_secret(
    loopback: Start, logs: pytest.LogCaptureFixture, no_retry_sleep: None
) -> None:
    """An API that quotes the key in its 401 gives an error without it, for a single
    call and for each outcome of a batch, and the batch's warning has none either."""

    async def refuse(request: web.Request) -> web.Response:
        said = f"key {request.headers['Authorization']} is not valid"
        body = {"error": {"code": "invalid_api_key", "message": said}}
        return web.json_response(body, status=401)

    base = await loopback(refuse)
    image = presigned("http://img.test")
    async with MonicaClient(KEY, base_url=base) as client:
        with pytest.raises(AuthenticationError) as caught:
            await client.upscale(image)
        outcomes = await client.upscale_all([image, image, image], workers=1)

    error = caught.value
    assert f"HTTP 401 invalid_api_key: key Bearer {REDACTED} is not valid" == str(error)
    assert [] == leaked(everything(error))
    assert [[]] * 3 == [leaked(everything(o.error)) for o in outcomes if not o.ok]
    assert 3 == sum(not o.ok for o in outcomes)
    assert [] == leaked(logs.text)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://u:p@h.test:8443/a/b.png?sig=x#frag", "https://h.test:8443/a/b.png"),
        ("https://h.test/a.png", "https://h.test/a.png"),
        ("http://[::1]:8080/x?y=1", "http://[::1]:8080/x"),
        ("https://h.test?only=query", "https://h.test"),
        ("not a url?secret=1", "not a url"),
        ("https://h.test:notaport/x?s=1", "https://h.test:notaport/x"),
    ],
)
def test_safe_url_keeps_scheme_host_and_path(url: str, expected: str) -> None:
    """An error's URL keeps scheme, host, port and path; whatever the URL, it never raises."""
    assert expected == safe_url(url)


def test_url_secrets_are_the_userinfo_and_the_query_values_in_both_forms() -> None:
    """User, password and each query value are secret, as written and decoded; short ones not."""
    url = "https://alice:s3cr3t@h.test/a.png?sig=ab%2Fcd+ef&n=1&empty=&flag"
    assert ("alice", "s3cr3t", "ab%2Fcd+ef", "ab/cd+ef", "ab/cd ef") == url_secrets(url)


@pytest.mark.parametrize(
    ("text", "secrets", "expected"),
    [
        (
            "GET https://u:pw@h.test/a.png?sig=1 failed",
            (),
            f"GET https://h.test/a.png?{REDACTED} failed",
        ),
        ('<a href="https://h.test/x#top">', (), '<a href="https://h.test/x">'),
        ("key Bearer sk-123456 refused", ("sk-123456",), f"key Bearer {REDACTED} refused"),
        ("the values abcd and abcdef", ("abcd", "abcdef"), f"the values {REDACTED} and {REDACTED}"),
        ("a 1 and png", ("1", "png"), "a 1 and png"),
        ("no URL here", (), "no URL here"),
    ],
)
def test_scrub_text_hides_urls_queries_and_secrets(
    text: str, secrets: tuple[str, ...], expected: str
) -> None:
    """URLs in a text lose userinfo and query, and each secret of 4 characters or more goes."""
    assert expected == scrub_text(text, secrets)
