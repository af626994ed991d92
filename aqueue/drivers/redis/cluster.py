"""Redis Cluster: a slot map, a lean connection per node, redirections and failovers followed.

    redis+cluster://[[user]:password@]host1:7000,host2:7001[/0][?option=value...]

The hosts are where to start: any node answers `CLUSTER SLOTS`, which gives the primary of
every hash slot; the rest of the URL is read as for one server (`client`), except that a
cluster has only database 0.

- `ClusterClient` is the lean client (`resp`) of a cluster: one `RespClient` per primary it
  talks to, made on first use. `execute_many` sends each command to the primary of its key's
  slot, the commands for one node pipelined in one write and the nodes written to at once.
- `MOVED` (a slot moved for good) refreshes the slot map and sends the command again; `ASK` (a
  slot being migrated) sends `ASKING` and the command to the node named, once. `CLUSTERDOWN`,
  `TRYAGAIN`, `READONLY` (a primary demoted) and a node that cannot be reached refresh the map
  and try again with backoff, for at most `FOLLOW_SECONDS`: long enough for a replica to be
  promoted (`cluster-node-timeout` plus the election). None of these ran the command, so
  sending it again is safe. A connection lost with commands in flight is not: the map is
  refreshed for the next call, and the caller gets the error (as on one server).
- `WAIT` goes to every node this client wrote to, and answers the fewest replicas of any.
- `MGET` of keys in several slots is split into one `MGET` per slot (in one pipeline).
- Keyless commands (`PING`, `PUBLISH`) go to any node: classic pub/sub is broadcast to every
  node of a cluster, so subscribers connect to any node (`ClusterPubSubConnection`), and a
  `PUBLISH` on any node reaches them.

Every key a script touches must be in one slot: a queue's keys share the `{queue}` hash tag,
and what spans queues or results is sent as one call per slot (see `broker` and `results`).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import hiredis
from redis.asyncio.connection import Connection
from redis.crc import key_slot
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ReadOnlyError, RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ...exceptions import ConfigurationError
from ...urls import redact
from .resp import RespClient

__all__ = [
    "FOLLOW_SECONDS",
    "SCHEMES",
    "ClusterClient",
    "ClusterPubSubConnection",
    "parse_cluster_url",
    "slot_of",
]

#: The URL schemes of a Redis Cluster.
SCHEMES = ("redis+cluster",)
#: How long a command follows redirections and failovers before its caller gets the error.
FOLLOW_SECONDS = 10.0
#: Commands with no key: sent to any node.
_KEYLESS = frozenset(
    {b"PING", b"PUBLISH", b"WAIT", b"SCRIPT", b"CLIENT", b"INFO", b"ROLE", b"TIME", b"ECHO"}
)
#: Error replies that mean the command did not run and may run once the cluster settles.
_SETTLING = ("CLUSTERDOWN", "TRYAGAIN", "MASTERDOWN", "LOADING")

Address = tuple[str, int]


def slot_of(key: str | bytes) -> int:
    """Return the hash slot of `key` (its `{tag}` only, if it has one)."""
    return int(key_slot(key.encode() if isinstance(key, str) else key))


def _bytes(value: Any) -> bytes:
    if isinstance(value, bytes):
        return value
    return str(value).encode()


def key_of(command: Sequence[Any]) -> bytes | None:
    """Return the key that routes `command` (its first key), or None for a keyless one."""
    name = _bytes(command[0]).upper()
    if name in _KEYLESS or len(command) < 2:
        return None
    if name in (b"EVALSHA", b"EVAL", b"EVALSHA_RO", b"EVAL_RO", b"FCALL"):
        return _bytes(command[3]) if int(command[2]) > 0 else None
    if name in (b"XREADGROUP", b"XREAD"):
        upper = [_bytes(arg).upper() for arg in command]
        return _bytes(command[upper.index(b"STREAMS") + 1])
    return _bytes(command[1])


@dataclass(frozen=True)
class _NodeSettings:
    """One node's connection settings, as `RespClient` reads them."""

    url: str
    kwargs: dict[str, Any] = field(repr=False)


