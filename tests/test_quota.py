"""A spent balance: the quota 429, the fake server playing it, and a batch stopping on it.

Monica answers 429 both for sending too fast and for a key whose balance is spent
("You exceeded your current quota, please check your plan and billing details"). The
second is :class:`QuotaExceededError`: never retried, never a pause of the limiter,
and, like a refused key, the end of a batch's sending.
"""

from __future__ import annotations

import asyncio
import copy
import json
import os
import pickle
import signal
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from monica_async import (
    APIStatusError,
    MonicaClient,
    Outcome,
    QuotaExceededError,
    RateLimit,
    RateLimitError,
    RetryPolicy,
)
from monica_async._exceptions import is_quota_exhausted
from monica_async._http import status_error
from monica_async._retry import should_retry
from monica_async.testing import (
    API_PATH,
    QUOTA_CODE,
    QUOTA_MESSAGE,
    QUOTA_PATH,
    RATE_LIMIT_MESSAGE,
    FakeMonicaServer,
    FakeServerFactory,
    Fault,
    documented_limits,
    serve_fake_main,
)

KEY = "test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
REPO = Path(__file__).resolve().parent.parent


def _urls(count: int) -> list[str]:
    return [f"https://example.com/photo-{i}.png" for i in range(count)]


def _kinds(outcomes: list[Outcome]) -> Counter[str]:
    return Counter("ok" if o.ok else type(o.error).__name__ for o in outcomes)


async def _post(session: aiohttp.ClientSession, url: str, body: Any) -> tuple[int, Any, Any]:
    """POST JSON *body*; return the status, the JSON answer and the headers."""
    async with session.post(url, json=body, headers=AUTH) as response:
        return response.status, await response.json(), response.headers


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    """A plain aiohttp session, to talk to the fake server as any client would."""
    async with aiohttp.ClientSession() as client:
        yield client


# -- telling the two 429s apart -------------------------------------------------------------

QUOTA_CASES = [
    ("insufficient_quota", None, True),
    ("INSUFFICIENT_QUOTA", "", True),
    (" Insufficient_Quota ", "whatever the message says", True),
    ("quota_exceeded", None, True),
    (None, QUOTA_MESSAGE, True),
    (None, QUOTA_MESSAGE.upper(), True),
    (None, "you exceeded   your current\nquota.", True),
    ("rate_limit_exceeded", QUOTA_MESSAGE, True),
    (None, "Please check your plan and billing details", True),
    (None, "Insufficient quota for this key", True),
    ("rate_limit_exceeded", RATE_LIMIT_MESSAGE, False),
    (None, "Rate limit reached for requests", False),
    ("too_many_concurrent_requests", "more than 8 at once", False),
    ("quota", "slow down", False),
    (None, None, False),
    ("", "", False),
]


@pytest.mark.parametrize(("code", "message", "quota"), QUOTA_CASES)
def test_quota_is_told_by_code_or_message_in_any_case(
    code: str | None, message: str | None, quota: bool
) -> None:
    """The one matcher says 'balance spent' for the quota code or Monica's wording, any case."""
    assert quota == is_quota_exhausted(code, message)


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        (429, {"error": {"code": QUOTA_CODE, "message": QUOTA_MESSAGE}}, QuotaExceededError),
        (429, {"error": {"code": "Insufficient_Quota", "message": "no"}}, QuotaExceededError),
        (429, {"error": {"message": QUOTA_MESSAGE.lower()}}, QuotaExceededError),
        (429, QUOTA_MESSAGE, QuotaExceededError),
        (429, {"error": {"code": "rate_limit_exceeded", "message": RATE_LIMIT_MESSAGE}},
         RateLimitError),
        (429, "Too Many Requests", RateLimitError),
        (402, {"error": {"code": QUOTA_CODE, "message": QUOTA_MESSAGE}}, APIStatusError),
    ],
)  # fmt: skip
def test_quota_429_becomes_quota_exceeded_error(
    status: int, body: Any, expected: type[APIStatusError]
) -> None:
    """A 429 whose JSON or plain-text body says the quota is spent is a QuotaExceededError."""
    raw = body if isinstance(body, str) else json.dumps(body)
    error = status_error(status, raw, {}, url="https://api.test" + API_PATH)
    assert (expected, status) == (type(error), error.status)


def test_quota_error_is_a_429_status_error_but_not_a_rate_limit_error() -> None:
    """Catching APIStatusError catches it; catching RateLimitError (pacing) does not."""
    error = status_error(429, QUOTA_MESSAGE, {}, url="u")
    assert (True, False, 429) == (
        isinstance(error, APIStatusError),
        isinstance(error, RateLimitError),
        QuotaExceededError.status_code,
    )


