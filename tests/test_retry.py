"""Retries: what is retried, how long each wait is, and when the client gives up."""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import random
import time
from typing import Any

import aiohttp
import attrs
import pytest
from aiohttp import web
from aiohttp.client_reqrep import ConnectionKey
from aioresponses import aioresponses
from yarl import URL

from monica_async import (
    APIConnectionError,
    APIResponseValidationError,
    APIStatusError,
    APITimeoutError,
    InvalidRequestError,
    MonicaClient,
    RateLimitError,
    RetryPolicy,
    _retry,
    set_testing,
)
from monica_async._retry import is_testing, parse_retry_after, should_retry

ENDPOINT = "https://api.test/v1/image/tool/upscale"
IMAGE = "https://images.test/cat.png"
RESULT = "https://cdn.test/cat@2x.png"
_KEY = ConnectionKey("api.test", 443, True, True, None, None, None, None)
#: The real sleep, before the autouse fixture replaces it with a recorder.
REAL_SLEEP = _retry._sleep


def client(unlimited: Any, **kwargs: Any) -> MonicaClient:
    """A client for the mocked host whose rate limiter never waits."""
    return MonicaClient(base_url="https://api.test", rate_limit=unlimited, **kwargs)


def requests_sent(mock_http: aioresponses) -> int:
    """How many requests reached the mocked endpoint."""
    return len(mock_http.requests.get(("POST", URL(ENDPOINT)), []))


@pytest.fixture(autouse=True)
def _keys(api_key: str, retry_waits: list[float]) -> None:
    """Every test here has a key in the environment and records waits instead of sleeping."""


# -- what is retried -----------------------------------------------------------------


@pytest.mark.parametrize("status", [408, 409, 429, 500, 502, 503, 504])
async def test_transient_statuses_are_retried(
    mock_http: aioresponses, unlimited: Any, status: int
) -> None:
    """408, 409, 429 and 500/502/503/504 are retried; the result counts the attempts."""
    mock_http.post(ENDPOINT, status=status)
    mock_http.post(ENDPOINT, payload={"image": RESULT})
    async with client(unlimited) as api:
        result = await api.upscale(IMAGE)
    assert (2, 2) == (result.attempts, requests_sent(mock_http))


@pytest.mark.parametrize("status", [400, 401, 402, 403, 404, 405, 418, 422, 501, 505, 302])
async def test_other_statuses_are_not_retried(
    mock_http: aioresponses, unlimited: Any, retry_waits: list[float], status: int
) -> None:
    """Other 4xx (and 5xx outside the list, and 3xx) fail after one attempt."""
    mock_http.post(ENDPOINT, status=status, repeat=True)
    async with client(unlimited) as api:
        with pytest.raises(APIStatusError) as caught:
            await api.upscale(IMAGE)
    assert (1, 1, []) == (caught.value.attempts, requests_sent(mock_http), retry_waits)


@pytest.mark.parametrize(
    ("status", "header", "retried"),
    [
        (503, "false", False),
        (503, "FALSE", False),
        (429, "false", False),
        (400, "true", True),
        (422, " True ", True),
        (404, "true", True),
        (503, "maybe", True),
        (400, "maybe", False),
        (500, "", True),
    ],
)
async def test_x_should_retry_overrides_the_status(
    mock_http: aioresponses, unlimited: Any, status: int, header: str, retried: bool
) -> None:
    """x-should-retry: true|false (any case) decides; any other value is ignored."""
    mock_http.post(ENDPOINT, status=status, headers={"x-should-retry": header})
    mock_http.post(ENDPOINT, payload={"image": RESULT})
    async with client(unlimited, retry=RetryPolicy(max_attempts=2)) as api:
        with contextlib.suppress(APIStatusError):
            await api.upscale(IMAGE)
    assert (2 if retried else 1) == requests_sent(mock_http)


async def test_retry_statuses_are_configurable(mock_http: aioresponses, unlimited: Any) -> None:
    """retry_statuses replaces the list of statuses worth a retry."""
    policy = RetryPolicy(retry_statuses=[418])
    mock_http.post(ENDPOINT, status=418)
    mock_http.post(ENDPOINT, status=503)
    async with client(unlimited, retry=policy) as api:
        with pytest.raises(APIStatusError) as caught:
            await api.upscale(IMAGE)
    assert (503, 2) == (caught.value.status, caught.value.attempts)


