"""Redis Sentinel: find the primary through the sentinels, and follow it when it fails over.

    redis+sentinel://[[user]:password@]s1:26379,s2:26379/SERVICE[/db][?option=value...]
    sentinel://...                     the same

Every connection the driver opens (the lean client's, redis-py's pools, pub/sub) asks the
sentinels where the primary of SERVICE is, at the moment it connects: `SENTINEL
get-master-addr-by-name`, each sentinel in turn until one answers (that one is asked first
next time). Once connected, it checks with `ROLE` that the server is a primary still (a
sentinel's view can lag a failover by a moment), and a connection whose server answers
`READONLY` (a primary demoted to a replica) is closed, so that the next command connects again
and asks the sentinels afresh. A connection lost to a dead primary does the same on its next
use: producers and workers find the new primary as soon as the sentinels have promoted one
(their `down-after-milliseconds` plus the election, a few seconds).

The URL's user and password are the primary's; sentinels are asked without a password (give
sentinels `requirepass` only behind a network you trust, or not at all).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from redis.asyncio.connection import Connection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ReadOnlyError, RedisError, ResponseError

from ...exceptions import ConfigurationError
from ...urls import redact
from .resp import RespClient

__all__ = ["SCHEMES", "SentinelConnection", "Sentinels", "is_primary", "parse_sentinel_url"]

#: The URL schemes of a Sentinel-managed Redis.
SCHEMES = ("redis+sentinel", "sentinel")

#: What a primary demoted under a blocked client answers it (a blocking XREADGROUP).
_DEMOTED = "UNBLOCKED"


@dataclass(frozen=True)
class _Settings:
    """A sentinel's connection settings, as the lean client reads them."""

    url: str
    kwargs: dict[str, Any] = field(repr=False)


class Sentinels:
    """The sentinels of one service: asks them where its primary is."""

    def __init__(self, addresses: list[tuple[str, int]], service: str, timeout: float) -> None:
        self.addresses = list(addresses)
        self.service = service
        self.timeout = timeout

    def __repr__(self) -> str:
        hosts = ",".join(f"{host}:{port}" for host, port in self.addresses)
        return f"<Sentinels {hosts} service={self.service!r}>"

    async def primary(self) -> tuple[str, int]:
        """Return the primary's (host, port), as the first sentinel that knows it says."""
        failures: list[str] = []
        for address in list(self.addresses):
            host, port = address
            kwargs = {
                "host": host,
                "port": port,
                "socket_connect_timeout": self.timeout,
                "socket_timeout": self.timeout,
            }
            client = RespClient(_Settings(f"sentinel {host}:{port}", kwargs))
            try:
                reply = await client.execute("SENTINEL", "get-master-addr-by-name", self.service)
            except (RedisError, OSError) as exc:
                failures.append(f"{host}:{port}: {exc}")
                continue
            finally:
                await client.aclose()
            if not reply:
                failures.append(f"{host}:{port}: no primary named {self.service!r}")
                continue
            if address != self.addresses[0]:  # it answered: ask it first next time
                self.addresses.remove(address)
                self.addresses.insert(0, address)
            return _text(reply[0]), int(reply[1])
        raise RedisConnectionError(
            f"no sentinel gave the primary of {self.service!r} ({'; '.join(failures)})"
        )


def is_primary(role: Any) -> bool:
    """Tell whether a `ROLE` reply is a primary's."""
    return bool(role) and _text(role[0]) == "master"


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class SentinelConnection(Connection):
    """A redis-py connection to whichever server the sentinels call the primary."""

    def __init__(self, *, sentinel: Sentinels, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.sentinel = sentinel

    async def _connect(self) -> None:
        self.host, self.port = await self.sentinel.primary()
        await super()._connect()  # type: ignore[no-untyped-call]

    async def on_connect_check_health(self, check_health: bool = True) -> None:
        """Set the connection up, then refuse a server that is not a primary (any more)."""
        await super().on_connect_check_health(check_health)
        await self.send_command("ROLE", check_health=False)
        role = await self.read_response()
        if not is_primary(role):
            raise RedisConnectionError(
                f"{self.host}:{self.port} is not the primary of {self.sentinel.service!r} "
                "(a failover under way)"
            )

    async def read_response(self, *args: Any, **kwargs: Any) -> Any:
        """Read a reply; a demoted primary's closes the connection, to look again."""
        try:
            return await super().read_response(*args, **kwargs)
        except ReadOnlyError:
            await self.disconnect()
            raise RedisConnectionError("the primary was demoted to a replica") from None
        except ResponseError as exc:
            if str(exc).startswith(_DEMOTED):
                await self.disconnect()
                raise RedisConnectionError("the primary was demoted to a replica") from None
            raise


def parse_sentinel_url(url: str, timeout: float) -> tuple[Sentinels, int, str]:
    """Read a Sentinel URL: its sentinels, the database, and the rest of it as `redis://`.

    The rest (`redis://user:password@/db?options`) goes through the driver's own URL parser,
    which reads the credentials and options as for a single server.
    """
    scheme, _, rest = url.partition("://")
    netloc, _, path_query = rest.partition("/")
    credentials, _, hosts = netloc.rpartition("@")
    path, _, query = path_query.partition("?")
    service, _, db_text = path.strip("/").partition("/")
    if not hosts or not service:
        raise ConfigurationError(
            f"{redact(url)!r}: write a Sentinel URL as "
            f"{scheme}://host:26379,host2:26379/SERVICE/DB (SERVICE is the primary's name)"
        )
    addresses: list[tuple[str, int]] = []
    for host in hosts.split(","):
        name, _, port = host.strip().rpartition(":") if ":" in host else (host.strip(), "", "")
        try:
            addresses.append((name.strip("[]") or "localhost", int(port or 26379)))
        except ValueError:
            raise ConfigurationError(f"{redact(url)!r}: {host!r} is not host:port") from None
    try:
        db = int(db_text) if db_text else 0
    except ValueError:
        raise ConfigurationError(f"{redact(url)!r}: the database must be a number") from None
    auth = f"{credentials}@" if credentials else ""
    single = f"redis://{auth}sentinel/{db}" + (f"?{query}" if query else "")
    return Sentinels(addresses, service, timeout), db, single
