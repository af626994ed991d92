"""What the RabbitMQ broker and the `rpc://` backend share.

Settings from the URL, one reconnecting AMQP connection, and errors that never show a password.

URLs, as Celery writes them:

    amqp://user:password@host:5672/vhost     plain TCP; `//` (or nothing) is the vhost "/"
    amqp://user:password@h1:5672,h2:5672//   a cluster: hosts tried in order (see `Link`)
    amqps://user:password@host:5671/vhost    TLS, with the server certificate checked
    pyamqp://...                              an alias of amqp://, for Celery users

Settings come from the URL query (`?heartbeat=30&name=web-1&prefix=staging-`) or from the
transport options (`broker_transport_options`), the options winning:

    heartbeat       seconds between heartbeats (default 60; 0 turns them off)
    name            the connection name RabbitMQ shows (default "aqueue <role> <host> pid <pid>")
    prefix          prepended to the name of every queue and exchange aqueue declares
    queue_type      "classic" (default) or "quorum"
    max_priority    x-max-priority of classic queues (default 9; 0 turns priorities off)
    connect_timeout seconds to wait for a connection (default 10)
    publish_timeout seconds a publish waits for RabbitMQ's confirms (default 30; 0: no limit):
                    past it the caller gets a BrokerError (a memory or disk alarm blocks
                    publishers)
    cafile, certfile, keyfile   TLS files for amqps:// (options may also give `ssl_context`)

The connection (`Link`) opens once, fails fast if RabbitMQ is unreachable, and afterwards
reconnects with a capped exponential backoff whenever a caller finds it closed. With several
hosts, each connection attempt tries them in order (the first that answers wins), and the
backoff comes between rounds over all of them. The transport option `failover` (a list of
`host[:port]`) adds hosts after the URL's.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import socket
import ssl
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import parse_qsl, quote, unquote, urlsplit

import aiormq
import anyio
from aiormq.abc import AbstractChannel, AbstractConnection

from ...exceptions import BrokerError, ConfigurationError
from ...urls import redact, secrets_in

__all__ = [
    "AMQP_ERRORS",
    "AMQPSettings",
    "Link",
    "amqp_errors",
    "parse_amqp_url",
    "released",
    "scrub",
]

logger = logging.getLogger("aqueue.amqp")

#: What aiormq raises when the connection or a channel fails (a closed channel included).
AMQP_ERRORS: tuple[type[BaseException], ...] = (
    aiormq.exceptions.AMQPError,
    aiormq.exceptions.ChannelInvalidStateError,
    ConnectionError,
    OSError,
)

_PORTS = {"amqp": 5672, "amqps": 5671}
_QUERY_KEYS = frozenset(
    {
        "heartbeat",
        "name",
        "prefix",
        "queue_type",
        "max_priority",
        "connect_timeout",
        "publish_timeout",
        "cafile",
        "certfile",
        "keyfile",
    }
)
#: Reconnect backoff: first wait, factor and cap, in seconds.
BACKOFF = (0.1, 2.0, 3.0)


@dataclass(frozen=True)
class AMQPSettings:
    """A parsed AMQP URL and its options; its repr never shows the password."""

    url: str = field(repr=False)
    display: str
    tls: bool
    host: str  # the first node
    port: int
    username: str = field(repr=False)
    password: str = field(repr=False)
    vhost: str
    heartbeat: int = 60
    name: str | None = None
    prefix: str = ""
    queue_type: Literal["classic", "quorum"] = "classic"
    max_priority: int = 9
    connect_timeout: float = 10.0
    publish_timeout: float = 30.0
    cafile: str | None = None
    certfile: str | None = None
    keyfile: str | None = None
    ssl_context: ssl.SSLContext | None = field(default=None, repr=False, compare=False)
    #: The nodes to try after `host`, `port`, in order (the rest of a cluster).
    failover: tuple[tuple[str, int], ...] = ()

    def aiormq_url(self, role: str, address: tuple[str, int] | None = None) -> str:
        """Return the URL aiormq connects to (it holds the password: never log it)."""
        name = self.name or f"aqueue {role} {socket.gethostname()} pid {os.getpid()}"
        if self.name and role != "broker":
            name = f"{self.name} ({role})"
        scheme = "amqps" if self.tls else "amqp"
        user = quote(self.username, safe="")
        password = quote(self.password, safe="")
        host, port = address or (self.host, self.port)
        host = f"[{host}]" if ":" in host else host
        vhost = quote(self.vhost, safe="")
        query = f"heartbeat={self.heartbeat}&name={quote(name, safe='')}"
        return f"{scheme}://{user}:{password}@{host}:{port}/{vhost}?{query}"

    def tls_context(self) -> ssl.SSLContext | None:
        """Return the TLS context for amqps:// (certificates checked), or None for amqp://."""
        if not self.tls:
            return None
        if self.ssl_context is not None:
            return self.ssl_context
        context = ssl.create_default_context(cafile=self.cafile)
        if self.certfile:
            context.load_cert_chain(self.certfile, self.keyfile)
        return context


