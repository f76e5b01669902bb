"""The batch engine: a pool of workers pulling inputs lazily.

Memory does not grow with the input: there is one task per worker, never one per
input, and finished outcomes wait in a bounded channel, so a slow consumer slows
the workers down instead of piling results up. The pool is fixed, or grows (never
shrinks: a worker too many only waits for a place) as an automatic concurrency
target asks for more.
"""

from __future__ import annotations

import asyncio
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
)
from ._flow import Channel, Slots
from ._models import Outcome, UpscaleResult

__all__ = ["run_batch"]

logger = logging.getLogger("monica_async")

#: Errors that concern the whole key: after one, sending more requests is pointless.
KEY_ERRORS: Final = (AuthenticationError, PermissionDeniedError)


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
    """One shared cursor over a sync or async iterable, numbering what it hands out.

    A sync iterable is read through :attr:`numbered` (``enumerate`` over it: no
    coroutine per input); an async one through :meth:`next`.
    """

    def __init__(self, images: Iterable[object] | AsyncIterable[object]) -> None:
        self.numbered: Iterator[tuple[int, object]] | None = None
        self._async: AsyncIterator[object] | None = None
        if isinstance(images, AsyncIterable):
            self._async = aiter(images)
        elif isinstance(images, Iterable) and not isinstance(images, str | bytes):
            self.numbered = enumerate(images)
        else:
            raise InvalidRequestError(
                f"images must be an iterable or async iterable of URLs, got {type(images).__name__}"
            )
        # Async iterators may not be advanced by two tasks at once.
        self._lock = asyncio.Lock()
        self._next_index = 0
        self.exhausted = False

    async def next(self) -> tuple[int, object] | None:
        """The next input of an async iterable, numbered; ``None`` after the last."""
        assert self._async is not None
        async with self._lock:
            if self.exhausted:
                return None
            try:
                item = await anext(self._async)
            except StopAsyncIteration:
                self.exhausted = True
                return None
        index = self._next_index
        self._next_index += 1
        return index, item


def _label(item: object) -> str:
    """How an input that is not a string shows in its outcome: a path as a path."""
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
    call: Callable[[str], Awaitable[UpscaleResult]],
    images: Iterable[object] | AsyncIterable[object],
    *,
    workers: int,
    buffer: int,
    ordered: bool,
    growth: Growth | None = None,
    on_start: Callable[[], object] | None = None,
) -> AsyncGenerator[Outcome, None]:
    """Yield one :class:`Outcome` per input of *images*, running *call* in *workers*.

    With *growth*, more workers are started whenever it wants more than run.
    *on_start* is called once the iteration starts, in its event loop, before any
    worker: it may raise to refuse that loop.

    Raises:
        InvalidRequestError: *images* is not an iterable (at once, not on iteration).
    """
    return _run(
        call,
        _Source(images),
        workers=workers,
        buffer=buffer,
        ordered=ordered,
        growth=growth,
        on_start=on_start,
    )


async def _run(
    call: Callable[[str], Awaitable[UpscaleResult]],
    source: _Source,
    *,
    workers: int,
    buffer: int,
    ordered: bool,
    growth: Growth | None,
    on_start: Callable[[], object] | None,
) -> AsyncGenerator[Outcome, None]:
    if on_start is not None:
        on_start()
    channel: Channel[Outcome | _Finished | _Failed] = Channel(
        None if ordered else buffer, asyncio.get_running_loop()
    )
    # In ordered mode the channel is bounded by the look-ahead instead: a worker takes
    # a place before pulling an input and the consumer frees it when it yields that one.
    lookahead = Slots(buffer) if ordered else None
    key_error: list[MonicaError] = []

    numbered = source.numbered

    async def work() -> None:
        try:
            while not source.exhausted:
                if lookahead is not None:
                    await lookahead.acquire()
                pulled = next(numbered, None) if numbered is not None else await source.next()
                if pulled is None:
                    source.exhausted = True
                    if lookahead is not None:
                        lookahead.release()
                    break
                index, item = pulled
                label = item if isinstance(item, str) else _label(item)
                if key_error:
                    outcome = Outcome(index=index, source=label, error=key_error[0])
                else:
                    try:
                        result = await call(item)  # type: ignore[arg-type]  # validated by call
                    except MonicaError as exc:
                        if isinstance(exc, KEY_ERRORS) and not key_error:
                            key_error.append(exc)
                            _warn_stopped(exc)
                        outcome = Outcome(index=index, source=label, error=exc)
                    else:
                        outcome = Outcome._succeeded(index, label, result)
                if not channel.offer(outcome):
                    await channel.put(outcome)
        except Exception as exc:  # the input's own error, or a bug: the consumer re-raises it
            source.exhausted = True
            await channel.put(_Failed(exc))
        else:
            await channel.put(_FINISHED)

    tasks: list[asyncio.Task[None]] = []

    def grow() -> None:
        """Start the workers the target wants beyond those running."""
        assert growth is not None
        if source.exhausted:
            return
        for _ in range(growth.wanted() - len(tasks)):
            tasks.append(asyncio.create_task(work(), name=f"monica-worker-{len(tasks)}"))

    tasks += [asyncio.create_task(work(), name=f"monica-worker-{i}") for i in range(workers)]
    if growth is not None:
        growth.listeners.add(grow)
    pending: dict[int, Outcome] = {}
    next_index = 0
    finished = 0
    try:
        while finished < len(tasks):
            message = channel.poll()
            if message is None:
                message = await channel.get()
            if isinstance(message, _Finished):
                finished += 1
            elif isinstance(message, _Failed):
                raise message.error
            elif not ordered:
                yield message
            else:
                pending[message.index] = message
                while next_index in pending:
                    outcome = pending.pop(next_index)
                    next_index += 1
                    assert lookahead is not None
                    lookahead.release()
                    yield outcome
    finally:
        if growth is not None:
            growth.listeners.discard(grow)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
