"""MonicaClient: options, lifecycle, the request it sends, results, stats, logs and secrets."""

from __future__ import annotations

import json
import logging
import platform
import re
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import attrs
import pytest
from aioresponses import aioresponses
from aioresponses.core import RequestCall
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

import monica_async
from monica_async import (
    USE_CLIENT_DEFAULT,
    APIConnectionError,
    InvalidRequestError,
    MonicaClient,
    MonicaError,
    Outcome,
    RetryPolicy,
    UpscaleResult,
)
from monica_async._config import DEFAULT_TIMEOUT

ENDPOINT = "https://api.test/v1/image/tool/upscale"
IMAGE = "https://images.test/cat.png"
RESULT = "https://cdn.test/cat@2x.png"
#: A PNG as far as downloads check one: its signature and its end chunk.
PNG = b"\x89PNG\r\n\x1a\n" + bytes(32) + b"\x00\x00\x00\x00IEND\xaeB`\x82"


def calls(mock_http: aioresponses, url: str = ENDPOINT) -> list[RequestCall]:
    """The requests the mock received for POST *url*."""
    return list(mock_http.requests.get(("POST", URL(url)), []))


def client(**kwargs: Any) -> MonicaClient:
    """A client for the mocked API host."""
    kwargs.setdefault("base_url", "https://api.test")
    return MonicaClient(**kwargs)


@pytest.fixture
def sessions(monkeypatch: pytest.MonkeyPatch) -> list[aiohttp.ClientSession]:
    """Record every ``aiohttp.ClientSession`` created while the test runs."""
    created: list[aiohttp.ClientSession] = []
    real = aiohttp.ClientSession

    def tracking(*args: Any, **kwargs: Any) -> aiohttp.ClientSession:
        session = real(*args, **kwargs)
        created.append(session)
        return session

    monkeypatch.setattr(aiohttp, "ClientSession", tracking)
    return created


# -- the API key ---------------------------------------------------------------------


async def test_api_key_argument_is_sent_as_bearer(mock_http: aioresponses) -> None:
    """An api_key argument is sent as ``Authorization: Bearer <key>``."""
    mock_http.post(ENDPOINT, payload={"image": RESULT})
    async with client(api_key="from-argument") as api:
        await api.upscale(IMAGE)
    assert "Bearer from-argument" == calls(mock_http)[0].kwargs["headers"]["Authorization"]


async def test_api_key_comes_from_environment(mock_http: aioresponses, api_key: str) -> None:
    """Without an api_key argument, MONICA_API_KEY is used."""
    mock_http.post(ENDPOINT, payload={"image": RESULT})
    async with client() as api:
        await api.upscale(IMAGE)
    assert f"Bearer {api_key}" == calls(mock_http)[0].kwargs["headers"]["Authorization"]


async def test_api_key_argument_wins_over_environment(
    mock_http: aioresponses, api_key: str
) -> None:
    """An api_key argument takes precedence over MONICA_API_KEY."""
    mock_http.post(ENDPOINT, payload={"image": RESULT})
    async with client(api_key="explicit") as api:
        await api.upscale(IMAGE)
    assert "Bearer explicit" == calls(mock_http)[0].kwargs["headers"]["Authorization"]


@pytest.mark.parametrize("env_value", [None, "", "   "])
def test_missing_api_key_raises_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, env_value: str | None
) -> None:
    """No key (unset, empty or blank variable) fails at construction, naming MONICA_API_KEY."""
    if env_value is None:
        monkeypatch.delenv("MONICA_API_KEY", raising=False)
    else:
        monkeypatch.setenv("MONICA_API_KEY", env_value)
    with pytest.raises(MonicaError, match="MONICA_API_KEY"):
        MonicaClient()


@pytest.mark.parametrize("argument", ["", "  \t"])
def test_empty_api_key_argument_raises(api_key: str, argument: str) -> None:
    """An empty api_key argument is refused even when the environment has a key."""
    with pytest.raises(MonicaError, match="api_key"):
        MonicaClient(argument)