@pytest.mark.parametrize("hint", [None, "true"])
def test_quota_error_is_never_worth_a_retry(hint: str | None) -> None:
    """429 is a retried status, yet not when it is the quota, even with x-should-retry."""
    headers = {} if hint is None else {"x-should-retry": hint}
    error = status_error(429, QUOTA_MESSAGE, headers, url="u")
    assert not should_retry(error, RetryPolicy())


@pytest.mark.parametrize(
    "roundtrip",
    [lambda error: pickle.loads(pickle.dumps(error)), copy.copy],
    ids=["pickle", "copy"],
)
def test_quota_error_survives_pickle_and_copy(roundtrip: Any) -> None:
    """Its class, status, code, message and request id come back from pickle and copy."""
    body = json.dumps({"error": {"code": QUOTA_CODE, "message": QUOTA_MESSAGE}})
    again = roundtrip(status_error(429, body, {"x-request-id": "req-1"}, url="u"))
    assert (QuotaExceededError, 429, QUOTA_CODE, QUOTA_MESSAGE, "req-1") == (
        type(again),
        again.status,
        again.code,
        again.message,
        again.request_id,
    )


# -- the fake server's balance -------------------------------------------------------------


async def test_balance_runs_out_after_n_successes(
    fake_monica_factory: FakeServerFactory, session: aiohttp.ClientSession
) -> None:
    """Two 200s, then 429 insufficient_quota in Monica's wording, without Retry-After."""
    server = await fake_monica_factory(process_images=False, quota=2)
    answers = [
        await _post(session, server.upscale_url, {"image": url, "scale": 2}) for url in _urls(3)
    ]
    _, body, headers = answers[2]
    assert ([200, 200, 429], {"code": QUOTA_CODE, "message": QUOTA_MESSAGE}, None, 0, 1) == (
        [a[0] for a in answers],
        body["error"],
        headers.get("Retry-After"),
        server.quota,
        server.stats.quota_exceeded,
    )


async def test_only_a_success_spends_the_balance(
    fake_monica_factory: FakeServerFactory, session: aiohttp.ClientSession
) -> None:
    """A request that fails (an injected 500) gives its unit back."""
    server = await fake_monica_factory(process_images=False, quota=1)
    server.queue_faults([Fault.HTTP_500])
    statuses = [
        (await _post(session, server.upscale_url, {"image": url, "scale": 2}))[0]
        for url in _urls(3)
    ]
    assert [500, 200, 429] == statuses


async def test_requests_in_flight_hold_the_balance(
    fake_monica_factory: FakeServerFactory, session: aiohttp.ClientSession
) -> None:
    """With 2 calls left, 5 requests at once: 2 are admitted, 3 refused at once."""
    server = await fake_monica_factory(process_images=False, quota=2, latency=0.3)
    answers = await asyncio.gather(
        *(_post(session, server.upscale_url, {"image": url, "scale": 2}) for url in _urls(5))
    )
    assert [200, 200, 429, 429, 429] == sorted(a[0] for a in answers)


async def test_balance_is_topped_up_over_http(
    fake_monica_factory: FakeServerFactory, session: aiohttp.ClientSession
) -> None:
    """GET /_fake/quota reads the balance, POST sets it: refused, topped up, accepted."""
    server = await fake_monica_factory(process_images=False, quota=0)
    image = {"image": _urls(1)[0], "scale": 2}
    refused = (await _post(session, server.upscale_url, image))[0]
    topped = await _post(session, server.base_url + QUOTA_PATH, {"quota": 1})
    accepted = (await _post(session, server.upscale_url, image))[0]
    async with session.get(server.base_url + QUOTA_PATH) as response:
        left = await response.json()
    assert (429, 200, {"quota": 1}, 200, {"quota": 0}) == (
        refused,
        topped[0],
        topped[1],
        accepted,
        left,
    )


@pytest.mark.parametrize("body", [{"quota": -1}, {"quota": "5"}, {"calls": 5}, [5], 5])
async def test_bad_top_up_is_400_and_changes_nothing(
    fake_monica_factory: FakeServerFactory, session: aiohttp.ClientSession, body: Any
) -> None:
    """A top-up that is not {"quota": N >= 0 or null} is refused, saying what to send."""
    server = await fake_monica_factory(process_images=False, quota=3)
    status, answer, _ = await _post(session, server.base_url + QUOTA_PATH, body)
    assert (400, "invalid_quota", 3) == (status, answer["error"]["code"], server.quota)


