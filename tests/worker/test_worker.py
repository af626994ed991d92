"""The worker, in-process, on every driver: running, failing, refusing, bounding, stopping."""

from __future__ import annotations

import gc
import threading
import time
import uuid
from typing import Any

import anyio
import pytest

from aqueue import (
    App,
    MessageTooLarge,
    OutgoingMessage,
    SerializationError,
    TaskError,
    TaskRevoked,
    Worker,
    states,
)
from aqueue.drivers.base import Delivery
from aqueue.task import Task
from tests.helpers.drivers import MakeApp

pytestmark = pytest.mark.both_loops  # asyncio and uvloop (tests/helpers/loops.py)


async def burst(app: App, **options: Any) -> Worker:
    worker = Worker(app, burst=True, **options)
    with anyio.fail_after(30):
        await worker.run()
    return worker


async def test_async_and_sync_tasks_run_and_store_results(make_app: MakeApp) -> None:
    app = make_app()
    threads: list[str] = []

    @app.task
    async def add(x: int, y: int) -> int:
        return x + y

    @app.task
    def mul(x: int, y: int) -> int:
        threads.append(threading.current_thread().name)
        return x * y

    first, second = await add.delay(4, 4), await mul.delay(3, 5)
    assert await first.state() == states.PENDING
    assert not await first.ready()
    worker = await burst(app)
    assert await first.get(timeout=5) == 8
    assert await second.get(timeout=5) == 15
    assert await first.ready()
    assert await first.successful()
    assert threads == [threads[0]]
    assert threads[0] != threading.main_thread().name
    assert worker.stats()["succeeded"] == 2


async def test_bound_tasks_see_their_request_one_object_per_run(make_app: MakeApp) -> None:
    app = make_app()
    seen: list[tuple[Any, ...]] = []

    def look(request: Any, again: Any) -> None:
        fields = (request.id, request.task, request.args, request.kwargs, request.queue)
        seen.append((*fields, request.hostname, request.delivery_count, request is again))

    @app.task(bind=True, name="req.coro")
    async def coro(self: Any, x: int, *, y: int) -> None:
        look(self.request, self.request)

    @app.task(bind=True, name="req.thread")
    def thread(self: Any, x: int, *, y: int) -> None:
        look(self.request, self.request)

    one, two = await coro.delay(1, y=2), await thread.delay(3, y=4)
    await burst(app, hostname="w1")
    queue = app.conf.task_default_queue
    assert sorted(seen) == sorted(
        [
            (one.id, "req.coro", [1], {"y": 2}, queue, "w1", 1, True),
            (two.id, "req.thread", [3], {"y": 4}, queue, "w1", 1, True),
        ]
    )
    assert coro.request.called_directly  # outside the worker: a direct call's request


async def test_failure_is_stored_as_data_and_reraised(make_app: MakeApp) -> None:
    app = make_app()

    class Custom(Exception):
        pass

    @app.task
    async def wrong() -> None:
        raise TypeError("unsupported operand")

    @app.task
    def custom() -> None:
        raise Custom("mine")

    typed, custom_result = await wrong.delay(), await custom.delay()
    await burst(app)
    with pytest.raises(TypeError, match="unsupported operand") as info:
        await typed.get(timeout=5)
    assert "raise TypeError" in info.value.__notes__[0]
    assert await typed.failed()
    assert "TypeError: unsupported operand" in (await typed.traceback() or "")
    with pytest.raises(TaskError) as caught:
        await custom_result.get(timeout=5)
    assert caught.value.type_name.endswith("Custom")
    assert caught.value.message == "mine"
    error = await custom_result.get(timeout=5, propagate=False)
    assert isinstance(error, TaskError)


async def test_bound_task_sees_its_request(make_app: MakeApp) -> None:
    app = make_app()

    @app.task(bind=True)
    async def whoami(self: Task[Any, Any], x: int) -> dict[str, Any]:
        request = self.request
        return {
            "id": request.id,
            "task": request.task,
            "args": list(request.args),
            "queue": request.queue,
            "count": request.delivery_count,
            "direct": request.called_directly,
        }

    result = await whoami.apply_async((7,), queue="special")
    await burst(app, queues=["special"])
    assert await result.get(timeout=5) == {
        "id": result.id,
        "task": whoami.name,
        "args": [7],
        "queue": "special",
        "count": 1,
        "direct": False,
    }


