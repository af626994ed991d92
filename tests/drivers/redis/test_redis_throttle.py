"""The Redis mailbox, rate limiter and semaphore on a real Redis.

The mailbox contract runs on Redis too (tests/contract/test_mailbox.py); these cover what is
particular to Redis: one shared pub/sub connection that leaves nothing subscribed, reconnects,
settings expiring by Redis' clock, GCRA bookings shared by every limiter, and leases.

Timing: GCRA bookings are checked exactly (microseconds of Redis time returned by the script),
so they need no tolerance. Semaphore leases are in milliseconds of Redis time: an expiry is
noticed no earlier than the lease less 2 ms (a millisecond floored on each side) and, on a
loaded machine, well within half a second after.
"""

from __future__ import annotations

import logging
import statistics
import time
import uuid
from collections.abc import AsyncIterator

import anyio
import pytest

from tests.helpers import service_redis

service_redis.require_client_library()  # before anything imports redis-py

from aqueue import BrokerError  # noqa: E402
from aqueue.drivers import create_backend, create_broker  # noqa: E402
from aqueue.drivers.redis.broker import RedisBroker  # noqa: E402
from aqueue.drivers.redis.client import parse_redis_url  # noqa: E402
from aqueue.drivers.redis.pubsub import PubSub  # noqa: E402
from aqueue.drivers.redis.results import RedisBackend  # noqa: E402
from aqueue.drivers.redis.throttle import RedisRateLimiter, RedisSemaphore  # noqa: E402
from tests.helpers.drivers import service_unavailable  # noqa: E402

pytestmark = pytest.mark.both_loops  # asyncio and uvloop (tests/helpers/loops.py)


@pytest.fixture
async def url() -> AsyncIterator[str]:
    if reason := await service_redis.unreachable():
        service_unavailable(reason)
    url = service_redis.make_url(uuid.uuid4().hex[:10])
    yield url
    await service_redis.cleanup(url)


@pytest.fixture
def name() -> str:
    """A client name of this test's own, to find its connections on the server."""
    return f"aqueue-throttle-{uuid.uuid4().hex[:8]}"


@pytest.fixture
async def broker(url: str, name: str) -> AsyncIterator[RedisBroker]:
    broker = create_broker(url, {"client_name": name})
    assert isinstance(broker, RedisBroker)
    async with broker:
        yield broker


@pytest.fixture
async def other(url: str) -> AsyncIterator[RedisBroker]:
    """A second broker on the same Redis and prefix: another worker, other connections."""
    broker = create_broker(url, {})
    assert isinstance(broker, RedisBroker)
    async with broker:
        yield broker


@pytest.fixture
def key() -> str:
    return f"tasks.t{uuid.uuid4().hex[:6]}"


def _closed_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


async def _pubsub_clients(broker: RedisBroker, name: str) -> list[dict[str, str]]:
    clients = await broker.redis_client().client_list()
    return [c for c in clients if c["name"] == name and "P" in c["flags"]]


# -- the mailbox ----------------------------------------------------------------------------


async def test_subscriptions_share_one_connection_and_leave_nothing(
    broker: RedisBroker, other: RedisBroker, name: str
) -> None:
    mailbox = broker.mailbox()
    assert broker.mailbox() is mailbox
    admin = other.redis_client()
    channels = [mailbox.channel("a"), mailbox.channel("b")]
    async with (
        mailbox.subscribe("a") as one,
        mailbox.subscribe("a") as two,
        mailbox.subscribe("b") as three,
    ):
        assert dict(await admin.pubsub_numsub(*channels)) == {ch: 1 for ch in channels}
        assert len(await _pubsub_clients(broker, name)) == 1
        await other.mailbox().publish("a", b"to a")
        await other.mailbox().publish("b", b"to b")
        with anyio.fail_after(10):
            assert [await anext(one), await anext(two), await anext(three)] == [
                b"to a",
                b"to a",
                b"to b",
            ]
        async with mailbox.subscribe("a"):
            pass
        assert dict(await admin.pubsub_numsub(*channels)) == {ch: 1 for ch in channels}
    # One more subscription: once Redis confirmed it, it processed the UNSUBSCRIBEs before.
    async with mailbox.subscribe("c"):
        assert dict(await admin.pubsub_numsub(*channels)) == {ch: 0 for ch in channels}
    assert broker._channels is not None
    assert broker._channels.channels == 0
    with pytest.raises(StopAsyncIteration):
        await anext(one)


