"""Redis Cluster: `redis+cluster://` URLs, slot redirections, several queues, a failover.

The servers are the test's own (`tests/helpers/redis_cluster.py`): three primaries on free
ports, and for the failover test a replica each. The failover test runs a worker process (`python -m
aqueue worker`) and a producer in this process, kills a primary with SIGKILL and counts the
tasks lost and run twice, from `ran.log`, where each run of `work` appends `index pid time`.
(The contract suites run on a cluster too: tests/contract_cluster/.)
"""

from __future__ import annotations

import shutil
import sys
import textwrap
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
import redis.asyncio as aioredis

from aqueue import App, BrokerError, Worker
from aqueue.drivers import create_broker
from aqueue.drivers.redis.broker import RedisBroker
from aqueue.drivers.redis.client import parse_redis_url
from aqueue.drivers.redis.cluster import slot_of
from aqueue.exceptions import ConfigurationError
from aqueue.urls import redact
from tests.contract.test_broker import message
from tests.helpers import service_redis
from tests.helpers.consuming import Credit
from tests.helpers.drivers import service_unavailable
from tests.helpers.failover import fail_over_under_load
from tests.helpers.processes import STEP, child_env, spawn
from tests.helpers.redis_cluster import NODE_TIMEOUT_MS, ClusterGroup

TASKS = """
    import os
    import pathlib

    import anyio

    from aqueue import App

    HERE = pathlib.Path(__file__).resolve().parent

    app = App(
        "tasks",
        broker={url!r},
        broker_visibility_timeout=2.0,  # acks lost with the primary: their runs come back soon
        broker_heartbeat_interval=0.2,
        broker_heartbeat_timeout=1.0,
    )


    @app.task
    async def work(i, seconds):
        await anyio.sleep(seconds)  # simulated work
        fd = os.open(HERE / "ran.log", os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        try:
            os.write(fd, b"%d %d %f\\n" % (i, os.getpid(), __import__("time").time()))
        finally:
            os.close(fd)
        return i
"""


def _require_servers() -> None:
    if shutil.which("redis-server") is None or shutil.which("redis-cli") is None:
        service_unavailable("redis-server and redis-cli are not on PATH")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterGroup]:
    _require_servers()
    group = ClusterGroup(Path(tmp_path_factory.mktemp("cluster")))
    try:
        group.start_blocking()
        yield group
    finally:
        group.stop()


@pytest.fixture
async def url(cluster: ClusterGroup) -> AsyncIterator[str]:
    url = cluster.url(query=f"prefix=aqueue-test-{uuid.uuid4().hex[:10]}")
    yield url
    await service_redis.cleanup(url)


# -- URLs ---------------------------------------------------------------------------------------


