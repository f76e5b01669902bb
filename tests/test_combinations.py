"""Defaults that compose: limiters, automatic concurrency, Redis and the server together.

Each scenario runs the fake server and one or three client processes (real
subprocesses, a real redis-server for a shared limit) and is judged from the
server's side by the rules in ``benchmarks/_scenarios.py``: the worst window within
the limit, one outcome per input, at most ``max_attempts`` per input, no false
outage, nothing hung. The cases of issue 22 come first, then a reduced combination
matrix (the whole matrix runs in ``python -m benchmarks --only combinations``).
"""

from __future__ import annotations

import pytest

from benchmarks._scenarios import Scenario, Verdict, redis_binary, run_scenario
from benchmarks.bench_combinations import RATE, matrix

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

REDIS = {"limiter": "redis", "requests": RATE}


def run(scenario: Scenario) -> Verdict:
    """Run *scenario*, skipping (failing under CI=true) without a redis-server."""
    if scenario.redis and redis_binary() is None:
        from conftest_redis import required_redis_binary

        required_redis_binary()
    return run_scenario(scenario)


# -- issue 22's cases --------------------------------------------------------------------


@pytest.mark.parametrize("limiter", [{"limiter": "ratelimit", "requests": RATE}, REDIS])
def test_a_binding_limiter_keeps_the_concurrency_near_rate_times_latency(
    limiter: dict[str, object],
) -> None:
    """30 per second at 20 ms a call needs one or two in flight: the automatic
    concurrency stays within 16 (it went to 256 while callers waited on the pace)."""
    verdict = run(
        Scenario(
            label="binding",
            server=("--latency", "0.02"),
            client=limiter,
            seconds=4.0,
            bound=RATE,
        )
    )
    assert [] == verdict.problems()
    assert verdict.concurrency_peak <= 16


@pytest.mark.parametrize(
    ("processes", "latency", "concurrency"),
    [(3, "2,4", None), (1, "2", None), (3, "0.5,1", 256)],
)
def test_a_shared_limit_never_takes_a_full_pool_for_an_outage(
    processes: int, latency: str, concurrency: int | None
) -> None:
    """Three processes (or one) sharing RedisRateLimit(30) at seconds per call, Redis
    up all along: no process logs an outage, even with 256 in flight each (redis-py's
    default pool holds 100 connections and refuses the 101st call at once)."""
    verdict = run(
        Scenario(
            label="pool",
            server=("--latency", latency),
            client={**REDIS, "concurrency": concurrency},
            processes=processes,
            seconds=8.0,
            bound=RATE + 1,  # three processes on two shared cores: a start of jitter
        )
    )
    assert [] == verdict.problems()
    assert verdict.inputs > 0


def test_a_redis_outage_keeps_the_bound_with_every_default() -> None:
    """Three processes at 30 per second, 20 ms a call, defaults; redis-server killed
    at 3 s and restarted at 6 s: at most 30 + 10 in any second around the switches,
    30 (and a start of jitter) during the outage, nothing hung."""
    verdict = run(
        Scenario(
            label="outage",
            server=("--latency", "0.02"),
            client=REDIS,
            processes=3,
            seconds=9.0,
            outage=(3.0, 6.0),
            bound=RATE + 1,
            switch_bound=RATE + RATE // 3,
            deadline=60.0,
        )
    )
    assert [] == verdict.problems(), verdict.windows
    assert 4 == len(verdict.windows)


def test_isolated_429s_cost_the_default_client_little() -> None:
    """5% of calls refused at random, 20-80 ms a call, no real limit: the default
    client takes at most 1.5 times as long as one with a non-binding RateLimit."""
    server = ("--latency", "0.02,0.08", "--fault-rate", "0.05", "--faults", "http_429")
    walls = {}
    for name, client in {
        "default": {"limiter": "default"},
        "RateLimit(1000)": {"limiter": "ratelimit", "requests": 1000},
    }.items():
        verdict = run(Scenario(label=name, server=server, client=client, images=400))
        assert [] == verdict.problems()
        assert 0 == verdict.failed
        walls[name] = verdict.wall
    assert walls["default"] <= 1.5 * walls["RateLimit(1000)"], walls


# -- the matrix, reduced -------------------------------------------------------------------

#: One scenario for each value of each axis, and the pairs most likely to clash.
REDUCED = (
    "none given, auto, 30/s, 20-80 ms",
    "none given, fixed 16, 8 in flight, 20-80 ms",
    "RateLimit(30), auto, 8 in flight, 2-4 s",
    "RateLimit(30), fixed 16, 5% 429s, 20-80 ms",
    "AdaptiveRateLimit(start=45), auto, 5% drops, 20-80 ms",
    "AdaptiveRateLimit(start=45), fixed 16, 30/s, 2-4 s",
    "RedisRateLimit(30) x3, auto, 30/s, 2-4 s",
    "RedisRateLimit(30) x3, fixed 16, 5% 429s, 20-80 ms",
    "RedisRateLimit(30) x3, auto, Redis outage, 20-80 ms",
)


def _reduced() -> list[Scenario]:
    chosen = {s.label: s for s in matrix(5.0, scale=4.0, outage_seconds=9.0)}
    return [chosen[label] for label in REDUCED]


@pytest.mark.parametrize("scenario", _reduced(), ids=lambda s: s.label)
def test_combination(scenario: Scenario) -> None:
    """The server's worst window within the limit, one outcome per input, at most 4
    attempts per input, no false outage, nothing hung."""
    verdict = run(scenario)
    assert [] == verdict.problems()
    assert verdict.inputs > 0


def test_dropped_connections_keep_the_window() -> None:
    """5% of connections dropped after the latency, RateLimit(30), 16 in flight: the
    server still sees at most 30 attempts in any second (a resend after a dropped
    connection is an attempt, booked by the limiter like any other)."""
    server = ("--latency", "0.02,0.08", "--fault-rate", "0.05", "--faults", "drop")
    client = {"limiter": "ratelimit", "requests": RATE, "concurrency": 16}
    verdict = run(Scenario(label="drops", server=server, client=client, seconds=6.0, bound=RATE))
    assert [] == verdict.problems()
