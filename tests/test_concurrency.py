"""Automatic concurrency: the target follows rate x latency, finds a server's cap, and stays
within an explicit ``max_concurrency``.

Unit tests drive the controller with chosen numbers; the loopback tests run batches
against the fake server at a few hundred milliseconds of latency and tens of
requests per second, with generous bounds.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

import pytest

from monica_async import MonicaClient, RateLimit
from monica_async._concurrency import AutoConcurrency, Blame, limiter_rate
from monica_async._flow import Slots
from monica_async.testing import FakeMonicaServer, Fault

KEY = "test-key"


def urls(server: FakeMonicaServer, count: int) -> list[str]:
    return [f"{server.base_url}/images/{i}.png" for i in range(count)]


@contextlib.asynccontextmanager
async def peak_in_flight(server: FakeMonicaServer) -> AsyncIterator[list[int]]:
    """Sample the server's requests in flight while the block runs; yields [peak]."""
    peak = [0]

    async def sample() -> None:
        while True:
            peak[0] = max(peak[0], server.stats.in_flight)
            await asyncio.sleep(0.005)

    task = asyncio.create_task(sample())
    try:
        yield peak
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


class TestSlotsResize:
    """A semaphore whose size changes while places are held."""

    async def test_growing_wakes_waiters(self) -> None:
        """Places added go to the callers already waiting, in order."""
        slots = Slots(1)
        await slots.acquire()
        waiters = [asyncio.create_task(slots.acquire()) for _ in range(3)]
        await asyncio.sleep(0)
        slots.resize(2)
        await asyncio.sleep(0)
        assert [True, True, False] == [w.done() for w in waiters]
        waiters[2].cancel()

    async def test_shrinking_takes_effect_as_holders_release(self) -> None:
        """Holders keep their places; the ones they give back disappear until in range."""
        slots = Slots(3)
        for _ in range(3):
            await slots.acquire()
        slots.resize(-2)
        slots.release()
        slots.release()
        assert (0, False) == (slots.free, slots.try_acquire())
        slots.release()
        assert (1, True) == (slots.free, slots.try_acquire())


