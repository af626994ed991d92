"""A Redis outage while a task runs: its worker keeps the message and settles it once Redis is back.

Issue 19 (the chaos suite): a worker that could neither store a result nor acknowledge while
Redis was down left the message to its lease; it came back as a suspect (run alone, one at a
time), so recovery crawled. Now the result store is tried again until it answers
(`aqueue.worker.runner`) and a failed ack is sent again before the next claim
(`RedisBroker.settle_unacked`). Each test runs a `redis-server` of its own, with an
append-only file, that it kills and starts again on the same port.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from aqueue import App, Worker
from tests.chaos.harness import RedisNode
from tests.helpers import service_redis
from tests.helpers.drivers import service_unavailable

pytestmark = pytest.mark.slow

STEP = 30.0
LEASE = 2.0


class Watch(logging.Handler):
    """Sets an event once a record whose text (with its exception) contains a phrase is logged."""

    def __init__(self, *phrases: str) -> None:
        super().__init__(logging.DEBUG)
        self.loop = asyncio.get_running_loop()
        self.events = {phrase: asyncio.Event() for phrase in phrases}

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        if record.exc_info and record.exc_info[1] is not None:
            text += f" {record.exc_info[1]}"
        for phrase, event in self.events.items():
            if phrase in text:
                self.loop.call_soon_threadsafe(event.set)

    async def first(self, *phrases: str) -> str:
        """Wait for the first of `phrases` to be logged; return it."""
        with anyio.fail_after(STEP):
            async with anyio.create_task_group() as group:
                seen: list[str] = []

                async def wait(phrase: str) -> None:
                    await self.events[phrase].wait()
                    seen.append(phrase)
                    group.cancel_scope.cancel()

                for phrase in phrases:
                    group.start_soon(wait, phrase)
        return seen[0]


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[RedisNode]:
    if shutil.which("redis-server") is None:
        service_unavailable("redis-server is not on PATH")
    server = RedisNode(tmp_path / "redis", fsync="always")
    await server.start()
    try:
        yield server
    finally:
        server.kill()


@pytest.fixture
def watch() -> Iterator[Callable[..., Watch]]:
    made: list[Watch] = []
    aqueue_logger = logging.getLogger("aqueue")

    def make(*phrases: str) -> Watch:
        handler = Watch(*phrases)
        aqueue_logger.addHandler(handler)
        made.append(handler)
        return handler

    yield make
    for handler in made:
        aqueue_logger.removeHandler(handler)


async def _run_through_outage(
    app: App, node: RedisNode, watch: Watch, failed: str, runs: list[int]
) -> str:
    """Run one task; kill Redis while it runs; start Redis again once settling `failed`."""
    release, started = anyio.Event(), anyio.Event()

    @app.task(name="outage.slow")
    async def slow() -> str:
        runs.append(1)
        started.set()
        await release.wait()
        return "done"

    async with app, anyio.create_task_group() as group:
        worker = await group.start(Worker(app, concurrency=2, shutdown_timeout=5.0).run)
        result = await slow.delay()
        with anyio.fail_after(STEP):
            await started.wait()
        node.kill()
        release.set()
        with anyio.fail_after(STEP):
            await watch.events[failed].wait()  # settling failed at least once
        await node.start()
        value = await result.get(timeout=STEP)
        assert value == "done"
        outcome = await watch.first(
            "answers again",  # the ack sent again
            "redelivered after it finished",  # left to its lease: came back as a suspect
            "Stored the result",  # the result stored again
        )
        worker.stop()
    return outcome


async def test_a_result_that_could_not_be_stored_is_stored_once_redis_is_back(
    node: RedisNode, watch: Callable[..., Watch]
) -> None:
    app = App(
        "outage",
        broker=node.url,
        result_backend=node.url,
        broker_visibility_timeout=LEASE,
        set_as_current=False,
    )
    seen = watch(
        "storing a result",
        "answers again",
        "redelivered after it finished",
        "Stored the result",
    )
    runs: list[int] = []
    outcome = await _run_through_outage(app, node, seen, "storing a result", runs)
    assert runs == [1]  # before the fix: 2 (the lease ran out and it ran again, alone)
    assert outcome == "Stored the result"


async def test_an_ack_redis_did_not_answer_is_sent_again_once_it_is_back(
    node: RedisNode, watch: Callable[..., Watch]
) -> None:
    # The results live on the shared Redis, which stays up: only the ack fails.
    backend = service_redis.make_url(f"outage-{uuid.uuid4().hex[:8]}")
    app = App(
        "outage",
        broker=node.url,
        result_backend=backend,
        broker_visibility_timeout=LEASE,
        set_as_current=False,
    )
    seen = watch(
        "is unreachable",
        "answers again",
        "redelivered after it finished",
        "Stored the result",
    )
    runs: list[int] = []
    try:
        outcome = await _run_through_outage(app, node, seen, "is unreachable", runs)
    finally:
        await service_redis.cleanup(backend)
    assert runs == [1]
    # Before the fix: the message came back after its lease, a suspect, acknowledged unrun.
    assert outcome == "answers again"


class _One:
    """A credit of one message at a time (no worker's slots behind it)."""

    async def wait(self) -> int:
        return 1


async def test_settling_while_redis_is_down_says_so_once_and_settles_later(
    node: RedisNode, watch: Callable[..., Watch]
) -> None:
    # A redelivered message (a suspect: its run recorded) and two others finish while Redis
    # is down. Before: the suspect's ack raised from dropping its count of runs, and the
    # worker logged "Could not settle a message ... returning it" with a traceback, per task,
    # though nothing went back. Now: one warning for the outage, and everything settles
    # once Redis answers again.
    backend = service_redis.make_url(f"outage-{uuid.uuid4().hex[:8]}")
    app = App(
        "outage",
        broker=node.url,
        result_backend=backend,
        broker_visibility_timeout=LEASE,
        set_as_current=False,
    )
    seen = watch("is unreachable", "answers again", "Could not settle")
    records: list[logging.LogRecord] = []
    counter = logging.Handler()
    counter.emit = records.append  # type: ignore[method-assign]
    logging.getLogger("aqueue").addHandler(counter)
    release = anyio.Event()
    started: list[str] = []
    all_started = anyio.Event()

    @app.task(name="outage.wait", bind=True)
    async def wait(self: Any, name: str) -> str:
        started.append(f"{name}:{self.request.delivery_count}")
        if len(started) == 3:
            all_started.set()
        await release.wait()
        return name

    try:
        async with app:
            broker = await app.broker()
            suspect = await wait.delay("suspect")
            async for _ in broker.consume(["default"], _One()):  # taken, never settled:
                break  # its lease runs out, and it comes back as a suspect
            others = [await wait.delay(f"other{n}") for n in range(2)]
            async with anyio.create_task_group() as group:
                worker = await group.start(Worker(app, concurrency=4, shutdown_timeout=5.0).run)
                with anyio.fail_after(STEP):
                    await all_started.wait()
                node.kill()
                release.set()
                with anyio.fail_after(STEP):
                    await seen.events["is unreachable"].wait()
                await node.start()
                with anyio.fail_after(STEP):
                    await seen.events["answers again"].wait()
                for result in [suspect, *others]:
                    assert await result.get(timeout=STEP) in ("suspect", "other0", "other1")
                worker.stop()
            runs = await broker.redis_client().hgetall(broker.keys("default").runs)
    finally:
        logging.getLogger("aqueue").removeHandler(counter)
        await service_redis.cleanup(backend)
    assert sorted(started) == ["other0:1", "other1:1", "suspect:2"]
    assert not seen.events["Could not settle"].is_set()
    assert sum("is unreachable" in record.getMessage() for record in records) == 1
    assert runs == {}  # the suspect's count of runs dropped once Redis answered
