"""RedisRateLimit: one limit shared through a real redis-server.

The script's arithmetic is checked on the exact start times it stores (microseconds
on the Redis clock); the limiter's behaviour with waits and generous bounds only.
"""

from __future__ import annotations

import asyncio
import bisect
import itertools
import json
import logging
import math
import os
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs
import pytest
import redis.asyncio
import redis.exceptions
from aiohttp import web
from conftest import API_KEY

from monica_async import (
    InvalidRequestError,
    MonicaClient,
    MonicaError,
    RateLimit,
    RateLimiter,
    RateLimitError,
    RateLimiterUnavailableError,
    RetryPolicy,
)
from monica_async._redis import DEFAULT_PREFIX, SCRIPT, RedisRateLimit, _Clock, _Script
from monica_async.testing import FakeMonicaServer, Fault

if TYPE_CHECKING:
    from conftest_redis import RedisServer

pytest_plugins = ["conftest_redis"]
pytestmark = pytest.mark.redis

US = 1_000_000

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def unique_key() -> str:
    """A fresh limit name, so that no two tests share a budget."""
    return f"test-{uuid.uuid4().hex[:12]}"


def script_for(
    client: redis.asyncio.Redis,
    requests: int,
    per: float,
    *,
    burst: int | None = None,
    margin: float | None = None,
    key: str | None = None,
    peer: str = "test-peer",
) -> _Script:
    """The Lua script bound to fresh keys, called directly (no limiter around it)."""
    tag = f"{DEFAULT_PREFIX}{{{key or unique_key()}}}"
    return _Script(
        client=client,
        keys=(f"{tag}:state", f"{tag}:log", f"{tag}:peers", f"{tag}:calls"),
        shape=RateLimit(requests, per, burst=burst, margin=margin),
        peer=peer,
        noscript=redis.exceptions.NoScriptError,
    )


async def slot_of(script: _Script, member: str) -> float:
    """The start time booked for *member*, in microseconds of the Redis clock."""
    score = await script.client.zscore(script.keys[1], member)
    assert score is not None, f"{member} is not booked"
    return float(score)


@pytest.fixture
async def limits(redis_server: RedisServer) -> AsyncIterator[Callable[..., RedisRateLimit]]:
    """Make RedisRateLimits on the test's redis-server; all are closed after the test."""
    made: list[RedisRateLimit] = []

    def make(requests: int, per: float = 1.0, **options: Any) -> RedisRateLimit:
        options.setdefault("key", "shared")
        limit = RedisRateLimit(options.pop("url", redis_server.url), requests, per, **options)
        made.append(limit)
        return limit

    yield make
    for limit in made:
        await limit.aclose()


def ok_handler(counter: list[web.Request]) -> Handler:
    """A Monica stand-in that accepts every request and counts them."""

    async def handle(request: web.Request) -> web.StreamResponse:
        counter.append(request)
        return web.json_response({"image": "https://cdn.example/out.png"})

    return handle


# -- the script's arithmetic ----------------------------------------------------------


async def test_a_full_burst_starts_at_once(redis_client: redis.asyncio.Redis) -> None:
    """With burst = requests, the first window's starts need no wait."""
    script = script_for(redis_client, 5, 10.0, burst=5)

    waits = [(await script.book(f"m{i}")).wait for i in range(5)]

    assert [0.0] * 5 == waits


@pytest.mark.parametrize(("margin", "expected_margin"), [(None, 0.1), (0.25, 0.25), (0.0, 0.0)])
async def test_a_full_window_books_the_next_start_one_window_and_margin_later(
    redis_client: redis.asyncio.Redis, margin: float | None, expected_margin: float
) -> None:
    """The (requests+1)-th start is booked exactly ``per + margin`` after the first."""
    script = script_for(redis_client, 5, 10.0, burst=5, margin=margin)
    for i in range(5):
        await script.book(f"m{i}")

    sixth = await script.book("m5")

    expected = await slot_of(script, "m0") + (10.0 + expected_margin) * US
    assert expected == await slot_of(script, "m5")
    assert 9.0 + expected_margin < sixth.wait <= 10.0 + expected_margin


async def test_gcra_spaces_starts_once_the_burst_is_spent(
    redis_client: redis.asyncio.Redis,
) -> None:
    """requests=4 per 4 s with burst=2: two starts at once, then one per second exactly."""
    script = script_for(redis_client, 4, 4.0, burst=2)
    for i in range(4):
        await script.book(f"m{i}")
    first = await slot_of(script, "m0")

    slots = [await slot_of(script, f"m{i}") - first for i in (2, 3)]

    assert [1.0 * US, 2.0 * US] == slots


async def test_burst_one_spaces_every_start_evenly(redis_client: redis.asyncio.Redis) -> None:
    """burst=1 books start n at exactly ``n * per / requests`` after the first."""
    script = script_for(redis_client, 3, 3.0, burst=1)
    for i in range(3):
        await script.book(f"m{i}")
    first = await slot_of(script, "m0")

    offsets = [await slot_of(script, f"m{i}") - first for i in range(3)]

    assert [0.0, 1.0 * US, 2.0 * US] == offsets


async def test_a_long_idle_period_restores_the_whole_burst(
    redis_client: redis.asyncio.Redis,
) -> None:
    """After a window of silence the next burst starts at once again."""
    script = script_for(redis_client, 3, 0.2, burst=3)
    for i in range(3):
        await script.book(f"old{i}")
    await asyncio.sleep(0.35)

    waits = [(await script.book(f"new{i}")).wait for i in range(3)]

    assert [0.0] * 3 == waits


async def test_the_log_keeps_only_the_last_window(redis_client: redis.asyncio.Redis) -> None:
    """Starts older than one window are trimmed: after a quiet window, a booking leaves
    only itself in the log, however many came before."""
    script = script_for(redis_client, 3, 0.1)
    for i in range(12):
        booking = await script.book(f"m{i}")
        await asyncio.sleep(booking.wait)
    await asyncio.sleep(0.2)

    await script.book("last")

    assert [b"last"] == await redis_client.zrange(script.keys[1], 0, -1)


async def test_a_pause_delays_the_next_booking_to_its_end(
    redis_client: redis.asyncio.Redis,
) -> None:
    """After a 429 with Retry-After, the next start is booked exactly at the pause's end."""
    script = script_for(redis_client, 5, 10.0)
    left, _, _ = await script.pause(0.5, u=0.0)

    booking = await script.book("m0")

    not_before = float(await redis_client.hget(script.keys[0], "nb") or "nan")
    assert not_before == await slot_of(script, "m0")
    assert 0.4 < left <= 0.5
    assert 0.3 < booking.wait <= 0.5


