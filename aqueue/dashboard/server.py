"""The dashboard's ASGI app: `create_app(app)`, served by `aqueue dashboard` (uvicorn).

Its lifespan follows the app's events (a task of its own, stopped at shutdown) into the
board the pages read; the routes are the pages (`views`), the actions (`actions`), the live
streams (`stream`) and the static script and stylesheet shipped in the package.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import anyio
from anyio.abc import TaskStatus
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from ..urls import redact_text
from . import actions, views
from .context import Context
from .guard import Guard
from .stream import stream

if TYPE_CHECKING:
    from ..app import App

__all__ = ["create_app"]

STATIC = Path(__file__).parent / "static"
RETRY = 2.0  # seconds before following the events again after their stream broke

logger = logging.getLogger("aqueue.dashboard")


async def _follow(
    context: Context, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED
) -> None:
    """Follow the app's events into the board; if the stream breaks later, say so and retry.

    The first attempt must work (the dashboard does not start on a broker it cannot reach).
    """
    board = context.board
    while True:
        try:
            await board.follow(context.app, task_status=task_status)
        except Exception as exc:
            if not board.following:
                raise
            logger.warning("the dashboard lost the events: %s", redact_text(str(exc)))
        task_status = anyio.TASK_STATUS_IGNORED
        await anyio.sleep(RETRY)  # then subscribe again


def create_app(
    app: App,
    *,
    auth: tuple[str, str] | None = None,
    token: str | None = None,
    refresh: float = 2.0,
) -> Starlette:
    """Return the dashboard of `app` as an ASGI app (Basic `auth` or `token` protect it)."""
    context = Context(app, refresh=refresh)

    @asynccontextmanager
    async def lifespan(web: Starlette) -> AsyncIterator[None]:
        async with anyio.create_task_group() as group:
            await group.start(_follow, context)
            yield
            group.cancel_scope.cancel()

    routes = [
        Route("/", views.workers_page),
        Route("/queues", views.queues_page),
        Route("/queues/{name}", views.queue_page),
        Route("/queues/{name}/purge", actions.purge_queue, methods=["POST"]),
        Route("/queues/{name}/dead/retry", actions.retry_dead, methods=["POST"]),
        Route("/tasks", views.tasks_page),
        Route("/tasks/{task_id}", views.task_page),
        Route("/tasks/{task_id}/revoke", actions.revoke_task, methods=["POST"]),
        Route("/rate-limit", actions.rate_limit, methods=["POST"]),
        Route("/stream/{what}", stream),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    web = Starlette(
        routes=routes,
        lifespan=lifespan,
        middleware=[Middleware(Guard, basic=auth, token=token)],
    )
    web.state.dashboard = context
    return web
