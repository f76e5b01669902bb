"""Slots: the resizable semaphore behind the concurrency cap."""

from __future__ import annotations

import asyncio

from monica_async._flow import Slots


async def settle() -> None:
    """Let every ready task run until it blocks again."""
    for _ in range(5):
        await asyncio.sleep(0)


async def test_slots_admit_at_most_size_holders() -> None:
    """A third acquirer of two places waits until one is released."""
    slots = Slots(2)
    await slots.acquire()
    await slots.acquire()
    third = asyncio.create_task(slots.acquire())
    await settle()
    assert not third.done()
    slots.release()
    await settle()
    assert third.done()
    assert slots.free == 0


async def test_slots_serve_waiters_in_arrival_order() -> None:
    """Released places go to waiters first come, first served."""
    slots = Slots(1)
    await slots.acquire()
    order: list[int] = []

    async def wait(number: int) -> None:
        await slots.acquire()
        order.append(number)

    tasks = [asyncio.create_task(wait(n)) for n in range(4)]
    await settle()
    for _ in range(4):
        slots.release()
        await settle()
    await asyncio.gather(*tasks)
    assert order == [0, 1, 2, 3]


async def test_a_newcomer_cannot_overtake_a_waiter_handed_a_place() -> None:
    """The released place belongs to the waiter even before it runs again."""
    slots = Slots(1)
    await slots.acquire()
    waiter = asyncio.create_task(slots.acquire())
    await settle()
    slots.release()
    newcomer = asyncio.create_task(slots.acquire())
    await settle()
    assert waiter.done()
    assert not newcomer.done()
    newcomer.cancel()


async def test_a_cancelled_waiter_leaves_the_queue() -> None:
    """Cancelling a waiter frees nothing and blocks nobody behind it."""
    slots = Slots(1)
    await slots.acquire()
    first = asyncio.create_task(slots.acquire())
    second = asyncio.create_task(slots.acquire())
    await settle()
    first.cancel()
    await settle()
    assert first.cancelled()
    slots.release()
    await settle()
    assert second.done()
    assert slots.free == 0


async def test_a_place_handed_to_a_cancelled_waiter_is_passed_on() -> None:
    """Cancelled after being handed a place but before running: the next waiter gets it."""
    slots = Slots(1)
    await slots.acquire()
    first = asyncio.create_task(slots.acquire())
    second = asyncio.create_task(slots.acquire())
    await settle()
    slots.release()  # hands the place to `first`, which has not run yet
    first.cancel()
    await settle()
    assert first.cancelled()
    assert second.done()
    slots.release()
    assert slots.free == 1
