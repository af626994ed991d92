"""tests/contract/test_dead_letters.py, on a Redis Cluster (see conftest.py)."""

from ..contract.test_dead_letters import *  # noqa: F403 - the same tests, another broker_url