async def test_a_pause_only_ever_moves_later(redis_client: redis.asyncio.Redis) -> None:
    """A shorter Retry-After heard after a longer one neither shortens the pause nor
    counts as a move."""
    script = script_for(redis_client, 5, 10.0)
    await script.pause(2.0, u=0.0)
    before = await redis_client.hget(script.keys[0], "nb")

    left, epoch, _ = await script.pause(0.5, u=0.0)

    assert before == await redis_client.hget(script.keys[0], "nb")
    assert 1 == epoch
    assert left > 1.5


async def test_the_default_pause_doubles_with_each_429_in_a_row(
    redis_client: redis.asyncio.Redis,
) -> None:
    """Without Retry-After the pause is 1 s, then 2 s, then 4 s."""
    script = script_for(redis_client, 5, 10.0)

    lefts = [round((await script.pause(None, u=0.0))[0]) for _ in range(3)]

    assert [1, 2, 4] == lefts


async def test_a_success_ends_the_streak_of_429s(redis_client: redis.asyncio.Redis) -> None:
    """After a success the default pause starts again from 1 s (the shared pause stays)."""
    script = script_for(redis_client, 5, 10.0)
    await script.pause(None, u=0.0)
    await script.pause(None, u=0.0)
    await script.success()
    await redis_client.hset(script.keys[0], "nb", 0)  # let the earlier pause end now

    left, _, streak = await script.pause(None, u=0.0)

    assert (1, 1) == (round(left), streak)


async def test_after_a_pause_starts_resume_paced_not_as_a_burst(
    redis_client: redis.asyncio.Redis,
) -> None:
    """The burst allowance starts empty after a pause: one interval between starts."""
    script = script_for(redis_client, 5, 5.0, burst=5)
    await script.pause(0.2, u=0.0)

    await script.book("m0")
    await script.book("m1")

    assert 1.0 * US == await slot_of(script, "m1") - await slot_of(script, "m0")


async def test_a_held_booking_stands_when_the_pause_did_not_move(
    redis_client: redis.asyncio.Redis,
) -> None:
    """A caller confirming before its start keeps its slot: nothing new is booked and
    the answer is the time left until that slot."""
    script = script_for(redis_client, 1, 10.0)
    await script.book("m0")
    held = await script.book("m1")

    confirmed = await script.book("m2", held)

    assert "m1" == confirmed.member
    assert held.wait - 1.0 < confirmed.wait <= held.wait
    assert [b"m0", b"m1"] == await redis_client.zrange(script.keys[1], 0, -1)


async def test_a_held_booking_that_is_gone_is_booked_again(
    redis_client: redis.asyncio.Redis,
) -> None:
    """A held slot missing from the log (keys expired) is replaced by a new booking."""
    script = script_for(redis_client, 5, 10.0)
    held = await script.book("m0")
    await redis_client.delete(*script.keys)

    replaced = await script.book("m1", held)

    assert ("m1", 0.0) == (replaced.member, replaced.wait)


def test_the_clock_trusts_the_tightest_bracket() -> None:
    """Of two readings, the one with the shorter round trip sets the offset."""
    clock = _Clock()
    clock.observe(sent=10.0, received=10.2, redis_us=5 * US)  # read somewhere in 0.2 s
    clock.observe(sent=11.0, received=11.002, redis_us=6 * US)  # within 2 ms

    assert 11.001 == pytest.approx(clock.local(6 * US), abs=1e-9)
    assert 0.002 == pytest.approx(clock.rtt)


def test_the_clock_forgets_a_bracket_a_stepped_clock_contradicts() -> None:
    """A reading that cannot fit the best bracket (a clock was stepped) replaces it."""
    clock = _Clock()
    clock.observe(sent=10.0, received=10.001, redis_us=5 * US)
    clock.observe(sent=11.0, received=11.01, redis_us=7 * US)  # Redis jumped 1 s ahead

    assert 11.005 == pytest.approx(clock.local(7 * US), abs=1e-9)


def test_the_clock_renews_an_old_bracket() -> None:
    """After a minute, a looser but recent reading replaces the tightest one."""
    clock = _Clock()
    clock.observe(sent=10.0, received=10.001, redis_us=5 * US)
    clock.observe(sent=100.0, received=100.01, redis_us=95 * US)

    assert 0.01 == pytest.approx(clock.rtt)


async def test_slots_map_onto_this_process_clock(redis_client: redis.asyncio.Redis) -> None:
    """A slot's local due time is its wait after the Redis reading, give or take a round
    trip: a late reply does not delay the start."""
    script = script_for(redis_client, 1, 10.0)
    await script.book("m0")
    before = time.monotonic()

    slot = await script.book("m1")

    assert before + slot.wait - 0.1 < slot.due <= time.monotonic() + slot.wait


async def test_a_held_booking_is_moved_behind_a_new_pause(
    redis_client: redis.asyncio.Redis,
) -> None:
    """A pause set while a caller slept gives its slot back and books one after the pause."""
    script = script_for(redis_client, 5, 10.0, burst=5)
    held = await script.book("m0")
    await script.pause(1.0, u=0.0)

    moved = await script.book("m1", held)

    assert "m1" == moved.member
    assert 0.8 < moved.wait <= 1.0
    assert await redis_client.zscore(script.keys[1], "m0") is None


async def test_a_limiter_holding_a_slot_ahead_still_counts_as_a_sharer(
    redis_client: redis.asyncio.Redis,
) -> None:
    """A limiter whose last call is older than a window, but whose booked slot is not,
    is still counted among the limiters sharing the key."""
    key = unique_key()
    early, ahead, last = (script_for(redis_client, 1, 0.3, key=key, peer=p) for p in "abc")
    await early.book("m0")
    await ahead.book("m1")  # booked one window and margin ahead
    await asyncio.sleep(0.4)

    seen = await last.book("m2")

    assert 2 == seen.peers


async def test_a_booking_counts_the_limiters_that_called_since_a_time_it_names(
    redis_client: redis.asyncio.Redis,
) -> None:
    """With ``since``, a booking also answers how many limiters called Redis at or after
    that time, itself included. A limiter that last called before it is not counted
    there, though it still counts as a sharer while it holds a slot ahead."""
    key = unique_key()
    earlier, asking = (script_for(redis_client, 1, 10.0, key=key, peer=p) for p in "ab")
    await earlier.book("m0")
    await earlier.book("m1")  # 10 s ahead
    await asyncio.sleep(0.01)
    seconds, micros = await redis_client.time()

    answer = await asking.book("m2", since=seconds * US + micros)

    assert (2, 1) == (answer.peers, answer.back)