class TestController:
    """The target, from the rate, the latencies and the 429s it is told about."""

    def test_a_known_rate_times_the_latency_sets_the_target(self) -> None:
        """20 requests/s at 2 s each needs about 40 in flight, with headroom."""
        auto = AutoConcurrency(16, 256, lambda: 20.0)
        now = time.monotonic()
        auto.started(now, 0.0)
        for _ in range(10):
            auto.accepted(now, 2.0, 10)
        auto.update(now + 1)
        assert 40 < auto.limit <= 60
        assert "rate 20/s" in auto.reason

    def test_before_any_answer_the_oldest_attempt_bounds_the_latency(self) -> None:
        """Nothing answered after 3 s means at least 3 s: the target grows already."""
        auto = AutoConcurrency(16, 256, lambda: 20.0)
        auto.started(100.0, 0.0)
        auto.update(103.0)
        assert auto.limit >= 60

    def test_the_target_never_passes_its_upper_bound(self) -> None:
        """A huge rate asks for no more than max_limit."""
        auto = AutoConcurrency(16, 64, lambda: 1e6)
        now = time.monotonic()
        auto.started(now, 0.0)
        for _ in range(10):
            auto.accepted(now, 1.0, 10)
        auto.update(now + 1)
        assert 64 == auto.limit

    def test_without_a_rate_waiting_callers_start_a_slow_start(self) -> None:
        """No rate known and callers waiting: the target grows."""
        auto = AutoConcurrency(16, 256, lambda: None)
        now = time.monotonic()
        for _ in range(10):
            auto.accepted(now, 0.2, 16)
        for step in range(1, 11):
            auto.started(now + step * 0.1, 0.0)  # attempts flow, the limiter lets them by
            auto._demand = True
            auto.update(now + step * 0.1)
        assert auto.limit > 30

    def test_without_waiting_callers_the_target_holds(self) -> None:
        """No demand, no growth."""
        auto = AutoConcurrency(16, 256, lambda: None)
        now = time.monotonic()
        for _ in range(10):
            auto.accepted(now, 0.2, 16)
        auto.update(now + 1)
        assert 16 == auto.limit

    def test_growing_latency_stops_the_slow_start(self) -> None:
        """Latency that doubled means the server queues: no more in flight (Vegas)."""
        auto = AutoConcurrency(16, 256, lambda: None)
        now = time.monotonic()
        for _ in range(10):
            auto.accepted(now, 0.1, 16)
        auto._demand = True
        auto.update(now + 0.1)
        grown = auto.limit
        for _ in range(128):
            auto.accepted(now, 0.5, 16)
        auto._demand = True
        auto.update(now + 0.2)
        assert grown == auto.limit

    def test_429s_with_a_fixed_rate_set_a_cap(self) -> None:
        """With a fixed limiter, refusals at the top of what was accepted cap the target."""
        auto = AutoConcurrency(16, 256, lambda: 20.0, fixed_rate=True)
        now = time.monotonic()
        auto.started(now, 0.0)
        for _ in range(10):
            auto.accepted(now, 2.0, 12)
        auto.update(now + 0.1)
        blames = [auto.rate_limited(now, 12, 13) for _ in range(2)]
        assert Blame.CONCURRENCY == blames[-1]
        assert (12, 12) == (auto.cap, auto.limit)
        assert "cap 12" in auto.reason

    def test_an_odd_429_below_the_top_is_left_to_the_limiter(self) -> None:
        """One refusal with fewer in flight than accepted before shows no cap."""
        auto = AutoConcurrency(16, 256, lambda: 20.0, fixed_rate=True)
        now = time.monotonic()
        for _ in range(40):
            auto.accepted(now, 1.0, 20)
        assert Blame.RATE == auto.rate_limited(now, 5, 6)
        assert auto.cap is None

    def test_an_adaptive_limiter_learns_instead(self) -> None:
        """Without a fixed rate, 429s among accepted numbers in flight are the limiter's."""
        auto = AutoConcurrency(16, 256, lambda: 10.0)
        now = time.monotonic()
        for _ in range(10):
            auto.accepted(now, 1.0, 16)
        blames = [auto.rate_limited(now, 15, 16) for _ in range(5)]
        assert ([Blame.RATE] * 5, None) == (blames, auto.cap)

    def test_an_adaptive_limiter_learns_until_it_has_a_rate(self) -> None:
        """Refusals above everything accepted, before a rate is learned, are the limiter's."""
        auto = AutoConcurrency(16, 256, lambda: None)
        now = time.monotonic()
        for _ in range(10):
            auto.accepted(now, 1.0, 10)
        blames = [auto.rate_limited(now, 11, 12) for _ in range(5)]
        assert ([Blame.RATE] * 5, None) == (blames, auto.cap)

    @staticmethod
    def paced(now: float, in_flights: tuple[int, ...] = (20, 24, 22, 23)) -> AutoConcurrency:
        """A controller whose limiter paces at 3/s from *now*, answers taking 8 s."""
        auto = AutoConcurrency(40, 256, lambda: 3.0)
        auto.update(now)
        for in_flight in in_flights:
            auto.accepted(now, 8.0, in_flight)
        return auto

    def test_refusals_above_the_accepted_at_a_learned_rate_set_a_cap(self) -> None:
        """Two median latencies into a pace, the second refusal in a row sent with more
        in flight than any accepted lately caps the target at the most accepted."""
        now = time.monotonic()
        auto = self.paced(now)
        blames = [auto.rate_limited(now + 16.0, 24, 25) for _ in range(2)]
        assert ([Blame.RATE, Blame.CONCURRENCY], 24, 24) == (blames, auto.cap, auto.limit)
        assert "429s above 24 in flight" in auto.reason

    def test_refusals_above_the_accepted_early_in_a_pace_are_the_rates(self) -> None:
        """Within two median latencies of the pace, the accepted attempts were sent with
        fewer in flight than are under way: refusals above them show nothing yet."""
        now = time.monotonic()
        auto = self.paced(now)
        blames = [auto.rate_limited(now + 15.0, 24, 25) for _ in range(4)]
        assert ([Blame.RATE] * 4, None) == (blames, auto.cap)

    def test_a_refusal_within_the_accepted_clears_those_above(self) -> None:
        """Refusals above and within what was accepted alternate: that is a rate."""
        now = time.monotonic() + 20.0
        auto = self.paced(now - 20.0)
        blames = [auto.rate_limited(now, n - 1, n) for n in (25, 20, 25, 21, 25)]
        assert ([Blame.RATE] * 5, None) == (blames, auto.cap)

    def test_refusals_with_the_number_in_flight_flat_before_any_answer_set_a_cap(
        self,
    ) -> None:
        """Nothing answered yet and the limiter pacing: three refusals over a second
        with no more in flight than the first cap the target at the fewest in flight."""
        auto = AutoConcurrency(40, 256, lambda: 9.0)
        now = time.monotonic()
        blames = [auto.rate_limited(now + t, n, n + 1) for t, n in ((0, 25), (0.5, 24), (1.0, 24))]
        assert (Blame.RATE, Blame.RATE) == (blames[0], blames[1])
        assert (Blame.CONCURRENCY, 24, 24) == (blames[2], auto.cap, auto.limit)
        assert "none answered yet: cap 24" in auto.reason

    def test_refusals_with_the_number_in_flight_growing_are_the_rates(self) -> None:
        """Nothing answered yet, refusals with more in flight each time: a rate limit."""
        auto = AutoConcurrency(40, 256, lambda: 9.0)
        now = time.monotonic()
        blames = [auto.rate_limited(now + t / 2, 20 + 5 * t, 21 + 5 * t) for t in range(6)]
        assert ([Blame.RATE] * 6, None) == (blames, auto.cap)

    def test_refusals_before_the_limiter_paces_show_no_cap(self) -> None:
        """The first burst's refusals, before any rate is learned, are the limiter's."""
        auto = AutoConcurrency(40, 256, lambda: None)
        now = time.monotonic()
        blames = [auto.rate_limited(now + t, 24, 25) for t in range(5)]
        assert ([Blame.RATE] * 5, None) == (blames, auto.cap)

    def test_a_refusal_in_the_place_a_probe_opened_lowers_the_cap_back(self) -> None:
        """A cap of 24 probed to 25: a refusal of an attempt sent in the 25th place,
        soon after the probe, is the cap's."""
        now = time.monotonic()
        auto = self.paced(now)
        auto._cap_at(now, 24, "found")
        auto._demand = True
        auto.update(now + 9.0)
        assert 25 == auto.cap
        assert (Blame.CONCURRENCY, 24) == (auto.rate_limited(now + 9.1, 24, 25), auto.cap)

    @pytest.mark.parametrize("fixed_rate", [True, False])
    def test_odd_refusals_at_a_known_cap_leave_it(self, fixed_rate: bool) -> None:
        """Saturated at a cap, every attempt is sent in its top place: refusals one at a
        time among acceptances (a server's random 429s) do not lower it."""
        auto = AutoConcurrency(16, 256, lambda: 100.0, fixed_rate=fixed_rate)
        now = time.monotonic()
        auto.started(now, 0.0)
        for _ in range(10):
            auto.accepted(now, 0.5, 20)
        auto._cap_at(now, 20, "found")
        for step in range(10):
            for _ in range(19):
                auto.accepted(now + step, 0.5, 20)
            auto.rate_limited(now + step + 0.5, 19, 20)
        assert 20 == auto.cap

    def test_the_cap_is_not_probed_before_any_answer(self) -> None:
        """Callers waiting at a cap found before any answer do not raise it: nothing has
        freed a place yet."""
        auto = AutoConcurrency(40, 256, lambda: 9.0)
        now = time.monotonic()
        for t, n in ((0, 25), (0.5, 24), (1.0, 24)):
            auto.rate_limited(now + t, n, n + 1)
        auto._demand = True
        auto.update(now + 5.0)
        assert (24, 24) == (auto.cap, auto.limit)

    def test_an_accepted_attempt_above_the_refusals_clears_them(self) -> None:
        """A refusal above the high, then an acceptance higher still: no cap from the next."""
        now = time.monotonic() + 20.0
        auto = self.paced(now - 20.0)
        assert Blame.RATE == auto.rate_limited(now, 24, 25)
        auto.accepted(now, 8.0, 26)
        assert (Blame.RATE, None) == (auto.rate_limited(now, 26, 27), auto.cap)

    def test_the_cap_is_probed_upward_while_callers_wait(self) -> None:
        """Some time after the last refusal at the cap, waiting callers raise it by one."""
        auto = AutoConcurrency(16, 256, lambda: 100.0, fixed_rate=True)
        now = time.monotonic()
        auto.started(now, 0.0)
        for _ in range(10):
            auto.accepted(now, 0.5, 8)
        for _ in range(2):
            auto.rate_limited(now, 8, 9)
        auto._demand = True
        auto.update(now + 2.0)
        assert (9, 9) == (auto.cap, auto.limit)

    def test_a_refused_probe_doubles_the_wait_for_the_next(self) -> None:
        """The probe to 9 is refused: the next waits two intervals, not one; a probe
        that then holds brings the interval back to one."""
        auto = AutoConcurrency(16, 256, lambda: 100.0, fixed_rate=True)
        now = time.monotonic()
        auto.started(now, 0.0)
        for _ in range(10):
            auto.accepted(now, 0.5, 8)
        for _ in range(2):
            auto.rate_limited(now, 8, 9)
        caps = []
        for t in (1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0):
            auto._demand = True
            auto.update(now + t)
            caps.append(auto.cap)
            if t == 1.0:
                auto.rate_limited(now + t + 0.1, 8, 9)  # the probed place, refused
        # Probe at 1 s refused; the next waits 2 s (at 4 s) and holds; then every second.
        assert [9, 8, 8, 9, 9, 10, 11] == caps

    @pytest.mark.parametrize(
        ("limiter", "expected"),
        [
            (RateLimit(30, per=2.0), 15.0),
            (RateLimit.adaptive(start=7.0), 7.0),
            (RateLimit.adaptive(), None),
            (object(), None),
        ],
    )
    def test_limiter_rate_reads_each_kind(self, limiter: object, expected: float | None) -> None:
        """The rate of a fixed limiter, an adaptive one, and an unknown one."""
        assert expected == limiter_rate(limiter)()


