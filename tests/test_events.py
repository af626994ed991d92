"""Task and worker events on every broker (aqueue/events/): emitted by a burst worker with
events on, received through `app.events.receive()`, and tailed by `aqueue events`."""

from __future__ import annotations

import io
import logging
import sys
from typing import Any

import anyio
import msgpack
import pytest

from aqueue import App, Worker
from aqueue.cli.events import format_event
from aqueue.events import TOPIC, Event
from aqueue.events.emitter import BATCH, CHUNK, EventEmitter
from aqueue.events.event import BEGUN, ENDED, RAN, VERSION, decode_batch, encode_batch
from aqueue.message import Envelope
from tests.helpers.drivers import MakeApp


def tasks_of(app: App) -> dict[str, Any]:
    @app.task
    async def add(x: int, y: int) -> int:
        return x + y

    @app.task
    async def boom() -> None:
        raise ValueError("kaput")

    @app.task(bind=True, max_retries=1)
    async def again(self: Any) -> str:
        if self.request.retries == 0:
            self.retry(countdown=0, exc=KeyError("once"))
        return "done"

    return {"add": add, "boom": boom, "again": again}


class Recorder:
    """A mailbox that keeps what the emitter publishes."""

    def __init__(self) -> None:
        self.published: list[bytes] = []

    async def publish(self, topic: str, data: bytes) -> None:
        self.published.append(data)


def recording_emitter() -> tuple[EventEmitter, list[bytes]]:
    """Return an emitter on a `Recorder`, and the list of what it publishes."""
    recorder = Recorder()
    return EventEmitter(recorder, "w@test"), recorder.published  # type: ignore[arg-type]


class FakeTask:
    name = "t.add"


class FakeDelivery:
    body = b"x" * 10
    queue = "default"


async def drain_with_events(app: App, **worker: Any) -> list[Event]:
    """Run a burst worker with events on; return every event up to its worker-offline."""
    seen: list[Event] = []
    async with app.events.receive() as stream, anyio.create_task_group() as group:
        done = Worker(app, burst=True, send_events=True, hostname="w1@test", **worker)
        group.start_soon(done.run)
        with anyio.fail_after(20):
            async for event in stream:
                seen.append(event)
                if event.type == "worker-offline" and event.hostname == "w1@test":
                    break
    return seen


async def test_a_worker_emits_the_life_of_every_task(make_app: MakeApp) -> None:
    app = make_app(task_send_sent_event=True)
    tasks = tasks_of(app)
    ok = await tasks["add"].delay(2, 3)
    bad = await tasks["boom"].delay()
    retried = await tasks["again"].delay()
    stopped = await tasks["add"].delay(0, 0)
    await app.control.revoke(stopped.id, reply=False)
    unknown = await app.send_task("nobody.knows", [1])
    events = await drain_with_events(app)
    types = [event.type for event in events]
    assert types[0] == "worker-online"
    assert types[-1] == "worker-offline"
    by_task: dict[str | None, list[str]] = {}
    for event in events:
        by_task.setdefault(event.task_id, []).append(event.type)
    assert by_task[ok.id] == ["task-received", "task-started", "task-succeeded"]
    assert by_task[bad.id] == ["task-received", "task-started", "task-failed"]
    assert by_task[retried.id] == [
        "task-received",
        "task-started",
        "task-retried",
        "task-received",
        "task-started",
        "task-succeeded",
    ]
    assert by_task[stopped.id] == ["task-revoked"]
    assert by_task[unknown.id] == ["task-rejected"]
    one = {event.type: event for event in events if event.task_id == ok.id}
    assert one["task-received"]["args"] == [2, 3]
    assert one["task-succeeded"]["result"] == 5  # a plain value as it is; others as reprs
    assert one["task-succeeded"]["runtime"] >= 0
    assert one["task-started"].hostname == "w1@test"
    assert one["task-started"].task_name == tasks["add"].name
    failed = next(e for e in events if e.type == "task-failed")
    assert (failed["exc_type"], failed["exc_message"]) == ("ValueError", "kaput")
    retry = next(e for e in events if e.type == "task-retried")
    assert (retry["exc_type"], retry["retries"]) == ("KeyError", 1)
    assert next(e for e in events if e.type == "task-rejected")["reason"] == "unknown-task"
    online = events[0]
    assert online["concurrency"] == app.conf.worker_concurrency
    assert events[-1]["processed"] == 4  # an add, a failure, a retry and its rerun