async def test_cancel_gives_a_slot_back(redis_client: redis.asyncio.Redis) -> None:
    """A cancelled booking leaves the log, so that the next caller may take its place."""
    script = script_for(redis_client, 1, 10.0)
    await script.book("m0")
    await script.book("m1")

    assert await script.cancel("m1")
    assert [b"m0"] == await redis_client.zrange(script.keys[1], 0, -1)


async def test_times_keep_microsecond_precision(redis_client: redis.asyncio.Redis) -> None:
    """Stored times are exact to the microsecond (Lua's own number printing keeps 14 digits)."""
    script = script_for(redis_client, 1, 1.0, burst=1, margin=0.0)
    await script.book("m0")
    await script.book("m1")

    gap = await slot_of(script, "m1") - await slot_of(script, "m0")

    assert 1.0 * US == gap


async def test_a_call_with_the_wrong_arguments_fails_loudly(
    redis_client: redis.asyncio.Redis,
) -> None:
    """The script refuses a call it does not understand instead of limiting wrongly."""
    with pytest.raises(redis.exceptions.ResponseError, match="bad call"):
        await redis_client.eval(SCRIPT, 4, "a", "b", "c", "d", "book", 1, 1, 0, 1)


# -- keys -----------------------------------------------------------------------------


async def test_every_key_is_set_to_expire(limits: Callable[..., RedisRateLimit]) -> None:
    """Each write gives every key a TTL of about one window past what it holds."""
    limit = limits(2, 0.5)
    await limit.acquire()
    await limit.on_rate_limited(0.4, time.monotonic())
    client = redis.asyncio.Redis.from_url(limit.redis)  # type: ignore[arg-type]
    try:
        ttls = {key.rsplit(":", 1)[1]: await client.pttl(key) for key in limit.keys}
    finally:
        await client.aclose()

    assert set(ttls) == {"state", "log", "peers", "calls"}
    assert all(0 < ttl <= 2000 for ttl in ttls.values()), ttls
    assert ttls["state"] > 500  # the pause and one window after it


async def test_nothing_is_left_one_window_after_the_pause(
    limits: Callable[..., RedisRateLimit], redis_client: redis.asyncio.Redis
) -> None:
    """Once the pause and one window have passed, Redis holds no key of the limit."""
    limit = limits(2, 0.3)
    for _ in range(3):
        await limit.acquire()
    await limit.on_rate_limited(0.3, time.monotonic())

    await asyncio.sleep(0.3 + 0.3 + 0.5)

    assert 0 == await redis_client.exists(*limit.keys)
    assert [] == [key async for key in redis_client.scan_iter()]


async def test_key_names_name_the_limit_never_the_api_key(
    limits: Callable[..., RedisRateLimit],
    redis_client: redis.asyncio.Redis,
    loopback: Callable[[Handler], Awaitable[str]],
) -> None:
    """After real traffic, every key is ``<prefix>{<key>}:...`` and no key, field or
    member holds the API key."""
    base_url = await loopback(ok_handler([]))
    limit = limits(5, 1.0, key="monica:prod")
    async with MonicaClient(API_KEY, base_url=base_url, rate_limit=limit) as client:
        await client.upscale_all([f"https://img.example/{i}.png" for i in range(3)])
        await limit.on_rate_limited(0.1, time.monotonic())

    keys = sorted([key.decode() async for key in redis_client.scan_iter()])
    stored = [*keys]
    for key in keys:
        if key.endswith(":state"):
            stored += [str(v) for v in (await redis_client.hgetall(key)).items()]
        else:
            stored += [str(m) for m in await redis_client.zrange(key, 0, -1)]

    expected = [
        f"monica-async:ratelimit:{{monica:prod}}:{name}"
        for name in ("calls", "log", "peers", "state")
    ]
    assert expected == keys
    assert [] == [text for text in stored if API_KEY in text]


async def test_the_prefix_is_configurable(
    limits: Callable[..., RedisRateLimit], redis_client: redis.asyncio.Redis
) -> None:
    """``prefix`` replaces the default prefix of every key."""
    limit = limits(5, 1.0, key="k", prefix="myapp:limits:")

    await limit.acquire()

    keys = sorted([key.decode() async for key in redis_client.scan_iter()])
    expected = [f"myapp:limits:{{k}}:{name}" for name in ("calls", "log", "peers", "state")]
    assert expected == keys


# -- the script in Redis: SCRIPT LOAD once, EVALSHA, reload after NOSCRIPT -------------


async def script_calls(client: redis.asyncio.Redis) -> dict[str, int]:
    """How many times Redis ran SCRIPT LOAD and EVALSHA (INFO commandstats)."""
    stats = await client.info("commandstats")
    return {
        name: stats.get(f"cmdstat_{name}", {}).get("calls", 0)
        for name in ("script|load", "evalsha", "eval")
    }


async def test_the_script_is_loaded_once_then_run_by_its_sha(
    limits: Callable[..., RedisRateLimit], redis_client: redis.asyncio.Redis
) -> None:
    """Ten acquisitions without waiting: one SCRIPT LOAD, ten EVALSHA, no EVAL."""
    limit = limits(10, 1.0, burst=10)

    for _ in range(10):
        await limit.acquire()

    assert {"script|load": 1, "evalsha": 10, "eval": 0} == await script_calls(redis_client)


async def test_the_script_is_reloaded_after_script_flush(
    limits: Callable[..., RedisRateLimit], redis_client: redis.asyncio.Redis
) -> None:
    """SCRIPT FLUSH in the middle: the next acquisition reloads the script and books."""
    limit = limits(10, 1.0)
    await limit.acquire()
    await redis_client.script_flush()

    await limit.acquire()

    assert 2 == await redis_client.zcard(limit.keys[1])
    assert 2 == (await script_calls(redis_client))["script|load"]


# -- sharing --------------------------------------------------------------------------


async def test_limiters_on_the_same_key_share_one_window(
    limits: Callable[..., RedisRateLimit],
) -> None:
    """Two limiters (two clients) on one key: the third start waits for the next window."""
    first, second = limits(2, 0.5, burst=2), limits(2, 0.5, burst=2)
    await first.acquire()
    await second.acquire()

    waited = await first.acquire()

    assert 0.4 < waited < 5.0


async def test_limiters_on_different_keys_do_not_share(
    limits: Callable[..., RedisRateLimit],
) -> None:
    """Another key is another budget."""
    first, second = limits(1, 30.0, key="a"), limits(1, 30.0, key="b")
    await first.acquire()

    waited = await second.acquire()

    assert waited < 5.0


