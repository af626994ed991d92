"""The contract suites (tests/contract/) again, on Redis behind Sentinel.

One primary, two replicas and three sentinels of the session's own
(tests/helpers/redis_sentinel.py), started once; every test gets `redis+sentinel://...` under a
key prefix of its own.
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from tests.helpers import service_redis
from tests.helpers.drivers import service_unavailable
from tests.helpers.redis_sentinel import SentinelGroup


@pytest.fixture(scope="session")
def sentinel_group(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SentinelGroup]:
    if shutil.which("redis-server") is None:
        service_unavailable("redis-server is not on PATH")
    group = SentinelGroup(Path(tmp_path_factory.mktemp("sentinel")))
    try:
        group.start_blocking()
        yield group
    finally:
        group.stop()


@pytest.fixture
async def broker_url(sentinel_group: SentinelGroup) -> AsyncIterator[str]:
    """Overrides tests/conftest.py's: the one driver here is Redis behind Sentinel."""
    url = sentinel_group.url(query=f"prefix=aqueue-test-{uuid.uuid4().hex[:10]}")
    yield url
    await service_redis.cleanup(url)
