"""Options, their defaults, and the small helpers that read them."""

from __future__ import annotations

import enum
import os
from collections.abc import Iterable
from typing import Any, Final

import aiohttp
import attrs

from ._exceptions import InvalidRequestError
from ._text import RATE_EXAMPLES, parse_rate

__all__ = [
    "DEFAULT_BASE_URL",
    "DEFAULT_MAX_CONCURRENCY",
    "DEFAULT_TIMEOUT",
    "DOCUMENTED_IN_FLIGHT",
    "DOCUMENTED_RATE",
    "MAX_AUTO_CONCURRENCY",
    "UPSCALE_PATH",
    "USE_CLIENT_DEFAULT",
    "Limits",
    "RetryPolicy",
    "UseClientDefault",
]

DEFAULT_BASE_URL: Final = "https://openapi.monica.im"
UPSCALE_PATH: Final = "/v1/image/tool/upscale"
API_KEY_ENV: Final = "MONICA_API_KEY"
BASE_URL_ENV: Final = "MONICA_BASE_URL"

#: Upscaling takes seconds on the server; the total bounds one attempt, not the retries.
DEFAULT_TIMEOUT: Final = aiohttp.ClientTimeout(total=120.0, connect=10.0, sock_connect=10.0)
#: Monica's documented default limits of a key for Upscale (the platform's "Rate limits"
#: page): 10 requests per minute and 8 concurrent requests, raised on request.
DOCUMENTED_RATE: Final = (10, 60.0)
DOCUMENTED_IN_FLIGHT: Final = 8
#: Attempts in flight before an automatic concurrency has measured anything: what a
#: key allows by default, so that a new key is not refused from the first burst.
DEFAULT_MAX_CONCURRENCY: Final = DOCUMENTED_IN_FLIGHT
#: Upper bound of the automatic concurrency: 20 requests/s at 10 s each, with headroom.
MAX_AUTO_CONCURRENCY: Final = 256
#: Results are images of at most 4096x4096; 64 MiB covers any PNG of that size.
DEFAULT_MAX_DOWNLOAD_BYTES: Final = 64 * 1024 * 1024

DEFAULT_MAX_ATTEMPTS: Final = 4
DEFAULT_INITIAL_BACKOFF: Final = 0.5
DEFAULT_MAX_BACKOFF: Final = 8.0
DEFAULT_MAX_RETRY_AFTER: Final = 60.0
DEFAULT_DEADLINE: Final = 300.0
DEFAULT_RETRY_STATUSES: Final = frozenset({408, 409, 429, 500, 502, 503, 504})


class UseClientDefault(enum.Enum):
    """Sentinel type: a per-call option that falls back to the client's setting."""

    USE_CLIENT_DEFAULT = enum.auto()

    def __repr__(self) -> str:
        return "USE_CLIENT_DEFAULT"


USE_CLIENT_DEFAULT: Final = UseClientDefault.USE_CLIENT_DEFAULT


