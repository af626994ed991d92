"""`django-cache://` results (Celery's `"django-cache"`): one cache key per task.

`django-cache://ALIAS` uses the cache `ALIAS` of `settings.CACHES` (default: `default`). The
key is `aqueue:result:<task id>`, the value the state, a NUL byte and the payload, set with the
result's time to live (the cache expires it). Pick a cache every process shares (Redis,
Memcached, the database or file caches): the local-memory cache is one process's own.

Caches cannot notify, so `wait` polls with a bounded backoff (see `waiting`): one `get_many`
for all waiters of a process per tick.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

from ....drivers.base import ResultBackend, StoredResult
from ....drivers.waiting import Poll, Waiters
from ....exceptions import BrokerError, ConfigurationError
from ....states import READY_STATES
from ....urls import redact
from .batching import Batcher
from .database import alias_of
from .thread import DjangoThread, ensure_django

__all__ = ["DjangoCacheBackend"]

_PREFIX = "aqueue:result:"


def _key(task_id: str) -> str:
    return f"{_PREFIX}{task_id}"


def _decode(value: Any) -> StoredResult | None:
    if not isinstance(value, bytes):
        return None  # nothing, or something aqueue never wrote
    state, _, payload = value.partition(b"\0")
    return StoredResult(state.decode("utf-8", "replace"), payload)


def _write(alias: str, items: Sequence[tuple[str, str, bytes, float]]) -> None:
    from django.core.cache import caches

    cache = caches[alias]
    latest = {
        _key(task_id): (state.encode() + b"\0" + payload, ttl)
        for task_id, state, payload, ttl in items
    }
    gone = [key for key, (_, ttl) in latest.items() if ttl <= 0]
    by_ttl: dict[float, dict[str, bytes]] = defaultdict(dict)
    for key, (value, ttl) in latest.items():
        if ttl > 0:
            by_ttl[ttl][key] = value
    if gone:
        cache.delete_many(gone)
    for ttl, values in by_ttl.items():
        cache.set_many(values, timeout=ttl)


def _fetch(alias: str, task_id: str) -> StoredResult | None:
    from django.core.cache import caches

    return _decode(caches[alias].get(_key(task_id)))


def _fetch_ready(alias: str, task_ids: Sequence[str]) -> dict[str, StoredResult]:
    from django.core.cache import caches

    values = caches[alias].get_many([_key(task_id) for task_id in task_ids])
    found: dict[str, StoredResult] = {}
    for key, value in values.items():
        stored = _decode(value)
        if stored is not None and stored.state in READY_STATES:
            found[key.removeprefix(_PREFIX)] = stored
    return found


def _forget(alias: str, task_id: str) -> None:
    from django.core.cache import caches

    caches[alias].delete(_key(task_id))


def _open(alias: str) -> None:
    ensure_django("django-cache", app_needed=False)
    from django.core.cache import caches

    if alias not in caches.settings:
        raise ConfigurationError(f"django-cache://{alias}: no cache {alias!r} in settings.CACHES")


def _close_caches() -> None:
    from django.conf import settings
    from django.core.cache import caches

    if settings.configured:  # else no cache was ever used
        caches.close_all()


class DjangoCacheBackend(ResultBackend):
    """Results in a Django cache: `App(backend="django-cache")`."""

    def __init__(self, url: str, options: Mapping[str, Any]) -> None:
        super().__init__(url, options)
        self.alias = alias_of(url, "django-cache")
        self._thread: DjangoThread | None = None
        self._stores: Batcher[tuple[str, str, bytes, float], None] = Batcher(self._flush)
        self._waiters = Waiters(self.fetch, self._ready, Poll())

    def __repr__(self) -> str:
        return f"<DjangoCacheBackend {redact(self.url)}>"

    async def open(self) -> None:
        """Make Django ready and check the cache alias."""
        if self._thread is not None:
            return
        thread = DjangoThread("aqueue-django-cache", _close_caches)
        try:
            await thread.run(_open, self.alias)
        except BaseException:
            await thread.close()
            raise
        if self._thread is not None:
            await thread.close()
            return
        self._thread = thread

    async def close(self) -> None:
        """Close the thread's cache connections."""
        thread, self._thread = self._thread, None
        if thread is not None:
            await thread.close()

    async def _call(self, what: str, fn: Any, *args: Any) -> Any:
        thread = self._thread
        if thread is None:
            raise BrokerError(f"{type(self).__name__} is not open: call `await backend.open()`")
        try:
            return await thread.run(fn, *args)
        except (OSError, ConnectionError) as exc:
            raise BrokerError(f"{what} in the Django cache {self.alias!r} failed: {exc}") from exc

    async def store(
        self,
        task_id: str,
        state: str,
        payload: bytes,
        ttl: float,
        *,
        headers: Mapping[str, Any] | None = None,
    ) -> None:
        """Set the key (batched with concurrent stores: one `set_many` per time to live)."""
        await self._stores.submit((task_id, state, payload, ttl))

    async def _flush(self, items: list[tuple[str, str, bytes, float]]) -> list[None]:
        await self._call("storing results", _write, self.alias, items)
        return [None] * len(items)

    async def fetch(self, task_id: str) -> StoredResult | None:
        """Return the stored result, or None (never stored, expired or forgotten)."""
        result: StoredResult | None = await self._call(
            "fetching a result", _fetch, self.alias, task_id
        )
        return result

    async def _ready(self, task_ids: list[str]) -> dict[str, StoredResult]:
        found: dict[str, StoredResult] = await self._call(
            "fetching results", _fetch_ready, self.alias, task_ids
        )
        return found

    async def forget(self, task_id: str) -> None:
        """Delete the key."""
        await self._call("forgetting a result", _forget, self.alias, task_id)

    async def wait(self, task_id: str) -> StoredResult:
        """Return once the task is in a ready state: a bounded backoff poll of the cache."""
        return await self._waiters.wait(task_id)