# -- the base URL --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argument", "env_value", "expected"),
    [
        (None, None, "https://openapi.monica.im/v1/image/tool/upscale"),
        (None, "https://env.test", "https://env.test/v1/image/tool/upscale"),
        ("https://arg.test", "https://env.test", "https://arg.test/v1/image/tool/upscale"),
        ("https://arg.test/", None, "https://arg.test/v1/image/tool/upscale"),
        ("https://proxy.test/monica/", None, "https://proxy.test/monica/v1/image/tool/upscale"),
        ("http://127.0.0.1:8080", None, "http://127.0.0.1:8080/v1/image/tool/upscale"),
    ],
)
async def test_endpoint_is_base_url_plus_upscale_path(
    mock_http: aioresponses,
    monkeypatch: pytest.MonkeyPatch,
    api_key: str,
    argument: str | None,
    env_value: str | None,
    expected: str,
) -> None:
    """base_url comes from the argument, else MONICA_BASE_URL, else the real service."""
    if env_value is not None:
        monkeypatch.setenv("MONICA_BASE_URL", env_value)
    mock_http.post(expected, payload={"image": RESULT})
    async with MonicaClient(base_url=argument) as api:
        await api.upscale(IMAGE)
    assert 1 == len(calls(mock_http, expected))


@pytest.mark.parametrize(
    "base_url",
    [
        "openapi.monica.im",
        "ftp://api.test",
        "/v1",
        "https://",
        "https://api.test/?region=eu",
        "https://api.test#v1",
    ],
)
def test_base_url_must_be_absolute_http(api_key: str, base_url: str) -> None:
    """A base_url that is not an absolute http(s) URL is refused, naming the option."""
    with pytest.raises(InvalidRequestError, match="base_url"):
        MonicaClient(base_url=base_url)


@pytest.mark.parametrize(
    "base_url",
    ["http://api.test", "http://10.0.0.1:8080", "HTTP://api.test", "http://127.0.0.1.nip.io"],
)
def test_plain_http_refused_for_remote_hosts(api_key: str, base_url: str) -> None:
    """Plain http to a non-loopback host is refused and the fix is named."""
    with pytest.raises(InvalidRequestError, match="allow_insecure_http"):
        MonicaClient(base_url=base_url)


def test_plain_http_allowed_when_asked(api_key: str) -> None:
    """allow_insecure_http=True permits plain http to any host."""
    api = MonicaClient(base_url="http://api.test", allow_insecure_http=True)
    assert "http://api.test" == api.base_url


@pytest.mark.parametrize(
    "base_url",
    ["http://127.0.0.1:8080", "http://127.5.6.7", "http://localhost:1", "http://[::1]:8080"],
)
def test_plain_http_allowed_for_loopback(api_key: str, base_url: str) -> None:
    """Plain http to this machine needs no opt-in: nothing leaves the host."""
    assert base_url == MonicaClient(base_url=base_url).base_url


# -- other options -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"max_concurrency": 0}, "max_concurrency"),
        ({"max_concurrency": -3}, "max_concurrency"),
        ({"max_concurrency": True}, "max_concurrency"),
        ({"max_concurrency": 2.5}, "max_concurrency"),
        ({"retry": 3}, "retry"),
        ({"timeout": 0}, "timeout"),
        ({"timeout": -1.0}, "timeout"),
        ({"timeout": "30"}, "timeout"),
        ({"timeout": True}, "timeout"),
        ({"rate_limit": object()}, "rate_limit"),
        ({"headers": {"authorization": "Bearer other"}}, "Authorization"),
        ({"max_download_bytes": 0}, "max_download_bytes"),
        ({"max_download_bytes": "64MB"}, "max_download_bytes"),
        ({"max_download_bytes": True}, "max_download_bytes"),
    ],
)
def test_invalid_options_are_refused(api_key: str, options: dict[str, Any], named: str) -> None:
    """Each invalid option raises InvalidRequestError naming it."""
    with pytest.raises(InvalidRequestError, match=named):
        client(**options)


def test_invalid_request_error_is_a_value_error() -> None:
    """InvalidRequestError can be caught as ValueError as well as MonicaError."""
    assert issubclass(InvalidRequestError, ValueError)
    assert issubclass(InvalidRequestError, MonicaError)


def test_repr_shows_settings_but_never_the_key(api_key: str) -> None:
    """repr(client) names the base URL and state and never contains the API key."""
    text = repr(client())
    assert api_key not in text
    assert "https://api.test" in text
    assert "state=unopened" in text


