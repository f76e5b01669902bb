"""Client-side rate limiters: the interface and the in-process implementations.

Every attempt the client makes, retries included, first awaits
:meth:`RateLimiter.acquire`, because the server counts attempts. A 429 from the
server reaches the limiter through :meth:`RateLimiter.on_rate_limited`, which
pauses everyone sharing the limiter instead of letting each caller rediscover the
limit on its own.

The in-process limiters take no locks: asyncio runs one coroutine at a time, so a
caller computes and books its start time without awaiting, then sleeps until it.
Booking ahead keeps callers in first-come order and lets one limiter be shared by
several clients (even on several event loops) in one process.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import math
import random
import time
from collections import deque
from typing import Final, Protocol, runtime_checkable

import attrs

from ._exceptions import InvalidRequestError
from ._retry import is_testing

__all__ = ["AdaptiveRateLimit", "Evidence", "RateLimit", "RateLimiter"]

#: Pause after a 429 without ``Retry-After``; doubled on each 429 in a row.
DEFAULT_PAUSE: Final = 1.0
MAX_PAUSE: Final = 60.0
#: Bounds of the default safety margin added to each window (seconds).
MIN_MARGIN: Final = 0.015
#: Successes in a second an adaptive limiter needs before it trusts them as a rate.
_MIN_SAMPLES: Final = 3
#: Outcomes :class:`Evidence` looks at, the share of 429s among them and the run of
#: 429s that show a limit.
_EVIDENCE_WINDOW: Final = 100
_EVIDENCE_SHARE: Final = 0.15
_EVIDENCE_STREAK: Final = 4
#: A booking this far ahead means the limiter is holding callers back.
_HELD: Final = 0.002
#: Longest span over which an adaptive limiter measures the rate accepted (seconds).
_MEASURE_MAX: Final = 5.0
#: Additive increase: this share of the rate per second, at least _MIN_STEP per second.
_STEP: Final = 0.05
_MIN_STEP: Final = 0.1
#: Seconds between snapshots of an adaptive limiter's counters.
_MARK_EVERY: Final = 0.05
#: Seconds over which callers resume after a pause when no rate is known.
_RESUME_SPREAD: Final = 0.25
#: A Retry-After this long tells of a window longer than a second.
_LONG_RETRY_AFTER: Final = 2.0
#: Accepted starts an adaptive limiter remembers, to size a window it learns.
_WINDOW_LOG: Final = 2000
#: Background shares of 429s below this are no background.
_MIN_NOISE: Final = 0.02
#: A window whose length the server does not tell: each probe comes this much later
#: than the last refused one (counted from the window's oldest start), so the length
#: found is at most that much too long; callers start this many seconds apart
#: meanwhile (a refusal comes back at once and pauses the next).
_PROBE_GROWTH: Final = 1.2
_PROBE_SPACING: Final = 1.0
MAX_MARGIN: Final = 0.5
#: Seconds a start of a burst is counted to take to reach the server (10x what was
#: measured on loopback), for the default burst.
START_SPREAD: Final = 0.005


@runtime_checkable
class RateLimiter(Protocol):
    """What :class:`~monica_async.MonicaClient` needs from a rate limiter.

    Implement it to plug in another limiter; :class:`RateLimit`,
    :class:`AdaptiveRateLimit` and :class:`~monica_async.RedisRateLimit` do.
    """

    async def acquire(self) -> float:
        """Wait until one more attempt may start; return the seconds waited."""
        ...

    async def on_rate_limited(self, retry_after: float | None, started: float) -> float:
        """Pause every caller after a 429.

        Args:
            retry_after: Seconds the server asked to wait, when it said.
            started: ``time.monotonic()`` when the rejected attempt was let through.

        Returns:
            The pause, in seconds from now.
        """
        ...

    async def on_success(self, started: float) -> None:
        """Report that an attempt let through at *started* was accepted."""
        ...

    async def aclose(self) -> None:
        """Release what the limiter holds (connections); it may not be used again."""
        ...


@attrs.define(eq=False)
class _Pause:
    """The shared "not before" time every limiter honours after a 429."""

    not_before: float = 0.0
    epoch: int = 0
    streak: int = 0
    #: Bumped when the limiter's rules change (a rate or window learned): slots
    #: booked before are void, their callers wake and book again.
    rules: int = 0
    _since: float = -math.inf
    _renewed: asyncio.Event | None = None

    def renew(self) -> None:
        """Void every slot booked so far: its sleeping caller wakes and books again."""
        self.rules += 1
        if self._renewed is not None:
            self._renewed.set()
            self._renewed = None

    async def sleep(self, delay: float) -> None:
        """Sleep *delay* seconds, or less if the rules are renewed meanwhile."""
        if self._renewed is None:
            self._renewed = asyncio.Event()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(delay):
                await self._renewed.wait()

    def extend(self, retry_after: float | None, now: float, started: float) -> float:
        """Move the pause to at least *retry_after* (or a growing default) from now.

        *started* is when the rejected attempt was let through: 429s answering
        attempts sent before the last pause began belong to the same burst and do
        not lengthen the default pause again.
        """
        if started >= self._since:
            self.streak += 1
            self._since = now
        if retry_after is None:
            pause = min(DEFAULT_PAUSE * 2 ** min(self.streak - 1, 16), MAX_PAUSE)
        else:
            pause = max(0.0, retry_after)
        if is_testing():
            pause = 0.0
        # A little positive jitter so that the callers of several limiters (or processes)
        # who heard the same Retry-After do not all come back in the same millisecond.
        until = now + pause + random.uniform(0.0, min(0.1 * pause, 0.25))
        if until > self.not_before:
            self.not_before = until
            self.epoch += 1
        return self.not_before - now


class _Booking:
    """Shared acquire loop: book a start time, sleep until it, re-book after a pause."""

    _pause: _Pause

    def _book(self, now: float) -> float:
        raise NotImplementedError

    def _cancel(self, slot: float) -> None:
        raise NotImplementedError

    async def acquire(self) -> float:
        """Wait until one more attempt may start; return the seconds waited."""
        began = now = time.monotonic()
        pause = self._pause
        while True:
            epoch, rules = pause.epoch, pause.rules
            slot = self._book(now)
            if slot <= now:
                return now - began
            try:
                await self._sleep(slot - now)
            except BaseException:
                self._cancel(slot)
                raise
            now = time.monotonic()
            if pause.rules == rules and (pause.epoch == epoch or now >= pause.not_before):
                return now - began
            # A 429 paused everyone while we slept (or the rules changed): give the slot
            # back and queue again.
            self._cancel(slot)

    async def _sleep(self, delay: float) -> None:
        """Sleep until a booked slot (a limiter whose rules change wakes sleepers)."""
        await asyncio.sleep(delay)

    def _try_acquire(self) -> bool:
        """Let one attempt start if it may start now; tell whether it did.

        The client calls this before :meth:`acquire`: when nothing holds the attempt
        back, it starts without a coroutine (a batch's hot path).
        """
        raise NotImplementedError

    async def on_success(self, started: float) -> None:
        """Report that an attempt was accepted (ends a run of 429s)."""
        self._succeeded(started)

    def _succeeded(self, started: float) -> None:
        """:meth:`on_success` without a coroutine (the client calls it directly)."""
        self._pause.streak = 0

    async def aclose(self) -> None:
        """Nothing to release for an in-process limiter."""


def default_burst(requests: int, margin: float, spread: float = START_SPREAD) -> int:
    """The whole allowance when a window's *margin* absorbs it (starts leaving *spread*
    seconds apart), else 1: slow limits start their allowance at once, fast ones pace."""
    return requests if requests * spread <= margin + 1e-9 else 1


def _check_positive(name: str, value: object, *, integer: bool = False) -> None:
    kind = int if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kind) or not value > 0:
        what = "a positive integer" if integer else "a positive number"
        raise InvalidRequestError(f"{name} must be {what}, got {value!r}")


@attrs.define(eq=False, repr=False)
class RateLimit(_Booking):
    """A strict limit: at most *requests* attempts start in any *per* seconds.

    Two rules hold together. A sliding log of recent start times guarantees the
    window: an attempt starts only once the *requests*-th latest start is at least
    ``per + margin`` seconds old, from the very first window on (a bucket that starts
    full lets twice the rate through its first window). GCRA (the generic cell rate
    algorithm of ATM networks, a leaky bucket kept as one "theoretical arrival time")
    spaces starts ``per / requests`` apart once *burst* back-to-back starts are spent.

    What counts is what the server sees. Starts sent back to back reach the server
    spread out by connection set-up and by the server working through them one by
    one (measured on loopback: a burst of 100 arrived over 40 ms, enough to put 112
    attempts in one of the server's 1 s windows), so by default starts are evenly
    spaced, unless the margin absorbs the whole allowance counting 5 ms a start:
    then it starts at once (10 per minute: 10 at once; limits of 2 per second or
    less on average).

    A 429 pauses every caller (for its ``Retry-After``) when the 429s show a limit
    (:class:`Evidence`: 15% of the last 100 outcomes, or four in a row); the odd 429
    of a busy server pauses only its own retry.

    Args:
        requests: Attempts allowed per window.
        per: Window length in seconds.
        burst: Attempts that may start back to back. Up to *requests*; large
            bursts want a larger *margin*. Default: *requests* when
            ``requests * 5 ms <= margin``, else 1 (evenly spaced).
        margin: Seconds added to every window so that network jitter cannot
            squeeze more than *requests* into one window at the server. Default:
            1% of *per*, at least 15 ms and at most 0.5 s; the steady rate is
            ``requests / (per + margin)``.

    One instance may be shared by several clients in one process to share one budget.
    """

    # Read-only once built: the log and the derived spacing depend on them.
    requests: int = attrs.field(on_setattr=attrs.setters.frozen)
    per: float = attrs.field(default=1.0, on_setattr=attrs.setters.frozen)
    burst: int | None = attrs.field(default=None, on_setattr=attrs.setters.frozen)
    margin: float | None = attrs.field(default=None, on_setattr=attrs.setters.frozen)
    _pause: _Pause = attrs.field(init=False, factory=_Pause)
    _evidence: Evidence = attrs.field(init=False, factory=lambda: Evidence())
    _log: deque[float] = attrs.field(init=False)
    _tat: float = attrs.field(init=False, default=-math.inf)
    # Derived once, since every booking needs them.
    _interval: float = attrs.field(init=False, default=0.0)
    _window: float = attrs.field(init=False, default=0.0)
    _burst_span: float = attrs.field(init=False, default=0.0)
    # After a pause, resume paced (the burst allowance empty); not for a window the
    # server told of, whose allowance starts at once by design.
    _resume_paced: bool = attrs.field(init=False, default=True)

    def __attrs_post_init__(self) -> None:
        _check_positive("requests", self.requests, integer=True)
        _check_positive("per", self.per)
        if self.burst is not None:
            _check_positive("burst", self.burst, integer=True)
            if self.burst > self.requests:
                raise InvalidRequestError(
                    f"burst must be at most requests ({self.requests}), got {self.burst}"
                )
        if self.margin is not None and (
            not isinstance(self.margin, int | float) or self.margin < 0
        ):
            raise InvalidRequestError(f"margin must be >= 0 seconds, got {self.margin!r}")
        # Twice the window's worth, so that a cancelled booking can be handed back
        # without losing the entry the window rule needs next.
        self._log = deque(maxlen=2 * self.requests)
        self._interval = self.per / self.requests
        self._window = self.per + self.effective_margin
        self._burst_span = (self.effective_burst - 1) * self._interval

    def __repr__(self) -> str:
        return (
            f"RateLimit({self.requests}, per={self.per}, burst={self.effective_burst}, "
            f"margin={self.effective_margin})"
        )

    @classmethod
    def adaptive(
        cls,
        start: float | None = None,
        max: float | None = None,
        *,
        min: float = 0.5,
    ) -> AdaptiveRateLimit:
        """A limiter that finds an unknown limit by itself, in requests per second.

        See :class:`AdaptiveRateLimit`.
        """
        return AdaptiveRateLimit(start=start, max_rate=max, min_rate=min)

    @property
    def effective_burst(self) -> int:
        """Back-to-back starts allowed."""
        if self.burst is not None:
            return self.burst
        return default_burst(self.requests, self.effective_margin)

    @property
    def effective_margin(self) -> float:
        """Seconds added to each window."""
        if self.margin is not None:
            return float(self.margin)
        return min(max(0.01 * self.per, MIN_MARGIN), MAX_MARGIN)

    @property
    def interval(self) -> float:
        """Seconds between starts at the steady rate."""
        return self.per / self.requests

    def _try_acquire(self) -> bool:
        now = time.monotonic()
        if self._earliest(now) > now:
            return False
        self._tat = max(self._tat, now) + self._interval
        self._log.append(now)
        return True

    def _earliest(self, now: float) -> float:
        """The earliest start both rules allow a booking made at *now* (books nothing)."""
        window = self._window
        log = self._log
        # Starts older than a window can no longer hold anything back: forget them, so
        # that a large `requests` does not keep a large log.
        horizon = now - window
        while log and log[0] <= horizon:
            log.popleft()
        # GCRA: the burst allowance lets a start come up to `burst_span` before the TAT.
        slot = max(now, self._pause.not_before, self._tat - self._burst_span)
        # Sliding log: the `requests`-th latest start must have left the window.
        if len(log) >= self.requests:
            slot = max(slot, log[-self.requests] + window)
        if log:
            slot = max(slot, log[-1])
        return slot

    def _book(self, now: float) -> float:
        pause = self._pause.not_before
        slot = self._earliest(now)
        if pause > now and slot <= pause and self._resume_paced:
            # Resume after a pause paced, not as a herd: the burst allowance starts empty.
            self._tat = max(self._tat, slot + self._burst_span)
        self._tat = max(self._tat, slot) + self._interval
        self._log.append(slot)
        return slot

    def _record(self, started: float) -> None:
        """Count a start made at *started* (in the past, in order) as if booked then."""
        self._log.append(started)
        self._tat = max(self._tat, started) + self._interval

    def _cancel(self, slot: float) -> None:
        i = bisect.bisect_left(self._log, slot)
        if i < len(self._log) and self._log[i] == slot:
            del self._log[i]

    def _succeeded(self, started: float) -> None:
        """:meth:`on_success` without a coroutine (the client calls it directly)."""
        self._pause.streak = 0
        self._evidence.add(False)

    async def on_rate_limited(self, retry_after: float | None, started: float) -> float:
        """When 429s show a limit, pause everyone sharing this limiter for
        *retry_after* (or a backoff); the odd 429 pauses no one (0 is returned)."""
        self._evidence.add(True)
        if not self._evidence.shows_limit():
            return 0.0
        return self._hold(retry_after, started)

    def _hold(self, retry_after: float | None, started: float) -> float:
        """Pause everyone for *retry_after* (or a backoff), whatever the evidence."""
        return self._pause.extend(retry_after, time.monotonic(), started)


class Evidence:
    """Whether recent 429s show a limit, or are the odd refusal of a busy server.

    A limit shows as refusals close together: every attempt over it is refused. A
    server that refuses a few percent at random shows a low, steady share. Of the
    last 100 outcomes (or of 50, while fewer are known), at least 15% refused, or
    four refusals in a row, show a limit.
    """

    __slots__ = ("_outcomes", "_refused", "_streak")

    def __init__(self) -> None:
        self._outcomes: deque[bool] = deque(maxlen=_EVIDENCE_WINDOW)
        self._refused = 0
        self._streak = 0

    def add(self, refused: bool) -> None:
        """Count one outcome: refused with a 429, or accepted."""
        outcomes = self._outcomes
        if not refused and not self._refused and len(outcomes) == _EVIDENCE_WINDOW:
            self._streak = 0
            return  # a full window of acceptances stays one
        if len(outcomes) == _EVIDENCE_WINDOW and outcomes[0]:
            self._refused -= 1
        outcomes.append(refused)
        if refused:
            self._refused += 1
            self._streak += 1
        else:
            self._streak = 0

    @property
    def refused(self) -> int:
        """429s among the outcomes counted."""
        return self._refused

    @property
    def streak(self) -> int:
        """429s in a row, the latest outcome included."""
        return self._streak

    @property
    def share(self) -> float:
        """The share of 429s among the outcomes counted (over at least half a window)."""
        return self._refused / max(len(self._outcomes), _EVIDENCE_WINDOW // 2)

    def shows_limit(self) -> bool:
        """Whether the refusals counted look like a limit."""
        if self._streak >= _EVIDENCE_STREAK:
            return True
        # Counted over at least half a window, so that a few early refusals are not a share.
        seen = max(len(self._outcomes), _EVIDENCE_WINDOW // 2)
        return self._refused >= _EVIDENCE_SHARE * seen


@attrs.define(eq=False, repr=False)
class AdaptiveRateLimit(_Booking):
    """A limiter for a key whose limit is unknown: it learns the rate from 429s.

    It starts at *start* requests per second (``None``: no limit until 429s show
    one). Only 429s that show a limit count (:class:`Evidence`: a share of at least
    15% of the last 100 outcomes, or four in a row): they pause every caller for
    the ``Retry-After`` and teach the rate. The odd 429 of a busy server leaves both
    alone; only its own retry waits.

    - **Windows**: a 429 asking to wait 2 s or more tells of a window longer than a
      second (Monica's is a minute): its length is when the server says a place
      frees, counted from the oldest start the window still holds (the first after
      a gap at least that long), and its size is what the server accepted since.
      The limiter then keeps to that window as a :class:`RateLimit` would, its
      whole allowance starting at once on each new window; a later such 429
      learns it again.
    - **Measuring**: when 429s first show a limit, callers pause, and once the
      pause is over (every refusal of that burst back, since a server refuses at
      once) the rate becomes 95% of what the server accepted in the second before
      (attempts sent minus those refused: a measure that holds at any latency).
      Later, once per burst of 429s, the rate becomes 95% of itself times the
      share of its attempts the server accepted lately (the last second, or up to
      5 s at low rates); with too few attempts to measure, it is multiplied by
      *decrease*.
    - **Noise**: the share of 429s seen before any limit showed is the server's
      background. While the pace holds callers back, a 429 cuts the rate only if
      the share refused lately is over twice that; and a rate learned from 429s
      that then keep coming at the background's share (at least 2%) is dropped:
      those were not a limit.
    - **Probing**: while the limiter is what holds callers back (they wait for
      its pace and the last second's attempts used it), the rate grows by 5%
      every second (additive increase), so a limit that rises is found again; a
      429 meanwhile measures it anew (95% of the rate times the share accepted,
      at most once per measuring span, and no probing for a span after it)
      without pausing anyone, since the pace is then what the server refused.

    Starts are spaced evenly (GCRA without burst) except within a learned window.
    This is what a client uses when it is given no ``rate_limit``; *min_rate*
    bounds the rates it measures, not a window the server told.
    """

    start: float | None = None
    max_rate: float | None = None
    min_rate: float = 0.5
    decrease: float = 0.7
    _pause: _Pause = attrs.field(init=False, factory=_Pause)
    _rate: float | None = attrs.field(init=False, default=None)
    _tat: float = attrs.field(init=False, default=-math.inf)
    _last_cut: float = attrs.field(init=False, default=-math.inf)
    _learn_from: float | None = attrs.field(init=False, default=None)
    _grown: float = attrs.field(init=False, default=-math.inf)
    _held: float = attrs.field(init=False, default=-math.inf)
    _evidence: Evidence = attrs.field(init=False, factory=Evidence)
    # Attempts sent and refused so far, and snapshots of both every _MARK_EVERY
    # seconds over the last second (a log of every start would cost an append and a
    # prune per attempt on the hot path).
    _sent: int = attrs.field(init=False, default=0)
    _refused: int = attrs.field(init=False, default=0)
    _marks: deque[tuple[float, int, int]] = attrs.field(init=False, factory=deque)
    _next_mark: float = attrs.field(init=False, default=-math.inf)
    # When accepted attempts started (for a window's size), the window learned, the
    # background share of 429s, and when a learned rate is to be checked against it.
    _accepted: deque[float] = attrs.field(init=False, factory=lambda: deque(maxlen=_WINDOW_LOG))
    _window: RateLimit | None = attrs.field(init=False, default=None)
    # A 429's arrival and Retry-After, to learn the window from once the pause is over.
    _window_from: tuple[float, float] | None = attrs.field(init=False, default=None)
    _noise: float = attrs.field(init=False, default=0.0)
    _check_at: float | None = attrs.field(init=False, default=None)
    # A window the server never told (no Retry-After): its size, and what refusals
    # and acceptances showed of its length, [longer than, at most].
    _count: int = attrs.field(init=False, default=0)
    _bounds: list[float] | None = attrs.field(init=False, default=None)
    # When a rate was learned from 429s, and the counters then: if every attempt
    # sent since was refused, the window is longer than the pause was.
    _learned_at: float | None = attrs.field(init=False, default=None)
    _learned_counts: tuple[int, int] = attrs.field(init=False, default=(0, 0))

    def __attrs_post_init__(self) -> None:
        for name in ("start", "max_rate"):
            value = getattr(self, name)
            if value is not None:
                _check_positive(name, value)
        _check_positive("min_rate", self.min_rate)
        if not 0 < self.decrease < 1:
            raise InvalidRequestError(f"decrease must be between 0 and 1, got {self.decrease!r}")
        if self.start is not None and self.max_rate is not None and self.start > self.max_rate:
            raise InvalidRequestError(f"start ({self.start}) must not exceed max ({self.max_rate})")
        self._rate = None if self.start is None else float(self.start)

    def __repr__(self) -> str:
        window = self._window
        if window is not None:
            return f"AdaptiveRateLimit(window={window.requests} per {window.per:.3g}s)"
        return f"AdaptiveRateLimit(rate={self.rate}, max_rate={self.max_rate})"

    @property
    def rate(self) -> float | None:
        """The current rate in requests per second (``None``: unlimited)."""
        return self._rate

    async def _sleep(self, delay: float) -> None:
        # A rate or window learned meanwhile voids the slot: wake and book again.
        await self._pause.sleep(delay)

    @property
    def window(self) -> tuple[int, float] | None:
        """The window learned from the server, as ``(requests, seconds)`` (``None``: none)."""
        window = self._window
        return None if window is None else (window.requests, window.per)

    @property
    def effective_burst(self) -> int:
        """Back-to-back starts allowed: a learned window's allowance, else 1."""
        return 1 if self._window is None else self._window.effective_burst

    def _try_acquire(self) -> bool:
        """Let one attempt start if nothing holds it back; tell whether it did.

        No rate and no pause is the hot path of a batch: the client calls this
        before :meth:`acquire` to spare a coroutine per attempt.
        """
        if self._rate is None and self._learn_from is None and self._window is None:
            now = time.monotonic()
            if now >= self._pause.not_before:
                if now >= self._next_mark:
                    self._mark(now)
                self._sent += 1
                return True
        return False

    async def acquire(self) -> float:
        """Wait until one more attempt may start; return the seconds waited."""
        if self._try_acquire():
            return 0.0
        waited = await super().acquire()
        rules = self._pause.rules
        now = time.monotonic()
        if now >= self._pause.not_before:
            if self._window_from is not None:
                self._learn_window(now, *self._window_from)
            elif self._learn_from is not None:
                self._learn(now, self._learn_from)
        if self._pause.rules != rules:
            # Booked before the rate or window it just learned: take a start by them.
            waited += await super().acquire()
            now = time.monotonic()
        if now >= self._next_mark:
            self._mark(now)
        self._sent += 1
        return waited

    def _learn(self, now: float, window_end: float) -> None:
        """Take as the rate 95% of what the server accepted in the second before *window_end*.

        Called once the pause that followed has ended, so that the refusals of that
        second have all come back (a server refuses at once).
        """
        self._learn_from = None
        first = next((mark for mark in self._marks if mark[0] >= window_end - 1.0), None)
        if first is None:
            return
        # A count over the server's window, not divided by how long the burst took:
        # a limit of N per second lets N through however fast they came. (Nothing
        # was sent during the pause, so the counters now are those at its start.)
        accepted = (self._sent - first[1]) - (self._refused - first[2])
        if accepted >= _MIN_SAMPLES:
            self._set_rate(0.95 * accepted, now)
            self._pause.renew()
            self._learned_at = now
            self._learned_counts = (self._sent, self._refused)
            if self._noise >= _MIN_NOISE:
                self._check_at = now  # checked once a measuring span has passed

    def _learn_window(self, now: float, refused: float, retry_after: float) -> None:
        """Learn the server's window from a 429 that came at *refused* asking to wait
        *retry_after* seconds (called once that wait is over, so that every attempt
        accepted before the 429 has been answered).

        A sliding window frees its first place when its oldest start leaves it: that
        start is the first after a gap of at least *retry_after* (the one before it
        had left already). The window holds what was accepted since.
        """
        self._window_from = None
        starts = sorted(t for t in self._accepted if t <= refused)
        if not starts:
            return
        oldest = len(starts) - 1
        while oldest > 0 and starts[oldest] - starts[oldest - 1] < retry_after:
            oldest -= 1
        count = len(starts) - oldest
        per = refused + retry_after - starts[oldest]
        if self.max_rate is not None:
            count = max(1, min(count, math.floor(self.max_rate * per)))
        window = RateLimit(count, per=per, burst=count)
        window._pause = self._pause  # a pause holds the window's callers too
        window._resume_paced = False
        for started in starts[oldest:]:
            window._record(started)  # the starts it holds count against the next ones
        self._window = window
        self._pause.renew()
        self._rate = count / per
        self._bounds = self._learn_from = self._check_at = self._learned_at = None
        self._evidence = Evidence()
        self._last_cut = now

    def _search_window(self, now: float) -> float:
        """Start timing a window the server does not tell (a rate learned from 429s
        let nothing through: the window is longer than the pause was). Its size is
        what was accepted since the last quiet gap; its length is found by probing,
        one start at a time, a fifth later each time, until one is accepted.

        Returns:
            The pause until the first probe, in seconds from now.
        """
        starts = sorted(self._accepted)
        quiet = now - starts[-1]
        oldest = len(starts) - 1
        while oldest > 0 and starts[oldest] - starts[oldest - 1] < quiet:
            oldest -= 1
        self._count = len(starts) - oldest
        self._bounds = [now - starts[oldest], math.inf]
        self._learned_at = self._learn_from = self._check_at = None
        return self._rewindow(now, starts[oldest])

    def _all_refused_since_learning(self) -> bool:
        if self._learned_at is None:
            return False
        sent, refused = self._learned_counts
        since = self._sent - sent
        return since >= 2 and since == self._refused - refused

    def _oldest_held(self, before: float) -> float | None:
        """The start a window of the learned size holds longest at *before*: the
        ``count``-th latest accepted start before it."""
        starts = sorted(t for t in self._accepted if t < before)
        return starts[-self._count] if len(starts) >= self._count else None

    def _bound_window(self, now: float, started: float, accepted: bool) -> float:
        """Narrow the unknown window's length from an attempt started at *started*: a
        refusal shows it longer than the time since the oldest start the window held,
        an acceptance no longer. Returns the pause a refusal calls for (0 if none)."""
        bounds = self._bounds
        assert bounds is not None
        oldest = self._oldest_held(started)
        if oldest is None:
            return 0.0
        low, high = bounds
        if accepted:
            if started - oldest >= high:
                return 0.0
            bounds[1] = started - oldest
            self._rewindow(now, None)
            return 0.0
        if started - oldest >= high:
            return 0.0  # the window had let its oldest start go: not the window's 429
        bounds[0] = max(low, started - oldest)
        return self._rewindow(now, oldest)

    def _rewindow(self, now: float, oldest: float | None) -> float:
        """Keep to the unknown window as now bounded: one probe at a time while no
        acceptance bounded it, else its upper bound. After a refusal (*oldest*: the
        start it ran into), everyone waits until the next try."""
        low, high = self._bounds or (0.0, 0.0)
        if math.isinf(high):
            count, per, until = 1, _PROBE_SPACING, low * _PROBE_GROWTH
        else:
            count, per, until = self._count, high, high
        window = RateLimit(count, per=per, burst=count)
        window._pause = self._pause
        window._resume_paced = False
        # Every start of the last window counts, those still in flight included (not
        # the slots booked ahead: the renewal below voids them).
        held = set(self._accepted)
        if self._window is not None:
            held.update(self._window._log)
        since = now - per - window.effective_margin
        for started in sorted(t for t in held if since < t <= now):
            window._record(started)
        self._window = window
        # What the window allows on average (an estimate while it is probed).
        self._rate = self._count / (high if not math.isinf(high) else until)
        self._evidence = Evidence()
        self._pause.renew()
        if oldest is None:
            return 0.0
        return self._pause.extend(max(0.0, oldest + until - now), now, now)

    def _set_rate(self, rate: float, now: float) -> None:
        # What was seen at the old rate says nothing about the new one.
        self._evidence = Evidence()
        self._last_cut = now
        rate = max(self.min_rate, rate)
        self._rate = rate if self.max_rate is None else min(rate, self.max_rate)

    def _book(self, now: float) -> float:
        if self._window is not None:
            return self._window._book(now)
        slot = max(now, self._pause.not_before)
        if self._rate is None:
            if slot > now:
                # No rate learned yet: spread the callers the pause held over a moment
                # instead of letting them all start in the same millisecond.
                slot += random.uniform(0.0, _RESUME_SPREAD)
            return slot
        if self._tat > slot + _HELD:
            self._held = now  # the pace, not a pause, holds this caller back
        slot = max(slot, self._tat)
        self._tat = slot + 1.0 / self._rate
        return slot

    def _cancel(self, slot: float) -> None:
        if self._window is not None:
            self._window._cancel(slot)
        elif self._rate is not None and math.isclose(self._tat, slot + 1.0 / self._rate):
            self._tat = slot

    def _mark(self, now: float) -> None:
        """Snapshot the counters (before this call's own count) and forget old snapshots."""
        self._next_mark = now + _MARK_EVERY
        marks = self._marks
        marks.append((now, self._sent, self._refused))
        while marks[0][0] < now - _MEASURE_MAX:
            marks.popleft()

    def _measure_span(self, now: float) -> float:
        """Seconds over which the rate is measured: one, longer at low rates (20 attempts)."""
        return 1.0 if self._rate is None else min(_MEASURE_MAX, max(1.0, 20.0 / self._rate))

    def _last_second(self, now: float) -> tuple[float, float]:
        """Attempts sent per second lately, and those of them not refused.

        Over the last second, or longer at low rates (up to 5 s, about 20 attempts),
        so that a rate of a few per second is not measured in whole numbers.
        """
        since = max(now - self._measure_span(now), self._last_cut)
        for at, sent, refused in self._marks:
            if at >= since:
                took = max(now - at, 1.0)
                count = self._sent - sent
                return count / took, (count - (self._refused - refused)) / took
        return 0.0, 0.0

    def _refused_share(self, now: float) -> float:
        """The share of the attempts sent lately that were refused."""
        sent, accepted = self._last_second(now)
        return 0.0 if sent <= 0 else 1.0 - accepted / sent

    async def on_success(self, started: float) -> None:
        """End a run of 429s; recover or probe the rate while it holds callers back."""
        self._succeeded(started)

    def _succeeded(self, started: float) -> None:
        """:meth:`on_success` without a coroutine (the client calls it directly)."""
        self._pause.streak = 0
        self._evidence.add(False)
        self._accepted.append(started)
        if self._bounds is not None:
            self._bound_window(time.monotonic(), started, accepted=True)
            return
        rate = self._rate
        if rate is None or self._window is not None:
            return
        now = time.monotonic()
        elapsed = now - self._grown
        if elapsed < _MARK_EVERY:
            return
        self._grown = now
        if self._check_at is not None and now - self._check_at >= self._measure_span(now):
            self._check_learned(now)
            return
        elapsed = min(elapsed, 1.0)
        if now - self._held > 1.0 or self._last_second(now)[0] < 0.9 * rate:
            return  # the limiter is not what holds callers back: nothing to learn
        rate += max(_MIN_STEP, _STEP * rate) * elapsed
        self._rate = rate if self.max_rate is None else min(rate, self.max_rate)

    def _check_learned(self, now: float) -> None:
        """A measuring span after a rate was learned: 429s still coming at the
        background's share were not a limit, so the rate is dropped."""
        self._check_at = None
        if self._refused_share(now) >= 0.5 * self._noise:
            self._rate = None if self.start is None else float(self.start)
            self._evidence = Evidence()

    async def on_rate_limited(self, retry_after: float | None, started: float) -> float:
        """When 429s show a limit: pause everyone, and learn or cut the rate.

        The odd 429 that shows no limit changes nothing here (its own retry waits).
        """
        now = time.monotonic()
        self._refused += 1
        if retry_after is not None and retry_after >= _LONG_RETRY_AFTER and self._accepted:
            if self._window_from is None:
                self._window_from = (now, retry_after)  # learned once the pause is over
            self._learn_from = None
            return self._pause.extend(retry_after, now, started)
        if self._bounds is not None:
            return self._bound_window(now, started, accepted=False)
        if self._window is not None:
            return 0.0  # not the window's: the number in flight, or the odd one
        if self._rate is None and not self._evidence.shows_limit():
            self._noise = self._evidence.share  # before any limit: the background
        self._evidence.add(True)
        if self._all_refused_since_learning() and self._accepted:
            # Nothing got through at the rate learned: a window longer than the pause.
            return self._search_window(now)
        # While the pace is what holds callers back, a 429 is the pace's: it is
        # measured again (at most once per measuring span, so odd 429s cost little).
        limit = self._evidence.shows_limit()
        paced = self._rate is not None and now - self._held <= 1.0
        if paced:
            paced = now - self._last_cut >= self._measure_span(now) and (
                self._refused_share(now) > 2 * self._noise
            )
        if not (limit or paced):
            return 0.0
        self._adjust(now, started)
        if not limit:
            return 0.0  # a slower pace is enough: no one else waits for this one
        pause = self._pause.extend(retry_after, now, started)
        self._tat = max(self._tat, self._pause.not_before)
        self._grown = max(self._grown, self._pause.not_before)
        return pause

    def _adjust(self, now: float, started: float) -> None:
        """Learn the rate (once the pause is over), or cut it to what was accepted."""
        rate = self._rate
        if rate is None:
            if self._learn_from is None:
                self._learn_from = now  # measured once the pause is over
        elif started >= self._last_cut:
            sent, accepted = self._last_second(now)
            if sent > 0 and accepted * self._measure_span(now) >= _MIN_SAMPLES:
                # The share the server accepted of what was sent at this pace is its
                # limit measured: pace at least 5% under it.
                self._set_rate(0.95 * rate * min(1.0, accepted / sent), now)
            else:
                self._set_rate(rate * self.decrease, now)
            # No probing for a measuring span: the refusal said where the limit is.
            self._grown = max(self._grown, now + self._measure_span(now))