async def test_no_quota_again_after_a_null_top_up(
    fake_monica_factory: FakeServerFactory, session: aiohttp.ClientSession
) -> None:
    """{"quota": null} removes the quota: calls are no longer counted."""
    server = await fake_monica_factory(process_images=False, quota=0)
    await _post(session, server.base_url + QUOTA_PATH, {"quota": None})
    statuses = [
        (await _post(session, server.upscale_url, {"image": url, "scale": 2}))[0]
        for url in _urls(3)
    ]
    assert ([200, 200, 200], None) == (statuses, server.quota)


@pytest.mark.parametrize("quota", [-1, 1.5, "3", True])
def test_quota_knob_is_validated(quota: Any) -> None:
    """The quota is None or a whole number of calls >= 0."""
    with pytest.raises(ValueError, match="quota must be None or an int >= 0"):
        FakeMonicaServer(quota=quota)


def test_quota_counts_survive_the_stats_json() -> None:
    """quota_exceeded and its times go through GET /_fake/stats's JSON and back."""
    from monica_async.testing import FakeServerStats

    stats = FakeServerStats(total=2, quota_exceeded=1, quota_exceeded_times=[1.5])
    assert stats == FakeServerStats.from_json(json.loads(json.dumps(stats.to_json())))


# -- the documented limits preset ----------------------------------------------------------


@pytest.mark.parametrize(
    ("time_scale", "expected"),
    [
        (1.0, {"rate_limit": (10, 60.0), "max_concurrency": 8}),
        (5, {"rate_limit": (10, 12.0), "max_concurrency": 8}),
        (60, {"rate_limit": (10, 1.0), "max_concurrency": 8}),
    ],
)
def test_documented_limits_are_monicas_numbers(time_scale: float, expected: Any) -> None:
    """10 requests a minute and 8 in flight, the window shortened by the time scale."""
    assert expected == documented_limits(time_scale)


@pytest.mark.parametrize("time_scale", [0, -5, float("inf"), float("nan"), True, "5"])
def test_documented_limits_refuse_a_bad_time_scale(time_scale: Any) -> None:
    """The time scale is a finite number > 0."""
    with pytest.raises(ValueError, match="time_scale must be a number > 0"):
        documented_limits(time_scale)


async def test_preset_window_admits_ten_then_answers_monicas_429(
    fake_monica_factory: FakeServerFactory, session: aiohttp.ClientSession
) -> None:
    """In a (time-scaled) window, 10 requests pass and the 11th is 'Rate limit reached'."""
    server = await fake_monica_factory(process_images=False, **documented_limits(time_scale=6))
    answers = [
        await _post(session, server.upscale_url, {"image": url, "scale": 2}) for url in _urls(11)
    ]
    status, body, headers = answers[-1]
    assert ([200] * 10, 429, "rate_limit_exceeded", True, True) == (
        [a[0] for a in answers[:10]],
        status,
        body["error"]["code"],
        body["error"]["message"].startswith(RATE_LIMIT_MESSAGE),
        headers["Retry-After"].isdigit(),
    )


async def test_preset_admits_eight_in_flight(
    fake_monica_factory: FakeServerFactory, session: aiohttp.ClientSession
) -> None:
    """Ten requests at once: 8 are handled, 2 refused for the in-flight cap."""
    server = await fake_monica_factory(
        process_images=False, latency=0.3, **documented_limits(time_scale=6)
    )
    answers = await asyncio.gather(
        *(_post(session, server.upscale_url, {"image": url, "scale": 2}) for url in _urls(10))
    )
    codes = Counter(a[1]["error"]["code"] for a in answers if a[0] == 429)
    assert (8, {"too_many_concurrent_requests": 2}) == (sum(a[0] == 200 for a in answers), codes)


def test_serve_fake_time_scale_needs_the_preset(capsys: pytest.CaptureFixture[str]) -> None:
    """--time-scale alone is a usage error naming --documented-limits."""
    with pytest.raises(SystemExit) as exit_info:
        serve_fake_main(["--time-scale", "5"])
    assert (2, True) == (exit_info.value.code, "--documented-limits" in capsys.readouterr().err)


