"""Saving or deleting a `PeriodicTask` tells the running beats (the beat's change notice)."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from ....beat.source import CHANGED_TOPIC
from ....current import current_app_or_none
from ....exceptions import AqueueError
from ....interfaces import AppLike
from ....sync import block

__all__ = ["anotify_changed", "connect", "publish_change"]

logger = logging.getLogger("aqueue.beat")


async def anotify_changed(app: AppLike | None = None) -> None:
    """Tell running beats that the entries changed (from async code)."""
    app = app or current_app_or_none()
    if app is None:
        logger.warning("No aqueue app is current: running beats were not told of the edit")
        return
    mailbox = (await app.broker()).mailbox()
    await mailbox.publish(CHANGED_TOPIC, b"")


def publish_change() -> None:
    """Tell running beats (from sync code: the admin, a shell, a management command).

    Best effort: the row is saved whatever happens here; a beat that missed the notice picks
    the edit up when it loads its entries next (at its start, or at the next notice).
    """
    app = current_app_or_none()
    if app is None:
        logger.warning("No aqueue app is current: running beats were not told of the edit")
        return
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass
    else:
        logger.warning(
            "A periodic task was edited in a thread that runs an event loop: call "
            "`await aqueue.contrib.django.beat.signals.anotify_changed()` there"
        )
        return
    try:
        block(app, anotify_changed(app), "notify_changed()", "anotify_changed()")
    except AqueueError as exc:
        logger.warning("Running beats were not told of the edit: %s", exc)


def _changed(sender: Any, **kwargs: Any) -> None:
    publish_change()


def connect() -> None:
    """Connect `publish_change` to the model's post_save and post_delete."""
    from django.db.models.signals import post_delete, post_save

    from .models import PeriodicTask

    post_save.connect(_changed, sender=PeriodicTask, dispatch_uid="aqueue-beat-save")
    post_delete.connect(_changed, sender=PeriodicTask, dispatch_uid="aqueue-beat-delete")
