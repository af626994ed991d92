"""aqueue for Django projects (`pip install "aqueue-tasks[django]"`).

Celery's Django layout works as written: `app.config_from_object("django.conf:settings",
namespace="CELERY")`, `app.autodiscover_tasks()`, and `aqueue worker proj.aqueue_app:app`,
which sets Django up itself (`fixup.py`); `aqueue.contrib.django.beat` keeps periodic tasks in
the database. Put `"aqueue.contrib.django"` in `INSTALLED_APPS` for the `TaskResult` model, its
admin and the `aqueue_purge_results` command; `result_backend = "django-db"` (or
`"django-cache"`) stores results through them. `TaskBackend` runs Django's own Tasks framework
(`django.tasks`, or the `django_tasks` backport) on aqueue workers:
`TASKS = {"default": {"BACKEND": "aqueue.contrib.django.TaskBackend"}}`.

Nothing here imports a model at import time, so `INSTALLED_APPS` can name this package before
Django's app registry is ready; `TaskBackend` is imported on first access.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .tasks_backend import TaskBackend

__all__ = ["TaskBackend"]


def __getattr__(name: str) -> Any:
    if name == "TaskBackend":
        from .tasks_backend import TaskBackend

        return TaskBackend
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