@pytest.mark.slow
async def test_serve_fake_plays_the_preset_and_the_quota(session: aiohttp.ClientSession) -> None:
    """``serve-fake --documented-limits --time-scale 6 --quota 1``: the balance runs out and
    is topped up over HTTP; then a burst meets the window's 10 requests."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    process = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "monica_async", "serve-fake", "--no-images"),
        *("--documented-limits", "--time-scale", "6", "--quota", "1"),
        cwd=REPO,
        env=env,
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        base_url = (await asyncio.wait_for(process.stdout.readline(), 20)).decode().split()[1]
        image = {"image": _urls(1)[0], "scale": 2}
        statuses = [(await _post(session, base_url + API_PATH, image))[0] for _ in range(2)]
        await _post(session, base_url + QUOTA_PATH, {"quota": 100})
        statuses.append((await _post(session, base_url + API_PATH, image))[0])
        burst = await asyncio.gather(
            *(_post(session, base_url + API_PATH, image) for _ in range(12))
        )
        process.send_signal(signal.SIGINT)
        await asyncio.wait_for(process.wait(), 10)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    # Three requests are in the 10 s window already (the refused one too): 7 more pass.
    assert ([200, 429, 200], 7, 0) == (
        statuses,
        sum(answer[0] == 200 for answer in burst),
        process.returncode,
    )


# -- the library ---------------------------------------------------------------------------


async def test_single_call_raises_quota_error_after_one_attempt(
    fake_monica_factory: FakeServerFactory, unlimited: Any
) -> None:
    """No retry, no pause: one request, QuotaExceededError, the limiter never told of a 429."""
    server = await fake_monica_factory(process_images=False, quota=0)
    async with MonicaClient(KEY, base_url=server.base_url, rate_limit=unlimited) as client:
        with pytest.raises(QuotaExceededError) as caught:
            await client.upscale(_urls(1)[0])
        stats = client.stats
    assert (1, 1, [], 0, 0) == (
        caught.value.attempts,
        server.stats.total,
        unlimited.rate_limited,
        stats.rate_limited,
        stats.retries,
    )


async def test_batch_stops_when_the_balance_runs_out(
    fake_monica_factory: FakeServerFactory,
) -> None:
    """Monica's limits (5x faster), 30 inputs, 5 calls of balance, defaults: 5 ok, 25 quota
    errors, within seconds; nothing reaches the server once the client knows."""
    server = await fake_monica_factory(
        process_images=False, latency=(0.4, 0.8), quota=5, seed=3, **documented_limits(5)
    )
    outcomes: list[Outcome] = []
    first_refusal: float | None = None
    began = time.monotonic()
    async with MonicaClient(KEY, base_url=server.base_url) as client:
        async for outcome in client.upscale_many(_urls(30)):
            outcomes.append(outcome)
            if first_refusal is None and isinstance(outcome.error, QuotaExceededError):
                first_refusal = time.monotonic()
    elapsed = time.monotonic() - began
    assert first_refusal is not None
    late = [t for t in server.stats.request_times if t > first_refusal]
    assert ({"ok": 5, "QuotaExceededError": 25}, [], True) == (
        _kinds(outcomes),
        late,
        elapsed < 15,
    )


async def test_quota_stop_ends_the_wait_for_the_rate_limiter(
    fake_monica_factory: FakeServerFactory,
) -> None:
    """Callers waiting for a slow limiter when the quota error comes end at once, unsent."""
    server = await fake_monica_factory(process_images=False, quota=0)
    began = time.monotonic()
    async with MonicaClient(
        KEY, base_url=server.base_url, rate_limit=RateLimit(2, per=30)
    ) as client:
        outcomes = await client.upscale_all(_urls(10), workers=4)
    elapsed = time.monotonic() - began
    assert ({"QuotaExceededError": 10}, True, True) == (
        _kinds(outcomes),
        server.stats.total <= 2,
        elapsed < 10,
    )


async def test_quota_stop_ends_the_wait_before_a_retry(
    fake_monica_factory: FakeServerFactory,
) -> None:
    """A caller sleeping before a retry (at least 15 s after a 503) is not retried: it gets
    the quota error at once, without another request."""
    server = await fake_monica_factory(process_images=False, quota=1)
    urls = _urls(6)
    # Input 0 fails and sleeps; input 1 spends the balance; input 2 finds none left.
    server.script_faults(urls[0], [Fault.HTTP_503])
    slow = RetryPolicy(initial_backoff=30, max_backoff=30)
    began = time.monotonic()
    async with MonicaClient(KEY, base_url=server.base_url, retry=slow) as client:
        outcomes = await client.upscale_all(urls, workers=2)
    elapsed = time.monotonic() - began
    assert (QuotaExceededError, {"ok": 1, "QuotaExceededError": 5}, 3, True) == (
        type(outcomes[0].error),
        _kinds(outcomes),
        server.stats.total,
        elapsed < 10,
    )


async def test_next_batch_after_a_top_up_is_sent(fake_monica_factory: FakeServerFactory) -> None:
    """The stop belongs to the batch, not the client: after a top-up, a new batch runs."""
    server = await fake_monica_factory(process_images=False, quota=0)
    async with MonicaClient(KEY, base_url=server.base_url) as client:
        before = await client.upscale_all(_urls(4), workers=1)
        server.quota = 4
        after = await client.upscale_all(_urls(4), workers=2)
    assert ({"QuotaExceededError": 4}, {"ok": 4}, 1 + 4) == (
        _kinds(before),
        _kinds(after),
        server.stats.total,
    )