async def test_a_429_heard_by_one_limiter_pauses_the_others(
    limits: Callable[..., RedisRateLimit],
) -> None:
    """The pause lives in Redis: a limiter that never saw the 429 waits for it too."""
    heard, other = limits(100, 1.0), limits(100, 1.0)

    await heard.on_rate_limited(0.5, time.monotonic())
    waited = await other.acquire()

    assert 0.4 < waited < 5.0


async def test_a_sleeper_queues_behind_a_pause_set_while_it_slept(
    limits: Callable[..., RedisRateLimit],
) -> None:
    """A caller that booked before the 429 does not start inside the pause."""
    heard, sleeper = limits(1, 0.4), limits(1, 0.4)
    await heard.acquire()
    waiting = asyncio.create_task(sleeper.acquire())  # booked ~0.4 s ahead
    await asyncio.sleep(0.1)

    await heard.on_rate_limited(1.0, time.monotonic())
    waited = await waiting

    assert 1.0 < waited < 6.0


async def test_a_cancelled_acquisition_gives_its_slot_back(
    limits: Callable[..., RedisRateLimit], redis_client: redis.asyncio.Redis
) -> None:
    """Cancelling a caller that sleeps until its slot removes the slot from the log."""
    limit = limits(1, 10.0)
    await limit.acquire()
    waiting = asyncio.create_task(limit.acquire())
    await asyncio.sleep(0.2)
    assert 2 == await redis_client.zcard(limit.keys[1])

    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    await asyncio.sleep(0.2)

    assert 1 == await redis_client.zcard(limit.keys[1])


async def test_a_client_with_a_redis_limit_shares_its_429_pause(
    limits: Callable[..., RedisRateLimit],
    loopback: Callable[[Handler], Awaitable[str]],
    redis_client: redis.asyncio.Redis,
) -> None:
    """MonicaClient reports a 429 to the limiter, which writes the pause to Redis."""

    async def handle(request: web.Request) -> web.StreamResponse:
        return web.json_response(
            {"error": {"code": "rate_limit_exceeded", "message": "slow down"}},
            status=429,
            headers={"Retry-After": "3"},
        )

    limit = limits(10, 1.0)
    base_url = await loopback(handle)
    once = RetryPolicy(max_attempts=1)
    async with MonicaClient(API_KEY, base_url=base_url, rate_limit=limit, retry=once) as client:
        with pytest.raises(RateLimitError):
            await client.upscale("https://img.example/a.png")

    state = await redis_client.hgetall(limit.keys[0])
    assert (b"1", b"1") == (state[b"epoch"], state[b"streak"])
    assert 2.0 < await redis_client.pttl(limit.keys[0]) / 1000 < 10.0


async def test_a_success_after_429s_ends_the_shared_streak(
    limits: Callable[..., RedisRateLimit], redis_client: redis.asyncio.Redis
) -> None:
    """The first success after a 429 resets the streak in Redis for every sharer."""
    limit = limits(10, 1.0)
    await limit.on_rate_limited(None, time.monotonic())
    assert b"1" == await redis_client.hget(limit.keys[0], "streak")

    await limit.on_success(time.monotonic())

    assert b"0" == await redis_client.hget(limit.keys[0], "streak")


async def test_successes_without_a_streak_cost_no_redis_call(
    limits: Callable[..., RedisRateLimit], redis_client: redis.asyncio.Redis
) -> None:
    """on_success talks to Redis only to end a streak of 429s."""
    limit = limits(10, 1.0, burst=10)
    await limit.acquire()
    before = await script_calls(redis_client)

    for _ in range(5):
        await limit.on_success(time.monotonic())

    assert before == await script_calls(redis_client)


# -- Redis unavailable ----------------------------------------------------------------


async def test_fail_closed_raises_and_names_the_option(
    limits: Callable[..., RedisRateLimit], dead_redis_url: str
) -> None:
    """on_unavailable='fail': acquire raises RateLimiterUnavailableError with the fix."""
    limit = limits(5, 1.0, url=dead_redis_url, on_unavailable="fail")

    with pytest.raises(RateLimiterUnavailableError, match="on_unavailable='local'"):
        await limit.acquire()


async def test_fail_closed_sends_no_request_and_every_input_gets_the_error(
    limits: Callable[..., RedisRateLimit],
    dead_redis_url: str,
    loopback: Callable[[Handler], Awaitable[str]],
) -> None:
    """In a batch, each input's outcome is the limiter's error and the server hears nothing."""
    seen: list[web.Request] = []
    base_url = await loopback(ok_handler(seen))
    limit = limits(5, 1.0, url=dead_redis_url, on_unavailable="fail")
    urls = [f"https://img.example/{i}.png" for i in range(6)]

    async with MonicaClient(API_KEY, base_url=base_url, rate_limit=limit) as client:
        outcomes = await client.upscale_all(urls)

    assert list(range(6)) == [outcome.index for outcome in outcomes]
    assert all(isinstance(o.error, RateLimiterUnavailableError) for o in outcomes)
    assert [] == seen


