"""Redelivery after a worker died: who is blamed, what is not run again, what callers learn.

A "dead worker" here is a broker connection closed with a delivery unsettled: RabbitMQ gives
the message back at once, SQLite and Redis once its short lease ran out (the tests block on the
next delivery, never on a clock). See `aqueue.worker.isolation`.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import aclosing
from pathlib import Path
from typing import Any

import anyio
import pytest

from aqueue import App, Broker, Delivery, TaskError, Worker, states
from aqueue.drivers import create_broker
from aqueue.message import Envelope
from aqueue.result_meta import ResultMeta
from aqueue.worker.isolation import Isolation
from aqueue.worker.runner import Runner
from tests.helpers import service_amqp, service_redis
from tests.helpers.consuming import Credit
from tests.helpers.drivers import SERVICES, require

DURABLE = ["sqlite", *(name for name, mod in SERVICES.items() if mod.ENABLED)]
LEASE = 0.3  # SQLite and Redis: how soon a dead worker's message comes back


class Setup:
    """A broker URL and a result store URL of this test's own, and apps on them."""

    def __init__(self, driver: str, tmp_path: Path) -> None:
        self.driver = driver
        unique = uuid.uuid4().hex[:10]
        if driver == "sqlite":
            self.broker = self.backend = f"sqlite:///{tmp_path / 'aqueue.db'}"
        elif driver == "redis":
            self.broker = self.backend = service_redis.make_url(unique)
        else:
            self.broker = service_amqp.make_url(unique)
            self.backend = service_redis.make_url(unique)
        self.apps: list[App] = []

    def app(self, **settings: Any) -> App:
        settings.setdefault("result_backend", self.backend)
        app = App(
            "tests",
            broker=self.broker,
            broker_visibility_timeout=LEASE,
            set_as_current=False,
            **settings,
        )
        self.apps.append(app)
        return app

    async def next_delivery(self, app: App, queue: str = "default") -> Delivery:
        """Block until the next delivery of `queue` (a redelivery comes after the lease)."""
        broker = await app.broker()
        with anyio.fail_after(10):
            async with aclosing(broker.consume([queue], Credit(1))) as deliveries:
                return await anext(deliveries)

    async def die_holding(self, app: App, *, begin: bool) -> Delivery:
        """Take the next delivery on a connection of its own, maybe begin it, and drop it."""
        broker: Broker = create_broker(self.broker, app._broker_options())
        async with broker:
            with anyio.fail_after(10):
                async with aclosing(broker.consume(["default"], Credit(1))) as deliveries:
                    delivery = await anext(deliveries)
            if begin:
                await delivery.begin()
        return delivery


@pytest.fixture(params=DURABLE)
async def setup(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Setup]:
    driver: str = request.param
    await require(driver)
    if driver == "amqp":
        await require("redis")
    each = Setup(driver, tmp_path)
    yield each
    for app in each.apps:
        await app.close()
    if driver != "sqlite":
        await service_redis.cleanup(each.backend)
    if driver == "amqp":
        await service_amqp.cleanup(each.broker)


def runner_of(app: App, broker: Broker, backend: Any) -> Runner:
    return Runner(app, broker, backend, hostname="test", threads=anyio.CapacityLimiter(1))


async def test_a_message_held_by_a_dead_worker_is_not_blamed(setup: Setup) -> None:
    app = setup.app()
    await app.send_task("tasks.anything")
    held = await setup.die_holding(app, begin=False)
    assert (held.delivery_count, held.runs, held.suspect) == (1, 0, False)
    again = await setup.die_holding(app, begin=False)  # held by a second worker that died
    assert again.suspect
    assert again.runs == 0
    begun = await setup.die_holding(app, begin=True)  # started, and its worker died
    assert begun.runs == 0
    last = await setup.next_delivery(app)
    assert last.suspect
    assert last.runs == 1
    await last.ack()


