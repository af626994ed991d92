"""tests/test_redis_throttle.py's rate limiter and semaphore tests, on a Redis Cluster."""

from __future__ import annotations

import pytest

from .. import test_redis_throttle
from ..test_redis_throttle import *  # noqa: F403 - the same tests, another url


@pytest.fixture
def url(broker_url: str) -> str:
    """Overrides tests/test_redis_throttle.py's: a Redis Cluster (see conftest.py)."""
    return broker_url


# It publishes, then checks a subscriber got it once every task waits: on a cluster the
# message reaches the subscriber's node over the cluster bus, after PUBLISH has returned.
_NOT_HERE = test_redis_throttle.test_the_reader_reads_for_sleepers_and_hands_over_when_cancelled
globals().pop(_NOT_HERE.__name__)