@pytest.mark.parametrize(
    "failure",
    [
        aiohttp.ServerDisconnectedError(),
        aiohttp.ClientConnectorError(_KEY, ConnectionRefusedError(111, "Connection refused")),
        aiohttp.ClientOSError(104, "Connection reset by peer"),
        aiohttp.ClientPayloadError("Response payload is not completed"),
        aiohttp.SocketTimeoutError("Timeout on reading data from socket"),
        aiohttp.ConnectionTimeoutError("Connection timeout to host"),
        TimeoutError(),
    ],
)
async def test_connection_errors_and_timeouts_are_retried(
    mock_http: aioresponses, unlimited: Any, failure: BaseException
) -> None:
    """A broken connection or a timeout is worth another attempt."""
    mock_http.post(ENDPOINT, exception=failure)
    mock_http.post(ENDPOINT, payload={"image": RESULT})
    async with client(unlimited) as api:
        result = await api.upscale(IMAGE)
    assert 2 == result.attempts


async def test_invalid_200_is_not_retried(
    mock_http: aioresponses, unlimited: Any, retry_waits: list[float]
) -> None:
    """A 200 that breaks the contract is not retried (the call was billed)."""
    mock_http.post(ENDPOINT, body="not json", repeat=True)
    async with client(unlimited) as api:
        with pytest.raises(APIResponseValidationError):
            await api.upscale(IMAGE)
    assert (1, []) == (requests_sent(mock_http), retry_waits)


async def test_cancellation_is_never_retried(
    mock_http: aioresponses, unlimited: Any, retry_waits: list[float]
) -> None:
    """CancelledError propagates from the first attempt, with no retry."""
    mock_http.post(ENDPOINT, exception=asyncio.CancelledError(), repeat=True)
    async with client(unlimited) as api:
        with pytest.raises(asyncio.CancelledError):
            await api.upscale(IMAGE)
    assert (1, []) == (requests_sent(mock_http), retry_waits)


@pytest.mark.parametrize(
    "exc",
    [
        ValueError("bug"),
        asyncio.CancelledError(),
        KeyboardInterrupt(),
        InvalidRequestError("bad input"),
        APIResponseValidationError("odd 200"),
    ],
)
def test_should_retry_refuses_everything_but_transient_api_errors(exc: BaseException) -> None:
    """Only connection errors and retryable statuses are retried: never bugs or cancellation."""
    assert should_retry(exc, RetryPolicy()) is False


# -- how long to wait ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "low", "high"),
    [
        ({"Retry-After": "7"}, 7.0, 7.75),
        ({"Retry-After": "0"}, 0.0, 0.05),
        ({"Retry-After": "3"}, 3.0, 3.35),
        ({"retry-after-ms": "1500"}, 1.5, 1.7),
        ({"retry-after-ms": "250", "Retry-After": "9"}, 0.25, 0.325),
        ({"retry-after-ms": "soon", "Retry-After": "4"}, 4.0, 4.45),
    ],
)
async def test_wait_follows_retry_after(
    mock_http: aioresponses,
    unlimited: Any,
    retry_waits: list[float],
    headers: dict[str, str],
    low: float,
    high: float,
) -> None:
    """The wait is the server's Retry-After (seconds or ms) plus a small positive jitter."""
    mock_http.post(ENDPOINT, status=429, headers=headers)
    mock_http.post(ENDPOINT, payload={"image": RESULT})
    async with client(unlimited) as api:
        await api.upscale(IMAGE)
    [wait] = retry_waits
    assert low <= wait <= high


@pytest.mark.parametrize(("ahead", "low", "high"), [(30, 25.0, 31.0), (-60, 0.0, 0.05)])
async def test_wait_follows_retry_after_http_date(
    mock_http: aioresponses,
    unlimited: Any,
    retry_waits: list[float],
    ahead: int,
    low: float,
    high: float,
) -> None:
    """An HTTP-date Retry-After waits until that moment (at once if it has passed)."""
    when = email.utils.formatdate(time.time() + ahead, usegmt=True)
    mock_http.post(ENDPOINT, status=503, headers={"Retry-After": when})
    mock_http.post(ENDPOINT, payload={"image": RESULT})
    async with client(unlimited) as api:
        await api.upscale(IMAGE)
    [wait] = retry_waits
    assert low <= wait <= high


