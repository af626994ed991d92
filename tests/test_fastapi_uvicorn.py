"""examples/fastapi_app.py under a real `uvicorn`, on uvloop and on asyncio, hit over HTTP.

uvicorn and the worker are processes of their own, run from examples/ as the example's
docstring says, against the test Redis (`AQUEUE_TEST_REDIS_URL`) under a key prefix of the
test's own. uvicorn runs at `--log-level trace`, so the test synchronises on the ASGI messages
it logs (`Receive {'type': 'http.request'`: a request waits in the endpoint), never on a clock.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import anyio
import pytest

from tests.helpers.processes import STEP, Lines, free_port, spawn

pytest.importorskip("fastapi", reason="the FastAPI example needs fastapi (the test extra)")
pytest.importorskip("uvicorn", reason="the uvicorn test needs uvicorn (the test extra)")
pytest.importorskip("uvloop", reason="the uvicorn test needs uvloop (the test extra)")
httpx = pytest.importorskip("httpx", reason="the FastAPI example test needs httpx")

pytestmark = pytest.mark.slow

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"

#: How soon uvicorn must be gone after SIGTERM (a request capped at MAX_WAIT would hold it 60 s).
PROMPT = 15.0

WAITING = "Receive {'type': 'http.request'"  # the result endpoint now waits for a disconnect


def environment(url: str) -> dict[str, str]:
    env = dict(os.environ, AQUEUE_BROKER_URL=url, PYTHONUNBUFFERED="1")
    env.pop("AQUEUE_RESULT_BACKEND", None)
    return env


class Uvicorn:
    """`uvicorn fastapi_app:api --loop LOOP` on a free port; its log, and how to stop it."""

    def __init__(self, lines: Lines, port: int) -> None:
        self.lines = lines
        self.base_url = f"http://127.0.0.1:{port}"

    async def terminate(self) -> float:
        """SIGTERM; return how many seconds uvicorn took to exit (cleanly, or the test fails)."""
        return await anyio.to_thread.run_sync(self._terminate)

    def _terminate(self) -> float:
        started = time.monotonic()
        code = self.lines.stop(signal.SIGTERM)
        took = time.monotonic() - started
        # uvicorn ends by re-raising the signal it handled, once it has shut down.
        assert code in (0, -signal.SIGTERM), self.lines.output
        assert "Application shutdown complete." in self.lines.output  # the lifespan closed
        return took


@pytest.fixture
def uvicorn(shared_url: str) -> Iterator[Callable[..., Uvicorn]]:
    """Start uvicorn processes (`start(loop, *options)`); each is killed at the end if still up."""
    started: list[Lines] = []

    def start(loop: str, *options: str) -> Uvicorn:
        port = free_port()
        command = [sys.executable, "-m", "uvicorn", "fastapi_app:api", "--loop", loop]
        command += ["--host", "127.0.0.1", "--port", str(port), "--log-level", "trace"]
        lines = spawn([*command, *options], cwd=EXAMPLES, env=environment(shared_url))
        started.append(lines)
        return Uvicorn(lines, port)

    yield start
    for lines in started:
        lines.stop()


async def serving(start: Callable[..., Uvicorn], loop: str, *options: str) -> Uvicorn:
    server = start(loop, *options)
    await server.lines.wait_line("Application startup complete.")
    await server.lines.wait_line("Uvicorn running on")
    return server


@pytest.fixture
async def worker(shared_url: str) -> AsyncIterator[Lines]:
    """`aqueue worker fastapi_app:tasks_app` (on its default loop: uvloop, installed here)."""
    command = [sys.executable, "-m", "aqueue", "worker", "fastapi_app:tasks_app", "-l", "INFO"]
    lines = spawn(command, cwd=EXAMPLES, env=environment(shared_url))
    try:
        await lines.wait_line("ready.")
        yield lines
    finally:
        lines.stop()


LOOPS = pytest.mark.parametrize("loop", ["uvloop", "asyncio"])


@LOOPS
async def test_the_example_serves_over_http(
    loop: str, uvicorn: Callable[..., Uvicorn], worker: Lines
) -> None:
    server = await serving(uvicorn, loop)
    async with httpx.AsyncClient(base_url=server.base_url, timeout=STEP) as client:
        posted = await client.post("/add", json={"x": 2**62, "y": 2**62})
        assert posted.status_code == 202, posted.text
        task_id = posted.json()["task_id"]
        answer = await client.get(f"/tasks/{task_id}/result", params={"timeout": 20})
        assert answer.json() == {"task_id": task_id, "state": "SUCCESS", "result": 2**63}
        state = await client.get(f"/tasks/{task_id}")
        assert state.json() == {"task_id": task_id, "state": "SUCCESS"}
        too_big = await client.post("/add", json={"x": 2**64, "y": 1})
        assert too_big.status_code == 422
        nan = await client.get(f"/tasks/{task_id}/result", params={"timeout": "nan"})
        assert nan.status_code == 422
    await worker.wait_line(f"Task fastapi_app.add[{task_id}] succeeded")
    assert await server.terminate() < PROMPT


@LOOPS
async def test_shutdown_is_prompt_while_a_request_waits(
    loop: str, uvicorn: Callable[..., Uvicorn]
) -> None:
    """With --timeout-graceful-shutdown (as the example says), a request waiting for a result
    that never comes (no worker) is cancelled, and the app still closes cleanly."""
    server = await serving(uvicorn, loop, "--timeout-graceful-shutdown", "1")
    endings: list[str] = []

    async def wait_forever(client: httpx.AsyncClient) -> None:
        # uvicorn cancels the request's task; if the connection is still open when the task has
        # unwound, uvicorn answers 500, otherwise the client sees the connection closed.
        try:
            response = await client.get("/tasks/no-such-task/result", params={"timeout": "inf"})
        except httpx.TransportError:
            endings.append("closed")
        else:
            endings.append(str(response.status_code))

    async with (
        httpx.AsyncClient(base_url=server.base_url, timeout=STEP) as client,
        anyio.create_task_group() as group,
    ):
        group.start_soon(wait_forever, client)
        await server.lines.wait_line(WAITING)
        took = await server.terminate()
    assert took < PROMPT
    assert "Cancel 1 running task(s), timeout graceful shutdown exceeded" in server.lines.output
    assert "Application shutdown complete." in server.lines.output
    assert endings in (["closed"], ["500"])


@LOOPS
async def test_a_client_that_goes_away_ends_its_wait(
    loop: str, uvicorn: Callable[..., Uvicorn]
) -> None:
    """No graceful-shutdown timeout here: the wait must end because the client left."""
    server = await serving(uvicorn, loop)
    port = int(server.base_url.rsplit(":", 1)[1])
    request = b"GET /tasks/no-such-task/result?timeout=inf HTTP/1.1\r\nHost: test\r\n\r\n"
    with socket.create_connection(("127.0.0.1", port), timeout=STEP) as sock:
        sock.sendall(request)
        await server.lines.wait_line(WAITING)
    await server.lines.wait_line("Receive {'type': 'http.disconnect'}")
    await server.lines.wait_line("] Completed")  # the endpoint returned (a 499 nobody reads)
    assert await server.terminate() < PROMPT
    assert "Waiting for connections to close" not in server.lines.output
