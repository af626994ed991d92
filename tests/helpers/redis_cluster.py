"""A Redis Cluster of a test's own: 3 primaries (and a replica each, if asked), on free ports.

`redis-server --cluster-enabled yes` processes joined with `redis-cli --cluster create`.
Every step waits on a line a server prints (`Ready to accept connections`, `Cluster state
changed: ok`, a replica's `sync: Finished with success`, `Failover election won`), never on a
clock. Nodes call a peer down after `NODE_TIMEOUT_MS`, so a failover takes about two seconds.
"""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

import anyio

from tests.helpers.processes import Lines, free_port, spawn

NODE_TIMEOUT_MS = 1000
STEP = 60.0


class ClusterGroup:
    """`primaries` cluster nodes with `replicas` replicas each."""

    def __init__(self, directory: Path, primaries: int = 3, replicas: int = 0) -> None:
        self.directory = directory
        self.replicas = replicas
        self.ports = [_node_port() for _ in range(primaries * (1 + replicas))]
        self.nodes: dict[int, Lines] = {}
        self.witness: int | None = None  # a node that saw the last kill
        self.seen_ok = 0  # how often it had said the cluster is ok, at the kill

    def url(self, query: str = "", auth: str = "") -> str:
        hosts = ",".join(f"127.0.0.1:{port}" for port in self.ports[:2])
        return f"redis+cluster://{auth}{hosts}/" + (f"?{query}" if query else "")

    async def start(self) -> None:
        await anyio.to_thread.run_sync(self.start_blocking)

    def start_blocking(self) -> None:
        """Start every node, join them, and block until each says the cluster is ok."""
        for port in self.ports:  # the cluster bus on a free port of its own too
            self.nodes[port] = _node(self.directory / str(port), port)
        for node in self.nodes.values():
            node.block_until_line("Ready to accept connections")
        command = ["redis-cli", "--cluster", "create"]
        command += [f"127.0.0.1:{port}" for port in self.ports]
        command += ["--cluster-replicas", str(self.replicas), "--cluster-yes"]
        done = subprocess.run(command, capture_output=True, text=True, timeout=STEP, check=False)
        if done.returncode != 0:
            raise AssertionError(f"redis-cli --cluster create failed:\n{done.stdout}{done.stderr}")
        for node in self.nodes.values():
            node.block_until_line("Cluster state changed: ok", within=STEP)
        if self.replicas:
            replicas = [n for n in self.nodes.values() if n.count("MASTER <-> REPLICA sync")]
            for node in replicas:
                node.block_until_line("sync: Finished with success", within=STEP)

    def add_replica(self, primary: int) -> None:
        """Start one more node, as a replica of the primary on port `primary`.

        A primary with two replicas still has one after a failover, to confirm `WAIT 1`.
        """
        port = _node_port()
        node = self.nodes[port] = _node(self.directory / str(port), port)
        node.block_until_line("Ready to accept connections")
        primary_id = self._cli(primary, "CLUSTER", "MYID")[0]
        self._cli(
            port, "--cluster", "add-node", f"127.0.0.1:{port}", f"127.0.0.1:{primary}",
            "--cluster-slave", "--cluster-master-id", primary_id,
        )  # fmt: skip
        node.block_until_line("sync: Finished with success", within=STEP)

    def _cli(self, port: int, *args: str) -> list[str]:
        command = ["redis-cli", "-p", str(port), *args]
        done = subprocess.run(command, capture_output=True, text=True, timeout=STEP, check=False)
        if done.returncode != 0:
            raise AssertionError(f"{' '.join(command)} failed:\n{done.stdout}{done.stderr}")
        return done.stdout.split("\n")

    def _role(self, port: int) -> list[str]:
        done = subprocess.run(
            ["redis-cli", "-p", str(port), "ROLE"], capture_output=True, text=True, check=False
        )
        return done.stdout.split("\n")

    def primary_ports(self) -> list[int]:
        """The ports of the nodes that are primaries now (asks each node for its role)."""
        return [port for port in self.nodes if self._role(port)[0] == "master"]

    def kill(self, port: int) -> None:
        """kill -9 the node on `port` (nothing persisted)."""
        self.nodes.pop(port).stop(signal.SIGKILL)
        self.witness = next(iter(self.nodes))
        self.seen_ok = self.nodes[self.witness].count("Cluster state changed: ok")

    async def wait_failover(self) -> None:
        """Wait until a replica took over the killed primary's slots.

        A surviving node says the cluster is ok again once they are served (with a primary
        killed, `cluster-require-full-coverage` has it say `fail` in between).
        """
        assert self.witness is not None, "kill() a primary with a replica first"
        witness = self.nodes[self.witness]
        await witness.wait_line("Cluster state changed: ok", count=self.seen_ok + 1, within=STEP)

    def stop(self) -> None:
        for node in self.nodes.values():
            node.stop(signal.SIGKILL)
        self.nodes.clear()


def _node_port() -> int:
    """A free port a cluster node may use (Redis refuses ports above 55535)."""
    while (port := free_port()) > 55535:
        pass
    return port


def _node(directory: Path, port: int) -> Lines:
    directory.mkdir(parents=True, exist_ok=True)
    command = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir", str(directory)]
    command += ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"]
    command += ["--cluster-node-timeout", str(NODE_TIMEOUT_MS), "--save", "", "--appendonly", "no"]
    command += ["--repl-diskless-sync-delay", "0", "--cluster-port", str(free_port())]
    return spawn(command)
