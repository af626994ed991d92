"""The heartbeat thread, and what the SQLite and Redis claims do with a dead owner's messages.

The owners here are made up: rows and hash fields of consumers that never ran, holding messages
leased to them, so that each case (stale, from before a reboot, partly taken) is set up exactly.
Processes that really die are in `test_reclaim.py`.
"""

from __future__ import annotations

import logging
import math
import os
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import aclosing
from pathlib import Path

import anyio
import pytest

from aqueue import OutgoingMessage
from aqueue.drivers.base import Broker, Delivery
from aqueue.drivers.heartbeat import Heartbeat
from aqueue.drivers.liveness import this_process
from aqueue.drivers.sqlite.broker import SQLiteBroker
from tests.helpers import service_redis
from tests.helpers.consuming import Credit

#: Heartbeat settings that make the tests quick: a beat every 50 ms, dead after 300 ms.
FAST = {"heartbeat_interval": 0.05, "heartbeat_timeout": 0.3}


class Beats:
    """Beats that fail `failures` times before they go through, and say when they did."""

    def __init__(self, failures: int = 0, *, forget_fails: bool = False) -> None:
        self.failures = failures
        self.forget_fails = forget_fails
        self.beats = 0
        self.forgotten = False
        self.closed = False
        self.through = threading.Event()

    async def beat(self) -> None:
        if self.failures:
            self.failures -= 1
            raise ConnectionError("unreachable")
        self.beats += 1
        self.through.set()

    async def forget(self) -> None:
        if self.forget_fails:
            raise ConnectionError("unreachable")
        self.forgotten = True

    async def aclose(self) -> None:
        self.closed = True


async def test_a_heartbeat_judges_only_after_a_timeout_of_its_own_beats() -> None:
    beats = Beats()
    heartbeat = Heartbeat(lambda: beats, interval=0.05, timeout=60.0, name="test-heartbeat")
    heartbeat.stop()  # not started: nothing to stop
    assert heartbeat.judging_from() == math.inf
    await anyio.to_thread.run_sync(heartbeat.start)
    heartbeat.start()  # started already: nothing to do
    assert heartbeat.running
    assert beats.beats >= 1
    assert time.monotonic() < heartbeat.judging_from() < time.monotonic() + 60.0
    assert not heartbeat.judging()
    await anyio.to_thread.run_sync(heartbeat.stop)
    assert not heartbeat.running
    assert beats.forgotten
    assert beats.closed
    assert heartbeat.judging_from() == math.inf


async def test_a_failing_heartbeat_says_so_once_and_judges_nobody(
    caplog: pytest.LogCaptureFixture,
) -> None:
    beats = Beats(failures=3, forget_fails=True)
    heartbeat = Heartbeat(lambda: beats, interval=0.01, timeout=0.05, name="test-heartbeat")
    with caplog.at_level(logging.WARNING, "aqueue.heartbeat"):
        await anyio.to_thread.run_sync(heartbeat.start)
        assert heartbeat.judging_from() == math.inf  # the first beat failed
        assert not heartbeat.judging()
        assert await anyio.to_thread.run_sync(beats.through.wait, 10.0)
        await anyio.to_thread.run_sync(heartbeat.stop)
    failed = [r.getMessage() for r in caplog.records if "heartbeat failed" in r.getMessage()]
    assert len(failed) == 1  # not once per failed beat
    assert "ConnectionError: unreachable" in failed[0]
    assert "could not remove this consumer's heartbeat entry" in caplog.text
    assert beats.closed


# -- SQLite ---------------------------------------------------------------------------------


def _lease_to(path: Path, owners: dict[str, object]) -> None:
    """Lease one waiting message to each made-up owner, whose last beat is given."""
    with sqlite3.connect(path) as conn:
        ids = [row[0] for row in conn.execute("SELECT id FROM aqueue_messages ORDER BY id")]
        for id_, (owner, beat) in zip(ids, owners.items(), strict=False):
            conn.execute(
                "UPDATE aqueue_messages SET lease_until = ?, lease_token = ?, deliveries = 1 "
                "WHERE id = ?",
                (time.time() + 60, owner + "f" * 32, id_),
            )
            conn.execute("INSERT INTO aqueue_consumers (id, beat) VALUES (?, ?)", (owner, beat))


def _consumers(path: Path) -> list[str]:
    with sqlite3.connect(path) as conn:
        return [row[0] for row in conn.execute("SELECT id FROM aqueue_consumers")]


async def _take(broker: Broker, count: int) -> list[Delivery]:
    taken: list[Delivery] = []
    with anyio.fail_after(10):
        async with aclosing(broker.consume(["default"], Credit(10))) as deliveries:
            async for delivery in deliveries:
                taken.append(delivery)
                if len(taken) == count:
                    break
    return taken


