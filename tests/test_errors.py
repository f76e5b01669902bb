"""The error tree: statuses to classes, error bodies, invalid 200s and transport errors."""

from __future__ import annotations

import asyncio
import copy
import pickle
import socket
import ssl
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp.client_reqrep import ConnectionKey
from aioresponses import aioresponses
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from monica_async import (
    APIConnectionError,
    APIError,
    APIResponseValidationError,
    APIStatusError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    ConflictError,
    InternalServerError,
    InvalidRequestError,
    MonicaClient,
    MonicaError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitError,
    RateLimiterUnavailableError,
    RetryPolicy,
    StorageError,
    UnprocessableEntityError,
)
from monica_async._exceptions import excerpt
from monica_async._http import map_transport_error

ENDPOINT = "https://api.test/v1/image/tool/upscale"
IMAGE = "https://images.test/cat.png"


@pytest.fixture
async def api(api_key: str, unlimited: Any) -> AsyncIterator[MonicaClient]:
    """A client that makes one attempt per call."""
    async with MonicaClient(
        base_url="https://api.test", retry=RetryPolicy(max_attempts=1), rate_limit=unlimited
    ) as client:
        yield client


def requests_sent(mock_http: aioresponses) -> int:
    """How many requests reached the mocked endpoint."""
    return len(mock_http.requests.get(("POST", URL(ENDPOINT)), []))


def pickle_roundtrip(error: APIError) -> APIError:
    """Pickle and unpickle *error*."""
    again: APIError = pickle.loads(pickle.dumps(error))
    return again


# -- the tree ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cls", "base"),
    [
        (InvalidRequestError, MonicaError),
        (InvalidRequestError, ValueError),
        (RateLimiterUnavailableError, MonicaError),
        (APIError, MonicaError),
        (APIConnectionError, APIError),
        (APITimeoutError, APIConnectionError),
        (APIResponseValidationError, APIError),
        (APIStatusError, APIError),
        (BadRequestError, APIStatusError),
        (AuthenticationError, APIStatusError),
        (PermissionDeniedError, APIStatusError),
        (NotFoundError, APIStatusError),
        (ConflictError, APIStatusError),
        (UnprocessableEntityError, APIStatusError),
        (RateLimitError, APIStatusError),
        (InternalServerError, APIStatusError),
    ],
)
def test_error_tree(cls: type[Exception], base: type[Exception]) -> None:
    """Each error sits where the _exceptions module docstring draws it."""
    assert issubclass(cls, base)


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (400, BadRequestError),
        (401, AuthenticationError),
        (403, PermissionDeniedError),
        (404, NotFoundError),
        (409, ConflictError),
        (422, UnprocessableEntityError),
        (429, RateLimitError),
        (500, InternalServerError),
        (502, InternalServerError),
        (503, InternalServerError),
        (504, InternalServerError),
        (599, InternalServerError),
        (402, APIStatusError),
        (405, APIStatusError),
        (408, APIStatusError),
        (418, APIStatusError),
        (201, APIStatusError),
        (301, APIStatusError),
        (302, APIStatusError),
        (304, APIStatusError),
        (307, APIStatusError),
    ],
)
async def test_status_maps_to_error_class(
    mock_http: aioresponses, api: MonicaClient, status: int, expected: type[APIStatusError]
) -> None:
    """Every answer other than 200 raises the most specific APIStatusError subclass."""
    mock_http.post(ENDPOINT, status=status, body="refused")
    with pytest.raises(APIStatusError) as caught:
        await api.upscale(IMAGE)
    assert (expected, status) == (type(caught.value), caught.value.status)


async def test_redirect_is_an_error_and_not_followed(
    mock_http: aioresponses, api: MonicaClient
) -> None:
    """A 3xx raises, naming the target, and the target receives nothing."""
    elsewhere = "https://elsewhere.test/v1/image/tool/upscale"
    mock_http.post(ENDPOINT, status=307, headers={"Location": elsewhere})
    mock_http.post(elsewhere, payload={"image": "https://cdn.test/x.png"})
    with pytest.raises(APIStatusError, match="redirect") as caught:
        await api.upscale(IMAGE)
    assert elsewhere in str(caught.value)
    assert [] == mock_http.requests.get(("POST", URL(elsewhere)), [])


