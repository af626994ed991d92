"""tests/contract/test_mailbox.py, on a Redis Cluster (see conftest.py)."""

from ..contract.test_mailbox import *  # noqa: F403 - the same tests, another broker_url
