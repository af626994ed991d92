"""tests/contract/test_backend.py, on Redis behind Sentinel (see conftest.py)."""

from ..contract.test_backend import *  # noqa: F403 - the same tests, another broker_url
