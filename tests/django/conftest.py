"""Django in the test process: the example project's settings with databases of the tests.

Django is set up once (settings cannot be reloaded), on `tests.django.settings`. Its
environment (`DJANGO_SETTINGS_MODULE`, the example on `sys.path`) is in force only while a test
of this folder runs, so tests elsewhere (and the processes they start) never see it. The
PostgreSQL database (127.0.0.1:5432, user postgres, trust auth) is one of this run's own,
created from the `test` database and dropped at the end.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from aqueue import current

from ..conftest import service_unavailable

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "django"
SETTINGS = "tests.django.settings"


def _environment(test_dir: Path, pg_db: str) -> dict[str, str]:
    return {
        "DJANGO_SETTINGS_MODULE": SETTINGS,
        "AQUEUE_DJANGO_TEST_DIR": str(test_dir),
        "AQUEUE_DJANGO_PG_DB": pg_db,
    }


@pytest.fixture(scope="session")
def django_environment() -> Iterator[dict[str, str]]:
    """Set Django up in this process (once); return the variables its processes need."""
    test_dir = Path(tempfile.mkdtemp(prefix="aqueue-django-"))
    environment = _environment(test_dir, f"aqueue_django_{os.getpid()}_{uuid.uuid4().hex[:6]}")
    with pytest.MonkeyPatch.context() as patch:
        for name, value in environment.items():
            patch.setenv(name, value)
        patch.syspath_prepend(str(EXAMPLE))
        patch.delenv("AQUEUE_BROKER_URL", raising=False)
        import django
        from django.core.management import call_command

        django.setup()
        call_command("migrate", "polls", database="default", verbosity=0)
    yield environment
    from django.db import connections

    connections.close_all()
    shutil.rmtree(test_dir, ignore_errors=True)


@pytest.fixture(autouse=True)
def django_in_force(
    django_environment: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> Iterator[dict[str, str]]:
    """The Django environment, for the duration of one test.

    The example's `@shared_task`s, imported here, would join every app made later in the
    run: the shared tasks and the current app are as they were before the test, after it.
    """
    for name, value in django_environment.items():
        monkeypatch.setenv(name, value)
    monkeypatch.syspath_prepend(str(EXAMPLE))
    monkeypatch.delenv("AQUEUE_BROKER_URL", raising=False)
    shared, current_app = list(current._shared), list(current._current)
    yield django_environment
    current._shared[:] = shared
    current._current[:] = current_app


def _pg_unreachable() -> str | None:
    try:
        import psycopg

        psycopg.connect(
            "host=127.0.0.1 port=5432 user=postgres dbname=test", connect_timeout=3
        ).close()
    except Exception as exc:
        return f"PostgreSQL at 127.0.0.1:5432 (user postgres, db test) is not reachable: {exc}"
    return None


@pytest.fixture(scope="session")
def pg_database(django_environment: dict[str, str]) -> Iterator[str]:
    """This run's own PostgreSQL database, with the example's tables; dropped at the end."""
    if reason := _pg_unreachable():
        service_unavailable(reason)
    import psycopg
    from django.core.management import call_command
    from django.db import connections

    name = django_environment["AQUEUE_DJANGO_PG_DB"]
    with psycopg.connect("host=127.0.0.1 user=postgres dbname=test", autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        call_command("migrate", "polls", database="pg", verbosity=0)
        yield "pg"
    finally:
        connections["pg"].close()
        with psycopg.connect("host=127.0.0.1 user=postgres dbname=test", autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=["default", "pg"], ids=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest) -> str:
    """Each database alias in turn: SQLite, then this run's PostgreSQL database."""
    if request.param == "pg":
        return str(request.getfixturevalue("pg_database"))
    return "default"