async def test_the_reader_reads_for_sleepers_and_hands_over_when_cancelled(
    broker: RedisBroker, other: RedisBroker
) -> None:
    mailbox = broker.mailbox()
    channels = broker._pubsub()
    publish = other.mailbox().publish
    got: list[bytes] = []
    reader = anyio.CancelScope()

    async def read_second() -> None:
        with reader:
            await anext(second)

    async def read_first() -> None:
        for _ in range(2):
            got.append(await anext(first))  # noqa: PERF401

    async with mailbox.subscribe("first") as first, mailbox.subscribe("second") as second:
        with anyio.fail_after(10):
            async with anyio.create_task_group() as group:
                group.start_soon(read_second)
                await anyio.wait_all_tasks_blocked()  # read_second reads the connection
                group.start_soon(read_first)
                await anyio.wait_all_tasks_blocked()  # read_first sleeps meanwhile
                assert channels._reading
                assert len(channels._sleepers) == 1
                await publish("first", b"one")  # read by read_second, for read_first
                await anyio.wait_all_tasks_blocked()
                assert got == [b"one"]
                reader.cancel()  # the reader leaves mid-read: read_first takes over
                await anyio.wait_all_tasks_blocked()
                assert channels._reading
                assert not channels._sleepers
                await publish("first", b"two")
        async with mailbox.subscribe("second"):  # the cancelled read lost nothing
            await publish("second", b"three")
            assert await anext(second) == b"three"
    assert got == [b"one", b"two"]


async def test_a_subscriber_survives_a_dropped_connection(
    broker: RedisBroker, other: RedisBroker, name: str
) -> None:
    mailbox = broker.mailbox()
    got: list[bytes] = []
    async with mailbox.subscribe("news") as messages, anyio.create_task_group() as group:

        async def listen() -> None:
            got.append(await anext(messages))

        group.start_soon(listen)
        await anyio.wait_all_tasks_blocked()
        (pubsub,) = await _pubsub_clients(broker, name)
        await other.redis_client().client_kill_filter(_id=pubsub["id"])
        # Entered once confirmed on the new connection, after "news" was subscribed again.
        with anyio.fail_after(10):
            async with mailbox.subscribe("other"):
                await other.mailbox().publish("news", b"after the drop")
        await anyio.wait_all_tasks_blocked()
    assert got == [b"after the drop"]
    assert broker._channels is not None
    assert broker._channels.generation == 2


async def test_closing_the_broker_fails_its_subscribers(url: str) -> None:
    broker = create_broker(url, {})
    await broker.open()
    errors: list[Exception] = []

    async def listen() -> None:
        try:
            async with broker.mailbox().subscribe("t") as messages:
                async for _ in messages:
                    pass
        except BrokerError as exc:
            errors.append(exc)

    with anyio.fail_after(10):
        async with anyio.create_task_group() as group:
            group.start_soon(listen)
            await anyio.wait_all_tasks_blocked()
            await broker.close()
    assert len(errors) == 1
    assert "closed" in str(errors[0])
    with pytest.raises(BrokerError, match="not open"):
        broker.mailbox()


async def test_settings_expire_by_redis_clock_and_are_purged(broker: RedisBroker) -> None:
    mailbox = broker.mailbox()
    values, expires = mailbox._keys
    client = broker.redis_client()
    await mailbox.put("rate.a", b"1", ttl=60)
    await mailbox.put("rate.b", b"2")
    assert 59_000 < (await client.zscore(expires, "rate.a") or 0) - time.time() * 1000 <= 60_000
    await client.zadd(expires, {"rate.a": 1})  # as if its minute had passed
    assert await mailbox.items("rate.") == {"rate.b": b"2"}
    assert await client.hkeys(values) == [b"rate.b"]  # purged, not merely hidden
    assert await client.zcard(expires) == 0
    await mailbox.put("rate.b", b"3", ttl=0)  # an expired put removes the setting
    assert await mailbox.items("") == {}
    await mailbox.put("rate.c", b"4", ttl=60)
    await mailbox.put("rate.c", b"5")  # for good now
    assert await client.zcard(expires) == 0
    await mailbox.delete("rate.c")
    await mailbox.delete("rate.c")
    assert await client.exists(values, expires) == 0


