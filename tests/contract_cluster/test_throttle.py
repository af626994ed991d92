"""tests/test_redis_throttle.py's rate limiter and semaphore tests, on a Redis Cluster."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from ..test_redis_throttle import *  # noqa: F403 - the same tests, another url


@pytest.fixture
async def url(broker_url: str) -> AsyncIterator[str]:
    """Overrides tests/test_redis_throttle.py's: a Redis Cluster (see conftest.py)."""
    yield broker_url

# It publishes, then checks a subscriber got it once every task waits: on a cluster the
# message reaches the subscriber's node over the cluster bus, after PUBLISH has returned.
del test_the_reader_reads_for_sleepers_and_hands_over_when_cancelled  # noqa: F405
