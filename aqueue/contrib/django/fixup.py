"""The Django fix-up: installed on every `App` created while `DJANGO_SETTINGS_MODULE` is set.

- `app.autodiscover_tasks()` looks in every installed app (`INSTALLED_APPS`, app config entries
  included), once Django's app registry is ready;
- a worker (`aqueue worker`, or `Worker(app).run()`) calls `django.setup()` itself before it
  imports any task module, so `AppRegistryNotReady` cannot happen;
- in a worker, every `def` task is preceded and followed by `close_old_connections()` in the
  thread that runs it, as Django does around each request: a connection past its
  `CONN_MAX_AGE`, or broken by the task, is closed, never handed to the next task. `async def`
  tasks use Django's async ORM (`await Poll.objects.aget(...)`) or `sync_to_async`, which
  run their queries in asgiref's thread; after an async task fails, `close_old_connections()`
  runs there, so a connection the failure broke is dropped, not reused (see the README).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

from ...exceptions import ConfigurationError

__all__ = ["install", "installed_packages", "setup_django"]


def install(app: Any) -> None:
    """Give `app` Django's installed apps, and its workers Django's set-up and connections."""
    try:
        import django  # noqa: F401
    except ImportError:
        raise ConfigurationError(
            "DJANGO_SETTINGS_MODULE is set but Django is not installed: "
            'pip install "aqueue-tasks[django]"'
        ) from None
    app.discovery.package_sources.append(installed_packages)
    app.fixup_hooks.worker_setup.append(functools.partial(_setup_worker, app))


def installed_packages() -> Sequence[str] | None:
    """Return the package of every installed Django app; None until the registry is ready."""
    from django.apps import apps

    if not apps.ready:
        return None
    return [config.name for config in apps.get_app_configs()]


def setup_django() -> None:
    """Call `django.setup()` unless Django is set up (or being set up) already."""
    import django
    from django.apps import apps
    from django.core.exceptions import ImproperlyConfigured

    if apps.ready or apps.loading:
        return
    try:
        django.setup()
    except ImproperlyConfigured as exc:
        raise ConfigurationError(f"Django is not configured: {exc}") from None


def _setup_worker(app: Any) -> None:
    setup_django()
    from asgiref.sync import sync_to_async
    from django.db import close_old_connections

    app.fixup_hooks.thread_task_hooks.append(close_old_connections)
    # The async ORM's queries run in asgiref's thread (thread_sensitive): close there.
    app.fixup_hooks.async_failure_hooks.append(sync_to_async(close_old_connections))
