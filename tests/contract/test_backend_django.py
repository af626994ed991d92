"""The result backend contract on the Django stores: django-db (SQLite, PostgreSQL) and
django-cache (local memory, files)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest

from aqueue import ResultBackend
from aqueue.drivers import create_backend
from tests.helpers import service_django
from tests.helpers.drivers import service_unavailable

from .test_backend import (  # noqa: F401 - the contract, collected here on these stores
    task_id,
    test_expired_results_are_gone,
    test_many_waiters_all_wake,
    test_store_fetch_forget,
    test_wait_returns_a_stored_result_at_once,
    test_wait_wakes_on_a_ready_state_only,
)

pytestmark = pytest.mark.both_loops

URLS = ["django-db", "django-db://pg", "django-cache", "django-cache://files"]


@pytest.fixture(scope="session")
def django_databases() -> Iterator[None]:
    service_django.configure()
    yield
    service_django.drop_migrated()


@pytest.fixture(params=URLS)
def django_url(request: pytest.FixtureRequest, django_databases: None) -> str:
    """Each Django store's URL, its database migrated (sync: the ORM refuses a running loop)."""
    url: str = request.param
    if url == "django-db://pg":
        if reason := service_django.pg_unreachable():
            service_unavailable(reason)
        service_django.migrate("pg")
    elif url == "django-db":
        service_django.migrate("default")
    return url


@pytest.fixture
async def backend(django_url: str) -> AsyncIterator[ResultBackend]:
    async with create_backend(django_url, {}) as backend:
        yield backend