@pytest.mark.slow
async def test_the_automatic_concurrency_passes_16_when_the_rate_needs_it() -> None:
    """40/s at 0.6 s needs about 24 in flight: the client goes there by itself."""
    server = FakeMonicaServer(api_key=KEY, latency=0.6, rate_limit=(40, 1.0), process_images=False)
    async with server, MonicaClient(KEY, base_url=server.base_url, rate_limit=RateLimit(40)) as c:
        async with peak_in_flight(server) as peak:
            outcomes = await c.upscale_all(urls(server, 120))
        assert all(o.ok for o in outcomes)
        assert peak[0] > 16
        assert c.stats.concurrency > 16
        assert "rate 40/s" in c.stats.concurrency_reason


async def test_an_explicit_max_concurrency_is_never_exceeded() -> None:
    """max_concurrency=5 holds for a batch and single calls together."""
    server = FakeMonicaServer(api_key=KEY, latency=0.05, process_images=False)
    async with server, MonicaClient(KEY, base_url=server.base_url, max_concurrency=5) as client:
        async with peak_in_flight(server) as peak:
            batch = client.upscale_all(urls(server, 60))
            singles = [client.upscale(u) for u in urls(server, 10)]
            await asyncio.gather(batch, *singles)
        assert 5 >= server.stats.peak_concurrency
        assert 5 >= peak[0]
        assert (5, "fixed by max_concurrency") == (
            client.stats.concurrency,
            client.stats.concurrency_reason,
        )