# -- lifecycle -----------------------------------------------------------------------


def test_construction_outside_a_loop_creates_no_session(
    api_key: str, sessions: list[aiohttp.ClientSession]
) -> None:
    """A client can be built in sync code: the session waits for the running loop."""
    client()
    assert [] == sessions


async def test_one_session_reused_by_every_call(
    mock_http: aioresponses, api_key: str, sessions: list[aiohttp.ClientSession]
) -> None:
    """The client creates one session on first use and reuses it for every call."""
    mock_http.post(ENDPOINT, payload={"image": RESULT}, repeat=True)
    api = client()
    assert [] == sessions
    for _ in range(3):
        await api.upscale(IMAGE)
    assert 1 == len(sessions)
    await api.aclose()


async def test_async_with_closes_the_session(
    mock_http: aioresponses, api_key: str, sessions: list[aiohttp.ClientSession]
) -> None:
    """Leaving ``async with`` closes the session the client created."""
    mock_http.post(ENDPOINT, payload={"image": RESULT})
    async with client() as api:
        await api.upscale(IMAGE)
    assert (True, True) == (api.closed, sessions[0].closed)


async def test_aclose_twice_is_harmless(
    mock_http: aioresponses, api_key: str, sessions: list[aiohttp.ClientSession]
) -> None:
    """aclose() closes the session; a second aclose() does nothing."""
    mock_http.post(ENDPOINT, payload={"image": RESULT})
    api = client()
    await api.upscale(IMAGE)
    await api.aclose()
    await api.aclose()
    assert (True, True) == (api.closed, sessions[0].closed)


async def test_aclose_of_an_unused_client(
    api_key: str, sessions: list[aiohttp.ClientSession]
) -> None:
    """Closing a client that never made a call creates nothing and succeeds."""
    api = client()
    await api.aclose()
    assert (True, []) == (api.closed, sessions)


async def _use_upscale(api: MonicaClient) -> object:
    return await api.upscale(IMAGE)


async def _use_download(api: MonicaClient) -> object:
    return await api.download(RESULT, "never-written.png")


async def _use_upscale_many(api: MonicaClient) -> object:
    return api.upscale_many([IMAGE])


async def _use_upscale_all(api: MonicaClient) -> object:
    return await api.upscale_all([IMAGE])


async def _use_async_with(api: MonicaClient) -> object:
    async with api:
        return None


@pytest.mark.parametrize(
    "use",
    [_use_upscale, _use_download, _use_upscale_many, _use_upscale_all, _use_async_with],
)
async def test_closed_client_refuses_to_work(
    mock_http: aioresponses, api_key: str, use: Callable[[MonicaClient], Awaitable[object]]
) -> None:
    """Every use of a closed client raises a MonicaError that says it is closed."""
    api = client()
    await api.aclose()
    with pytest.raises(MonicaError, match="closed"):
        await use(api)
    assert {} == mock_http.requests


async def test_injected_session_is_used_and_never_closed(
    mock_http: aioresponses, api_key: str, sessions: list[aiohttp.ClientSession]
) -> None:
    """A session passed in serves the calls and stays open after the client closes."""
    mock_http.post(ENDPOINT, payload={"image": RESULT})
    async with aiohttp.ClientSession() as session:
        async with client(session=session) as api:
            await api.upscale(IMAGE)
        assert (False, 1) == (session.closed, len(calls(mock_http)))
        assert [session] == sessions


def test_no_finalizer() -> None:
    """The client has no __del__ (which would schedule work on a possibly closed loop)."""
    assert not hasattr(MonicaClient, "__del__")


@pytest.mark.parametrize("max_concurrency", [1, 16, 64, 500])
async def test_connector_limit_is_never_below_concurrency(
    mock_http: aioresponses,
    api_key: str,
    sessions: list[aiohttp.ClientSession],
    max_concurrency: int,
) -> None:
    """The connection pool of the client's session holds at least max_concurrency."""
    mock_http.post(ENDPOINT, payload={"image": RESULT})
    async with client(max_concurrency=max_concurrency) as api:
        await api.upscale(IMAGE)
        assert sessions[0].connector is not None
        assert sessions[0].connector.limit >= max_concurrency


# -- the request ---------------------------------------------------------------------


