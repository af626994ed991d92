"""What every page and action of one dashboard shares: the app, the board, the CSRF secret."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from starlette.requests import Request

from ..urls import redact
from .board import Board
from .guard import Csrf

if TYPE_CHECKING:
    from ..app import App

__all__ = ["Context", "context_of"]


@dataclass(slots=True)
class Context:
    """One dashboard's state; `refresh` is how often live workers and queues are sampled."""

    app: App
    board: Board = field(default_factory=Board)
    csrf: Csrf = field(default_factory=Csrf)
    refresh: float = 2.0
    timeout: float = 1.0

    @property
    def broker(self) -> str:
        """The broker's URL as a page may show it: its password replaced by ***."""
        url = self.app.conf.broker_url
        return redact(str(url)) if url else "(default)"

    async def worker_stats(self) -> dict[str, Any]:
        """Every worker's `inspect stats` answer, by hostname."""
        return await self.app.control.inspect(timeout=self.timeout).stats()

    async def queues(self) -> dict[str, dict[str, Any]]:
        """Return the depth and consumers of every queue known: consumed, of a task, or seen."""
        names = {self.app.conf.task_default_queue}
        names.update(task.options.queue for task in self.app.tasks.values() if task.options.queue)
        names.update(row.queue for row in self.board.tasks.values() if row.queue)
        found = await self.app.control.queues(timeout=self.timeout)
        broker = await self.app.broker()
        for name in sorted(names - set(found)):  # seen in events, consumed by no live worker
            stats = await broker.queue_stats(name)
            found[name] = {
                "waiting": stats.waiting,
                "delayed": stats.delayed,
                "running": stats.running,
                "dead": stats.dead,
                "workers": [],
            }
        return dict(sorted(found.items()))


def context_of(request: Request) -> Context:
    """Return the dashboard's context, from the request's app state."""
    context: Context = request.app.state.dashboard
    return context
