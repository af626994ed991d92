"""Which drivers the tests run on, their URLs, and the rule for unreachable services.

Each server-backed driver has a module here (`service_redis.py`, `service_amqp.py`) with
`URL_SCHEME`, `make_url(unique)`, `async unreachable() -> str | None` and `async cleanup(url)`.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest

from aqueue import App
from tests.helpers import service_amqp, service_redis

__all__ = [
    "DRIVERS",
    "REQUIRE_SERVICES",
    "SERVICES",
    "MakeApp",
    "driver_url",
    "require",
    "service_unavailable",
]

#: CI sets this: a test that needs an unreachable service fails instead of skipping.
REQUIRE_SERVICES = os.environ.get("AQUEUE_REQUIRE_SERVICES") == "1"

SERVICES: dict[str, ModuleType] = {"redis": service_redis, "amqp": service_amqp}
DRIVERS = ["memory", "sqlite", *(name for name, mod in SERVICES.items() if mod.ENABLED)]


def service_unavailable(reason: str) -> None:
    """Skip (or, under AQUEUE_REQUIRE_SERVICES=1, fail) a test whose service is unreachable."""
    if REQUIRE_SERVICES:
        pytest.fail(f"{reason} (AQUEUE_REQUIRE_SERVICES=1 turns this skip into a failure)")
    pytest.skip(reason)


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


MakeApp = Callable[..., App]
