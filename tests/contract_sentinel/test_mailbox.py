"""tests/contract/test_mailbox.py, on Redis behind Sentinel (see conftest.py)."""

from ..contract.test_mailbox import *  # noqa: F403 - the same tests, another broker_url