# -- error bodies --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "code", "message"),
    [
        (
            '{"error": {"code": "invalid_scale", "message": "scale must be 2"}}',
            "invalid_scale",
            "scale must be 2",
        ),
        ('{"error": {"code": 40001, "message": "bad image"}}', "40001", "bad image"),
        ('{"error": "plain message"}', None, "plain message"),
        ('{"message": "top-level message"}', None, "top-level message"),
        ('{"error": {"code": "only_code"}}', "only_code", '{"error": {"code": "only_code"}}'),
        ('{"error": {"message": 5}}', None, '{"error": {"message": 5}}'),
        ('{"broken json', None, '{"broken json'),
        ("[1, 2]", None, "[1, 2]"),
        ('"a string"', None, '"a string"'),
        ("<html>Bad request</html>", None, "Bad request"),
        ("  spaced out \n", None, "spaced out"),
        ("", None, "HTTP 400 with an empty body"),
        ("  \n ", None, "HTTP 400 with an empty body"),
    ],
)
async def test_error_body_parsed_or_kept_raw(
    mock_http: aioresponses, api: MonicaClient, body: str, code: str | None, message: str
) -> None:
    """{"error": {"code", "message"}} is parsed; anything else becomes the message as text."""
    mock_http.post(ENDPOINT, status=400, body=body)
    with pytest.raises(BadRequestError) as caught:
        await api.upscale(IMAGE)
    assert (code, message, body) == (caught.value.code, caught.value.message, caught.value.body)


@pytest.mark.parametrize(
    "body",
    [
        b"\x89PNG\r\n\x1a\n\x00\xff\xfe\x00",
        b"\xff\xfe\xfd",
        b"\x00" * 10,
        "na\u00efve \u2603".encode(),
    ],
)
async def test_binary_error_body_never_raises(
    mock_http: aioresponses, api: MonicaClient, body: bytes
) -> None:
    """A binary or non-UTF-8 error body still gives an InternalServerError with text."""
    mock_http.post(ENDPOINT, status=500, body=body)
    with pytest.raises(InternalServerError) as caught:
        await api.upscale(IMAGE)
    assert body.decode("utf-8", errors="replace") == caught.value.body


async def test_long_error_body_is_shortened(mock_http: aioresponses, api: MonicaClient) -> None:
    """A huge error body is kept as an excerpt, on the error and in its message."""
    mock_http.post(ENDPOINT, status=502, body="x" * 5000)
    with pytest.raises(InternalServerError) as caught:
        await api.upscale(IMAGE)
    assert ("x" * 500 + "... (4500 more characters)", "x" * 200 + "... (4800 more characters)") == (
        caught.value.body,
        caught.value.message,
    )


async def test_status_error_attributes(mock_http: aioresponses, api: MonicaClient) -> None:
    """A status error carries what a user needs to act on it."""
    mock_http.post(
        ENDPOINT,
        status=429,
        body='{"error": {"code": "rate_limited", "message": "slow down"}}',
        headers={"Retry-After": "12", "x-request-id": "req-7"},
    )
    with pytest.raises(RateLimitError) as caught:
        await api.upscale(IMAGE)
    error = caught.value
    assert (429, "rate_limited", "slow down", 12.0, "req-7", "POST", ENDPOINT, 1) == (
        error.status,
        error.code,
        error.message,
        error.retry_after,
        error.request_id,
        error.method,
        error.url,
        error.attempts,
    )


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (APIStatusError("teapot", status=418), "HTTP 418: teapot"),
        (BadRequestError("bad", status=400, code="invalid"), "HTTP 400 invalid: bad"),
        (
            RateLimitError("slow", status=429, request_id="r-1", attempts=3),
            "HTTP 429: slow (request_id=r-1, after 3 attempts)",
        ),
        (APIConnectionError("unreachable"), "unreachable"),
        (APITimeoutError("too slow", attempts=2), "too slow (after 2 attempts)"),
        (APIResponseValidationError("odd", request_id="r-2"), "odd (request_id=r-2)"),
    ],
)
def test_error_str(error: APIError, expected: str) -> None:
    """str(error) shows status, code, message, request id and attempts when known."""
    assert expected == str(error)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("short", "short"), ("a" * 10, "a" * 10), ("a" * 11, "a" * 10 + "... (1 more characters)")],
)
def test_excerpt(text: str, expected: str) -> None:
    """excerpt() keeps short texts and cuts long ones, saying how much it cut."""
    assert expected == excerpt(text, 10)


# -- invalid 200 answers -------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "says"),
    [
        ("not json", "not JSON"),
        ("<html>ok</html>", "not JSON"),
        ("", "not JSON"),
        ("[]", "JSON object"),
        ('"https://cdn.test/x.png"', "JSON object"),
        ("null", "JSON object"),
        ("{}", "'image'"),
        ('{"url": "https://cdn.test/x.png"}', "'image'"),
        ('{"image": null}', "'image'"),
        ('{"image": 5}', "'image'"),
        ('{"image": ["https://cdn.test/x.png"]}', "'image'"),
        ('{"image": ""}', "'image'"),
        ('{"image": "   "}', "'image'"),
    ],
)
async def test_invalid_200_raises_validation_error_without_retry(
    mock_http: aioresponses, api_key: str, retry_waits: list[float], body: str, says: str
) -> None:
    """A 200 that is not JSON or has no string image raises at once (no retry)."""
    mock_http.post(ENDPOINT, status=200, body=body, headers={"x-request-id": "req-9"}, repeat=True)
    async with MonicaClient(base_url="https://api.test") as client:
        with pytest.raises(APIResponseValidationError, match=says) as caught:
            await client.upscale(IMAGE)
    assert (200, body, "req-9", 1, 1) == (
        caught.value.status,
        caught.value.body,
        caught.value.request_id,
        caught.value.attempts,
        requests_sent(mock_http),
    )