@pytest.mark.parametrize(("retry_after", "most"), [(0, 0.05), (2, 0.25), (10, 1.0), (40, 1.0)])
@pytest.mark.parametrize("pick", ["low", "high"])
async def test_retry_after_jitter_is_small_and_positive(
    mock_http: aioresponses,
    unlimited: Any,
    retry_waits: list[float],
    monkeypatch: pytest.MonkeyPatch,
    retry_after: int,
    most: float,
    pick: str,
) -> None:
    """The jitter added to Retry-After lies in [0, min(1 s, 10% + 50 ms)]."""
    monkeypatch.setattr(random, "uniform", lambda a, b: a if pick == "low" else b)
    mock_http.post(ENDPOINT, status=429, headers={"Retry-After": str(retry_after)})
    mock_http.post(ENDPOINT, payload={"image": RESULT})
    async with client(unlimited) as api:
        await api.upscale(IMAGE)
    expected = retry_after if pick == "low" else retry_after + most
    assert [pytest.approx(expected)] == retry_waits


@pytest.mark.parametrize(
    ("headers", "policy"),
    [
        ({"Retry-After": "120"}, RetryPolicy()),
        ({"retry-after-ms": "61000"}, RetryPolicy()),
        ({"Retry-After": "6"}, RetryPolicy(max_retry_after=5)),
    ],
)
async def test_retry_after_over_the_cap_fails_at_once(
    mock_http: aioresponses,
    unlimited: Any,
    retry_waits: list[float],
    headers: dict[str, str],
    policy: RetryPolicy,
) -> None:
    """A Retry-After longer than max_retry_after raises the 429 now instead of sleeping."""
    mock_http.post(ENDPOINT, status=429, headers=headers, repeat=True)
    async with client(unlimited, retry=policy) as api:
        with pytest.raises(RateLimitError) as caught:
            await api.upscale(IMAGE)
    assert caught.value.retry_after is not None
    assert caught.value.retry_after > policy.max_retry_after
    assert (1, 1, []) == (caught.value.attempts, requests_sent(mock_http), retry_waits)


async def test_backoff_grows_exponentially_within_jitter_bounds(
    mock_http: aioresponses, unlimited: Any, retry_waits: list[float]
) -> None:
    """Without Retry-After each wait is in [b/2, b], b doubling up to max_backoff."""
    policy = RetryPolicy(max_attempts=6, initial_backoff=1.0, max_backoff=4.0)
    mock_http.post(ENDPOINT, status=503, repeat=True)
    async with client(unlimited, retry=policy) as api:
        with pytest.raises(APIStatusError):
            await api.upscale(IMAGE)
    bounds = [1.0, 2.0, 4.0, 4.0, 4.0]
    assert len(bounds) == len(retry_waits)
    for wait, bound in zip(retry_waits, bounds, strict=True):
        assert bound / 2 <= wait <= bound