async def test_without_redis_errors_name_the_redacted_url() -> None:
    url = f"redis://:t0psecret@127.0.0.1:{_closed_port()}/0"
    settings = parse_redis_url(url, {"retries": 0})
    channels = PubSub(settings)
    client = settings.client()
    limiter = RedisRateLimiter(settings, lambda: client)
    try:
        with anyio.fail_after(10), pytest.raises(BrokerError) as subscribing:
            async with channels.subscribe(b"x"):
                pass
        with anyio.fail_after(10), pytest.raises(BrokerError) as reserving:
            await limiter.reserve("k", 1.0)
    finally:
        await channels.close()
        await client.aclose()
    for caught in (subscribing, reserving):
        assert "redis://:***@127.0.0.1" in str(caught.value)
        assert "t0psecret" not in str(caught.value)
    assert channels.channels == 0


async def test_not_open_is_an_error(url: str) -> None:
    broker = create_broker(url, {})
    backend = create_backend(url, {})
    for make in (
        broker.mailbox,
        broker.rate_limiter,
        broker.semaphore,
        backend.rate_limiter,
        backend.semaphore,
    ):
        with pytest.raises(BrokerError, match="not open"):
            make()
    async with broker:
        limiter = broker.rate_limiter()
    with pytest.raises(BrokerError, match="not open"):
        await limiter.reserve("k", 1.0)


# -- the rate limiter -----------------------------------------------------------------------


async def test_two_limiters_book_one_sequence_spaced_one_interval_apart(
    broker: RedisBroker, other: RedisBroker, key: str
) -> None:
    bookings: list[tuple[float, float]] = []

    async def book(limiter: RedisRateLimiter) -> None:
        bookings.append(await limiter.book(key, rate=1.0))

    with anyio.fail_after(10):
        async with anyio.create_task_group() as group:
            for _ in range(20):
                group.start_soon(book, broker.rate_limiter())
                group.start_soon(book, other.rate_limiter())
    starts = sorted(start for start, _ in bookings)
    first = min(now for _, now in bookings)
    assert starts == [first + n * 1_000_000 for n in range(40)]  # us: exactly 1/R apart
    assert broker.rate_limiter().scope == "global"


async def test_burst_then_spacing_and_the_waits(broker: RedisBroker, key: str) -> None:
    limiter = broker.rate_limiter()
    bookings = [await limiter.book(key, rate=10.0, burst=5) for _ in range(8)]
    first = bookings[0][1]
    assert [start == now for start, now in bookings] == [True] * 5 + [False] * 3
    assert [start for start, _ in bookings[5:]] == [first + n * 100_000 for n in (1, 2, 3)]
    wait = await limiter.reserve(key, rate=10.0, burst=5)
    assert 0 < wait <= 0.4  # the fourth spaced start, less the time these calls took


def gcra(bookings: list[tuple[float, float]], rates: list[float], burst: int = 1) -> list[float]:
    """The starts GCRA gives at these booking times, the backlog rescaled on a rate change."""
    starts: list[float] = []
    tat = was = 0.0
    for (_, now), rate in zip(bookings, rates, strict=True):
        interval = 1e6 / rate
        tat = max(tat, now)
        if was and was != interval:
            tat = now + (tat - now) / was * interval
        starts.append(max(now, tat - (burst - 1) * interval))
        tat, was = tat + interval, interval
    return starts


async def test_a_changed_rate_applies_from_the_next_booking(broker: RedisBroker, key: str) -> None:
    limiter = broker.rate_limiter()
    rates = [10.0, 10.0, 2.0, 2.0, 100.0, 100.0, 1.0, 5.0]
    bookings = [await limiter.book(key, rate, burst=2) for rate in rates]
    assert [start for start, _ in bookings] == pytest.approx(gcra(bookings, rates, 2), abs=1)


