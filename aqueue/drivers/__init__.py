"""Drivers, found by URL scheme and imported on first use; and the API to write one.

Brokers and result backends register a scheme with the dotted path of their class; nothing is
imported until a URL with that scheme is used, so an app that never touches Redis never needs
redis-py. Third-party drivers call `register_broker` / `register_backend` at import time.

This package is the driver author's namespace (as `anyio.abc` is anyio's): the seams a driver
implements (`Broker`, `Delivery`, `ResultBackend`, `Mailbox`, `RateLimiter`, `Semaphore`, from
`aqueue.drivers.base`), the typed options every broker reads (`BrokerOptions`, from
`aqueue.drivers.options`), and the registry. Each built-in driver is a package of its own
(`memory`, `sqlite`, `redis`, `amqp`); none imports another.
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Mapping
from typing import Any

from ..exceptions import ConfigurationError, MissingDependency
from ..urls import redact, scheme_of
from .base import (
    DEAD_LETTER_MAX_BYTES,
    DEAD_LETTER_MAX_COUNT,
    UNSTARTED_FACTOR,
    Broker,
    Credit,
    DeadLetter,
    DeadLetterStats,
    Delayed,
    Delivery,
    Mailbox,
    QueueStats,
    RateLimiter,
    ResultBackend,
    Semaphore,
    StoredResult,
)
from .options import BrokerOptions

__all__ = [
    "DEAD_LETTER_MAX_BYTES",
    "DEAD_LETTER_MAX_COUNT",
    "UNSTARTED_FACTOR",
    "Broker",
    "BrokerOptions",
    "Credit",
    "DeadLetter",
    "DeadLetterStats",
    "Delayed",
    "Delivery",
    "Mailbox",
    "QueueStats",
    "RateLimiter",
    "ResultBackend",
    "Semaphore",
    "StoredResult",
    "create_backend",
    "create_broker",
    "default_backend",
    "preload",
    "register_backend",
    "register_broker",
]

# scheme -> ("module:Class", pip extra that provides its dependency, or None)
_REDIS_BROKER = ("aqueue.drivers.redis.broker:RedisBroker", "redis")
_REDIS_BACKEND = ("aqueue.drivers.redis.results:RedisBackend", "redis")
_AMQP_BROKER = ("aqueue.drivers.amqp.broker:AMQPBroker", "amqp")

_BROKERS: dict[str, tuple[str, str | None]] = {
    "memory": ("aqueue.drivers.memory.broker:MemoryBroker", None),
    "sqlite": ("aqueue.drivers.sqlite.broker:SQLiteBroker", None),
    "redis": _REDIS_BROKER,
    "rediss": _REDIS_BROKER,
    "unix": _REDIS_BROKER,
    "redis+sentinel": _REDIS_BROKER,
    "sentinel": _REDIS_BROKER,
    "redis+cluster": _REDIS_BROKER,
    "amqp": _AMQP_BROKER,
    "amqps": _AMQP_BROKER,
    "pyamqp": _AMQP_BROKER,
}
_BACKENDS: dict[str, tuple[str, str | None]] = {
    "memory": ("aqueue.drivers.memory.results:MemoryBackend", None),
    "sqlite": ("aqueue.drivers.sqlite.results:SQLiteBackend", None),
    "redis": _REDIS_BACKEND,
    "rediss": _REDIS_BACKEND,
    "unix": _REDIS_BACKEND,
    "redis+sentinel": _REDIS_BACKEND,
    "sentinel": _REDIS_BACKEND,
    "redis+cluster": _REDIS_BACKEND,
    "rpc": ("aqueue.drivers.amqp.rpc:RPCBackend", "amqp"),
    # Celery's "django-db" and "django-cache" (written bare too, see _scheme)
    "django-db": ("aqueue.contrib.django.results.database:DjangoDBBackend", "django"),
    "django-cache": ("aqueue.contrib.django.results.cache:DjangoCacheBackend", "django"),
}


#: Result backends for brokers whose scheme has no store of the same name (any other broker's
#: results go to its own URL).
_DEFAULT_BACKENDS: dict[str, str] = {"amqp": "rpc://", "amqps": "rpc://", "pyamqp": "rpc://"}


def register_broker(
    scheme: str, target: str, extra: str | None = None, *, default_backend: str | None = None
) -> None:
    """Make `scheme://` URLs open the broker class at `target` ("package.module:Class").

    `extra` names the pip extra that provides the driver's dependencies. `default_backend` is
    the result backend URL an app on this broker uses when it names none; without it, results
    go to the broker's own URL (a result backend registered under the same scheme).
    """
    _BROKERS[scheme.lower()] = (target, extra)
    if default_backend is not None:
        _DEFAULT_BACKENDS[scheme.lower()] = default_backend


def default_backend(broker_url: str) -> str:
    """Return the result backend URL for an app on `broker_url` that names none."""
    return _DEFAULT_BACKENDS.get(scheme_of(broker_url), broker_url)


def register_backend(scheme: str, target: str, extra: str | None = None) -> None:
    """Make `scheme://` URLs open the result backend class at `target`."""
    _BACKENDS[scheme.lower()] = (target, extra)


#: Result backends Celery names without "://" (django-celery-results'), accepted as written.
_BARE_BACKENDS = frozenset({"django-db", "django-cache"})


def _scheme(table: dict[str, tuple[str, str | None]], url: str) -> str:
    """Return the scheme of `url`; Celery's bare "django-db" and "django-cache" stand alone."""
    if table is _BACKENDS and url.lower() in _BARE_BACKENDS:
        return url.lower()
    return scheme_of(url)


def _load(table: dict[str, tuple[str, str | None]], url: str, kind: str) -> type[Any]:
    scheme = _scheme(table, url)
    try:
        target, extra = table[scheme]
    except KeyError:
        known = ", ".join(f"{name}://" for name in sorted(table))
        raise ConfigurationError(
            f"no {kind} driver for {redact(url)!r}; use one of {known}"
        ) from None
    module_name, _, attr = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        if extra is None:
            raise
        raise MissingDependency(
            f"{scheme}:// needs {exc.name or 'an optional package'}: "
            f'run pip install "aqueue-tasks[{extra}]"'
        ) from None
    cls: type[Any] = getattr(module, attr)
    return cls


def preload(broker_url: str, backend_url: str | None) -> None:
    """Import the driver modules these URLs will open, now (a standby worker, ahead of need).

    Nothing is opened; an error (an unknown scheme, a missing package) is left for the open
    to raise in its own words.
    """
    for table, url, kind in ((_BROKERS, broker_url, "broker"), (_BACKENDS, backend_url, "")):
        if url is not None:
            with contextlib.suppress(Exception):
                _load(table, url, kind or "result backend")


def create_broker(url: str, options: Mapping[str, Any]) -> Broker:
    """Return an unopened broker for `url`."""
    cls = _load(_BROKERS, url, "broker")
    broker: Broker = cls(url, options)
    return broker


def create_backend(url: str, options: Mapping[str, Any]) -> ResultBackend:
    """Return an unopened result backend for `url`."""
    cls = _load(_BACKENDS, url, "result backend")
    backend: ResultBackend = cls(url, options)
    return backend
