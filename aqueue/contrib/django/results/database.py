"""`django-db://` results (Celery's `"django-db"`): rows of `TaskResult`, through the ORM.

`django-db://ALIAS` uses the database `ALIAS` of `settings.DATABASES` (default: `default`).
Run `python manage.py migrate` once for the table. Stores of one process are batched into one
transaction (an upsert of every row); expired rows are deleted now and then by stores, by
`python manage.py aqueue_purge_results`, and hourly by `aqueue beat`'s housekeeping.

Waiting: on PostgreSQL (with psycopg 3), LISTEN/NOTIFY (see `listener`); on any other
database, a bounded backoff poll (see `waiting`), one query for all waiters of a process.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from ....drivers.base import ResultBackend, StoredResult
from ....drivers.waiting import Pause, Poll, Waiters
from ....exceptions import BrokerError, ConfigurationError
from ....request import running_request
from ....states import READY_STATES
from ....urls import redact
from .batching import Batcher
from .listener import CHANNEL, Listener, connection_params, notify_chunks
from .rows import Row, describe
from .thread import DjangoThread, ensure_django

if TYPE_CHECKING:
    from django.db.backends.base.base import BaseDatabaseWrapper

__all__ = ["DjangoDBBackend", "purge_expired"]

#: Expired rows are deleted by a store at most this often (seconds), per process.
SWEEP_SECONDS = 60.0

_CHUNK = 500  # task ids per lookup, under every database's bound on query parameters
_UPDATED = [
    "status",
    "task_name",
    "result",
    "traceback",
    "retries",
    "worker",
    "date_done",
    "expires",
    "payload",
]


def alias_of(url: str, scheme: str) -> str:
    """Return the alias a `scheme://ALIAS` URL names ("default" when none)."""
    if "://" not in url:
        return "default"
    return urlsplit(url).netloc or "default"


def _connection(alias: str) -> BaseDatabaseWrapper:
    """Return the thread's connection to `alias`, dropped first if broken or past its age.

    The store's thread is its own long "request": with `CONN_MAX_AGE = 0` (Django's default,
    a connection per request) the connection is kept for as long as the store is open, not
    reopened for every call; a positive `CONN_MAX_AGE` is honoured, and a connection that
    raised an error is checked (and replaced if unusable), as Django does between requests.
    """
    from django.db import connections

    conn = connections[alias]
    max_age = conn.settings_dict.get("CONN_MAX_AGE")
    aged = bool(max_age) and conn.close_at is not None and time.monotonic() >= conn.close_at
    if conn.errors_occurred or aged:
        conn.close_if_unusable_or_obsolete()
    return conn


def _when(seconds: float) -> dt.datetime:
    """Return a POSIX time as Django stores datetimes (aware UTC with USE_TZ, else naive local)."""
    from django.conf import settings

    if settings.USE_TZ:
        return dt.datetime.fromtimestamp(seconds, dt.UTC)
    return dt.datetime.fromtimestamp(seconds)


def _write(alias: str, rows: Sequence[Row], sweep: bool) -> None:
    """Upsert the rows in one transaction; notify the ready ones on PostgreSQL."""
    from django.db import transaction

    from ..models import TaskResult

    now = time.time()
    latest = {row.task_id: row for row in rows}  # one upsert may not touch a row twice
    objects = [
        TaskResult(
            task_id=row.task_id,
            status=row.state,
            task_name=row.task_name,
            result=row.result,
            traceback=row.traceback,
            retries=row.retries,
            worker=row.worker,
            date_done=None if row.date_done is None else _when(row.date_done),
            expires=_when(now + row.ttl),
            payload=row.payload,
        )
        for row in latest.values()
    ]
    conn = _connection(alias)
    manager = TaskResult.objects.using(alias)
    with transaction.atomic(using=alias):
        if conn.features.supports_update_conflicts_with_target:
            manager.bulk_create(
                objects, update_conflicts=True, unique_fields=["task_id"], update_fields=_UPDATED
            )
        else:  # Oracle
            for obj in objects:
                fields = {name: getattr(obj, name) for name in _UPDATED}
                manager.update_or_create(task_id=obj.task_id, defaults=fields)
        if sweep:
            manager.filter(expires__lte=_when(now)).delete()
        ready = [row.task_id for row in latest.values() if row.state in READY_STATES]
        if ready and conn.vendor == "postgresql":
            with conn.cursor() as cursor:
                for payload in notify_chunks(ready):
                    cursor.execute("SELECT pg_notify(%s, %s)", [CHANNEL, payload])


def _fetch(alias: str, task_id: str) -> StoredResult | None:
    from ..models import TaskResult

    _connection(alias)
    row = (
        TaskResult.objects.using(alias)
        .filter(task_id=task_id, expires__gt=_when(time.time()))
        .values_list("status", "payload")
        .first()
    )
    return None if row is None else StoredResult(row[0], bytes(row[1]))


def _fetch_ready(alias: str, task_ids: Sequence[str]) -> dict[str, StoredResult]:
    from ..models import TaskResult

    _connection(alias)
    found: dict[str, StoredResult] = {}
    now = _when(time.time())
    for start in range(0, len(task_ids), _CHUNK):
        rows = (
            TaskResult.objects.using(alias)
            .filter(
                task_id__in=task_ids[start : start + _CHUNK],
                expires__gt=now,
                status__in=READY_STATES,
            )
            .values_list("task_id", "status", "payload")
        )
        found.update(
            (task_id, StoredResult(state, bytes(payload))) for task_id, state, payload in rows
        )
    return found


def _forget(alias: str, task_id: str) -> None:
    from ..models import TaskResult

    _connection(alias)
    TaskResult.objects.using(alias).filter(task_id=task_id).delete()


def purge_expired(alias: str = "default") -> int:
    """Delete the expired rows of database `alias`; return how many (blocking: the ORM)."""
    from ..models import TaskResult

    _connection(alias)
    deleted, _ = TaskResult.objects.using(alias).filter(expires__lte=_when(time.time())).delete()
    return deleted


def _open(alias: str) -> dict[str, Any] | None:
    """Make Django ready; return libpq's parameters if the database is PostgreSQL on psycopg 3."""
    ensure_django("django-db", app_needed=True)
    from django.db import connections

    if alias not in connections.settings:
        raise ConfigurationError(
            f"django-db://{alias}: no database {alias!r} in settings.DATABASES"
        )
    conn = connections[alias]
    if conn.vendor != "postgresql":
        return None
    try:
        import psycopg  # noqa: F401 - psycopg 3; psycopg2 has no asyncio connection
    except ImportError:
        return None
    return connection_params(conn.get_connection_params())


