"""Retries: which failures are worth another attempt, and how long to wait.

tenacity runs the loop; users only ever see :class:`~monica_async.RetryPolicy`.

The first attempt is made before tenacity is set up (:func:`retrying`), because nearly
every call succeeds at once and tenacity's async controller costs more than the rest of
the client together: measured with ``python -m benchmarks --only overhead`` (an
in-process stand-in session), the client's own CPU per request is 22-28 us over a raw
loop with the first attempt made directly, and 87-110 us with tenacity driving it; at
zero latency that is the difference between 0.8 and 0.5 of raw aiohttp's throughput.
Every retry runs in tenacity, which a call that fails sets up once.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import math
import random
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from typing import TypeVar

import tenacity

from ._config import RetryPolicy
from ._exceptions import APIConnectionError, APIError, APIStatusError, QuotaExceededError
from ._refusal import unless_refused

__all__ = ["is_testing", "parse_retry_after", "retrying", "set_testing"]

logger = logging.getLogger("monica_async")

T = TypeVar("T")

_testing = False

#: RFC 9110 delay-seconds; re.ASCII keeps other scripts' digits out.
_DIGITS = re.compile(r"[0-9]+", re.ASCII)
_DECIMAL = re.compile(r"[0-9]+(?:\.[0-9]+)?", re.ASCII)


def set_testing(testing: bool) -> None:
    """Make every retry wait (backoff, ``Retry-After``) last 0 seconds, or stop doing so.

    For tests, the library's own and yours: retries still happen and are counted,
    they just do not sleep. The 429 pause of the in-process limiters (`RateLimit`,
    `AdaptiveRateLimit`) lasts 0 seconds too; a `RedisRateLimit` keeps its pause in
    Redis and still honours it. Rate limits themselves still pace real time.
    """
    global _testing
    _testing = testing


def is_testing() -> bool:
    """Tell whether :func:`set_testing` switched waits off."""
    return _testing


async def _sleep(seconds: float) -> None:
    # A batch refused meanwhile (a wrong key, a spent balance) ends the wait at once.
    await unless_refused(lambda: asyncio.sleep(0 if _testing else seconds))


def parse_retry_after(headers: Mapping[str, str], now: float | None = None) -> float | None:
    """Seconds the server asks to wait: ``retry-after-ms``, then ``Retry-After``.

    ``Retry-After`` is whole seconds (digits only) or an HTTP-date, as RFC 9110
    defines it; ``retry-after-ms`` (not a standard, sent by some APIs) is a decimal
    number. Anything else (``1.5``, ``-0``, ``1e1``, ``1_0``) is ignored.
    """
    ms = headers.get("retry-after-ms")
    if ms is not None:
        ms = ms.strip()
        if _DECIMAL.fullmatch(ms):
            value = float(ms) / 1000
            if math.isfinite(value):
                return value
    raw = headers.get("retry-after")
    if raw is None:
        return None
    raw = raw.strip()
    if _DIGITS.fullmatch(raw):
        # float, not int: a thousand digits are a (silly) number, not an int() error.
        value = float(raw)
        return value if math.isfinite(value) else None
    try:
        when = email.utils.parsedate_to_datetime(raw)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    current = datetime.now(UTC).timestamp() if now is None else now
    return max(0.0, when.timestamp() - current)


def should_retry(exc: BaseException, policy: RetryPolicy) -> bool:
    """Tell whether *exc*, raised by one attempt, is worth another attempt."""
    if not isinstance(exc, APIError):
        # Never CancelledError, never a bug of ours: only the library's API errors.
        return False
    if isinstance(exc, QuotaExceededError):
        # Not even on a server's x-should-retry: true; only a top-up helps.
        return False
    if isinstance(exc, APIStatusError):
        return _retried_status(exc, policy) and not _waits_too_long(exc, policy)
    return isinstance(exc, APIConnectionError)


def _retried_status(exc: APIStatusError, policy: RetryPolicy) -> bool:
    hint = getattr(exc, "should_retry_hint", None)
    return bool(hint) if hint is not None else exc.status in policy.retry_statuses


def _waits_too_long(exc: APIStatusError, policy: RetryPolicy) -> bool:
    return exc.retry_after is not None and exc.retry_after > policy.max_retry_after


def _say_why_not_retried(exc: APIError, policy: RetryPolicy) -> None:
    """Add to *exc*'s message that it was not retried for its ``Retry-After`` alone.

    Such an answer would have been retried; only the wait it asks for is longer than
    the policy honours, which the bare answer (``HTTP 429: slow down``) does not say.
    """
    if not (
        isinstance(exc, APIStatusError)
        and _retried_status(exc, policy)
        and _waits_too_long(exc, policy)
    ) or exc.message.endswith(_RAISE_IT):
        return
    assert exc.retry_after is not None
    exc.message += (
        f"; not retried: the server asked to wait {exc.retry_after:g}s (Retry-After), "
        f"longer than RetryPolicy(max_retry_after={policy.max_retry_after:g}){_RAISE_IT}"
    )
    exc.args = (exc.message,)


_RAISE_IT = "; raise max_retry_after to wait that long"


def _wait_for(policy: RetryPolicy) -> Callable[[tenacity.RetryCallState], float]:
    def wait(state: tenacity.RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, APIConnectionError) and exc.reused_connection:
            return 0.0  # a kept-alive connection the server had closed: no backoff needed
        retry_after = getattr(exc, "retry_after", None)
        if retry_after is not None:
            # A little positive jitter, so callers told the same time do not wake together.
            return float(retry_after) + random.uniform(0.0, min(1.0, 0.1 * retry_after + 0.05))
        return policy.backoff(state.attempt_number, random.random())

    return wait


def _log_retry(
    policy: RetryPolicy, what: str | Callable[[], str]
) -> Callable[[tenacity.RetryCallState], None]:
    def before_sleep(state: tenacity.RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        delay = state.upcoming_sleep
        logger.info(
            "%s: retrying in %.2fs after %s (attempt %d of %d)",
            what() if callable(what) else what,
            delay,
            _reason(exc),
            state.attempt_number,
            policy.max_attempts,
        )

    return before_sleep


def _reason(exc: BaseException | None) -> str:
    if isinstance(exc, APIStatusError):
        return f"HTTP {exc.status}"
    return type(exc).__name__


async def retrying(
    attempt: Callable[[int], Awaitable[T]],
    policy: RetryPolicy,
    *,
    what: str | Callable[[], str],
    on_retry: Callable[[BaseException], None] | None = None,
) -> T:
    """Run ``attempt(n)`` until it succeeds or the policy gives up.

    The final error is raised with its ``attempts`` set to the attempts made.
    """
    began = time.monotonic()
    try:
        return await attempt(1)
    except APIError as exc:
        first = exc
    return await _retry_failed(first, attempt, policy, began=began, what=what, on_retry=on_retry)


async def _retry_failed(
    first: APIError,
    attempt: Callable[[int], Awaitable[T]],
    policy: RetryPolicy,
    *,
    began: float,
    what: str | Callable[[], str],
    on_retry: Callable[[BaseException], None] | None = None,
) -> T:
    """Go on after the first attempt, begun at *began*, failed with *first*; raise
    *first* when it is not worth a retry."""
    first.attempts = 1
    if policy.max_attempts == 1:
        raise first
    if not should_retry(first, policy):
        _say_why_not_retried(first, policy)
        raise first

    async def replay(number: int) -> T:
        if number == 1:
            raise first
        return await attempt(number)

    stop: tenacity.stop.stop_base = tenacity.stop_after_attempt(policy.max_attempts)
    if policy.deadline is not None:
        # tenacity's clock starts now; the deadline counts from the first attempt.
        stop = stop | tenacity.stop_before_delay(policy.deadline - (time.monotonic() - began))

    def before_sleep(state: tenacity.RetryCallState) -> None:
        _log_retry(policy, what)(state)
        if on_retry is not None and state.outcome is not None:
            exc = state.outcome.exception()
            if exc is not None:
                on_retry(exc)

    controller = tenacity.AsyncRetrying(
        stop=stop,
        wait=_wait_for(policy),
        retry=tenacity.retry_if_exception(lambda exc: should_retry(exc, policy)),
        sleep=_sleep,
        before_sleep=before_sleep,
        reraise=True,
    )
    number = 0
    async for round_ in controller:
        with round_:
            number = round_.retry_state.attempt_number
            try:
                return await replay(number)
            except APIError as exc:
                exc.attempts = number
                _say_why_not_retried(exc, policy)
                raise
    raise AssertionError("unreachable: tenacity either returns or raises")  # pragma: no cover
