"""tests/contract/test_broker.py, on Redis behind Sentinel (see conftest.py)."""

from ..contract.test_broker import *  # noqa: F403 - the same tests, another broker_url