async def test_request_body_is_image_and_scale(mock_http: aioresponses, api_key: str) -> None:
    """The body is exactly the spec's JSON object: image and scale, nothing else."""
    mock_http.post(ENDPOINT, payload={"image": RESULT})
    async with client() as api:
        await api.upscale(IMAGE, scale=2)
    assert {"image": IMAGE, "scale": 2} == json.loads(calls(mock_http)[0].kwargs["data"])


async def test_request_headers(mock_http: aioresponses, api_key: str) -> None:
    """Auth, JSON content negotiation and the library's User-Agent are sent."""
    mock_http.post(ENDPOINT, payload={"image": RESULT})
    async with client() as api:
        await api.upscale(IMAGE)
    headers = calls(mock_http)[0].kwargs["headers"]
    expected_agent = (
        f"monica-async/{monica_async.__version__} aiohttp/{aiohttp.__version__} "
        f"python/{platform.python_version()}"
    )
    assert {
        "Authorization": f"Bearer {api_key}",
        "Content-Type": "application/json",
        "Accept": "application/json",
        "User-Agent": expected_agent,
    } == {name: headers[name] for name in ("Authorization", "Content-Type", "Accept", "User-Agent")}
    assert re.fullmatch(r"monica-async/\S+ aiohttp/\S+ python/\S+", headers["User-Agent"])


async def test_extra_headers_are_sent(mock_http: aioresponses, api_key: str) -> None:
    """headers=... adds headers to every API request."""
    mock_http.post(ENDPOINT, payload={"image": RESULT})
    async with client(headers={"X-Team": "imaging"}) as api:
        await api.upscale(IMAGE)
    assert "imaging" == calls(mock_http)[0].kwargs["headers"]["X-Team"]


async def test_callers_user_agent_wins(mock_http: aioresponses, api_key: str) -> None:
    """A User-Agent in headers=... (any case) replaces the library's, not joins it."""
    mock_http.post(ENDPOINT, payload={"image": RESULT})
    async with client(headers={"user-agent": "my-app/1.0"}) as api:
        await api.upscale(IMAGE)
    sent = calls(mock_http)[0].kwargs["headers"]
    assert ["my-app/1.0"] == [value for name, value in sent.items() if name.lower() == "user-agent"]


async def test_redirects_are_not_followed(mock_http: aioresponses, api_key: str) -> None:
    """API requests are sent with allow_redirects=False (the key must not travel on)."""
    mock_http.post(ENDPOINT, payload={"image": RESULT})
    async with client() as api:
        await api.upscale(IMAGE)
    assert calls(mock_http)[0].kwargs["allow_redirects"] is False


@pytest.mark.parametrize(
    ("client_timeout", "call_timeout", "expected"),
    [
        (DEFAULT_TIMEOUT, USE_CLIENT_DEFAULT, DEFAULT_TIMEOUT),
        (5, USE_CLIENT_DEFAULT, aiohttp.ClientTimeout(total=5.0, connect=5.0)),
        (60, USE_CLIENT_DEFAULT, aiohttp.ClientTimeout(total=60.0, connect=10.0)),
        (
            aiohttp.ClientTimeout(total=7, sock_read=3),
            USE_CLIENT_DEFAULT,
            aiohttp.ClientTimeout(total=7, sock_read=3),
        ),
        (None, USE_CLIENT_DEFAULT, aiohttp.ClientTimeout(total=None)),
        (30, 2, aiohttp.ClientTimeout(total=2.0, connect=2.0)),
        (30, 2.5, aiohttp.ClientTimeout(total=2.5, connect=2.5)),
        (30, None, aiohttp.ClientTimeout(total=None)),
        (30, aiohttp.ClientTimeout(sock_read=1), aiohttp.ClientTimeout(sock_read=1)),
    ],
)
async def test_timeout_per_client_and_per_call(
    mock_http: aioresponses,
    api_key: str,
    client_timeout: Any,
    call_timeout: Any,
    expected: aiohttp.ClientTimeout,
) -> None:
    """The attempt's ClientTimeout is the call's when given, else the client's."""
    mock_http.post(ENDPOINT, payload={"image": RESULT})
    async with client(timeout=client_timeout) as api:
        await api.upscale(IMAGE, timeout=call_timeout)
    assert expected == calls(mock_http)[0].kwargs["timeout"]