async def test_a_redelivered_message_whose_task_finished_is_acknowledged(setup: Setup) -> None:
    app = setup.app()
    runs: list[int] = []

    @app.task
    async def record() -> int:
        runs.append(1)
        return 1

    result = await record.delay()
    await setup.die_holding(app, begin=False)  # its worker stored the result, then died
    backend = await app.result_backend()
    assert backend is not None
    meta = ResultMeta(task=record.name, result=7)
    await backend.store(result.id, states.SUCCESS, meta.encode(), 60)
    delivery = await setup.next_delivery(app)
    runner = runner_of(app, await app.broker(), backend)
    assert await runner.check(delivery) is None  # settled: acknowledged, not run
    assert runs == []
    assert await result.get(timeout=5) == 7
    broker = await app.broker()
    assert await broker.dead_letters("default") == []


async def test_a_message_whose_runs_all_killed_the_worker_gets_a_failure(setup: Setup) -> None:
    app = setup.app(broker_max_deliveries=2)

    @app.task
    async def doomed() -> None:
        raise AssertionError("a message past its max deliveries must not run")

    result = await doomed.delay()
    await setup.die_holding(app, begin=False)  # its first run, never recorded
    await setup.die_holding(app, begin=True)  # its second run
    delivery = await setup.next_delivery(app)
    assert delivery.runs == 1
    runner = runner_of(app, await app.broker(), await app.result_backend())
    assert await runner.check(delivery) is None
    with pytest.raises(TaskError, match="the process running this task died 2 times") as caught:
        await result.get(timeout=5)
    assert caught.value.type_name == "aqueue.exceptions.WorkerLostError"
    (letter,) = await (await app.broker()).dead_letters("default")
    assert letter.reason == "max-deliveries"
    assert "the process running this task died 2 times" in letter.detail


async def test_a_chain_whose_step_killed_its_workers_fails(setup: Setup) -> None:
    """A workflow step past its max deliveries fails what follows it (no hang on get())."""
    app = setup.app(broker_max_deliveries=2)

    @app.task
    async def doomed() -> int:
        raise AssertionError("a message past its max deliveries must not run")

    @app.task
    async def after(value: int) -> int:
        raise AssertionError("what follows a failed step must not run")

    result = await (doomed.s() | after.s()).delay()
    await setup.die_holding(app, begin=False)
    await setup.die_holding(app, begin=True)
    delivery = await setup.next_delivery(app)
    runner = runner_of(app, await app.broker(), await app.result_backend())
    assert await runner.check(delivery) is None
    with pytest.raises(TaskError, match="the process running this task died 2 times"):
        await result.get(timeout=5)


async def test_a_failure_stored_before_a_death_still_reaches_the_dead_letters(
    setup: Setup,
) -> None:
    """A worker stored the max-deliveries failure and died before dead-lettering: the next
    one dead-letters the message instead of acknowledging it as finished (found by the poison
    chaos scenario: the result said "dead-lettered" and no dead letter existed)."""
    app = setup.app(broker_max_deliveries=2)

    @app.task
    async def doomed() -> None:
        raise AssertionError("a message past its max deliveries must not run")

    result = await doomed.delay()
    await setup.die_holding(app, begin=False)
    await setup.die_holding(app, begin=True)
    # A third worker takes it at its limit, stores the failure (below) and dies before
    # dead-lettering: the message comes back after the lease.
    await setup.die_holding(app, begin=False)
    backend = await app.result_backend()
    assert backend is not None
    runner = runner_of(app, await app.broker(), backend)
    meta = ResultMeta.failure(doomed.name, RuntimeError("stored before the death"), None)
    await backend.store(result.id, states.FAILURE, meta.encode(), 60)
    delivery = await setup.next_delivery(app)
    assert delivery.runs >= 1
    assert await runner.check(delivery) is None
    (letter,) = await (await app.broker()).dead_letters("default")
    assert letter.reason == "max-deliveries"
    with pytest.raises(RuntimeError, match="stored before the death"):
        await result.get(timeout=5)  # the stored failure is kept, not written again


