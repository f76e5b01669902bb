"""The in-process rate limiters: booking arithmetic, pauses, AIMD, validation."""

from __future__ import annotations

import asyncio
import itertools
import random
import time

import attrs
import pytest

from monica_async import AdaptiveRateLimit, InvalidRequestError, RateLimit, RateLimiter


def max_in_window(times: list[float], per: float) -> int:
    """The most start times that fall in any half-open window [t, t + per)."""
    ordered = sorted(times)
    best = 0
    j = 0
    for i, start in enumerate(ordered):
        while ordered[j] <= start - per:
            j += 1
        best = max(best, i - j + 1)
    return best


def book_all(limit: RateLimit, arrivals: list[float]) -> list[float]:
    """Book one slot per arrival time, the way acquire() does without sleeping."""
    return [limit._book(now) for now in arrivals]


def test_first_window_is_never_exceeded() -> None:
    """A full burst goes at once, and the next start waits a whole window plus margin."""
    limit = RateLimit(5, per=1.0, burst=5, margin=0.01)
    slots = book_all(limit, [0.0] * 6)
    assert slots[:5] == [0.0] * 5
    assert slots[5] == pytest.approx(1.01)


@pytest.mark.parametrize("burst", [None, 1, 3, 10])
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_no_sliding_window_holds_more_than_the_limit(burst: int | None, seed: int) -> None:
    """Whatever the arrival pattern, no window of `per` seconds holds more than `requests`."""
    rng = random.Random(seed)
    # A nanosecond of margin keeps float rounding of `t + per` out of the count.
    limit = RateLimit(10, per=1.0, burst=burst, margin=1e-9)
    arrivals = sorted(rng.uniform(0, 5) for _ in range(300))
    slots = book_all(limit, arrivals)
    assert max_in_window(slots, 1.0) <= 10
    assert all(slot >= arrival for slot, arrival in zip(slots, arrivals, strict=True))


