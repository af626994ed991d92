"""The worker's start-up banner, in Celery's shape, with every password redacted."""

from __future__ import annotations

import platform
import time
from typing import TYPE_CHECKING

from ._version import __version__
from .urls import redact

if TYPE_CHECKING:
    from .worker.lifecycle import Worker

__all__ = ["banner"]


def banner(
    worker: Worker, app_path: str, *, limits: str | None = None, loop: str | None = None
) -> str:
    """Return the banner text for `worker`, started from `app_path` (`tasks:app`).

    `limits` says whether rate and concurrency limits hold across workers or per worker;
    `loop` names the event loop that runs the worker ("uvloop 0.21.0", "asyncio").
    """
    app = worker.app
    results = redact(app.backend_url) if app.backend_url else "disabled://"
    lines = [
        f" -------------- {worker.hostname} v{__version__}",
        f"--- ***** ----- {platform.platform()} {time.strftime('%Y-%m-%d %H:%M:%S')}",
        "",
        "[config]",
        f".> app:         {app_path} ({app.main or '__main__'})",
        f".> transport:   {redact(app.broker_url)}",
        f".> results:     {results}",
        f".> concurrency: {worker.concurrency} (asyncio), threads: {worker.threads}",
        *([f".> event loop:  {loop}"] if loop else []),
        *([f".> rate limits: {limits}"] if limits else []),
        "",
        "[queues]",
        *(f".> {queue}" for queue in worker.queues),
        "",
        "[tasks]",
        *(f"  . {name}" for name in sorted(app.tasks)),
        "",
    ]
    return "\n".join(lines)
