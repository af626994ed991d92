"""aqueue in a FastAPI app, on Redis: enqueue from an endpoint, await the result in another.

    pip install "aqueue-tasks[redis,uvloop]" fastapi "uvicorn[standard]"
    export AQUEUE_BROKER_URL=redis://localhost:6379/0
    cd examples
    aqueue worker fastapi_app:tasks_app -l INFO            # the worker, in its own process
    uvicorn fastapi_app:api --timeout-graceful-shutdown 5  # the web app

    curl -X POST localhost:8000/add -H 'content-type: application/json' -d '{"x": 2, "y": 3}'
    curl 'localhost:8000/tasks/<task_id>/result?timeout=5'
    curl localhost:8000/tasks/<task_id>

The app's connections (broker, and results in the same Redis) open once, in the lifespan, and
close at shutdown. Waiting for a result holds no connection of its own: every waiting request
of the process shares one pub/sub connection, so thousands of requests can wait at once.

Input is checked before anything is queued: `x` and `y` are whole numbers within +-2**62 (their
sum fits the 64 bits msgpack carries), `timeout` a number of seconds >= 0 (NaN is refused),
each a 422 with the reason. A wait is capped at `MAX_WAIT` seconds (so `timeout=inf` is 60 s)
and ends as soon as the client goes away. uvicorn waits for requests in flight before it
shuts down; `--timeout-graceful-shutdown` bounds that wait (otherwise up to `MAX_WAIT`).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from typing import Annotated, Any, TypeVar

import anyio
from fastapi import FastAPI, HTTPException, Query, Request
from pydantic import BaseModel, Field

from aqueue import App, ResultTimeout

T = TypeVar("T")

#: The longest a request waits for a result, whatever `timeout` it asks for.
MAX_WAIT = 60.0

#: Arguments stay within 62 bits, so that their sum fits msgpack's 64-bit integers.
Operand = Annotated[int, Field(ge=-(2**62), le=2**62)]

tasks_app = App(
    "fastapi_app", broker=os.environ.get("AQUEUE_BROKER_URL", "redis://localhost:6379/0")
)


@tasks_app.task(name="fastapi_app.add")
async def add(x: int, y: int) -> int:
    """Runs on the worker, not in the web process."""
    return x + y


@asynccontextmanager
async def lifespan(_: FastAPI) -> AsyncIterator[None]:
    async with tasks_app:  # connect at startup, close at shutdown
        yield


api = FastAPI(title="aqueue + FastAPI", lifespan=lifespan)


class AddRequest(BaseModel):
    x: Operand
    y: Operand


@api.post("/add", status_code=202)
async def enqueue_add(request: AddRequest) -> dict[str, str]:
    """Queue add(x, y) and answer at once with the task id."""
    result = await add.delay(request.x, request.y)
    return {"task_id": result.id}


@api.get("/tasks/{task_id}/result")
async def task_result(
    task_id: str,
    request: Request,
    timeout: Annotated[float, Query(ge=0)] = 10.0,  # noqa: ASYNC109 - the HTTP API's name
) -> dict[str, Any]:
    """Wait up to `timeout` seconds (at most MAX_WAIT) for the result; 504 if it is not there."""
    wait = min(timeout, MAX_WAIT)
    result = tasks_app.AsyncResult(task_id)
    try:
        value = await unless_disconnected(request, result.get(timeout=wait, propagate=False))
    except ResultTimeout:
        raise HTTPException(504, f"task {task_id} gave no result within {wait} s") from None
    if isinstance(value, Exception):
        return {"task_id": task_id, "state": "FAILURE", "error": repr(value)}
    return {"task_id": task_id, "state": "SUCCESS", "result": value}


async def unless_disconnected(request: Request, waiting: Awaitable[T]) -> T:
    """Await `waiting` unless the client disconnects first (then a 499, which it never sees)."""
    outcome: list[T] = []
    failure: list[Exception] = []

    async def wait() -> None:
        try:
            outcome.append(await waiting)
        except Exception as exc:  # raised below as itself, not inside an exception group
            failure.append(exc)
        group.cancel_scope.cancel()

    async with anyio.create_task_group() as group:
        group.start_soon(wait)
        await disconnected(request)
        group.cancel_scope.cancel()
    if failure:
        raise failure[0]
    if not outcome:
        raise HTTPException(499, "the client closed the request")
    return outcome[0]


async def disconnected(request: Request) -> None:
    """Return when the client goes away: a GET has no body, so the next ASGI message is that."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


@api.get("/tasks/{task_id}")
async def task_state(task_id: str) -> dict[str, str]:
    """The task's state: PENDING (unknown or queued), STARTED, SUCCESS, FAILURE..."""
    return {"task_id": task_id, "state": await tasks_app.AsyncResult(task_id).state()}
