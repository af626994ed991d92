"""How the tests reach Redis: `AQUEUE_TEST_REDIS_URL`, each test under its own key prefix.

redis-py is imported only when a test needs it, so the rest of the suite runs without it.
"""

from __future__ import annotations

import importlib.util
import os
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl, urlsplit

import pytest

if TYPE_CHECKING:
    import redis.asyncio as aioredis

#: Whether the contract suite runs on this driver.
ENABLED = True

URL = os.environ.get("AQUEUE_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
MISSING = "redis-py is not installed: pip install 'aqueue-tasks[redis]'"


def require_client_library() -> None:
    """At a test module's top: skip it (or fail, under AQUEUE_REQUIRE_SERVICES=1) without
    redis-py."""
    if importlib.util.find_spec("redis") is None:
        if os.environ.get("AQUEUE_REQUIRE_SERVICES") == "1":
            pytest.fail(f"{MISSING} (AQUEUE_REQUIRE_SERVICES=1)", pytrace=False)
        pytest.skip(MISSING, allow_module_level=True)


def make_url(unique: str) -> str:
    """The test server's URL with a key prefix of its own."""
    separator = "&" if "?" in URL else "?"
    return f"{URL}{separator}prefix=aqueue-test-{unique}"


def client(url: str = URL) -> aioredis.Redis:
    """A plain client for the server of `url` (close it with `aclose`)."""
    from aqueue.drivers.redis.client import parse_redis_url

    return parse_redis_url(url, {}).client()


async def unreachable() -> str | None:
    """Why Redis cannot be used, or None when it answers a PING."""
    if importlib.util.find_spec("redis") is None:
        return MISSING
    from aqueue.urls import redact

    each = client()
    try:
        await each.ping()
    except Exception as exc:
        return f"Redis at {redact(URL)} is not reachable: {exc}"
    finally:
        await each.aclose()
    return None


def prefix_of(url: str) -> str:
    return dict(parse_qsl(urlsplit(url).query)).get("prefix", "aqueue")


async def cleanup(url: str) -> None:
    """Delete every key under the URL's prefix."""
    each = client(url)
    try:
        keys = [key async for key in each.scan_iter(match=f"{prefix_of(url)}:*", count=1000)]
        for start in range(0, len(keys), 1000):
            await each.delete(*keys[start : start + 1000])
    finally:
        await each.aclose()
