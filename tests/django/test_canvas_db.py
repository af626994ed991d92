"""Canvas on the `django-db` result store, on SQLite and PostgreSQL: its chord counter.

The workflow tests of tests/canvas/test_canvas.py run here on a memory broker with results
in the ORM (the store is what is under test), and the counter is raced by stores of their own
(each its own thread and connection, as worker processes are).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from aqueue import App, ConfigurationError, chord
from aqueue.contrib.django.results.database import DjangoDBBackend
from aqueue.drivers import create_backend
from tests.canvas.test_canvas import (  # noqa: F401 - collected here on the django-db store
    Canvas,
    make_canvas,
    test_a_chord_callback_sent_twice_runs_once,
    test_a_chord_claimant_that_died_before_sending_sends_on_redelivery,
    test_a_refused_or_revoked_step_fails_what_follows,
    test_chain_failure_stops_and_names_the_step,
    test_chain_passes_results_and_immutable,
    test_chord_and_group_pipe,
    test_failing_header_fails_the_chord,
    test_group_results_in_order_and_found_again,
    test_link_and_link_error,
    test_nested_workflows,
    test_racing_header_tasks_claim_the_chord_once,
    test_the_chord_counter_counts_each_task_once,
    test_workflow_call_options,
)
from tests.canvas.test_canvas_processes import (  # noqa: F401 - with the urls below
    start_worker,
    test_chord_callback_runs_once_after_two_kill_9,
)
from tests.helpers.drivers import SERVICES, driver_url, require
from tests.test_django_results import orm

ROOT = Path(__file__).resolve().parents[2]
TABLES = ("TaskResult", "ChordCounter", "ChordPart", "ChordClaim")


def _store_url(database: str) -> str:
    return "django-db" if database == "default" else f"django-db://{database}"


def _last_ids(alias: str) -> dict[str, int]:
    from django.db.models import Max

    from aqueue.contrib.django import models

    found = {}
    for name in TABLES:
        model = getattr(models, name)
        found[name] = model.objects.using(alias).aggregate(last=Max("pk"))["last"] or 0
    return found


def _delete_after(alias: str, last: dict[str, int]) -> None:
    from aqueue.contrib.django import models

    for name, pk in last.items():
        getattr(models, name).objects.using(alias).filter(pk__gt=pk).delete()


@pytest.fixture
async def rows_made_here(database: str) -> AsyncIterator[str]:
    """The database alias; every aqueue row this test made is deleted after it."""
    last = await orm(_last_ids, database)
    yield database
    await orm(_delete_after, database, last)


@pytest.fixture
async def canvas(rows_made_here: str) -> AsyncIterator[Canvas]:
    app = App(
        "canvas",
        broker="memory://",
        result_backend=_store_url(rows_made_here),
        set_as_current=False,
    )
    try:
        yield make_canvas(app)
    finally:
        await app.close()


@pytest.fixture(params=["sqlite", "redis"])
async def urls(
    request: pytest.FixtureRequest,
    rows_made_here: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> AsyncIterator[tuple[str, str]]:
    """For the kill -9 test: a SQLite or Redis broker, results in the ORM of the database.

    Its worker processes find the test settings (`tests.django.settings`) from the repository.
    """
    driver: str = request.param
    await require(driver)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    broker = driver_url(driver, tmp_path)
    yield broker, _store_url(rows_made_here)
    if driver in SERVICES:
        await SERVICES[driver].cleanup(broker)


@pytest.fixture
async def stores(rows_made_here: str) -> AsyncIterator[list[DjangoDBBackend]]:
    """Four stores of the database: each its own thread and connection (as processes are)."""
    url = _store_url(rows_made_here)
    opened: list[DjangoDBBackend] = []
    try:
        for _ in range(4):
            backend = create_backend(url, {})
            assert isinstance(backend, DjangoDBBackend)
            await backend.open()
            opened.append(backend)
        yield opened
    finally:
        for backend in opened:
            await backend.close()


def _chord_rows(alias: str, chord_id: str) -> tuple[int, list[str], tuple[Any, ...]]:
    from aqueue.contrib.django.models import ChordCounter, ChordPart

    parts = ChordPart.objects.using(alias).filter(chord_id=chord_id)
    counter = ChordCounter.objects.using(alias).get(chord_id=chord_id)
    return (
        parts.count(),
        sorted(parts.values_list("task_id", flat=True)),
        (counter.parts, counter.failed, counter.done, counter.claimant),
    )


async def test_a_header_task_recorded_twice_counts_once(
    stores: list[DjangoDBBackend], rows_made_here: str
) -> None:
    # The same header task recorded by two stores at once (a redelivery racing the first
    # run), and again in one batch: one row, counted once.
    chord_id = uuid.uuid4().hex
    steps: list[str] = []

    async def record(backend: DjangoDBBackend, task_id: str) -> None:
        steps.append(await backend.chord_part(chord_id, task_id, 3, 60, ok=True))

    async with anyio.create_task_group() as tasks:
        for backend in stores:
            tasks.start_soon(record, backend, "a")
            tasks.start_soon(record, backend, "a")
    assert steps == ["wait"] * 8
    assert await orm(_chord_rows, rows_made_here, chord_id) == (1, ["a"], (1, False, False, None))
    assert await stores[0].chord_part(chord_id, "b", 3, 60, ok=True) == "wait"
    assert await stores[1].chord_part(chord_id, "c", 3, 60, ok=True) == "fire"
    assert await orm(_chord_rows, rows_made_here, chord_id) == (
        3,
        ["a", "b", "c"],
        (3, False, False, "c"),
    )


async def test_stores_racing_on_the_last_header_tasks_claim_the_chord_once(
    stores: list[DjangoDBBackend],
) -> None:
    # Every header task recorded but the last four; then those four and redeliveries of all
    # the others record at once through four stores (four connections): counted without a
    # lost update, and one "fire".
    size = 40
    for _ in range(3):
        chord_id = uuid.uuid4().hex
        for i in range(size - 4):
            await stores[i % 4].chord_part(chord_id, str(i), size, 60, ok=True)
        steps: list[str] = []
        async with anyio.create_task_group() as tasks:
            for i in (*range(size - 4, size), *range(size - 4)):
                tasks.start_soon(_record, steps, stores[i % 4], chord_id, str(i), size)
        assert sorted(steps) == ["fire"] + ["wait"] * (size - 1)


async def _record(
    steps: list[str], backend: DjangoDBBackend, chord_id: str, task_id: str, size: int
) -> None:
    steps.append(await backend.chord_part(chord_id, task_id, size, 60, ok=True))


async def test_racing_tokens_claim_a_callback_once(stores: list[DjangoDBBackend]) -> None:
    chord_id = uuid.uuid4().hex
    held: list[tuple[str, bool]] = []

    async def claim(backend: DjangoDBBackend, token: str) -> None:
        held.append((token, await backend.chord_run(chord_id, "callback", token, 60)))

    async with anyio.create_task_group() as tasks:
        for n, backend in enumerate(stores):
            tasks.start_soon(claim, backend, f"t{n}")
    winners = [token for token, won in held if won]
    assert len(winners) == 1, held
    assert await stores[3].chord_run(chord_id, "callback", winners[0], 60)  # its redelivery


async def test_expired_chords_are_purged(
    stores: list[DjangoDBBackend], rows_made_here: str
) -> None:
    backend = stores[0]
    old, kept = uuid.uuid4().hex, uuid.uuid4().hex
    assert await backend.chord_part(old, "a", 1, -1, ok=True) == "fire"
    assert await backend.chord_run(old, "callback", "t", -1)
    assert await backend.chord_part(kept, "a", 2, 60, ok=True) == "wait"
    await backend.purge_expired()

    def left(alias: str) -> list[int]:
        from aqueue.contrib.django.models import ChordClaim, ChordCounter, ChordPart

        return [
            model.objects.using(alias).filter(chord_id=chord_id).count()
            for chord_id in (old, kept)
            for model in (ChordCounter, ChordPart, ChordClaim)
        ]

    assert await orm(left, rows_made_here) == [0, 0, 0, 1, 1, 0]


def test_the_migrations_match_the_models(django_environment: dict[str, str]) -> None:
    from django.core.management import call_command

    call_command("makemigrations", "aqueue", "--check", "--dry-run", verbosity=0)


async def test_a_chord_on_the_django_cache_is_refused() -> None:
    app = App(
        "canvas", broker="memory://", result_backend="django-cache://files", set_as_current=False
    )
    canvas = make_canvas(app)
    try:
        refused = r"counts its header \(redis://, sqlite://, django-db:// .*django-cache://$"
        with pytest.raises(ConfigurationError, match=refused):
            await chord([canvas.add.s(1, 1)], canvas.tsum.s()).delay()
    finally:
        await app.close()


async def test_results_are_stored_and_purged_before_the_chord_tables_exist(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A project upgraded without `migrate`: the chord tables are missing (SQLite, migrated
    # back to 0001 for this test, forward again after it). Results are stored and purged; the
    # chords' purge is skipped with a warning.
    from django.core.management import call_command

    def migrate(*target: str) -> None:
        from django.db import connections

        call_command("migrate", "aqueue", *target, database="default", verbosity=0)
        connections["default"].close()

    await anyio.to_thread.run_sync(migrate, "0001")
    try:
        async with create_backend("django-db", {}) as backend:
            await backend.store("gone-" + uuid.uuid4().hex, "SUCCESS", b"x", -1)
            kept = "kept-" + uuid.uuid4().hex
            await backend.store(kept, "SUCCESS", b"y", 60)
            assert await backend.purge_expired() == 1
            stored = await backend.fetch(kept)
            assert stored is not None
            assert stored.payload == b"y"
            await backend.forget(kept)
    finally:
        await anyio.to_thread.run_sync(migrate)  # the latest
    assert "cannot purge expired chords in 'default'" in caplog.text
