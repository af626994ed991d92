"""Typed broker options: parsed and checked once, here, for every driver that reads them.

A broker gets its options as a plain mapping: the app's `broker_*` settings, then the URL's
query and `broker_transport_options` (any of them may be strings). `BrokerOptions.parse` reads
the options aqueue itself defines into one frozen object, with the defaults written once:

- `visibility_timeout` (seconds, default 30): how long a lease-based broker (SQLite, Redis)
  keeps a delivered message from others; the worker renews it every third of that;
- `max_deliveries` (default 5): runs that may end in a dead worker before a message is
  dead-lettered;
- `heartbeat_interval` (1 s) and `heartbeat_timeout` (5 s; None: leases only): see
  `aqueue.drivers.heartbeat`;
- `dead_letter_max_bytes`: the bytes of dead letters a queue keeps;
- `message_max_bytes` (None: no limit; an app passes its own, plus a signature's bytes when it
  signs messages): a broker that can see a message's size before it reads and leases it
  (SQLite) dead-letters a longer one as `oversized` at the claim, unread.

Brokers whose messages are not leased (RabbitMQ, memory) parse with `leases=False`: the lease
and heartbeat options are left at their defaults, unread.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..exceptions import ConfigurationError
from .base import DEAD_LETTER_MAX_BYTES

__all__ = [
    "HEARTBEAT_INTERVAL",
    "HEARTBEAT_TIMEOUT",
    "MAX_DELIVERIES",
    "VISIBILITY_TIMEOUT",
    "BrokerOptions",
    "heartbeat_options",
]

VISIBILITY_TIMEOUT = 30.0
MAX_DELIVERIES = 5
HEARTBEAT_INTERVAL = 1.0
HEARTBEAT_TIMEOUT = 5.0


@dataclass(frozen=True, slots=True)
class BrokerOptions:
    """The options aqueue defines for every broker, checked."""

    visibility_timeout: float = VISIBILITY_TIMEOUT
    max_deliveries: int = MAX_DELIVERIES
    heartbeat_interval: float = HEARTBEAT_INTERVAL
    #: None: no heartbeats, leases only.
    heartbeat_timeout: float | None = HEARTBEAT_TIMEOUT
    dead_letter_max_bytes: int = DEAD_LETTER_MAX_BYTES
    #: None: the broker takes messages of any size (the worker refuses those over its limit).
    message_max_bytes: int | None = None

    @property
    def renew_interval(self) -> float:
        """How often the worker renews the lease of a running message."""
        return self.visibility_timeout / 3

    @classmethod
    def parse(cls, options: Mapping[str, Any], *, leases: bool = True) -> BrokerOptions:
        """Read and check the options; a bad one is a one-line `ConfigurationError`."""
        timeout = options.get("visibility_timeout") if leases else None
        visibility_timeout = VISIBILITY_TIMEOUT if timeout is None else float(timeout)
        deliveries = options.get("max_deliveries")
        max_deliveries = MAX_DELIVERIES if deliveries is None else int(deliveries)
        if not visibility_timeout > 0:
            raise ConfigurationError(f"visibility_timeout must be > 0, not {timeout!r}")
        if max_deliveries < 1:
            raise ConfigurationError(f"max_deliveries must be at least 1, not {deliveries!r}")
        interval: float = HEARTBEAT_INTERVAL
        heartbeat_timeout: float | None = HEARTBEAT_TIMEOUT
        if leases:
            interval, heartbeat_timeout = heartbeat_options(options)
        cap = int(options.get("dead_letter_max_bytes") or DEAD_LETTER_MAX_BYTES)
        limit = _max_bytes(options.get("message_max_bytes"))
        return cls(visibility_timeout, max_deliveries, interval, heartbeat_timeout, cap, limit)


def _max_bytes(value: Any) -> int | None:
    if value is None:
        return None
    try:
        limit = int(value)
    except (TypeError, ValueError):
        limit = 0
    if isinstance(value, bool) or limit < 1:
        raise ConfigurationError(f"message_max_bytes must be a number of bytes > 0, not {value!r}")
    return limit


def heartbeat_options(options: Mapping[str, Any]) -> tuple[float, float | None]:
    """Return (interval, timeout) from a broker's options; timeout None: no heartbeat."""
    raw_interval = options.get("heartbeat_interval")
    interval = (
        HEARTBEAT_INTERVAL if raw_interval is None else _seconds("heartbeat_interval", raw_interval)
    )
    raw_timeout = options.get("heartbeat_timeout", HEARTBEAT_TIMEOUT)
    if raw_timeout is None:
        return interval, None
    timeout = _seconds("heartbeat_timeout", raw_timeout)
    if not timeout > interval:
        raise ConfigurationError(
            f"heartbeat_timeout ({timeout:g} s) must be more than heartbeat_interval "
            f"({interval:g} s): a few beats must fit in it"
        )
    return interval, timeout


def _seconds(name: str, value: Any) -> float:
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        seconds = math.nan
    if isinstance(value, bool) or not 0 < seconds < math.inf:
        raise ConfigurationError(f"{name} must be a number of seconds > 0, not {value!r}")
    return seconds
