"""The batch engine: a pool of workers pulling inputs lazily.

Memory does not grow with the input: there is one task per worker, never one per
input, and finished outcomes wait in a bounded channel, so a slow consumer slows
the workers down instead of piling results up. The pool is fixed, or grows (never
shrinks: a worker too many only waits for a place) as an automatic concurrency
target asks for more.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import logging
import os
from collections.abc import (
    AsyncGenerator,
    AsyncIterable,
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
    Iterator,
)
from typing import Final, Protocol

from ._exceptions import (
    AuthenticationError,
    InvalidRequestError,
    MonicaError,
    PermissionDeniedError,
    QuotaExceededError,
)
from ._flow import Slots
from ._models import Outcome, UpscaleResult
from ._refusal import Refusal

__all__ = ["run_batch"]

logger = logging.getLogger("monica_async")

#: Errors that concern the whole key: after one, sending more requests is pointless
#: (a spent balance included: every request would get it until a top-up).
KEY_ERRORS: Final = (AuthenticationError, PermissionDeniedError, QuotaExceededError)


class _Finished:
    """Put on the channel by a worker that has nothing left to do."""


class _Failed:
    """Put on the channel when reading the input itself raised."""

    def __init__(self, error: BaseException) -> None:
        self.error = error


_FINISHED: Final = _Finished()


class Growth(Protocol):
    """A concurrency target that a batch's pool of workers follows."""

    #: Called (with no arguments) whenever the target grows.
    listeners: set[Callable[[], None]]

    def wanted(self) -> int:
        """Workers the target can use now."""
        ...


class _Source:
    """One shared cursor over a sync or async iterable, numbering what it hands out."""

    def __init__(self, images: Iterable[object] | AsyncIterable[object]) -> None:
        self._sync: Iterator[object] | None = None
        self._async: AsyncIterator[object] | None = None
        if isinstance(images, AsyncIterable):
            self._async = aiter(images)
        elif isinstance(images, Iterable) and not isinstance(images, str | bytes):
            self._sync = iter(images)
        else:
            raise InvalidRequestError(
                f"images must be an iterable or async iterable of URLs, got {type(images).__name__}"
            )
        # Async iterators may not be advanced by two tasks at once.
        self._lock = asyncio.Lock()
        self._next_index = 0
        self.exhausted = False

    async def next(self) -> tuple[int, object] | None:
        """The next input, numbered; ``None`` after the last."""
        async with self._lock:
            if self.exhausted:
                return None
            try:
                item = next(self._sync) if self._sync is not None else await anext(self._async)  # type: ignore[arg-type]
            except (StopIteration, StopAsyncIteration):
                self.exhausted = True
                return None
            index = self._next_index
            self._next_index += 1
        return index, item


def _label(item: object) -> str:
    """How an input shows in its outcome: a string as it is, a path as a path."""
    if isinstance(item, str):
        return item
    if isinstance(item, os.PathLike):
        return os.fsdecode(item)
    return repr(item)


def _warn_stopped(error: MonicaError) -> None:
    """Say, once per batch, that no more requests are sent and why (a service's logs
    would otherwise never tell why its batch stopped)."""
    logger.warning(
        "batch stopped sending requests after %s: %s; every input not yet sent gets "
        "this error without a request",
        type(error).__name__,
        error,
    )


def run_batch(
    call: Callable[[object], Awaitable[UpscaleResult]],
    images: Iterable[object] | AsyncIterable[object],
    *,
    workers: int,
    buffer: int,
    ordered: bool,
    context: contextvars.Context,
    growth: Growth | None = None,
    on_start: Callable[[], object] | None = None,
) -> AsyncGenerator[Outcome, None]:
    """Yield one :class:`Outcome` per input of *images*, running *call* in *workers*.

    Every worker runs in a copy of *context* (the caller's, where the batch was
    made), however many start and whenever: a trace span current there is the
    parent of every input's, and none leaks from one input to another.
    With *growth*, more workers are started whenever it wants more than run.
    *on_start* is called once the iteration starts, in its event loop, before any
    worker: it may raise to refuse that loop.

    Raises:
        InvalidRequestError: *images* is not an iterable (at once, not on iteration).
    """
    batch = _Batch(call, _Source(images), buffer=buffer, ordered=ordered, context=context)
    return batch.run(workers, growth, on_start)


