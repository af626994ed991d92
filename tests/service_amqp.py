"""How the tests reach RabbitMQ: `AQUEUE_TEST_AMQP_URL`, one name prefix per test.

Every test gets `?prefix=t<unique>-`, so all it declares (queues, dead-letter and delay queues,
exchanges) starts with that prefix; `cleanup` deletes them all afterwards. Queues are listed
with `rabbitmqctl` (the management plugin need not be enabled); exchanges have known names.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from urllib.parse import parse_qsl, urlsplit

import aiormq
import anyio

from aqueue._amqp import parse_amqp_url
from aqueue.brokers._amqp_topology import LEVELS
from aqueue.urls import redact

#: Whether the contract suite runs on this driver.
ENABLED = True

URL = os.environ.get("AQUEUE_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//")


def make_url(unique: str, **query: str) -> str:
    """A broker URL whose names all start with `t<unique>-`."""
    extra = "".join(f"&{key}={value}" for key, value in query.items())
    separator = "&" if urlsplit(URL).query else "?"
    return f"{URL}{separator}prefix=t{unique}-{extra}"


def prefix_of(url: str) -> str:
    return dict(parse_qsl(urlsplit(url).query)).get("prefix", "")


async def unreachable() -> str | None:
    """Why RabbitMQ at `AQUEUE_TEST_AMQP_URL` cannot be used, or None."""
    settings = parse_amqp_url(URL)
    try:
        with anyio.fail_after(5):
            connection = await aiormq.connect(settings.aiormq_url("tests"))
    except Exception as exc:  # any failure means: not usable here
        return f"RabbitMQ unreachable at {redact(URL)}: {exc!r}"
    await connection.close()
    return None


def _rabbitmqctl(*args: str) -> list[str]:
    tool = shutil.which("rabbitmqctl")
    if tool is None:
        return []
    done = subprocess.run(
        [tool, *args, "--quiet", "--no-table-headers"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return done.stdout.split("\n") if done.returncode == 0 else []


def list_queues(prefix: str, vhost: str = "/") -> list[str]:
    """The queues of `vhost` whose name starts with `prefix` (empty without rabbitmqctl)."""
    names = _rabbitmqctl("list_queues", "-p", vhost, "name")
    return [name for name in names if name and name.startswith(prefix)]


async def cleanup(url: str) -> None:
    """Delete every queue and exchange whose name starts with the URL's prefix."""
    prefix = prefix_of(url)
    if not prefix.startswith("t"):  # never touch what a test did not make
        return
    settings = parse_amqp_url(url)
    queues = await anyio.to_thread.run_sync(list_queues, prefix, settings.vhost)
    base = f"{prefix}aqueue"
    exchanges = [base, f"{base}.dead", f"{base}.delayed", f"{base}.mailbox"]
    exchanges += [f"{base}.delay.{level}" for level in range(LEVELS)]
    async with aiormq.connect(settings.aiormq_url("tests")) as connection:
        channel = await connection.channel()
        for queue in queues:
            await channel.queue_delete(queue)
        for exchange in exchanges:
            await channel.exchange_delete(exchange)