class _SlotMap:
    """Which primary serves each hash slot, as the last `CLUSTER SLOTS` said."""

    def __init__(self, startup: Sequence[Address]) -> None:
        self.startup = list(startup)
        self.slots: list[Address | None] = [None] * 16384
        self.primaries: list[Address] = []
        self.version = 0  # bumped by each refresh

    def node(self, slot: int) -> Address | None:
        return self.slots[slot]

    def candidates(self) -> list[Address]:
        """Nodes to ask for the map: the primaries known, then the URL's, each once."""
        return list(dict.fromkeys([*self.primaries, *self.startup]))

    def load(self, reply: Any, asked: Address) -> None:
        slots: list[Address | None] = [None] * 16384
        primaries: list[Address] = []
        for entry in reply:
            start, end, primary = int(entry[0]), int(entry[1]), entry[2]
            host = primary[0].decode() if isinstance(primary[0], bytes) else str(primary[0])
            address = (host or asked[0], int(primary[1]))
            if address not in primaries:
                primaries.append(address)
            slots[start : end + 1] = [address] * (end - start + 1)
        self.slots, self.primaries = slots, primaries
        self.version += 1


class ClusterClient:
    """The lean client (`resp`) of a Redis Cluster: see the module."""

    def __init__(self, settings: Any, *, socket_timeout: float | None = None) -> None:
        self.settings = settings
        self._timeout = socket_timeout
        kwargs = dict(settings.kwargs)
        self._startup: tuple[Address, ...] = kwargs.pop("cluster")
        self._node_kwargs = kwargs
        self._map = _SlotMap(self._startup)
        self._nodes: dict[Address, RespClient] = {}
        self._written: set[Address] = set()  # since the last WAIT
        self._refreshing: asyncio.Task[None] | None = None
        self._closed = False

    def __repr__(self) -> str:
        return f"<ClusterClient {self.settings.url}>"

    # -- the RespClient interface -----------------------------------------------------------

    async def execute(self, *args: Any) -> Any:
        """Run one command; return its reply, or raise the error it got."""
        name = _bytes(args[0]).upper()
        if name == b"MGET" and len(args) > 2:
            return await self._mget(args[1:])
        if name == b"WAIT":
            return await self._wait(args[1:])
        (reply,) = await self.execute_many((args,))
        if isinstance(reply, RedisError):
            raise reply
        return reply

    async def execute_encoded(self, data: bytes) -> Any:
        """Run one command encoded already (its key the first argument); an error as it is."""
        reader = hiredis.Reader()  # a command is an array of bulk strings, as a reply is
        reader.feed(data)
        (reply,) = await self._run([reader.gets()])
        return reply

    async def execute_many(self, commands: Sequence[Sequence[Any]]) -> list[Any]:
        """Run commands, pipelined per node; return their replies, an error as its exception."""
        return await self._run(commands)

    async def execute_at(self, key: str | bytes, *commands: Sequence[Any]) -> list[Any]:
        """Run commands on the node that serves `key`, keyless ones too (`CLIENT ID`)."""
        address = await self._node_for(slot_of(key))
        return await self._node(address).execute_many(commands)

    async def evalsha(self, sha: str, numkeys: int, *keys_and_args: Any) -> Any:
        """Run a loaded Lua script (as redis-py's `evalsha`)."""
        return await self.execute("EVALSHA", sha, numkeys, *keys_and_args)

    async def script_load(self, source: str) -> Any:
        """Load a Lua script on every primary; return its SHA1."""
        if not self._map.primaries:
            await self._refresh()
        replies = await asyncio.gather(
            *(
                self._node(address).execute("SCRIPT", "LOAD", source)
                for address in self._map.primaries
            )
        )
        return replies[0]

    async def aclose(self) -> None:
        """Close every connection."""
        self._closed = True
        nodes, self._nodes = list(self._nodes.values()), {}
        for node in nodes:
            await node.aclose()

    # -- routing ----------------------------------------------------------------------------

    def _node(self, address: Address) -> RespClient:
        node = self._nodes.get(address)
        if node is None:
            if self._closed:
                raise RedisConnectionError("the client was closed")
            host, port = address
            kwargs = {**self._node_kwargs, "host": host, "port": port}
            settings = _NodeSettings(f"{self.settings.url} (node {host}:{port})", kwargs)
            node = self._nodes[address] = RespClient(settings, socket_timeout=self._timeout)
        return node

    async def _node_for(self, slot: int | None) -> Address:
        if not self._map.primaries:
            await self._refresh()
        if slot is None:
            return random.choice(self._map.primaries)
        address = self._map.node(slot)
        if address is None:
            await self._refresh()
            address = self._map.node(slot)
            if address is None:
                raise ResponseError(f"CLUSTERDOWN no node serves hash slot {slot}")
        return address

    async def _run(self, commands: Sequence[Sequence[Any]]) -> list[Any]:
        """Send commands, pipelined per node; follow redirections (see the module)."""
        replies: list[Any] = [None] * len(commands)
        asking: dict[int, Address] = {}
        todo = list(range(len(commands)))
        deadline = time.monotonic() + FOLLOW_SECONDS
        attempt = 0
        while True:
            retry, last = await self._round(commands, todo, asking, replies)
            if not retry:
                return replies
            if time.monotonic() >= deadline or self._closed:
                if isinstance(last, RedisConnectionError | RedisTimeoutError | OSError):
                    raise last
                for index in retry:
                    replies[index] = last
                return replies
            todo = retry
            if len(asking) < len(retry):  # not only ASK: let the cluster settle a moment
                attempt += 1
                await asyncio.sleep(min(0.5, 0.02 * 2**attempt) * random.uniform(0.5, 1.0))
                await self._quiet_refresh()

    async def _round(
        self,
        commands: Sequence[Sequence[Any]],
        todo: list[int],
        asking: dict[int, Address],
        replies: list[Any],
    ) -> tuple[list[int], Any]:
        """Send the commands `todo`, each to its node; return those to send again, and why."""
        groups: dict[tuple[Address, bool], list[int]] = {}
        for index in todo:
            address = asking.get(index)
            if address is None:
                key = key_of(commands[index])
                address = await self._node_for(None if key is None else slot_of(key))
            groups.setdefault((address, index in asking), []).append(index)
        asking.clear()
        outcomes = await asyncio.gather(
            *(
                self._send(address, [commands[i] for i in indexes], ask=ask)
                for (address, ask), indexes in groups.items()
            )
        )
        retry: list[int] = []
        last: Any = None
        for ((address, _), indexes), outcome in zip(groups.items(), outcomes, strict=True):
            if isinstance(outcome, BaseException):  # the node was not reached: safe again
                self._forget(address)
                retry.extend(indexes)
                last = outcome
                continue
            for index, reply in zip(indexes, outcome, strict=True):
                if self._redirected(reply, index, asking):
                    retry.append(index)
                    last = reply
                else:
                    replies[index] = reply
        return retry, last

    def _redirected(self, reply: Any, index: int, asking: dict[int, Address]) -> bool:
        """Whether `reply` says to send its command again (noting where, for ASK)."""
        if isinstance(reply, ReadOnlyError):
            return True
        if not isinstance(reply, ResponseError):
            return False
        text = str(reply)
        if text.startswith("MOVED "):
            slot, target = text.split(" ")[1:3]
            host, _, port = target.rpartition(":")
            self._map.slots[int(slot)] = (host, int(port))  # the full map: refreshed below
            return True
        if text.startswith("ASK "):
            host, _, port = text.split(" ")[2].rpartition(":")
            asking[index] = (host, int(port))
            return True
        return text.startswith(_SETTLING)

    async def _send(
        self, address: Address, commands: list[Sequence[Any]], *, ask: bool
    ) -> list[Any] | BaseException:
        """Send commands to one node; its error if it could not be reached (nothing sent)."""
        try:
            node = self._node(address)
            await node.connect()
        except (RedisError, OSError) as exc:
            return exc
        self._written.add(address)
        if ask:  # an ASKING before each command redirected by ASK
            asked = [c for command in commands for c in (("ASKING",), command)]
            replies = await self._lost_on(address, node.execute_many(asked))
            return list(replies[1::2])
        return list(await self._lost_on(address, node.execute_many(commands)))

    async def _lost_on(self, address: Address, reply: Any) -> Any:
        """Await a node's reply; a connection lost meanwhile refreshes the map, then raises."""
        try:
            return await reply
        except (RedisConnectionError, RedisTimeoutError):
            self._forget(address)
            self._refresh_soon()
            raise

    def _forget(self, address: Address) -> None:
        """Drop a node's client, whose connection failed (nothing left open to close)."""
        self._written.discard(address)
        self._nodes.pop(address, None)

    def _refresh_soon(self) -> None:
        if self._refreshing is None or self._refreshing.done():
            self._refreshing = asyncio.ensure_future(self._quiet_refresh())

    async def _quiet_refresh(self) -> None:
        with contextlib.suppress(RedisError, OSError):  # the next command tries again
            await self._refresh()

    async def _refresh(self) -> None:
        """Read the slot map from the first node that answers `CLUSTER SLOTS`."""
        version = self._map.version
        failures: list[str] = []
        for address in self._map.candidates():
            if self._map.version != version:
                return  # refreshed meanwhile (by a concurrent caller)
            host, port = address
            kwargs = {**self._node_kwargs, "host": host, "port": port}
            kwargs["socket_timeout"] = kwargs.get("socket_connect_timeout")
            probe = RespClient(_NodeSettings(f"{self.settings.url} (node {host}:{port})", kwargs))
            try:
                reply = await probe.execute("CLUSTER", "SLOTS")
            except (RedisError, OSError) as exc:
                failures.append(f"{host}:{port}: {exc}")
                continue
            finally:
                await probe.aclose()
            if reply:
                self._map.load(reply, address)
                return
            failures.append(f"{host}:{port}: no slots assigned")
        raise RedisConnectionError(f"no cluster node gave its slot map ({'; '.join(failures)})")

    async def _mget(self, keys: Sequence[Any]) -> list[Any]:
        """`MGET` of keys in several slots: one `MGET` per slot, in one pipeline."""
        by_slot: dict[int, list[int]] = {}
        for index, key in enumerate(keys):
            by_slot.setdefault(slot_of(_bytes(key)), []).append(index)
        commands = [("MGET", *(keys[i] for i in indexes)) for indexes in by_slot.values()]
        values: list[Any] = [None] * len(keys)
        for indexes, reply in zip(by_slot.values(), await self.execute_many(commands), strict=True):
            if isinstance(reply, Exception):
                raise reply
            for index, value in zip(indexes, reply, strict=True):
                values[index] = value
        return values

    async def _wait(self, args: Sequence[Any]) -> int:
        """`WAIT` on every node written to since the last one; the fewest replicas of any."""
        written, self._written = list(self._written), set()
        if not written:
            return int(args[0])
        replies = await asyncio.gather(
            *(self._node(address).execute("WAIT", *args) for address in written)
        )
        return min(int(reply) for reply in replies)


