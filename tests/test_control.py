"""The control plane: commands to live workers, revocation, runtime rate limits."""

from __future__ import annotations

import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest

from aqueue import (
    App,
    ConfigurationError,
    NoReply,
    NotRegistered,
    TaskRevoked,
    Worker,
    control,
    states,
)
from aqueue.control import require_replies
from tests.contract.test_mailbox import MAILBOX_DRIVERS
from tests.helpers.drivers import MakeApp

pytestmark = pytest.mark.both_loops  # asyncio and uvloop (tests/helpers/loops.py)


@pytest.fixture
def make(make_app: MakeApp, broker_url: str) -> MakeApp:
    if not broker_url.startswith(MAILBOX_DRIVERS):
        pytest.skip("this driver has no mailbox yet")
    return make_app


@asynccontextmanager
async def running(app: App, **options: Any) -> AsyncIterator[Worker]:
    async with anyio.create_task_group() as group:
        worker: Worker = await group.start(Worker(app, **options).run)
        yield worker
        worker.stop(now=True)


async def test_ping_and_inspect(make: MakeApp) -> None:
    app = make()
    started = anyio.Event()
    release = anyio.Event()

    @app.task
    async def hold(tag: str) -> str:
        started.set()
        await release.wait()
        return tag

    result = await hold.delay("x")
    async with running(app, hostname="w1@test") as worker:
        with anyio.fail_after(10):
            await started.wait()
        replies = await app.control.ping(timeout=2, destination=["w1@test"])
        assert [(r.hostname, r.ok, r.result) for r in replies] == [("w1@test", True, "pong")]
        inspect = app.control.inspect(timeout=2, destination=["w1@test"])
        assert await inspect.registered() == {"w1@test": [hold.name]}
        (active,) = (await inspect.active())["w1@test"]
        assert (active["id"], active["name"], active["args"]) == (result.id, hold.name, ["x"])
        assert (await inspect.stats())["w1@test"]["running"] == 1
        assert await inspect.scheduled() == {"w1@test": []}
        assert worker.hostname == "w1@test"
        release.set()
        assert await result.get(timeout=5) == "x"


async def test_no_reply_from_a_missing_worker(make: MakeApp) -> None:
    app = make()
    replies = await app.control.ping(timeout=0.2, destination=["nobody@nowhere"])
    assert replies == []
    with pytest.raises(NoReply, match=r"no reply from nobody@nowhere within 0\.2s"):
        require_replies(replies, ["nobody@nowhere"], 0.2)
    with pytest.raises(NoReply, match="no worker replied"):
        require_replies([], None, 0.2)


async def test_revoke_a_queued_task(make: MakeApp) -> None:
    app = make()
    ran: list[int] = []

    @app.task
    async def job(n: int) -> int:
        ran.append(n)
        return n

    doomed, kept = await job.delay(1), await job.delay(2)
    await doomed.revoke()
    assert await doomed.state() == states.REVOKED
    with anyio.fail_after(30):
        await Worker(app, burst=True).run()  # a worker started after the revoke honours it
    assert ran == [2]
    assert await kept.get(timeout=5) == 2
    with pytest.raises(TaskRevoked, match="revoked"):
        await doomed.get(timeout=5)


async def test_revoke_reaches_a_running_worker(make: MakeApp) -> None:
    app = make()
    ran: list[int] = []
    first_started = anyio.Event()
    release = anyio.Event()

    @app.task
    async def job(n: int) -> None:
        ran.append(n)
        if n == 1:
            first_started.set()
            await release.wait()

    await job.delay(1)
    async with running(app, concurrency=1, hostname="w@t") as worker:
        with anyio.fail_after(10):
            await first_started.wait()
        second = await job.delay(2)  # waits behind the first: the one slot is busy
        replies = await app.control.revoke(second.id, timeout=0.5)
        assert [r.result for r in replies] == [f"revoked {second.id}"]
        assert second.id in worker.revoked
        release.set()
        with pytest.raises(TaskRevoked):
            await second.get(timeout=10)
    assert ran == [1]