async def test_sqlite_takes_the_leases_of_owners_whose_heartbeat_stopped(tmp_path: Path) -> None:
    path = tmp_path / "q.db"
    with sqlite3.connect(path) as conn:  # as an older aqueue made it: not STRICT
        conn.execute("CREATE TABLE aqueue_consumers (id TEXT PRIMARY KEY, beat REAL NOT NULL)")
    broker = SQLiteBroker(f"sqlite:///{path}", {**FAST, "visibility_timeout": 60})
    async with broker:
        await broker.publish([OutgoingMessage(f"m{i}", "default", b"%d" % i) for i in range(4)])
        now = time.monotonic()
        # A beat in the future is from before a reboot; one that is not a number, garbage.
        stale, rebooted, garbage = "a" * 32, "b" * 32, "c" * 32
        _lease_to(path, {stale: now - 10, rebooted: now + 1000, garbage: "soon"})
        # Three of four were leased for 60 s; the claim waits for its own heartbeat, then
        # takes them (the fourth, waiting, comes first).
        taken = await _take(broker, 4)
        assert sorted(d.delivery_count for d in taken) == [1, 2, 2, 2]
        for delivery in taken:
            await delivery.ack()
        assert len(_consumers(path)) == 1  # this broker's own row; the dead ones went
    assert _consumers(path) == []  # a closing broker removes its row


def _processes(path: Path, rows: dict[str, tuple[str, int, int]]) -> None:
    with sqlite3.connect(path) as conn:
        conn.executemany(
            "INSERT INTO aqueue_consumer_processes (id, place, pid, started) VALUES (?, ?, ?, ?)",
            [(owner, *row) for owner, row in rows.items()],
        )


def _leases(path: Path) -> set[str]:
    with sqlite3.connect(path) as conn:
        rows = conn.execute("SELECT lease_token FROM aqueue_messages WHERE lease_until > 0")
        return {row[0][:32] for row in rows}


@pytest.fixture
def ended_and_zombie() -> Iterator[tuple[int, int]]:
    """The pid of a process that ended and was reaped, and of one that ended, not reaped."""
    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    ended.wait()  # reaped: no such process any more
    zombie = subprocess.Popen([sys.executable, "-c", "pass"])
    os.waitid(os.P_PID, zombie.pid, os.WEXITED | os.WNOWAIT)  # exited, left a zombie
    yield ended.pid, zombie.pid
    zombie.wait()


@pytest.mark.skipif(this_process() is None, reason="processes are judged on Linux only")
async def test_sqlite_takes_at_once_the_leases_of_owners_whose_process_is_gone(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, ended_and_zombie: tuple[int, int]
) -> None:
    # Their beats are fresh and the heartbeat timeout is a minute: only their processes tell.
    me = this_process()
    assert me is not None
    ended, zombie = ended_and_zombie
    path = tmp_path / "q.db"
    slow = {"heartbeat_interval": 0.05, "heartbeat_timeout": 60, "visibility_timeout": 60}
    broker = SQLiteBroker(f"sqlite:///{path}", slow)
    async with broker:
        await broker.publish([OutgoingMessage(f"m{i}", "default", b"%d" % i) for i in range(6)])
        now = time.monotonic()
        owners = [letter * 32 for letter in "abcde"]
        _lease_to(path, dict.fromkeys(owners, now))
        gone, living, reused, elsewhere, dead = owners
        _processes(
            path,
            {
                gone: (me.place, ended, 1),
                living: (me.place, me.pid, me.started),
                reused: (me.place, me.pid, me.started + 1),  # the pid is another's now
                elsewhere: ("another boot or pid namespace", ended, 1),
                dead: (me.place, zombie, 1),
            },
        )
        with caplog.at_level(logging.WARNING, logger="aqueue"):
            taken = await _take(broker, 4)
        assert sorted(d.delivery_count for d in taken) == [1, 2, 2, 2]
        assert _leases(path) == {living, elsewhere, broker._beating.owner}
        assert "reclaiming 3 message(s) of 3 consumer(s) whose process is gone" in caplog.text
        for delivery in taken:
            await delivery.ack()
        assert sorted(_consumers(path)) == sorted([living, elsewhere, broker._beating.owner])


async def test_sqlite_without_heartbeats_waits_for_the_lease(tmp_path: Path) -> None:
    path = tmp_path / "q.db"
    broker = SQLiteBroker(f"sqlite:///{path}", {"heartbeat_timeout": None})
    async with broker:
        await broker.publish([OutgoingMessage("m", "default", b"x")])
        (delivery,) = await _take(broker, 1)
        await delivery.ack()
        assert _consumers(path) == []
        assert broker._beating.heartbeat is None


# -- Redis ----------------------------------------------------------------------------------


