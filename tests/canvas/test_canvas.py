"""Canvas on every driver: signatures, chains, groups, chords, callbacks, failures, nesting.

Run on memory, SQLite, Redis, and RabbitMQ with a Redis result store; each test sends a
workflow, then a burst worker runs it (continuations are sent before each step's ack, so the
burst sees them).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import pytest

from aqueue import (
    App,
    ConfigurationError,
    GroupResult,
    Signature,
    Worker,
    chain,
    chord,
    group,
    states,
)
from aqueue.canvas.data import InvalidWorkflow, from_data
from aqueue.testing import InProcessWorker
from tests.helpers import service_redis
from tests.helpers.drivers import SERVICES, driver_url, require

DRIVERS = ["memory", "sqlite", "redis", "amqp"]


@dataclass
class Canvas:
    app: App
    add: Any
    tsum: Any
    boom: Any
    note: Any
    notes: list[Any]

    async def work(self) -> None:
        await Worker(self.app, burst=True, concurrency=8).run()


def make_canvas(app: App) -> Canvas:
    """Register the tasks of these tests on `app` (named after this module, wherever used)."""
    notes: list[Any] = []

    @app.task
    async def add(x: int, y: int) -> int:
        return x + y

    @app.task
    def tsum(values: list[int]) -> int:
        return sum(values)

    @app.task
    async def boom(*args: Any) -> None:
        raise ValueError(f"boom {args}")

    @app.task
    async def note(*args: Any) -> None:
        notes.append(args)

    return Canvas(app, add, tsum, boom, note, notes)


@pytest.fixture(params=DRIVERS)
async def canvas(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Canvas]:
    driver: str = request.param
    await require(driver)
    url = driver_url(driver, tmp_path)
    urls = [url]
    settings: dict[str, Any] = {}
    if driver == "amqp":  # RabbitMQ, results in Redis
        await require("redis")
        backend = service_redis.make_url(uuid.uuid4().hex[:10])
        urls.append(backend)
        settings["result_backend"] = backend
    app = App("canvas", broker=url, set_as_current=False, **settings)
    try:
        yield make_canvas(app)
    finally:
        await app.close()
        for each in urls:
            if each.startswith("redis"):
                await service_redis.cleanup(each)
            elif each.startswith("amqp"):
                await SERVICES["amqp"].cleanup(each)


async def test_signature_delay_and_options(canvas: Canvas) -> None:
    sig = canvas.add.s(2, 2)
    assert isinstance(sig, Signature)
    assert sig.args == (2, 2)
    partial = canvas.add.signature((2,), countdown=0)
    assert partial.clone((5,)).args == (5, 2)
    assert sig.set(queue="celery").options["queue"] == "celery"
    first = await sig.delay()
    second = await partial.delay(3)
    await canvas.work()
    assert await first.get(timeout=10) == 4
    assert await second.get(timeout=10) == 5


async def test_chain_passes_results_and_immutable(canvas: Canvas) -> None:
    add = canvas.add
    result = await (add.s(1, 1) | add.s(10) | add.si(100, 100) | add.s(1)).delay()
    other = await chain(add.s(2, 2), add.s(4)).delay()
    await canvas.work()
    assert await result.get(timeout=10) == 201
    assert await other.get(timeout=10) == 8
    assert [await step.get(timeout=1) for step in result.results] == [2, 12, 200, 201]


async def test_chain_failure_stops_and_names_the_step(canvas: Canvas) -> None:
    add, boom = canvas.add, canvas.boom
    steps = add.s(1, 1) | boom.s() | add.s(1) | add.s(2)
    result = await steps.apply_async()
    await canvas.work()
    failed = r"step tests\.canvas\.test_canvas\.boom\[.*\] failed.*boom \(2,\)"
    with pytest.raises(ValueError, match=failed):
        await result.get(timeout=10)
    assert [await step.state() for step in result.results] == [
        states.SUCCESS,
        states.FAILURE,
        states.FAILURE,
        states.FAILURE,
    ]
    assert canvas.notes == []  # nothing after the failing step ran


async def test_link_and_link_error(canvas: Canvas) -> None:
    add, boom, note = canvas.add, canvas.boom, canvas.note
    ok = await add.s(2, 3).apply_async(link=note.s("linked"))
    bad = await boom.s(1).apply_async(link_error=note.s("errback"))
    await canvas.work()
    assert await ok.get(timeout=10) == 5
    with pytest.raises(ValueError, match="boom"):
        await bad.get(timeout=10)
    assert sorted(canvas.notes, key=repr) == sorted([(5, "linked"), (bad.id, "errback")], key=repr)


async def test_group_results_in_order_and_found_again(canvas: Canvas) -> None:
    add = canvas.add
    result = await group(add.s(i, i) for i in range(10)).delay()
    await canvas.work()
    assert await result.get(timeout=10) == [2 * i for i in range(10)]
    assert await result.ready()
    assert await result.completed_count() == 10
    found = canvas.app.GroupResult(result.id)
    assert await found.get(timeout=10) == [2 * i for i in range(10)]
    assert [member.id for member in found.results] == [member.id for member in result.results]


async def test_chord_and_group_pipe(canvas: Canvas) -> None:
    add, tsum = canvas.add, canvas.tsum
    result = await chord((add.s(i, i) for i in range(20)), tsum.s()).delay()
    piped = await (group(add.s(i, 1) for i in range(5)) | tsum.s()).delay()
    empty = await chord([], tsum.s()).delay()
    await canvas.work()
    assert await result.get(timeout=10) == sum(2 * i for i in range(20))
    assert await piped.get(timeout=10) == sum(i + 1 for i in range(5))
    assert await empty.get(timeout=10) == 0
    header = result.results[0]
    assert isinstance(header, GroupResult)
    assert await header.get(timeout=1) == [2 * i for i in range(20)]


async def test_failing_header_fails_the_chord(canvas: Canvas) -> None:
    add, tsum, boom, note = canvas.add, canvas.tsum, canvas.boom, canvas.note
    callback = tsum.s().set(link_error=[note.s("chord failed")])
    result = await chord([add.s(1, 1), boom.s(7), add.s(2, 2)], callback).delay()
    await canvas.work()
    with pytest.raises(ValueError, match=r"step tests\.canvas\.test_canvas\.boom\[.*boom \(7,\)"):
        await result.get(timeout=10)
    assert len(canvas.notes) == 1
    assert canvas.notes[0][1] == "chord failed"


async def test_nested_workflows(canvas: Canvas) -> None:
    add, tsum = canvas.add, canvas.tsum
    # A chain of groups: the group in the middle becomes a chord with what follows.
    steps = add.s(1, 1) | group(add.s(10), add.s(20)) | tsum.s() | group(add.s(1), add.s(2))
    chained = await steps.delay()
    # A group of chains, and a chord whose header members are chains.
    parallel = await group(add.s(i, 0) | add.s(100) for i in range(3)).delay()
    nested = await chord([add.s(1, 1) | add.s(1), add.s(5, 5)], tsum.s() | add.s(1000)).delay()
    groups = await group(group(add.s(1, 1), add.s(2, 2)), add.s(3, 3)).delay()
    await canvas.work()
    assert await groups.get(timeout=10) == [[2, 4], 6]
    assert await canvas.app.GroupResult(groups.id).get(timeout=10) == [[2, 4], 6]
    assert await chained.get(timeout=10) == [35, 36]
    assert await parallel.get(timeout=10) == [100, 101, 102]
    assert await nested.get(timeout=10) == 1013


async def test_revoke_a_chain_revokes_what_has_not_run(canvas: Canvas) -> None:
    if not canvas.app.conf.broker_url.startswith(("redis", "sqlite", "amqp", "memory")):
        pytest.skip("no mailbox")
    add = canvas.add
    result = await (add.s(1, 1) | add.s(1) | add.s(1)).delay()
    group_result = await group(add.s(1, i) for i in range(3)).delay()
    await result.revoke()
    await group_result.revoke()
    assert [await step.state() for step in result.results] == [states.REVOKED] * 3
    await canvas.work()
    assert await group_result.completed_count() == 0
    with pytest.raises(Exception, match="revoked"):
        await result.get(timeout=10)


async def test_an_expired_step_fails_what_follows(canvas: Canvas) -> None:
    add = canvas.add
    # Expired 60 s before it is sent (options travel in the workflow as seconds).
    result = await (add.s(1, 1) | add.s(1).set(expires=-60.0) | add.s(1)).delay()
    await canvas.work()
    with pytest.raises(Exception, match="expired before it started"):
        await result.get(timeout=10)  # raises at once: it does not wait for the last step
    assert await result.results[0].get(timeout=10) == 2


async def test_a_chord_whose_header_shares_a_task_id_is_refused(canvas: Canvas) -> None:
    add, tsum = canvas.add, canvas.tsum
    header = [add.s(1, 1).set(task_id="same"), add.s(2, 2).set(task_id="same")]
    with pytest.raises(ConfigurationError, match="task id 'same' to more than one task"):
        await chord(header, tsum.s()).delay()


def test_sync_forms(tmp_path: Path) -> None:
    app = App("canvas", broker=driver_url("sqlite", tmp_path), set_as_current=False)

    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    @app.task
    def tsum(values: list[int]) -> int:
        return sum(values)

    worker = InProcessWorker(app)
    worker.start()
    try:
        assert add.s(1, 2).sync.delay().get(timeout=10) == 3
        together = group(add.s(1, 2), add.s(3, 4)).sync.delay()
        assert together.get(timeout=10) == [3, 7]
        assert together.ready()
        assert together.completed_count() == 2
        assert [member.get(timeout=1) for member in together.results] == [3, 7]
        assert (add.s(1, 1) | add.s(1)).sync.apply_async().get(timeout=10) == 3
        assert chord([add.s(1, 1), add.s(2, 2)], tsum.s()).sync.delay().get(timeout=10) == 6
        assert app.GroupResult(together.id).sync.get(timeout=10) == [3, 7]
    finally:
        worker.stop()
        app.sync.close()


async def test_workflow_data_is_checked() -> None:
    assert from_data({"t": "task", "task": "x.y", "args": [1], "kwargs": {}}).ids() == []
    with pytest.raises(InvalidWorkflow, match="unknown workflow kind"):
        from_data({"t": "pickle"})
    with pytest.raises(InvalidWorkflow, match="bad option"):
        from_data({"t": "task", "task": "x", "options": {"callback": "os.system"}})
    with pytest.raises(TypeError, match="unknown signature option"):
        Signature("x", options={"nope": 1})


async def test_rpc_runs_chains_and_groups_and_refuses_chords(tmp_path: Path) -> None:
    await require("amqp")
    url = driver_url("amqp", tmp_path)
    app = App("canvas", broker=url, result_backend="rpc://", set_as_current=False)

    @app.task
    async def add(x: int, y: int) -> int:
        return x + y

    @app.task
    async def boom(x: int) -> None:
        raise KeyError(x)

    try:
        with pytest.raises(
            ConfigurationError, match=r"redis://, sqlite://, django-db:// .* rpc://"
        ):
            await chord([add.s(1, 1)], add.s(1)).delay()
        # Continuations carry the caller's reply queue on, so their results come back here.
        chained = await (add.s(1, 1) | add.s(1) | add.s(1)).delay()
        failed = await (add.s(1, 1) | boom.s() | add.s(1)).delay()
        together = await group(add.s(i, i) for i in range(3)).delay()
        await Worker(app, burst=True).run()
        assert await chained.get(timeout=10) == 4
        with pytest.raises(KeyError, match=r"step tests\.canvas\.test_canvas\.boom\["):
            await failed.get(timeout=10)
        assert await together.get(timeout=10) == [0, 2, 4]
    finally:
        await app.close()
        await SERVICES["amqp"].cleanup(url)


async def test_a_chord_of_ten_thousand(shared_url: str) -> None:
    app = App("canvas", broker=shared_url, set_as_current=False)

    @app.task
    async def noop(i: int) -> int:
        return i

    @app.task
    def total(values: list[int]) -> int:
        return sum(values)

    try:
        result = await chord((noop.s(i) for i in range(10_000)), total.s()).delay()
        await Worker(app, burst=True, concurrency=200).run()
        assert await result.get(timeout=60) == sum(range(10_000))
        assert await result.results[0].completed_count() == 10_000
    finally:
        await app.close()


async def test_a_refused_or_revoked_step_fails_what_follows(canvas: Canvas) -> None:
    add, tsum = canvas.add, canvas.tsum
    unknown = Signature("canvas.nowhere", (1,), app=canvas.app)
    stopped = await (add.s(1, 1) | unknown | add.s(1)).delay()
    header = [add.s(1, 1), add.s(2, 2)]
    revoked = await chord(header, tsum.s()).delay()
    await revoked.results[0].results[1].revoke()
    await canvas.work()
    with pytest.raises(Exception, match=r"step canvas\.nowhere\[.*no task named"):
        await stopped.get(timeout=10)
    with pytest.raises(Exception, match="revoked"):
        await revoked.get(timeout=10)


async def test_task_always_eager_runs_a_signature_and_refuses_a_workflow() -> None:
    app = App("canvas", broker="memory://", task_always_eager=True, set_as_current=False)

    @app.task
    async def add(x: int, y: int) -> int:
        return x + y

    try:
        assert await (await add.s(2).delay(3)).get(timeout=5) == 5
        with pytest.raises(ConfigurationError, match="not run eagerly"):
            await (add.s(1, 1) | add.s(1)).delay()
    finally:
        await app.close()


async def test_a_chord_without_results_is_refused() -> None:
    app = App("canvas", broker="memory://", result_backend=False, set_as_current=False)

    @app.task
    async def add(x: int, y: int) -> int:
        return x + y

    try:
        with pytest.raises(ConfigurationError, match="this app has no result store"):
            await (group(add.s(1, 1), add.s(2, 2)) | add.s(1)).delay()
    finally:
        await app.close()


async def test_the_chord_counter_counts_each_task_once(canvas: Canvas) -> None:
    backend = await canvas.app.result_backend()
    assert backend is not None
    assert backend.counts_chords
    chord_id = uuid.uuid4().hex
    assert await backend.chord_part(chord_id, "a", 3, 60, ok=True) == "wait"
    assert await backend.chord_part(chord_id, "a", 3, 60, ok=True) == "wait"  # again: once
    assert await backend.chord_part(chord_id, "b", 3, 60, ok=True) == "wait"
    assert await backend.chord_part(chord_id, "c", 3, 60, ok=True) == "fire"  # c claims it
    assert await backend.chord_part(chord_id, "b", 3, 60, ok=True) == "wait"  # not b
    assert await backend.chord_part(chord_id, "c", 3, 60, ok=True) == "fire"  # c, until done
    await backend.chord_done(chord_id, 60)
    assert await backend.chord_part(chord_id, "c", 3, 60, ok=True) == "wait"
    failing = uuid.uuid4().hex
    assert await backend.chord_part(failing, "a", 3, 60, ok=False) == "fail"
    assert await backend.chord_part(failing, "b", 3, 60, ok=False) == "wait"  # a claimed it
    await backend.chord_done(failing, 60)
    assert await backend.chord_part(failing, "a", 3, 60, ok=False) == "wait"
    # The callback's run: the first token checked for a task id holds it; another does not.
    assert await backend.chord_run(chord_id, "callback", "t1", 60)
    assert not await backend.chord_run(chord_id, "callback", "t2", 60)
    assert await backend.chord_run(chord_id, "callback", "t1", 60)  # its redelivery
    assert await backend.chord_run(chord_id, "other", "t2", 60)


async def test_racing_header_tasks_claim_the_chord_once(canvas: Canvas) -> None:
    # The last header task and redeliveries of the others record at the same moment, all
    # finding the chord complete: one of them is told to send the callback.
    backend = await canvas.app.result_backend()
    assert backend is not None
    chord_id, size = uuid.uuid4().hex, 20
    for i in range(size - 1):
        assert await backend.chord_part(chord_id, str(i), size, 60, ok=True) == "wait"
    steps: list[str] = []

    async def record(task_id: str) -> None:
        steps.append(await backend.chord_part(chord_id, task_id, size, 60, ok=True))

    async with anyio.create_task_group() as tasks:
        for i in (size - 1, *range(size - 1)):  # the last first, then redeliveries
            tasks.start_soon(record, str(i))
    assert sorted(steps) == ["fire"] + ["wait"] * (size - 1)


async def test_workflow_call_options(canvas: Canvas) -> None:
    add, boom, tsum, note = canvas.add, canvas.boom, canvas.tsum, canvas.note
    failed = await (add.s(1, 1) | boom.s() | add.s(1)).apply_async(link_error=note.s("chain"))
    done = await (add.s(1, 1) | add.s(1)).apply_async(link=note.s("after"), task_id="last-one")
    grouped = await group(add.s(1, 1), add.s(2, 2)).apply_async(priority=3)
    chorded = await chord([add.s(1, 1)], tsum.s()).apply_async(link=note.s("chord"))
    with pytest.raises(TypeError, match="task_id names one task"):
        await group(add.s(1, 1)).apply_async(task_id="x")
    await canvas.work()
    assert done.id == "last-one"
    assert await done.get(timeout=10) == 3
    assert await grouped.get(timeout=10) == [2, 4]
    assert await chorded.get(timeout=10) == 2
    with pytest.raises(ValueError, match="boom"):
        await failed.get(timeout=10)
    assert sorted(map(repr, canvas.notes)) == sorted(
        map(repr, [(3, "after"), (2, "chord"), (failed.results[1].id, "chain")])
    )


async def test_a_continuation_sent_twice_runs_once(canvas: Canvas) -> None:
    from aqueue.canvas.node import launch

    step = canvas.note.s("once").frozen()
    await launch(canvas.app, step, ("x",), parent="parent-id")
    await canvas.work()
    await launch(canvas.app, step, ("x",), parent="parent-id")  # a redelivered parent's send
    await canvas.work()
    assert canvas.notes == [("x", "once")]


async def test_a_bad_workflow_header_is_refused(canvas: Canvas) -> None:
    bad = [
        {"link": "tasks.x"},
        {"link": [{"t": "task", "task": "x", "options": {"link": "y"}}]},
        {"chord": {"id": 1, "size": 2}},
        {"chord": {"id": "c", "size": True, "body": {}}},
        {"link_error": [{"t": "group", "id": 5, "tasks": []}]},
        {"parent": 7},
        [],
    ]
    sent = [
        await canvas.app.send_task(canvas.add.name, [1, 2], headers={"canvas": header})
        for header in bad
    ]
    await canvas.work()
    for result in sent:
        with pytest.raises(Exception, match="InvalidWorkflow"):
            await result.get(timeout=10)
    broker = await canvas.app.broker()
    letters = await broker.dead_letters(canvas.app.conf.task_default_queue)
    assert [letter.reason for letter in letters] == ["undecodable"] * len(bad)


async def test_a_step_whose_worker_failed_before_sending_on_is_followed_on_redelivery(
    canvas: Canvas, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The worker stores step 2's result, then cannot send step 3 (as if it died there): the
    # message goes back, and its redelivery, finding the result, sends step 3 without
    # running step 2 again.
    from aqueue.canvas import continuation

    after = continuation.after
    cut: list[str] = []

    async def failing_once(app: Any, backend: Any, envelope: Any, *args: Any) -> None:
        if "parent" in envelope.headers["canvas"] and not cut:
            cut.append(envelope.id)
            raise ConnectionError("the worker died here")
        await after(app, backend, envelope, *args)

    monkeypatch.setattr(continuation, "after", failing_once)
    add, note = canvas.add, canvas.note
    result = await (add.s(1, 1) | note.s("ran") | add.si(5, 5)).delay()
    async with anyio.create_task_group() as tasks:
        worker = await tasks.start(Worker(canvas.app, concurrency=4).run)
        assert await result.get(timeout=20) == 10
        worker.stop()
    assert cut == [result.results[1].id]
    assert canvas.notes == [(2, "ran")]  # step 2 ran once


async def test_a_chord_callback_sent_twice_runs_once(
    canvas: Canvas, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The worker that claims the chord sends its callback, then dies before `chord_done` (a
    # crash injected there): its header message is redelivered, and it sends the callback
    # again, a second copy with the same id. A worker that takes both copies at once runs the
    # callback once: the first copy holds it until the test saw the second handled.
    app = canvas.app
    backend = await app.result_backend()
    assert backend is not None
    chord_done = backend.chord_done
    marked = anyio.Event()
    crashes: list[str] = []

    async def crashing_once(chord_id: str, ttl: float) -> None:
        if not crashes:
            crashes.append(chord_id)
            raise ConnectionError("the worker died here")
        await chord_done(chord_id, ttl)
        marked.set()

    monkeypatch.setattr(backend, "chord_done", crashing_once)
    runs: list[Any] = []
    handled = [0]
    both, release = anyio.Event(), anyio.Event()

    def seen() -> None:
        handled[0] += 1
        if handled[0] == 2:
            both.set()

    class Dropped(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if "a second copy" in record.getMessage():
                seen()

    @app.task(name="canvas.gather")
    async def gather(values: list[int]) -> int:
        runs.append(values)
        seen()
        await release.wait()
        return sum(values)

    add = canvas.add
    result = await chord([add.s(1, 1), add.s(2, 2)], gather.s().set(queue="callbacks")).delay()
    async with anyio.create_task_group() as tasks:
        worker = await tasks.start(Worker(app, concurrency=4).run)
        with anyio.fail_after(20):
            await marked.wait()
        worker.stop()
    handler = Dropped()
    logging.getLogger("aqueue.worker").addHandler(handler)
    try:
        async with anyio.create_task_group() as tasks:
            worker = await tasks.start(Worker(app, queues=["callbacks"], concurrency=2).run)
            with anyio.fail_after(20):
                await both.wait()
            release.set()
            assert await result.get(timeout=10) == 6
            worker.stop()
    finally:
        logging.getLogger("aqueue.worker").removeHandler(handler)
    assert crashes == [result.results[0].id]
    assert runs == [[2, 4]]


async def test_a_chord_claimant_that_died_before_sending_sends_on_redelivery(
    canvas: Canvas, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The worker that claims the chord fails to send its callback (as if it died there): no
    # other header task may send it (the chord is claimed), so the claimant's redelivered
    # message must, and the callback runs once.
    from aqueue.canvas import counter, node

    launch = node.launch
    cut: list[str] = []

    async def failing_once(app: Any, workflow: Any, *args: Any, **kwargs: Any) -> None:
        if kwargs.get("once") and not cut:
            cut.append(kwargs["once"])
            raise ConnectionError("the worker died here")
        await launch(app, workflow, *args, **kwargs)

    monkeypatch.setattr(counter, "launch", failing_once)
    add = canvas.add
    result = await chord([add.s(1, 1), add.s(2, 2), add.s(3, 3)], canvas.note.s("cb")).delay()
    async with anyio.create_task_group() as tasks:
        worker = await tasks.start(Worker(canvas.app, concurrency=4).run)
        assert await result.get(timeout=20) is None
        worker.stop()
    assert cut == [result.results[0].id]
    assert canvas.notes == [([2, 4, 6], "cb")]