async def test_a_suspect_runs_alone() -> None:
    gate = Isolation(grace=60)
    order: list[str] = []
    first_done, suspect_in, release = anyio.Event(), anyio.Event(), anyio.Event()

    async def ordinary(name: str, done: anyio.Event | None) -> None:
        entry = await gate.enter()
        order.append(f"{name} starts")
        try:
            if done is not None:
                await done.wait()
        finally:
            order.append(f"{name} ends")
            gate.leave(entry)

    async def suspect() -> None:
        async with gate.alone():
            order.append("suspect starts")
            suspect_in.set()
            await release.wait()
            order.append("suspect ends")

    async with anyio.create_task_group() as group:
        group.start_soon(ordinary, "a", first_done)
        await anyio.wait_all_tasks_blocked()
        group.start_soon(suspect)
        await anyio.wait_all_tasks_blocked()
        assert gate.closed
        group.start_soon(ordinary, "b", None)  # waits behind the suspect
        await anyio.wait_all_tasks_blocked()
        assert order == ["a starts"]
        first_done.set()
        await suspect_in.wait()
        await anyio.wait_all_tasks_blocked()
        assert order == ["a starts", "a ends", "suspect starts"]
        release.set()
    assert order[-3:] == ["suspect ends", "b starts", "b ends"]
    assert gate.running == 0
    assert not gate.closed


async def test_a_suspect_cancelled_while_waiting_lets_others_start() -> None:
    gate = Isolation(grace=60)
    done = anyio.Event()
    running = await gate.enter()
    async with anyio.create_task_group() as group:

        async def suspect() -> None:
            async with gate.alone():
                raise AssertionError("it never gets its turn")

        group.start_soon(suspect)
        await anyio.wait_all_tasks_blocked()
        assert gate.closed
        group.cancel_scope.cancel()
    assert not gate.closed

    async def ordinary() -> None:
        gate.leave(await gate.enter())
        done.set()

    async with anyio.create_task_group() as group:
        group.start_soon(ordinary)
    assert done.is_set()
    gate.leave(running)


async def test_a_long_task_holds_a_suspect_back_for_the_grace_period_only() -> None:
    gate = Isolation(grace=0.05)
    forever, order = anyio.Event(), []
    long = await gate.enter()  # a long task, running
    async with anyio.create_task_group() as group:

        async def suspect() -> None:
            async with gate.alone():
                order.append("suspect starts")
                await forever.wait()  # a long suspect, too

        group.start_soon(suspect)
        await anyio.wait_all_tasks_blocked()
        entry = await gate.enter()  # waits for the suspect's turn, then its first grace period
        order.append("next starts")
        gate.leave(entry)
        assert order == ["suspect starts", "next starts"]
        group.cancel_scope.cancel()
    gate.leave(long)
    assert not gate.closed


async def test_a_task_that_has_run_the_grace_period_does_not_hold_a_suspect_back() -> None:
    # Issue 19 (the kill -9 storm): a 2-5 s task running in a worker made each suspect wait
    # the whole grace period, though a task that has run that long is no more the crasher
    # than one that kept running past a suspect's wait.
    gate = Isolation(grace=60)
    long = await gate.enter()  # a long task, started a grace period ago (the gate's clock)
    gate.starts[long] -= 60
    with anyio.fail_after(5):  # before: 60 s
        async with gate.alone():
            assert gate.running == 2
    young = await gate.enter()  # a young task holds the next suspect back
    async with anyio.create_task_group() as group:

        async def suspect() -> None:
            async with gate.alone():
                raise AssertionError("it waits for the young task")

        group.start_soon(suspect)
        await anyio.wait_all_tasks_blocked()
        assert gate.closed
        group.cancel_scope.cancel()
    gate.leave(young)
    gate.leave(long)
    assert not gate.closed


async def test_a_young_task_that_finished_does_not_hold_a_suspect_back() -> None:
    # Issue 19 (the kill -9 storm): the suspect waited until the youngest task ever started
    # had run the grace period, though that 10-200 ms task had finished long before: with
    # a 2-5 s task still running, each suspect waited the whole grace period.
    gate = Isolation(grace=60)
    long = await gate.enter()
    gate.starts[long] -= 60  # running for a grace period already
    gate.leave(await gate.enter())  # a young task, done
    with anyio.fail_after(5):  # before: 60 s
        async with gate.alone():
            assert gate.running == 2
    gate.leave(long)
    assert not gate.closed