async def test_backoff_with_fixed_jitter(
    mock_http: aioresponses,
    unlimited: Any,
    retry_waits: list[float],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The backoff is half the base plus jitter times the other half (equal jitter)."""
    monkeypatch.setattr(random, "random", lambda: 0.5)
    policy = RetryPolicy(max_attempts=5, initial_backoff=1.0, max_backoff=4.0)
    mock_http.post(ENDPOINT, status=503, repeat=True)
    async with client(unlimited, retry=policy) as api:
        with pytest.raises(APIStatusError):
            await api.upscale(IMAGE)
    assert [0.75, 1.5, 3.0, 3.0] == retry_waits


async def test_unparseable_retry_after_falls_back_to_backoff(
    mock_http: aioresponses, unlimited: Any, retry_waits: list[float]
) -> None:
    """A Retry-After that is neither seconds nor a date is ignored."""
    mock_http.post(ENDPOINT, status=503, headers={"Retry-After": "soon"})
    mock_http.post(ENDPOINT, payload={"image": RESULT})
    async with client(unlimited, retry=RetryPolicy(initial_backoff=0.5)) as api:
        await api.upscale(IMAGE)
    [wait] = retry_waits
    assert 0.25 <= wait <= 0.5


@pytest.mark.parametrize(
    ("retry_number", "jitter", "expected"),
    [
        (1, 0.0, 0.25),
        (1, 1.0, 0.5),
        (2, 0.0, 0.5),
        (3, 0.5, 1.5),
        (5, 0.0, 4.0),
        (6, 1.0, 8.0),
        (50, 0.0, 4.0),
        (5000, 0.0, 4.0),
    ],
)
def test_backoff_formula(retry_number: int, jitter: float, expected: float) -> None:
    """backoff(n, jitter): min(max, initial * 2**(n-1)), halved, plus jitter of the half."""
    assert expected == RetryPolicy().backoff(retry_number, jitter)


# -- when to give up -----------------------------------------------------------------


@pytest.mark.parametrize("max_attempts", [1, 2, 3, 5])
async def test_max_attempts_bounds_the_attempts(
    mock_http: aioresponses, unlimited: Any, retry_waits: list[float], max_attempts: int
) -> None:
    """A failure repeated forever is tried max_attempts times; the error says how many."""
    mock_http.post(ENDPOINT, status=503, repeat=True)
    async with client(unlimited, retry=RetryPolicy(max_attempts=max_attempts)) as api:
        with pytest.raises(APIStatusError) as caught:
            await api.upscale(IMAGE)
    assert (max_attempts, max_attempts, max_attempts - 1) == (
        caught.value.attempts,
        requests_sent(mock_http),
        len(retry_waits),
    )


async def test_attempts_on_errors_of_connection_failures(
    mock_http: aioresponses, unlimited: Any
) -> None:
    """A connection error that persists reports every attempt made."""
    mock_http.post(ENDPOINT, exception=aiohttp.ServerDisconnectedError(), repeat=True)
    async with client(unlimited, retry=RetryPolicy(max_attempts=3)) as api:
        with pytest.raises(APIConnectionError) as caught:
            await api.upscale(IMAGE)
    assert 3 == caught.value.attempts
    assert "after 3 attempts" in str(caught.value)


async def test_attempts_on_results(mock_http: aioresponses, unlimited: Any) -> None:
    """A result reached after two failures says it took three attempts."""
    mock_http.post(ENDPOINT, status=503)
    mock_http.post(ENDPOINT, exception=TimeoutError())
    mock_http.post(ENDPOINT, payload={"image": RESULT})
    async with client(unlimited) as api:
        result = await api.upscale(IMAGE)
    assert 3 == result.attempts


async def test_per_call_retry_policy(mock_http: aioresponses, unlimited: Any) -> None:
    """retry=... on a call replaces the client's policy for that call."""
    mock_http.post(ENDPOINT, status=503, repeat=True)
    async with client(unlimited, retry=RetryPolicy(max_attempts=4)) as api:
        with pytest.raises(APIStatusError) as caught:
            await api.upscale(IMAGE, retry=RetryPolicy(max_attempts=2))
    assert (2, 2) == (caught.value.attempts, requests_sent(mock_http))


@pytest.mark.parametrize(("retry_after", "retried"), [("4", True), ("9", True), ("11", False)])
async def test_retry_whose_wait_passes_the_deadline_is_not_made(
    mock_http: aioresponses,
    unlimited: Any,
    retry_waits: list[float],
    retry_after: str,
    retried: bool,
) -> None:
    """A retry is made only if its wait ends before the deadline."""
    mock_http.post(ENDPOINT, status=503, headers={"Retry-After": retry_after})
    mock_http.post(ENDPOINT, payload={"image": RESULT})
    async with client(unlimited, retry=RetryPolicy(deadline=10.5)) as api:
        with contextlib.suppress(APIStatusError):
            await api.upscale(IMAGE)
    assert (2 if retried else 1) == requests_sent(mock_http)


async def test_deadline_counts_time_spent_in_attempts(
    mock_http: aioresponses, unlimited: Any
) -> None:
    """Once the deadline has passed, no further retry starts, attempts left or not."""

    async def slow(url: URL, **kwargs: Any) -> None:
        await asyncio.sleep(1.0)

    policy = RetryPolicy(max_attempts=10, initial_backoff=0.01, deadline=1.6)
    mock_http.post(ENDPOINT, status=503, callback=slow, repeat=True)
    async with client(unlimited, retry=policy) as api:
        with pytest.raises(APIStatusError) as caught:
            await api.upscale(IMAGE)
    assert 2 == caught.value.attempts


async def test_timeout_error_keeps_its_class_after_retries(
    mock_http: aioresponses, unlimited: Any
) -> None:
    """The final error is the last attempt's, here a timeout."""
    mock_http.post(ENDPOINT, exception=TimeoutError(), repeat=True)
    async with client(unlimited, retry=RetryPolicy(max_attempts=2)) as api:
        with pytest.raises(APITimeoutError) as caught:
            await api.upscale(IMAGE)
    assert 2 == caught.value.attempts


# -- set_testing ---------------------------------------------------------------------


@pytest.mark.parametrize("testing", [True, False])
def test_set_testing_is_reported(testing: bool, no_retry_sleep: None) -> None:
    """is_testing() tells what set_testing() last set."""
    set_testing(testing)
    assert testing == is_testing()


async def test_testing_mode_sleeps_zero_seconds(no_retry_sleep: None) -> None:
    """Under set_testing(True) a retry wait of an hour returns at once."""
    await asyncio.wait_for(REAL_SLEEP(3600), timeout=5)


async def test_normal_mode_really_sleeps(no_retry_sleep: None) -> None:
    """Without testing mode a retry wait really waits."""
    set_testing(False)
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(REAL_SLEEP(3600), timeout=0.05)


async def test_testing_mode_still_counts_retries(
    mock_http: aioresponses, unlimited: Any, no_retry_sleep: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under set_testing(True) retries happen and are counted, just without sleeping."""
    monkeypatch.setattr(_retry, "_sleep", REAL_SLEEP)
    mock_http.post(ENDPOINT, status=503, headers={"Retry-After": "50"})
    mock_http.post(ENDPOINT, status=429, headers={"Retry-After": "50"})
    mock_http.post(ENDPOINT, payload={"image": RESULT})
    async with client(unlimited) as api:
        result = await asyncio.wait_for(api.upscale(IMAGE), timeout=30)
    assert 3 == result.attempts


# -- Retry-After parsing ---------------------------------------------------------------

NOW = 1_700_000_000.0
IN_90_S = email.utils.formatdate(NOW + 90, usegmt=True)
AGO_90_S = email.utils.formatdate(NOW - 90, usegmt=True)


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({}, None),
        ({"retry-after": "3"}, 3.0),
        ({"retry-after": " 5 "}, 5.0),
        ({"retry-after": "0"}, 0.0),
        ({"retry-after": "1.5"}, None),
        ({"retry-after": "1_0"}, None),
        ({"retry-after": "1e1"}, None),
        ({"retry-after": "-0"}, None),
        ({"retry-after": "+5"}, None),
        ({"retry-after": "0x10"}, None),
        ({"retry-after": "\u0665"}, None),
        ({"retry-after": "9" * 5000}, None),
        ({"retry-after": "120"}, 120.0),
        ({"retry-after": "-1"}, None),
        ({"retry-after": "nan"}, None),
        ({"retry-after": "inf"}, None),
        ({"retry-after": "soon"}, None),
        ({"retry-after": ""}, None),
        ({"retry-after": IN_90_S}, 90.0),
        ({"retry-after": AGO_90_S}, 0.0),
        ({"retry-after": "Tue, 14 Nov 2023 22:14:20"}, 60.0),
        ({"retry-after-ms": "250"}, 0.25),
        ({"retry-after-ms": "0"}, 0.0),
        ({"retry-after-ms": "250", "retry-after": "9"}, 0.25),
        ({"retry-after-ms": "x", "retry-after": "2"}, 2.0),
        ({"retry-after-ms": "-5", "retry-after": "2"}, 2.0),
        ({"retry-after-ms": "nan"}, None),
        ({"retry-after-ms": "-0"}, None),
        ({"retry-after-ms": "1_000"}, None),
        ({"retry-after-ms": "1e3"}, None),
        ({"retry-after-ms": "12.5"}, 0.0125),
    ],
)
def test_parse_retry_after(headers: dict[str, str], expected: float | None) -> None:
    """retry-after-ms, then Retry-After as RFC 9110 digits or HTTP-date; anything else is
    ignored, Python's looser number syntax (``1_0``, ``1e1``, ``-0``) included."""
    assert expected == parse_retry_after(headers, now=NOW)


def test_parse_retry_after_date_uses_the_clock() -> None:
    """Without an explicit now, an HTTP-date is measured from the current time."""
    ahead = email.utils.formatdate(time.time() + 120, usegmt=True)
    wait = parse_retry_after({"retry-after": ahead})
    assert wait is not None
    assert 110 <= wait <= 121


# -- RetryPolicy ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"max_attempts": 0}, "max_attempts"),
        ({"max_attempts": -1}, "max_attempts"),
        ({"max_attempts": True}, "max_attempts"),
        ({"max_attempts": 2.0}, "max_attempts"),
        ({"initial_backoff": -0.1}, "initial_backoff"),
        ({"initial_backoff": "1"}, "initial_backoff"),
        ({"max_backoff": -1}, "max_backoff"),
        ({"max_retry_after": -1}, "max_retry_after"),
        ({"max_retry_after": False}, "max_retry_after"),
        ({"deadline": 0}, "deadline"),
        ({"deadline": -5}, "deadline"),
        ({"deadline": True}, "deadline"),
    ],
)
def test_retry_policy_validates_its_options(options: dict[str, Any], named: str) -> None:
    """An invalid option raises InvalidRequestError naming it."""
    with pytest.raises(InvalidRequestError, match=named):
        RetryPolicy(**options)


