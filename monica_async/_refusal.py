"""A batch's refusal: after an error every request of the key would get, send nothing more.

A refused key or a spent balance is the same answer for every further request. The
workers of a batch share one :class:`Refusal` through a context variable: the request
path asks it before sending (:func:`check`) and waits through :func:`unless_refused`,
so that a caller waiting for an in-flight place, for the rate limiter or between two
attempts ends at once, without a request, when another worker records the refusal:
it raises a copy of the refusal, as if the server had answered it that. Requests
already sent are left to finish. Outside a batch nothing changes.
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from typing import NoReturn, TypeVar

from ._exceptions import MonicaError

__all__ = ["Refusal", "check", "unless_refused"]

T = TypeVar("T")


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

    def raise_copy(self) -> NoReturn:
        """Raise the refusal again for a call that it kept from sending.

        A copy: the refusal is the outcome of other inputs too, and raising an
        exception (or a retry counting attempts) changes it.
        """
        assert self.error is not None
        raise copy.copy(self.error)


_CURRENT: ContextVar[Refusal | None] = ContextVar("monica_async_refusal", default=None)


def check() -> None:
    """Raise the refusal of the running task's batch, if it was refused."""
    refusal = _CURRENT.get()
    if refusal is not None and refusal.error is not None:
        refusal.raise_copy()


async def unless_refused(wait: Callable[[], Awaitable[T]]) -> T:
    """Await ``wait()``; raise the batch's refusal instead if it comes meanwhile."""
    refusal = _CURRENT.get()
    if refusal is None:
        return await wait()
    if refusal.error is not None:
        refusal.raise_copy()
    task = asyncio.current_task()
    assert task is not None
    refusal._waiting.add(task)
    try:
        return await wait()
    except asyncio.CancelledError:
        # Only a cancellation of ours becomes the refusal; any other (the batch
        # closed, the caller gave up) goes on as a cancellation.
        if task in refusal._interrupted and task.uncancel() == 0:
            refusal.raise_copy()
        raise
    finally:
        refusal._waiting.discard(task)
        refusal._interrupted.discard(task)
