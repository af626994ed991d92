"""The worker's inbox and slots: every item taken once, woken consumers pass their turn on;
messages claimed ahead never take a slot."""

from __future__ import annotations

import asyncio

import anyio
import pytest

from aqueue.worker.slots import WAKE_AHEAD, Inbox, InboxClosed, Slots

pytestmark = pytest.mark.both_loops  # asyncio and uvloop (tests/helpers/loops.py)


async def test_quick_consumers_take_a_batch_without_waking_one_each() -> None:
    inbox: Inbox[int] = Inbox()
    taken: dict[int, list[int]] = {}
    wakeups = 0

    async def consumer(name: int) -> None:
        nonlocal wakeups
        taken[name] = []
        while True:
            try:
                item = await inbox.get()
            except InboxClosed:
                return
            taken[name].append(item)  # a task that never suspends

    async with anyio.create_task_group() as group:
        for name in range(50):
            group.start_soon(consumer, name)
        await anyio.wait_all_tasks_blocked()
        for item in range(100):
            inbox.put(item)
        await anyio.wait_all_tasks_blocked()
        inbox.close()
    everything = sorted(item for items in taken.values() for item in items)
    assert everything == list(range(100))  # each item once
    busy = [name for name, items in taken.items() if items]
    assert 1 <= len(busy) <= WAKE_AHEAD  # not 50 consumers woken for 100 quick items


async def test_consumers_that_wait_all_get_items() -> None:
    inbox: Inbox[int] = Inbox()
    release = anyio.Event()
    started: list[int] = []

    async def consumer() -> None:
        while True:
            try:
                item = await inbox.get()
            except InboxClosed:
                return
            started.append(item)
            await release.wait()  # a task that suspends: its consumer is busy

    async with anyio.create_task_group() as group:
        for _ in range(30):
            group.start_soon(consumer)
        await anyio.wait_all_tasks_blocked()
        for item in range(30):
            inbox.put(item)
        await anyio.wait_all_tasks_blocked()
        assert sorted(started) == list(range(30))  # all 30 running at once
        release.set()
        inbox.close()


async def test_a_woken_consumer_cancelled_passes_its_turn_on() -> None:
    inbox: Inbox[int] = Inbox()
    first = asyncio.ensure_future(inbox.get())
    second = asyncio.ensure_future(inbox.get())
    await anyio.wait_all_tasks_blocked()
    inbox.put(7)  # wakes the first consumer...
    first.cancel()  # ...which is cancelled before it runs (a shutdown, a terminate)
    assert await second == 7  # the second took its turn
    with pytest.raises(asyncio.CancelledError):
        await first
    assert len(inbox) == 0


async def test_close_ends_every_sleeping_consumer() -> None:
    inbox: Inbox[int] = Inbox()
    ended = 0

    async def consumer() -> None:
        nonlocal ended
        with pytest.raises(InboxClosed):
            await inbox.get()
        ended += 1

    async with anyio.create_task_group() as group:
        for _ in range(20):
            group.start_soon(consumer)
        await anyio.wait_all_tasks_blocked()
        inbox.close()
    assert ended == 20


async def test_slots_let_messages_wait_ahead_but_never_run_more_than_their_size() -> None:
    slots = Slots(2, ahead=1)
    assert await slots.wait() == 3  # two slots, one more claimed ahead
    for _ in range(3):
        slots.take()
    assert (slots.used, slots.queued, slots.running) == (3, 3, 0)
    slots.start()
    slots.start()
    assert slots.running == 2  # the third waits in the inbox, not in a slot

    free: list[int] = []

    async def taker() -> None:
        free.append(await slots.wait())

    async with anyio.create_task_group() as group:
        group.start_soon(taker)
        await anyio.wait_all_tasks_blocked()
        assert free == []  # full: nothing more may be taken
        slots.give_back()  # the queued one goes back unstarted
    assert (slots.used, slots.queued) == (2, 0)
    assert free == [1]


async def test_a_held_task_waits_for_a_running_slot_not_for_the_queue() -> None:
    slots = Slots(1, ahead=1)
    slots.take()
    slots.take()  # both queued, none running
    with anyio.fail_after(1):
        await slots.wait_slot()  # queued messages do not keep a held task out
    slots.occupy()
    assert slots.running == 1
    woke = anyio.Event()

    async def held() -> None:
        await slots.wait_slot()
        woke.set()

    async with anyio.create_task_group() as group:
        group.start_soon(held)
        await anyio.wait_all_tasks_blocked()
        assert not woke.is_set()
        slots.release()
        with anyio.fail_after(1):
            await woke.wait()


def test_the_inbox_lists_what_it_queues_without_taking_it() -> None:
    inbox: Inbox[int] = Inbox()
    inbox.put(1)
    inbox.put(2)
    assert inbox.queued() == [1, 2]
    assert len(inbox) == 2
