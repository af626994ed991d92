"""The admin of `TaskResult`: the list, filters by status and task, search by id."""

from __future__ import annotations

from typing import TYPE_CHECKING

from django.contrib import admin

from .models import TaskResult

__all__ = ["TaskResultAdmin"]

if TYPE_CHECKING:
    _ModelAdmin = admin.ModelAdmin[TaskResult]
else:  # subscriptable only under django-stubs-ext's monkeypatch
    _ModelAdmin = admin.ModelAdmin


@admin.register(TaskResult)
class TaskResultAdmin(_ModelAdmin):
    """Read-only: results are the workers' to write."""

    list_display = ("task_id", "task_name", "status", "worker", "date_created", "date_done")
    list_filter = ("status", "task_name", "date_done", "worker")
    search_fields = ("task_id", "task_name")
    date_hierarchy = "date_done"
    readonly_fields = (
        "task_id",
        "task_name",
        "status",
        "result",
        "traceback",
        "retries",
        "worker",
        "date_created",
        "date_done",
        "expires",
    )
    fields = readonly_fields
    ordering = ("-date_created",)

    def has_add_permission(self, request: object) -> bool:
        """Results are stored by workers, never typed in."""
        return False

    def has_change_permission(self, request: object, obj: object = None) -> bool:
        """Rows are shown, not edited (deleting stays allowed: `forget`)."""
        return False
