"""Periodic tasks kept in Django's database and edited in its admin (`beat_scheduler = "django"`).

Add `"aqueue.contrib.django.beat"` to `INSTALLED_APPS`, run `manage.py migrate`, and set
`CELERY_BEAT_SCHEDULER = "django"` (Celery's `django_celery_beat.schedulers:DatabaseScheduler`
is accepted as the same). Every `PeriodicTask` row is a beat entry: an interval, a crontab line
or a one-off time, with args and kwargs as JSON. Saving or deleting one (the admin, the ORM)
publishes the beat's change notice on the broker, so running beats load the entries again
within a moment; a bulk `QuerySet.update()` sends no signal: call `notify_changed()` after it.
The run-once claim of every beat still applies: any number of beats send each run once.
"""

from __future__ import annotations

__all__ = ["notify_changed"]


def notify_changed() -> None:
    """Tell running beats that the entries changed (after a bulk update, which sends no signal)."""
    from .signals import publish_change

    publish_change()
