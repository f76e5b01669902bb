"""Slots: a semaphore whose size can change while places are held.

The automatic concurrency target grows and shrinks while attempts are in flight;
``asyncio.Semaphore`` has no way to take places away from a running count, so the
places live here: a shrink takes effect as holders give their places back.
"""

from __future__ import annotations

import asyncio
from collections import deque

__all__ = ["Slots"]


class Slots:
    """A counting semaphore: at most *size* holders at once, waiters served in order.

    A released place goes straight to the longest waiter, so a newcomer can never
    overtake it; a waiter that is cancelled leaves the queue at once, and if it was
    handed a place just as it was cancelled, passes that place on.
    """

    __slots__ = ("_free", "_waiters")

    def __init__(self, size: int) -> None:
        self._free = size
        self._waiters: deque[asyncio.Future[None]] = deque()

    @property
    def free(self) -> int:
        """Places nobody holds (negative after a shrink, until holders give enough back)."""
        return self._free

    def resize(self, delta: int) -> None:
        """Add *delta* places (remove them when negative); holders keep theirs.

        A shrink takes effect as holders release: their places go nowhere until the
        count is back in range. A growth wakes as many waiters as it adds places.
        """
        self._free += delta
        waiters = self._waiters
        while self._free > 0 and waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                self._free -= 1

    @property
    def waiting(self) -> int:
        """Callers waiting for a place."""
        return len(self._waiters)

    def try_acquire(self) -> bool:
        """Take a place if one is free at once; tell whether it did (no coroutine)."""
        # A release hands its place to a waiter directly: free places and live
        # waiters never exist together, so this check is enough to be fair.
        if self._free > 0:
            self._free -= 1
            return True
        return False

    async def acquire(self) -> None:
        """Take a place, waiting for one when all are held."""
        if self.try_acquire():
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                self.release()
            elif waiter in self._waiters:
                self._waiters.remove(waiter)
            raise

    def release(self) -> None:
        """Give a place back: to the longest waiter, else to the pool."""
        if self._free < 0:
            # Shrunk while held: this place is one of those removed.
            self._free += 1
            return
        waiters = self._waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self._free += 1