def _query(url: str, query: str) -> dict[str, str]:
    values = dict(parse_qsl(query, keep_blank_values=True))
    unknown = sorted(set(values) - _QUERY_KEYS)
    if unknown:
        raise ConfigurationError(
            f"unknown option {unknown[0]!r} in {redact(url)!r}; "
            f"known: {', '.join(sorted(_QUERY_KEYS))}"
        )
    return values


def _vhost(path: str) -> str:
    if path in ("", "/", "//"):
        return "/"
    return unquote(path[1:])


def _number(url: str, key: str, value: Any, kind: type[int] | type[float]) -> Any:
    try:
        number = kind(value)
    except (TypeError, ValueError):
        raise ConfigurationError(
            f"{key} must be a number in {redact(url)!r}, not {value!r}"
        ) from None
    if number < 0:
        raise ConfigurationError(f"{key} must be >= 0 in {redact(url)!r}, not {value!r}")
    return number


def parse_amqp_url(url: str, options: Mapping[str, Any] | None = None) -> AMQPSettings:
    """Parse an amqp://, amqps:// or pyamqp:// URL; `options` override the URL's query."""
    try:
        parts = urlsplit(url)
        if "," in parts.netloc:  # a cluster: the first host stands for the URL here
            first = parts.netloc.rpartition("@")[2].split(",")[0]
            parts = parts._replace(netloc=parts.netloc.rpartition("@")[0] + "@" + first)
        port = parts.port
    except ValueError as exc:
        raise ConfigurationError(f"{redact(url)!r} is not a valid AMQP URL: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme not in ("amqp", "amqps", "pyamqp"):
        raise ConfigurationError(f"{redact(url)!r} is not an amqp://, amqps:// or pyamqp:// URL")
    values: dict[str, Any] = _query(url, parts.query)
    values.update({key: value for key, value in (options or {}).items() if key in _QUERY_KEYS})
    default_port = _PORTS["amqps" if scheme == "amqps" else "amqp"]
    hosts = _hosts(url, default_port, (options or {}).get("failover") or ())
    queue_type = str(values.get("queue_type", "classic")).lower()
    if queue_type not in ("classic", "quorum"):
        raise ConfigurationError(f"queue_type must be 'classic' or 'quorum', not {queue_type!r}")
    max_priority = _number(url, "max_priority", values.get("max_priority", 9), int)
    if max_priority > 255:
        raise ConfigurationError(f"max_priority must be at most 255, not {max_priority}")
    tls = scheme == "amqps"
    context = (options or {}).get("ssl_context")
    return AMQPSettings(
        url=url,
        display=redact(url),
        tls=tls,
        host=parts.hostname or "localhost",
        port=port or _PORTS["amqps" if tls else "amqp"],
        username=unquote(parts.username) if parts.username else "guest",
        password=unquote(parts.password) if parts.password else "guest",
        vhost=_vhost(parts.path),
        heartbeat=_number(url, "heartbeat", values.get("heartbeat", 60), int),
        name=str(values["name"]) if values.get("name") else None,
        prefix=str(values.get("prefix", "")),
        queue_type="quorum" if queue_type == "quorum" else "classic",
        max_priority=max_priority,
        connect_timeout=_number(url, "connect_timeout", values.get("connect_timeout", 10), float),
        publish_timeout=_number(url, "publish_timeout", values.get("publish_timeout", 30), float),
        cafile=values.get("cafile") or None,
        certfile=values.get("certfile") or None,
        keyfile=values.get("keyfile") or None,
        ssl_context=context if isinstance(context, ssl.SSLContext) else None,
        failover=hosts[1:],
    )


def _hosts(url: str, default_port: int, failover: Any) -> tuple[tuple[str, int], ...]:
    """Return the nodes of the URL (`h1:5672,h2:5672`) and then the `failover` option's."""
    netloc = url.partition("://")[2].split("/", 1)[0].split("?", 1)[0]
    named = netloc.rpartition("@")[2].split(",")
    if isinstance(failover, str):
        failover = failover.split(",")
    hosts: list[tuple[str, int]] = []
    for each in [*named, *failover]:
        text = str(each).strip()
        if text.startswith("["):  # [IPv6]:port
            host, _, rest = text[1:].partition("]")
            port_text = rest.removeprefix(":")
        elif text.count(":") == 1:
            host, _, port_text = text.partition(":")
        else:
            host, port_text = text, ""
        try:
            hosts.append((host or "localhost", int(port_text) if port_text else default_port))
        except ValueError:
            raise ConfigurationError(f"{each!r} is not host:port in {redact(url)!r}") from None
    return tuple(hosts)


def scrub(settings: AMQPSettings, text: str) -> str:
    """Remove the password (raw and URL-quoted) from a text before it is shown."""
    for secret in {settings.password, quote(settings.password, safe=""), *secrets_in(settings.url)}:
        if secret:
            text = text.replace(secret, "***")
    return text


def broker_error(settings: AMQPSettings, action: str, exc: BaseException) -> BrokerError:
    """Return a `BrokerError` saying what failed, on which (redacted) URL, and why."""
    reason = str(exc) or type(exc).__name__
    return BrokerError(f"could not {action} on {settings.display}: {scrub(settings, reason)}")


@asynccontextmanager
async def amqp_errors(settings: AMQPSettings, action: str) -> AsyncIterator[None]:
    """Turn aiormq's failures into `BrokerError`.

    aiormq fails the futures of a closed channel with `CancelledError`; one that arrives while
    this task was not cancelled is such a failure, not a cancellation, and becomes an error too.
    """
    try:
        yield
    except AMQP_ERRORS as exc:
        raise broker_error(settings, action, exc) from None
    except asyncio.CancelledError as exc:
        if not _stray(exc):
            raise
        raise broker_error(settings, action, ConnectionError("the channel was closed")) from exc


def _stray(exc: asyncio.CancelledError) -> bool:
    """Whether a `CancelledError` came from aiormq failing a future, not from a cancellation."""
    task = asyncio.current_task()
    return task is None or not task.cancelling()


@contextmanager
def released(what: str) -> Iterator[None]:
    """Ignore the failure of releasing something that is going away already (logged)."""
    try:
        yield
    except AMQP_ERRORS:
        logger.debug("could not %s: already closed", what, exc_info=True)
    except asyncio.CancelledError as exc:
        if not _stray(exc):
            raise
        logger.debug("could not %s: already closed", what)


class Link:
    """One AMQP connection that comes back: `await link.connection()` is always a live one.

    `open()` connects once and fails fast. Later, a caller that finds the connection closed
    calls `reconnect(stale)`; the first one reconnects (with backoff, until it succeeds or the
    link is closed) while the others wait for it.
    """

    def __init__(self, settings: AMQPSettings, role: str) -> None:
        self.settings = settings
        self.role = role
        self.generation = 0
        self._connection: AbstractConnection | None = None
        self._lock = anyio.Lock()
        self._closed = False

    @property
    def closed(self) -> bool:
        """True once `close()` was called."""
        return self._closed

    async def _connect(self) -> AbstractConnection:
        """Connect to the first node that answers, trying them in order."""
        settings = self.settings
        errors: list[BrokerError] = []
        for address in [(settings.host, settings.port), *settings.failover]:
            try:
                connection = await self._connect_to(address)
            except BrokerError as exc:
                errors.append(exc)
                continue
            if errors:
                logger.warning("connected to %s:%d (%s)", *address, errors[-1])
            self.generation += 1
            return connection
        if len(errors) == 1:
            raise errors[0]
        raise BrokerError(f"no node of {settings.display} answered: {errors[-1]}")

    async def _connect_to(self, address: tuple[str, int]) -> AbstractConnection:
        settings = self.settings
        url = settings.aiormq_url(self.role, address)
        where = f"{address[0]}:{address[1]}"
        try:
            with anyio.fail_after(settings.connect_timeout):
                return await aiormq.connect(url, context=settings.tls_context())
        except TimeoutError:
            raise BrokerError(
                f"could not connect to {where} of {settings.display} "
                f"within {settings.connect_timeout} s"
            ) from None
        except AMQP_ERRORS as exc:  # ssl.SSLError is an OSError
            raise broker_error(settings, f"connect to {where}", exc) from None

    async def open(self) -> None:
        """Connect now; raise `BrokerError` if RabbitMQ cannot be reached."""
        async with self._lock:
            self._closed = False
            if self._connection is None or self._connection.is_closed:
                self._connection = await self._connect()

    async def connection(self) -> AbstractConnection:
        """Return the live connection, reconnecting first if it was lost."""
        connection = self._connection
        if connection is not None and not connection.is_closed:
            return connection
        return await self.reconnect(connection)

    async def reconnect(self, stale: AbstractConnection | None) -> AbstractConnection:
        """Replace `stale` by a new connection, retrying with backoff until one opens."""
        delay, factor, cap = BACKOFF
        async with self._lock:
            while True:
                if self._closed:
                    raise BrokerError(f"the connection to {self.settings.display} is closed")
                current = self._connection
                if current is not None and current is not stale and not current.is_closed:
                    return current
                try:
                    connection = await self._connect()
                except BrokerError as exc:
                    logger.warning("%s; retrying in %.1f s", exc, delay)
                    await anyio.sleep(delay * random.uniform(0.8, 1.2))
                    delay = min(delay * factor, cap)
                    continue
                if self._closed:  # closed while connecting: do not leak the new one
                    with anyio.CancelScope(shield=True):
                        await connection.close()
                    continue
                self._connection = connection
                if stale is not None:
                    logger.warning("reconnected to %s", self.settings.display)
                return connection

    async def channel(self, *, confirms: bool) -> AbstractChannel:
        """Open a channel on the live connection (reconnecting if needed)."""
        connection = await self.connection()
        try:
            return await self._channel(connection, confirms)
        except BrokerError:
            if not connection.is_closed:
                raise
        # The connection died under us: once more, on a fresh one.
        return await self._channel(await self.reconnect(connection), confirms)

    async def _channel(self, connection: AbstractConnection, confirms: bool) -> AbstractChannel:
        async with amqp_errors(self.settings, "open a channel"):
            try:
                return await connection.channel(publisher_confirms=confirms)
            except RuntimeError as exc:  # aiormq's word for "the connection is closed"
                raise ConnectionError(str(exc)) from None

    async def close(self) -> None:
        """Close the connection; callers waiting on a reconnect get a `BrokerError`."""
        self._closed = True
        connection, self._connection = self._connection, None
        if connection is not None and not connection.is_closed:
            with anyio.CancelScope(shield=True):
                with released("close the connection"):
                    await connection.close()
