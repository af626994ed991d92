"""The admin of periodic tasks: list, filter, search, enable and disable in bulk."""

from __future__ import annotations

from typing import TYPE_CHECKING

from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest

from .models import PeriodicTask
from .signals import publish_change

if TYPE_CHECKING:
    _ModelAdmin = admin.ModelAdmin[PeriodicTask]
else:  # subscriptable only under django-stubs-ext's monkeypatch
    _ModelAdmin = admin.ModelAdmin


@admin.register(PeriodicTask)
class PeriodicTaskAdmin(_ModelAdmin):
    """Periodic tasks, editable while beats run (they load the entries again at once)."""

    list_display = ("name", "task", "interval_seconds", "crontab", "clocked_time", "enabled",
                    "last_run_at", "total_run_count")  # fmt: skip
    list_filter = ("enabled", "task")
    search_fields = ("name", "task", "description")
    readonly_fields = ("last_run_at", "total_run_count", "date_changed")
    actions = ("enable", "disable")

    @admin.action(description="Enable the selected periodic tasks")
    def enable(self, request: HttpRequest, queryset: QuerySet[PeriodicTask]) -> None:
        """Enable them (a bulk update: the beats are told once)."""
        queryset.update(enabled=True)
        publish_change()

    @admin.action(description="Disable the selected periodic tasks")
    def disable(self, request: HttpRequest, queryset: QuerySet[PeriodicTask]) -> None:
        """Disable them (a bulk update: the beats are told once)."""
        queryset.update(enabled=False)
        publish_change()