def _non_negative(_: object, attribute: attrs.Attribute[float], value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise InvalidRequestError(f"{attribute.name} must be a number >= 0, got {value!r}")


def _positive_or_none(_: object, attribute: attrs.Attribute[Any], value: float | None) -> None:
    if value is not None and (
        isinstance(value, bool) or not isinstance(value, int | float) or value <= 0
    ):
        raise InvalidRequestError(f"{attribute.name} must be > 0 or None, got {value!r}")


def _at_least_one(_: object, attribute: attrs.Attribute[int], value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidRequestError(f"{attribute.name} must be an integer >= 1, got {value!r}")


def _statuses(value: Iterable[int]) -> frozenset[int]:
    """``retry_statuses`` as a frozenset, from any iterable of HTTP statuses.

    A function rather than ``frozenset`` itself, whose generic signature type checkers
    cannot read as the argument's type.
    """
    if isinstance(value, str | bytes) or not isinstance(value, Iterable):
        raise InvalidRequestError(
            f"retry_statuses must be HTTP statuses such as {{429, 503}}, got {value!r}"
        )
    statuses = frozenset(value)
    for status in statuses:
        if isinstance(status, bool) or not isinstance(status, int) or not 100 <= status <= 599:
            raise InvalidRequestError(
                f"retry_statuses must be HTTP statuses (integers 100 to 599), got {status!r}"
            )
    return statuses


@attrs.frozen(kw_only=True)
class RetryPolicy:
    """When and how long to retry a failed attempt.

    Connection errors, timeouts and the statuses in *retry_statuses* are retried;
    an ``x-should-retry: true|false`` answer header overrides that. Other 4xx
    answers, invalid 200 bodies and cancellation are never retried.

    Args:
        max_attempts: Attempts in all, the first included; ``1`` disables retries.
        initial_backoff: Wait before the first retry when the server gives no
            ``Retry-After``; doubles on each retry, with random jitter.
        max_backoff: Upper bound of one backoff wait.
        max_retry_after: Longest ``Retry-After`` honoured; a longer one fails at
            once with the 429/503 error instead of sleeping for minutes.
        deadline: Seconds from the first attempt after which no retry starts
            (``None``: no deadline). A retry whose wait would pass it is not made.
        retry_statuses: HTTP statuses worth retrying: any iterable of ints (a set, a
            list, a range), kept as a frozenset.

    Retries cost money: the API bills per call, and a call that timed out on our
    side may have been executed (and billed) by the server.
    """

    max_attempts: int = attrs.field(default=DEFAULT_MAX_ATTEMPTS, validator=_at_least_one)
    initial_backoff: float = attrs.field(default=DEFAULT_INITIAL_BACKOFF, validator=_non_negative)
    max_backoff: float = attrs.field(default=DEFAULT_MAX_BACKOFF, validator=_non_negative)
    max_retry_after: float = attrs.field(default=DEFAULT_MAX_RETRY_AFTER, validator=_non_negative)
    deadline: float | None = attrs.field(default=DEFAULT_DEADLINE, validator=_positive_or_none)
    retry_statuses: frozenset[int] = attrs.field(
        default=DEFAULT_RETRY_STATUSES, converter=_statuses
    )

    def backoff(self, retry_number: int, jitter: float) -> float:
        """Wait before retry number *retry_number* (1-based) with *jitter* in [0, 1)."""
        # Past 2**1000 the product is at least max_backoff (or inf) anyway; a bigger int
        # exponent would overflow the conversion to float.
        growth = 2.0 ** min(retry_number - 1, 1000)
        base = min(self.max_backoff, self.initial_backoff * growth)
        # "Equal jitter": at least half the backoff, so waits still grow.
        return float(base / 2 + base / 2 * jitter)


def _to_rate(value: object) -> tuple[int, float] | None:
    """``"10/min"``, ``(10, 60)`` or ``None``, checked, as ``(requests, seconds)``."""
    if value is None:
        return None
    if isinstance(value, str):
        try:
            return parse_rate(value)
        except ValueError as exc:
            raise InvalidRequestError(f"rate {exc}") from None
    if isinstance(value, tuple) and len(value) == 2:
        requests, per = value
        if (
            isinstance(requests, int)
            and not isinstance(requests, bool)
            and requests >= 1
            and isinstance(per, int | float)
            and not isinstance(per, bool)
            and per > 0
        ):
            return requests, float(per)
    raise InvalidRequestError(
        f"rate must be a string such as {RATE_EXAMPLES}, or (requests, seconds) with "
        f"requests >= 1 and seconds > 0, got {value!r}"
    )


def _in_flight(_: object, attribute: attrs.Attribute[int | None], value: int | None) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise InvalidRequestError(f"in_flight must be an integer >= 1 or None, got {value!r}")


@attrs.frozen(kw_only=True)
class Limits:
    """The limits of an API key, as the dashboard's limits page shows them.

    Monica gives every key 10 requests per minute and 8 concurrent requests to start
    with (:meth:`documented`), and raises them on request. Stating a key's limits
    lets the client keep to them from the first request: the rate becomes a
    :class:`RateLimit` (whose allowance starts at once, within *in_flight*), and
    the automatic concurrency never passes *in_flight*.

    Args:
        rate: Requests per window: ``"10/min"``, ``"5/s"``, ``"600/h"``, ``"10/30s"``
            or ``(requests, seconds)``. ``None``: unknown; the client learns it.
        in_flight: Requests the key allows at once. ``None``: unknown; the
            automatic concurrency finds it.

    Raises:
        InvalidRequestError: A limit is not of that form.
    """

    rate: tuple[int, float] | None = attrs.field(default=None, converter=_to_rate)
    in_flight: int | None = attrs.field(default=None, validator=_in_flight)

    @classmethod
    def documented(cls) -> Limits:
        """Monica's default limits of a key for Upscale: 10 per minute, 8 at once."""
        return cls(rate=DOCUMENTED_RATE, in_flight=DOCUMENTED_IN_FLIGHT)


def resolve_api_key(api_key: str | None) -> str:
    """Return the key from the argument or the environment, or raise naming both."""
    from ._exceptions import MonicaError

    key = api_key if api_key is not None else os.environ.get(API_KEY_ENV)
    if key is None or not key.strip():
        raise MonicaError(
            f"no API key: pass api_key=... or set the {API_KEY_ENV} environment variable"
        )
    return key.strip()


def resolve_timeout(timeout: float | aiohttp.ClientTimeout | None) -> aiohttp.ClientTimeout:
    """Accept a number of seconds (total per attempt) or an ``aiohttp.ClientTimeout``."""
    if timeout is None:
        return aiohttp.ClientTimeout(total=None)
    if isinstance(timeout, aiohttp.ClientTimeout):
        return timeout
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0:
        raise InvalidRequestError(
            f"timeout must be seconds > 0, an aiohttp.ClientTimeout or None, got {timeout!r}"
        )
    return aiohttp.ClientTimeout(total=float(timeout), connect=min(float(timeout), 10.0))
