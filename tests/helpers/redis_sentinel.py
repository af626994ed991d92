"""A Redis primary, its replica and three sentinels of a test's own, on free ports.

Every step waits on a line a server prints (`Ready to accept connections`, the replica's
`sync: Finished with success`, a sentinel's `+sentinel` for each peer, `+switch-master` after
a failover), never on a clock. The sentinels declare a primary down after 1 s
(`down-after-milliseconds`), so a failover takes about two seconds.
"""

from __future__ import annotations

import signal
from pathlib import Path

import anyio

from tests.helpers.processes import Lines, free_port, spawn

SERVICE = "mymaster"
DOWN_AFTER_MS = 1000


class SentinelGroup:
    """redis-server primary + 2 replicas, and 3 `redis-server --sentinel` (quorum 2).

    Two replicas: after a failover one is left to confirm `WAIT 1`.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.primary_port = free_port()
        self.replica_ports = [free_port() for _ in range(2)]
        self.sentinel_ports = [free_port() for _ in range(3)]
        self.primary: Lines | None = None
        self.replicas: list[Lines] = []
        self.sentinels: list[Lines] = []

    def url(self, db: int = 0, query: str = "", scheme: str = "redis+sentinel") -> str:
        hosts = ",".join(f"127.0.0.1:{port}" for port in self.sentinel_ports)
        return f"{scheme}://{hosts}/{SERVICE}/{db}" + (f"?{query}" if query else "")

    async def start(self) -> None:
        await anyio.to_thread.run_sync(self.start_blocking)

    def start_blocking(self) -> None:
        """Start every server, blocking this thread until each is ready."""
        self.primary = _server(self._dir("primary"), self.primary_port)
        for port in self.replica_ports:
            of = ("--replicaof", "127.0.0.1", str(self.primary_port))
            replica = _server(self._dir(f"replica-{port}"), port, *of)
            self.replicas.append(replica)
            replica.block_until_line("sync: Finished with success")
        for port in self.sentinel_ports:
            config = self._dir(f"sentinel-{port}") / "sentinel.conf"
            config.write_text(
                f"port {port}\nbind 127.0.0.1\n"
                f"sentinel monitor {SERVICE} 127.0.0.1 {self.primary_port} 2\n"
                f"sentinel down-after-milliseconds {SERVICE} {DOWN_AFTER_MS}\n"
                f"sentinel failover-timeout {SERVICE} 3000\n"
            )
            command = ["redis-server", str(config), "--sentinel"]
            self.sentinels.append(spawn(command, cwd=config.parent))
        for sentinel in self.sentinels:  # each knows the replicas and both of its peers
            sentinel.block_until_line("+slave slave", count=2)
            sentinel.block_until_line("+sentinel sentinel", count=2)

    def _dir(self, name: str) -> Path:
        """A directory of the server's own (a replica writes the RDB it loads there)."""
        path = self.directory / name
        path.mkdir(exist_ok=True)
        return path

    def kill_primary(self) -> None:
        """kill -9 the primary's process (nothing persisted)."""
        assert self.primary is not None
        self.primary.stop(signal.SIGKILL)
        self.primary = None

    async def wait_failover(self) -> None:
        """Wait until a sentinel has switched the primary to the replica."""
        await self.sentinels[0].wait_line(f"+switch-master {SERVICE}", within=60)

    def stop(self) -> None:
        for each in [*self.sentinels, *self.replicas, self.primary]:
            if each is not None:
                each.stop(signal.SIGKILL)
        self.sentinels.clear()
        self.replicas.clear()
        self.primary = None


def _server(directory: Path, port: int, *extra: str) -> Lines:
    command = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir", str(directory)]
    command += ["--save", "", "--appendonly", "no", "--repl-diskless-sync-delay", "0", *extra]
    server = spawn(command)
    server.block_until_line("Ready to accept connections")
    return server