async def test_refused_messages_are_dead_lettered_and_the_worker_goes_on(
    make_app: MakeApp, broker_url: str
) -> None:
    app = make_app(message_max_bytes=10_000)

    @app.task
    async def add(x: int, y: int) -> int:
        return x + y

    broker = await app.broker()
    unknown = await app.send_task("tasks.nope", [1])
    bad_args = await add.apply_async((1, 2, 3))
    await broker.publish(
        [
            OutgoingMessage(id="c1", queue="default", body=b"\xc1 not msgpack"),
            OutgoingMessage(id="c2", queue="default", body=b"\x00" * 20_000),
        ]
    )
    good = await add.delay(1, 1)
    worker = await burst(app)
    assert await good.get(timeout=5) == 2
    letters = await broker.dead_letters("default")
    assert sorted(letter.reason for letter in letters) == [
        "bad-arguments",
        "oversized",
        "undecodable",
        "unknown-task",
    ]
    # SQLite dead-letters an oversized message at the claim, unread: the worker never sees it.
    assert worker.stats()["refused"] == (3 if broker_url.startswith("sqlite") else 4)
    with pytest.raises(TaskError, match=r"tasks\.nope") as info:
        await unknown.get(timeout=5)
    assert info.value.type_name == "aqueue.exceptions.NotRegistered"
    with pytest.raises(TypeError, match=r"too many positional arguments"):
        await bad_args.get(timeout=5)


async def test_refused_at_delay_and_nothing_sent(make_app: MakeApp) -> None:
    app = make_app(message_max_bytes=1000)

    @app.task
    async def echo(value: Any) -> Any:
        return value

    with pytest.raises(SerializationError, match=r"args\[0\]\[1\] is a builtins.object"):
        await echo.delay([1, object()])
    with pytest.raises(MessageTooLarge, match="over message_max_bytes"):
        await echo.delay("x" * 2000)
    assert await (await app.broker()).purge("default") == 0


async def test_unserialisable_and_oversized_results_fail_clearly(make_app: MakeApp) -> None:
    app = make_app(result_max_bytes=1000)

    @app.task
    async def weird() -> object:
        return object()

    @app.task
    async def huge() -> str:
        return "x" * 5000

    first, second = await weird.delay(), await huge.delay()
    await burst(app)
    with pytest.raises(TaskError, match="cannot send"):
        await first.get(timeout=5)
    with pytest.raises(TaskError, match="over result_max_bytes"):
        await second.get(timeout=5)


async def test_ignored_results_are_not_stored(make_app: MakeApp) -> None:
    app = make_app()
    ran = anyio.Event()

    @app.task(ignore_result=True)
    async def fire() -> int:
        ran.set()
        return 1

    result = await fire.delay()
    await burst(app)
    assert ran.is_set()
    backend = await app.result_backend()
    assert backend is not None
    assert await backend.fetch(result.id) is None


async def test_expired_task_does_not_run(make_app: MakeApp) -> None:
    app = make_app()
    calls: list[int] = []

    @app.task
    async def late() -> None:
        calls.append(1)

    result = await late.apply_async(expires=-1)
    await burst(app)
    assert calls == []
    assert await result.state() == states.REVOKED
    with pytest.raises(TaskRevoked, match="expired"):
        await result.get(timeout=5)


async def test_countdown_runs_when_due(make_app: MakeApp) -> None:
    app = make_app()

    @app.task
    async def stamp() -> float:
        return time.time()

    sent = time.time()
    result = await stamp.apply_async(countdown=0.3)
    async with anyio.create_task_group() as group:
        worker = await group.start(Worker(app).run)
        value = await result.get(timeout=10)
        worker.stop()
    assert value >= sent + 0.3