async def test_task_sent_events_come_from_the_producer(make_app: MakeApp) -> None:
    app = make_app(task_send_sent_event=True)
    add = tasks_of(app)["add"]
    async with app.events.receive(types={"task-sent"}) as stream:
        sent = await add.delay(1, 1)
        many = await app.send_many(add.name, [((1, 2), {}), ((3, 4), {})])
        got: list[Event] = []
        with anyio.fail_after(10):
            async for event in stream:
                got.append(event)
                if len(got) == 3:
                    break
    assert [event.task_id for event in got] == [sent.id, many[0].id, many[1].id]
    assert all(event.hostname.startswith("producer@") for event in got)
    assert got[0]["queue"] == "default"
    await Worker(app, burst=True).run()  # leave no message behind


async def test_events_are_off_by_default(make_app: MakeApp) -> None:
    app = make_app()
    add = tasks_of(app)["add"]
    await add.delay(1, 1)
    worker = Worker(app, burst=True)
    with anyio.fail_after(20):
        await worker.run()
    assert worker.events is None
    assert worker.runner is not None
    assert worker.runner.watch is None


async def test_the_emitter_batches_events_into_few_publishes() -> None:
    first = anyio.Event()

    class Signalling(Recorder):
        async def publish(self, topic: str, data: bytes) -> None:
            await super().publish(topic, data)
            first.set()

    recorder = Signalling()
    published = recorder.published
    emitter = EventEmitter(recorder, "w@test", flush_interval=0.05)  # type: ignore[arg-type]
    async with anyio.create_task_group() as group:
        await group.start(emitter.run)
        for n in range(500):
            emitter.emit("task-started", str(n), "t")
        with anyio.fail_after(5):
            await first.wait()
        group.cancel_scope.cancel()
    assert len(published) == 2  # worker-online and 500 tasks in one tick; then offline
    events = decode_batch(published[0])
    assert len(events) == 501
    assert [e.type for e in events[:2]] == ["worker-online", "task-started"]
    assert [e.type for e in decode_batch(published[1])] == ["worker-offline"]


def test_a_batch_round_trips_and_bad_input_is_skipped() -> None:
    raw = [
        ("task-failed", 1.5, "id1", "t.x", {"exc_type": "E"}),
        ("worker-heartbeat", 2.0, None, None, {}),
    ]
    events = decode_batch(encode_batch("h", raw))
    assert events[0] == Event("task-failed", 1.5, "h", "id1", "t.x", {"exc_type": "E"})
    assert events[1].task_id is None
    assert not events[1].is_task
    with pytest.raises(ValueError, match="event batch"):
        decode_batch(b"\x01")


def test_a_line_per_event_with_colour_only_on_request() -> None:
    event = Event("task-succeeded", 0.0, "w@h", "abc", "t.add", {"runtime": 0.00123, "result": "5"})
    plain = format_event(event)
    assert plain.endswith("w@h task-succeeded t.add[abc] runtime=0.00123 result=5")
    assert "\x1b[32mtask-succeeded\x1b[0m" in format_event(event, colour=True)


async def test_aqueue_events_tails_a_worker(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "evmod.py").write_text(
        "from aqueue import App\n"
        f"app = App('evmod', broker='sqlite:///{tmp_path}/q.db', set_as_current=False)\n"
        "@app.task\nasync def add(x, y):\n    return x + y\n"
    )
    args = [
        sys.executable,
        "-m",
        "aqueue",
        "events",
        "evmod:app",
        "--count",
        "4",
        "--no-heartbeats",
    ]
    async with await anyio.open_process(args, cwd=tmp_path) as tail:
        assert tail.stderr is not None
        assert tail.stdout is not None
        with anyio.fail_after(30):
            async for chunk in tail.stderr:  # subscribed once this line is out
                if b"Listening" in chunk:
                    break
        async with App("caller", broker=f"sqlite:///{tmp_path}/q.db", set_as_current=False) as app:

            @app.task(name="evmod.add")
            async def add(x: int, y: int) -> int:
                return x + y

            result = await add.delay(1, 2)
            with anyio.fail_after(20):
                await Worker(app, burst=True, send_events=True, hostname="tail@test").run()
        out = io.BytesIO()
        with anyio.fail_after(30):
            async for chunk in tail.stdout:
                out.write(chunk)
        await tail.wait()
    lines = out.getvalue().decode().splitlines()
    assert [line.split()[2] for line in lines] == [
        "worker-online",
        "task-received",
        "task-started",
        "task-succeeded",
    ]
    assert f"evmod.add[{result.id}] runtime=" in lines[3]
    assert "\x1b[" not in lines[3]  # not a terminal: no colour