@pytest.mark.parametrize("timeout", [0, -1, "5", True])
async def test_invalid_per_call_timeout_is_refused(
    mock_http: aioresponses, api_key: str, timeout: Any
) -> None:
    """An invalid per-call timeout raises InvalidRequestError and sends nothing."""
    async with client() as api:
        with pytest.raises(InvalidRequestError, match="timeout"):
            await api.upscale(IMAGE, timeout=timeout)
    assert {} == mock_http.requests


# -- results -------------------------------------------------------------------------


async def test_result_fields(mock_http: aioresponses, api_key: str) -> None:
    """A 200 becomes an UpscaleResult with the URL, what was sent and how it went."""
    mock_http.post(ENDPOINT, payload={"image": RESULT}, headers={"x-request-id": "req-42"})
    async with client() as api:
        result = await api.upscale(IMAGE)
    assert (RESULT, IMAGE, 2, 1, "req-42") == (
        result.url,
        result.source,
        result.scale,
        result.attempts,
        result.request_id,
    )
    assert result.elapsed >= 0


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"x-request-id": "a-1"}, "a-1"),
        ({"Request-Id": "b-2"}, "b-2"),
        ({"x-amzn-RequestId": "c-3"}, "c-3"),
        ({"x-trace-id": "d-4"}, "d-4"),
        ({"x-request-id": "", "x-trace-id": "e-5"}, "e-5"),
        ({}, None),
    ],
)
async def test_request_id_is_kept(
    mock_http: aioresponses, api_key: str, headers: dict[str, str], expected: str | None
) -> None:
    """The server's request id header, whichever name it uses, lands on the result."""
    mock_http.post(ENDPOINT, payload={"image": RESULT}, headers=headers)
    async with client() as api:
        result = await api.upscale(IMAGE)
    assert expected == result.request_id


def test_result_is_frozen() -> None:
    """UpscaleResult is an immutable value."""
    result = UpscaleResult.from_response(
        {"image": RESULT}, source=IMAGE, scale=2, attempts=1, elapsed=0.5, request_id=None
    )
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        result.url = "https://elsewhere.test/x.png"  # type: ignore[misc]


def test_result_named_constructor() -> None:
    """UpscaleResult.from_response builds the value from a decoded 200 body."""
    expected = UpscaleResult(
        url=RESULT, source=IMAGE, scale=2, attempts=3, elapsed=1.5, request_id="r"
    )
    actual = UpscaleResult.from_response(
        {"image": RESULT}, source=IMAGE, scale=2, attempts=3, elapsed=1.5, request_id="r"
    )
    assert expected == actual


@pytest.mark.parametrize(
    ("outcome", "ok"),
    [
        (
            Outcome(index=0, source=IMAGE, result=UpscaleResult(url=RESULT, source=IMAGE, scale=2)),
            True,
        ),
        (Outcome(index=1, source=IMAGE, error=MonicaError("boom")), False),
    ],
)
def test_outcome_ok(outcome: Outcome, ok: bool) -> None:
    """Outcome.ok tells a result from an error."""
    assert ok == outcome.ok


def test_outcome_result_of_a_failed_input_raises_and_names_the_fix() -> None:
    """Reading ``result`` of a failed input raises AttributeError caused by its error."""
    error = MonicaError("boom")
    outcome = Outcome(index=3, source=IMAGE, error=error)

    with pytest.raises(AttributeError, match=r"input 3 .* failed with MonicaError") as raised:
        outcome.result  # noqa: B018

    assert "test outcome.ok first" in str(raised.value)
    assert error is raised.value.__cause__
    assert not hasattr(outcome, "result")


def test_outcome_error_of_a_successful_input_raises_and_names_the_fix() -> None:
    """Reading ``error`` of a successful input raises AttributeError."""
    result = UpscaleResult(url=RESULT, source=IMAGE, scale=2)
    outcome = Outcome(index=0, source=IMAGE, result=result)

    with pytest.raises(AttributeError, match=r"input 0 .* succeeded, .* test outcome.ok first"):
        outcome.error  # noqa: B018


