"""Shared by the Redis broker and result backend: URLs, connections, errors and batching.

URLs:

    redis://[[user]:password@]host[:port][/db][?option=value...]
    rediss://...                      TLS; certificates are checked unless told otherwise
    unix://[[user]:password@]/path/to/redis.sock[?db=N&...]

Options come from the URL query or the transport options (`broker_transport_options`,
`result_backend_transport_options`); the transport options win. A password is only read from
the URL's user part (never from the query), so that `aqueue.urls.redact` hides it everywhere.

Every redis-py error becomes a `BrokerError` whose message names the redacted URL; the password
never reaches a message, a repr or a log line.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar, cast
from urllib.parse import parse_qsl, unquote, urlsplit

import anyio
import redis.asyncio as aioredis
from redis.asyncio.connection import (
    BlockingConnectionPool,
    Connection,
    SSLConnection,
    UnixDomainSocketConnection,
)
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import NoScriptError, RedisError

from ...exceptions import BrokerError, ConfigurationError
from ...urls import redact, scheme_of
from .cluster import SCHEMES as CLUSTER_SCHEMES
from .cluster import ClusterClient, ClusterPubSubConnection, parse_cluster_url
from .resp import RespClient
from .sentinel import SCHEMES as SENTINEL_SCHEMES
from .sentinel import SentinelConnection, parse_sentinel_url

__all__ = [
    "Batcher",
    "LeanClient",
    "RedisSettings",
    "Script",
    "answering",
    "close_clients",
    "parse_redis_url",
    "redis_errors",
    "run_scripts",
]

logger = logging.getLogger("aqueue.redis")

#: The lean client of one server (`resp`) or of a cluster (`cluster`): the same methods.
LeanClient = RespClient | ClusterClient

T = TypeVar("T")
R = TypeVar("R")

#: Seconds to wait for a TCP (or TLS) connection before giving up: a producer whose Redis is
#: unreachable gets a `BrokerError` after about twice this (one retry), not a hang.
CONNECT_TIMEOUT = 2.0
#: Seconds to wait for the reply to an ordinary (non-blocking) command.
SOCKET_TIMEOUT = 10.0

_FLOATS = ("socket_timeout", "socket_connect_timeout", "wait_timeout")
_INTS = ("db", "max_connections", "retries", "wait")
_BOOLS = ("ssl_check_hostname",)
_STRINGS = (
    "prefix",
    "client_name",
    "ssl_cert_reqs",
    "ssl_ca_certs",
    "ssl_ca_path",
    "ssl_certfile",
    "ssl_keyfile",
)
#: The options every Redis URL and transport option mapping may carry.
OPTIONS = frozenset((*_FLOATS, *_INTS, *_BOOLS, *_STRINGS))
_CERT_REQS = {"required": "required", "optional": "optional", "none": "none"}


@dataclass(frozen=True)
class RedisSettings:
    """What a Redis URL and its options say, ready to open connections with."""

    url: str  # redacted: safe to show
    prefix: str
    connection_class: type[Connection] | type[UnixDomainSocketConnection]
    kwargs: dict[str, Any] = field(repr=False)
    max_connections: int = 50
    #: Publishes wait for this many replicas to hold them (`WAIT`): `?wait=1`; 0: they do not.
    wait: int = 0
    #: Seconds a publish waits for its replicas before it fails (`?wait_timeout=`).
    wait_timeout: float = 1.0

    def __repr__(self) -> str:
        return f"RedisSettings({self.url!r}, prefix={self.prefix!r})"

    @property
    def cluster(self) -> bool:
        """Whether this is a Redis Cluster (`redis+cluster://`)."""
        return "cluster" in self.kwargs

    def lean(self, *, socket_timeout: float | None = None) -> LeanClient:
        """Return a lean client (`resp`, or `cluster`'s), connected on first use."""
        if self.cluster:
            return ClusterClient(self, socket_timeout=socket_timeout)
        return RespClient(self, socket_timeout=socket_timeout)

    def client(
        self, *, socket_timeout: float | None = None, max_connections: int | None = None
    ) -> aioredis.Redis:
        """Return a client with its own pool of at most `max_connections` connections.

        `socket_timeout` overrides the reply timeout (a blocking read needs a longer one).
        """
        kwargs = dict(self.kwargs)
        if socket_timeout is not None:
            kwargs["socket_timeout"] = socket_timeout
        if self.cluster:
            return _cluster_client(kwargs, max_connections or self.max_connections)
        pool = BlockingConnectionPool(
            connection_class=self.connection_class,
            max_connections=max_connections or self.max_connections,
            timeout=kwargs.get("socket_timeout") or SOCKET_TIMEOUT,
            **kwargs,
        )
        return aioredis.Redis.from_pool(pool)

    def connection(self, *, client_name: str | None = None) -> Connection:
        """One connection outside any pool (for pub/sub), not connected yet."""
        kwargs = dict(self.kwargs)
        if client_name is not None:
            kwargs["client_name"] = client_name
        return self.connection_class(**kwargs)  # type: ignore[return-value]


def _cluster_client(kwargs: dict[str, Any], max_connections: int) -> aioredis.Redis:
    """Return redis-py's cluster client: it follows MOVED, ASK and failovers itself.

    Typed as `Redis`: it offers the commands, scripts and pipelines the driver uses of one.
    """
    from redis.asyncio.cluster import ClusterNode, RedisCluster

    nodes = [ClusterNode(host, port) for host, port in kwargs.pop("cluster")]
    retry = Retry(ExponentialWithJitterBackoff(cap=1.0, base=0.05), 12)  # a failover's time
    client = RedisCluster(
        startup_nodes=nodes,
        username=kwargs.get("username"),
        password=kwargs.get("password"),
        client_name=kwargs.get("client_name"),
        socket_timeout=kwargs.get("socket_timeout"),
        socket_connect_timeout=kwargs.get("socket_connect_timeout"),
        max_connections=max_connections,
        protocol=2,
        retry=retry,
    )
    return cast("aioredis.Redis", client)


def _typed(name: str, value: Any) -> Any:
    try:
        if name in _FLOATS:
            return None if value in (None, "", "none") else float(value)
        if name in _INTS:
            return int(value)
        if name in _BOOLS:
            if isinstance(value, str):
                if value.lower() not in ("1", "0", "true", "false", "yes", "no"):
                    raise ValueError(value)
                return value.lower() in ("1", "true", "yes")
            return bool(value)
    except (TypeError, ValueError):
        raise ConfigurationError(f"Redis option {name}={value!r} is not valid") from None
    return str(value)


def _options(
    url: str, query: str, options: Mapping[str, Any], ignore: frozenset[str]
) -> dict[str, Any]:
    merged: dict[str, Any] = {}
    for name, value in parse_qsl(query, keep_blank_values=True):
        if name == "password":
            raise ConfigurationError(
                f"put the Redis password in the URL's user part (redis://:PASSWORD@host), "
                f"not in its query: {redact(url.split('?', 1)[0])}?..."
            )
        merged[name] = value
    merged.update((k, v) for k, v in options.items() if k not in ignore)
    unknown = sorted(set(merged) - OPTIONS)
    if unknown:
        raise ConfigurationError(
            f"unknown Redis option(s) {', '.join(unknown)} for {redact(url)}; "
            f"known: {', '.join(sorted(OPTIONS))}"
        )
    return {name: _typed(name, value) for name, value in merged.items()}


def _tls(options: dict[str, Any], kwargs: dict[str, Any]) -> None:
    reqs = str(options.get("ssl_cert_reqs", "required")).lower().removeprefix("cert_")
    if reqs not in _CERT_REQS:
        raise ConfigurationError(
            f"ssl_cert_reqs must be required, optional or none, not {options['ssl_cert_reqs']!r}"
        )
    kwargs["ssl_cert_reqs"] = _CERT_REQS[reqs]
    kwargs["ssl_check_hostname"] = options.get("ssl_check_hostname", reqs != "none")
    for name in ("ssl_ca_certs", "ssl_ca_path", "ssl_certfile", "ssl_keyfile"):
        if options.get(name):
            kwargs[name] = options[name]


def parse_redis_url(
    url: str, options: Mapping[str, Any], *, ignore: frozenset[str] = frozenset()
) -> RedisSettings:
    """Read a `redis://`, `rediss://` or `unix://` URL and its options.

    `ignore` names options the caller handles itself (a broker's `visibility_timeout`).
    """
    scheme = scheme_of(url)
    if scheme in SENTINEL_SCHEMES:
        return _sentinel_settings(url, options, ignore)
    if scheme in CLUSTER_SCHEMES:
        return _cluster_settings(url, options, ignore)
    try:
        parts = urlsplit(url)
        password = parts.password
        username = parts.username
        port = parts.port
    except ValueError as exc:
        raise ConfigurationError(f"{redact(url)!r} is not a valid Redis URL: {exc}") from None
    opts = _options(url, parts.query, options, ignore)
    prefix = opts.get("prefix", "aqueue")
    if not prefix or "{" in prefix or "}" in prefix:
        raise ConfigurationError(f"Redis key prefix {prefix!r} must be non-empty, without braces")
    kwargs: dict[str, Any] = {
        "username": unquote(username) if username else None,
        "password": unquote(password) if password else None,
        "socket_connect_timeout": opts.get("socket_connect_timeout", CONNECT_TIMEOUT),
        "socket_timeout": opts.get("socket_timeout", SOCKET_TIMEOUT),
        "protocol": 2,  # the replies (and pub/sub messages) this module parses
        "client_name": opts.get("client_name", "aqueue"),
        "retry": Retry(ExponentialWithJitterBackoff(cap=0.5, base=0.05), opts.get("retries", 1)),
    }
    connection_class: type[Connection] | type[UnixDomainSocketConnection]
    if scheme == "unix":
        if not parts.path:
            raise ConfigurationError(f"{redact(url)!r} names no socket: unix:///path/to/sock")
        kwargs["path"] = unquote(parts.path)
        kwargs["db"] = opts.get("db", 0)
        connection_class = UnixDomainSocketConnection
    elif scheme in ("redis", "rediss"):
        db_path = parts.path.strip("/")
        try:
            db = int(db_path) if db_path else opts.get("db", 0)
        except ValueError:
            raise ConfigurationError(f"{redact(url)!r}: the database must be a number") from None
        kwargs.update(host=parts.hostname or "localhost", port=port or 6379, db=db)
        kwargs["socket_keepalive"] = True
        connection_class = Connection
        if scheme == "rediss":
            _tls(opts, kwargs)
            connection_class = SSLConnection
    else:
        raise ConfigurationError(f"{redact(url)!r} is not a redis://, rediss:// or unix:// URL")
    return RedisSettings(
        url=redact(url),
        prefix=prefix,
        connection_class=connection_class,
        kwargs=kwargs,
        max_connections=opts.get("max_connections", 50),
        wait=_at_least_zero("wait", opts.get("wait", 0)),
        wait_timeout=opts.get("wait_timeout") or 1.0,
    )


def _at_least_zero(name: str, value: int) -> int:
    if value < 0:
        raise ConfigurationError(f"Redis option {name}={value} must not be negative")
    return value


def _sentinel_settings(
    url: str, options: Mapping[str, Any], ignore: frozenset[str]
) -> RedisSettings:
    """Return settings whose connections find the primary through Sentinel (`sentinel.py`)."""
    timeout = float(options.get("socket_connect_timeout") or CONNECT_TIMEOUT)
    sentinels, _, single = parse_sentinel_url(url, timeout)
    settings = parse_redis_url(single, options, ignore=ignore)
    kwargs = dict(settings.kwargs)
    del kwargs["host"], kwargs["port"]  # the sentinels say, at each connection
    kwargs["sentinel"] = sentinels
    return RedisSettings(
        url=redact(url),
        prefix=settings.prefix,
        connection_class=SentinelConnection,
        kwargs=kwargs,
        max_connections=settings.max_connections,
        wait=settings.wait,
        wait_timeout=settings.wait_timeout,
    )


def _cluster_settings(
    url: str, options: Mapping[str, Any], ignore: frozenset[str]
) -> RedisSettings:
    """Return settings whose connections go to the nodes of a cluster (`cluster.py`)."""
    nodes, single = parse_cluster_url(url)
    settings = parse_redis_url(single, options, ignore=ignore)
    kwargs = dict(settings.kwargs)
    del kwargs["host"], kwargs["port"], kwargs["db"]  # the slot map says, per key
    kwargs["cluster"] = nodes
    return RedisSettings(
        url=redact(url),
        prefix=settings.prefix,
        connection_class=ClusterPubSubConnection,
        kwargs=kwargs,
        max_connections=settings.max_connections,
        wait=settings.wait,
        wait_timeout=settings.wait_timeout,
    )


def broker_error(settings: RedisSettings, exc: BaseException, doing: str = "") -> BrokerError:
    """Return a `BrokerError` for a redis-py (or socket) error, naming the redacted URL only."""
    text = str(exc)
    password = settings.kwargs.get("password")
    if password:
        text = text.replace(password, "***")
    what = f" while {doing}" if doing else ""
    return BrokerError(f"Redis at {settings.url}{what}: {type(exc).__name__}: {text}")


@contextlib.contextmanager
def redis_errors(settings: RedisSettings, doing: str = "") -> Iterator[None]:
    """Turn redis-py's errors into `BrokerError`s with a redacted URL."""
    try:
        yield
    except (RedisError, OSError) as exc:
        raise broker_error(settings, exc, doing) from None


async def close_clients(*clients: aioredis.Redis | None) -> None:
    """Close the clients given (None: skipped), shielded from cancellation."""
    with anyio.CancelScope(shield=True):
        for client in clients:
            if client is not None:
                await client.aclose()


async def answering(settings: RedisSettings) -> LeanClient:
    """Return a lean client (`resp`) whose Redis answered a PING, or raise a `BrokerError`."""
    client = settings.lean()
    try:
        with redis_errors(settings, "connecting"):
            await client.execute("PING")
    except BaseException:
        await client.aclose()
        raise
    return client


def process_tag() -> str:
    """Return a tag unique to this process on this host, for consumer names."""
    return f"{os.uname().nodename}:{os.getpid()}"


class _Slot(Generic[T, R]):
    __slots__ = (
        "caller",
        "cancelled",
        "done",
        "error",
        "item",
        "result",
        "taken",
        "unwaited",
        "waiter",
        "woken",
    )

    def __init__(self, item: T, *, unwaited: bool = False) -> None:
        self.item = item
        # A future only for a caller that actually waits: most never do (their own flush
        # settles them), and an anyio.Event per message was a tenth of a busy worker's CPU.
        self.waiter: asyncio.Future[None] | None = None
        self.woken = self.done = self.taken = self.cancelled = False
        self.unwaited = unwaited  # sent by `send`: its outcome goes to the batcher's hook
        self.caller = False  # a caller waits in `_submit` for it (and may lead a flush)
        self.result: R | None = None
        self.error: BaseException | None = None

    def wake(self) -> None:
        self.woken = True
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    async def wait(self) -> None:
        if not self.woken:
            self.waiter = asyncio.get_running_loop().create_future()
            await self.waiter
        self.woken = False


class Batcher(Generic[T, R]):
    """Coalesces concurrent calls into one round trip, with no timer and no background task.

    The first caller flushes at once (no added latency); callers that arrive while a flush is
    in flight queue up and go together in the next one, flushed by the first of them. A flush
    is shielded from cancellation: an ack or a stored result is never half sent.

    `send` does not wait for a flush in flight: its item joins the next flush, which the caller
    flushing now sends before it returns, and its outcome goes to `on_unwaited`.
    """

    def __init__(
        self,
        flush: Callable[[list[T]], Awaitable[list[R]]],
        max_size: int = 1000,
        *,
        on_unwaited: Callable[[T, R | Exception], None] | None = None,
    ):
        self._flush = flush
        self._max = max_size
        self._on_unwaited = on_unwaited
        self._queue: list[_Slot[T, R]] = []
        #: Items of `send` queued while a flush was in flight: no caller waits for them.
        self._unwaited: list[T] = []
        self._busy = False

    async def submit(self, item: T) -> R:
        """Send `item` with whatever else is waiting; return its own result."""
        return await self._submit(_Slot(item))

    async def send(self, item: T) -> None:
        """Send `item`, waiting only when no flush is in flight or too many items queue.

        Its outcome (a result, or the exception that failed its flush) goes to `on_unwaited`,
        never to the caller: a coroutine that acknowledges a message goes on to the next one
        while the acknowledgement travels with the next batch.
        """
        if self.queue_unwaited(item):
            return
        with contextlib.suppress(Exception):  # reported to on_unwaited already
            await self._submit(_Slot(item, unwaited=True))

    def queue_unwaited(self, item: T) -> bool:
        """Queue `item` for the next flush if one is in flight (what `send` does then).

        True: queued, with no coroutine made (the common case under load: every message a
        busy worker acknowledges); False: `send` must flush it.
        """
        assert self._on_unwaited is not None, "send() needs an on_unwaited hook"
        if self._busy and len(self._queue) + len(self._unwaited) < self._max:
            self._unwaited.append(item)  # the caller flushing now sends it next: no slot
            return True
        return False

    async def _submit(self, slot: _Slot[T, R]) -> R:
        slot.caller = True
        self._queue.append(slot)
        try:
            while not slot.done:
                if not self._busy:
                    await self._flush_next()
                    continue
                await slot.wait()
        finally:
            if not slot.taken:
                slot.cancelled = True
            if not self._busy:
                await self._hand_over()
        if slot.error is not None:
            raise slot.error
        return slot.result  # type: ignore[return-value]

    async def _hand_over(self) -> None:
        """Wake the next waiting caller to flush; with only unwaited items, flush them here."""
        while (self._queue or self._unwaited) and not self._busy:
            leader = next((s for s in self._queue if s.caller and not s.cancelled), None)
            if leader is not None:
                leader.wake()
                return
            try:
                await self._flush_next()
            except Exception:  # reported to on_unwaited; the items after it go next
                continue

    async def _flush_next(self) -> None:
        self._busy = True
        taken, self._queue = self._queue[: self._max], self._queue[self._max :]
        batch = [slot for slot in taken if not slot.cancelled]
        room = self._max - len(batch)
        unwaited, self._unwaited = self._unwaited[:room], self._unwaited[room:]
        for slot in batch:
            slot.taken = True
        items = [slot.item for slot in batch]
        items += unwaited
        results: list[R] = []
        try:
            with anyio.CancelScope(shield=True):
                results = await self._flush(items) if items else []
            for slot, result in zip(batch, results, strict=False):
                slot.result = result
        except BaseException as exc:
            error = exc if isinstance(exc, Exception) else BrokerError("flush interrupted")
            for slot in batch:
                slot.error = error
            self._report_all(unwaited, [error] * len(unwaited))
            raise
        finally:
            self._busy = False
            for slot in batch:
                slot.done = True
                if slot.unwaited:
                    self._report(slot)
                slot.wake()
        self._report_all(unwaited, results[len(batch) :])

    def _report_all(self, items: list[T], outcomes: Sequence[R | Exception]) -> None:
        """Give the outcomes of a flush's unwaited items to `on_unwaited`."""
        if not items:
            return
        hook = self._on_unwaited
        assert hook is not None
        for item, outcome in zip(items, outcomes, strict=True):
            try:
                hook(item, outcome)
            except Exception:
                logger.exception("the hook of a batched call failed")

    def _report(self, slot: _Slot[T, R]) -> None:
        outcome = slot.error if slot.error is not None else slot.result
        self._report_all([slot.item], [outcome])  # type: ignore[list-item]


class Script:
    """A Lua script run with EVALSHA, loaded again if the server lost it (a restart)."""

    __slots__ = ("sha", "source")

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode(), usedforsecurity=False).hexdigest()

    async def __call__(
        self, client: aioredis.Redis | LeanClient, keys: list[str], args: list[Any]
    ) -> Any:
        """Run the script once; return its reply (loading it first if the server lost it)."""
        try:
            return await client.evalsha(self.sha, len(keys), *keys, *args)
        except NoScriptError:
            await client.script_load(self.source)
        return await client.evalsha(self.sha, len(keys), *keys, *args)