async def test_redis_takes_what_a_dead_owners_consumers_held(shared_url: str) -> None:
    from aqueue.drivers.redis.broker import RedisBroker

    broker = RedisBroker(shared_url, {**FAST, "visibility_timeout": 60})
    client = service_redis.client(shared_url)
    try:
        async with broker:
            keys = broker.keys("default")
            await broker.publish([OutgoingMessage(f"m{i}", "default", b"%d" % i) for i in range(3)])
            # A consumer of a dead owner holds all three; the owner's last beat is from 1970.
            stream, ghost = keys.stream(0), "ghost-host:1:deadbeef"
            await client.xgroup_create(stream, "aqueue", id="0", mkstream=True)
            await client.xreadgroup("aqueue", f"{ghost}:0000aaaa", {stream: ">"}, count=3)
            await client.hset(keys.beats, ghost, 0)

            taken: list[Delivery] = []
            with anyio.fail_after(10):
                async with aclosing(broker.consume(["default"], Credit(2))) as deliveries:
                    async for delivery in deliveries:
                        taken.append(delivery)
                        if len(taken) == 2:  # credit 2: the first claim left one with the ghost
                            assert await client.hexists(keys.beats, ghost)
                        if len(taken) == 3:
                            break
            assert [d.delivery_count for d in taken] == [2, 2, 2]
            for delivery in taken:
                await delivery.ack()
            assert not await client.hexists(keys.beats, ghost)  # nothing left to take
            assert await client.hkeys(keys.beats) == [broker.owner.encode()]
        assert await client.hkeys(keys.beats) == []  # a closing broker removes its beat
    finally:
        await client.aclose()


@pytest.mark.skipif(this_process() is None, reason="processes are judged on Linux only")
async def test_redis_takes_at_once_what_an_owner_whose_process_is_gone_held(
    shared_url: str, ended_and_zombie: tuple[int, int], caplog: pytest.LogCaptureFixture
) -> None:
    from aqueue.drivers.redis.broker import RedisBroker

    # Their beats are fresh and the heartbeat timeout is a minute: only their processes tell
    # (and this broker, whose own beats are not a minute old, judges no beat).
    me = this_process()
    assert me is not None
    ended, _ = ended_and_zombie
    slow = {"heartbeat_interval": 0.05, "heartbeat_timeout": 60, "visibility_timeout": 60}
    broker = RedisBroker(shared_url, slow)
    client = service_redis.client(shared_url)
    try:
        async with broker:
            keys = broker.keys("default")
            await broker.publish([OutgoingMessage(f"m{i}", "default", b"%d" % i) for i in range(4)])
            stream = keys.stream(0)
            seconds, micros = await client.time()
            now_ms = seconds * 1000 + micros // 1000
            gone, elsewhere, left = "gone-host:1:aaaa", "other-host:1:bbbb", "left-host:1:cccc"
            await client.xgroup_create(stream, "aqueue", id="0", mkstream=True)
            await client.xreadgroup("aqueue", f"{gone}:0000aaaa", {stream: ">"}, count=3)
            await client.xreadgroup("aqueue", f"{elsewhere}:0000bbbb", {stream: ">"}, count=1)
            await client.hset(keys.beats, mapping={gone: now_ms, elsewhere: now_ms})
            await client.hset(
                keys.procs,
                mapping={
                    gone: f"{me.place}\t{ended}\t1",
                    elsewhere: f"another boot or pid namespace\t{ended}\t1",
                    left: f"{me.place}\t{ended}\t1",  # no beat: its leases were taken
                },
            )
            with caplog.at_level(logging.WARNING, logger="aqueue"):
                taken = await _take(broker, 3)
            assert [d.delivery_count for d in taken] == [2, 2, 2]
            assert f"consumer(s) {gone}: process gone" in caplog.text
            for delivery in taken:
                await delivery.ack()
            beats = await client.hgetall(keys.beats)
            assert beats[elsewhere.encode()] == str(now_ms).encode()  # not judged from here
            assert sorted(await client.hkeys(keys.procs)) == sorted(
                [elsewhere.encode(), broker.owner.encode()]
            )
            pending = await client.xpending(stream, "aqueue")
            assert pending["pending"] == 1  # the one held elsewhere
        assert await client.hkeys(keys.procs) == [elsewhere.encode()]  # a closing broker's went
    finally:
        await client.aclose()


async def test_redis_without_heartbeats_writes_no_beats(shared_url: str) -> None:
    from aqueue.drivers.redis.broker import RedisBroker

    broker = RedisBroker(shared_url, {"heartbeat_timeout": None})
    client = service_redis.client(shared_url)
    try:
        async with broker:
            await broker.publish([OutgoingMessage("m", "default", b"x")])
            (delivery,) = await _take(broker, 1)
            await delivery.ack()
            assert broker.heartbeat is None
            assert not await client.exists(broker.keys("default").beats)
    finally:
        await client.aclose()


async def test_redis_beats_that_are_not_a_hash_stop_no_consumer(
    shared_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    from aqueue.drivers.redis.broker import RedisBroker

    broker = RedisBroker(shared_url, FAST)
    client = service_redis.client(shared_url)
    try:
        async with broker:
            await client.set(broker.keys("default").beats, "garbage")
            await broker.publish([OutgoingMessage("m", "default", b"x")])
            with caplog.at_level(logging.WARNING, "aqueue.heartbeat"):
                (delivery,) = await _take(broker, 1)
            await delivery.ack()
            assert "heartbeat failed (ResponseError: WRONGTYPE" in caplog.text
            assert broker.heartbeat is not None
            assert not broker.heartbeat.judging()  # its beats fail: it judges nobody
    finally:
        await client.aclose()