async def test_raising_a_slow_rate_lets_the_next_start_go_at_once(
    broker: RedisBroker, key: str
) -> None:
    limiter = broker.rate_limiter()
    waits = [await limiter.reserve(key, rate=1 / 3600) for _ in range(10)]
    assert waits[-1] > 8 * 3600  # nine hours booked ahead
    # Counted at 100/s, those ten bookings are a tenth of a second of backlog.
    assert 0.09 < await limiter.reserve(key, rate=100.0) <= 0.1
    # Lowered, the backlog left of three starts at 100/s counts as if booked at 1/s.
    rates = [100.0, 100.0, 100.0, 1.0]
    bookings = [await limiter.book(f"{key}-slower", rate) for rate in rates]
    assert [start for start, _ in bookings] == pytest.approx(gcra(bookings, rates), abs=1)


async def test_an_idle_key_expires_when_its_bookings_have_passed(
    broker: RedisBroker, key: str
) -> None:
    limiter = broker.rate_limiter()
    for _ in range(3):
        await limiter.reserve(key, rate=10.0)
    ttl = await broker.redis_client().pttl(limiter.key(key))
    assert 250 < ttl <= 300
    await limiter.reserve(f"{key}-fast", rate=1000.0)
    fast = await broker.redis_client().pttl(limiter.key(f"{key}-fast"))
    assert fast == -2 or 0 <= fast <= 1  # gone already (-2), or within the millisecond
    with pytest.raises(ValueError, match="rate"):
        await limiter.reserve(key, rate=0.0)


