"""Redis Sentinel: `redis+sentinel://` URLs, and following a failover of the primary.

The servers are the test's own (`tests/helpers/redis_sentinel.py`): a primary, its replica and three
sentinels on free ports. The failover test runs a worker process (`python -m aqueue worker`)
and a producer in this process, kills the primary with SIGKILL and counts the tasks lost and
run twice, from `ran.log`, where each run of `work` appends `index pid time`.
"""

from __future__ import annotations

import shutil
import sys
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from aqueue import App, BrokerError, Worker
from aqueue.drivers.redis.client import parse_redis_url
from aqueue.drivers.redis.sentinel import SentinelConnection, parse_sentinel_url
from aqueue.exceptions import ConfigurationError
from aqueue.urls import redact
from tests.helpers.drivers import service_unavailable
from tests.helpers.failover import fail_over_under_load
from tests.helpers.processes import STEP, child_env, free_port, spawn
from tests.helpers.redis_sentinel import SERVICE, SentinelGroup

pytestmark = pytest.mark.slow

TASKS = """
    import os
    import pathlib
    import time

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
            os.write(fd, b"%d %d %f\\n" % (i, os.getpid(), time.time()))
        finally:
            os.close(fd)
        return i
"""


@pytest.fixture
async def group(tmp_path: Path) -> AsyncIterator[SentinelGroup]:
    if shutil.which("redis-server") is None:
        service_unavailable("redis-server is not on PATH")
    servers = SentinelGroup(tmp_path)
    try:
        await servers.start()
        yield servers
    finally:
        servers.stop()


# -- URLs ---------------------------------------------------------------------------------------


def test_a_sentinel_url_names_the_sentinels_the_service_and_the_database() -> None:
    sentinels, db, single = parse_sentinel_url("redis+sentinel://:pw@s1:26379,s2/mymaster/3", 2.0)
    assert sentinels.addresses == [("s1", 26379), ("s2", 26379)]
    assert (sentinels.service, db) == ("mymaster", 3)
    assert single == "redis://:pw@sentinel/3"
    settings = parse_redis_url("sentinel://:pw@s1:26379,s2:26380/mymaster/3?prefix=x&wait=1", {})
    assert settings.connection_class is SentinelConnection
    assert (settings.prefix, settings.wait, settings.kwargs["db"]) == ("x", 1, 3)
    assert "pw" not in repr(settings)
    assert settings.url == "sentinel://:***@s1:26379,s2:26380/mymaster/3?prefix=x&wait=1"


def test_a_sentinel_url_without_a_service_is_one_clear_error() -> None:
    with pytest.raises(ConfigurationError, match="SERVICE is the primary's name"):
        parse_redis_url("redis+sentinel://s1:26379", {})
    with pytest.raises(ConfigurationError, match="is not host:port"):
        parse_redis_url("redis+sentinel://s1:port/mymaster", {})


def test_redaction_keeps_every_host() -> None:
    assert redact("redis+sentinel://u:secret@a:1,b:2/m/0") == "redis+sentinel://u:***@a:1,b:2/m/0"


# -- servers ------------------------------------------------------------------------------------


async def test_broker_results_and_throttles_through_sentinel(group: SentinelGroup) -> None:
    async with App("sentinel", broker=group.url(query="wait=1"), set_as_current=False) as app:

        @app.task(rate_limit="100/s", concurrency=2)
        async def add(x: int, y: int) -> int:
            return x + y

        results = [await add.delay(i, i) for i in range(5)]
        await Worker(app, burst=True).run()
        assert [await r.get(timeout=STEP) for r in results] == [0, 2, 4, 6, 8]
        broker = await app.broker()
        assert broker.rate_limiter() is not None  # global throttles on the primary
        assert broker.mailbox() is not None


async def test_a_dead_sentinel_is_skipped_and_a_demoted_primary_is_left(
    group: SentinelGroup,
) -> None:
    dead = free_port()  # nothing listens there: the first sentinel named is down
    hosts = ",".join(f"127.0.0.1:{port}" for port in [dead, *group.sentinel_ports])
    url = f"redis+sentinel://{hosts}/{SERVICE}/0"
    async with App("sentinel", broker=url, set_as_current=False) as app:

        @app.task
        async def add(x: int, y: int) -> int:
            return x + y

        first = await add.delay(1, 1)
        await Worker(app, burst=True).run()
        assert await first.get(timeout=STEP) == 2
        # A coordinated failover: the primary, to which the app is connected, turns replica.
        failover = ["redis-cli", "-p", str(group.sentinel_ports[0]), "SENTINEL", "FAILOVER"]
        await anyio.run_process([*failover, SERVICE])
        await group.wait_failover()
        results, refused = [], 0
        with anyio.fail_after(STEP):
            while len(results) < 5:
                try:
                    results.append(await add.delay(2, 2))
                except BrokerError:  # on the demoted primary: READONLY, and the link is dropped
                    refused += 1
                    await anyio.sleep(0.05)  # the producer's own pause before the next try
        await Worker(app, burst=True).run()
        assert [await r.get(timeout=STEP) for r in results] == [4] * 5
    print(f"\ncoordinated failover: {refused} publish(es) refused by the demoted primary")
    assert refused <= 3


@pytest.mark.parametrize("wait", [1, 0], ids=["wait=1", "no-wait"])
async def test_producers_and_a_worker_follow_a_failover(
    group: SentinelGroup, tmp_path: Path, wait: int
) -> None:
    (tmp_path / "tasks.py").write_text(textwrap.dedent(TASKS).format(url=group.url()))
    command = [sys.executable, "-m", "aqueue", "worker", "tasks:app", "-l", "INFO", "-c", "20"]
    worker = spawn(command, cwd=tmp_path, env=child_env())
    try:
        await worker.wait_line("ready.")
        report = await _fail_over_under_load(group, tmp_path, wait)
    finally:
        worker.stop()
    print(
        f"\nSentinel failover (kill -9 of the primary, down-after {1000} ms, ?wait={wait}): "
        f"{report['confirmed']} publishes confirmed, {report['refused']} refused meanwhile; "
        f"producer resumed {report['producer']:.2f} s and worker {report['worker']:.2f} s "
        f"after the kill; lost {report['lost']}, ran twice {report['duplicated']}; "
        f"seconds after the kill: {report['phases']}"
    )
    if wait:  # confirmed with WAIT 1: on a replica before delay() returned
        assert report["lost"] == 0
    # Acks the dead primary had not passed on: at most the worker's slots (20), what it
    # claimed ahead (10) and a batch of acks in flight.
    assert report["duplicated"] <= 50
    assert report["worker"] < 30


async def _fail_over_under_load(group: SentinelGroup, cwd: Path, wait: int) -> dict[str, Any]:
    url = group.url(query=f"wait={wait}&wait_timeout=2")
    async with App("producer", broker=url, set_as_current=False) as producer:

        async def kill() -> None:
            group.kill_primary()
            await group.wait_failover()

        return await fail_over_under_load(producer, cwd, kill)
