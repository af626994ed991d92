"""The Django app of the database scheduler."""

from __future__ import annotations

from django.apps import AppConfig


class BeatConfig(AppConfig):
    """`aqueue.contrib.django.beat`: the `PeriodicTask` model, its admin and its signals."""

    name = "aqueue.contrib.django.beat"
    label = "aqueue_beat"
    verbose_name = "aqueue periodic tasks"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        """Connect the signals that tell running beats about edits."""
        from . import signals

        signals.connect()
