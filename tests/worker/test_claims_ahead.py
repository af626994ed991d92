"""Claiming ahead on Redis (`Broker.claims_ahead`): a worker keeps half its concurrency claimed
beyond its slots, and that never weakens the isolation of redelivered messages: a suspect runs
with no more messages held by the worker than its slots, and messages claimed ahead that never
started go back uncounted (`Delivery.release`).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import aclosing

import anyio
import pytest

from aqueue import App, Worker
from aqueue.drivers.redis.broker import RedisBroker
from tests.helpers import service_redis
from tests.helpers.consuming import Credit
from tests.helpers.drivers import require


@pytest.fixture
async def url() -> AsyncIterator[str]:
    await require("redis")
    each = service_redis.make_url(uuid.uuid4().hex[:10])
    yield each
    await service_redis.cleanup(each)


async def redeliver(app: App, task_id: str) -> None:
    """Make the queued message of `task_id` a redelivered one (a delivery count of 2).

    Done on the stream itself, as a claim after a dead worker's lease ran out leaves it, so
    that it keeps its place in the queue (a real redelivery would come after the others).
    """
    broker = await app.broker()
    assert isinstance(broker, RedisBroker)
    client = service_redis.client(app.conf.broker_url)
    try:
        for stream in broker.keys("default").streams:
            for entry_id, fields in await client.xrange(stream):
                if task_id.encode() in fields[b"b"]:
                    await client.xdel(stream, entry_id)
                    await client.xadd(stream, {"b": fields[b"b"], "n": 2})
                    return
    finally:
        await client.aclose()
    raise AssertionError(f"no queued message for {task_id}")


async def test_a_suspect_runs_with_no_more_messages_held_than_the_slots(url: str) -> None:
    # Two slots and one message ahead: the first claim takes the suspect and both ordinary
    # messages. The one claimed beyond the slots goes back when a slot takes the suspect, and
    # nothing more is claimed ahead until the suspect is done. The ordinary ones wait for the
    # suspect: it runs after its grace period (0.5 s), the first one still running.
    app = App("tests", broker=url, set_as_current=False)
    seen: dict[str, tuple[int, int, int, int]] = {}
    suspect_ran, done = anyio.Event(), anyio.Event()
    worker = Worker(app, concurrency=2)

    @app.task
    async def probe(name: str) -> str:
        slots = worker.slots
        seen[name] = (
            slots.used,
            slots.size,
            len(worker.dispatch.inbox) if worker.dispatch else 0,
            slots.suspects,
        )
        if name == "suspect":
            suspect_ran.set()
        await suspect_ran.wait()
        if len(seen) == 3:
            done.set()
        return name

    async with app, anyio.create_task_group() as group:
        suspect = await probe.delay("suspect")
        await redeliver(app, suspect.id)
        await probe.delay("first")
        await probe.delay("second")
        await group.start(worker.run)
        assert worker.slots.ahead == 1
        with anyio.fail_after(20):
            await done.wait()
        worker.stop()
    used, size, inbox, suspects = seen["suspect"]
    assert used <= size  # without giving back the excess: 3 (the suspect and both others)
    assert inbox == 0
    assert suspects == 1


async def test_messages_claimed_ahead_go_back_uncounted_at_stop(url: str) -> None:
    app = App("tests", broker=url, set_as_current=False)
    release = anyio.Event()
    two_running = anyio.Event()
    started: list[int] = []

    @app.task
    async def slow(n: int) -> int:
        started.append(n)
        if len(started) == 2:
            two_running.set()
        await release.wait()
        return n

    async with app:
        for n in range(3):
            await slow.delay(n)
        async with anyio.create_task_group() as group:
            worker = await group.start(Worker(app, concurrency=2, shutdown_timeout=30).run)
            with anyio.fail_after(10):
                await two_running.wait()
            assert (worker.slots.running, worker.slots.queued) == (2, 1)  # one claimed ahead
            worker.stop()
            await anyio.wait_all_tasks_blocked()
            release.set()
        assert sorted(started) == [0, 1]
        broker = await app.broker()
        with anyio.fail_after(10):
            async with aclosing(broker.consume(["default"], Credit(1))) as deliveries:
                delivery = await anext(deliveries)
        # Given back as it was: not a redelivery (a nack would have counted one).
        assert (delivery.delivery_count, delivery.suspect) == (1, False)
        await delivery.ack()


async def test_no_message_is_claimed_ahead_while_a_suspect_is_in_the_worker() -> None:
    from aqueue.worker.slots import Slots

    slots = Slots(2, ahead=1)
    assert await slots.wait() == 3
    slots.take(suspect=True)
    assert await slots.wait() == 1  # the free slot only, not the one ahead
    slots.take()
    slots.take()  # (claimed in the same batch)
    assert slots.excess == 1
    woke = anyio.Event()

    async def claim() -> None:
        await slots.wait()
        woke.set()

    async with anyio.create_task_group() as group:
        group.start_soon(claim)
        await anyio.wait_all_tasks_blocked()
        assert not woke.is_set()
        slots.give_back()  # the excess goes back: the slots are full, nothing ahead
        await anyio.wait_all_tasks_blocked()
        assert not woke.is_set()
        slots.suspect_done()  # the suspect is done: claiming ahead resumes
        with anyio.fail_after(1):
            await woke.wait()
