"""`django-db://` results (Celery's `"django-db"`): rows of `TaskResult`, through the ORM.

`django-db://ALIAS` uses the database `ALIAS` of `settings.DATABASES` (default: `default`).
Run `python manage.py migrate` once for the table. Stores of one process are batched into one
transaction (an upsert of every row); expired rows are deleted now and then by stores, by
`python manage.py aqueue_purge_results`, and hourly by `aqueue beat`'s housekeeping.

Waiting: on PostgreSQL (with psycopg 3), LISTEN/NOTIFY (see `listener`); on any other
database, a bounded backoff poll (see `waiting`), one query for all waiters of a process.

Chords: header tasks are counted in `ChordCounter` / `ChordPart` rows, a batch of concurrent
records in one transaction (`_chord_parts`). A recorder locks its chords' counter rows
(`select_for_update`, in chord id order; on SQLite, whose `select_for_update` does nothing,
the database's write lock, taken by the transaction's first statement, an insert), then adds
each task id not yet recorded and decides, as the other stores do, who claims the chord. The
unique (chord, task) constraint backs the count: a redelivered task counts once.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from ....drivers.base import ChordStep, ResultBackend, StoredResult
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

logger = logging.getLogger("aqueue.contrib.django")

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
            _purge(alias, now)
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


def _fetch_many(alias: str, task_ids: Sequence[str]) -> list[StoredResult | None]:
    from ..models import TaskResult

    _connection(alias)
    found: dict[str, StoredResult] = {}
    now = _when(time.time())
    for start in range(0, len(task_ids), _CHUNK):
        rows = (
            TaskResult.objects.using(alias)
            .filter(task_id__in=task_ids[start : start + _CHUNK], expires__gt=now)
            .values_list("task_id", "status", "payload")
        )
        found.update(
            (task_id, StoredResult(state, bytes(payload))) for task_id, state, payload in rows
        )
    return [found.get(task_id) for task_id in task_ids]


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
    """Delete the expired rows of database `alias`; return how many results (blocking)."""
    from django.db import transaction

    _connection(alias)
    with transaction.atomic(using=alias):
        return _purge(alias, time.time())


def _purge(alias: str, now: float) -> int:
    """Delete the expired results and chords (in the caller's transaction); count results.

    The chords' tables are purged in a savepoint of their own: a project upgraded without
    `migrate` (no chord tables yet) keeps storing and purging results, with a warning.
    """
    from django.db import DatabaseError, transaction

    from ..models import ChordClaim, ChordCounter, ChordPart, TaskResult

    try:
        with transaction.atomic(using=alias):
            expired = ChordCounter.objects.using(alias).filter(expires__lte=_when(now))
            gone = expired.values("chord_id")
            ChordPart.objects.using(alias).filter(chord_id__in=gone).delete()
            ChordClaim.objects.using(alias).filter(chord_id__in=gone).delete()
            expired.delete()
    except DatabaseError as exc:
        logger.warning(
            "django-db: cannot purge expired chords in %r (%s); has `python manage.py "
            "migrate` created the aqueue tables?",
            alias,
            str(exc).strip(),
        )
    deleted, _ = TaskResult.objects.using(alias).filter(expires__lte=_when(now)).delete()
    return deleted


def _counters(alias: str, expires: Mapping[str, float]) -> None:
    """Create the missing `ChordCounter` rows (in chord id order: no lock-order cycle)."""
    from ..models import ChordCounter

    ChordCounter.objects.using(alias).bulk_create(
        [
            ChordCounter(chord_id=chord_id, expires=_when(expires[chord_id]))
            for chord_id in sorted(expires)
        ],
        ignore_conflicts=True,
    )


def _chord_parts(alias: str, items: Sequence[tuple[str, str, int, bool, float]]) -> list[ChordStep]:
    """Record header tasks (chord id, task id, size, ok, ttl) in one transaction.

    Each is told its step as `ResultBackend.chord_part` says, as if recorded one by one.
    """
    from django.db import transaction

    from ..models import ChordCounter, ChordPart

    _connection(alias)
    now = time.time()
    expires = {chord_id: now + ttl for chord_id, _, _, _, ttl in items}
    wanted: dict[str, set[str]] = {}
    for chord_id, task_id, *_ in items:
        wanted.setdefault(chord_id, set()).add(task_id)
    steps: list[ChordStep] = []
    with transaction.atomic(using=alias):
        _counters(alias, expires)  # on SQLite, the write lock from here on
        counters = {
            counter.chord_id: counter
            for counter in ChordCounter.objects.using(alias)
            .select_for_update()
            .filter(chord_id__in=sorted(expires))
            .order_by("chord_id")
        }
        recorded = {
            (chord_id, task_id)
            for chord_id, ids in wanted.items()
            for task_id in ChordPart.objects.using(alias)
            .filter(chord_id=chord_id, task_id__in=sorted(ids))
            .values_list("task_id", flat=True)
        }
        added: list[ChordPart] = []
        for chord_id, task_id, size, ok, _ in items:
            counter = counters[chord_id]
            if (chord_id, task_id) not in recorded:
                recorded.add((chord_id, task_id))
                added.append(ChordPart(chord_id=chord_id, task_id=task_id))
                counter.parts += 1
            counter.failed = counter.failed or not ok
            step: ChordStep = "wait"
            if not counter.done and (counter.failed or counter.parts >= size):
                if counter.claimant is None:
                    counter.claimant = task_id
                if counter.claimant == task_id:
                    step = "fail" if counter.failed else "fire"
            steps.append(step)
        ChordPart.objects.using(alias).bulk_create(added)
        for counter in counters.values():
            counter.expires = _when(expires[counter.chord_id])
        ChordCounter.objects.using(alias).bulk_update(
            list(counters.values()), ["parts", "failed", "claimant", "expires"]
        )
    return steps


def _chord_done(alias: str, chord_id: str, ttl: float) -> None:
    from django.db import transaction

    from ..models import ChordCounter

    _connection(alias)
    expires = time.time() + ttl
    with transaction.atomic(using=alias):
        _counters(alias, {chord_id: expires})
        ChordCounter.objects.using(alias).filter(chord_id=chord_id).update(
            done=True, expires=_when(expires)
        )


def _chord_run(alias: str, chord_id: str, task_id: str, token: str, ttl: float) -> bool:
    """Claim the run of `task_id` for `token` unless another token holds it.

    On PostgreSQL a concurrent insert of the same (chord, task) waits for the first to commit,
    then inserts nothing, and the read that follows sees the first's token.
    """
    from django.db import transaction

    from ..models import ChordClaim

    _connection(alias)
    claims = ChordClaim.objects.using(alias)
    with transaction.atomic(using=alias):
        _counters(alias, {chord_id: time.time() + ttl})  # its expiry takes the claim away
        claims.bulk_create(
            [ChordClaim(chord_id=chord_id, task_id=task_id, token=token)], ignore_conflicts=True
        )
        holder = claims.filter(chord_id=chord_id, task_id=task_id).values_list("token", flat=True)
        held: str = holder.get()
    return held == token


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
    counts_chords = True

    def __init__(self, url: str, options: Mapping[str, Any]) -> None:
        super().__init__(url, options)
        self.alias = alias_of(url, "django-db")
        self._thread: DjangoThread | None = None
        self._stores: Batcher[Row, None] = Batcher(self._flush)
        self._chord_parts: Batcher[tuple[str, str, int, bool, float], ChordStep] = Batcher(
            self._flush_chord_parts
        )
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

    async def _flush(self, rows: list[Row]) -> list[None]:
        sweep = time.monotonic() - self._swept >= SWEEP_SECONDS
        if sweep:
            self._swept = time.monotonic()
        await self._call("storing results", _write, self.alias, rows, sweep)
        return [None] * len(rows)

    async def fetch_many(self, task_ids: Sequence[str]) -> list[StoredResult | None]:
        """Look many results up, a few hundred per query (a chord's header, a revoke's list)."""
        found: list[StoredResult | None] = await self._call(
            "fetching results", _fetch_many, self.alias, list(task_ids)
        )
        return found

    async def chord_part(
        self, chord_id: str, task_id: str, size: int, ttl: float, *, ok: bool
    ) -> ChordStep:
        """Record a header task: one transaction, shared with concurrent records."""
        self._running()
        return await self._chord_parts.submit((chord_id, task_id, size, ok, ttl))

    async def _flush_chord_parts(
        self, items: list[tuple[str, str, int, bool, float]]
    ) -> list[ChordStep]:
        steps: list[ChordStep] = await self._call(
            "counting a chord", _chord_parts, self.alias, items
        )
        return steps

    async def chord_done(self, chord_id: str, ttl: float) -> None:
        """Mark the chord settled."""
        await self._call("counting a chord", _chord_done, self.alias, chord_id, ttl)

    async def chord_run(self, chord_id: str, task_id: str, token: str, ttl: float) -> bool:
        """Claim the run of a task the chord sent, in one transaction."""
        held: bool = await self._call(
            "claiming a chord's callback", _chord_run, self.alias, chord_id, task_id, token, ttl
        )
        return held

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
