"""Django in the test process: the example project's settings with databases of the tests.

Django is set up once (settings cannot be reloaded), on `tests.django.settings`. Its
environment (`DJANGO_SETTINGS_MODULE`, the example on `sys.path`) is in force only while a test
of this folder runs, so tests elsewhere (and the processes they start) never see it. The
PostgreSQL database (127.0.0.1:5432, user postgres, trust auth) is one of this run's own,
created from the `test` database and dropped at the end.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.helpers import service_django
from tests.helpers.drivers import service_unavailable

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "django"
SETTINGS = "tests.django.settings"


@pytest.fixture(scope="session")
def django_environment() -> dict[str, str]:
    """Set Django up in this process (once); return the variables its processes need."""
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("AQUEUE_BROKER_URL", raising=False)
        service_django.configure()  # tests.django.settings: picks the folder and the PG name
        service_django.migrate("default")
    return {
        "DJANGO_SETTINGS_MODULE": SETTINGS,
        "AQUEUE_DJANGO_TEST_DIR": os.environ["AQUEUE_DJANGO_TEST_DIR"],
        "AQUEUE_DJANGO_PG_DB": os.environ["AQUEUE_DJANGO_PG_DB"],
    }


@pytest.fixture(autouse=True)
def django_in_force(
    django_environment: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> dict[str, str]:
    """The Django environment, for the duration of one test (monkeypatch undoes it).

    The shared tasks the example imports are undone after each test by `tests/conftest.py`.
    """
    for name, value in django_environment.items():
        monkeypatch.setenv(name, value)
    monkeypatch.syspath_prepend(str(EXAMPLE))
    monkeypatch.delenv("AQUEUE_BROKER_URL", raising=False)
    return django_environment


@pytest.fixture(scope="session")
def pg_database(django_environment: dict[str, str]) -> str:
    """This run's own PostgreSQL database, with every app's tables (dropped at exit)."""
    if reason := service_django.pg_unreachable():
        service_unavailable(reason)
    service_django.migrate("pg")
    return "pg"


@pytest.fixture(params=["default", "pg"], ids=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest) -> str:
    """Each database alias in turn: SQLite, then this run's PostgreSQL database."""
    if request.param == "pg":
        return str(request.getfixturevalue("pg_database"))
    return "default"
