"""When an attempt may go: a place among those in flight, then the rate limiter's leave.

Every attempt of the client enters a :class:`Turn` (an async context manager) around
its HTTP exchange. On the way in it takes a place (the concurrency cap, fixed or
automatic) and waits for the limiter; on the way out it tells them how the attempt
went: an answer teaches the automatic target the latency, a 429 is put down to the
rate (the limiter pauses) or to the number in flight (the target comes down).

In a batch refused meanwhile (a wrong key, a spent balance: see :mod:`._refusal`) the
waits end at once and nothing is sent: the attempt raises that refusal instead.
"""

from __future__ import annotations

import time
from types import TracebackType

import attrs

from ._concurrency import AutoConcurrency, Blame
from ._exceptions import RateLimitError
from ._flow import Slots
from ._ratelimit import RateLimiter
from ._refusal import check as check_refused
from ._refusal import unless_refused
from ._stats import StatsRecorder

__all__ = ["Admission", "Turn"]


@attrs.define
class Admission:
    """The places, the limiter and the counters every attempt of one client shares.

    Args:
        slots: Places in flight (the automatic target's own when *auto* is set).
        limiter: The rate limiter.
        auto: The automatic concurrency target, ``None`` when it is fixed.
        stats: The client's counters.
    """

    slots: Slots
    limiter: RateLimiter
    auto: AutoConcurrency | None
    stats: StatsRecorder

    def turn(self, number: int, max_retry_after: float) -> Turn:
        """The turn of attempt *number*; a 429's pause is honoured up to *max_retry_after*."""
        return Turn(self, number, max_retry_after)


class Turn:
    """One attempt's passage through :class:`Admission` (an async context manager).

    Attributes:
        waited: Seconds the limiter held the attempt back.
        started: When the attempt was let go (``time.monotonic()``).
    """

    def __init__(self, admission: Admission, number: int, max_retry_after: float) -> None:
        self._admission = admission
        self._number = number
        self._max_retry_after = max_retry_after
        self._in_flight = 0
        self._holding = False
        self.waited = 0.0
        self.started = 0.0

    async def __aenter__(self) -> Turn:
        admission = self._admission
        if not admission.slots.try_acquire():
            await unless_refused(self._wait_for_place)
        self._holding = True
        try:
            self.waited = await unless_refused(admission.limiter.acquire)
            await self._recheck_place()
            check_refused()
        except BaseException:
            if self._holding:
                admission.slots.release()
            raise
        self.started = time.monotonic()
        stats = admission.stats
        stats.limiter_wait += self.waited
        stats.attempts += 1
        stats.retries += self._number > 1
        stats.in_flight += 1
        self._in_flight = stats.in_flight
        if admission.auto is not None:
            admission.auto.started(self.started, self.waited)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        admission = self._admission
        try:
            admission.stats.in_flight -= 1
            if exc is None:
                await self._answered()
            elif isinstance(exc, RateLimitError):
                await self._refused(exc)
        finally:
            admission.slots.release()

    async def _wait_for_place(self) -> None:
        """Wait for a place in flight; waiting tells the automatic target of demand."""
        if self._admission.auto is not None:
            self._admission.auto.waiting()
        await self._admission.slots.acquire()

    async def _recheck_place(self) -> None:
        """If the target came down while the limiter held this attempt back (a server
        cap was found) and as many as it allows are in flight, wait for a place within it."""
        admission = self._admission
        auto, slots = admission.auto, admission.slots
        if auto is not None and slots.free < 0 and admission.stats.in_flight >= auto.limit:
            slots.release()
            self._holding = False
            await unless_refused(self._wait_for_place)
            self._holding = True

    async def _answered(self) -> None:
        admission = self._admission
        if admission.auto is not None:
            now = time.monotonic()
            admission.auto.accepted(now, now - self.started, self._in_flight)
        await admission.limiter.on_success(self.started)

    async def _refused(self, exc: RateLimitError) -> None:
        """A 429: fewer places when it is put down to the number in flight, else a
        shared pause of the limiter (a ``Retry-After`` longer than the policy honours
        fails this call, and is not imposed on every other caller either)."""
        admission = self._admission
        admission.stats.rate_limited += 1
        auto = admission.auto
        if auto is not None:
            in_flight = admission.stats.in_flight  # this attempt no longer counted
            if auto.rate_limited(time.monotonic(), in_flight, self._in_flight) is Blame.CONCURRENCY:
                return
        pause = exc.retry_after
        if pause is not None:
            pause = min(pause, self._max_retry_after)
        await admission.limiter.on_rate_limited(pause, self.started)
