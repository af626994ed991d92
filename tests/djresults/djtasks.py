"""Django Tasks-framework tasks (`@task`), run by aqueue workers through TaskBackend."""

from __future__ import annotations

from typing import Any

try:
    from django.tasks import TaskContext, task
except ImportError:
    from django_tasks import task
    from django_tasks.base import TaskContext


@task
def multiply(x: int, y: int) -> int:
    return x * y


@task
async def amultiply(x: int, y: int) -> int:
    return x * y


@task(takes_context=True)
def attempt(context: TaskContext, label: str) -> dict[str, Any]:
    return {"attempt": context.attempt, "label": label, "id": context.task_result.id}


@task
def fails(text: str) -> None:
    raise ValueError(text)


@task(priority=50, queue_name="other")
def elsewhere_queue() -> str:
    return "other"
