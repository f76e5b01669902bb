"""How many attempts a client keeps in flight when ``max_concurrency`` is automatic.

An upscale takes seconds, so the number of attempts in flight, not the request
rate, is what usually holds a batch back: by Little's law a key allowed *r* requests
per second at *L* seconds each needs ``r * L`` of them in flight. The controller
sizes a :class:`~monica_async._flow.Slots` from what it observes:

1. **A known rate** (the limiter's: a :class:`RateLimit`, a :class:`RedisRateLimit`,
   or what an :class:`AdaptiveRateLimit` has learned): the target is
   ``rate * L90 * 1.15 + 2``, where ``L90`` is the 90th percentile of recent
   latencies (before the first answer, the age of the oldest attempt, a lower bound),
   and at least the limiter's burst allowance (no more than the most ever accepted
   in flight). The headroom covers the spread of latencies; the limiter keeps the pace.
2. **Growth only where more in flight raises throughput**: slow start, as TCP does,
   while callers wait for a place, the limiter lets starts through at once and the
   starts stay under 80% of its rate (over a second, or the window its burst refills
   in): more in flight while callers wait on the limiter's pace would only wait
   longer on it. The target doubles every round trip (counted at most 1 s: a refusal
   comes back at once, so silence means nothing was refused), at most once per
   update, unless the latency shows queueing (Vegas-style: the recent median above
   twice the lowest median seen), which means more in flight only waits longer on
   the server. With no rate and no answer yet, nothing shows what more would do: the
   target holds. This is how the target grows when no rate is known, and how it
   makes up, with a known rate, for the first answers being the fastest ones.
3. **A server concurrency cap** (many image APIs answer 429 above N in flight):
   when the limiter's rate is fixed by the user, it paces below the server's rate
   limit by construction, so 429s that show a limit
   (:class:`~monica_async._ratelimit.Evidence`), or two in a row with as many in
   flight as any accepted attempt lately, are put down to the number in flight: the
   cap becomes the number the server was working on, and no one pauses. An adaptive
   limiter instead learns the rate that fits (a cap of *C* at latency *L* is a rate
   of *C / L*), but at a steady pace the spread of latencies still pushes the number
   in flight over the cap now and then. Before any answer, while the limiter paces,
   three refusals or more over at least a second with the number in flight flat set
   the cap to that number: under a rate limit it would have grown, nothing being
   answered yet. Once answers come and the limiter has paced for two median
   latencies (so that the accepted attempts were sent at that pace), two 429s in a
   row for attempts sent with more in flight than any accepted lately set the cap to
   the most accepted, and those 429s do not cut the rate. While callers wait at the
   cap it is probed upward by 5% (at least one place) every
   ``max(1 s, median latency)`` without such a 429 (additive increase,
   multiplicative decrease: AIMD on concurrency); a refusal in a place the probe
   opened lowers it back, doubling that interval, up to 16 times, and a probe that
   holds brings it back, so a real cap costs a refusal now and then, not one every
   round trip. Refusals one at a time among acceptances (random 429s) leave a known
   cap alone: a client saturated at its cap sends every attempt in its top place.

The target never exceeds ``max_limit`` (:data:`~monica_async._config.MAX_AUTO_CONCURRENCY`
by default) and never falls below one.
"""

from __future__ import annotations

import asyncio
import enum
import math
import time
from collections import deque
from collections.abc import Callable
from typing import Final

from ._flow import Slots
from ._ratelimit import Evidence

__all__ = ["AutoConcurrency", "Blame", "limiter_burst", "limiter_rate"]