async def test_concurrency_bounds_tasks_in_flight(make_app: MakeApp) -> None:
    app = make_app()
    running = 0
    peak = 0
    release = anyio.Event()
    three_running = anyio.Event()

    @app.task
    async def hold() -> None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        if running == 3:
            three_running.set()
        await release.wait()
        running -= 1

    results = [await hold.delay() for _ in range(8)]
    async with anyio.create_task_group() as group:
        worker = await group.start(Worker(app, concurrency=3).run)
        with anyio.fail_after(10):
            await three_running.wait()
        await anyio.wait_all_tasks_blocked()
        assert worker.slots.running == 3
        release.set()
        for result in results:
            await result.get(timeout=10)
        worker.stop()
    assert peak == 3


async def test_threads_bound_sync_tasks(make_app: MakeApp) -> None:
    app = make_app()
    lock = threading.Lock()
    active = 0
    peak = 0
    gate = threading.Event()
    two_active = threading.Event()

    @app.task
    def blocking() -> None:
        nonlocal active, peak
        with lock:
            active += 1
            peak = max(peak, active)
            if active == 2:
                two_active.set()
        gate.wait(10)
        with lock:
            active -= 1

    results = [await blocking.delay() for _ in range(5)]
    async with anyio.create_task_group() as group:
        worker = await group.start(Worker(app, concurrency=10, threads=2).run)
        assert await anyio.to_thread.run_sync(two_active.wait, 10)
        gate.set()
        for result in results:
            await result.get(timeout=10)
        worker.stop()
    assert peak == 2


async def test_track_started_shows_started(make_app: MakeApp) -> None:
    app = make_app(task_track_started=True)
    started = anyio.Event()
    release = anyio.Event()

    @app.task
    async def slow() -> str:
        started.set()
        await release.wait()
        return "done"

    result = await slow.delay()
    async with anyio.create_task_group() as group:
        worker = await group.start(Worker(app).run)
        with anyio.fail_after(10):
            await started.wait()
        assert await result.state() == states.STARTED
        release.set()
        assert await result.get(timeout=10) == "done"
        worker.stop()


async def test_graceful_stop_lets_running_tasks_finish(make_app: MakeApp) -> None:
    app = make_app()
    started = anyio.Event()
    release = anyio.Event()

    @app.task
    async def slow() -> str:
        started.set()
        await release.wait()
        return "finished"

    result = await slow.delay()
    async with anyio.create_task_group() as group:
        worker = await group.start(Worker(app, shutdown_timeout=30).run)
        with anyio.fail_after(10):
            await started.wait()
        worker.stop()
        await anyio.wait_all_tasks_blocked()
        release.set()
    assert await result.get(timeout=5) == "finished"


async def test_stop_gives_back_what_has_not_started_before_the_grace_period(
    make_app: MakeApp,
) -> None:
    # Two slots; a Redis worker also claims one message ahead of them. At stop, the running
    # two finish, and the third never starts during the grace period: it goes back at once.
    app = make_app()
    started: list[int] = []
    two_running = anyio.Event()
    release = anyio.Event()

    @app.task
    async def slow(n: int) -> int:
        started.append(n)
        if len(started) == 2:
            two_running.set()
        await release.wait()
        return n

    results = [await slow.delay(n) for n in range(3)]
    async with anyio.create_task_group() as group:
        worker = await group.start(Worker(app, concurrency=2, shutdown_timeout=30).run)
        with anyio.fail_after(10):
            await two_running.wait()
        await anyio.wait_all_tasks_blocked()
        worker.stop()
        await anyio.wait_all_tasks_blocked()
        release.set()
    assert sorted(started) == [0, 1]  # the third was given back, not run in the grace period
    assert [await r.get(timeout=5) for r in results[:2]] == [0, 1]
    await burst(app)
    assert await results[2].get(timeout=5) == 2
    assert sorted(started) == [0, 1, 2]


async def test_stop_past_the_grace_period_returns_the_message(make_app: MakeApp) -> None:
    app = make_app()
    started = anyio.Event()
    attempts: list[int] = []

    @app.task(bind=True)
    async def stubborn(self: Task[Any, Any]) -> int:
        attempts.append(self.request.delivery_count)
        if len(attempts) == 1:
            started.set()
            await anyio.Event().wait()  # never finishes: the shutdown must cancel it
        return self.request.delivery_count

    result = await stubborn.delay()
    async with anyio.create_task_group() as group:
        worker = await group.start(Worker(app, shutdown_timeout=0.05).run)
        with anyio.fail_after(10):
            await started.wait()
        worker.stop()
    assert await result.state() == states.PENDING
    await burst(app)  # the message came back at once: no lease had to expire
    # As it was: a shutdown is no crash, so the interrupted delivery is not counted (it does
    # not come back as a suspect, see tests/worker/test_redelivery.py).
    assert await result.get(timeout=5) == 1
    assert attempts == [1, 1]