def _close_connections() -> None:
    from django.conf import settings
    from django.db import connections

    if settings.configured:  # else no connection was ever made
        connections.close_all()


class DjangoDBBackend(ResultBackend):
    """Results in the `TaskResult` table: `App(backend="django-db")`."""

    keeps_expired = True

    def __init__(self, url: str, options: Mapping[str, Any]) -> None:
        super().__init__(url, options)
        self.alias = alias_of(url, "django-db")
        self._thread: DjangoThread | None = None
        self._stores: Batcher[Row] = Batcher(self._flush)
        self._swept = time.monotonic()
        self._listener: Listener | None = None
        self._waiters: Waiters | None = None

    def __repr__(self) -> str:
        return f"<DjangoDBBackend {redact(self.url)}>"

    @property
    def notifies(self) -> bool:
        """Whether `wait` sleeps on LISTEN/NOTIFY (PostgreSQL) rather than polling."""
        return self._listener is not None

    async def open(self) -> None:
        """Make Django ready, and check the database alias; connections open on first use."""
        if self._thread is not None:
            return
        thread = DjangoThread("aqueue-django-db", _close_connections)
        try:
            params = await thread.run(_open, self.alias)
        except BaseException:
            await thread.close()
            raise
        if self._thread is not None:  # a concurrent open won
            await thread.close()
            return
        self._thread = thread
        pause: Pause = Poll()
        if params is not None:
            self._listener = pause = Listener(params)
        self._waiters = Waiters(self.fetch, self._ready, pause)

    async def close(self) -> None:
        """Close the LISTEN connection and the thread's database connection."""
        thread, self._thread = self._thread, None
        listener, self._listener = self._listener, None
        self._waiters = None
        if listener is not None:
            await listener.close()
        if thread is not None:
            await thread.close()

    def _running(self) -> DjangoThread:
        if self._thread is None:
            raise BrokerError(f"{type(self).__name__} is not open: call `await backend.open()`")
        return self._thread

    async def _call(self, what: str, fn: Any, *args: Any) -> Any:
        from django.db import DatabaseError

        try:
            return await self._running().run(fn, *args)
        except DatabaseError as exc:
            raise BrokerError(
                f"{what} in the Django database {self.alias!r} failed: {exc}".strip()
                + " (has `python manage.py migrate` created the aqueue tables?)"
            ) from exc

    async def store(
        self,
        task_id: str,
        state: str,
        payload: bytes,
        ttl: float,
        *,
        headers: Mapping[str, Any] | None = None,
    ) -> None:
        """Upsert the row (batched with concurrent stores); notify waiters if it is final."""
        self._running()
        request = running_request() if state in READY_STATES else None
        worker = None if request is None else request.hostname
        await self._stores.submit(describe(task_id, state, payload, ttl, worker))

    async def _flush(self, rows: list[Row]) -> None:
        sweep = time.monotonic() - self._swept >= SWEEP_SECONDS
        if sweep:
            self._swept = time.monotonic()
        await self._call("storing results", _write, self.alias, rows, sweep)

    async def fetch(self, task_id: str) -> StoredResult | None:
        """Return the stored result unless it expired."""
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
        """Delete the row."""
        await self._call("forgetting a result", _forget, self.alias, task_id)

    async def purge_expired(self) -> int:
        """Delete the expired rows (what `aqueue_purge_results` and beat's housekeeping do)."""
        deleted: int = await self._call("purging expired results", purge_expired, self.alias)
        return deleted

    async def wait(self, task_id: str) -> StoredResult:
        """Return once the task is in a ready state (LISTEN/NOTIFY on PostgreSQL, else a poll)."""
        self._running()
        assert self._waiters is not None
        return await self._waiters.wait(task_id)