# -- transport errors ----------------------------------------------------------------

_KEY = ConnectionKey("api.test", 443, True, True, None, None, None, None)
_INFO = aiohttp.RequestInfo(URL(ENDPOINT), "POST", CIMultiDictProxy(CIMultiDict()), URL(ENDPOINT))

TRANSPORT_ERRORS: list[tuple[Callable[[], BaseException], type[APIError], str]] = [
    (
        lambda: aiohttp.ClientConnectorError(
            _KEY, ConnectionRefusedError(111, "Connection refused")
        ),
        APIConnectionError,
        "cannot connect to api.test:443: connection refused (no server listens on that port)",
    ),
    (
        lambda: aiohttp.ClientConnectorDNSError(_KEY, OSError(-2, "Name or service not known")),
        APIConnectionError,
        "cannot find the host 'api.test' (Name or service not known)",
    ),
    (
        lambda: aiohttp.ClientProxyConnectionError(
            _KEY, OSError(111, "Connect call failed ('10.0.0.1', 3128)")
        ),
        APIConnectionError,
        "cannot connect to the proxy api.test:443 (Connection refused); check HTTPS_PROXY",
    ),
    (
        lambda: aiohttp.ClientConnectorSSLError(_KEY, ssl.SSLError(1, "handshake failure")),
        APIConnectionError,
        "cannot connect to api.test:443",
    ),
    (
        lambda: aiohttp.ClientConnectorCertificateError(
            _KEY, ssl.SSLCertVerificationError(1, "certificate verify failed")
        ),
        APIConnectionError,
        "cannot connect to api.test:443",
    ),
    (
        aiohttp.ServerDisconnectedError,
        APIConnectionError,
        "the server closed the connection without answering",
    ),
    (
        lambda: aiohttp.ClientOSError(104, "Connection reset by peer"),
        APIConnectionError,
        "ClientOSError: [Errno 104] Connection reset by peer",
    ),
    (
        lambda: aiohttp.ClientConnectionResetError("Cannot write to closing transport"),
        APIConnectionError,
        "Cannot write to closing transport",
    ),
    (
        lambda: aiohttp.ClientConnectionError("Connection closed"),
        APIConnectionError,
        "ClientConnectionError: Connection closed",
    ),
    (
        lambda: aiohttp.ClientPayloadError("Response payload is not completed"),
        APIConnectionError,
        "the answer's body was cut short",
    ),
    (
        lambda: aiohttp.ClientHttpProxyError(_INFO, (), status=407, message="Proxy Auth Required"),
        APIConnectionError,
        "the proxy answered 407 Proxy Auth Required; check HTTPS_PROXY",
    ),
    (
        lambda: aiohttp.ClientResponseError(_INFO, (), status=400, message="Bad status line"),
        APIConnectionError,
        "invalid HTTP answer (Bad status line)",
    ),
    (
        lambda: aiohttp.ServerFingerprintMismatch(b"a" * 32, b"b" * 32, "api.test", 443),
        APIConnectionError,
        "ServerFingerprintMismatch",
    ),
    (lambda: aiohttp.InvalidURL("https://api.test:x"), APIConnectionError, "InvalidURL"),
    (aiohttp.ClientError, APIConnectionError, "failed: ClientError"),
    (
        lambda: aiohttp.ServerTimeoutError("Timeout on reading data from socket"),
        APITimeoutError,
        "timed out (ServerTimeoutError)",
    ),
    (
        lambda: aiohttp.ConnectionTimeoutError("Connection timeout to host"),
        APITimeoutError,
        "timed out: no connection within 10s (the connect limit of timeout=); pass a larger "
        "timeout= to MonicaClient or to the call",
    ),
    (
        lambda: aiohttp.SocketTimeoutError("Timeout on reading data from socket"),
        APITimeoutError,
        "timed out (SocketTimeoutError)",
    ),
    (TimeoutError, APITimeoutError, "timed out after 120s (the timeout of one attempt); pass"),
]


@pytest.mark.parametrize(("make", "expected", "says"), TRANSPORT_ERRORS)
async def test_transport_error_is_mapped_from_the_original(
    mock_http: aioresponses,
    api: MonicaClient,
    make: Callable[[], BaseException],
    expected: type[APIError],
    says: str,
) -> None:
    """Each aiohttp error that can escape a request becomes ours, raised from the original."""
    original = make()
    mock_http.post(ENDPOINT, exception=original)
    with pytest.raises(APIConnectionError) as caught:
        await api.upscale(IMAGE)
    error = caught.value
    assert (expected, original, "POST", ENDPOINT) == (
        type(error),
        error.__cause__,
        error.method,
        error.url,
    )
    assert says in str(error)


