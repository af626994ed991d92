"""Drivers, found by URL scheme and imported on first use.

Brokers and result backends register a scheme with the dotted path of their class; nothing is
imported until a URL with that scheme is used, so an app that never touches Redis never needs
redis-py. Third-party drivers call `register_broker` / `register_backend` at import time.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

from ..exceptions import ConfigurationError, MissingDependency
from ..urls import redact, scheme_of
from .base import Broker, ResultBackend

__all__ = ["create_backend", "create_broker", "register_backend", "register_broker"]

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
    "rpc": ("aqueue.drivers.amqp.rpc:RPCBackend", "amqp"),
}


def register_broker(scheme: str, target: str, extra: str | None = None) -> None:
    """Make `scheme://` URLs open the broker class at `target` ("package.module:Class")."""
    _BROKERS[scheme.lower()] = (target, extra)


def register_backend(scheme: str, target: str, extra: str | None = None) -> None:
    """Make `scheme://` URLs open the result backend class at `target`."""
    _BACKENDS[scheme.lower()] = (target, extra)


def _load(table: dict[str, tuple[str, str | None]], url: str, kind: str) -> type[Any]:
    scheme = scheme_of(url)
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