async def test_a_suspect_waiting_for_another_goes_before_the_tasks_waiting_too() -> None:
    # A redelivery that waited for the window of the one before it starts as that window
    # ends, before the ordinary tasks that waited too: else it waits for them to age (issue
    # 19: a broker may hand a worker several redeliveries at once, as RabbitMQ does).
    gate = Isolation(grace=60)
    order: list[str] = []
    first_in, release_first, release_second = anyio.Event(), anyio.Event(), anyio.Event()

    async def suspect(name: str, release: anyio.Event) -> None:
        async with gate.alone():
            order.append(f"{name} starts")
            if name == "first":
                first_in.set()
            await release.wait()

    async def ordinary() -> None:
        entry = await gate.enter()
        order.append("ordinary starts")
        gate.leave(entry)

    with anyio.fail_after(5):  # before: the ordinary task went first, the suspect waited 60 s
        async with anyio.create_task_group() as group:
            group.start_soon(suspect, "first", release_first)
            await first_in.wait()
            group.start_soon(ordinary)  # waits first ...
            await anyio.wait_all_tasks_blocked()
            group.start_soon(suspect, "second", release_second)  # ... and goes second
            await anyio.wait_all_tasks_blocked()
            release_first.set()
            await anyio.wait_all_tasks_blocked()
            assert order == ["first starts", "second starts"]
            release_second.set()
    assert order == ["first starts", "second starts", "ordinary starts"]
    assert not gate.closed


async def test_a_task_interrupted_by_a_shutdown_comes_back_as_it_was(setup: Setup) -> None:
    """A shutdown past the grace period is no crash: the message is not a suspect (run alone,
    one at a time) and its interrupted run does not count towards max_deliveries."""
    from aqueue import Worker

    app = setup.app(broker_max_deliveries=1)
    started = anyio.Event()

    @app.task
    async def forever() -> None:
        started.set()
        await anyio.Event().wait()  # the shutdown must cancel it

    await forever.delay()
    async with anyio.create_task_group() as group:
        worker = await group.start(Worker(app, shutdown_timeout=0.05).run)
        with anyio.fail_after(10):
            await started.wait()
        worker.stop()
    again = await setup.next_delivery(app)
    assert (again.delivery_count, again.runs, again.suspect) == (1, 0, False)
    await again.ack()
    broker = await app.broker()
    assert await broker.dead_letters("default") == []


@pytest.mark.parametrize("how", ["release", "nack"])
async def test_a_message_given_back_comes_before_the_backlog(
    setup: Setup, how: str, request: pytest.FixtureRequest
) -> None:
    """A message given back at once (a shutdown, claimed ahead and not started, a nack) runs
    next, not behind every message queued since (issue 19: 87 s behind 1,000 tasks)."""
    if setup.driver == "amqp" and "queue_type=quorum" in setup.broker:
        reason = "RabbitMQ 3 quorum queues have no priorities: a message given back goes last"
        request.applymarker(pytest.mark.xfail(strict=True, reason=reason))
    app = setup.app()
    ids = [(await app.send_task("tasks.anything", [n])).id for n in range(4)]
    broker = await app.broker()
    with anyio.fail_after(10):
        async with aclosing(broker.consume(["default"], Credit(1))) as deliveries:
            first = await anext(deliveries)
    assert ids.index(first_id(first)) == 0
    if how == "release":
        await first.release()
    else:
        await first.nack()
    again = await setup.next_delivery(app)
    assert first_id(again) == ids[0]  # before the fix: ids[1], the given-back one last
    expected = (1, False) if how == "release" else (2, True)
    assert (again.delivery_count, again.suspect) == expected
    await again.ack()
    for _ in ids[1:]:
        await (await setup.next_delivery(app)).ack()