async def test_other_exceptions_are_not_disguised(
    mock_http: aioresponses, api: MonicaClient
) -> None:
    """An exception that is no transport error (a bug) propagates unchanged."""
    mock_http.post(ENDPOINT, exception=KeyError("bug"))
    with pytest.raises(KeyError):
        await api.upscale(IMAGE)


@pytest.mark.parametrize(
    "error",
    [
        APIError("base", method="GET", url="https://cdn.test/x.png", attempts=2),
        APIConnectionError("down", attempts=3, request_id="r-1"),
        APITimeoutError("slow"),
        APIResponseValidationError("odd", body="<html>"),
        APIStatusError("teapot", status=418, body="short and stout"),
        RateLimitError("slow down", status=429, code="rate", retry_after=2.5, attempts=4),
        InternalServerError("boom", status=503, request_id="r-2"),
        StorageError("writing s3://b/k.png failed: denied", url="s3://b/k.png", operation="write"),
    ],
)
@pytest.mark.parametrize("roundtrip", [pickle_roundtrip, copy.copy], ids=["pickle", "copy"])
def test_errors_survive_pickle_and_copy(
    error: APIError, roundtrip: Callable[[APIError], APIError]
) -> None:
    """An error crossing a process boundary (or copied) keeps its class, text and attributes."""
    again = roundtrip(error)
    assert (type(error), str(error), vars(error), error.args) == (
        type(again),
        str(again),
        vars(again),
        again.args,
    )


# -- messages that say what to do ------------------------------------------------------


@pytest.mark.parametrize(
    ("make", "timeout", "says"),
    [
        (TimeoutError, 0.5, "timed out after 0.5s (the timeout of one attempt)"),
        (
            lambda: aiohttp.ConnectionTimeoutError("Connection timeout to host"),
            aiohttp.ClientTimeout(total=60, sock_connect=3),
            "timed out: no connection within 3s (the connect limit of timeout=)",
        ),
        (
            lambda: aiohttp.SocketTimeoutError("Timeout on reading data from socket"),
            aiohttp.ClientTimeout(sock_read=7.5),
            "timed out: no data for 7.5s (the sock_read limit of timeout=)",
        ),
        # A limit the timeout does not set: the error's own name.
        (
            lambda: aiohttp.SocketTimeoutError("Timeout on reading data from socket"),
            aiohttp.ClientTimeout(total=60),
            "timed out (SocketTimeoutError)",
        ),
        (TimeoutError, None, "timed out (TimeoutError)"),
    ],
)
def test_a_timeout_names_the_limit_it_hit_and_the_option(
    make: Callable[[], BaseException],
    timeout: aiohttp.ClientTimeout | float | None,
    says: str,
) -> None:
    """With the timeout it ran under, a timeout's message gives the seconds of the limit
    hit; always, the option that raises it."""
    error = map_transport_error(make(), "POST", ENDPOINT, timeout=timeout)
    assert isinstance(error, APITimeoutError)
    assert f"POST {ENDPOINT} {says}; pass a larger timeout= to MonicaClient or to the call" == (
        str(error)
    )


async def test_an_upscale_timeout_names_its_seconds(
    api_key: str, loopback: Callable[..., Any], unlimited: Any
) -> None:
    """An API call that gets no answer in time says after how long, and the option."""

    async def stall(request: Any) -> Any:
        await asyncio.sleep(30)

    base = await loopback(stall)
    async with MonicaClient(
        base_url=base, timeout=0.3, retry=RetryPolicy(max_attempts=1), rate_limit=unlimited
    ) as client:
        with pytest.raises(APITimeoutError) as caught:
            await client.upscale(IMAGE)
    assert f"POST {base}/v1/image/tool/upscale timed out after 0.3s" in str(caught.value)
    assert "pass a larger timeout= to MonicaClient or to the call" in str(caught.value)


async def test_a_refused_connection_names_the_host(api_key: str, unlimited: Any) -> None:
    """Nothing listening on the API's port: the message says refused, and where."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    async with MonicaClient(
        base_url=f"http://127.0.0.1:{port}", retry=RetryPolicy(max_attempts=1), rate_limit=unlimited
    ) as client:
        with pytest.raises(APIConnectionError) as caught:
            await client.upscale(IMAGE)
    assert (
        f"POST http://127.0.0.1:{port}/v1/image/tool/upscale failed: cannot connect to "
        f"127.0.0.1:{port}: connection refused (no server listens on that port)"
    ) == str(caught.value)