@pytest.mark.slow
async def test_a_server_concurrency_cap_is_found_and_respected() -> None:
    """A server that takes 6 at once: the client settles at 6 and every input succeeds."""
    server = FakeMonicaServer(
        api_key=KEY, latency=0.3, max_concurrency=6, rate_limit=(100, 1.0), process_images=False
    )
    async with server, MonicaClient(KEY, base_url=server.base_url, rate_limit=RateLimit(100)) as c:
        outcomes = await c.upscale_all(urls(server, 150))
        stats = server.stats
    assert all(o.ok for o in outcomes)
    assert 6 <= c.stats.concurrency <= 8
    # Refusals while the cap is found and probed, not one per request.
    assert stats.concurrency_limited < 0.3 * stats.accepted


@pytest.mark.slow
async def test_a_server_cap_is_found_by_the_default_client() -> None:
    """A server that takes 6 at once, 2.5 s each, and no options: the adaptive limiter
    learns a rate and, before the first answer, the cap as well, so the target settles
    at the cap, not above."""
    server = FakeMonicaServer(
        api_key=KEY, latency=2.5, max_concurrency=6, retry_after=0.0, process_images=False
    )
    async with server, MonicaClient(KEY, base_url=server.base_url) as c:
        finding = await c.upscale_all(urls(server, 24))
        found = (c.stats.concurrency, c.stats.concurrency_reason)
        refused = server.stats.concurrency_limited
        holding = await c.upscale_all(urls(server, 24))
    assert all(o.ok for o in finding + holding)
    assert 6 <= found[0] <= 8
    assert "cap" in found[1]
    # Once found, the cap holds: a probe's refusal now and then, not one per request.
    assert server.stats.concurrency_limited - refused <= 4


