"""Which queue a task goes to: `task_routes`, as in Celery.

`task_routes` is a mapping, a callable router, or a list of those, tried in order:

    task_routes = {"feeds.tasks.import_feed": {"queue": "feeds"},  # an exact name
                   "video.*": "media"}                                # a glob, a queue name
    def route(name, args, kwargs, options): return "fast" if name.startswith("x") else None

The first route that names a queue wins. A queue given at call time (`queue=`) beats every
route; a route beats the task's own `queue` option, which beats `task_default_queue`.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from .exceptions import ConfigurationError

__all__ = ["route"]


def route(routes: Any, name: str, args: Sequence[Any], kwargs: Mapping[str, Any]) -> str | None:
    """Return the queue `routes` gives for this call, or None when no route matches."""
    if routes is None:
        return None
    candidates = routes if isinstance(routes, list | tuple) else [routes]
    for candidate in candidates:
        found = _route_by(candidate, name, args, kwargs)
        if found is not None:
            return found
    return None


def _route_by(router: Any, name: str, args: Sequence[Any], kwargs: Mapping[str, Any]) -> str | None:
    if isinstance(router, Mapping):
        if name in router:
            return _queue_of(router[name])
        for pattern, target in router.items():
            if isinstance(pattern, str) and fnmatch.fnmatchcase(name, pattern):
                return _queue_of(target)
        return None
    if callable(router):
        call: Callable[..., Any] = router
        return _queue_of(call(name, args, kwargs, {}))
    raise ConfigurationError(
        f"task_routes entries must be mappings or callables, not {type(router).__name__}"
    )


def _queue_of(target: Any) -> str | None:
    if target is None or isinstance(target, str):
        return target
    if isinstance(target, Mapping) and isinstance(target.get("queue"), str):
        queue: str = target["queue"]
        return queue
    raise ConfigurationError(f"a route must be a queue name or {{'queue': name}}, not {target!r}")