async def test_a_task_that_waits_is_received_before_it_starts() -> None:
    app = App("waits", broker="memory://", set_as_current=False)

    @app.task(rate_limit="1000/s")  # held for its rate limit: received first, started later
    def limited(x: int) -> int:  # a def task: it also waits for a thread
        return x

    try:
        sent = [await limited.delay(n) for n in range(3)]
        events = await drain_with_events(app)
    finally:
        await app.close()
    for result in sent:
        mine = [event for event in events if event.task_id == result.id]
        assert [event.type for event in mine] == [
            "task-received",
            "task-started",
            "task-succeeded",
        ]
        assert mine[0].timestamp <= mine[1].timestamp <= mine[2].timestamp


async def test_the_emitter_keeps_nothing_of_a_task_that_went_back_unstarted() -> None:
    task, delivery = FakeTask(), FakeDelivery()
    envelope = Envelope(id="id1", task=task.name, args=(1, 2))
    emitter, published = recording_emitter()
    emitter.received(task, envelope, delivery)  # type: ignore[arg-type]
    assert emitter.waiting == 1
    emitter.returned(task, envelope)  # type: ignore[arg-type] # held, handed back unstarted
    assert emitter.waiting == 0
    emitter.started(task, envelope, delivery)  # type: ignore[arg-type] # back: at once
    emitter.finished(task, envelope, "SUCCESS", 0.5, 3)  # type: ignore[arg-type]
    await emitter.flush()
    events = [event for data in published for event in decode_batch(data)]
    assert [event.type for event in events] == [
        "task-received",
        "task-received",
        "task-started",
        "task-succeeded",
    ]
    assert {event.task_id for event in events} == {"id1"}
    assert (events[0]["args"], events[0]["kwargs"]) == ([1, 2], {})
    assert (events[-1]["result"], events[-1]["runtime"]) == (3, 0.5)


async def test_a_run_with_nothing_in_between_is_one_entry_and_three_events() -> None:
    task, delivery = FakeTask(), FakeDelivery()
    one, two, three = (Envelope(id=f"id{n}", task=task.name, args=(n,)) for n in (1, 2, 3))
    emitter, published = recording_emitter()
    emitter.started(task, one, delivery)  # type: ignore[arg-type]
    emitter.finished(task, one, "SUCCESS", 0.5, 3)  # type: ignore[arg-type] # at once
    emitter.started(task, two, delivery)  # type: ignore[arg-type]
    emitter.started(task, three, delivery)  # type: ignore[arg-type] # came in between
    emitter.finished(task, two, "SUCCESS", 0.25, 4)  # type: ignore[arg-type]
    emitter.finished(task, three, "FAILURE", 0.1, ValueError("no"))  # type: ignore[arg-type]
    assert [entry[0] for entry in emitter._buffer] == [RAN, BEGUN, BEGUN, ENDED, ENDED]
    stamp = emitter._buffer[0][3]
    await emitter.flush()
    events = [event for data in published for event in decode_batch(data)]
    by_task: dict[str | None, list[Event]] = {}
    for event in events:
        by_task.setdefault(event.task_id, []).append(event)
    for ident, last in (
        ("id1", "task-succeeded"),
        ("id2", "task-succeeded"),
        ("id3", "task-failed"),
    ):
        assert [e.type for e in by_task[ident]] == ["task-received", "task-started", last]
    ran = by_task["id1"]
    assert ran[0]["args"] == [1]
    assert (ran[2]["result"], ran[2]["runtime"]) == (3, 0.5)
    assert ran[0].timestamp == ran[1].timestamp == stamp
    assert ran[2].timestamp == stamp + 0.5  # its start plus its runtime
    assert ran[2].task_name == "t.add"
    assert by_task["id3"][2]["exc_type"] == "ValueError"


