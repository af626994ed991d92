"""Shared fixtures: apps on every driver, and the rule for unreachable services.

Each server-backed driver has a module here (`service_redis.py`, `service_amqp.py`) with
`URL_SCHEME`, `make_url(unique)`, `async unreachable() -> str | None` and
`async cleanup(url)`; the fixtures below run the contract on every driver in `DRIVERS`.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from aqueue import App, current

from . import service_amqp, service_redis
from .loops import (  # noqa: F401 - the --loop option: asyncio and uvloop
    pytest_addoption,
    pytest_asyncio_loop_factories,
    pytest_configure,
)
from .test_processes import project, workers  # noqa: F401 - worker-process fixtures, shared

#: CI sets this: a test that needs an unreachable service fails instead of skipping.
REQUIRE_SERVICES = os.environ.get("AQUEUE_REQUIRE_SERVICES") == "1"

SERVICES: dict[str, ModuleType] = {"redis": service_redis, "amqp": service_amqp}
DRIVERS = ["memory", "sqlite", *(name for name, mod in SERVICES.items() if mod.ENABLED)]


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


def service_unavailable(reason: str) -> None:
    """Skip (or, under AQUEUE_REQUIRE_SERVICES=1, fail) a test whose service is unreachable."""
    if REQUIRE_SERVICES:
        pytest.fail(f"{reason} (AQUEUE_REQUIRE_SERVICES=1 turns this skip into a failure)")
    pytest.skip(reason)


@pytest.fixture
async def shared_url() -> AsyncIterator[str]:
    """The shared test Redis (AQUEUE_TEST_REDIS_URL) under a key prefix of this test's own."""
    if reason := await service_redis.unreachable():
        service_unavailable(reason)
    url = service_redis.make_url(uuid.uuid4().hex[:10])
    yield url
    await service_redis.cleanup(url)


def driver_url(driver: str, tmp_path: Path) -> str:
    """A URL for `driver` private to one test (its own file, key prefix or queue names)."""
    if driver == "memory":
        return "memory://"
    if driver == "sqlite":
        return f"sqlite:///{tmp_path / 'aqueue.db'}"
    return str(SERVICES[driver].make_url(uuid.uuid4().hex[:10]))


async def require(driver: str) -> None:
    """Skip or fail the test when `driver`'s server is not reachable."""
    service = SERVICES.get(driver)
    if service is not None and (reason := await service.unreachable()):
        service_unavailable(reason)


@pytest.fixture(params=DRIVERS)
async def broker_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """Each driver's URL in turn: the contract every driver must keep."""
    driver: str = request.param
    await require(driver)
    url = driver_url(driver, tmp_path)
    yield url
    if driver in SERVICES:
        await SERVICES[driver].cleanup(url)


MakeApp = Callable[..., App]


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
