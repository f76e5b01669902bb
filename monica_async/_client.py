"""MonicaClient: the session manager every call goes through."""

from __future__ import annotations

import asyncio
import contextvars
import enum
import functools
import json
import logging
import os
import time
from collections.abc import AsyncGenerator, AsyncIterable, Awaitable, Callable, Iterable, Mapping
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final, Self, overload
from urllib.parse import urlsplit

import aiohttp
import attrs

from . import _download, _redact, _retry, _storage, _telemetry
from ._admission import Admission
from ._batch import run_batch
from ._concurrency import AutoConcurrency, limiter_burst, limiter_rate
from ._config import (
    BASE_URL_ENV,
    DEFAULT_BASE_URL,
    DEFAULT_MAX_CONCURRENCY,
    DEFAULT_MAX_DOWNLOAD_BYTES,
    DEFAULT_TIMEOUT,
    MAX_AUTO_CONCURRENCY,
    UPSCALE_PATH,
    USE_CLIENT_DEFAULT,
    Limits,
    RetryPolicy,
    UseClientDefault,
    resolve_api_key,
    resolve_timeout,
)
from ._download import byte_limit
from ._exceptions import APIError, APIResponseValidationError, InvalidRequestError, MonicaError
from ._flow import Slots
from ._http import (
    MAX_ANSWER_BYTES,
    USER_AGENT,
    EnvProxies,
    ReuseAwareConnector,
    loggable_url,
    readable_text,
    status_error,
)
from ._models import Outcome, UpscaleResult, result_from_answer
from ._ratelimit import AdaptiveRateLimit, RateLimit, RateLimiter
from ._stats import ClientStats, StatsRecorder
from ._transport import Answer, post_json
from ._validation import is_loopback_host, validate_image_url, validate_scale

if TYPE_CHECKING:
    from obstore.store import ObjectStore

__all__ = ["MonicaClient"]

logger = logging.getLogger("monica_async")

#: Inputs starting so are URLs, sent as they are; others may name an object or a file.
_WEB_PREFIXES: Final = ("https://", "http://")


def _check_limits(
    limits: Limits | None, rate_limit: RateLimiter | None, max_concurrency: int | None
) -> Limits:
    """*limits* (or no limits), refused when another option states the same limit."""
    if limits is None:
        return Limits()
    if not isinstance(limits, Limits):
        raise InvalidRequestError(
            f"limits must be a Limits such as Limits(rate='10/min', in_flight=8), got {limits!r}"
        )
    if limits.rate is not None and rate_limit is not None:
        raise InvalidRequestError(
            "give the rate once: limits=Limits(rate=...) or rate_limit=..., not both"
        )
    if limits.in_flight is not None and max_concurrency is not None:
        raise InvalidRequestError(
            "give the concurrency once: limits=Limits(in_flight=...) or max_concurrency=..., "
            "not both"
        )
    return limits


def _default_limiter(limits: Limits, rate_limit: RateLimiter | None) -> RateLimiter:
    if rate_limit is not None:
        return rate_limit
    if limits.rate is not None:
        requests, per = limits.rate
        return RateLimit(requests, per=per)
    return AdaptiveRateLimit()


class _State(enum.Enum):
    UNOPENED = "unopened"
    OPENED = "opened"
    CLOSED = "closed"


#: What one successful attempt produced: the decoded body, the body's text, the
#: server's request id and the attempt's number.
_Answer = tuple[Any, str, str | None, int]