@pytest.mark.parametrize("burst", [None, 3])
@pytest.mark.parametrize("seed", [1, 2])
def test_starting_without_a_coroutine_books_what_acquire_would(
    burst: int | None, seed: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """_try_acquire starts an attempt exactly when a booking would start it at once, and
    books nothing otherwise: starts and slots match a limiter that only books."""
    rng = random.Random(seed)
    arrivals = sorted(rng.uniform(0, 5) for _ in range(300))
    fast = RateLimit(10, per=1.0, burst=burst, margin=1e-9)
    booked = RateLimit(10, per=1.0, burst=burst, margin=1e-9)
    clock = iter(arrivals)
    monkeypatch.setattr(time, "monotonic", lambda: next(clock))
    starts: list[float] = []
    expected_starts: list[float] = []
    tried = 0
    for arrival in arrivals:
        expected = booked._book(arrival)
        expected_starts.append(expected)
        if fast._try_acquire():
            tried += 1
            starts.append(arrival)
            assert expected == arrival
        else:
            assert expected > arrival
            starts.append(fast._book(arrival))
    assert starts == expected_starts
    assert 0 < tried < len(arrivals)
    assert max_in_window(starts, 1.0) <= 10


def test_a_pause_stops_starts_without_a_coroutine() -> None:
    """While a 429's pause lasts, _try_acquire refuses even with the pace free."""
    limit = RateLimit(100)
    assert limit._try_acquire()
    limit._pause.extend(5.0, time.monotonic(), time.monotonic())
    assert not limit._try_acquire()


@pytest.mark.parametrize(
    ("requests", "per", "margin"), [(10, 1.0, 0.0), (60, 60.0, None), (7, 2.0, 0.1)]
)
def test_steady_rate_reaches_the_configured_rate(
    requests: int, per: float, margin: float | None
) -> None:
    """Booked back to back, starts run at requests / (per + margin)."""
    limit = RateLimit(requests, per=per, burst=requests, margin=margin)
    count = requests * 20
    slots = book_all(limit, [0.0] * count)
    window = per + limit.effective_margin
    expected_span = (count // requests - 1) * window
    assert slots[-1] == pytest.approx(expected_span)
    steady = (count - requests) / slots[-1]
    assert steady == pytest.approx(requests / window)


def test_burst_one_spaces_starts_evenly() -> None:
    """With burst=1 starts are spaced per / requests apart from the first one."""
    limit = RateLimit(4, per=1.0, burst=1, margin=0.0)
    slots = book_all(limit, [0.0] * 5)
    assert slots == pytest.approx([0.0, 0.25, 0.5, 0.75, 1.0])


@pytest.mark.parametrize(
    ("per", "margin"), [(0.5, 0.015), (1.0, 0.015), (10.0, 0.1), (3600.0, 0.5)]
)
def test_default_margin_is_one_percent_within_bounds(per: float, margin: float) -> None:
    """The default margin is 1% of the window, at least 15 ms, at most half a second."""
    assert RateLimit(10, per=per).effective_margin == pytest.approx(margin)


def test_by_default_a_per_second_limit_is_evenly_paced() -> None:
    """Without a burst, a 1 s window's 15 ms margin cannot absorb 5 starts at once
    (5 ms each): starts are spaced per / requests apart from the first one on."""
    limit = RateLimit(5, per=1.0)
    slots = book_all(limit, [0.0] * 3)
    assert (1, slots) == (limit.effective_burst, pytest.approx([0.0, 0.2, 0.4]))


@pytest.mark.parametrize(("requests", "per"), [(10, 60.0), (10, 12.0)])
def test_by_default_a_long_windows_allowance_starts_at_once(requests: int, per: float) -> None:
    """10 per minute (or per 12 s): the whole allowance starts together on a fresh
    window, and the next start waits for the window and its margin."""
    limit = RateLimit(requests, per=per)
    slots = book_all(limit, [0.0] * (requests + 1))
    assert [0.0] * requests == slots[:requests]
    assert slots[requests] == pytest.approx(per + limit.effective_margin)


async def show_a_limit(limit: RateLimit, retry_after: float | None) -> None:
    """Three 429s in a row: each one alone shows no limit yet, so none pauses."""
    for _ in range(3):
        assert 0.0 == await limit.on_rate_limited(retry_after, started=time.monotonic())


async def test_an_odd_429_pauses_no_one() -> None:
    """One 429 among acceptances (a busy server's) leaves the pace alone: only the
    refused call's own retry waits."""
    limit = RateLimit(10, per=1.0)
    for _ in range(20):
        await limit.on_success(started=time.monotonic())
    assert 0.0 == await limit.on_rate_limited(2.0, started=time.monotonic())
    assert limit._pause.not_before < time.monotonic()


async def test_pause_moves_every_booking_behind_it_and_resumes_paced() -> None:
    """After 429s that show a limit nobody starts before the pause ends, and the burst
    allowance is empty."""
    limit = RateLimit(10, per=1.0, burst=10, margin=0.0)
    await show_a_limit(limit, 2.0)
    pause = await limit.on_rate_limited(2.0, started=time.monotonic())
    assert 2.0 <= pause <= 2.25
    now = time.monotonic()
    slots = book_all(limit, [now] * 3)
    not_before = limit._pause.not_before
    assert slots[0] == pytest.approx(not_before)
    assert slots[1] - slots[0] == pytest.approx(0.1)
    assert slots[2] - slots[1] == pytest.approx(0.1)


async def test_pause_without_retry_after_grows() -> None:
    """429s without Retry-After pause 1 s, then 2 s, then 4 s; a success resets it."""
    limit = RateLimit(10)
    await show_a_limit(limit, None)
    first = await limit.on_rate_limited(None, started=time.monotonic())
    second = await limit.on_rate_limited(None, started=time.monotonic())
    third = await limit.on_rate_limited(None, started=time.monotonic())
    assert (round(first), round(second), round(third)) == (1, 2, 4)
    await limit.on_success(started=time.monotonic())
    assert limit._pause.streak == 0


async def test_a_burst_of_429s_lengthens_the_pause_once() -> None:
    """429s answering attempts sent before the pause began do not double it again."""
    limit = RateLimit(10)
    sent = time.monotonic()
    pauses = [await limit.on_rate_limited(None, started=sent) for _ in range(8)]
    assert max(pauses) < 1.5
    assert limit._pause.streak == 1


async def test_acquire_waits_for_its_slot() -> None:
    """acquire() really sleeps until the booked start (here half a second)."""
    limit = RateLimit(2, per=0.5, burst=2, margin=0.0)
    began = time.monotonic()
    waits = [await limit.acquire() for _ in range(3)]
    assert waits[0] < 0.05
    assert waits[1] < 0.05
    assert 0.45 <= time.monotonic() - began < 2.0


async def test_acquire_rebooks_when_a_pause_arrives_while_it_sleeps() -> None:
    """A caller asleep toward its slot queues again behind a pause set meanwhile."""
    limit = RateLimit(1, per=0.2, margin=0.0)
    await show_a_limit(limit, 0.5)
    await limit.acquire()
    waiter = asyncio.create_task(limit.acquire())
    await asyncio.sleep(0.05)
    await limit.on_rate_limited(0.5, started=time.monotonic())
    not_before = limit._pause.not_before
    await waiter
    assert time.monotonic() >= not_before


async def test_cancelled_acquire_gives_its_slot_back() -> None:
    """A caller cancelled while waiting does not consume the slot it had booked."""
    limit = RateLimit(1, per=10.0, margin=0.0)
    await limit.acquire()
    waiter = asyncio.create_task(limit.acquire())
    await asyncio.sleep(0.01)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert len(limit._log) == 1


def test_limiters_satisfy_the_protocol() -> None:
    """Both in-process limiters are RateLimiter implementations."""
    assert isinstance(RateLimit(1), RateLimiter)
    assert isinstance(RateLimit.adaptive(), RateLimiter)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"requests": 0}, "requests must be a positive integer, got 0"),
        ({"requests": 1.5}, "requests must be a positive integer, got 1.5"),
        ({"requests": True}, "requests must be a positive integer, got True"),
        ({"requests": 5, "per": 0}, "per must be a positive number, got 0"),
        ({"requests": 5, "burst": 6}, "burst must be at most requests (5), got 6"),
        ({"requests": 5, "burst": 0}, "burst must be a positive integer, got 0"),
        ({"requests": 5, "margin": -1}, "margin must be >= 0 seconds, got -1"),
    ],
)
def test_invalid_rate_limits_name_the_argument(kwargs: dict[str, object], message: str) -> None:
    """Bad settings fail at construction with a message naming the argument."""
    with pytest.raises(InvalidRequestError) as info:
        RateLimit(**kwargs)  # type: ignore[arg-type]
    assert str(info.value) == message


