"""The contract suites (tests/contract/) again, on a Redis Cluster.

Three primaries of the session's own (tests/helpers/redis_cluster.py), started once; every
test gets `redis+cluster://...` under a key prefix of its own.
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from tests.helpers import service_redis
from tests.helpers.drivers import service_unavailable
from tests.helpers.redis_cluster import ClusterGroup


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterGroup]:
    if shutil.which("redis-server") is None or shutil.which("redis-cli") is None:
        service_unavailable("redis-server and redis-cli are not on PATH")
    group = ClusterGroup(Path(tmp_path_factory.mktemp("cluster")))
    try:
        group.start_blocking()
        yield group
    finally:
        group.stop()


@pytest.fixture
async def broker_url(redis_cluster: ClusterGroup) -> AsyncIterator[str]:
    """Overrides tests/conftest.py's: the one driver here is a Redis Cluster."""
    url = redis_cluster.url(query=f"prefix=aqueue-test-{uuid.uuid4().hex[:10]}")
    yield url
    await service_redis.cleanup(url)
