"""A dashboard served by uvicorn over a live in-process worker, for the dashboard tests.

`async with live_dashboard(tmp_path[, broker_url]) as live:` gives a `Live`: the app (on
SQLite unless a broker is given; tasks `add`, `boom`, `later`), its worker (events on, queue
`default` only: tasks sent to `held` wait there), and the dashboard's base URL. The dashboard
listens on a socket bound before uvicorn starts, and one request is made before the body
runs, so the dashboard follows events (its lifespan ran) when the test begins.
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import httpx
import uvicorn

from aqueue import App, Worker
from aqueue.dashboard import create_app

__all__ = ["Live", "live_dashboard"]


@dataclass
class Live:
    """What a dashboard test works with."""

    app: App
    worker: Worker
    url: str
    tasks: dict[str, Any]
    ran: list[str] = field(default_factory=list)


def tasks_of(app: App, ran: list[str]) -> dict[str, Any]:
    @app.task
    async def add(x: int, y: int) -> int:
        ran.append("add")
        return x + y

    @app.task
    async def boom() -> None:
        ran.append("boom")
        raise ValueError("kaput")

    @app.task(queue="held")
    async def later(note: str) -> str:
        ran.append(f"later:{note}")
        return note

    return {"add": add, "boom": boom, "later": later}


@asynccontextmanager
async def live_dashboard(tmp_path: Path, broker: str | None = None) -> AsyncIterator[Live]:
    """A worker (events on) and its dashboard on 127.0.0.1, both stopped at the end."""
    app = App(
        "tests",
        set_as_current=False,
        broker=broker or f"sqlite:///{tmp_path / 'aqueue.db'}",
    )
    ran: list[str] = []
    tasks = tasks_of(app, ran)
    web = create_app(app, refresh=0.5)
    web.state.dashboard.timeout = 0.3  # how long the pages wait for the workers' replies
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    port = listener.getsockname()[1]
    config = uvicorn.Config(web, log_level="warning", lifespan="on", timeout_graceful_shutdown=1)
    server = uvicorn.Server(config)  # 1 s: a page still open holds a never-ending stream
    try:
        async with app, anyio.create_task_group() as group:
            worker = await group.start(Worker(app, send_events=True, hostname="w1@dash").run)
            group.start_soon(server.serve, [listener])
            url = f"http://127.0.0.1:{port}"
            async with httpx.AsyncClient() as client:
                (await client.get(f"{url}/static/dashboard.css")).raise_for_status()
            yield Live(app, worker, url, tasks, ran)
            server.should_exit = True
            worker.stop()
    finally:
        listener.close()
