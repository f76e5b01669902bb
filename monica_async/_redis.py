"""RedisRateLimit: one rate limit shared by every process that uses the same key.

The limit lives in Redis and every operation on it is one call of a Lua script
(``_redis_script.lua``), loaded once with ``SCRIPT LOAD`` and run with ``EVALSHA``.
The script reads the Redis server's clock, so the clocks of the machines sharing
the limit never matter: they only ever receive durations.

``redis`` is an optional dependency (the ``redis`` extra): this module imports it
only when a :class:`RedisRateLimit` is created, so that ``import monica_async``
works without it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import logging
import math
import random
import time
import uuid
from collections import deque
from collections.abc import Callable, Coroutine
from importlib import resources
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final, Literal, Self, TypeVar

import attrs

from ._exceptions import InvalidRequestError, MonicaError, RateLimiterUnavailableError
from ._ratelimit import DEFAULT_PAUSE, MAX_MARGIN, MAX_PAUSE, RateLimit, default_burst

if TYPE_CHECKING:
    from redis.asyncio import Redis

__all__ = ["DEFAULT_PREFIX", "RedisRateLimit"]

T = TypeVar("T")

logger = logging.getLogger("monica_async")

#: Where the limit's keys live: ``<prefix>{<key>}:state``, ``:log``, ``:peers`` and ``:calls``.
DEFAULT_PREFIX: Final = "monica-async:ratelimit:"
DEFAULT_KEY: Final = "default"
#: Seconds one Redis call may take before Redis counts as unavailable.
DEFAULT_TIMEOUT: Final = 1.0
#: Least default margin of a shared limit (seconds); see ``margin``.
REDIS_MIN_MARGIN: Final = 0.05
#: Limiters assumed to share the key when Redis never answered (fallback = 1/4).
DEFAULT_PEERS: Final = 4
#: Redis calls a limiter has under way at once, and the connections of the pool it
#: makes from a URL. A call takes a fraction of a millisecond, so a few connections
#: serve thousands of acquisitions a second; more callers queue for one (before
#: their call's timeout starts) instead of finding the pool full.
MAX_CONNECTIONS: Final = 8
#: Seconds a start of a burst is counted to take (for the default burst): wider than
#: in one process, for the scheduling jitter of several.
REDIS_START_SPREAD: Final = 0.01

SCRIPT: Final = resources.files("monica_async").joinpath("_redis_script.lua").read_text("utf-8")

_INSTALL_HINT: Final = 'RedisRateLimit needs the redis package: pip install "monica-async[redis]"'
# After Redis fails, it is tried again after this back-off, doubled up to the maximum
# and stretched by a random factor up to _RETRY_JITTER. The maximum is short because
# until every sharer has found Redis again, each of them keeps to its local share.
_RETRY_FIRST: Final = 0.25
_RETRY_MAX: Final = 0.5
_RETRY_JITTER: Final = 1.25
# Seconds over which the most limiters seen on the key is remembered: the share taken
# during an outage is 1 / that, so that a peer missing from one answer is still counted.
_PEER_MEMORY: Final = 10.0
# A pause that starts during a wait this short cannot be told apart from one that
# starts just after the attempt: asking Redis again would cost more than it saves.
_RECHECK_AFTER: Final = 0.002
# A caller confirms its slot this many round trips before it (within the bounds), so
# that the confirmation's own round trip does not delay the start.
_CONFIRM_LEAD: Final = 3
_CONFIRM_LEAD_BOUNDS: Final = (0.001, 0.1)
# Least wait before a caller whose slot was over a window ahead asks again.
_POLL_AT_LEAST: Final = 0.001
# How long a measurement of the Redis clock stays usable.
_CLOCK_SAMPLE_AGE: Final = 60.0
_US: Final = 1_000_000


def _import_redis() -> Any:
    try:
        import redis.asyncio
        import redis.asyncio.retry
        import redis.backoff
    except ImportError as exc:
        raise ModuleNotFoundError(_INSTALL_HINT, name="redis") from exc
    return redis


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


@attrs.define
class _Clock:
    """Where a Redis TIME reading falls on this process's ``time.monotonic()``.

    A reply read late (a busy event loop, a process waiting for a CPU) would delay
    a start by as much if the slot were counted from the reply's arrival. Instead,
    as NTP does, each call brackets the Redis reading between its send and receive
    times and the tightest bracket seen lately gives the offset between the clocks.
    Only durations ever cross machines: the offset is to this process's own clock.
    """

    # (received at, round trip, offset), the tightest bracket first.
    _best: tuple[float, float, float] | None = None

    def observe(self, sent: float, received: float, redis_us: int) -> None:
        """Record a call sent at *sent*, answered at *received*, that read *redis_us*."""
        rtt = received - sent
        offset = (sent + received) / 2 - redis_us / _US
        best = self._best
        if (
            best is None
            or rtt <= best[1]
            or received - best[0] > _CLOCK_SAMPLE_AGE
            # Brackets that do not overlap: a clock was stepped; the old one is wrong.
            or abs(offset - best[2]) > (rtt + best[1]) / 2
        ):
            self._best = (received, rtt, offset)

    @property
    def rtt(self) -> float:
        """The shortest round trip seen lately, in seconds."""
        return 0.0 if self._best is None else self._best[1]

    def local(self, redis_us: int) -> float:
        """The ``time.monotonic()`` reading at Redis time *redis_us*."""
        assert self._best is not None, "observe() first"
        return redis_us / _US + self._best[2]

    def redis_us(self, local: float) -> int | None:
        """The Redis time at ``time.monotonic()`` reading *local* (``None`` before any)."""
        return None if self._best is None else round((local - self._best[2]) * _US)


@attrs.frozen
class _Slot:
    """A booked start time, as the script answers it."""

    wait: float  # seconds from the script's run to the slot
    due: float  # the slot on this process's time.monotonic()
    epoch: int
    member: str
    streak: int
    peers: int
    pause_left: float
    back: int  # limiters that called since the time asked about (0 if none was)


@attrs.define(eq=False)
class _Script:
    """The Lua script bound to one limit's keys and numbers: one round trip per call."""

    client: Any
    keys: tuple[str, str, str, str]
    shape: RateLimit
    peer: str
    noscript: type[Exception]
    clock: _Clock = attrs.field(factory=_Clock)
    _sha: str | None = attrs.field(default=None, init=False)

    async def _call(self, mode: str, *args: object) -> Any:
        shape = self.shape
        argv = (
            mode,
            shape.requests,
            repr(shape.per * _US),
            repr(shape.effective_margin * _US),
            shape.effective_burst,
            *args,
        )
        if self._sha is None:
            self._sha = _text(await self.client.script_load(SCRIPT))
        try:
            return await self.client.evalsha(self._sha, len(self.keys), *self.keys, *argv)
        except self.noscript:
            # The server lost its scripts (restart, failover, SCRIPT FLUSH): load again.
            self._sha = _text(await self.client.script_load(SCRIPT))
            return await self.client.evalsha(self._sha, len(self.keys), *self.keys, *argv)

    async def book(self, member: str, held: _Slot | None = None, since: int | None = None) -> _Slot:
        """Book a slot for *member*, or confirm *held* just before its start.

        With *since* (Redis time), also count the limiters that called at or after it.
        """
        extra = ("", "") if held is None else (held.member, held.epoch)
        after = "" if since is None else since
        sent = time.monotonic()
        reply = await self._call("book", member, self.peer, *extra, after)
        return self._slot(reply, sent, time.monotonic())

    def _slot(self, reply: list[Any], sent: float, received: float) -> _Slot:
        wait, epoch, member, streak, peers, pause_left, now, back = reply
        self.clock.observe(sent, received, int(now))
        return _Slot(
            wait=int(wait) / _US,
            due=self.clock.local(int(now) + int(wait)),
            epoch=int(epoch),
            member=_text(member),
            streak=int(streak),
            peers=int(peers),
            pause_left=int(pause_left) / _US,
            back=int(back),
        )

    async def pause(self, retry_after: float | None, u: float) -> tuple[float, int, int]:
        """Move the shared pause; return (seconds left, epoch, streak)."""
        after = "" if retry_after is None else repr(max(0.0, retry_after) * _US)
        left, epoch, streak = await self._call(
            "pause", after, repr(u), repr(DEFAULT_PAUSE * _US), repr(MAX_PAUSE * _US)
        )
        return int(left) / _US, int(epoch), int(streak)

    async def success(self) -> None:
        """End a streak of 429s."""
        await self._call("success")

    async def cancel(self, member: str) -> bool:
        """Give back the slot booked for *member*."""
        return bool(await self._call("cancel", member))


