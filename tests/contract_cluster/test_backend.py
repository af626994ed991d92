"""tests/contract/test_backend.py, on a Redis Cluster (see conftest.py)."""

from ..contract.test_backend import *  # noqa: F403 - the same tests, another broker_url
