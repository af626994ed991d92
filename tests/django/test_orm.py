"""The ORM inside tasks, on SQLite and PostgreSQL: def tasks in threads, async tasks with
Django's async ORM and sync_to_async; stale connections closed around every def task."""

from __future__ import annotations

from typing import Any

import pytest
from asgiref.sync import sync_to_async

from aqueue import App, Worker


def make_app() -> App:
    """An app created as a Django project's is: DJANGO_SETTINGS_MODULE set (the fix-up)."""
    return App("orm", broker="memory://", set_as_current=False)


async def test_def_and_async_tasks_use_the_orm(database: str) -> None:
    from django.db import connections
    from django.db.models import F
    from polls.models import Poll

    app = make_app()
    seen: list[Any] = []  # each def task's DB-API connection

    @app.task
    def vote(poll_id: int) -> int:
        Poll.objects.using(database).filter(pk=poll_id).update(votes=F("votes") + 1)
        votes = Poll.objects.using(database).get(pk=poll_id).votes
        seen.append(connections[database].connection)
        return votes

    @app.task
    async def summary(poll_id: int) -> dict[str, Any]:
        poll = await Poll.objects.using(database).aget(pk=poll_id)
        count = await sync_to_async(Poll.objects.using(database).filter(pk=poll_id).count)()
        return {"question": poll.question, "votes": poll.votes, "count": count}

    poll = await Poll.objects.using(database).acreate(question=f"on {database}?")
    try:
        async with app:
            votes = [await vote.delay(poll.pk) for _ in range(3)]
            await Worker(app, burst=True, threads=1).run()
            assert sorted([await result.get(timeout=10) for result in votes]) == [1, 2, 3]
            info = await summary.delay(poll.pk)
            await Worker(app, burst=True).run()
            assert await info.get(timeout=10) == {
                "question": f"on {database}?",
                "votes": 3,
                "count": 1,
            }
    finally:
        await Poll.objects.using(database).filter(pk=poll.pk).adelete()
    # close_old_connections ran after each def task (CONN_MAX_AGE is 0): every connection a
    # task used is closed, none is left to the next task or to leak.
    assert len(seen) == 3
    for raw in seen:
        assert raw is not None
        assert _closed(raw)


def _closed(raw: Any) -> bool:
    closed = getattr(raw, "closed", None)  # psycopg
    if closed is not None:
        return bool(closed)
    import sqlite3

    try:
        raw.execute("select 1")
    except sqlite3.ProgrammingError:
        return True
    return False


async def test_without_django_no_hook_runs() -> None:
    with pytest.MonkeyPatch.context() as patch:  # the autouse fixture set it: not here
        patch.delenv("DJANGO_SETTINGS_MODULE")
        app = App("plain", broker="memory://", set_as_current=False)
    assert app.discovery.package_sources == []
    assert app.fixup_hooks.worker_setup == []
    app.setup_worker()
    assert app.fixup_hooks.thread_task_hooks == []
    await app.close()


async def test_a_broken_connection_is_not_handed_to_the_next_task(pg_database: str) -> None:
    from django.db import connections
    from polls.models import Poll

    alias = pg_database
    app = make_app()

    def break_it() -> None:
        Poll.objects.using(alias).count()  # connected
        connections[alias].connection.close()  # behind Django's back, as a dropped link would
        Poll.objects.using(alias).count()  # raises: Django marks the connection as errored

    @app.task
    def broken() -> None:
        break_it()

    @app.task
    def count() -> int:
        return Poll.objects.using(alias).count()

    @app.task
    async def broken_async() -> None:
        await sync_to_async(break_it)()

    @app.task
    async def count_async() -> int:
        return await Poll.objects.using(alias).acount()

    async with app:
        results = [
            await broken.delay(),
            await count.delay(),
            await broken_async.delay(),
            await count_async.delay(),
        ]
        await Worker(app, burst=True, concurrency=1, threads=1).run()
        outcomes = [await result.get(timeout=10, propagate=False) for result in results]
    assert [type(outcome).__name__ for outcome in outcomes[::2]] == ["TaskError", "TaskError"]
    assert "connection is closed" in str(outcomes[0])
    assert outcomes[1::2] == [0, 0]  # the next task of each kind had a working connection