@pytest.mark.parametrize(
    "given",
    [
        {},
        {"result": UpscaleResult(url=RESULT, source=IMAGE, scale=2), "error": MonicaError("x")},
    ],
)
def test_outcome_takes_exactly_one_of_result_and_error(given: dict[str, Any]) -> None:
    """An Outcome with neither or both is refused."""
    with pytest.raises(InvalidRequestError, match="exactly one of result= and error="):
        Outcome(index=0, source=IMAGE, **given)


def test_outcome_repr_shows_what_it_holds() -> None:
    """The repr names the result or the error, not the field that is absent."""
    result = UpscaleResult(url=RESULT, source=IMAGE, scale=2)
    error = MonicaError("boom")

    assert [
        f"Outcome(index=0, source={IMAGE!r}, result={result!r})",
        f"Outcome(index=1, source={IMAGE!r}, error=MonicaError('boom'))",
    ] == [
        repr(Outcome(index=0, source=IMAGE, result=result)),
        repr(Outcome(index=1, source=IMAGE, error=error)),
    ]


# -- stats ---------------------------------------------------------------------------


async def test_stats_count_calls_attempts_and_failures(
    mock_http: aioresponses, api_key: str, unlimited: Any, retry_waits: list[float]
) -> None:
    """stats counts calls, attempts, retries, 429s and final errors by class."""
    mock_http.post(ENDPOINT, status=503)
    mock_http.post(ENDPOINT, status=429, headers={"Retry-After": "1"})
    mock_http.post(ENDPOINT, payload={"image": RESULT})
    mock_http.post(ENDPOINT, status=400)
    async with client(rate_limit=unlimited) as api:
        await api.upscale(IMAGE)
        with pytest.raises(MonicaError):
            await api.upscale(IMAGE)
        stats = api.stats
    assert (2, 1, 1, 4, 2, 1, 0, {"BadRequestError": 1}) == (
        stats.requests,
        stats.succeeded,
        stats.failed,
        stats.attempts,
        stats.retries,
        stats.rate_limited,
        stats.in_flight,
        stats.failures,
    )


async def test_rate_limiter_hears_429s_and_successes(
    mock_http: aioresponses, api_key: str, unlimited: Any, retry_waits: list[float]
) -> None:
    """A 429 is reported to the rate limiter with its Retry-After; a 200 as a success."""
    mock_http.post(ENDPOINT, status=429, headers={"Retry-After": "3"})
    mock_http.post(ENDPOINT, payload={"image": RESULT})
    async with client(rate_limit=unlimited) as api:
        await api.upscale(IMAGE)
    assert ([3.0], 1) == (unlimited.rate_limited, unlimited.successes)


# -- logging -------------------------------------------------------------------------


def _records(caplog: pytest.LogCaptureFixture, level: int) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "monica_async" and r.levelno == level]


async def test_debug_line_per_attempt(
    mock_http: aioresponses,
    api_key: str,
    caplog: pytest.LogCaptureFixture,
    retry_waits: list[float],
) -> None:
    """Each attempt logs one DEBUG line: method, path, input, status, elapsed, attempt number."""
    caplog.set_level(logging.DEBUG, logger="monica_async")
    mock_http.post(ENDPOINT, status=503)
    mock_http.post(ENDPOINT, payload={"image": RESULT})
    async with client() as api:
        await api.upscale(IMAGE)
    messages = [r.getMessage() for r in _records(caplog, logging.DEBUG)]
    assert 2 == len(messages)
    line = r"POST /v1/image/tool/upscale for https://images.test/cat.png -> {} in \d+\.\d{{3}}s "
    assert re.fullmatch(line.format(503) + r"\(attempt 1\)", messages[0])
    assert re.fullmatch(line.format(200) + r"\(attempt 2\)", messages[1])


async def test_debug_line_for_an_attempt_without_answer(
    mock_http: aioresponses, api_key: str, caplog: pytest.LogCaptureFixture
) -> None:
    """An attempt that got no answer still logs its DEBUG line."""
    caplog.set_level(logging.DEBUG, logger="monica_async")
    mock_http.post(ENDPOINT, exception=aiohttp.ServerDisconnectedError())
    async with client(retry=RetryPolicy(max_attempts=1)) as api:
        with pytest.raises(APIConnectionError):
            await api.upscale(IMAGE)
    [message] = [r.getMessage() for r in _records(caplog, logging.DEBUG)]
    assert message.startswith(f"POST /v1/image/tool/upscale for {IMAGE} -> no answer in ")


