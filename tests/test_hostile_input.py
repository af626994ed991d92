"""Hostile or corrupt input, on every driver: the worker refuses it with a reason and goes on."""

from __future__ import annotations

import logging
from typing import Any

import anyio
import msgpack
import pytest

from aqueue import App, OutgoingMessage, SerializationError, TaskError, Worker, codec
from aqueue.codec import MAX_DEPTH
from aqueue.control import RATE_LIMIT_PREFIX
from aqueue.result_meta import MAX_MESSAGE_CHARS, MAX_TRACEBACK_CHARS
from tests.contract.test_mailbox import MAILBOX_DRIVERS
from tests.helpers.drivers import MakeApp


async def burst(app: App) -> Worker:
    worker = Worker(app, burst=True)
    with anyio.fail_after(30):
        await worker.run()
    return worker


def nested_tuples(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = (value,)
    return value


def deep_envelope(task: str, depth: int) -> bytes:
    """An envelope whose one argument is `depth` tuples nested, written byte by byte."""
    data = msgpack.packb(1)
    for _ in range(depth - 1):
        data = msgpack.packb(msgpack.ExtType(7, b"\x91" + data))  # a tuple of one
    envelope = {
        "v": 1,
        "id": "deep-1",
        "task": task,
        "args": [msgpack.ExtType(7, b"\x91" + data)],
        "kwargs": {},
        "eta": None,
        "expires": None,
        "retries": 0,
        "headers": {},
    }
    return msgpack.packb(envelope, use_bin_type=True)


async def test_a_message_nested_too_deep_is_dead_lettered_on_its_first_delivery(
    make_app: MakeApp,
) -> None:
    # 200 tuples deep: before MAX_DEPTH, msgpack's C decoder overflowed the stack (exit 139).
    app = make_app()

    @app.task
    async def echo(value: Any) -> Any:
        return value

    broker = await app.broker()
    await broker.publish(
        [OutgoingMessage(id="deep-1", queue="default", body=deep_envelope(echo.name, 200))]
    )
    good = await echo.delay(2)
    worker = await burst(app)
    assert await good.get(timeout=5) == 2
    letters = await broker.dead_letters("default")
    assert [(letter.reason, letter.detail) for letter in letters] == [
        ("undecodable", f"undecodable msgpack: extension types nested over {MAX_DEPTH} deep")
    ]
    assert worker.stats()["refused"] == 1  # one delivery, refused at once


async def test_too_deep_is_refused_at_delay_and_at_result_store(make_app: MakeApp) -> None:
    app = make_app()

    @app.task
    async def deep(depth: int) -> Any:
        return nested_tuples(depth)

    @app.task
    async def echo(value: Any) -> Any:
        return value

    with pytest.raises(SerializationError, match=r"^args nests tuples.* more than 32 deep"):
        await echo.delay(nested_tuples(MAX_DEPTH + 1))
    fine = await deep.delay(MAX_DEPTH)
    too_deep = await deep.delay(MAX_DEPTH + 1)
    await burst(app)
    assert await fine.get(timeout=5) == nested_tuples(MAX_DEPTH)
    with pytest.raises(TaskError, match=r"SerializationError: result nests tuples.* 32 deep"):
        await too_deep.get(timeout=5)


class Huge(Exception):
    """An exception type of the user's own (not a builtin): it comes back as a TaskError."""


async def test_an_error_of_a_megabyte_is_stored_cut_to_size_and_logged_once_cut(
    make_app: MakeApp, caplog: pytest.LogCaptureFixture
) -> None:
    # Before: the caller got a SerializationError (over result_max_bytes) instead of the
    # error, and the worker log wrote the megabyte twice.
    app = make_app()
    text = "h" * 500_000 + "t" * 500_000

    @app.task
    async def builtin_error() -> None:
        raise ValueError(text)

    @app.task
    async def own_error() -> None:
        raise Huge(text)

    first, second = await builtin_error.delay(), await own_error.delay()
    with caplog.at_level(logging.ERROR, logger="aqueue.worker"):
        await burst(app)
    with pytest.raises(ValueError, match=r"^h+ \.\.\. \[") as builtin:  # the type is kept
        await first.get(timeout=5)
    message = str(builtin.value)
    assert len(message) < MAX_MESSAGE_CHARS + 100
    assert message.startswith("h" * (MAX_MESSAGE_CHARS // 2) + " ... [")
    assert message.endswith("characters cut] ... " + "t" * (MAX_MESSAGE_CHARS // 2))
    assert f"[{len(text) - MAX_MESSAGE_CHARS:,} characters cut]" in message
    with pytest.raises(TaskError) as own:
        await second.get(timeout=5)
    assert own.value.type_name == f"{__name__}.Huge"
    assert len(own.value.message) < MAX_MESSAGE_CHARS + 100
    assert own.value.remote_traceback is not None
    assert len(own.value.remote_traceback) < MAX_TRACEBACK_CHARS + 100
    assert "Traceback (most recent call last)" in own.value.remote_traceback
    logged = [record.getMessage() for record in caplog.records if "raised" in record.msg]
    assert len(logged) == 2
    assert all(len(line) < MAX_TRACEBACK_CHARS + 1000 for line in logged)


async def test_a_bad_stored_rate_limit_is_ignored_not_fatal(
    make_app: MakeApp, broker_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    # Before: a stored NaN ran as a rate; garbage bytes or a list killed the worker at start.
    if not broker_url.startswith(MAILBOX_DRIVERS):
        pytest.skip("this driver has no mailbox")
    app = make_app()
    names = []
    for index in range(4):

        @app.task(name=f"tests.limited{index}")
        async def limited() -> int:
            return 1

        names.append(limited.name)
    mailbox = (await app.broker()).mailbox()
    stored = [b"\xc1 not msgpack", codec.pack(float("nan")), codec.pack([1]), codec.pack("2/s")]
    for name, value in zip(names, stored, strict=True):
        await mailbox.put(RATE_LIMIT_PREFIX + name, value)
    with caplog.at_level(logging.WARNING, logger="aqueue.worker"):
        async with anyio.create_task_group() as group:
            worker: Worker = await group.start(Worker(app).run)
            assert worker.rate_limits == {names[3]: "2/s"}  # the one good setting
            result = await app.tasks[names[1]].delay()
            assert await result.get(timeout=10) == 1
            worker.stop()
    ignored = [r.getMessage() for r in caplog.records if "Ignored the stored rate" in r.msg]
    assert len(ignored) == 3
    for name in names:
        await mailbox.delete(RATE_LIMIT_PREFIX + name)