#: Seconds between two recomputations of the target.
UPDATE_EVERY: Final = 0.1
#: Latencies kept for the percentiles.
_SAMPLES: Final = 128
#: Fewest latencies from which percentiles are trusted.
_MIN_SAMPLES: Final = 4
#: Headroom over rate x latency for the spread of latencies.
HEADROOM: Final = 1.15
_SPARE: Final = 2
#: Seconds over which the highest count in flight of an accepted attempt is remembered.
_HIGH_PERIOD: Final = 5.0
#: A limiter wait longer than this means the limiter's pace held the caller back.
_PACED: Final = 0.002
#: Weight of one start in the running share of starts the limiter let through at once.
_SLACK_WEIGHT: Final = 0.1
#: Longest round trip the slow start waits for before doubling (seconds).
_SLOW_START_RTT: Final = 1.0
#: Most the probe interval of a cap grows while probes are refused (x its base).
_MAX_PROBE_BACKOFF: Final = 16
#: The recent median latency over the lowest one that counts as queueing (Vegas).
_QUEUEING: Final = 2.0
#: Starts at this share of the limiter's rate mean the limiter is what holds them back.
_BINDING: Final = 0.8
#: The start rate is measured over the last second, or over this many of the limiter's
#: intervals at low rates (or its burst's), up to _RATE_SPAN_MAX seconds.
_RATE_SPAN_STARTS: Final = 3.0
_RATE_SPAN_MAX: Final = 120.0
#: A refusal in a place a probe opened this recently (or within two round trips) is
#: the probe's.
_PROBE_WINDOW: Final = 0.5


class Blame(enum.Enum):
    """What a 429 is put down to."""

    #: The request rate: the limiter pauses and adapts.
    RATE = "rate"
    #: The number in flight: the cap comes down; no shared pause.
    CONCURRENCY = "concurrency"


