"""The apps of this process: which one is current, and the tasks every app gets (shared tasks).

`shared_task` must reach apps that do not exist yet, so this state lives at module level: the
tasks declared with `@shared_task` (append-only) and the apps to register them on (weakly).
"""

from __future__ import annotations

import weakref
from typing import Any

from .exceptions import ConfigurationError
from .interfaces import AppLike

__all__ = ["add_app", "add_shared_task", "current_app", "current_app_or_none"]

_shared: list[Any] = []
_apps: weakref.WeakSet[Any] = weakref.WeakSet()
_current: list[weakref.ref[Any]] = []


def add_app(app: AppLike, *, current: bool) -> None:
    """Note a new app: it gets every shared task, and becomes the current app if `current`."""
    _apps.add(app)
    for task in _shared:
        app.add_task(task)
    if current:
        _current[:] = [weakref.ref(app)]


def add_shared_task(task: Any) -> None:
    """Register a shared task on every app, now and to come."""
    _shared.append(task)
    for app in list(_apps):
        app.add_task(task)


def current_app_or_none() -> AppLike | None:
    """Return the current app, or None if there is none."""
    app: AppLike | None = _current[0]() if _current else None
    return app


def current_app() -> AppLike:
    """Return the app created last (with `set_as_current=True`), the one shared tasks use."""
    app = current_app_or_none()
    if app is None:
        raise ConfigurationError("no aqueue App exists yet; create one before sending tasks")
    return app