class _Unavailable(Exception):
    """Redis could not be used for this call (internal; never escapes)."""


class _NeverRaised(Exception):
    """Stands for an exception an older redis package does not have."""


def _pool_size(client: Any) -> int:
    """The Redis calls to allow at once on *client*: MAX_CONNECTIONS, or fewer if its
    pool is smaller."""
    most = getattr(getattr(client, "connection_pool", None), "max_connections", None)
    if isinstance(most, int) and 0 < most < MAX_CONNECTIONS:
        return most
    return MAX_CONNECTIONS


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError) and not str(exc):
        return "timed out"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def default_margin(per: float) -> float:
    """The margin a :class:`RedisRateLimit` adds to each window when given none."""
    # Several processes wake up late independently of each other (measured on a
    # loaded 2-core machine: p99 12 ms, outliers 40 ms), so a shared limit needs a
    # wider margin than one process does.
    return min(max(0.01 * per, REDIS_MIN_MARGIN), MAX_MARGIN)


@attrs.define(eq=False, repr=False)
class RedisRateLimit:
    """A :class:`RateLimit` shared through Redis by every process that uses *key*.

    At most *requests* attempts start in any *per* seconds, summed over every
    client, process and machine that uses the same Redis and the same *key*, and a
    429 seen by any of them pauses all of them. The algorithm is
    :class:`RateLimit`'s (a sliding log plus GCRA), run atomically inside Redis on
    the Redis server's clock: one script call books a start time and says how long
    to wait; a caller that waited asks once more on waking, so that a pause set
    meanwhile is honoured.

    Args:
        redis: A ``redis://`` (or ``rediss://``, ``unix://``) URL, or a
            ``redis.asyncio.Redis`` client. A client made from a URL is closed by
            :meth:`aclose`; a client passed in is never closed.
        requests: Attempts allowed per window, across all sharers.
        per: Window length in seconds.
        burst: Attempts that may start back to back; as for :class:`RateLimit`,
            counting 10 ms a start (a shared limit's starts come from several
            processes): the whole allowance of 10 per minute at once, a
            per-second limit evenly spaced.
        margin: Seconds added to every window so that network jitter cannot squeeze
            more than *requests* into one window at the server. Default: 1% of
            *per*, at least 50 ms (wider than :class:`RateLimit`'s 15 ms, for the
            scheduling jitter of several processes) and at most 0.5 s.
        key: The name of the shared limit: everyone using the same name (and the
            same numbers) shares one budget. A name, not the API key: it is stored
            in Redis in clear.
        prefix: Prefix of the Redis keys.
        on_unavailable: What to do while Redis cannot be reached or times out:
            ``"local"`` (default) falls back to an in-process :class:`RateLimit` at
            *fallback_fraction* of the rate, logging one warning, and keeps to it
            after Redis is back until every sharer can be back too; ``"fail"``
            raises :class:`RateLimiterUnavailableError` from :meth:`acquire`, so no
            request is sent.
        fallback_fraction: Share of the rate each limiter takes while Redis is
            unavailable. Default: ``1 / N`` for the most limiters Redis counted on
            *key* over the last 10 s before it went away (``1 / 4`` if Redis never
            answered). A limiter counts while it has started within the last
            window or holds a slot booked ahead.
        timeout: Seconds one Redis call may take (once a connection is free).

    A limiter books a start at most one window ahead (a caller further back in the
    queue asks again when its turn is that close), so that if Redis goes away only
    a window's starts were promised beyond what the local fallback counts. Its Redis
    calls never exceed :data:`MAX_CONNECTIONS` (or the pool of a client passed in,
    if smaller): callers wait for a connection, and a full pool is never taken for
    an outage.

    Raises:
        InvalidRequestError: An argument is invalid.
        ModuleNotFoundError: The ``redis`` package is not installed.

    Use one instance per event loop; close it with :meth:`aclose` or ``async with``.
    """

    redis: str | Redis
    requests: int
    per: float = 1.0
    burst: int | None = attrs.field(default=None, kw_only=True)
    margin: float | None = attrs.field(default=None, kw_only=True)
    key: str = attrs.field(default=DEFAULT_KEY, kw_only=True)
    prefix: str = attrs.field(default=DEFAULT_PREFIX, kw_only=True)
    on_unavailable: Literal["fail", "local"] = attrs.field(default="local", kw_only=True)
    fallback_fraction: float | None = attrs.field(default=None, kw_only=True)
    timeout: float = attrs.field(default=DEFAULT_TIMEOUT, kw_only=True)

    _shape: RateLimit = attrs.field(init=False)
    _client: Any = attrs.field(init=False)
    _owns_client: bool = attrs.field(init=False)
    _script: _Script = attrs.field(init=False)
    _errors: tuple[type[BaseException], ...] = attrs.field(init=False)
    _pool_full: type[BaseException] = attrs.field(init=False)
    _connections: asyncio.Semaphore = attrs.field(init=False)
    # Callers of this process waiting to book, first come first served: only the first
    # of them asks Redis (when a slot is over a window ahead, again as the next nears).
    _queue: asyncio.Lock = attrs.field(init=False, factory=asyncio.Lock)
    _members: itertools.count[int] = attrs.field(init=False, factory=itertools.count)
    _closed: bool = attrs.field(init=False, default=False)
    # What the last answers said, for the fallback and for on_success: (when, peers),
    # most peers first, to keep the most seen over the last _PEER_MEMORY seconds.
    _peers_seen: deque[tuple[float, int]] = attrs.field(init=False, factory=deque)
    _streak: int = attrs.field(init=False, default=0)
    # This limiter's own slots (on time.monotonic()) booked in Redis during the last
    # window and ahead: the local fallback counts them as its own starts.
    _booked: deque[float] = attrs.field(init=False, factory=deque)
    _paused_until: float = attrs.field(init=False, default=0.0)
    # Availability: set while Redis is unavailable.
    _down_since: float | None = attrs.field(init=False, default=None)
    _reason: str = attrs.field(init=False, default="")
    _retry_at: float = attrs.field(init=False, default=0.0)
    _backoff: float = attrs.field(init=False, default=_RETRY_FIRST)
    _probing: bool = attrs.field(init=False, default=False)
    # The local limit: set while Redis is unavailable, and kept after it is back
    # until _rejoin_by, while the other sharers may still be on theirs.
    _fallback: RateLimit | None = attrs.field(init=False, default=None)
    _expected_peers: int = attrs.field(init=False, default=DEFAULT_PEERS)
    _rejoin_by: float = attrs.field(init=False, default=math.inf)
    # Redis time this limiter found Redis again, while it keeps to its local share.
    _rejoin_since: int | None = attrs.field(init=False, default=None)
    _tasks: set[asyncio.Task[None]] = attrs.field(init=False, factory=set)

    def __attrs_post_init__(self) -> None:
        lib = _import_redis()
        margin = default_margin(self.per) if self.margin is None else self.margin
        burst = self.burst
        if burst is None and isinstance(self.requests, int) and isinstance(margin, int | float):
            burst = default_burst(self.requests, margin, REDIS_START_SPREAD)
        self._shape = RateLimit(self.requests, self.per, burst=burst, margin=margin)
        if not isinstance(self.key, str) or not self.key:
            raise InvalidRequestError(f"key must be a non-empty string, got {self.key!r}")
        if not isinstance(self.prefix, str):
            raise InvalidRequestError(f"prefix must be a string, got {self.prefix!r}")
        if self.on_unavailable not in ("fail", "local"):
            raise InvalidRequestError(
                f"on_unavailable must be 'fail' or 'local', got {self.on_unavailable!r}"
            )
        fraction = self.fallback_fraction
        if fraction is not None and (
            isinstance(fraction, bool)
            or not isinstance(fraction, int | float)
            or not 0 < fraction <= 1
        ):
            raise InvalidRequestError(
                f"fallback_fraction must be in (0, 1], e.g. 1/N for N processes, got {fraction!r}"
            )
        if (
            isinstance(self.timeout, bool)
            or not isinstance(self.timeout, int | float)
            or not self.timeout > 0
        ):
            raise InvalidRequestError(f"timeout must be a positive number, got {self.timeout!r}")
        if isinstance(self.redis, str):
            retry = lib.asyncio.retry.Retry(lib.backoff.NoBackoff(), 1)
            try:
                # One immediate retry reconnects a pooled connection Redis dropped; the
                # back-off between outages is ours.
                self._client = lib.asyncio.Redis.from_url(
                    self.redis,
                    socket_timeout=self.timeout,
                    socket_connect_timeout=self.timeout,
                    retry=retry,
                    max_connections=MAX_CONNECTIONS,
                )
            except ValueError as exc:
                raise InvalidRequestError(
                    f"redis must be a URL such as 'redis://localhost:6379/0' ({exc})"
                ) from None
            self._owns_client = True
        elif isinstance(self.redis, lib.asyncio.Redis):
            self._client = self.redis
            self._owns_client = False
        else:
            raise InvalidRequestError(
                "redis must be a URL such as 'redis://localhost:6379/0' or a "
                f"redis.asyncio.Redis client, got {type(self.redis).__name__}"
            )
        tag = f"{self.prefix}{{{self.key}}}"  # one hash tag: one cluster slot for all four
        self._script = _Script(
            client=self._client,
            keys=(f"{tag}:state", f"{tag}:log", f"{tag}:peers", f"{tag}:calls"),
            shape=self._shape,
            peer=uuid.uuid4().hex,
            noscript=lib.exceptions.NoScriptError,
        )
        self._errors = (lib.exceptions.RedisError, OSError, TimeoutError)
        # A full pool means callers are many, not that Redis is down (redis-py 5+).
        self._pool_full = getattr(lib.exceptions, "MaxConnectionsError", _NeverRaised)
        self._connections = asyncio.Semaphore(_pool_size(self._client))

    def __repr__(self) -> str:
        return (
            f"RedisRateLimit({self.requests}, per={self.per}, "
            f"burst={self.effective_burst}, margin={self.effective_margin}, "
            f"key={self.key!r}, on_unavailable={self.on_unavailable!r})"
        )

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    @property
    def effective_burst(self) -> int:
        """Back-to-back starts allowed."""
        return self._shape.effective_burst

    @property
    def effective_margin(self) -> float:
        """Seconds added to each window."""
        return self._shape.effective_margin

    @property
    def keys(self) -> tuple[str, ...]:
        """The Redis keys that hold the limit (they expire on their own)."""
        return self._script.keys

    @property
    def available(self) -> bool:
        """``False`` while Redis is considered unavailable."""
        return self._down_since is None

    @property
    def _peers(self) -> int | None:
        """The most limiters Redis counted on the key lately (``None``: never answered)."""
        return self._peers_seen[0][1] if self._peers_seen else None

    # -- the RateLimiter protocol ---------------------------------------------------

    async def acquire(self) -> float:
        """Wait until one more attempt may start; return the seconds waited.

        Raises:
            RateLimiterUnavailableError: Redis is unavailable and *on_unavailable*
                is ``"fail"``.
        """
        if self._closed:
            raise MonicaError("this RedisRateLimit is closed; create a new one")
        began = time.monotonic()
        local = self._local_in_force(began)
        if local is not None:
            # Without Redis, or back on it while the other sharers may still be on
            # their local limits: keep to the local share first. Then book in Redis
            # as well (when it answers), so that once every sharer is back Redis
            # knows every start of the last window.
            await self._pass_locally(local)
        try:
            slot = await self._book()
        except _Unavailable as exc:
            if local is None:
                if self.on_unavailable == "fail":
                    raise self._unavailable_error(exc) from exc.__cause__
                await self._pass_locally(self._local())
            return time.monotonic() - began
        if slot.wait > 0:
            await self._wait_for(slot)
        return time.monotonic() - began

    async def _book(self) -> _Slot:
        """Book a slot in Redis, one caller of this process at a time, first come first
        served. A slot over a window ahead is not booked: the caller keeps its turn and
        asks Redis again when the next slot nears, the others waiting behind it (so
        hundreds of callers never storm Redis, nor delay the confirmations of the
        callers about to start).

        Raises:
            _Unavailable: Redis could not be used.
        """
        async with self._queue:
            while True:
                slot = await self._book_once()
                if slot.member:
                    return slot
                # Nothing booked, so nothing to give back if cancelled here.
                await asyncio.sleep(max(slot.due - time.monotonic(), _POLL_AT_LEAST))

    async def _book_once(self) -> _Slot:
        member = self._next_member()
        try:
            slot = await self._run(
                functools.partial(self._script.book, member, since=self._rejoin_since)
            )
        except _Unavailable:
            raise
        except BaseException:
            self._give_back(member)  # cancelled while Redis may have booked it
            raise
        if slot.member:
            self._note_booked(slot.due)
        return slot

    async def _wait_for(self, slot: _Slot) -> None:
        """Sleep until *slot*, asking Redis once more just before it (a pause may have
        been set meanwhile by any sharer), then sleep the last moment away."""
        confirmed = slot.wait < _RECHECK_AFTER
        while True:
            member = self._next_member()  # used only if the slot has to move
            try:
                left = slot.due - time.monotonic()
                if confirmed:
                    if left > 0:
                        await asyncio.sleep(left + self._jitter())
                    return
                low, high = _CONFIRM_LEAD_BOUNDS
                lead = min(max(_CONFIRM_LEAD * self._script.clock.rtt, low), high)
                if left > lead:
                    await asyncio.sleep(left - lead)
                held = slot
                slot = await self._run(
                    functools.partial(self._script.book, member, held, self._rejoin_since)
                )
                if not slot.member:
                    # Moved behind a pause to over a window ahead: queue again.
                    await asyncio.sleep(max(0.0, slot.due - time.monotonic()))
                    slot = await self._book()
                    confirmed = slot.wait < _RECHECK_AFTER
                    continue
                if slot.member != held.member:
                    self._note_booked(slot.due)
                confirmed = slot.member == held.member or slot.wait < _RECHECK_AFTER
            except _Unavailable as exc:
                if self.on_unavailable == "fail":
                    raise self._unavailable_error(exc) from exc.__cause__
                confirmed = True  # booked before Redis went away: the slot is still ours
            except BaseException:
                self._give_back(slot.member, member)
                raise

    async def on_rate_limited(self, retry_after: float | None, started: float) -> float:
        """Pause every sharer of the key after a 429: ``Retry-After`` or a growing default.

        Returns:
            The pause, in seconds from now.
        """
        try:
            left, _, streak = await self._run(
                functools.partial(self._script.pause, retry_after, random.random())
            )
        except _Unavailable:
            return self._local()._hold(retry_after, started)
        self._streak = streak
        self._note_pause(left)
        return left

    async def on_success(self, started: float) -> None:
        """Report an accepted attempt: ends a streak of 429s (a Redis call only then)."""
        if self._fallback is not None:
            await self._fallback.on_success(started)
        if self._streak > 0:
            self._streak = 0
            with contextlib.suppress(_Unavailable):
                await self._run(self._script.success)

    async def aclose(self) -> None:
        """Close the Redis client made from a URL (not one passed in). Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._owns_client:
            await self._client.aclose()

    # -- internals ------------------------------------------------------------------

    def _next_member(self) -> str:
        return f"{self._script.peer}:{next(self._members)}"

    def _jitter(self) -> float:
        # Tiny, and bounded by a tenth of the margin, so that it can never eat the
        # margin that keeps two windows from merging at the server.
        return random.uniform(0.0, min(self._shape.effective_margin / 10, 0.001))

    def _note_pause(self, left: float) -> None:
        if left > 0:
            self._paused_until = max(self._paused_until, time.monotonic() + left)

    async def _run(self, make: Callable[[], Coroutine[Any, Any, T]]) -> T:
        """Make one script call (``make()``), tracking whether Redis is available.

        While Redis is unavailable, a call is made only once the back-off is over
        and no other call is already probing; the others fail at once.
        """
        probing = self._down_since is not None
        if probing and (self._probing or time.monotonic() < self._retry_at):
            raise _Unavailable(self._reason)
        if probing:
            self._probing = True
        try:
            async with self._connections:
                if self._down_since is not None and not probing:
                    # Redis went away while this call waited for a connection.
                    raise _Unavailable(self._reason)
                result = await self._call(make)
        except self._errors as exc:
            self._went_down(exc, probing)
            raise _Unavailable(self._reason) from exc
        finally:
            if probing:
                self._probing = False
        self._note_answer(time.monotonic(), result)
        return result

    async def _call(self, make: Callable[[], Coroutine[Any, Any, T]]) -> T:
        """``make()`` within the timeout; a pool that others keep full is waited for,
        never taken for an outage."""
        delay = 0.001
        while True:
            try:
                async with asyncio.timeout(self.timeout):
                    return await make()
            except self._pool_full:
                await asyncio.sleep(delay)
                delay = min(2 * delay, 0.05)

    def _note_answer(self, now: float, result: object) -> None:
        """What an answer tells: Redis is back, the sharers, the streak, the pause."""
        if self._down_since is not None:
            self._came_back(now, self._down_since)
        if isinstance(result, _Slot):
            self._note_peers(now, result.peers)
            self._streak = result.streak
            self._note_pause(result.pause_left)
            if self._fallback is not None and result.back >= self._expected_peers:
                # As many limiters as were counted before the outage have called Redis
                # since this one came back, so each of them books every start there
                # now: a window later Redis holds every start of a window.
                self._rejoin_by = min(self._rejoin_by, now + self._window)

    def _came_back(self, now: float, down_since: float) -> None:
        down_for = now - down_since
        self._down_since = None
        if self._fallback is None or self.on_unavailable == "fail":
            # Nothing was started without Redis: what it holds (or lost) is all there is.
            self._fallback = None
            logger.info(
                "rate limit %r: Redis is reachable again after %.1fs; the limit is shared again",
                self.key,
                down_for,
            )
            return
        # Every sharer that is still running tries Redis at least this often (a try
        # takes up to a timeout); a window after the last of them is back, Redis has
        # seen every start of a whole window.
        self._rejoin_by = now + _RETRY_MAX * _RETRY_JITTER + self.timeout + self._window
        self._rejoin_since = self._script.clock.redis_us(now)
        logger.info(
            "rate limit %r: Redis is reachable again after %.1fs; keeping the local limit "
            "of %d per %ss as well until the other limiters are back (at most %.1fs)",
            self.key,
            down_for,
            self._fallback.requests,
            self._fallback.per,
            self._rejoin_by - now,
        )

    @property
    def _window(self) -> float:
        return self._shape.per + self._shape.effective_margin

    def _local_in_force(self, now: float) -> RateLimit | None:
        """The local limit an acquisition keeps to now, if any.

        That is while Redis is unavailable (with ``on_unavailable="local"``) and,
        once it is back, until every sharer can be back too (``_rejoin_by``).
        """
        local = self._fallback
        if local is None or self.on_unavailable == "fail":
            return None
        if self._down_since is not None or now < self._rejoin_by:
            return local
        self._fallback = None
        self._rejoin_by = math.inf
        self._rejoin_since = None
        logger.info("rate limit %r: back on the whole shared limit", self.key)
        return None

    def _note_peers(self, now: float, peers: int) -> None:
        seen = self._peers_seen
        while seen and seen[-1][1] <= peers:
            seen.pop()
        seen.append((now, peers))
        while now - seen[0][0] > _PEER_MEMORY:  # the newest answer always stays
            seen.popleft()

    def _note_booked(self, due: float) -> None:
        booked = self._booked
        booked.append(due)
        horizon = time.monotonic() - self._window
        while booked[0] <= horizon and len(booked) > 1:
            booked.popleft()

    def _went_down(self, exc: BaseException, probing: bool) -> None:
        now = time.monotonic()
        self._reason = _describe(exc)
        if self._down_since is None:
            self._down_since = now
            self._backoff = _RETRY_FIRST
            if self.on_unavailable == "local":
                local = self._local()
                what = f"falling back to a local limit of {local.requests} per {local.per}s"
            else:
                what = "acquisitions fail (on_unavailable='fail')"
            logger.warning(
                "rate limit %r: Redis is unavailable (%s); %s until it is back",
                self.key,
                self._reason,
                what,
            )
        elif probing:
            self._backoff = min(2 * self._backoff, _RETRY_MAX)
        else:
            return  # a call that started before the outage was noticed
        # Jittered, so that the processes sharing the key do not all probe at once.
        self._retry_at = now + self._backoff * random.uniform(1.0, _RETRY_JITTER)

    def _local(self) -> RateLimit:
        """The in-process limit used while Redis is unavailable (made on first need).

        Its share is ``fallback_fraction`` of the limit, else ``1 / N`` for the most
        limiters Redis counted on the key lately. Its log starts with this limiter's
        own slots booked in Redis during the last window and ahead (they still start,
        at their times), so that its own starts stay within the share across the
        switch instead of adding a fresh window's worth to them.
        """
        if self._fallback is None:
            peers = self._peers
            fraction = self.fallback_fraction
            if fraction is None:
                fraction = 1 / (peers or DEFAULT_PEERS)
            self._expected_peers = peers or math.ceil(1 / fraction - 1e-9)
            share = max(1, math.floor(self.requests * fraction + 1e-9))
            burst = min(self._shape.effective_burst, share)
            local = RateLimit(share, self.per, burst=burst, margin=self._shape.effective_margin)
            horizon = time.monotonic() - self._window
            for due in sorted(self._booked):
                if due > horizon:
                    # Booked at its own time, a slot enters the log as a start; later
                    # if the share could not have held it, which only delays the next.
                    local._book(due)
            self._fallback = local
        return self._fallback

    async def _pass_locally(self, local: RateLimit) -> None:
        left = self._paused_until - time.monotonic()
        if left > 0:
            # A pause Redis announced before it went away still stands.
            self._paused_until = 0.0
            local._hold(left, time.monotonic())
        await local.acquire()

    def _unavailable_error(self, exc: _Unavailable) -> RateLimiterUnavailableError:
        return RateLimiterUnavailableError(
            f"the shared rate limit {self.key!r} is unavailable: Redis failed ({exc}); "
            "no request was sent (on_unavailable='fail'; pass on_unavailable='local' "
            "to fall back to a local limit while Redis is away)"
        )

    def _give_back(self, *members: str) -> None:
        """Hand back the slots of a caller that gave up, without making it wait."""
        if self._closed or self._down_since is not None:
            return
        task = asyncio.get_running_loop().create_task(self._cancel(members))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _cancel(self, members: tuple[str, ...]) -> None:
        # Failing here only costs a little throughput: the slot goes unused.
        with contextlib.suppress(_Unavailable):
            for member in members:
                await self._run(functools.partial(self._script.cancel, member))