class MonicaClient:
    """An asyncio client for the Monica Upscale API.

    Use it as an async context manager (or call :meth:`aclose`): it owns one
    ``aiohttp.ClientSession``, created inside the running event loop on first use
    and reused by every call.

    Args:
        api_key: The API key; defaults to the ``MONICA_API_KEY`` environment variable.
        base_url: The API's root; defaults to ``MONICA_BASE_URL``, else
            ``https://openapi.monica.im``. ``/v1/image/tool/upscale`` is appended.
        timeout: Per attempt: seconds (total) or an ``aiohttp.ClientTimeout``.
        retry: When and how long to retry (:class:`RetryPolicy`).
        max_concurrency: Attempts in flight at once across every call of this
            client, single calls and batches alike. ``None`` (default): sized
            automatically from the limiter's rate and the latency observed, from
            8 (what a new key allows) up to :data:`MAX_AUTO_CONCURRENCY` (256), or
            to ``limits.in_flight``; lowered when the server answers 429 to a high
            number in flight. An integer is a hard cap.
        rate_limit: A :class:`RateLimit`, :class:`AdaptiveRateLimit`,
            :class:`RedisRateLimit` or any :class:`RateLimiter`. Default: a
            :class:`RateLimit` at ``limits.rate`` when given, else an
            :class:`AdaptiveRateLimit` with no limit until the server answers 429,
            then a shared pause and paced traffic.
        limits: The key's limits (:class:`Limits`), such as
            ``Limits(rate="10/min", in_flight=8)``: the one place to state them.
            Its rate may not be given with *rate_limit*, nor its *in_flight* with
            *max_concurrency*.
        session: An ``aiohttp.ClientSession`` to use; it is never closed by the client.
        headers: Extra headers for API calls.
        allow_insecure_http: Allow ``http://`` for hosts other than loopback.
        max_download_bytes: Largest image :meth:`download` accepts.
        staging: Where local files are uploaded before being sent, as an object URL
            prefix such as ``"s3://bucket/tmp/"`` (the ``storage`` extra). Without it a
            local path is refused.
        stores: obstore stores to use for object URLs, by the bucket (or prefix) URL
            they are rooted at, e.g. ``{"s3://photos": S3Store("photos", ...)}``.
            Other buckets get a store configured from the environment
            (``AWS_ACCESS_KEY_ID``, ``AWS_ENDPOINT_URL``, ...).

    Raises:
        MonicaError: No API key was given or found in the environment.
        InvalidRequestError: An option is invalid.
    """

    def __init__(
        self,
        api_key: str | None = None,
        *,
        base_url: str | None = None,
        timeout: float | aiohttp.ClientTimeout | None = DEFAULT_TIMEOUT,
        retry: RetryPolicy | None = None,
        max_concurrency: int | None = None,
        rate_limit: RateLimiter | None = None,
        limits: Limits | None = None,
        session: aiohttp.ClientSession | None = None,
        headers: Mapping[str, str] | None = None,
        allow_insecure_http: bool = False,
        max_download_bytes: int = DEFAULT_MAX_DOWNLOAD_BYTES,
        staging: str | None = None,
        stores: Mapping[str, ObjectStore] | None = None,
    ) -> None:
        self._api_key = resolve_api_key(api_key)
        self.base_url: str = self._check_base_url(
            base_url or os.environ.get(BASE_URL_ENV) or DEFAULT_BASE_URL, allow_insecure_http
        )
        self._endpoint = self.base_url + UPSCALE_PATH
        self._endpoint_path = urlsplit(self._endpoint).path
        self.timeout: aiohttp.ClientTimeout = resolve_timeout(timeout)
        self.retry: RetryPolicy = _checked_retry(retry)
        self.max_concurrency: int | None = _checked_max_concurrency(max_concurrency)
        self.limits: Limits = _check_limits(limits, rate_limit, max_concurrency)
        self.rate_limit: RateLimiter = _default_limiter(
            self.limits, _checked_rate_limit(rate_limit)
        )
        self.allow_insecure_http: bool = allow_insecure_http
        self.max_download_bytes: int = byte_limit("max_download_bytes", max_download_bytes)
        self._storage = _storage.Storage.configure(staging, stores)
        # Sent with every API call (an injected session has no User-Agent of ours).
        self._api_headers = _api_headers(self._api_key, headers, injected=session is not None)
        self._session = session
        self._owns_session = session is None
        # Read with the session the client creates; an injected one has its own settings.
        self._env_proxies: EnvProxies | None = None
        self._proxy: str | None = None
        self._state = _State.UNOPENED
        self._auto: AutoConcurrency | None = None
        if max_concurrency is None:
            self._auto = _auto_concurrency(self.rate_limit, self.limits)
            slots = self._auto.slots
        else:
            slots = Slots(max_concurrency)
        #: The event loop the client was opened in: its connections belong to it.
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stats = StatsRecorder()
        self._admission = Admission(slots, self.rate_limit, self._auto, self._stats)

    def __repr__(self) -> str:
        return (
            f"MonicaClient(base_url={self.base_url!r}, "
            f"max_concurrency={self.max_concurrency or 'auto'}, "
            f"rate_limit={self.rate_limit!r}, state={self._state.value})"
        )

    @staticmethod
    def _check_base_url(url: str, allow_insecure_http: bool) -> str:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise InvalidRequestError(
                f"base_url must be an absolute http(s) URL such as {DEFAULT_BASE_URL!r}, "
                f"got {url!r}"
            )
        if parts.query or parts.fragment:
            # The path is appended to the string: after a query it would land inside it.
            raise InvalidRequestError(
                f"base_url must not have a query or fragment, such as {DEFAULT_BASE_URL!r}, "
                f"got {url!r}"
            )
        if parts.scheme == "http" and not (allow_insecure_http or is_loopback_host(parts.hostname)):
            raise InvalidRequestError(
                f"base_url {url!r} is plain http: the API key would travel unencrypted; "
                "use https, or pass allow_insecure_http=True"
            )
        return url.rstrip("/")

    # -- lifecycle -------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        self._open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def _open(self) -> aiohttp.ClientSession:
        if self._state is _State.CLOSED:
            raise MonicaError("this MonicaClient is closed; create a new one")
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # upscale_many() called outside a coroutine: checked on use
            loop = None
        if self._loop is None:
            self._loop = loop
        elif loop is not None and loop is not self._loop:
            raise MonicaError(
                "this MonicaClient was opened in another event loop"
                f"{' (closed now)' if self._loop.is_closed() else ''}, which its connections "
                "belong to: create the client inside the event loop that uses it, one per "
                "asyncio.run() (e.g. `async with MonicaClient() as client:` inside main())"
            )
        if self._session is None:
            # The pool follows the concurrency: never the bottleneck, never unbounded.
            most = MAX_AUTO_CONCURRENCY if self.max_concurrency is None else self.max_concurrency
            connector = ReuseAwareConnector(limit=max(100, 2 * most), ttl_dns_cache=300)
            self._session = aiohttp.ClientSession(
                connector=connector, headers={"User-Agent": USER_AGENT}
            )
            self._env_proxies = EnvProxies.from_environment()
            self._proxy = self._env_proxies.for_url(self._endpoint)
        self._state = _State.OPENED
        return self._session

    def _timeout_for(
        self, timeout: float | aiohttp.ClientTimeout | UseClientDefault | None
    ) -> aiohttp.ClientTimeout:
        return self.timeout if timeout is USE_CLIENT_DEFAULT else resolve_timeout(timeout)

    @property
    def closed(self) -> bool:
        """``True`` once :meth:`aclose` ran."""
        return self._state is _State.CLOSED

    async def aclose(self) -> None:
        """Close the session the client created (not an injected one). Idempotent."""
        if self._state is _State.CLOSED:
            return
        self._state = _State.CLOSED
        if self._owns_session and self._session is not None:
            await self._session.close()

    @property
    def stats(self) -> ClientStats:
        """A snapshot of the client's counters (:class:`ClientStats`)."""
        auto = self._auto
        if auto is None:
            concurrency, reason = self.max_concurrency or 0, "fixed by max_concurrency"
        else:
            concurrency, reason = auto.limit, auto.reason
        return self._stats.snapshot(
            concurrency=concurrency,
            concurrency_reason=reason,
            rate=limiter_rate(self.rate_limit)(),
        )

    # -- single calls ----------------------------------------------------------------

    async def upscale(
        self,
        image: str | os.PathLike[str],
        *,
        scale: int = 2,
        timeout: float | aiohttp.ClientTimeout | UseClientDefault | None = USE_CLIENT_DEFAULT,
        retry: RetryPolicy | UseClientDefault = USE_CLIENT_DEFAULT,
    ) -> UpscaleResult:
        """Upscale the image at *image* and return where the result is.

        Args:
            image: Absolute http(s) URL of the original image; or an object URL
                (``s3://``, ``gs://``, ``az://``), sent as a presigned URL; or, with a
                ``staging`` location, a local file, uploaded there, sent presigned and
                deleted once the call is over.
            scale: Scale factor, one of ``ALLOWED_SCALES``.
            timeout: Per-attempt timeout for this call.
            retry: Retry policy for this call.

        Raises:
            InvalidRequestError: *image* or *scale* is invalid (nothing was sent).
            StorageError: The object could not be read or the file not staged.
            APIStatusError: The server refused (a subclass per status).
            APIConnectionError: The server could not be reached (after retries).
            APIResponseValidationError: The server's 200 broke the contract.
        """
        scale = validate_scale(scale)
        resolved = self._timeout_for(timeout)
        policy = self.retry if retry is USE_CLIENT_DEFAULT else retry
        self._open()
        return await self._upscale_input(image, scale, resolved, policy)

    def _upscale_input(
        self, image: object, scale: int, timeout: aiohttp.ClientTimeout, policy: RetryPolicy
    ) -> Awaitable[UpscaleResult]:
        """The upscale of an input as a call or a batch has it, to await: a URL as it is,
        an object or a file through the storage."""
        if isinstance(image, str) and image.startswith(_WEB_PREFIXES):
            return self._upscale(image, scale, timeout, policy)
        call = functools.partial(self._upscale, scale=scale, timeout=timeout, policy=policy)
        return self._upscale_stored(image, call, policy, timeout)

    async def _upscale_stored(
        self,
        image: object,
        call: Callable[[str], Awaitable[UpscaleResult]],
        policy: RetryPolicy,
        timeout: aiohttp.ClientTimeout,
    ) -> UpscaleResult:
        """Upscale an object or a local file: presigned, staged, cleaned up after."""
        prepared = await self._storage.prepare(image, _storage.presign_seconds(policy, timeout))
        if prepared is None:
            return await call(image)  # type: ignore[arg-type]  # _upscale checks it
        try:
            result = await call(prepared.url)
        except MonicaError as exc:
            prepared.scrub(exc)
            raise
        finally:
            await prepared.release()
        return attrs.evolve(result, source=prepared.source)

    async def _upscale(
        self, image: str, scale: int, timeout: aiohttp.ClientTimeout, policy: RetryPolicy
    ) -> UpscaleResult:
        """:meth:`upscale` once its options are checked (batches call it directly)."""
        image = validate_image_url(image)
        # upscale() and a batch's start checked the event loop (get_running_loop() is a
        # system call on Python 3.11); a closed client still refuses here.
        session = self._session if self._state is _State.OPENED else None
        session = session or self._open()
        stats = self._stats
        stats.requests += 1
        began = time.monotonic()
        traced = _telemetry.upscale_started(scale)  # None unless an OpenTelemetry SDK is set up
        try:
            payload, raw, request_id, attempts = await _retry.retrying(
                lambda number: self._attempt(session, image, scale, timeout, number, policy),
                policy,
                what=lambda: f"upscale {loggable_url(image)}",
            )
            result = result_from_answer(
                payload, image, scale, attempts, time.monotonic() - began, request_id, raw
            )
        except BaseException as exc:
            if isinstance(exc, MonicaError):
                self._scrub(exc, image)
                stats.failures[type(exc).__name__] += 1
            if traced is not None:
                traced.failed(exc)
            raise
        stats.succeeded += 1
        stats.latencies.append(result.elapsed)
        if traced is not None:
            traced.succeeded(result)
        return result

    async def _attempt(
        self,
        session: aiohttp.ClientSession,
        image: str,
        scale: int,
        timeout: aiohttp.ClientTimeout,
        number: int,
        policy: RetryPolicy,
    ) -> _Answer:
        """Attempt *number*: wait for a turn, then one POST, traced, logged and checked.

        Every POST is an attempt: it is counted, traced and bounded by the policy, a
        resend on a connection the server had closed included.
        """
        async with self._admission.turn(number, policy.max_retry_after) as turn:
            with _telemetry.attempt_started(self._endpoint, number, turn.waited):
                began = time.monotonic()
                try:
                    answer = await post_json(
                        session,
                        self._endpoint,
                        {"image": image, "scale": scale},
                        headers=self._api_headers,
                        timeout=timeout,
                        proxy=self._proxy,
                    )
                except BaseException:
                    self._log_attempt(image, None, began, number)
                    raise
                self._log_attempt(image, answer, began, number)
                return self._checked(answer, number)

    def _log_attempt(self, image: str, answer: Answer | None, began: float, number: int) -> None:
        """One DEBUG line per attempt, naming its input (without the query) and the answer."""
        if not logger.isEnabledFor(logging.DEBUG):
            return  # the URL is shortened only for a line that is shown
        rid = None if answer is None else answer.request_id
        logger.debug(
            "POST %s for %s -> %s in %.3fs (attempt %d%s)",
            self._endpoint_path,
            loggable_url(image),
            "no answer" if answer is None else answer.status,
            time.monotonic() - began,
            number,
            f", request id {rid}" if rid else "",
        )

    def _checked(self, answer: Answer, number: int) -> _Answer:
        """Decode what attempt *number* got back; raise what it means if not a valid 200."""
        raw = answer.body.decode("utf-8", errors="replace")
        rid = answer.request_id
        if answer.status != 200:
            raise status_error(answer.status, raw, answer.headers, url=self._endpoint)
        if not answer.whole:
            raise APIResponseValidationError(
                f"the server answered 200 with a body over {MAX_ANSWER_BYTES // 1024} KiB, "
                "where the API sends a short JSON object",
                body=raw,
                url=self._endpoint,
                request_id=rid,
            )
        try:
            payload = json.loads(raw)
        except ValueError:
            raise APIResponseValidationError(
                "the server answered 200 with a body that is not JSON: "
                f"{readable_text(raw, answer.headers.get('content-type', ''), 100)!r}",
                body=raw,
                url=self._endpoint,
                request_id=rid,
            ) from None
        return payload, raw, rid, number

    # -- batches -----------------------------------------------------------------------

    def upscale_many(
        self,
        images: Iterable[str | os.PathLike[str]] | AsyncIterable[str | os.PathLike[str]],
        *,
        scale: int = 2,
        ordered: bool = False,
        workers: int | None = None,
        buffer: int | None = None,
    ) -> AsyncGenerator[Outcome, None]:
        """Upscale many images in parallel, yielding one :class:`Outcome` per input.

        Workers pull inputs lazily, so a generator of millions of URLs costs no more
        memory than a few. Each input yields exactly one outcome: a result, or the
        final error (an invalid input yields :class:`InvalidRequestError` without a
        request). After an :class:`AuthenticationError` or
        :class:`PermissionDeniedError` no more requests are sent and the remaining
        inputs get that error.

        Use it as ``async for outcome in client.upscale_many(urls)``; leaving the
        loop early cancels what is in flight. For a clean stop without waiting for
        garbage collection, wrap it in ``contextlib.aclosing``.

        Args:
            images: URLs (or object URLs, or local files with ``staging``, as
                :meth:`upscale` takes them), as any iterable or async iterable.
            scale: Scale factor for every image.
            ordered: Yield in input order (a bounded look-ahead) instead of
                completion order.
            workers: Concurrent workers. Default: the client's ``max_concurrency``,
                or, when that is automatic, as many as its current target (workers
                are started as the target grows).
            buffer: Finished outcomes held for a slow consumer before the workers
                wait (default: twice the most workers); also the look-ahead when
                *ordered*.

        Raises:
            InvalidRequestError: *images* is not an iterable (a single URL string
                included), or *scale*, *workers* or *buffer* is invalid; at once,
                before any request.
        """
        scale = validate_scale(scale)
        self._open()
        count, growth, size = self._batch_sizes(workers, buffer)
        call = functools.partial(
            self._upscale_input, scale=scale, timeout=self.timeout, policy=self.retry
        )
        return run_batch(
            call,
            images,
            context=contextvars.copy_context(),  # each input's span a child of the caller's
            on_start=self._open,
            workers=count,
            growth=growth,
            buffer=size,
            ordered=ordered,
        )

    def _batch_sizes(
        self, workers: int | None, buffer: int | None
    ) -> tuple[int, AutoConcurrency | None, int]:
        """A batch's workers to start, the target they grow with, and its buffer."""
        _check_positive_int("workers", workers)
        _check_positive_int("buffer", buffer)
        growth = self._auto if workers is None else None
        if growth is not None:
            return growth.wanted(), growth, buffer or 2 * MAX_AUTO_CONCURRENCY
        count = workers or self.max_concurrency or 1
        return count, None, buffer or 2 * count

    async def upscale_all(
        self,
        images: Iterable[str | os.PathLike[str]] | AsyncIterable[str | os.PathLike[str]],
        *,
        scale: int = 2,
        workers: int | None = None,
    ) -> list[Outcome]:
        """Upscale every image and return the outcomes in input order, one per input."""
        outcomes: list[Outcome] = []
        stream = self.upscale_many(images, scale=scale, ordered=True, workers=workers)
        try:
            async for outcome in stream:
                outcomes.append(outcome)
        finally:
            await stream.aclose()
        return outcomes

    # -- downloads --------------------------------------------------------------------

    @overload
    async def download(
        self,
        result: UpscaleResult | str,
        path: os.PathLike[str],
        *,
        max_bytes: int | None = None,
        timeout: float | aiohttp.ClientTimeout | UseClientDefault | None = USE_CLIENT_DEFAULT,
    ) -> Path: ...

    @overload
    async def download(
        self,
        result: UpscaleResult | str,
        path: str,
        *,
        max_bytes: int | None = None,
        timeout: float | aiohttp.ClientTimeout | UseClientDefault | None = USE_CLIENT_DEFAULT,
    ) -> Path | str: ...

    async def download(
        self,
        result: UpscaleResult | str,
        path: str | os.PathLike[str],
        *,
        max_bytes: int | None = None,
        timeout: float | aiohttp.ClientTimeout | UseClientDefault | None = USE_CLIENT_DEFAULT,
    ) -> Path | str:
        """Stream the upscaled image to *path*, atomically; return where it is.

        The bytes go to a temporary file beside *path*, renamed only once checked to
        be a whole image (as long as its ``Content-Length``, or without one, ending
        where its format says), so *path* never holds a partial file. No
        ``Authorization`` header is sent. Transient failures, a body cut short
        included, are retried.

        *path* may also be an object URL (``"s3://bucket/key.png"``, the ``storage``
        extra): the image is streamed into the object, in one put or a multipart
        upload completed only once the whole image arrived and passed the same checks,
        so no partial object is ever visible; the object URL is returned.

        Raises:
            APIResponseValidationError: The body is not an image or is too large.
            APIStatusError: The image server refused.
            APIConnectionError: The image server could not be reached, or every
                attempt's body was cut short.
            StorageError: The store refused the write.
        """
        url = result.url if isinstance(result, UpscaleResult) else result
        limit = self.max_download_bytes if max_bytes is None else byte_limit("max_bytes", max_bytes)
        try:
            if isinstance(path, str) and _storage.is_object_url(path):
                return await self._storage.write(
                    self._open(),
                    url,
                    path,
                    limit=limit,
                    timeout=self._timeout_for(timeout),
                    policy=self.retry,
                    allow_insecure_http=self.allow_insecure_http,
                    proxies=self._env_proxies,
                )
            return await _download.download(
                self._open(),
                url,
                Path(path),
                limit=limit,
                timeout=self._timeout_for(timeout),
                policy=self.retry,
                allow_insecure_http=self.allow_insecure_http,
                proxies=self._env_proxies,
            )
        except APIError as exc:
            self._scrub(exc, url)
            raise

    # -- secrets ------------------------------------------------------------------------

    def _scrub(self, error: MonicaError, *urls: str) -> None:
        """Hide the API key, and the secrets of *urls* (those sent), in *error* as it leaves.

        The one place the client hands its key to the redaction (``_redact``); errors
        are built without it, from the exchange's URLs alone.
        """
        _redact.scrub_error(error, key=self._api_key, urls=urls)


