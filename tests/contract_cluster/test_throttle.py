"""The rate limiter and semaphore tests (tests/drivers/redis/test_redis_throttle.py), on a
Redis Cluster."""

from __future__ import annotations

import pytest

from tests.drivers.redis import test_redis_throttle
from tests.drivers.redis.test_redis_throttle import *  # noqa: F403 - the same tests, another url


@pytest.fixture
def url(broker_url: str) -> str:
    """Overrides tests/drivers/redis/test_redis_throttle.py's: a Redis Cluster (see conftest.py)."""
    return broker_url


# It publishes, then checks a subscriber got it once every task waits: on a cluster the
# message reaches the subscriber's node over the cluster bus, after PUBLISH has returned.
globals().pop(
    test_redis_throttle.test_the_reader_reads_for_sleepers_and_hands_over_when_cancelled.__name__
)
# It books on the broker, then on a backend's first connection, within one interval (100 ms):
# a cluster client's first command reads the slot map first, and under load the first booking
# had expired (its key lives one interval) before the second came.
globals().pop(test_redis_throttle.test_a_redis_backend_gives_global_throttles.__name__)
