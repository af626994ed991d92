"""Shared fixtures: apps on every driver (the contract), worker projects, the --loop option.

Plain helpers live in `tests/helpers/` (`drivers.py`: which drivers, their URLs, and the rule
for unreachable services); test modules import those, never each other or this file.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from aqueue import App, current
from tests.helpers import service_redis
from tests.helpers.cli import restore_logging, write_module  # noqa: F401 - fixtures
from tests.helpers.drivers import (
    DRIVERS,
    SERVICES,
    MakeApp,
    driver_url,
    require,
    service_unavailable,
)
from tests.helpers.loops import (  # noqa: F401 - the --loop option: asyncio and uvloop
    pytest_addoption,
    pytest_asyncio_loop_factories,
    pytest_configure,
)
from tests.helpers.processes import redis_servers  # noqa: F401 - Redis servers of a test's own
from tests.helpers.worker_project import project, workers  # noqa: F401 - worker processes


@pytest.fixture(autouse=True)
def _shared_tasks_restored() -> Iterator[None]:
    """Each test leaves the shared tasks and the current app as it found them.

    A `@shared_task` imported during a test (Django's autodiscovery of the example project)
    would otherwise join every app made later in the run.
    """
    shared, current_app = list(current._shared), list(current._current)
    yield
    current._shared[:] = shared
    current._current[:] = current_app


@pytest.fixture
async def shared_url() -> AsyncIterator[str]:
    """The shared test Redis (AQUEUE_TEST_REDIS_URL) under a key prefix of this test's own."""
    if reason := await service_redis.unreachable():
        service_unavailable(reason)
    url = service_redis.make_url(uuid.uuid4().hex[:10])
    yield url
    await service_redis.cleanup(url)


@pytest.fixture(params=DRIVERS)
async def broker_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """Each driver's URL in turn: the contract every driver must keep."""
    driver: str = request.param
    await require(driver)
    url = driver_url(driver, tmp_path)
    yield url
    if driver in SERVICES:
        await SERVICES[driver].cleanup(url)


@pytest.fixture
async def make_app(broker_url: str) -> AsyncIterator[MakeApp]:
    """A factory of apps on this test's broker; closes every app it made."""
    apps: list[App] = []

    def make(main: str = "tests", **settings: Any) -> App:
        settings.setdefault("broker", broker_url)
        app = App(main, set_as_current=False, **settings)
        apps.append(app)
        return app

    yield make
    for app in apps:
        await app.close()


@pytest.fixture
def chdir_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run the test in its own empty directory (the SQLite default lands there)."""
    monkeypatch.chdir(tmp_path)
    return tmp_path
