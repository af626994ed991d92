"""examples/fastapi_app.py end to end: httpx against the ASGI app (its lifespan run), a real
worker process, and a real Redis."""

from __future__ import annotations

import importlib.util
import os
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from types import ModuleType

import anyio
import pytest

from tests.helpers import service_redis
from tests.helpers.drivers import service_unavailable
from tests.helpers.processes import Lines, spawn

pytest.importorskip("fastapi", reason="the FastAPI example needs fastapi (the test extra)")
httpx = pytest.importorskip("httpx", reason="the FastAPI example test needs httpx")

pytestmark = [pytest.mark.slow, pytest.mark.both_loops]

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@pytest.fixture
async def redis_url() -> AsyncIterator[str]:
    if reason := await service_redis.unreachable():
        service_unavailable(reason)
    url = service_redis.make_url(uuid.uuid4().hex[:10])
    yield url
    await service_redis.cleanup(url)


@pytest.fixture
def example(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """The example module, imported with the test's Redis as its broker."""
    monkeypatch.setenv("AQUEUE_BROKER_URL", redis_url)
    spec = importlib.util.spec_from_file_location("fastapi_app", EXAMPLES / "fastapi_app.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "fastapi_app", module)  # as an import would (pydantic)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
async def worker(redis_url: str) -> AsyncIterator[Lines]:
    """`aqueue worker fastapi_app:tasks_app`, run from examples/ as its docstring says."""
    env = dict(os.environ, AQUEUE_BROKER_URL=redis_url, PYTHONUNBUFFERED="1")
    env.pop("AQUEUE_RESULT_BACKEND", None)
    command = [sys.executable, "-m", "aqueue", "worker", "fastapi_app:tasks_app", "-l", "INFO"]
    lines = spawn(command, cwd=EXAMPLES, env=env)
    try:
        await lines.wait_line("ready.")
        yield lines
    finally:
        lines.stop()


@pytest.fixture
async def client(example: ModuleType) -> AsyncIterator[httpx.AsyncClient]:
    """An httpx client on the ASGI app, inside the app's lifespan."""
    api = example.api
    async with api.router.lifespan_context(api):
        transport = httpx.ASGITransport(app=api)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
            yield http


async def test_enqueue_then_await_the_result(client: httpx.AsyncClient, worker: Lines) -> None:
    with anyio.fail_after(30):
        posted = await client.post("/add", json={"x": 2, "y": 3})
        assert posted.status_code == 202
        task_id = posted.json()["task_id"]
        answer = await client.get(f"/tasks/{task_id}/result", params={"timeout": 10})
    assert answer.status_code == 200
    assert answer.json() == {"task_id": task_id, "state": "SUCCESS", "result": 5}
    state = await client.get(f"/tasks/{task_id}")
    assert state.json() == {"task_id": task_id, "state": "SUCCESS"}
    await worker.wait_line(f"Task fastapi_app.add[{task_id}] succeeded")


async def test_many_requests_wait_at_once(client: httpx.AsyncClient, worker: Lines) -> None:
    ids = [(await client.post("/add", json={"x": i, "y": i})).json()["task_id"] for i in range(50)]
    answers: dict[str, int] = {}

    async def collect(task_id: str) -> None:
        reply = await client.get(f"/tasks/{task_id}/result", params={"timeout": 20})
        answers[task_id] = reply.json()["result"]

    with anyio.fail_after(30):
        async with anyio.create_task_group() as group:
            for task_id in ids:
                group.start_soon(collect, task_id)
    assert [answers[task_id] for task_id in ids] == [2 * i for i in range(50)]


async def test_no_result_in_time_is_a_504(client: httpx.AsyncClient) -> None:
    posted = await client.post("/add", json={"x": 1, "y": 1})  # no worker runs it
    task_id = posted.json()["task_id"]
    with anyio.fail_after(10):
        answer = await client.get(f"/tasks/{task_id}/result", params={"timeout": 0.2})
    assert answer.status_code == 504
    assert "no result within 0.2 s" in answer.json()["detail"]
    state = await client.get(f"/tasks/{task_id}")
    assert state.json()["state"] == "PENDING"


async def test_bad_input_is_a_422(client: httpx.AsyncClient) -> None:
    reply = await client.post("/add", json={"x": "two"})
    assert reply.status_code == 422


@pytest.mark.parametrize(
    "body",
    [
        {"x": 2**62 + 1, "y": 0},
        {"x": 0, "y": -(2**62) - 1},
        {"x": 2**64, "y": 1},  # was a 500: msgpack cannot carry it
        {"x": 1.5, "y": 1},
    ],
)
async def test_operands_beyond_62_bits_are_a_422(
    client: httpx.AsyncClient, body: dict[str, object]
) -> None:
    reply = await client.post("/add", json=body)
    assert reply.status_code == 422, reply.text


@pytest.mark.parametrize("seconds", ["nan", "NaN", "-1", "-inf", "soon"])
async def test_a_timeout_that_is_not_seconds_is_a_422(
    client: httpx.AsyncClient, seconds: str
) -> None:
    reply = await client.get("/tasks/some-id/result", params={"timeout": seconds})
    assert reply.status_code == 422, reply.text  # NaN was a 500
    assert reply.json()["detail"][0]["loc"] == ["query", "timeout"]


@pytest.mark.parametrize("seconds", ["inf", "1e400", "1e9"])
async def test_long_waits_are_capped(
    example: ModuleType,
    client: httpx.AsyncClient,
    monkeypatch: pytest.MonkeyPatch,
    seconds: str,
) -> None:
    monkeypatch.setattr(example, "MAX_WAIT", 0.2)  # 60 s in the example
    posted = await client.post("/add", json={"x": 1, "y": 1})  # no worker runs it
    task_id = posted.json()["task_id"]
    with anyio.fail_after(10):
        answer = await client.get(f"/tasks/{task_id}/result", params={"timeout": seconds})
    assert answer.status_code == 504
    assert "no result within 0.2 s" in answer.json()["detail"]


async def test_the_wait_ends_when_the_client_disconnects(
    example: ModuleType, client: httpx.AsyncClient
) -> None:
    """The ASGI app called directly: after the request, the next message is a disconnect."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": "/tasks/no-such-task/result",
        "raw_path": b"/tasks/no-such-task/result",
        "query_string": b"timeout=inf",
        "root_path": "",
        "headers": [(b"host", b"test")],
        "server": ("test", 80),
        "client": ("127.0.0.1", 1),
    }
    incoming = [{"type": "http.disconnect"}, {"type": "http.request", "body": b""}]
    sent: list[dict[str, object]] = []

    async def receive() -> dict[str, object]:
        return incoming.pop()

    async def send(message: dict[str, object]) -> None:
        sent.append(message)

    with anyio.fail_after(10):  # waits forever (60 s, capped) unless the disconnect ends it
        await example.api(scope, receive, send)
    assert sent[0]["status"] == 499
    assert not incoming