@pytest.mark.slow
async def test_sporadic_429s_do_not_collapse_the_rate() -> None:
    """5% of attempts refused at random, no real limit: the default client learns no rate."""
    server = FakeMonicaServer(
        api_key=KEY,
        latency=0.05,
        fault_rate=0.05,
        fault_weights={Fault.HTTP_429: 1.0},
        retry_after=0.0,
        process_images=False,
        seed=1,
    )
    async with server, MonicaClient(KEY, base_url=server.base_url) as client:
        outcomes = await client.upscale_all(urls(server, 300))
    assert all(o.ok for o in outcomes)
    assert server.stats.faults_injected.get(Fault.HTTP_429, 0) > 5
    assert client.stats.rate is None


@pytest.mark.slow
async def test_a_rate_limited_server_is_learned_without_options() -> None:
    """A server allowing 20/s at 0.3 s: the default client learns a rate near it."""
    server = FakeMonicaServer(
        api_key=KEY, latency=0.3, rate_limit=(20, 1.0), retry_after=0.0, process_images=False
    )
    async with server, MonicaClient(KEY, base_url=server.base_url) as client:
        outcomes = await client.upscale_all(urls(server, 120))
    assert all(o.ok for o in outcomes)
    assert client.stats.rate is not None
    assert 8 <= client.stats.rate <= 30


def test_the_default_is_automatic() -> None:
    """No max_concurrency: automatic, 8 to start with (what a new key allows), shown in
    repr and stats."""
    client = MonicaClient(KEY, base_url="http://127.0.0.1:9")
    assert None is client.max_concurrency
    assert "max_concurrency=auto" in repr(client)
    assert (8, "initial") == (client.stats.concurrency, client.stats.concurrency_reason)