async def test_concurrent_reservations_go_out_together(
    broker: RedisBroker, key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    limiter = broker.rate_limiter()
    count = 1000
    started = time.perf_counter()
    for _ in range(count):
        await limiter.reserve(f"{key}-seq", rate=1e6)
    sequential = count / (time.perf_counter() - started)

    flushes: list[int] = []
    flush = limiter._bookings._flush

    async def counting(items: list[tuple[str, float, int]]) -> list[tuple[float, float]]:
        flushes.append(len(items))
        return await flush(items)

    monkeypatch.setattr(limiter._bookings, "_flush", counting)
    started = time.perf_counter()
    with anyio.fail_after(60):
        async with anyio.create_task_group() as group:
            for _ in range(count * 10):
                group.start_soon(limiter.reserve, f"{key}-par", 1e6)
    concurrent = count * 10 / (time.perf_counter() - started)
    print(
        f"\nreserve(): {sequential:,.0f}/s sequential, {concurrent:,.0f}/s concurrent "
        f"({len(flushes)} round trips for {count * 10})"
    )
    assert sum(flushes) == count * 10
    assert len(flushes) <= count  # on average at least ten bookings per round trip


# -- the semaphore --------------------------------------------------------------------------


async def test_at_most_limit_places_across_two_instances(
    broker: RedisBroker, other: RedisBroker, key: str
) -> None:
    tokens: list[str | None] = []

    async def take(semaphore: RedisSemaphore) -> None:
        tokens.append(await semaphore.acquire(key, limit=3, lease=30))

    async with anyio.create_task_group() as group:
        for _ in range(10):
            group.start_soon(take, broker.semaphore())
            group.start_soon(take, other.semaphore())
    held = [token for token in tokens if token is not None]
    assert len(held) == 3
    assert len(set(held)) == 3
    assert await broker.redis_client().zcard(broker.semaphore().key(key)) == 3
    assert broker.semaphore().scope == "global"
    assert broker.semaphore() is broker.semaphore()
    ttl = await broker.redis_client().pttl(broker.semaphore().key(key))
    assert 29_000 < ttl <= 30_000  # the set goes with its last lease


async def test_a_release_wakes_a_waiter_promptly(
    broker: RedisBroker, other: RedisBroker, key: str
) -> None:
    holder, waiter = broker.semaphore(), other.semaphore()
    latencies: list[float] = []
    for _ in range(20):
        token = await holder.acquire(key, limit=1, lease=30)
        assert token is not None
        assert await waiter.acquire(key, limit=1, lease=30) is None
        woken = anyio.Event()

        async def wait(woken: anyio.Event) -> None:
            await waiter.wait(key, at_most=30)
            woken.set()

        with anyio.fail_after(5):
            async with anyio.create_task_group() as group:
                group.start_soon(wait, woken)
                await anyio.wait_all_tasks_blocked()  # subscribed, looked, asleep
                released = time.perf_counter()
                await holder.release(key, token)
                await woken.wait()
                latencies.append(time.perf_counter() - released)
        mine = await waiter.acquire(key, limit=1, lease=30)
        assert mine is not None
        await waiter.release(key, mine)
    assert other._channels is not None
    assert other._channels.channels == 0  # every waiter unsubscribed
    median = statistics.median(latencies)
    print(f"\nsemaphore wake-up after release: median {median * 1e3:.2f} ms")
    assert median < 0.1


async def test_an_unreleased_place_frees_itself_after_its_lease(
    broker: RedisBroker, other: RedisBroker, key: str
) -> None:
    lease = 0.3
    started = time.perf_counter()
    assert await broker.semaphore().acquire(key, limit=1, lease=lease) is not None
    # ... and its worker dies: nobody releases, nobody publishes.
    semaphore = other.semaphore()
    with anyio.fail_after(5):
        while (token := await semaphore.acquire(key, limit=1, lease=lease)) is None:
            await semaphore.wait(key, at_most=30)  # bounded by the lease, not by at_most
    elapsed = time.perf_counter() - started
    print(f"\na dead holder's place (lease {lease} s) was taken again after {elapsed:.3f} s")
    assert lease - 0.002 <= elapsed < lease + 0.5
    await semaphore.release(key, token)


async def test_renew_keeps_the_place(broker: RedisBroker, other: RedisBroker, key: str) -> None:
    semaphore = broker.semaphore()
    token = await semaphore.acquire(key, limit=1, lease=0.3)
    assert token is not None
    await semaphore.renew(key, token, lease=5)
    score = await broker.redis_client().zscore(semaphore.key(key), token)
    assert score is not None
    assert 4_900 < score - time.time() * 1000 <= 5_000
    started = time.perf_counter()
    await other.semaphore().wait(key, at_most=0.6)  # past the first lease: still held
    assert time.perf_counter() - started >= 0.6
    assert await other.semaphore().acquire(key, limit=1, lease=5) is None
    assert other._channels is not None
    assert other._channels.channels == 0  # the wait that timed out unsubscribed
    await semaphore.release(key, token)


async def test_releasing_twice_is_harmless_and_a_lost_lease_is_not_renewed(
    broker: RedisBroker, key: str, caplog: pytest.LogCaptureFixture
) -> None:
    semaphore = broker.semaphore()
    first = await semaphore.acquire(key, limit=2, lease=30)
    second = await semaphore.acquire(key, limit=2, lease=30)
    assert first is not None
    assert second is not None
    await semaphore.release(key, first)
    await semaphore.release(key, first)
    await semaphore.release(key, "never-held")
    assert await broker.redis_client().zrange(semaphore.key(key), 0, -1) == [second.encode()]
    with caplog.at_level(logging.WARNING, logger="aqueue.drivers.redis.throttle"):
        await semaphore.renew(key, first, lease=30)
    assert "ran out" in caplog.text
    assert await broker.redis_client().zcard(semaphore.key(key)) == 1


async def test_a_free_place_ends_a_wait_at_once(broker: RedisBroker, key: str) -> None:
    semaphore = broker.semaphore()
    token = await semaphore.acquire(key, limit=2, lease=30)
    assert token is not None
    with anyio.fail_after(1):
        await semaphore.wait(key, at_most=30)  # one of two places is free


# -- the result backend gives the same throttles --------------------------------------------


async def test_a_redis_backend_gives_global_throttles(
    url: str, broker: RedisBroker, key: str
) -> None:
    async with create_backend(url, {}) as backend:
        assert isinstance(backend, RedisBackend)
        limiter = backend.rate_limiter()
        assert limiter is backend.rate_limiter()
        assert limiter.scope == "global"
        first, _ = await broker.rate_limiter().book(key, rate=10.0)
        second, _ = await limiter.book(key, rate=10.0)
        assert second - first == 100_000  # one sequence with the broker's limiter
        semaphore = backend.semaphore()
        assert semaphore is backend.semaphore()
        token = await broker.semaphore().acquire(key, limit=1, lease=30)
        assert token is not None
        assert await semaphore.acquire(key, limit=1, lease=30) is None
        with anyio.fail_after(5):
            async with anyio.create_task_group() as group:
                group.start_soon(semaphore.wait, key, 30)
                await anyio.wait_all_tasks_blocked()
                await broker.semaphore().release(key, token)
        assert await semaphore.acquire(key, limit=1, lease=30) is not None
    with pytest.raises(BrokerError, match="not open"):
        backend.semaphore()