async def test_local_fallback_keeps_limiting_and_warns_once(
    limits: Callable[..., RedisRateLimit],
    dead_redis_url: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """on_unavailable='local': a local limit at fallback_fraction of the rate, one warning."""
    limit = limits(4, 0.5, burst=4, url=dead_redis_url, fallback_fraction=0.5)
    caplog.set_level(logging.INFO, logger="monica_async")

    waits = [await limit.acquire() for _ in range(3)]

    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert 1 == len(warnings)
    assert "local limit of 2 per 0.5s" in warnings[0].getMessage()
    assert waits[0] < 0.5 < waits[2] < 5.0  # 2 per window: the third waits a window


async def test_the_default_fallback_shares_the_rate_among_the_limiters_seen(
    limits: Callable[..., RedisRateLimit],
    redis_server: RedisServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Without fallback_fraction, each of the N limiters that its last booking saw on
    the key takes 1/N."""
    first, second = limits(10, 5.0), limits(10, 5.0)
    await second.acquire()
    await first.acquire()  # sees two limiters
    redis_server.stop()
    caplog.set_level(logging.WARNING, logger="monica_async")

    await first.acquire()

    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert 1 == len(warnings)
    assert "local limit of 5 per 5.0s" in warnings[0]


async def test_without_ever_reaching_redis_the_fallback_takes_a_quarter(
    limits: Callable[..., RedisRateLimit],
    dead_redis_url: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """With no count of the sharers, the fallback assumes four."""
    limit = limits(20, 5.0, url=dead_redis_url)
    caplog.set_level(logging.WARNING, logger="monica_async")

    await limit.acquire()

    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert 1 == len(warnings)
    assert "local limit of 5 per 5.0s" in warnings[0]


async def test_the_fallback_counts_the_most_limiters_seen_lately_not_the_last_answer(
    limits: Callable[..., RedisRateLimit],
    redis_server: RedisServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A sharer missing from the last answer (idle for a window) is still counted: the
    fallback takes 1/N for the most limiters seen over the last seconds."""
    first, second = limits(10, 0.3), limits(10, 0.3)
    await second.acquire()
    await first.acquire()  # sees two limiters
    await asyncio.sleep(0.6)
    await first.acquire()  # sees itself only
    redis_server.stop()
    caplog.set_level(logging.WARNING, logger="monica_async")

    await first.acquire()

    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert 1 == len(warnings)
    assert "local limit of 5 per 0.3s" in warnings[0]


async def test_the_fallback_counts_the_starts_booked_in_redis_just_before(
    limits: Callable[..., RedisRateLimit], redis_server: RedisServer
) -> None:
    """Two starts booked in Redis, then Redis goes away: the local limit of 4 per window
    lets two more start in that window, not four."""
    limit = limits(4, 1.0, burst=4)
    await limit.acquire()
    await limit.acquire()
    redis_server.stop()

    waits = [await limit.acquire() for _ in range(3)]

    assert waits[1] < 0.5 < waits[2] < 5.0


async def test_redis_is_tried_again_at_least_every_few_tenths_of_a_second(
    limits: Callable[..., RedisRateLimit], dead_redis_url: str
) -> None:
    """While Redis stays away, the back-off stops growing at half a second (plus jitter),
    so that a limiter finds Redis soon after it is back."""
    client = redis.asyncio.Redis.from_url(dead_redis_url)
    tries: list[float] = []
    original = client.script_load

    async def counting_load(script: str) -> Any:
        tries.append(time.monotonic())
        return await original(script)

    client.script_load = counting_load  # type: ignore[method-assign,assignment]
    limit = limits(1000, 1.0, burst=1000, url=client)
    began = time.monotonic()
    try:
        while time.monotonic() - began < 4.5:
            await limit.acquire()
            await asyncio.sleep(0.02)
    finally:
        await client.aclose()

    gaps = [later - earlier for earlier, later in itertools.pairwise(tries)]
    assert len(tries) >= 6
    assert max(gaps) < 1.2


async def redis_back(limit: RedisRateLimit, redis_server: RedisServer) -> float:
    """Start Redis again and acquire until *limit* has found it; return the last wait."""
    redis_server.start()
    for _ in range(100):
        waited = await limit.acquire()
        if limit.available:
            return waited
        await asyncio.sleep(0.05)
    raise AssertionError("the limiter did not find Redis again")


async def test_back_on_redis_a_limiter_keeps_its_local_share_while_others_may_be_away(
    limits: Callable[..., RedisRateLimit], redis_server: RedisServer
) -> None:
    """Redis restarted empty would let 4 start at once; a limiter that fell back to 2 of
    the 4 keeps to 2 per window while the other limiter it saw is not back, and books
    every start in Redis too."""
    first, second = limits(4, 1.0, burst=4), limits(4, 1.0, burst=4)
    await second.acquire()
    await first.acquire()  # sees two limiters
    redis_server.stop()
    await first.acquire()  # falls back to 2 per window
    await asyncio.sleep(1.2)  # that window is over

    waits = [await redis_back(first, redis_server)]
    waits += [await first.acquire() for _ in range(3)]

    client = redis.asyncio.Redis.from_url(redis_server.url)
    try:
        booked = await client.zcard(first.keys[1])
    finally:
        await client.aclose()
    assert waits[1] < 0.5 < waits[2] < 5.0
    assert 2 == booked  # the last window's two starts (the first two are trimmed by now)


async def test_once_every_limiter_seen_is_back_the_whole_limit_applies_a_window_later(
    limits: Callable[..., RedisRateLimit],
    redis_server: RedisServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """When Redis counts as many limiters as before the outage, each of them has booked
    through Redis again: one window later Redis has seen every start of a window and
    the local share is lifted."""
    first, second = limits(4, 1.0, burst=4), limits(4, 1.0, burst=4)
    await second.acquire()
    await first.acquire()
    redis_server.stop()
    await first.acquire()
    await asyncio.sleep(1.2)
    await redis_back(first, redis_server)
    await second.acquire()
    await first.acquire()  # sees both limiters again
    caplog.set_level(logging.INFO, logger="monica_async")
    await asyncio.sleep(1.3)

    waits = [await first.acquire() for _ in range(4)]

    assert all(wait < 0.5 for wait in waits), waits
    assert any("back on the whole shared limit" in r.getMessage() for r in caplog.records)


async def test_after_a_blip_limiters_still_listed_in_redis_do_not_count_as_back(
    limits: Callable[..., RedisRateLimit],
    redis_client: redis.asyncio.Redis,
) -> None:
    """Redis paused for a second keeps its keys, and the other limiter is still listed
    as a sharer when this one comes back. It is not back until it calls Redis again, so
    this limiter keeps to its local share (3 per window) past one window."""
    first = limits(6, 2.0, burst=6, timeout=0.3)
    second = limits(6, 2.0, burst=6)
    await second.acquire()
    await first.acquire()  # sees two limiters
    await redis_client.client_pause(1000)
    await first.acquire()  # times out: falls back to 3 per window
    await asyncio.sleep(1.0)
    for _ in range(100):
        await first.acquire()
        if first.available:
            break
        await asyncio.sleep(0.05)
    assert first.available
    await asyncio.sleep(2.2)  # past a window: the old local starts no longer count

    waits = [await first.acquire() for _ in range(4)]

    assert waits[2] < 0.5 < waits[3] < 5.0


async def test_the_local_share_is_lifted_even_if_the_others_never_come_back(
    limits: Callable[..., RedisRateLimit],
    redis_server: RedisServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Every running sharer tries Redis at least every 0.625 s: after that, a call
    timeout and a window, a limiter takes the whole limit even if fewer limiters came
    back than it counted before the outage."""
    first, second = limits(4, 1.0, burst=4, timeout=0.2), limits(4, 1.0, burst=4)
    await second.acquire()
    await first.acquire()
    redis_server.stop()
    await first.acquire()
    await asyncio.sleep(1.2)
    await redis_back(first, redis_server)
    caplog.set_level(logging.INFO, logger="monica_async")
    await asyncio.sleep(0.625 + 0.2 + 1.05 + 0.3)

    waits = [await first.acquire() for _ in range(3)]

    assert all(wait < 0.5 for wait in waits), waits
    assert any("back on the whole shared limit" in r.getMessage() for r in caplog.records)


async def test_a_429_while_redis_is_away_pauses_the_local_fallback(
    limits: Callable[..., RedisRateLimit], dead_redis_url: str
) -> None:
    """on_rate_limited without Redis pauses this process's fallback limit instead."""
    limit = limits(100, 1.0, burst=100, url=dead_redis_url)

    pause = await limit.on_rate_limited(0.5, time.monotonic())
    waited = await limit.acquire()

    assert 0.5 <= pause < 1.0
    assert 0.4 < waited < 5.0


async def test_a_pause_announced_before_redis_went_away_still_stands(
    limits: Callable[..., RedisRateLimit], redis_server: RedisServer
) -> None:
    """The fallback honours what is left of a shared pause Redis announced earlier."""
    limit = limits(100, 1.0, burst=100)
    await limit.on_rate_limited(1.0, time.monotonic())
    redis_server.stop()

    waited = await limit.acquire()

    assert 0.8 < waited < 5.0


@pytest.mark.parametrize("on_unavailable", ["local", "fail"])
async def test_redis_going_away_while_a_caller_sleeps_on_its_slot(
    limits: Callable[..., RedisRateLimit], redis_server: RedisServer, on_unavailable: str
) -> None:
    """A caller that booked before Redis went away starts at its slot ('local') or
    raises ('fail') when it cannot confirm the slot on waking."""
    limit = limits(1, 0.5, on_unavailable=on_unavailable)
    await limit.acquire()
    sleeper = asyncio.create_task(limit.acquire())
    await asyncio.sleep(0.1)

    await asyncio.to_thread(redis_server.stop)

    if on_unavailable == "fail":
        with pytest.raises(RateLimiterUnavailableError):
            await sleeper
    else:
        assert 0.3 < await sleeper < 5.0


async def test_redis_is_tried_again_only_after_a_back_off(
    limits: Callable[..., RedisRateLimit], dead_redis_url: str
) -> None:
    """Twenty acquisitions in a burst while Redis is away try Redis once, not twenty times."""
    client = redis.asyncio.Redis.from_url(dead_redis_url)
    tries: list[float] = []
    original = client.script_load

    async def counting_load(script: str) -> Any:
        tries.append(time.monotonic())
        return await original(script)

    client.script_load = counting_load  # type: ignore[method-assign,assignment]
    limit = limits(100, 1.0, burst=100, url=client)
    try:
        for _ in range(20):
            await limit.acquire()
    finally:
        await client.aclose()

    assert 1 == len(tries)


async def test_the_shared_limit_comes_back_by_itself(
    limits: Callable[..., RedisRateLimit],
    redis_server: RedisServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Redis stopped then started again: the limiter falls back, then shares again."""
    limit = limits(100, 1.0)
    await limit.acquire()
    redis_server.stop()
    await limit.acquire()
    assert not limit.available
    redis_server.start()
    caplog.set_level(logging.INFO, logger="monica_async")

    for _ in range(100):  # the back-off is well under a second
        await asyncio.sleep(0.05)
        await limit.acquire()
        if limit.available:
            break

    assert limit.available
    assert any("reachable again" in r.getMessage() for r in caplog.records)


async def test_a_redis_that_does_not_answer_times_out(
    limits: Callable[..., RedisRateLimit],
) -> None:
    """A server that accepts connections but never answers counts as unavailable."""

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # never answer; returns when the client hangs up
        writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    limit = limits(5, 1.0, url=f"redis://127.0.0.1:{port}/0", on_unavailable="fail", timeout=0.2)
    began = time.monotonic()
    try:
        with pytest.raises(RateLimiterUnavailableError, match=r"timed out|Timeout"):
            await limit.acquire()
    finally:
        server.close()

    assert time.monotonic() - began < 10.0


# -- construction and lifecycle -------------------------------------------------------


def test_it_is_a_rate_limiter(redis_server: RedisServer) -> None:
    """RedisRateLimit implements the RateLimiter protocol the client accepts."""
    assert isinstance(RedisRateLimit(redis_server.url, 1), RateLimiter)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"requests": 0}, "requests must be a positive integer"),
        ({"per": -1}, "per must be a positive number"),
        ({"burst": 9}, "burst must be at most requests"),
        ({"margin": -0.1}, "margin must be >= 0"),
        ({"key": ""}, "key must be a non-empty string"),
        ({"prefix": 5}, "prefix must be a string"),
        ({"on_unavailable": "open"}, "on_unavailable must be 'fail' or 'local'"),
        ({"fallback_fraction": 0}, r"fallback_fraction must be in \(0, 1\]"),
        ({"fallback_fraction": 1.5}, r"fallback_fraction must be in \(0, 1\]"),
        ({"timeout": 0}, "timeout must be a positive number"),
        ({"redis": "http://localhost:6379"}, "redis must be a URL such as"),
        ({"redis": 6379}, "redis must be a URL such as .* got int"),
    ],
)
def test_invalid_options_are_refused_by_name(options: dict[str, Any], message: str) -> None:
    """Each invalid option raises InvalidRequestError naming it."""
    arguments: dict[str, Any] = {"redis": "redis://127.0.0.1:1/0", "requests": 5, **options}

    with pytest.raises(InvalidRequestError, match=message):
        RedisRateLimit(**arguments)


def test_repr_shows_the_limit_not_the_redis_password() -> None:
    """The URL (and any password in it) stays out of the repr."""
    limit = RedisRateLimit(
        "redis://:hunter2@127.0.0.1:1/0", 60, 60.0, burst=10, margin=0.5, key="monica:prod"
    )

    assert (
        "RedisRateLimit(60, per=60.0, burst=10, margin=0.5, key='monica:prod', "
        "on_unavailable='local')"
    ) == repr(limit)


async def test_a_client_passed_in_is_not_closed(redis_client: redis.asyncio.Redis) -> None:
    """aclose() leaves a redis.asyncio.Redis it was given usable."""
    limit = RedisRateLimit(redis_client, 5, key=unique_key())
    await limit.acquire()

    await limit.aclose()

    assert await redis_client.ping()


async def test_a_closed_limiter_refuses_to_acquire(
    limits: Callable[..., RedisRateLimit],
) -> None:
    """After aclose() (idempotent) acquire raises instead of reconnecting."""
    limit = limits(5, 1.0)
    await limit.acquire()
    await limit.aclose()
    await limit.aclose()

    with pytest.raises(MonicaError, match="closed"):
        await limit.acquire()


def test_import_monica_async_does_not_need_redis() -> None:
    """With redis unimportable, the package imports and RedisRateLimit says what to install."""
    code = (
        "import sys; sys.modules['redis'] = None\n"
        "import monica_async\n"
        "assert 'RedisRateLimit' in monica_async.__all__\n"
        "try:\n"
        "    monica_async.RedisRateLimit('redis://localhost', 1)\n"
        "except ModuleNotFoundError as exc:\n"
        "    print(exc)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONWARNINGS": "error"},
        check=False,
    )

    assert (0, "") == (done.returncode, done.stderr)
    assert 'pip install "monica-async[redis]"' in done.stdout


# -- several processes against one fake server -----------------------------------------

WORKER = Path(__file__).with_name("redis_worker.py")
#: The shared limit of the multi-process tests. The margin is wider than the default
#: (50 ms at 1 s) because the server's arrival times, not the limiter's start times,
#: are checked, on two cores shared by the workers, the server and Redis.
LIMIT = {"requests": 10, "per": 1.0, "margin": 0.1}


def worst_window(times: list[float], per: float) -> int:
    """The most arrivals in any window ``[t, t + per)`` of the sorted *times*."""
    return max((bisect.bisect_left(times, t + per) - i for i, t in enumerate(times)), default=0)


def steady_rate(times: list[float], per: float) -> float:
    """Arrivals per second over the whole windows that fit between the first and last."""
    windows = int((times[-1] - times[0]) // per)
    assert windows >= 1, "too short to measure a rate"
    return bisect.bisect_left(times, times[0] + windows * per) / (windows * per)


@attrs.frozen
class WorkerRun:
    """What one worker process printed."""

    outcomes: list[dict[str, Any]]
    log: str


async def run_workers(
    count: int,
    server: FakeMonicaServer,
    redis_url: str,
    images: int,
    *,
    started: Callable[[], Awaitable[None]] | None = None,
    **options: Any,
) -> list[WorkerRun]:
    """Start *count* worker processes, let them go together, collect what they print.

    *started* runs (in the test) once every worker has been told to go.
    """
    settings = {**LIMIT, **options}
    processes = []
    for n in range(count):
        argv = [str(WORKER), "--base-url", server.base_url, "--redis-url", redis_url]
        argv += ["--name", f"w{n}", "--images", str(images)]
        for name, value in settings.items():
            argv += [f"--{name.replace('_', '-')}", str(value)]
        processes.append(
            await asyncio.create_subprocess_exec(
                sys.executable,
                *argv,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env={**os.environ, "MONICA_API_KEY": API_KEY},
            )
        )
    try:
        async with asyncio.timeout(90):
            for process in processes:
                assert process.stdout is not None
                ready = await process.stdout.readline()
                assert b"READY\n" == ready, ready
            finished = asyncio.gather(*(p.communicate(b"go\n") for p in processes))
            if started is not None:
                await started()
            results = await finished
    finally:
        for process in processes:
            if process.returncode is None:
                process.kill()
                await process.wait()
    runs = []
    for process, (out, err) in zip(processes, results, strict=True):
        assert 0 == process.returncode, err.decode()
        lines = [json.loads(line) for line in out.decode().splitlines()]
        runs.append(WorkerRun(outcomes=lines[:-1], log=err.decode()))
    return runs


@pytest.fixture
async def fake_server() -> AsyncIterator[FakeMonicaServer]:
    """A fake Monica server in the test process, answering at once, without a rate limit."""
    async with FakeMonicaServer(api_key=API_KEY, process_images=False) as server:
        yield server


@pytest.mark.slow
@pytest.mark.timeout(150)
async def test_four_processes_together_run_at_the_limit_never_over_it(
    redis_server: RedisServer, fake_server: FakeMonicaServer
) -> None:
    """Four processes, 80 requests: no window of the server's arrivals holds more than the
    limit, and over whole windows the combined rate is close to it."""
    runs = await run_workers(4, fake_server, redis_server.url, images=20)

    times = sorted(fake_server.stats.accepted_times)
    assert [20] * 4 == [len(run.outcomes) for run in runs]
    assert 80 == len(times)
    assert worst_window(times, 1.0) <= 10
    assert 0.85 * 10 <= steady_rate(times, 1.0) <= 10


@pytest.mark.slow
@pytest.mark.timeout(150)
async def test_a_429_seen_by_one_process_pauses_the_others(
    redis_server: RedisServer, fake_server: FakeMonicaServer
) -> None:
    """One request of one process gets 429 with Retry-After 2: no request from anyone
    reaches the server during the next two seconds (beyond those already on the way)."""
    fake_server.retry_after = 2.0
    fake_server.script_faults("https://img.example/w0/5.png", [Fault.HTTP_429])

    runs = await run_workers(4, fake_server, redis_server.url, images=15)

    stats = fake_server.stats
    (rejected,) = set(stats.request_times) - set(stats.accepted_times)
    after = sorted(t - rejected for t in stats.request_times if t > rejected + 0.3)
    assert [None] * 60 == [o["error"] for run in runs for o in run.outcomes]
    assert after, "the batch ended before the pause could be observed"
    assert after[0] >= 1.95


@pytest.mark.slow
@pytest.mark.timeout(180)
async def test_redis_stopped_mid_batch_falls_back_and_comes_back(
    redis_server: RedisServer, fake_server: FakeMonicaServer
) -> None:
    """Redis stopped for two seconds during four processes' batches: with the default
    on_unavailable='local' each process warns once, falls back, shares again once Redis
    is back, and every input gets exactly one outcome, a success.

    Two attempts in flight per process: with more, a process books so far ahead that it
    may sleep through the whole outage without asking Redis anything."""

    async def outage() -> None:
        await asyncio.sleep(2.0)
        await asyncio.to_thread(redis_server.stop)
        await asyncio.sleep(2.0)
        await asyncio.to_thread(redis_server.start)

    runs = await run_workers(
        4, fake_server, redis_server.url, images=30, started=outage, concurrency=2
    )

    for run in runs:
        assert list(range(30)) == sorted(o["index"] for o in run.outcomes)
        assert [None] * 30 == [o["error"] for o in run.outcomes]
        assert 1 == run.log.count("Redis is unavailable"), run.log
        assert 1 == run.log.count("reachable again"), run.log


@pytest.mark.slow
@pytest.mark.timeout(120)
async def test_fail_closed_outage_fails_the_inputs_it_meets_and_sends_nothing_for_them(
    redis_server: RedisServer, fake_server: FakeMonicaServer
) -> None:
    """on_unavailable='fail': inputs met while Redis is down get RateLimiterUnavailableError
    without a request; every input gets one outcome; once Redis is back, calls succeed."""
    limit = RedisRateLimit(redis_server.url, 10, 1.0, key=unique_key(), on_unavailable="fail")
    urls = [f"https://img.example/{i}.png" for i in range(40)]

    async def outage() -> None:
        await asyncio.sleep(1.5)
        await asyncio.to_thread(redis_server.stop)

    async with (
        limit,
        MonicaClient(API_KEY, base_url=fake_server.base_url, rate_limit=limit) as client,
    ):
        stopping = asyncio.create_task(outage())
        outcomes = await client.upscale_all(urls)
        await stopping
        await asyncio.to_thread(redis_server.start)
        await asyncio.sleep(1.5)  # past the longest back-off
        after = await client.upscale("https://img.example/after.png")

    failed = [o for o in outcomes if not o.ok]
    assert list(range(40)) == [o.index for o in outcomes]
    assert 0 < len(failed) < 40
    assert all(isinstance(o.error, RateLimiterUnavailableError) for o in failed)
    assert 40 - len(failed) + 1 == fake_server.stats.accepted == fake_server.stats.total
    assert after.url


# -- several processes through a Redis outage ------------------------------------------

#: Seconds of each phase: before the kill, Redis down, and after the restart (one more).
PHASE = 3.0
#: Three processes share 30 per second: each one's share is 10.
OUTAGE_LIMIT, OUTAGE_PROCESSES = 30, 3


@attrs.frozen
class OutageRun:
    """Three workers through a redis-server kill and restart, as the fake server saw them."""

    times: list[float]  # accepted arrivals at the fake server, sorted
    killed: float
    restarted: float
    runs: list[WorkerRun]

    def worst_window(self, after: float, until: float) -> int:
        """The most arrivals in a 1 s window that starts in ``(after, until]``."""
        times = self.times
        return max(
            (
                bisect.bisect_left(times, t + 1.0) - i
                for i, t in enumerate(times)
                if after < t <= until
            ),
            default=0,
        )


def logged_at(run: WorkerRun, text: str) -> list[float]:
    """When the worker logged each line containing *text* (its ``time.monotonic()``)."""
    return [float(line.split(" ", 1)[0]) for line in run.log.splitlines() if text in line]


async def run_through_outage(server: RedisServer) -> OutageRun:
    """Three workers at 30/s; redis-server killed after PHASE s, started after PHASE more."""
    moments: dict[str, float] = {}

    async def outage() -> None:
        await asyncio.sleep(PHASE)
        moments["killed"] = time.monotonic()
        await asyncio.to_thread(server.kill)
        await asyncio.sleep(PHASE)
        moments["restarted"] = time.monotonic()
        await asyncio.to_thread(server.start)

    async with FakeMonicaServer(api_key=API_KEY, process_images=False) as fake:
        runs = await run_workers(
            OUTAGE_PROCESSES,
            fake,
            server.url,
            images=100_000,
            started=outage,
            requests=OUTAGE_LIMIT,
            seconds=3 * PHASE + 1,
        )
        times = sorted(fake.stats.accepted_times)
    return OutageRun(times, moments["killed"], moments["restarted"], runs)


@pytest.fixture(scope="module")
def outage_run(tmp_path_factory: pytest.TempPathFactory) -> OutageRun:
    """One run through an outage, shared by the tests that check what it showed."""
    from conftest_redis import RedisServer, required_redis_binary

    directory = tmp_path_factory.mktemp("redis")
    server = RedisServer(binary=required_redis_binary(), directory=directory)
    server.start()
    try:
        return asyncio.run(run_through_outage(server))
    finally:
        server.stop()


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_while_redis_is_down_no_window_holds_more_than_the_limit_and_one_share(
    outage_run: OutageRun,
) -> None:
    """From the kill on, starts booked in Redis before it and each process's local share
    together put at most 30 + 10 arrivals in any 1 s at the server."""
    run = outage_run

    worst = run.worst_window(run.killed - 1.0, run.restarted - 1.0)

    assert worst <= OUTAGE_LIMIT + OUTAGE_LIMIT // OUTAGE_PROCESSES


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_after_redis_restarts_empty_no_window_holds_more_than_the_limit_and_one_share(
    outage_run: OutageRun,
) -> None:
    """From the restart on, the first process back does not take the whole limit from the
    empty Redis while the others are on their shares: at most 30 + 10 in any 1 s."""
    run = outage_run

    worst = run.worst_window(run.restarted - 1.0, math.inf)

    assert worst <= OUTAGE_LIMIT + OUTAGE_LIMIT // OUTAGE_PROCESSES


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_through_an_outage_every_input_succeeds(outage_run: OutageRun) -> None:
    """No input fails and every process keeps going (each one exited 0 with outcomes)."""
    errors = [o["error"] for run in outage_run.runs for o in run.outcomes]

    assert all(run.outcomes for run in outage_run.runs)
    assert [None] * len(errors) == errors


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_while_redis_is_down_each_process_takes_its_third_and_they_keep_going(
    outage_run: OutageRun,
) -> None:
    """Each process falls back to 10 per second (it saw three on the key), and together
    they keep going at more than half the limit after the first second of the outage."""
    run = outage_run
    down = run.restarted - run.killed - 1.0
    during = bisect.bisect_left(run.times, run.restarted) - bisect.bisect_left(
        run.times, run.killed + 1.0
    )

    for worker in run.runs:
        assert 1 == len(logged_at(worker, "falling back to a local limit of 10 per 1.0s"))
    assert during / down > OUTAGE_LIMIT / 2


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_every_process_is_back_on_the_whole_shared_limit_soon_after_the_restart(
    outage_run: OutageRun,
) -> None:
    """Each process books through Redis again within 2 s of the restart (it tries every
    0.625 s at most) and takes the whole shared limit again within 5 s (one window after
    the last one is back; 2.7 s at most by design)."""
    run = outage_run

    back = [min(logged_at(w, "reachable again")) - run.restarted for w in run.runs]
    whole = [min(logged_at(w, "back on the whole shared limit")) - run.restarted for w in run.runs]

    assert all(0 < seconds < 2.0 for seconds in back), back
    assert all(0 < seconds < 5.0 for seconds in whole), whole
