"""A Django task in a module the worker never imports: its messages are dead-lettered."""

from __future__ import annotations

try:
    from django.tasks import task
except ImportError:
    from django_tasks import task


@task
def stray() -> str:
    return "never runs"
