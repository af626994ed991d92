"""Throttles: rate limits (`rate_limit="10/m"`) and per-task concurrency (`concurrency=2`).

Both are seams with a local implementation here and a global one where the app has Redis:

- `RateLimiter.reserve(key, rate, burst)` books the next start of a task under GCRA (the
  generic cell rate algorithm) and says how long to wait for it. Bookings are made in order,
  so N workers asking at once get N successive start times rather than all retrying at once.
  The Redis limiter books in one Lua script against Redis' own clock, for every worker at
  once; `LocalRateLimiter` books in this process, for this worker only.
- `Semaphore.acquire(key, limit, lease)` takes one of `limit` places, returning a token, or
  None when all are taken; a holder renews its lease while it runs and releases after, and a
  place whose lease ran out (its worker died) is free again. `wait(key)` returns when a place
  may have come free (a notification, not a clock).
"""

from __future__ import annotations

import math
import re
import time
import uuid
from typing import Literal

import anyio

from .drivers.base import RateLimiter, Semaphore
from .exceptions import ConfigurationError

__all__ = ["LocalRateLimiter", "LocalSemaphore", "parse_rate"]

_RATE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*(?:/\s*([smh]))?\s*$")
_PER = {"s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def parse_rate(rate: str | float | None) -> float | None:
    """Return a rate limit in tasks per second: `"10/m"`, `"2.5/s"`, `"100/h"`, `5` (per s).

    None, 0 and `"0"` mean no limit. Anything else is a one-line `ConfigurationError`.
    """
    if rate is None:
        return None
    if isinstance(rate, bool) or not isinstance(rate, int | float | str):
        raise ConfigurationError(
            f"rate limit {str(rate)[:100]!r} is not a rate; write it as 10/s, 10/m, 10/h"
        )
    if isinstance(rate, int | float):
        per_second = float(rate)
    else:
        match = _RATE.match(rate)
        if match is None:
            raise ConfigurationError(
                f"rate limit {rate!r} is not a rate; write it as N/s, N/m or N/h (e.g. 10/m)"
            )
        per_second = float(match.group(1)) / _PER[match.group(2)]
    if not math.isfinite(per_second):  # nan compares false with everything: check first
        raise ConfigurationError(f"rate limit {rate!r} is not a finite number of tasks")
    if per_second < 0:
        raise ConfigurationError(f"rate limit {rate!r} must not be negative")
    return per_second or None


class LocalRateLimiter(RateLimiter):
    """GCRA in this process: each worker admits `rate` on its own."""

    scope: Literal["global", "local"] = "local"

    def __init__(self) -> None:
        # Per key: the theoretical arrival time of the next start, and the interval it was
        # booked at. A changed rate rescales the backlog still ahead, as the Redis limiter does.
        self._tat: dict[str, tuple[float, float]] = {}

    async def reserve(self, key: str, rate: float, burst: int = 1) -> float:
        """Book a start; return how long to wait for it."""
        now = time.monotonic()
        interval = 1.0 / rate
        tat, booked_at = self._tat.get(key, (now, interval))
        if booked_at != interval and tat > now:
            tat = now + (tat - now) / booked_at * interval
        tat = max(tat, now)
        start = max(now, tat - (burst - 1) * interval)
        self._tat[key] = (tat + interval, interval)
        return start - now


class LocalSemaphore(Semaphore):
    """Places counted in this process: each worker allows `limit` on its own."""

    scope: Literal["global", "local"] = "local"

    def __init__(self) -> None:
        self._held: dict[str, set[str]] = {}
        self._freed: dict[str, anyio.Event] = {}

    async def acquire(self, key: str, limit: int, lease: float) -> str | None:
        """Take a place if one is free (leases need no expiry: holders live in this process)."""
        held = self._held.setdefault(key, set())
        if len(held) >= limit:
            return None
        token = uuid.uuid4().hex
        held.add(token)
        return token

    async def renew(self, key: str, token: str, lease: float) -> None:
        """Nothing to renew in-process."""

    async def release(self, key: str, token: str) -> None:
        """Free the place and wake whoever waits for one."""
        self._held.get(key, set()).discard(token)
        event = self._freed.pop(key, None)
        if event is not None:
            event.set()

    async def wait(self, key: str, at_most: float) -> None:
        """Wait for a release of `key`."""
        event = self._freed.setdefault(key, anyio.Event())
        with anyio.move_on_after(at_most):
            await event.wait()