def test_retry_policy_defaults() -> None:
    """The defaults: 4 attempts, 0.5 s doubling to 8 s, 60 s Retry-After cap, 300 s deadline."""
    assert (4, 0.5, 8.0, 60.0, 300.0, frozenset({408, 409, 429, 500, 502, 503, 504})) == (
        attrs.astuple(RetryPolicy())
    )


def test_retry_policy_is_a_frozen_value() -> None:
    """RetryPolicy compares by value, takes any iterable of statuses and cannot change."""
    policy = RetryPolicy(max_attempts=2, deadline=None, retry_statuses=[503, 503])
    assert RetryPolicy(max_attempts=2, deadline=None, retry_statuses={503}) == policy
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        policy.max_attempts = 3  # type: ignore[misc]


def test_retry_policy_is_keyword_only() -> None:
    """Options are keywords: RetryPolicy(3) is refused."""
    with pytest.raises(TypeError):
        RetryPolicy(3)  # type: ignore[misc]


async def test_retrying_reports_each_retried_error() -> None:
    """retrying(on_retry=...) hears every error that leads to a retry, not the final one."""
    failures = [APIConnectionError("one"), RateLimitError("two", status=429)]
    heard: list[BaseException] = []

    async def attempt(number: int) -> str:
        if number <= len(failures):
            raise failures[number - 1]
        return f"done on attempt {number}"

    policy = RetryPolicy(deadline=None)
    result = await _retry.retrying(attempt, policy, what="test", on_retry=heard.append)
    assert ("done on attempt 3", failures) == (result, heard)