def test_settings_are_read_only_once_built() -> None:
    """Changing a setting later would desynchronise the log and the derived spacing."""
    limit = RateLimit(10, per=2.0)
    with pytest.raises(attrs.exceptions.FrozenAttributeError):
        limit.requests = 20
    assert limit.interval == 0.2


def test_repr_shows_the_effective_settings() -> None:
    """repr() shows what the limiter really does, defaults resolved."""
    assert repr(RateLimit(60, per=60.0)) == "RateLimit(60, per=60.0, burst=60, margin=0.5)"
    assert repr(RateLimit(30)) == "RateLimit(30, per=1.0, burst=1, margin=0.015)"


class TestAdaptive:
    """Learns the rate from 429s that show a limit; ignores the odd one; probes upward."""

    async def test_unlimited_until_the_first_429(self) -> None:
        """Without a start rate, bookings never wait."""
        limit = RateLimit.adaptive()
        now = time.monotonic()
        assert limit.rate is None
        assert [limit._book(now) for _ in range(100)] == [now] * 100

    async def test_429s_showing_a_limit_set_the_rate_to_what_the_server_accepted(self) -> None:
        """After the pause, the rate is 95% of what the server accepted in the second before."""
        limit = RateLimit.adaptive()
        for _ in range(20):
            await asyncio.sleep(0.01)  # 20 attempts over about 0.2 s
            await limit.acquire()
        started = time.monotonic()
        for _ in range(4):  # four in a row show a limit
            await limit.on_rate_limited(0.1, started=started)
        assert limit.rate is None  # not before every refusal of the burst is back
        await limit.acquire()  # after the pause
        assert limit.rate == pytest.approx(0.95 * 16)

    async def test_an_odd_429_neither_pauses_nor_cuts(self) -> None:
        """A refusal among many acceptances shows no limit: rate and callers untouched."""
        limit = RateLimit.adaptive(start=10.0)
        for _ in range(40):
            await limit.on_success(time.monotonic())
        pause = await limit.on_rate_limited(1.0, started=time.monotonic())
        assert (0.0, 10.0) == (pause, limit.rate)
        assert limit._pause.not_before < time.monotonic()

    async def test_five_percent_of_429s_at_random_never_cut_the_rate(self) -> None:
        """One refusal in twenty, spread out, is the noise of a busy server, not a limit."""
        limit = RateLimit.adaptive(start=10.0)
        for n in range(400):
            if n % 20 == 19:
                await limit.on_rate_limited(1.0, started=time.monotonic())
            else:
                await limit.on_success(time.monotonic())
        assert 10.0 <= (limit.rate or 0.0)

    async def test_a_429_before_any_traffic_only_pauses(self) -> None:
        """With nothing accepted to measure, 429s pause but set no rate."""
        limit = RateLimit.adaptive()
        for _ in range(4):
            pause = await limit.on_rate_limited(1.0, started=time.monotonic())
        assert limit.rate is None
        assert pause >= 1.0

    async def test_callers_resume_spread_out_when_no_rate_is_known(self) -> None:
        """After a pause without a learned rate, bookings spread over a quarter second."""
        limit = RateLimit.adaptive()
        for _ in range(4):
            await limit.on_rate_limited(1.0, started=time.monotonic())
        now = time.monotonic()
        slots = [limit._book(now) for _ in range(50)]
        assert min(slots) >= limit._pause.not_before
        assert 0.05 < max(slots) - min(slots) <= 0.25

    async def test_a_burst_of_429s_cuts_the_rate_once(self) -> None:
        """429s answering attempts sent before the cut do not cut again."""
        limit = RateLimit.adaptive(start=10.0)
        sent = time.monotonic()
        for _ in range(6):
            await limit.on_rate_limited(0.0, started=sent)
        assert limit.rate == pytest.approx(7.0)  # too little accepted to measure: x0.7
        later = time.monotonic()
        for _ in range(4):  # a new burst, at the new rate
            await limit.on_rate_limited(0.0, started=later)
        assert limit.rate == pytest.approx(4.9)

    async def test_the_rate_grows_while_it_holds_callers_back(self) -> None:
        """Callers that waited for the pace and used it let the rate probe upward."""
        limit = RateLimit.adaptive(start=8.0, max=8.3)
        for _ in range(9):
            await limit.acquire()
        await limit.on_success(time.monotonic())
        assert 8.3 == limit.rate

    async def test_the_rate_stays_when_callers_do_not_use_it(self) -> None:
        """Successes without callers waiting for the pace teach nothing."""
        limit = RateLimit.adaptive(start=8.0)
        for _ in range(20):
            await limit.on_success(time.monotonic())
        assert 8.0 == limit.rate

    async def test_starts_are_spaced_at_the_rate(self) -> None:
        """Bookings are 1/rate apart (no burst)."""
        limit = RateLimit.adaptive(start=10.0)
        now = time.monotonic()
        slots = [limit._book(now) for _ in range(3)]
        assert [round(b - a, 6) for a, b in itertools.pairwise(slots)] == [0.1, 0.1]

    async def test_rate_never_drops_below_min(self) -> None:
        """Repeated cuts stop at min_rate."""
        limit = RateLimit.adaptive(start=1.0, min=0.5)
        for _ in range(9):
            await limit.on_rate_limited(0.0, started=time.monotonic())
        assert 0.5 == limit.rate

    @pytest.mark.parametrize(
        ("kwargs", "message"),
        [
            ({"start": 0}, "start must be a positive number, got 0"),
            ({"start": 5, "max_rate": 2}, "start (5) must not exceed max (2)"),
            ({"decrease": 1.0}, "decrease must be between 0 and 1, got 1.0"),
        ],
    )
    def test_invalid_settings_name_the_argument(
        self, kwargs: dict[str, object], message: str
    ) -> None:
        """Bad adaptive settings fail at construction."""
        with pytest.raises(InvalidRequestError) as info:
            AdaptiveRateLimit(**kwargs)  # type: ignore[arg-type]
        assert str(info.value) == message
