"""aqueue in a FastAPI app, on Redis: enqueue from an endpoint, await the result in another.

    pip install "aqueue-tasks[redis]" fastapi uvicorn
    export AQUEUE_BROKER_URL=redis://localhost:6379/0
    cd examples
    aqueue worker fastapi_app:tasks_app -l INFO     # the worker, in its own process
    uvicorn fastapi_app:api                          # the web app

    curl -X POST localhost:8000/add -H 'content-type: application/json' -d '{"x": 2, "y": 3}'
    curl 'localhost:8000/tasks/<task_id>/result?timeout=5'
    curl localhost:8000/tasks/<task_id>

The app's connections (broker, and results in the same Redis) open once, in the lifespan, and
close at shutdown. Waiting for a result holds no connection of its own: every waiting request
of the process shares one pub/sub connection, so thousands of requests can wait at once.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, HTTPException
from pydantic import BaseModel

from aqueue import App, ResultTimeout

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
    x: int
    y: int


@api.post("/add", status_code=202)
async def enqueue_add(request: AddRequest) -> dict[str, str]:
    """Queue add(x, y) and answer at once with the task id."""
    result = await add.delay(request.x, request.y)
    return {"task_id": result.id}


@api.get("/tasks/{task_id}/result")
async def task_result(task_id: str, timeout: float = 10.0) -> dict[str, Any]:  # noqa: ASYNC109
    """Wait up to `timeout` seconds for the result; 504 if it is not there by then."""
    result = tasks_app.AsyncResult(task_id)
    try:
        value = await result.get(timeout=timeout, propagate=False)
    except ResultTimeout:
        raise HTTPException(504, f"task {task_id} gave no result within {timeout} s") from None
    if isinstance(value, Exception):
        return {"task_id": task_id, "state": "FAILURE", "error": repr(value)}
    return {"task_id": task_id, "state": "SUCCESS", "result": value}


@api.get("/tasks/{task_id}")
async def task_state(task_id: str) -> dict[str, str]:
    """The task's state: PENDING (unknown or queued), STARTED, SUCCESS, FAILURE..."""
    return {"task_id": task_id, "state": await tasks_app.AsyncResult(task_id).state()}