class _Batch:
    """The workers of one batch and what they hand to its consumer."""

    def __init__(
        self,
        call: Callable[[object], Awaitable[UpscaleResult]],
        source: _Source,
        *,
        buffer: int,
        ordered: bool,
        context: contextvars.Context,
    ) -> None:
        self._call = call
        self._source = source
        self._context = context
        # Ordered, the look-ahead bounds what is held instead of the queue: a worker
        # takes a place before pulling an input, the consumer frees it on yielding that one.
        self._lookahead = Slots(buffer) if ordered else None
        self._queue: asyncio.Queue[Outcome | _Finished | _Failed] = asyncio.Queue(
            0 if ordered else buffer
        )
        # Holds the first key error; it also ends the waits of calls not sent yet.
        self._refusal = Refusal()
        self._tasks: list[asyncio.Task[None]] = []

    def _start(self, count: int) -> None:
        for _ in range(count):
            name = f"monica-worker-{len(self._tasks)}"
            self._tasks.append(
                asyncio.create_task(self._work(), name=name, context=self._context.copy())
            )

    def _grow(self, growth: Growth) -> None:
        """Start the workers the target wants beyond those running."""
        if not self._source.exhausted:
            self._start(growth.wanted() - len(self._tasks))

    async def _work(self) -> None:
        self._refusal.enter()
        try:
            while await self._one():
                pass
        except Exception as exc:  # the input's own error, or a bug: the consumer re-raises it
            self._source.exhausted = True
            await self._queue.put(_Failed(exc))
        else:
            await self._queue.put(_FINISHED)

    async def _one(self) -> bool:
        """Take one input and queue its outcome; ``False`` once there is none left."""
        if self._lookahead is not None:
            await self._lookahead.acquire()
        pulled = await self._source.next()
        if pulled is None:
            if self._lookahead is not None:
                self._lookahead.release()
            return False
        index, item = pulled
        await self._queue.put(await self._outcome(index, item))
        return True

    async def _outcome(self, index: int, item: object) -> Outcome:
        label = _label(item)
        refusal = self._refusal
        if refusal.error is not None:
            return Outcome(index=index, source=label, error=refusal.error)
        try:
            result = await self._call(item)
        except MonicaError as exc:
            if isinstance(exc, KEY_ERRORS) and refusal.error is None:
                refusal.record(exc)
                _warn_stopped(exc)
            return Outcome(index=index, source=label, error=exc)
        return Outcome(index=index, source=label, result=result)

    async def run(
        self, workers: int, growth: Growth | None, on_start: Callable[[], object] | None
    ) -> AsyncGenerator[Outcome, None]:
        """Start the workers and yield the outcomes as the consumer asks for them."""
        if on_start is not None:
            on_start()
        self._start(workers)
        grow = None if growth is None else functools.partial(self._grow, growth)
        if growth is not None and grow is not None:
            growth.listeners.add(grow)
        try:
            async for outcome in self._outcomes():
                yield outcome
        finally:
            if growth is not None and grow is not None:
                growth.listeners.discard(grow)
            for task in self._tasks:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _outcomes(self) -> AsyncIterator[Outcome]:
        """The outcomes, in completion order or, with a look-ahead, in input order."""
        pending: dict[int, Outcome] = {}
        next_index = 0
        finished = 0
        while finished < len(self._tasks):
            message = await self._queue.get()
            if isinstance(message, _Finished):
                finished += 1
            elif isinstance(message, _Failed):
                raise message.error
            elif self._lookahead is None:
                yield message
            else:
                pending[message.index] = message
                while next_index in pending:
                    self._lookahead.release()
                    yield pending.pop(next_index)
                    next_index += 1
