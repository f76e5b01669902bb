"""The admission gate: places in flight and the limiter's leave, given back exactly once."""

from __future__ import annotations

import asyncio
from typing import Any, cast

from monica_async._admission import Admission
from monica_async._flow import Slots
from monica_async._stats import StatsRecorder


class Target:
    """An automatic concurrency target that only moves when the test moves it."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.slots = Slots(limit)

    def waiting(self) -> None:
        """Nothing to learn from callers waiting."""

    def started(self, now: float, limiter_wait: float) -> None:
        """Nothing to learn from a start."""

    def accepted(self, now: float, latency: float, in_flight: int) -> None:
        """Nothing to learn from an answer."""


class GatedLimiter:
    """A limiter whose leave is given by the test (``gate.set()``)."""

    def __init__(self) -> None:
        self.gate = asyncio.Event()

    async def acquire(self) -> float:
        await self.gate.wait()
        return 0.0

    async def on_rate_limited(self, retry_after: float | None, started: float) -> float:
        return 0.0

    async def on_success(self, started: float) -> None:
        return None

    async def aclose(self) -> None:
        return None


async def test_a_turn_cancelled_while_it_waits_again_for_a_place_gives_it_back_once() -> None:
    """The target shrinks while an attempt waits for the limiter; the attempt gives its
    place back and waits for one within the new target; cancelled there, it gives
    nothing back a second time: the places end where the target says."""
    auto = Target(2)
    limiter = GatedLimiter()
    admission = Admission(auto.slots, limiter, cast(Any, auto), StatsRecorder())
    limiter.gate.set()
    first = admission.turn(1, 60.0)
    await first.__aenter__()
    limiter.gate.clear()
    second = asyncio.create_task(admission.turn(1, 60.0).__aenter__())
    await asyncio.sleep(0)
    auto.limit = 1
    auto.slots.resize(-2)  # both places gone while held: the target is now none free
    limiter.gate.set()
    for _ in range(5):
        await asyncio.sleep(0)
    assert 1 == auto.slots.waiting  # the second waits for a place within the target
    second.cancel()
    await asyncio.gather(second, return_exceptions=True)
    await first.__aexit__(None, None, None)

    assert (0, 0, 0) == (auto.slots.free, auto.slots.waiting, admission.stats.in_flight)