class AutoConcurrency:
    """The automatic concurrency target of one client; see the module docstring.

    Args:
        initial: Places before anything is known.
        max_limit: Upper bound of the target.
        rate: Returns the limiter's current rate in requests per second, ``None``
            when it has none.
        fixed_rate: The limiter's rate is set by the user (not learned): a 429
            that shows a limit is then put down to the number in flight.
        burst: Returns how many starts the limiter lets through back to back: at
            least that many places are kept, so that an allowance spent at once
            can start at once.
    """

    def __init__(
        self,
        initial: int,
        max_limit: int,
        rate: Callable[[], float | None],
        *,
        fixed_rate: bool = False,
        burst: Callable[[], int] | None = None,
    ) -> None:
        self.limit = min(initial, max_limit)
        self.max_limit = max_limit
        self.slots = Slots(self.limit)
        self.reason = "initial"
        self.cap: int | None = None
        #: Called whenever the target grows (batches start workers).
        self.listeners: set[Callable[[], None]] = set()
        self._rate = rate
        self._burst = burst or (lambda: 1)
        self._fixed_rate = fixed_rate
        self._evidence = Evidence()
        self._latencies: deque[float] = deque(maxlen=_SAMPLES)
        self._next_update = 0.0
        self._first_start: float | None = None
        self._demand = False
        self._slack = 1.0
        self._last_start = -math.inf
        # Starts counted, and (time, count) snapshots at each update, for the start rate.
        self._starts = 0
        self._start_marks: deque[tuple[float, int]] = deque()
        self._high = 0
        self._most_accepted = 0
        self._high_next = 0
        self._high_until = 0.0
        self._over_high = 0
        self._paced_since: float | None = None
        self._flat_level = 0
        self._flat_low = 0
        self._flat_since = 0.0
        self._flat_refusals = 0
        self._ticking = False
        self._lowest_median = math.inf
        self._cap_hit = -math.inf
        self._probed = -math.inf
        self._probe_from: int | None = None
        self._probe_backoff = 1

    def __repr__(self) -> str:
        return f"AutoConcurrency(limit={self.limit}, cap={self.cap}, reason={self.reason!r})"

    def wanted(self) -> int:
        """Workers a batch should run: twice the target.

        The spare ones wait for a place (their wait is what shows that more would be
        used) and stand in for the workers sleeping before a retry, which hold none.
        """
        return 2 * self.limit

    def waiting(self) -> None:
        """A caller found no free place: demand exceeds the target."""
        self._demand = True
        if not self._ticking:
            # Answers may be seconds away: keep the target moving while callers wait.
            self._ticking = True
            asyncio.get_running_loop().call_later(UPDATE_EVERY, self._tick)

    def _tick(self) -> None:
        self.update(time.monotonic())
        if self.slots.waiting:
            self._demand = True
            asyncio.get_running_loop().call_later(UPDATE_EVERY, self._tick)
        else:
            self._ticking = False

    def started(self, now: float, limiter_wait: float) -> None:
        """An attempt was let through the limiter at *now* after *limiter_wait* seconds."""
        if self._first_start is None:
            self._first_start = now
            self._start_marks.append((now, 0))
        self._last_start = now
        self._starts += 1
        self._slack += _SLACK_WEIGHT * ((limiter_wait <= _PACED) - self._slack)

    def accepted(self, now: float, latency: float, in_flight: int) -> None:
        """An attempt sent with *in_flight* under way (itself included) was answered."""
        self._latencies.append(latency)
        self._evidence.add(False)
        if now >= self._high_until:
            # A rolling maximum over the last one or two periods.
            self._high, self._high_next = self._high_next, 0
            self._high_until = now + _HIGH_PERIOD
        if in_flight > self._high:
            self._over_high = 0  # refusals above the old high did not show a cap
            self._high = in_flight
        self._high_next = max(self._high_next, in_flight)
        self._most_accepted = max(self._most_accepted, in_flight)
        if now >= self._next_update:
            self.update(now)

    # -- 429s ---------------------------------------------------------------------------

    def rate_limited(self, now: float, in_flight: int, sent_with: int) -> Blame:
        """Put a 429 down to the rate or to the number in flight (or to both).

        Args:
            now: When the 429 arrived.
            in_flight: Attempts in flight when it arrived, itself excluded: those the
                server was working on, give or take the refusals on their way back.
            sent_with: Attempts in flight when it was sent, itself included.
        """
        self._evidence.add(True)
        probe = self._probe_from
        recent = max(2 * self._round_trip(), _PROBE_WINDOW)
        if probe is not None and sent_with > probe and now - self._probed <= recent:
            # Refused in a place the last probe opened: the cap was right before it.
            self._cap_at(now, max(1, sent_with - 1), f"429 at the top of the cap: cap {probe}")
            return Blame.CONCURRENCY
        if self._fixed_rate:
            return self._blame_fixed(now, in_flight)
        return self._blame_adaptive(now, in_flight, sent_with)

    def _blame_fixed(self, now: float, in_flight: int) -> Blame:
        """A limiter whose rate the user set paces below the server's rate limit by
        construction: 429s that show a limit (or come two in a row with as many in
        flight as any accepted lately) are put down to the number in flight."""
        high = self._high if self.cap is None else min(self._high, self.cap)
        at_high = 0 < high <= in_flight + 1 and self._evidence.streak >= 2
        if not (at_high or self._evidence.shows_limit()):
            return Blame.RATE  # the odd refusal: the limiter has its own say
        cap = max(1, in_flight)
        self._cap_at(now, cap, f"429 with {in_flight} in flight: cap {min(cap, self.cap or cap)}")
        return Blame.CONCURRENCY

    def _blame_adaptive(self, now: float, in_flight: int, sent_with: int) -> Blame:
        """An adaptive limiter learns the rate that fits, whatever the server counts,
        unless the refusals show a cap: before any answer, the number in flight stays
        flat while its rate would have let it grow; once it paces, they come only
        above the most in flight accepted lately."""
        if not self._latencies:
            return Blame.CONCURRENCY if self._flat(now, in_flight) else Blame.RATE
        high = self._high
        if sent_with <= high or not self._paced_long_enough(now):
            self._over_high = 0
            return Blame.RATE
        self._over_high += 1
        if self._over_high < 2:
            return Blame.RATE
        self._cap_at(now, high, f"429s above {high} in flight: cap {high}")
        return Blame.CONCURRENCY

    def _flat(self, now: float, in_flight: int) -> bool:
        """Before any answer: whether refusals show a cap, and if so set it.

        The attempts in flight are then all accepted ones (a refusal comes back at
        once), and under a rate limit their number grows at the server's rate, nothing
        being answered yet; under a cap it stays where the cap is. So while the limiter
        paces, three refusals or more with no more in flight than the first of them,
        over at least 1 s (or two of the limiter's intervals, at rates under 2/s),
        show a cap: the fewest in flight at any of them.
        """
        rate = self._rate()
        if rate is None or in_flight > self._flat_level:
            # Not pacing yet (the first burst), or the number grew: start over.
            self._flat_level = self._flat_low = in_flight
            self._flat_since, self._flat_refusals = now, 1
            return False
        self._flat_low = min(self._flat_low, in_flight)
        self._flat_refusals += 1
        if self._flat_refusals < 3 or now - self._flat_since < max(1.0, 2.0 / rate):
            return False
        cap = max(1, self._flat_low)
        self._cap_at(now, cap, f"429s at {cap} in flight, none answered yet: cap {cap}")
        return True

    def _paced_long_enough(self, now: float) -> bool:
        """Whether the limiter has paced for two median latencies: only then do the
        accepted attempts' numbers in flight tell what the server takes at that pace
        (before, they were sent with fewer in flight than are now under way)."""
        if self._high == 0 or len(self._latencies) < _MIN_SAMPLES:
            return False
        if self._rate() is None:
            self._paced_since = None
            return False
        if self._paced_since is None:
            self._paced_since = now
        return now - self._paced_since >= 2 * self._round_trip()

    def _round_trip(self) -> float:
        """The median latency lately (0 before any answer)."""
        if not self._latencies:
            return 0.0
        return sorted(self._latencies)[len(self._latencies) // 2]

    def _cap_at(self, now: float, cap: int, reason: str) -> None:
        """Lower the cap to *cap* (it is never raised here) and the target with it."""
        if self._probed > self._cap_hit:
            # The last probe was refused: the cap is real, so probe it less often.
            self._probe_backoff = min(2 * self._probe_backoff, _MAX_PROBE_BACKOFF)
        if self.cap is None or cap < self.cap:
            self.cap = cap
        self._cap_hit = now
        self._probe_from = None
        self._set(min(self.limit, self.cap), reason)

    # -- the target ---------------------------------------------------------------------

    def update(self, now: float) -> None:
        """Recompute the target from the rate, the latencies and the demand seen."""
        self._next_update = now + UPDATE_EVERY
        demand, self._demand = self._demand, False
        self._mark_starts(now)
        median, high = self._percentiles()
        rate = self._rate()
        self._track_pacing(now, rate)
        target, reason = self._target(now, demand, rate, median, high)
        if self.cap is not None:
            target, reason = self._within_cap(now, demand, median, target, reason)
        self._set(target, reason)

    def _percentiles(self) -> tuple[float | None, float | None]:
        """The median and the 90th percentile of recent latencies (``None``: too few)."""
        if len(self._latencies) < _MIN_SAMPLES:
            return None, None
        ordered = sorted(self._latencies)
        median = ordered[len(ordered) // 2]
        self._lowest_median = min(self._lowest_median, median)
        return median, ordered[int(0.9 * (len(ordered) - 1))]

    def _track_pacing(self, now: float, rate: float | None) -> None:
        if rate is None:
            self._paced_since = None
        elif self._paced_since is None:
            self._paced_since = now

    def _mark_starts(self, now: float) -> None:
        marks = self._start_marks
        marks.append((now, self._starts))
        while len(marks) > 1 and marks[1][0] <= now - _RATE_SPAN_MAX:
            marks.popleft()

    def _start_rate(self, now: float, rate: float) -> float:
        """Starts per second over the last second; longer at low rates (a few starts)
        or with a burst allowance (the window it refills over)."""
        spread = max(_RATE_SPAN_STARTS, self._burst()) / rate
        span = min(_RATE_SPAN_MAX, max(1.0, spread))
        for at, count in self._start_marks:
            if at >= now - span:
                return (self._starts - count) / max(now - at, UPDATE_EVERY)
        return 0.0

    def _target(
        self,
        now: float,
        demand: bool,
        rate: float | None,
        median: float | None,
        high: float | None,
    ) -> tuple[int, str]:
        """The target before any server cap, and why."""
        grow = demand and self._more_would_help(now, rate, median)
        grown = self._grown(median)
        if rate is None:
            if grow:
                return grown, "callers waiting, no rate known: slow start"
            return self.limit, self.reason
        little, reason = self._little(now, rate, high)
        if grow and grown > little:
            # The first answers are the fastest: Little's law can fall short early.
            return grown, f"callers waiting below rate {rate:.3g}/s: growing"
        if grow and self.limit > little:
            return self.limit, self.reason  # keep what was grown while it is used
        return little, reason

    def _more_would_help(self, now: float, rate: float | None, median: float | None) -> bool:
        """Whether more in flight would raise the throughput of the callers waiting.

        Not before anything is known (no answer and no rate), not during a pause
        (nothing starts), not while the limiter holds callers back
        (they wait for its pace, or the starts already reach its rate: more in flight
        would only wait longer on it), not while the server queues (Vegas: the recent
        median latency above twice the lowest one seen).
        """
        if median is None and rate is None:
            return False  # nothing answered yet: nothing shows what more would do
        if now - self._last_start >= 2 * UPDATE_EVERY or self._slack < 0.5:
            return False
        if rate is not None and self._start_rate(now, rate) >= _BINDING * rate:
            return False
        return median is None or median <= _QUEUEING * self._lowest_median + _PACED

    def _grown(self, median: float | None) -> int:
        """Slow start: the target doubled per round trip (counted at most
        _SLOW_START_RTT, since a refusal comes back at once anyway), at most doubled
        per update."""
        rtt = _SLOW_START_RTT if median is None else min(median, _SLOW_START_RTT)
        factor = min(2.0, 2 ** (UPDATE_EVERY / max(rtt, 0.01)))
        return max(self.limit + 1, math.ceil(self.limit * factor))

    def _little(self, now: float, rate: float, high: float | None) -> tuple[int, str]:
        """Little's law with headroom for the spread of latencies, and room for the
        limiter's burst allowance."""
        bound = high is None
        if bound and self._first_start is not None:
            # Nothing answered yet: the oldest attempt's age bounds the latency below.
            high = now - self._first_start
        latency = high or 0.0
        # A burst wants as many places, but no more than have been seen accepted.
        burst = min(self._burst(), self._most_accepted or self.limit)
        little = max(math.ceil(rate * latency * HEADROOM) + _SPARE, burst)
        if bound:
            little = max(little, self.limit)  # a lower bound only ever raises it
        return little, f"rate {rate:.3g}/s x latency {latency:.3g} s"

    def _within_cap(
        self, now: float, demand: bool, median: float | None, target: int, reason: str
    ) -> tuple[int, str]:
        """The target within the server's cap, probed upward now and then."""
        cap = self.cap
        assert cap is not None
        interval = max(1.0, median or 0.0) * self._probe_backoff
        if (
            median is not None  # before any answer, nothing frees a place anyway
            and demand
            and self.limit >= cap
            and now - self._cap_hit >= interval
            and now - self._probed >= interval
        ):
            if self._probed > self._cap_hit:
                self._probe_backoff = 1  # the last probe held: the cap may move
            self._probe_from = cap
            self.cap = cap = min(self.max_limit, cap + max(1, cap // 20))
            self._probed = now
            reason = f"probing the server's cap: {cap}"
        return min(target, cap), reason

    def _set(self, target: int, reason: str) -> None:
        target = max(1, min(self.max_limit, target))
        if target != self.limit:
            grew = target > self.limit
            self.slots.resize(target - self.limit)
            self.limit = target
            self.reason = reason
            if grew:
                for listener in list(self.listeners):
                    listener()


def limiter_burst(limiter: object) -> Callable[[], int]:
    """How to read the starts a limiter lets through back to back (1 when unknown)."""

    def current() -> int:
        burst = getattr(limiter, "effective_burst", 1)
        return burst if isinstance(burst, int) and burst > 0 else 1

    return current


def limiter_rate(limiter: object) -> Callable[[], float | None]:
    """How to read a limiter's rate in requests per second (``None``: unknown)."""
    if hasattr(limiter, "rate"):

        def current() -> float | None:
            rate = getattr(limiter, "rate", None)
            return float(rate) if isinstance(rate, int | float) and rate > 0 else None

        return current
    requests, per = getattr(limiter, "requests", None), getattr(limiter, "per", None)
    if isinstance(requests, int) and isinstance(per, int | float) and per > 0:
        fixed = requests / per
        return lambda: fixed
    return lambda: None
