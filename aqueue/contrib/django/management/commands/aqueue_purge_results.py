"""`python manage.py aqueue_purge_results [--database ALIAS]`: delete expired results."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from ...results.database import purge_expired

__all__ = ["Command"]


class Command(BaseCommand):
    """Delete the `TaskResult` rows past their `result_expires`.

    Run it from cron, or let `aqueue beat` do it hourly.
    """

    help = "Delete the aqueue task results whose time to live (result_expires) has run out."

    def add_arguments(self, parser: CommandParser) -> None:
        """`--database ALIAS`: the database of `django-db://ALIAS` (default: default)."""
        parser.add_argument("--database", default="default", help="the database alias")

    def handle(self, *args: Any, **options: Any) -> None:
        """Purge, and say how many rows went."""
        deleted = purge_expired(options["database"])
        self.stdout.write(f"Purged {deleted} expired result(s).")
