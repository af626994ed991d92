"""The rpc:// result backend on a real RabbitMQ, and a Redis result backend behind RabbitMQ.

Results go back to the sending process's reply queue; these check that path between two
backends (as a worker and a caller), the defaults, reconnects, and the limits the docstring of
`aqueue.drivers.amqp.rpc` states.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import anyio
import pytest

from aqueue import App, Worker, states
from aqueue.drivers import create_backend
from aqueue.drivers.amqp.rpc import RPCBackend
from tests.helpers import service_amqp, service_redis
from tests.helpers.drivers import service_unavailable

pytestmark = pytest.mark.both_loops  # asyncio and uvloop (tests/helpers/loops.py)


@pytest.fixture
async def url() -> AsyncIterator[str]:
    if reason := await service_amqp.unreachable():
        service_unavailable(reason)
    url = service_amqp.make_url(uuid.uuid4().hex[:10])
    yield url
    await service_amqp.cleanup(url)


async def test_rpc_results_travel_over_rabbitmq_to_the_sender(url: str) -> None:
    options = {"broker_url": url}
    async with RPCBackend("rpc://", options) as sender, RPCBackend("rpc://", options) as worker:
        assert sender.message_headers() == {"reply_to": sender.reply_queue}
        assert sender.reply_queue.startswith(service_amqp.prefix_of(url))
        task_ids = [uuid.uuid4().hex for _ in range(50)]
        got: dict[str, bytes] = {}

        async def wait(task_id: str) -> None:
            got[task_id] = (await sender.wait(task_id)).payload

        with anyio.fail_after(10):
            async with anyio.create_task_group() as group:
                for task_id in task_ids:
                    group.start_soon(wait, task_id)
                await anyio.wait_all_tasks_blocked()
                headers = sender.message_headers()
                for task_id in task_ids:
                    await worker.store(task_id, states.STARTED, b"", 60, headers=headers)
                    await worker.store(
                        task_id, states.SUCCESS, task_id.encode(), 60, headers=headers
                    )
        assert got == {task_id: task_id.encode() for task_id in task_ids}
        # Only the sender sees them.
        assert await worker.fetch(task_ids[0]) is None
        # No reply_to (a task sent without rpc): dropped, no error.
        await worker.store("orphan", states.SUCCESS, b"", 60, headers={})
        await worker.store("orphan", states.SUCCESS, b"", 60, headers=None)


async def test_rpc_is_the_default_backend_of_an_amqp_broker(url: str) -> None:
    app = App("tests", broker=url, set_as_current=False)

    @app.task
    async def mul(x: int, y: int) -> int:
        return x * y

    async with app:
        assert isinstance(await app.result_backend(), RPCBackend)
        result = await mul.delay(6, 7)
        await Worker(app, burst=True).run()
        assert await result.get(timeout=10) == 42


async def test_rpc_without_a_broker_url_uses_the_environment(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AQUEUE_BROKER_URL", raising=False)
    monkeypatch.setenv("AQUEUE_TEST_AMQP_URL", url)
    backend = create_backend("rpc://", {})
    assert isinstance(backend, RPCBackend)
    assert backend.settings.prefix == service_amqp.prefix_of(url)


async def test_redis_results_with_a_rabbitmq_broker(url: str) -> None:
    if reason := await service_redis.unreachable():
        service_unavailable(reason)
    results = service_redis.make_url(uuid.uuid4().hex[:10])
    app = App("tests", broker=url, backend=results, set_as_current=False)

    @app.task
    async def add(x: int, y: int) -> int:
        return x + y

    try:
        async with app:
            result = await add.delay(20, 22)
            await Worker(app, burst=True).run()
            assert await result.get(timeout=10) == 42
            # Unlike rpc://, any process sees it.
            other = App("other", broker=url, backend=results, set_as_current=False)
            async with other:
                assert await other.AsyncResult(result.id).get(timeout=10) == 42
    finally:
        await service_redis.cleanup(results)


async def test_rpc_consumes_again_after_its_connection_dropped(url: str) -> None:
    options = {"broker_url": url}
    async with RPCBackend("rpc://", options) as sender, RPCBackend("rpc://", options) as worker:
        await (await sender.link.connection()).close()
        with anyio.fail_after(10):
            await sender.listening()  # the same reply queue, declared again
            task_id = uuid.uuid4().hex
            headers = sender.message_headers()
            await worker.store(task_id, states.SUCCESS, b"back", 60, headers=headers)
            assert (await sender.wait(task_id)).payload == b"back"
