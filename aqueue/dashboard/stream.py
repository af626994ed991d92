"""Live updates as server-sent events: `GET /stream/tasks`, `/stream/workers`, `/stream/queues`.

Each event's data is one line of JSON. Tasks stream as they change (`{"id", "html"}`, the
task's table row); workers and queues have no change notification of their own, so their
tables are sampled every `Context.refresh` seconds (`{"html"}`, the table's rows). A comment
line every 15 s keeps proxies from closing an idle stream.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable

import anyio
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from . import pages
from .context import Context, context_of
from .views import queue_rows

__all__ = ["stream"]

KEEPALIVE = 15.0
HEADERS = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}


def _data(payload: dict[str, str]) -> str:
    return f"data: {json.dumps(payload)}\n\n"


async def _tasks(context: Context) -> AsyncIterator[str]:
    yield ": live\n\n"
    async with context.board.subscribe() as changes:
        while True:
            with anyio.move_on_after(KEEPALIVE) as idle:
                row = await changes.receive()
            if idle.cancelled_caught:
                yield ": keepalive\n\n"
                continue
            yield _data({"id": row.id, "html": pages.task_row(row)})


async def _workers(context: Context) -> str:
    return pages.worker_rows(await context.worker_stats(), context.board.workers)


async def _sampled(
    context: Context, render: Callable[[Context], Awaitable[str]]
) -> AsyncIterator[str]:
    yield ": live\n\n"
    while True:
        yield _data({"html": await render(context)})
        await anyio.sleep(context.refresh)


async def stream(request: Request) -> Response:
    """Answer with the server-sent events of one live page."""
    context = context_of(request)
    what = request.path_params["what"]
    if what == "tasks":
        body = _tasks(context)
    elif what == "workers":
        body = _sampled(context, _workers)
    elif what == "queues":
        body = _sampled(context, queue_rows)
    else:
        return Response("no such stream", 404)
    return StreamingResponse(body, media_type="text/event-stream", headers=HEADERS)
