"""Fix-ups: what a framework needs of an app, installed when that framework is in use.

Celery's idea, kept: when `DJANGO_SETTINGS_MODULE` is set as an `App` is created, the Django
fix-up (`aqueue.contrib.django.fixup`) is installed on it. It is named here by path, as drivers
are, so the core never imports it; installing it imports Django and nothing of the project.
A fix-up adds to an app's hooks:

- `discovery.package_sources`: where `autodiscover_tasks()` without packages looks;
- `worker_setup`: called once when a worker starts, before it imports task modules
  (Django: `django.setup()`);
- `thread_task_hooks`: called in the thread of every `def` task, before and after it runs
  (Django: `close_old_connections()`). With none, a task pays nothing for them;
- `async_failure_hooks`: awaited after an `async def` task raised (Django: the same, in the
  thread that runs the async ORM's queries, so a broken connection is not reused).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from .config import load_object

__all__ = ["FIXUPS", "FixupHooks", "install_fixups"]

logger = logging.getLogger("aqueue.worker")

#: By environment variable: the fix-up installed when it is set (as `module:function(app)`).
FIXUPS: dict[str, str] = {"DJANGO_SETTINGS_MODULE": "aqueue.contrib.django.fixup:install"}


class FixupHooks:
    """The hooks fix-ups add to an app (see the module docstring)."""

    def __init__(self) -> None:
        self.worker_setup: list[Callable[[], None]] = []
        self.thread_task_hooks: list[Callable[[], None]] = []
        self.async_failure_hooks: list[Callable[[], Awaitable[None]]] = []
        self._worker_ready = False

    def setup_worker(self) -> None:
        """Run the worker set-up hooks, once."""
        if not self._worker_ready:
            for hook in self.worker_setup:
                hook()
            self._worker_ready = True

    def around_thread_task(self) -> None:
        """Run the thread-task hooks (before or after a `def` task, in its thread)."""
        for hook in self.thread_task_hooks:
            try:
                hook()
            except Exception:
                logger.exception("A hook around a def task failed (%r)", hook)

    async def after_async_failure(self) -> None:
        """Await the hooks for a failed coroutine task; a hook's own failure is logged."""
        for hook in self.async_failure_hooks:
            try:
                await hook()
            except Exception:
                logger.exception("A hook after a failed async task failed (%r)", hook)


def install_fixups(app: Any, environ: Mapping[str, str] = os.environ) -> None:
    """Install on `app` the fix-up of each framework whose environment variable is set."""
    for variable, path in FIXUPS.items():
        if environ.get(variable):
            load_object(path)(app)