async def test_info_line_per_retry(
    mock_http: aioresponses,
    api_key: str,
    caplog: pytest.LogCaptureFixture,
    retry_waits: list[float],
) -> None:
    """Each retry logs one INFO line with its reason and its delay."""
    caplog.set_level(logging.DEBUG, logger="monica_async")
    mock_http.post(ENDPOINT, status=503)
    mock_http.post(ENDPOINT, exception=aiohttp.ServerDisconnectedError())
    mock_http.post(ENDPOINT, payload={"image": RESULT})
    async with client() as api:
        await api.upscale(IMAGE)
    messages = [r.getMessage() for r in _records(caplog, logging.INFO)]
    expected = [
        f"upscale {IMAGE}: retrying in {retry_waits[0]:.2f}s after HTTP 503 (attempt 1 of 4)",
        f"upscale {IMAGE}: retrying in {retry_waits[1]:.2f}s after APIConnectionError "
        "(attempt 2 of 4)",
    ]
    assert expected == messages


@pytest.mark.parametrize(
    ("image", "shown"),
    [
        (
            "https://user:pw@bucket.test/cat.png?X-Amz-Signature=abc123&X-Amz-Credential=AKIA#f",
            "https://bucket.test/cat.png",
        ),
        ("https://bucket.test:8443/a%20b.png?token=t0k3n", "https://bucket.test:8443/a%20b.png"),
        ("https://[2001:db8::1]/cat.png?sig=s", "https://[2001:db8::1]/cat.png"),
    ],
)
async def test_logs_drop_credentials_and_query_of_urls(
    mock_http: aioresponses,
    api_key: str,
    caplog: pytest.LogCaptureFixture,
    retry_waits: list[float],
    tmp_path: Path,
    image: str,
    shown: str,
) -> None:
    """A presigned URL's signature, query or userinfo never reaches a log record."""
    caplog.set_level(logging.DEBUG)
    mock_http.post(ENDPOINT, status=503)
    mock_http.post(ENDPOINT, payload={"image": image})
    mock_http.get(image, status=503)
    mock_http.get(image, body=PNG, content_type="image/png")
    async with client() as api:
        result = await api.upscale(image)
        await api.download(result, tmp_path / "cat.png")
    messages = [r.getMessage() for r in caplog.records if r.name == "monica_async"]
    assert [f"upscale {shown}", f"download {shown}"] == [
        m.split(": retrying")[0] for m in messages if "retrying" in m
    ]
    for secret in ("pw", "abc123", "AKIA", "t0k3n", "sig=s", "#f"):
        assert secret not in caplog.text


# -- secrets -------------------------------------------------------------------------


def _chain(exc: BaseException | None) -> list[BaseException]:
    seen: list[BaseException] = []
    while exc is not None and exc not in seen:
        seen.append(exc)
        exc = exc.__cause__ or exc.__context__
    return seen


async def test_key_never_in_any_log_record(
    mock_http: aioresponses,
    api_key: str,
    caplog: pytest.LogCaptureFixture,
    unlimited: Any,
    no_retry_sleep: None,
) -> None:
    """Through retries, a success and a final failure, no record at any level holds the key."""
    caplog.set_level(logging.DEBUG)
    mock_http.post(ENDPOINT, status=503, body='{"error": {"code": "busy", "message": "later"}}')
    mock_http.post(ENDPOINT, status=429, headers={"Retry-After": "0"})
    mock_http.post(ENDPOINT, exception=aiohttp.ServerDisconnectedError())
    mock_http.post(ENDPOINT, payload={"image": RESULT})
    mock_http.post(ENDPOINT, status=500, repeat=True)
    async with client(rate_limit=unlimited) as api:
        await api.upscale(IMAGE)
        with pytest.raises(MonicaError) as caught:
            await api.upscale(IMAGE)
    logging.getLogger("monica_async").exception("final", exc_info=caught.value)
    assert len(caplog.records) >= 9
    for record in caplog.records:
        assert api_key not in record.getMessage()
        assert api_key not in repr(record.args)
        assert api_key not in (logging.Formatter().format(record))
    assert api_key not in caplog.text