async def test_stop_now_skips_the_grace_period(make_app: MakeApp) -> None:
    app = make_app()
    started = anyio.Event()

    @app.task
    async def forever() -> None:
        started.set()
        await anyio.Event().wait()

    await forever.delay()
    async with anyio.create_task_group() as group:
        worker = await group.start(Worker(app, shutdown_timeout=60).run)
        with anyio.fail_after(10):
            await started.wait()
        worker.stop()
        worker.stop(now=True)
    assert worker.slots.used == 0
    assert await (await app.broker()).purge("default") == 1


async def test_burst_worker_runs_tasks_queued_by_tasks(make_app: MakeApp) -> None:
    app = make_app()
    seen: list[int] = []

    @app.task
    async def countdown(n: int) -> None:
        seen.append(n)
        if n:
            await countdown.delay(n - 1)

    await countdown.delay(3)
    await burst(app)
    assert seen == [3, 2, 1, 0]


async def test_delay_many_publishes_a_batch(make_app: MakeApp) -> None:
    app = make_app()

    @app.task
    async def add(x: int, y: int) -> int:
        return x + y

    results = await add.delay_many([(i, i) for i in range(50)], queue="bulk")
    assert len({result.id for result in results}) == 50
    await burst(app, queues=["bulk"])
    assert [await result.get(timeout=5) for result in results] == [2 * i for i in range(50)]


async def test_delay_many_refuses_before_sending_any(make_app: MakeApp) -> None:
    app = make_app()

    @app.task
    async def echo(value: Any) -> Any:
        return value

    with pytest.raises(SerializationError, match=r"args\[0\]"):
        await echo.delay_many([(1,), (2,), (object(),)])
    assert await (await app.broker()).purge("default") == 0


async def test_blocking_def_tasks_never_take_the_coroutines_slots(make_app: MakeApp) -> None:
    app = make_app()
    both_blocking = threading.Barrier(3)
    release = threading.Event()
    coroutine_ran = anyio.Event()

    @app.task
    def blocking() -> None:
        both_blocking.wait(10)
        release.wait(10)

    @app.task
    async def quick() -> None:
        coroutine_ran.set()

    sync_results = [await blocking.delay(), await blocking.delay()]
    await quick.delay()
    async with anyio.create_task_group() as group:
        # One slot for coroutines, two threads: the def tasks run in their own budget.
        worker: Worker = await group.start(Worker(app, concurrency=1, threads=2).run)
        await anyio.to_thread.run_sync(both_blocking.wait, 10)
        with anyio.fail_after(10):
            await coroutine_ran.wait()  # ran while both threads were blocked
        release.set()
        for result in sync_results:
            await result.get(timeout=10)
        worker.stop()


async def test_a_worker_waiting_for_work_keeps_no_delivery_alive(make_app: MakeApp) -> None:
    # Issue 19, finding 8: each slot kept its last delivery, body and all (up to
    # message_max_bytes), while it waited for the next one; so did the consumer loops.
    app = make_app()
    token = uuid.uuid4().hex
    ran: list[None] = []
    done = anyio.Event()

    @app.task
    async def take(data: str) -> None:
        ran.append(None)
        if len(ran) == 3:
            done.set()

    worker = Worker(app, concurrency=3)
    async with anyio.create_task_group() as group:
        await group.start(worker.run)
        for _ in range(3):
            await take.delay(token * 100)
        with anyio.fail_after(10):
            await done.wait()
            await worker.dispatch.slots.wait_idle()  # settled: every slot waits for work
        gc.collect()
        alive = [o for o in gc.get_objects() if isinstance(o, Delivery) and token in str(o.body)]
        worker.stop()
    assert alive == []
