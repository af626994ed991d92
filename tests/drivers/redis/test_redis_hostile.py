"""Whatever a client writes into the Redis broker's keys, a worker dead-letters it and goes on.

Anyone with access can `XADD 'aqueue:{default}:p0' '*' b x n abc`: every field of every stream
entry and every delayed member is checked as it is read, by the claim script and by the
blocking read alike, and what is wrong is dead-lettered as `undecodable` with the reason.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator

import anyio
import pytest

from tests.helpers import service_redis

service_redis.require_client_library()  # before anything imports redis-py

from aqueue import App, Worker  # noqa: E402
from aqueue.drivers.redis.broker import RedisBroker  # noqa: E402
from tests.helpers.drivers import service_unavailable  # noqa: E402

GARBAGE: list[tuple[dict[str, bytes], str]] = [
    ({"b": b"x", "n": b"abc"}, "stream entry field n is 'abc', not a delivery count"),
    ({"b": b"x", "n": b"-1"}, "stream entry field n is '-1', not a delivery count"),
    ({"b": b"x", "n": b"1.5"}, "stream entry field n is '1.5', not a delivery count"),
    ({"b": b"x", "n": b""}, "stream entry field n is '', not a delivery count"),
    ({"b": b"x", "n": b"1" * 10}, "stream entry field n is '1111111111', not a delivery count"),
    ({"n": b"1"}, "stream entry has no body (field b)"),
    ({"something": b"else"}, "stream entry has no body (field b)"),
]
BAD_MEMBER = "delayed member is not <priority>:<deliveries>:<nonce>:<body>"


@pytest.fixture
async def app() -> AsyncIterator[App]:
    if reason := await service_redis.unreachable():
        service_unavailable(reason)
    url = service_redis.make_url(uuid.uuid4().hex[:10])
    app = App("tests", broker=url, set_as_current=False)

    @app.task(name="tests.add")
    async def add(x: int, y: int) -> int:
        return x + y

    async with app:
        yield app
    await service_redis.cleanup(url)


async def redis_broker(app: App) -> RedisBroker:
    broker = await app.broker()
    assert isinstance(broker, RedisBroker)
    return broker


async def test_garbage_entries_and_members_are_dead_lettered_by_the_claim(app: App) -> None:
    broker = await redis_broker(app)
    keys = broker.keys("default")
    client = broker.redis_client()
    for fields, _ in GARBAGE:
        await client.xadd(keys.stream(0), fields)  # type: ignore[arg-type]
    past = time.time() - 1
    members = ["garbage", "x:1:nonce:body", "1:abc:nonce:body", "1:1111111111:nonce:body"]
    await client.zadd(keys.delayed, dict.fromkeys(members, past))
    good = await app.tasks["tests.add"].delay(2, 2)
    worker = Worker(app, burst=True)
    with anyio.fail_after(30):
        await worker.run()
    assert await good.get(timeout=5) == 4
    letters = await broker.dead_letters("default")
    assert {letter.reason for letter in letters} == {"undecodable"}
    assert sorted(letter.detail for letter in letters) == sorted(
        [detail for _, detail in GARBAGE] + [BAD_MEMBER] * len(members)
    )
    assert sorted(letter.body for letter in letters if letter.detail == BAD_MEMBER) == sorted(
        member.encode() for member in members
    )
    assert worker.stats()["refused"] == 0  # no worker ever held them
    assert await client.zcard(keys.delayed) == 0


async def blocked_in_xreadgroup(broker: RedisBroker) -> None:
    """Return once a client of this test's database is blocked in XREADGROUP.

    `anyio.wait_all_tasks_blocked` is not enough: a consumer awaiting its claim script's reply
    looks blocked too. Redis tells nobody when a client blocks, so this asks CLIENT LIST, with
    a deadline (only this test consumes in its database meanwhile).
    """
    client = broker.redis_client()
    db = str(broker.settings.kwargs.get("db", 0))
    with anyio.fail_after(10):
        while True:
            for each in await client.client_list():
                if each["cmd"] == "xreadgroup" and "b" in each["flags"] and each["db"] == db:
                    return
            await anyio.sleep(0.005)


@pytest.mark.parametrize(("fields", "detail"), GARBAGE)
async def test_an_idle_worker_dead_letters_a_garbage_entry_and_goes_on(
    app: App, fields: dict[str, bytes], detail: str
) -> None:
    # Before: `ValueError` in `_sort_out` killed the idle worker (exit 1).
    broker = await redis_broker(app)
    async with anyio.create_task_group() as group:
        worker = await group.start(Worker(app).run)
        await blocked_in_xreadgroup(broker)  # so the blocking read gets the entry, not a claim
        await broker.redis_client().xadd(broker.keys("default").stream(0), fields)  # type: ignore[arg-type]
        good = await app.tasks["tests.add"].delay(3, 3)
        assert await good.get(timeout=10) == 6
        worker.stop()
    (letter,) = await broker.dead_letters("default")
    assert (letter.reason, letter.detail) == ("undecodable", detail)


async def test_the_dead_letter_reader_trusts_no_field(app: App) -> None:
    broker = await redis_broker(app)
    dead = broker.keys("default").dead
    client = broker.redis_client()
    await client.xadd(dead, {"t": b"not a time", "r": b"\xff\xfe", "d": b"ok"})
    await client.xadd(dead, {"t": b"nan"})
    await client.xadd(dead, {"t": b"12.5", "b": b"body", "r": b"why"})
    letters = await broker.dead_letters("default")
    assert [(x.body, x.reason, x.detail, x.at) for x in letters] == [
        (b"", "\ufffd\ufffd", "ok", 0.0),
        (b"", "", "", 0.0),
        (b"body", "why", "", 12.5),
    ]