def _aiohttp_parse_error(url: URL, **kwargs: Any) -> None:
    """Fail the way aiohttp does on a garbled answer: the request's headers on the error."""
    headers = CIMultiDictProxy(CIMultiDict(kwargs["headers"]))
    info = aiohttp.RequestInfo(url, "POST", headers, url)
    raise aiohttp.ClientResponseError(info, (), status=400, message="Bad status line")


@pytest.mark.parametrize(
    "failure",
    [
        {"callback": _aiohttp_parse_error},
        {"status": 401, "body": '{"error": {"code": "invalid_api_key", "message": "bad key"}}'},
        {"status": 500, "body": "boom"},
        {"status": 200, "body": "not json"},
        {"exception": aiohttp.ClientConnectionError("connection reset")},
        {"exception": TimeoutError()},
    ],
)
async def test_key_never_in_errors_or_their_chain(
    mock_http: aioresponses, api_key: str, failure: dict[str, Any]
) -> None:
    """No error raised, nor any exception it chains to, shows the key in str or repr."""
    mock_http.post(ENDPOINT, **failure)
    async with client(retry=RetryPolicy(max_attempts=1)) as api:
        with pytest.raises(MonicaError) as caught:
            await api.upscale(IMAGE)
    for exc in _chain(caught.value):
        assert api_key not in str(exc)
        assert api_key not in repr(exc)


def test_use_client_default_repr() -> None:
    """The per-call sentinel reads as its public name in signatures and docs."""
    assert "USE_CLIENT_DEFAULT" == repr(USE_CLIENT_DEFAULT)


# -- batches (the engine itself is tested in test_batch.py) ----------------------------


async def test_upscale_all_returns_one_outcome_per_input_in_order(
    mock_http: aioresponses, api_key: str
) -> None:
    """upscale_all gives outcomes in input order: results, and errors for bad inputs."""
    mock_http.post(ENDPOINT, payload={"image": RESULT}, repeat=True)
    images = [IMAGE, "not a url", IMAGE + "?b"]
    async with client() as api:
        outcomes = await api.upscale_all(images, workers=2)
    assert ([0, 1, 2], images, [True, False, True]) == (
        [o.index for o in outcomes],
        [o.source for o in outcomes],
        [o.ok for o in outcomes],
    )
    assert isinstance(outcomes[1].error, InvalidRequestError)


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"scale": 3}, "scale"),
        ({"workers": 0}, "workers"),
        ({"workers": True}, "workers"),
        ({"buffer": 0}, "buffer"),
        ({"buffer": 1.5}, "buffer"),
    ],
)
async def test_upscale_many_checks_its_options_at_once(
    mock_http: aioresponses, api_key: str, options: dict[str, Any], named: str
) -> None:
    """Invalid batch options raise when upscale_many is called, before any request."""
    async with client() as api:
        with pytest.raises(InvalidRequestError, match=named):
            api.upscale_many([IMAGE], **options)
    assert {} == mock_http.requests


# -- TLS -----------------------------------------------------------------------------


def test_tls_verification_is_never_disabled_in_the_source() -> None:
    """No module of the library turns certificate checks off."""
    package = Path(monica_async.__file__).parent
    pattern = re.compile(
        r"ssl\s*=\s*False|verify_ssl|CERT_NONE|check_hostname\s*=\s*False|_create_unverified"
    )
    offenders = [
        f"{path.name}:{number}"
        for path in sorted(package.glob("*.py"))
        for number, line in enumerate(path.read_text("utf-8").splitlines(), start=1)
        if pattern.search(line)
    ]
    assert [] == offenders


async def test_requests_use_default_tls_settings(
    mock_http: aioresponses, api_key: str, tmp_path: Path
) -> None:
    """Neither API calls nor downloads pass an ssl option: aiohttp verifies certificates."""
    mock_http.post(ENDPOINT, payload={"image": RESULT})
    mock_http.get(RESULT, body=PNG, content_type="image/png")
    async with client() as api:
        result = await api.upscale(IMAGE)
        await api.download(result, tmp_path / "out.png")
    sent = [call.kwargs for calls_ in mock_http.requests.values() for call in calls_]
    assert (2, []) == (len(sent), [kwargs for kwargs in sent if "ssl" in kwargs])
