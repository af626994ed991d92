"""The admin of periodic tasks: list, filter, search, enable and disable in bulk."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest

from .models import PeriodicTask
from .signals import publish_change


@admin.register(PeriodicTask)
class PeriodicTaskAdmin(admin.ModelAdmin):  # type: ignore[misc]
    """Periodic tasks, editable while beats run (they load the entries again at once)."""

    list_display = ("name", "task", "interval_seconds", "crontab", "clocked_time", "enabled",
                    "last_run_at", "total_run_count")  # fmt: skip
    list_filter = ("enabled", "task")
    search_fields = ("name", "task", "description")
    readonly_fields = ("last_run_at", "total_run_count", "date_changed")
    actions = ("enable", "disable")

    @admin.action(description="Enable the selected periodic tasks")  # type: ignore[untyped-decorator]
    def enable(self, request: HttpRequest, queryset: QuerySet[Any]) -> None:
        """Enable them (a bulk update: the beats are told once)."""
        queryset.update(enabled=True)
        publish_change()

    @admin.action(description="Disable the selected periodic tasks")  # type: ignore[untyped-decorator]
    def disable(self, request: HttpRequest, queryset: QuerySet[Any]) -> None:
        """Disable them (a bulk update: the beats are told once)."""
        queryset.update(enabled=False)
        publish_change()
