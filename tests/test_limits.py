"""A key's limits: stated once (``Limits``, ``run --rate --in-flight``), or learned.

Monica documents 10 requests per minute and 8 in flight for a new key. The loopback
tests play those limits time-scaled (a window of a few seconds) against the fake
server and judge from the server's side.
"""

from __future__ import annotations

import time

import pytest
from conftest import API_KEY

from monica_async import (
    AdaptiveRateLimit,
    InvalidRequestError,
    Limits,
    MonicaClient,
    RateLimit,
)
from monica_async.testing import FakeMonicaServer

BASE = "http://127.0.0.1:9"


def urls(server: FakeMonicaServer, count: int, name: str = "i") -> list[str]:
    return [f"{server.base_url}/images/{name}{i}.png" for i in range(count)]


# -- Limits ----------------------------------------------------------------------------


def test_the_documented_limits_are_monicas() -> None:
    """A new Monica key: 10 requests per minute, 8 at once."""
    assert Limits(rate="10/min", in_flight=8) == Limits.documented()
    assert (10, 60.0) == Limits.documented().rate


@pytest.mark.parametrize(
    ("rate", "expected"),
    [("10/min", (10, 60.0)), ("5/s", (5, 1.0)), ("60/12s", (60, 12.0)), ((60, 12), (60, 12.0))],
)
def test_a_rate_reads_the_command_lines_syntax_or_a_pair(
    rate: str | tuple[int, float], expected: tuple[int, float]
) -> None:
    """``"10/min"`` as on the command line, or ``(requests, seconds)``."""
    assert expected == Limits(rate=rate).rate


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"rate": "fast"}, "rate must look like 60/min, 5/s, 1000/h or 10/30s, got 'fast'"),
        ({"rate": (0, 60)}, "rate must be a string such as 60/min"),
        ({"rate": 10}, "rate must be a string such as 60/min"),
        ({"in_flight": 0}, "in_flight must be an integer >= 1 or None, got 0"),
        ({"in_flight": True}, "in_flight must be an integer >= 1 or None, got True"),
    ],
)
def test_invalid_limits_name_the_field(options: dict[str, object], message: str) -> None:
    """A limit of the wrong form is refused with the field's name and the forms."""
    with pytest.raises(InvalidRequestError) as info:
        Limits(**options)  # type: ignore[arg-type]
    assert str(info.value).startswith(message)


def test_the_client_keeps_to_the_limits_stated() -> None:
    """The rate becomes a RateLimit whose allowance starts at once; the automatic
    concurrency starts within in_flight."""
    client = MonicaClient(API_KEY, base_url=BASE, limits=Limits(rate="10/min", in_flight=4))
    limiter = client.rate_limit
    assert isinstance(limiter, RateLimit)
    assert (10, 60.0, 10) == (limiter.requests, limiter.per, limiter.effective_burst)
    assert (4, None) == (client.stats.concurrency, client.max_concurrency)
    assert Limits(rate=(10, 60.0), in_flight=4) == client.limits


def test_without_limits_the_client_learns_them() -> None:
    """No limits stated: the adaptive limiter, and 8 in flight to start with."""
    client = MonicaClient(API_KEY, base_url=BASE)
    assert isinstance(client.rate_limit, AdaptiveRateLimit)
    assert (Limits(), 8) == (client.limits, client.stats.concurrency)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"limits": Limits(rate="10/min"), "rate_limit": RateLimit(5)}, "give the rate once"),
        ({"limits": Limits(in_flight=8), "max_concurrency": 4}, "give the concurrency once"),
        ({"limits": "10/min"}, "limits must be a Limits such as"),
    ],
)
def test_a_limit_is_stated_in_one_place(options: dict[str, object], message: str) -> None:
    """The same limit given twice (or limits of the wrong type) is refused."""
    with pytest.raises(InvalidRequestError, match=message):
        MonicaClient(API_KEY, base_url=BASE, **options)  # type: ignore[arg-type]