@pytest.mark.parametrize("statuses", [["429"], {0}, {600}, "429", {True}, 5, [429.0]])
def test_retry_statuses_must_be_http_statuses(statuses: Any) -> None:
    """retry_statuses takes integers 100 to 599 only, and says so naming the option."""
    with pytest.raises(InvalidRequestError, match="retry_statuses must be HTTP statuses"):
        RetryPolicy(retry_statuses=statuses)


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        (
            RetryPolicy(),
            "HTTP 429 rate_limited: slow down; not retried: the server asked to wait 120s "
            "(Retry-After), longer than RetryPolicy(max_retry_after=60); raise "
            "max_retry_after to wait that long",
        ),
        # Nothing was to be retried anyway: the server's words alone.
        (RetryPolicy(max_attempts=1), "HTTP 429 rate_limited: slow down"),
    ],
)
async def test_a_retry_after_over_the_cap_says_which_option_to_raise(
    loopback: Any, unlimited: Any, policy: RetryPolicy, expected: str
) -> None:
    """A 429 given up on for its Retry-After alone says so: the wait, the limit, the option."""

    async def slow_down(request: web.Request) -> web.Response:
        body = {"error": {"code": "rate_limited", "message": "slow down"}}
        return web.json_response(body, status=429, headers={"Retry-After": "120"})

    base = await loopback(slow_down)
    async with MonicaClient(base_url=base, rate_limit=unlimited, retry=policy) as api:
        with pytest.raises(RateLimitError) as caught:
            await api.upscale(IMAGE)
    assert expected == str(caught.value)
