"""One thread per result store for its Django calls, and how the store makes Django ready.

The ORM and the cache API block, so they never run on the event loop. Why one thread of our
own rather than `anyio.to_thread` or asgiref's `sync_to_async`:

- Django keeps a connection per thread. Calls spread over anyio's pool would open one in each
  pool thread and leave them open when anyio retires the thread; here the store's one
  connection is closed by `close()` in the thread that opened it.
- `sync_to_async(thread_sensitive=True)` would queue results behind (and ahead of) every other
  ORM call of the process's async views, all of which share its one thread.
- One thread is enough: concurrent stores are batched into one transaction, so the thread
  writes once per batch, and SQLite wants a single writer anyway.
"""

from __future__ import annotations

import asyncio
import functools
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import ParamSpec, TypeVar

import anyio

from ....exceptions import ConfigurationError

__all__ = ["DjangoThread", "ensure_django"]

P = ParamSpec("P")
T = TypeVar("T")


class DjangoThread:
    """A single thread that runs a store's Django calls.

    `close` runs `cleanup` there (closing its connections), then stops it.
    """

    def __init__(self, name: str, cleanup: Callable[[], None]) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)
        self._cleanup = cleanup

    async def run(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run `fn` in the thread; a cancelled caller stops waiting, not the call."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(fn, *args, **kwargs))

    async def close(self) -> None:
        """Close the thread's connections there, and stop it."""
        with anyio.CancelScope(shield=True):
            try:
                await self.run(self._cleanup)
            finally:
                await anyio.to_thread.run_sync(self._executor.shutdown)


def ensure_django(scheme: str, *, app_needed: bool) -> None:
    """Make Django ready (`django.setup()`) if it is configured; else a one-line error.

    Blocking (it imports every installed app): call it in a thread.
    """
    import django
    from django.apps import apps
    from django.conf import settings

    if not apps.ready:
        if not settings.configured and not os.environ.get("DJANGO_SETTINGS_MODULE"):
            raise ConfigurationError(
                f"{scheme}:// stores results through Django, which is not configured: set "
                "DJANGO_SETTINGS_MODULE (or call django.setup()) before the app connects"
            )
        django.setup()
    if app_needed and not apps.is_installed("aqueue.contrib.django"):
        raise ConfigurationError(
            f'{scheme}:// needs the TaskResult model: add "aqueue.contrib.django" to '
            "INSTALLED_APPS, then run `python manage.py migrate`"
        )
