"""The dashboard's ASGI app: `create_app(app)`, served by `aqueue dashboard` (uvicorn).

Its lifespan follows the app's events (a task of its own, stopped at shutdown) into the
board the pages read; the routes are the pages (`views`), the actions (`actions`), the live
streams (`stream`) and the static script and stylesheet shipped in the package.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import anyio
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from . import actions, views
from .context import Context
from .guard import Guard
from .stream import stream

if TYPE_CHECKING:
    from ..app import App

__all__ = ["create_app"]

STATIC = Path(__file__).parent / "static"


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
            await group.start(context.board.follow, app)
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
