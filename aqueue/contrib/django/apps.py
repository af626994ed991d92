"""The Django app `aqueue.contrib.django`: label `aqueue`, tables `aqueue_*`."""

from __future__ import annotations

from django.apps import AppConfig

__all__ = ["AqueueConfig"]


class AqueueConfig(AppConfig):
    """The app that holds `TaskResult` (the `django-db` result store) and its admin."""

    name = "aqueue.contrib.django"
    label = "aqueue"
    verbose_name = "aqueue"
    default_auto_field = "django.db.models.BigAutoField"
