"""The result backend contract: every driver passes these."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import anyio
import pytest

from aqueue import App, ResultBackend, StoredResult, states
from aqueue.drivers import create_backend

pytestmark = pytest.mark.both_loops  # asyncio and uvloop (tests/helpers/loops.py)


@pytest.fixture
async def backend(broker_url: str) -> AsyncIterator[ResultBackend]:
    """The broker's default result store (rpc:// for AMQP), as `App` would pick it."""
    url = App(broker=broker_url, set_as_current=False).backend_url
    assert url is not None
    async with create_backend(url, {}) as backend:
        yield backend


async def store(backend: ResultBackend, task_id: str, state: str, payload: bytes) -> None:
    """Store as a worker does: with the headers of the message that asked for it."""
    await backend.store(task_id, state, payload, ttl=60, headers=backend.message_headers())


@pytest.fixture
def task_id() -> str:
    return uuid.uuid4().hex


async def test_store_fetch_forget(backend: ResultBackend, task_id: str) -> None:
    assert await backend.fetch(task_id) is None
    await store(backend, task_id, states.SUCCESS, b"payload")
    assert await backend.fetch(task_id) == StoredResult(states.SUCCESS, b"payload")
    await store(backend, task_id, states.FAILURE, b"other")
    assert await backend.fetch(task_id) == StoredResult(states.FAILURE, b"other")
    await backend.forget(task_id)
    assert await backend.fetch(task_id) is None


async def test_expired_results_are_gone(backend: ResultBackend, task_id: str) -> None:
    await backend.store(task_id, states.SUCCESS, b"old", ttl=0, headers=backend.message_headers())
    assert await backend.fetch(task_id) is None


async def test_wait_returns_a_stored_result_at_once(backend: ResultBackend, task_id: str) -> None:
    await store(backend, task_id, states.SUCCESS, b"done")
    with anyio.fail_after(5):
        assert await backend.wait(task_id) == StoredResult(states.SUCCESS, b"done")
    await backend.forget(task_id)


async def test_wait_wakes_on_a_ready_state_only(backend: ResultBackend, task_id: str) -> None:
    got: list[StoredResult] = []

    async def waiter() -> None:
        got.append(await backend.wait(task_id))

    with anyio.fail_after(5):
        async with anyio.create_task_group() as group:
            group.start_soon(waiter)
            await anyio.wait_all_tasks_blocked()
            await store(backend, task_id, states.STARTED, b"running")
            await anyio.wait_all_tasks_blocked()
            assert got == []
            await store(backend, task_id, states.FAILURE, b"boom")
    assert got == [StoredResult(states.FAILURE, b"boom")]
    await backend.forget(task_id)


async def test_many_waiters_all_wake(backend: ResultBackend) -> None:
    ids = [uuid.uuid4().hex for _ in range(200)]
    got: dict[str, bytes] = {}

    async def waiter(task_id: str) -> None:
        got[task_id] = (await backend.wait(task_id)).payload

    with anyio.fail_after(10):
        async with anyio.create_task_group() as group:
            for task_id in ids:
                group.start_soon(waiter, task_id)
            await anyio.wait_all_tasks_blocked()
            for task_id in ids:
                await store(backend, task_id, states.SUCCESS, task_id.encode())
    assert got == {task_id: task_id.encode() for task_id in ids}
    for task_id in ids:
        await backend.forget(task_id)
