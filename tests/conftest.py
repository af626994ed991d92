"""Shared fixtures: apps on every driver, and the rule for unreachable services."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from aqueue import App

#: CI sets this: a test that needs an unreachable service fails instead of skipping.
REQUIRE_SERVICES = os.environ.get("AQUEUE_REQUIRE_SERVICES") == "1"

DRIVERS = ["memory", "sqlite"]


def service_unavailable(reason: str) -> None:
    """Skip (or, under AQUEUE_REQUIRE_SERVICES=1, fail) a test whose service is unreachable."""
    if REQUIRE_SERVICES:
        pytest.fail(f"{reason} (AQUEUE_REQUIRE_SERVICES=1 turns this skip into a failure)")
    pytest.skip(reason)


def driver_url(driver: str, tmp_path: Path) -> str:
    """A broker URL for `driver`, private to one test."""
    if driver == "memory":
        return "memory://"
    if driver == "sqlite":
        return f"sqlite:///{tmp_path / 'aqueue.db'}"
    raise AssertionError(f"no such driver {driver}")


@pytest.fixture(params=DRIVERS)
def broker_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Each driver's URL in turn: the contract every driver must keep."""
    return driver_url(request.param, tmp_path)


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