def test_a_newer_batch_is_read_as_far_as_known_with_one_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    batch = {
        "v": VERSION + 1,
        "hostname": "w@future",
        "pid": 7,
        "new": "a key this version does not know",
        "events": [
            [2, "id1", "t.add", 1.0, "default", 0, None, [1], None, "a value past the known"],
            [9, "id1", "t.add", 1.5, "a step this version does not know"],
            [4, "id1", "t.add", 2.0, "SUCCESS", 0.25, 3],
            ["worker-heartbeat", 2.5, None, None, {"active": 1}],
        ],
    }
    data = msgpack.packb(batch)
    with caplog.at_level(logging.WARNING, logger="aqueue.events"):
        events = decode_batch(data)
        assert decode_batch(data) == events
    assert [event.type for event in events] == [
        "task-received",
        "task-started",
        "task-succeeded",
        "worker-heartbeat",
    ]
    assert events[0]["args"] == [1]
    assert events[2]["result"] == 3
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1  # once per worker and version, one line
    assert "\n" not in warnings[0]
    assert "w@future" in warnings[0]
    assert f"v{VERSION + 1}" in warnings[0]


def test_a_version_1_batch_is_still_read(caplog: pytest.LogCaptureFixture) -> None:
    old = {
        "v": 1,
        "hostname": "w@past",
        "pid": 1,
        "events": [["task-succeeded", 1.0, "id1", "t.add", {"runtime": 0.5, "result": "3"}]],
    }
    with caplog.at_level(logging.WARNING, logger="aqueue.events"):
        (event,) = decode_batch(msgpack.packb(old))
    assert (event.type, event["runtime"], event.hostname) == ("task-succeeded", 0.5, "w@past")
    assert not caplog.records


async def test_the_stream_skips_a_batch_it_cannot_read(caplog: pytest.LogCaptureFixture) -> None:
    app = App("skips", broker="memory://", set_as_current=False)
    try:
        mailbox = (await app.broker()).mailbox()
        raw = [("worker-heartbeat", 1.0, None, None, {"active": 0})]
        async with app.events.receive() as stream:
            with caplog.at_level(logging.WARNING, logger="aqueue.events"):
                await mailbox.publish(TOPIC, b"\xc1")  # never valid msgpack
                await mailbox.publish(TOPIC, msgpack.packb({"v": 2, "events": "no list"}))
                await mailbox.publish(TOPIC, encode_batch("w@ok", raw))
                with anyio.fail_after(5):
                    event = await anext(aiter(stream))
        assert (event.type, event.hostname) == ("worker-heartbeat", "w@ok")
        skipped = [r for r in caplog.records if "could not be read" in r.getMessage()]
        assert len(skipped) == 2
    finally:
        await app.close()


async def test_encoded_chunks_make_the_same_batches() -> None:
    emitter, published = recording_emitter()
    total = BATCH + CHUNK + 3  # two publishes, chunks encoded on the way
    for n in range(total):
        emitter.emit("task-started", str(n), "t", ("q", n))
    assert len(emitter._buffer) < CHUNK  # the rest encoded already
    emitter.emit("task-failed", "bad", "t", (0.1, "E", ["x" * 3] * 2))
    await emitter.flush()
    assert len(published) == 2
    events = [event for data in published for event in decode_batch(data)]
    assert len(events) == total + 1 == emitter.published
    assert [event.task_id for event in events[:total]] == [str(n) for n in range(total)]
    assert events[5].fields == {"queue": "q", "pid": 5}
    assert events[-1]["exc_message"] == ["xxx", "xxx"]
    assert len(decode_batch(published[0])) <= BATCH
    head = msgpack.unpackb(published[0])
    assert (head["v"], head["hostname"], head["pid"]) == (VERSION, "w@test", emitter.pid)


async def test_an_entry_that_cannot_be_encoded_is_dropped_alone(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class Unshown:
        def __repr__(self) -> str:
            raise RuntimeError("no repr")  # msgpack lacks the type, and its repr fails

    emitter, published = recording_emitter()
    emitter.emit("task-started", "before", "t", ("q", 1))
    emitter.emit("task-received", "deep", "t", ("q", 0, None, [Unshown()], None))
    emitter.emit("task-started", "after", "t", ("q", 1))
    with caplog.at_level(logging.WARNING, logger="aqueue.events"):
        await emitter.flush()
    events = [event for data in published for event in decode_batch(data)]
    assert [event.task_id for event in events] == ["before", "after"]
    assert (emitter.published, emitter.dropped) == (2, 1)
    assert any("Could not encode" in r.getMessage() for r in caplog.records)