async def test_revoke_a_list_in_batches(make: MakeApp, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(control, "REVOKE_BATCH", 3)  # 7 ids: three commands
    app = make()
    ran: list[int] = []

    @app.task
    async def job(n: int) -> None:
        ran.append(n)

    sent = [await job.delay(n) for n in range(7)]
    ids = [result.id for result in sent]
    async with running(app, queues=["elsewhere"], hostname="w@t") as worker:
        replies = await app.control.revoke(ids, timeout=2)  # all in by then
        assert sorted(r.result for r in replies) == ["revoked 1 tasks"] + ["revoked 3 tasks"] * 2
        assert all(task_id in worker.revoked for task_id in ids)
    for result in sent:
        with pytest.raises(TaskRevoked):
            await result.get(timeout=5)
    later = Worker(app, burst=True)
    await later.run()  # started after the revoke: reads the kept batches
    assert all(task_id in later.revoked for task_id in ids)
    assert ran == []
    assert await app.control.revoke([], timeout=5) == []


async def test_replies_end_the_wait_once_the_destination_or_limit_answered(
    make: MakeApp, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Three live workers; each call names who must answer (or how many), and returns once
    # they did: well before its generous timeout (a correctness check, not a speed test).
    monkeypatch.setattr(control, "REVOKE_BATCH", 2)  # 5 ids: three commands
    app = make()
    timeout = 10.0

    @app.task
    async def job() -> None:
        pass

    async def timed(call: Any) -> tuple[list[str], float]:
        started = time.monotonic()
        replies = await call
        if isinstance(replies, dict):  # an inspector's {hostname: answer}
            return sorted(replies), time.monotonic() - started
        return sorted(r.hostname for r in replies), time.monotonic() - started

    async with (
        running(app, queues=["elsewhere"], hostname="w1@t") as w1,  # the jobs stay queued
        running(app, queues=["elsewhere"], hostname="w2@t") as w2,
        running(app, queues=["elsewhere"], hostname="w3@t") as w3,
    ):
        one = await job.delay()
        hosts, elapsed = await timed(
            app.control.revoke(one.id, destination=["w1@t", "w2@t"], timeout=timeout)
        )
        assert (hosts, elapsed < timeout / 2) == (["w1@t", "w2@t"], True), elapsed
        assert one.id in w1.revoked
        assert one.id in w2.revoked
        assert one.id not in w3.revoked
        # Told to two workers only: not kept for later workers, the result not marked.
        mailbox = (await app.broker()).mailbox()
        assert await mailbox.items(control.REVOKED_PREFIX) == {}
        assert await one.state() == states.PENDING

        ids = [(await job.delay()).id for _ in range(5)]
        hosts, elapsed = await timed(app.control.revoke(ids, destination=["w3@t"], timeout=timeout))
        assert (hosts, elapsed < timeout / 2) == (["w3@t"] * 3, True), elapsed
        assert all(task_id in w3.revoked for task_id in ids)

        hosts, elapsed = await timed(app.control.ping(limit=2, timeout=timeout))
        assert (len(hosts), elapsed < timeout / 2) == (2, True), elapsed
        assert set(hosts) < {"w1@t", "w2@t", "w3@t"}
        hosts, elapsed = await timed(app.control.inspect(limit=3, timeout=timeout).ping())
        assert (hosts, elapsed < timeout / 2) == (["w1@t", "w2@t", "w3@t"], True), elapsed
        hosts, elapsed = await timed(app.control.broadcast("ping", limit=1, timeout=timeout))
        assert (len(hosts), elapsed < timeout / 2) == (1, True), elapsed
    for bad in (0, -1, 1.5, True, "2"):
        with pytest.raises(ValueError, match="limit is a number of workers"):
            await app.control.ping(limit=bad, timeout=timeout)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="destination is a list of worker names"):
        await app.control.ping(destination="w1@t", timeout=timeout)


async def test_revoke_terminate_cancels_a_running_coroutine(make: MakeApp) -> None:
    app = make()
    started = anyio.Event()
    cancelled = anyio.Event()

    @app.task
    async def forever() -> None:
        started.set()
        try:
            await anyio.Event().wait()
        except anyio.get_cancelled_exc_class():
            cancelled.set()
            raise

    result = await forever.delay()
    async with running(app, hostname="w@t"):
        with anyio.fail_after(10):
            await started.wait()
        await result.revoke(terminate=True)
        with anyio.fail_after(10):
            await cancelled.wait()
        with pytest.raises(TaskRevoked, match="terminated"):
            await result.get(timeout=10)
    assert await (await app.broker()).purge("default") == 0  # not given back


async def test_rate_limit_checks_and_persists(make: MakeApp) -> None:
    app = make()

    @app.task
    async def limited() -> None: ...

    with pytest.raises(NotRegistered):
        await app.control.rate_limit("tasks.nope", "10/m", timeout=0.1)
    with pytest.raises(ConfigurationError, match="'10/x' is not a rate"):
        await app.control.rate_limit(limited.name, "10/x", timeout=0.1)
    async with running(app, hostname="w@t") as worker:
        replies = await app.control.rate_limit(limited.name, "10/m", timeout=0.5)
        scope = "global" if worker.admission and worker.admission.scope == "global" else "local"
        assert scope == ("global" if app.broker_url.startswith("redis") else "local")
        assert [r.result for r in replies] == [
            f"rate limit of {limited.name} set to 10/m ({scope})"
        ]
        assert worker.rate_limits == {limited.name: "10/m"}
    async with running(app, hostname="w2@t") as restarted:
        assert restarted.rate_limits == {limited.name: "10/m"}  # picked up at start


async def test_shutdown_stops_the_worker(make: MakeApp) -> None:
    app = make()
    async with anyio.create_task_group() as group:
        worker: Worker = await group.start(Worker(app, hostname="w@t").run)
        replies = await app.control.shutdown(timeout=2, destination=["w@t"])
        assert [r.result for r in replies] == ["shutting down"]
    assert worker.slots.used == 0


async def test_unknown_and_malformed_commands(make: MakeApp) -> None:
    app = make()
    async with running(app, hostname="w@t"):
        (reply,) = await app.control.broadcast("explode", timeout=2, destination=["w@t"])
        assert not reply.ok
        assert reply.error == "ValueError: unknown control command 'explode'"
        mailbox = (await app.broker()).mailbox()
        await mailbox.publish("control.broadcast", b"\xc1 garbage")
        replies = await app.control.ping(timeout=2, destination=["w@t"])
        assert [r.result for r in replies] == ["pong"]


async def test_terminate_raises_the_cooperative_flag_of_a_thread(make: MakeApp) -> None:
    app = make()
    started = threading.Event()
    noticed = threading.Event()

    @app.task(bind=True)
    def patient(self: Any) -> str:
        started.set()
        assert not self.is_revoked()
        for _ in range(3000):
            if self.is_revoked():
                noticed.set()
                return "stopped early"
            threading.Event().wait(0.01)  # task body: a unit of blocking work
        return "ran to the end"

    result = await patient.delay()
    async with running(app, hostname="w@t"):
        assert await anyio.to_thread.run_sync(started.wait, 10)
        await result.revoke(terminate=True)
        assert await anyio.to_thread.run_sync(noticed.wait, 10)
        with pytest.raises(TaskRevoked, match="terminated"):
            await result.get(timeout=10)