@pytest.mark.parametrize("priorities", [True, False], ids=["priorities", "max_priority=0"])
async def test_a_message_whose_recorded_run_was_cut_short_comes_before_the_backlog(
    setup: Setup, priorities: bool
) -> None:
    """A suspect whose worker died while it ran (its run recorded) comes back first, counted,
    not behind every message queued since (issue 19, the kill -9 storm on RabbitMQ: the
    running copy was dead-lettered to the tail of its classic queue, and such an orphan
    started once the backlog had, the storm's slowest: 3.7-6.0 s after its kill at 3,000
    tasks). With priorities, the copy returns at the queue's top priority; without, to the due
    queue, taken in turn with the queue."""
    if setup.driver != "amqp":
        pytest.skip(
            "RabbitMQ gives a dead worker's messages back at once; SQLite and Redis after the "
            "lease, and a claim meanwhile takes the next message"
        )
    if not priorities:
        if "queue_type=quorum" in setup.broker:
            pytest.skip("quorum queues keep no running copies (they count deliveries)")
        setup.broker += "&max_priority=0"
    app = setup.app()
    ids = [(await app.send_task("tasks.anything", [n])).id for n in range(4)]
    held = await setup.die_holding(app, begin=False)  # held by a worker that died: a suspect
    assert first_id(held) == ids[0]
    begun = await setup.die_holding(app, begin=True)  # run alone, recorded, and killed
    assert (first_id(begun), begun.suspect) == (ids[0], True)
    broker = await app.broker()
    # RabbitMQ returns the copy after the connection closed: wait until it counts it (each
    # look is a round trip to RabbitMQ, no event says so).
    with anyio.fail_after(10):
        while (await broker.queue_stats("default")).waiting < len(ids):
            continue
    # One consumer with room for all four: each is in its buffer before the first is yielded.
    order: list[tuple[str, int]] = []
    with anyio.fail_after(10):
        async with aclosing(broker.consume(["default"], Credit(len(ids)))) as deliveries:
            async for delivery in deliveries:
                order.append((first_id(delivery), delivery.runs))
                await delivery.ack()
                if len(order) == len(ids):
                    break
    # Before the fix: ids[1], ids[2], ids[3], then the copy of ids[0].
    assert order == [(ids[0], 1), *((n, 0) for n in ids[1:])]


def first_id(delivery: Delivery) -> str:
    return Envelope.decode(delivery.body).id


async def test_a_message_given_back_runs_before_those_its_worker_took_ahead(
    setup: Setup,
) -> None:
    """A worker takes messages ahead of its slots; one given back meanwhile (a shutdown) and
    taken by it runs at its next free slot, not after those it took ahead (issue 19, finding
    7: 1.4-2.3 s after the SIGTERM on Redis, against the 1 s line)."""
    if setup.driver != "redis":
        pytest.skip(
            "Redis takes ahead and tells given-back messages apart (SQLite keeps their "
            "place; RabbitMQ republishes them at the top priority)"
        )
    app = setup.app(result_backend=None)
    started: list[int] = []
    began = {n: anyio.Event() for n in range(7)}
    gates = {n: anyio.Event() for n in range(7)}
    sixth = anyio.Event()

    @app.task(name="tasks.blocked")
    async def blocked(n: int) -> None:
        started.append(n)
        began[n].set()
        if len(started) == 6:
            sixth.set()
        await gates[n].wait()

    # Queued before the worker starts, the six go in its first claim (4 slots + 2 ahead):
    # four run, two wait in the worker, taken ahead.
    for n in range(6):
        await blocked.delay(n)
    async with anyio.create_task_group() as group:
        group.start_soon(Worker(app, concurrency=4, burst=True).run)
        with anyio.fail_after(10):
            for n in range(4):
                await began[n].wait()
        await blocked.delay(6)  # the worker holds all it may: another consumer takes it
        given = await setup.next_delivery(app)
        await given.release()  # as a worker shutting down gives back an unstarted task
        gates[0].set()  # a slot frees: it starts #4 (ahead), and the worker claims #6
        with anyio.fail_after(10):
            await began[4].wait()
        gates[1].set()  # the next free slot: #6 before #5
        with anyio.fail_after(10):
            await sixth.wait()
        assert started[4:6] == [4, 6]  # before the fix: [4, 5], #6 behind the one ahead
        for gate in gates.values():
            gate.set()
