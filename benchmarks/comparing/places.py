"""The servers: a Redis database and a RabbitMQ vhost the benchmark owns.

Also used by `benchmarks/worker_cpu.py`, for the same clean-up.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import uuid
from urllib.parse import quote, urlsplit, urlunsplit

MARKER = "aqueue-bench:owner"  # set in the Redis database the benchmark owns


class RedisPlace:
    """A Redis database used by the benchmark alone: flushed before and after every run."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.version = "?"

    async def __aenter__(self) -> RedisPlace:
        import redis.asyncio as aioredis

        async with aioredis.from_url(self.url) as client:
            self.version = str((await client.info("server"))["redis_version"])
            keys = await client.dbsize()
            if keys and not await client.exists(MARKER):
                raise SystemExit(
                    f"{self.url} holds {keys} keys the benchmark did not make; it flushes the "
                    "database it uses, so give it an empty one with --redis-url"
                )
        await self.reset()
        return self

    async def reset(self) -> None:
        import redis.asyncio as aioredis

        async with aioredis.from_url(self.url) as client:
            await client.flushdb()
            await client.set(MARKER, "1")

    async def __aexit__(self, *exc: object) -> None:
        import redis.asyncio as aioredis

        async with aioredis.from_url(self.url) as client:
            await client.flushdb()


class AmqpPlace:
    """A vhost of the benchmark's own (made and deleted with rabbitmqctl when it can be)."""

    def __init__(self, url: str) -> None:
        self.base = url
        self.url = url
        self.version = "?"
        self.vhost: str | None = None
        self.ctl = shutil.which("rabbitmqctl")
        self.runs = 0

    def prefix(self) -> str:
        self.runs += 1
        return f"aqbench-{os.getpid()}-{self.runs}-"

    def _ctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        assert self.ctl is not None
        return subprocess.run(
            [self.ctl, "-q", *args], capture_output=True, text=True, timeout=60, check=False
        )

    async def __aenter__(self) -> AmqpPlace:
        parts = urlsplit(self.base)
        if self.ctl and parts.hostname in ("127.0.0.1", "localhost", "::1"):
            vhost = f"aqueue-bench-{uuid.uuid4().hex[:8]}"
            user = parts.username or "guest"
            made = await asyncio.to_thread(self._ctl, "add_vhost", vhost)
            if made.returncode == 0:
                await asyncio.to_thread(
                    self._ctl, "set_permissions", "-p", vhost, user, ".*", ".*", ".*"
                )
                self.vhost = vhost
                self.url = urlunsplit(parts._replace(path="/" + quote(vhost, safe="")))
        if self.vhost is None:
            print(
                "  (rabbitmqctl is not usable here: queues go to the URL's vhost, named "
                "aqbench-*, and the ones the benchmark knows of are deleted after each run)",
                flush=True,
            )
        self.version = await self._server_version()
        return self

    async def _server_version(self) -> str:
        import aio_pika

        connection = await aio_pika.connect(self.url)
        try:
            assert connection.transport is not None
            properties = connection.transport.connection.server_properties
            version = properties.get("version", "?")
            return version.decode() if isinstance(version, bytes) else str(version)
        finally:
            await connection.close()

    async def reset(self, prefix: str) -> None:
        """Delete the queues of a finished run (its exchanges go with the vhost)."""
        import aio_pika

        if self.vhost is not None:
            listed = await asyncio.to_thread(self._ctl, "list_queues", "-p", self.vhost, "name")
            queues = [n for n in listed.stdout.split() if n.startswith(prefix)]
            exchanges: list[str] = []
        else:  # the names the benchmark knows of
            queues = [f"{prefix}{name}" for name in ("taskiq", "taskiq.dead_letter", "default")]
            queues.append(f"{prefix}aqueue.dead.default")
            exchanges = [f"{prefix}{name}" for name in ("taskiq", "aqueue", "aqueue.dead")]
        connection = await aio_pika.connect(self.url)
        try:
            for name, delete in [*((q, "queue") for q in queues), *((e, "x") for e in exchanges)]:
                channel = await connection.channel()  # a failed delete closes its channel
                with contextlib.suppress(Exception):
                    if delete == "queue":
                        await channel.queue_delete(name)
                    else:
                        await channel.exchange_delete(name)
        finally:
            await connection.close()

    async def __aexit__(self, *exc: object) -> None:
        if self.vhost is not None:
            await asyncio.to_thread(self._ctl, "delete_vhost", self.vhost)
