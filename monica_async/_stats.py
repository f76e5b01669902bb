"""Counters a client keeps about its own traffic."""

from __future__ import annotations

from collections import Counter, deque
from typing import Final

import attrs

__all__ = ["ClientStats", "StatsRecorder", "percentile"]

#: Latencies kept for the percentiles: the most recent ones, so memory stays flat.
LATENCY_WINDOW: Final = 10_000


@attrs.frozen(kw_only=True)
class ClientStats:
    """A snapshot of what a client did since it was created.

    Attributes:
        requests: ``upscale`` calls that passed validation.
        succeeded: Calls that returned a result.
        failed: Calls that raised, by error class name in *failures*.
        attempts: HTTP attempts made, retries included.
        retries: Attempts that were retries.
        rate_limited: 429 answers received.
        in_flight: Attempts under way right now.
        limiter_wait: Seconds spent waiting on the rate limiter, all callers summed.
        latency_p50: Median seconds per successful call, waits included (last 10,000).
        latency_p95: 95th percentile of the same.
        latency_p99: 99th percentile of the same.
        failures: Final errors by class name.
        concurrency: Attempts allowed in flight now: the automatic target, or
            ``max_concurrency`` when fixed.
        concurrency_reason: Why the target is what it is (its last change).
        rate: The limiter's rate in requests per second (what an adaptive limiter
            has learned), ``None`` when it has none.
    """

    requests: int = 0
    succeeded: int = 0
    failed: int = 0
    attempts: int = 0
    retries: int = 0
    rate_limited: int = 0
    in_flight: int = 0
    limiter_wait: float = 0.0
    latency_p50: float | None = None
    latency_p95: float | None = None
    latency_p99: float | None = None
    failures: dict[str, int] = attrs.field(factory=dict)
    concurrency: int = 0
    concurrency_reason: str = ""
    rate: float | None = None


@attrs.define
class StatsRecorder:
    """The mutable counters behind :class:`ClientStats`; cheap enough to leave on."""

    requests: int = 0
    succeeded: int = 0
    attempts: int = 0
    retries: int = 0
    rate_limited: int = 0
    in_flight: int = 0
    limiter_wait: float = 0.0
    failures: Counter[str] = attrs.field(factory=Counter)
    latencies: deque[float] = attrs.field(factory=lambda: deque(maxlen=LATENCY_WINDOW))

    def snapshot(
        self, *, concurrency: int = 0, concurrency_reason: str = "", rate: float | None = None
    ) -> ClientStats:
        """Freeze the counters, and the current limits given, into a :class:`ClientStats`."""
        ordered = sorted(self.latencies)
        return ClientStats(
            requests=self.requests,
            succeeded=self.succeeded,
            failed=sum(self.failures.values()),
            attempts=self.attempts,
            retries=self.retries,
            rate_limited=self.rate_limited,
            in_flight=self.in_flight,
            limiter_wait=self.limiter_wait,
            latency_p50=percentile(ordered, 50),
            latency_p95=percentile(ordered, 95),
            latency_p99=percentile(ordered, 99),
            failures=dict(self.failures),
            concurrency=concurrency,
            concurrency_reason=concurrency_reason,
            rate=rate,
        )


def percentile(ordered: list[float], pct: float) -> float | None:
    """The *pct* percentile of sorted values (nearest rank), ``None`` when empty."""
    if not ordered:
        return None
    rank = max(1, min(len(ordered), int(-(-pct * len(ordered) // 100))))
    return ordered[rank - 1]