async def _pipelined(client: aioredis.Redis | LeanClient, commands: list[tuple[Any, ...]]) -> Any:
    """Run commands in one round trip; return their replies, an error as its exception."""
    if isinstance(client, RespClient | ClusterClient):
        return await client.execute_many(commands)
    pipe = client.pipeline(transaction=False)
    for command in commands:
        pipe.execute_command(*command)
    return await pipe.execute(raise_on_error=False)


async def run_scripts(
    client: aioredis.Redis | LeanClient, calls: list[tuple[Script, list[str], list[Any]]]
) -> list[Any]:
    """Run several scripts in one pipeline; return their replies, or raise the first error.

    A script the server does not know (it restarted) is loaded, and only the calls that failed
    for that are run again. One call goes without a pipeline (a quarter less CPU per round
    trip, measured: about 75 against 100 µs).
    """
    if len(calls) == 1:
        script, keys, args = calls[0]
        return [await script(client, keys, args)]
    replies: list[Any] = [None] * len(calls)
    todo = list(range(len(calls)))
    for attempt in range(2):
        commands = []
        for index in todo:
            script, keys, args = calls[index]
            commands.append(("EVALSHA", script.sha, len(keys), *keys, *args))
        results = await _pipelined(client, commands)
        missing: list[int] = []
        for index, result in zip(todo, results, strict=True):
            if isinstance(result, NoScriptError) and attempt == 0:
                missing.append(index)
            elif isinstance(result, Exception):
                raise result
            else:
                replies[index] = result
        if not missing:
            break
        for script in {calls[index][0].sha: calls[index][0] for index in missing}.values():
            await client.script_load(script.source)
        todo = missing
    return replies