class ClusterPubSubConnection(Connection):
    """A redis-py connection to any node of the cluster that answers (for classic pub/sub)."""

    def __init__(self, *, cluster: tuple[Address, ...], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.cluster = list(cluster)

    async def _connect(self) -> None:
        failure: BaseException | None = None
        for host, port in list(self.cluster):
            self.host, self.port = host, port
            try:
                await super()._connect()  # type: ignore[no-untyped-call]
            except (RedisError, OSError) as exc:
                failure = exc
                continue
            if (host, port) != self.cluster[0]:  # it answered: try it first next time
                self.cluster.remove((host, port))
                self.cluster.insert(0, (host, port))
            return
        raise RedisConnectionError(f"no cluster node accepted a connection: {failure}")


def parse_cluster_url(url: str) -> tuple[tuple[Address, ...], str]:
    """Read a cluster URL: its nodes, and the rest of it as `redis://` (credentials, options)."""
    scheme, _, rest = url.partition("://")
    netloc, _, path_query = rest.partition("/")
    credentials, _, hosts = netloc.rpartition("@")
    path, _, query = path_query.partition("?")
    if not hosts:
        raise ConfigurationError(
            f"{redact(url)!r}: write a Redis Cluster URL as "
            f"{scheme}://host1:7000,host2:7001/ (any nodes of the cluster)"
        )
    if path.strip("/") not in ("", "0"):
        raise ConfigurationError(f"{redact(url)!r}: a Redis Cluster has only database 0")
    addresses: list[Address] = []
    for host in hosts.split(","):
        name, _, port = host.strip().rpartition(":") if ":" in host else (host.strip(), "", "")
        try:
            addresses.append((name.strip("[]") or "localhost", int(port or 6379)))
        except ValueError:
            raise ConfigurationError(f"{redact(url)!r}: {host!r} is not host:port") from None
    if "db" in dict(pair.partition("=")[::2] for pair in query.split("&") if pair):
        raise ConfigurationError(f"{redact(url)!r}: a Redis Cluster has only database 0")
    auth = f"{credentials}@" if credentials else ""
    single = f"redis://{auth}cluster/0" + (f"?{query}" if query else "")
    return tuple(addresses), single