def test_a_cluster_url_names_its_nodes_and_keeps_the_password_out_of_sight() -> None:
    url = "redis+cluster://u:s3cret@a:7000,b:7001/?prefix=p&socket_timeout=3"
    settings = parse_redis_url(url, {})
    assert settings.cluster
    assert settings.kwargs["cluster"] == (("a", 7000), ("b", 7001))
    assert (settings.kwargs["username"], settings.kwargs["password"]) == ("u", "s3cret")
    assert (settings.prefix, settings.kwargs["socket_timeout"]) == ("p", 3.0)
    broker = create_broker(url, {})
    for shown in (repr(settings), repr(broker), repr(settings.lean()), settings.url):
        assert "s3cret" not in shown
    assert redact(url) == "redis+cluster://u:***@a:7000,b:7001/?prefix=p&socket_timeout=3"


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("redis+cluster:///", "write a Redis Cluster URL as"),
        ("redis+cluster://:pw@a:7000,b:x/", "'b:x' is not host:port"),
        ("redis+cluster://a:7000/3", "only database 0"),
        ("redis+cluster://a:7000/?db=2", "only database 0"),
        ("redis+cluster://a:7000/?password=pw", "in the URL's user part"),
    ],
)
def test_a_bad_cluster_url_is_one_line_without_the_password(url: str, says: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        parse_redis_url(url, {})
    assert says in str(caught.value)
    assert "\n" not in str(caught.value)
    assert "pw" not in str(caught.value).replace("password", "")


async def test_an_unreachable_cluster_is_a_broker_error_without_the_password() -> None:
    from tests.drivers.redis.test_redis_throttle import _closed_port

    url = f"redis+cluster://:s3cret@127.0.0.1:{_closed_port()}/?socket_connect_timeout=0.5"
    broker = create_broker(url, {})
    with pytest.raises(BrokerError) as caught:
        await broker.open()
    assert "s3cret" not in str(caught.value)
    assert "redis+cluster://:***@127.0.0.1" in str(caught.value)


# -- a cluster --------------------------------------------------------------------------------


async def test_broker_results_throttles_and_mailbox_on_a_cluster(url: str) -> None:
    async with App("cluster", broker=f"{url}&wait=0", set_as_current=False) as app:

        @app.task(rate_limit="100/s", concurrency=2)
        async def add(x: int, y: int) -> int:
            return x + y

        results = [await add.delay(i, i) for i in range(20)]
        await Worker(app, burst=True).run()
        assert [await r.get(timeout=STEP) for r in results] == [2 * i for i in range(20)]
        broker = await app.broker()
        assert isinstance(broker, RedisBroker)
        mailbox = broker.mailbox()
        await mailbox.put("a:1", b"one")
        assert await mailbox.items("a:") == {"a:1": b"one"}


async def _owner(broker: RedisBroker, slot: int) -> int:
    """The port of the primary that serves `slot` (redis-py reads CLUSTER SLOTS as a dict)."""
    slots = await broker.redis_client().execute_command("CLUSTER SLOTS")  # type: ignore[no-untyped-call]
    return next(
        int(node["primary"][1]) for (start, end), node in slots.items() if start <= slot <= end
    )


async def _queues_on_two_nodes(broker: RedisBroker, prefix: str) -> list[str]:
    """Two queue names whose slots two different primaries serve."""
    found: dict[int, str] = {}
    for n in range(1000):
        queue = f"{prefix}-{n}"
        found.setdefault(await _owner(broker, slot_of(queue)), queue)
        if len(found) == 2:
            break
    return list(found.values())


async def test_a_consumer_of_queues_on_two_nodes_blocks_on_both(
    url: str, cluster: ClusterGroup
) -> None:
    broker = create_broker(url, {})
    assert isinstance(broker, RedisBroker)
    async with broker:
        queues = await _queues_on_two_nodes(broker, uuid.uuid4().hex[:6])
        got: list[bytes] = []
        consumer = broker.consume(queues, Credit(10))
        try:
            for n, queue in enumerate([queues[1], queues[0], queues[1]]):
                async with anyio.create_task_group() as group:

                    async def take() -> None:
                        delivery = await anext(consumer)
                        got.append(delivery.body)
                        await delivery.ack()

                    group.start_soon(take)
                    await anyio.wait_all_tasks_blocked()  # blocked in its reads
                    with anyio.fail_after(STEP):
                        await broker.publish([message(queue, b"m%d" % n)])
        finally:
            await consumer.aclose()
        assert got == [b"m0", b"m1", b"m2"]
        stats = [await broker.queue_stats(queue) for queue in queues]
        assert [(s.waiting, s.running) for s in stats] == [(0, 0), (0, 0)]


async def _node_client(port: int) -> aioredis.Redis:
    return aioredis.Redis(host="127.0.0.1", port=port, protocol=2)


async def test_a_slot_moved_while_in_use_is_followed_ask_then_moved(
    url: str, cluster: ClusterGroup
) -> None:
    """A queue's slot migrates to another primary under a broker that knows the old map.

    As `redis-cli --cluster reshard` does it: IMPORTING, MIGRATING, MIGRATE, SETSLOT NODE.
    """
    broker = create_broker(url, {})
    assert isinstance(broker, RedisBroker)
    queue = f"mv-{uuid.uuid4().hex[:6]}"
    slot = slot_of(queue)
    async with broker:
        await broker.publish([message(queue, b"before")])
        (first,) = [d async for d in broker.consume([queue], Credit(10), burst=True)]
        await first.ack()
        admins = {port: await _node_client(port) for port in cluster.primary_ports()}
        try:
            ids = {
                port: (await c.execute_command("CLUSTER MYID")).decode()
                for port, c in admins.items()
            }  # type: ignore[no-untyped-call]
            source = await _owner(broker, slot)
            target = next(p for p in admins if p != source)
            await admins[target].execute_command("CLUSTER SETSLOT", slot, "IMPORTING", ids[source])  # type: ignore[no-untyped-call]
            await admins[source].execute_command("CLUSTER SETSLOT", slot, "MIGRATING", ids[target])  # type: ignore[no-untyped-call]
            keys = await admins[source].execute_command("CLUSTER GETKEYSINSLOT", slot, 1000)  # type: ignore[no-untyped-call]
            assert keys
            await admins[source].execute_command(  # type: ignore[no-untyped-call]
                "MIGRATE", "127.0.0.1", target, "", 0, 5000, "KEYS", *keys
            )
            # Migrating: the source answers ASK for a key it no longer holds, and TRYAGAIN
            # to a script over several keys of the slot (some are nowhere) until it is done.
            await broker.publish([message(queue, b"asked")])
            async with anyio.create_task_group() as group:
                taken: list[Any] = []

                async def take() -> None:
                    taken.extend([d async for d in broker.consume([queue], Credit(10), burst=True)])

                group.start_soon(take)
                for admin in admins.values():
                    await admin.execute_command("CLUSTER SETSLOT", slot, "NODE", ids[target])  # type: ignore[no-untyped-call]
            (asked,) = taken
            await asked.ack()
            # Moved: the source answers MOVED to a broker whose map is out of date.
            await broker.publish([message(queue, b"moved")])
            (moved,) = [d async for d in broker.consume([queue], Credit(10), burst=True)]
            await moved.ack()
            assert [asked.body, moved.body] == [b"asked", b"moved"]
            assert (await broker.queue_stats(queue)).waiting == 0
        finally:
            for admin in admins.values():
                await admin.aclose()


# -- a failover -------------------------------------------------------------------------------


@pytest.fixture
async def replicated(tmp_path: Path) -> AsyncIterator[ClusterGroup]:
    """Three primaries with a replica each (six processes), for this test alone."""
    _require_servers()
    group = ClusterGroup(tmp_path / "nodes", replicas=1)
    try:
        await group.start()
        yield group
    finally:
        group.stop()


@pytest.mark.slow
@pytest.mark.parametrize("wait", [1, 0], ids=["wait=1", "no-wait"])
async def test_producers_and_a_worker_follow_a_failover(
    replicated: ClusterGroup, tmp_path: Path, wait: int
) -> None:
    (tmp_path / "tasks.py").write_text(textwrap.dedent(TASKS).format(url=replicated.url()))
    command = [sys.executable, "-m", "aqueue", "worker", "tasks:app", "-l", "INFO", "-c", "20"]
    worker = spawn(command, cwd=tmp_path, env=child_env())
    try:
        await worker.wait_line("ready.")
        report = await _fail_over_under_load(replicated, tmp_path, wait)
    finally:
        worker.stop()
    print(
        f"\nCluster failover (kill -9 of a primary, node timeout {NODE_TIMEOUT_MS} ms, "
        f"?wait={wait}): {report['confirmed']} publishes confirmed, {report['refused']} "
        f"refused meanwhile; producer resumed {report['producer']:.2f} s and worker "
        f"{report['worker']:.2f} s after the kill; lost {report['lost']}, ran twice "
        f"{report['duplicated']}; seconds after the kill: {report['phases']}"
    )
    if wait:  # confirmed with WAIT 1: on a replica before delay() returned
        assert report["lost"] == 0
    # Acks the dead primary had not passed on: at most the worker's slots (20), what it
    # claimed ahead (10) and a batch of acks in flight.
    assert report["duplicated"] <= 50
    assert report["worker"] < 30


async def _fail_over_under_load(group: ClusterGroup, cwd: Path, wait: int) -> dict[str, Any]:
    url = group.url(query=f"wait={wait}&wait_timeout=2")
    async with App("producer", broker=url, set_as_current=False) as producer:
        # The primary killed is the one that serves the queue's slot, given a second replica.
        broker = await producer.broker()
        assert isinstance(broker, RedisBroker)
        victim = await _owner(broker, slot_of(producer.conf.task_default_queue))
        await anyio.to_thread.run_sync(group.add_replica, victim)

        async def kill() -> None:
            group.kill(victim)
            await group.wait_failover()

        return await fail_over_under_load(producer, cwd, kill)