def test_in_flight_may_go_with_a_limiter_of_ones_own() -> None:
    """A shared limiter for the rate, the key's in-flight limit for the concurrency."""
    limiter = RateLimit(10, per=60.0)
    client = MonicaClient(API_KEY, base_url=BASE, rate_limit=limiter, limits=Limits(in_flight=3))
    assert (limiter, 3) == (client.rate_limit, client.stats.concurrency)


# -- against the fake server -----------------------------------------------------------


@pytest.mark.slow
async def test_the_automatic_concurrency_never_passes_in_flight() -> None:
    """Limits(in_flight=3) against a server that would take any number: at most 3."""
    server = FakeMonicaServer(api_key=API_KEY, latency=0.2, process_images=False)
    async with (
        server,
        MonicaClient(API_KEY, base_url=server.base_url, limits=Limits(in_flight=3)) as client,
    ):
        outcomes = await client.upscale_all(urls(server, 30))
    assert [True] * 30 == [o.ok for o in outcomes]
    assert 3 == server.stats.peak_concurrency


@pytest.mark.slow
async def test_eight_calls_within_a_windows_allowance_start_together() -> None:
    """RateLimit(10, per=12) and 8 inputs on a fresh window (Monica's 10 per minute,
    time-scaled): all 8 reach the server at once, none is refused."""
    server = FakeMonicaServer(
        api_key=API_KEY,
        latency=0.4,
        rate_limit=(10, 12.0),
        max_concurrency=8,
        process_images=False,
    )
    limiter = RateLimit(10, per=12.0)
    async with server, MonicaClient(API_KEY, base_url=server.base_url, rate_limit=limiter) as c:
        outcomes = await c.upscale_all(urls(server, 8))
    arrivals = sorted(server.stats.request_times)
    assert [True] * 8 == [o.ok for o in outcomes]
    assert 8 == len(arrivals)
    assert arrivals[-1] - arrivals[0] < 0.5


@pytest.mark.slow
@pytest.mark.timeout(90)
async def test_the_stated_limits_are_kept_from_the_first_request() -> None:
    """Limits(rate="5/3s", in_flight=4) against a server enforcing exactly those: no
    429, every window's allowance at once."""
    server = FakeMonicaServer(
        api_key=API_KEY,
        latency=0.2,
        rate_limit=(5, 3.0),
        max_concurrency=4,
        process_images=False,
    )
    async with (
        server,
        MonicaClient(
            API_KEY, base_url=server.base_url, limits=Limits(rate="5/3s", in_flight=4)
        ) as client,
    ):
        outcomes = await client.upscale_all(urls(server, 15))
    assert [True] * 15 == [o.ok for o in outcomes]
    assert (15, 0) == (server.stats.total, server.stats.by_status.get(429, 0))


@pytest.mark.slow
@pytest.mark.timeout(90)
async def test_the_default_client_learns_a_long_window_from_retry_after() -> None:
    """No options, a server allowing 10 per 3 s sliding window (Monica's 10 per minute,
    time-scaled) and 8 in flight: the first window's refusal teaches the window (10
    per a little over 3 s), and the later windows go without refusals."""
    server = FakeMonicaServer(
        api_key=API_KEY,
        latency=(0.4, 0.8),
        rate_limit=(10, 3.0),
        max_concurrency=8,
        process_images=False,
        seed=1,
    )
    async with server, MonicaClient(API_KEY, base_url=server.base_url) as client:
        began = time.monotonic()
        outcomes = await client.upscale_all(urls(server, 40))
        wall = time.monotonic() - began
        limiter = client.rate_limit
    assert isinstance(limiter, AdaptiveRateLimit)
    assert [True] * 40 == [o.ok for o in outcomes]
    assert limiter.window is not None
    assert 10 == limiter.window[0]
    assert 3.0 <= limiter.window[1] < 4.5
    # A refusal or two while the first window is learned, few after.
    assert server.stats.by_status.get(429, 0) <= 3
    assert wall < 3 * 4.5 + 5  # three windows after the first, generously
