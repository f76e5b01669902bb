"""A batch's refusal: after an error every request of the key would get, send nothing more.

A refused key or a spent balance is the same answer for every further request. The
workers of a batch share one :class:`Refusal` through a context variable: the request
path asks it before sending (:func:`check`) and waits through :func:`unless_refused`,
so that a caller waiting for an in-flight place, for the rate limiter or between two
attempts ends at once, without a request, when another worker records the refusal.
Requests already sent are left to finish. Outside a batch nothing changes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from typing import TypeVar

from ._exceptions import MonicaError

__all__ = ["Refusal", "Unsent", "check", "unless_refused"]

T = TypeVar("T")


class Unsent(Exception):
    """Raised in place of a request that its batch's refusal kept from being sent.

    Not a :class:`MonicaError`: the batch turns it into an outcome carrying the
    refusal itself, and nothing on the way counts it as a failure of its own.
    """


class Refusal:
    """The error that stopped a batch's sending, once there is one."""

    __slots__ = ("_interrupted", "_waiting", "error")

    def __init__(self) -> None:
        self.error: MonicaError | None = None
        self._waiting: set[asyncio.Task[object]] = set()
        self._interrupted: set[asyncio.Task[object]] = set()

    def enter(self) -> None:
        """Make this the refusal of the running task (each worker calls it first)."""
        _CURRENT.set(self)

    def record(self, error: MonicaError) -> None:
        """Keep the first refusal and end every wait of the batch's other callers."""
        if self.error is not None:
            return
        self.error = error
        for task in self._waiting:
            self._interrupted.add(task)
            task.cancel()


_CURRENT: ContextVar[Refusal | None] = ContextVar("monica_async_refusal", default=None)


def check() -> None:
    """Raise :class:`Unsent` when the running task's batch was refused."""
    refusal = _CURRENT.get()
    if refusal is not None and refusal.error is not None:
        raise Unsent


async def unless_refused(wait: Callable[[], Awaitable[T]]) -> T:
    """Await ``wait()``; raise :class:`Unsent` instead if the batch is refused meanwhile."""
    refusal = _CURRENT.get()
    if refusal is None:
        return await wait()
    if refusal.error is not None:
        raise Unsent
    task = asyncio.current_task()
    assert task is not None
    refusal._waiting.add(task)
    try:
        return await wait()
    except asyncio.CancelledError:
        # Only a cancellation of ours becomes Unsent; any other (the batch closed,
        # the caller gave up) goes on as a cancellation.
        if task in refusal._interrupted and task.uncancel() == 0:
            raise Unsent from None
        raise
    finally:
        refusal._waiting.discard(task)
        refusal._interrupted.discard(task)