def _check_positive_int(name: str, value: int | None) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise InvalidRequestError(f"{name} must be an integer >= 1, got {value!r}")


def _checked_retry(retry: RetryPolicy | None) -> RetryPolicy:
    if retry is None:
        return RetryPolicy()
    if not isinstance(retry, RetryPolicy):
        raise InvalidRequestError(f"retry must be a RetryPolicy, got {retry!r}")
    return retry


def _checked_max_concurrency(value: int | None) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidRequestError(
            f"max_concurrency must be an integer or None (automatic), got {value!r}"
        )
    if value < 1:
        raise InvalidRequestError(f"max_concurrency must be >= 1, got {value}")
    return value


def _checked_rate_limit(rate_limit: RateLimiter | None) -> RateLimiter | None:
    if rate_limit is not None and not isinstance(rate_limit, RateLimiter):
        raise InvalidRequestError(
            "rate_limit must be a RateLimit, AdaptiveRateLimit, RedisRateLimit or another "
            f"RateLimiter, got {rate_limit!r}"
        )
    return rate_limit


def _api_headers(
    api_key: str, extra: Mapping[str, str] | None, *, injected: bool
) -> dict[str, str]:
    """The headers of every API call: the caller's, ours, the key.

    An injected session has a User-Agent of its own, so ours is sent with each call
    (unless the caller set one, in any case); the session the client makes carries it.
    """
    headers = dict(extra or {})
    names = {name.lower() for name in headers}
    if "authorization" in names:
        raise InvalidRequestError("headers must not set Authorization: pass api_key")
    if injected and "user-agent" not in names:
        headers = {"User-Agent": USER_AGENT, **headers}
    return {
        **headers,
        "Authorization": f"Bearer {api_key}",
        "Content-Type": "application/json",
        "Accept": "application/json",
    }


def _auto_concurrency(limiter: RateLimiter, limits: Limits) -> AutoConcurrency:
    """The automatic concurrency target for a client whose limiter is *limiter*, within
    the key's in-flight limit when *limits* states one."""
    rate = limiter_rate(limiter)
    most = limits.in_flight or MAX_AUTO_CONCURRENCY
    return AutoConcurrency(
        min(DEFAULT_MAX_CONCURRENCY, most),
        most,
        rate,
        # A rate set by the user, not learned (a RedisRateLimit's, say).
        fixed_rate=not hasattr(limiter, "rate") and rate() is not None,
        burst=limiter_burst(limiter),
    )
