"""How the tests reach RabbitMQ: `AQUEUE_TEST_AMQP_URL`, one name prefix per test.

Every test gets `?prefix=t<unique>-`, so all it declares (queues, dead-letter and delay queues,
exchanges) starts with that prefix; `cleanup` deletes them all afterwards. Queues are listed
with `rabbitmqctl` (the management plugin need not be enabled); exchanges have known names.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import uuid
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

import aiormq
import anyio

from aqueue.drivers.amqp.connection import parse_amqp_url
from aqueue.drivers.amqp.topology import LEVELS
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
    await delete_prefixed(url, prefix, "tests")


async def delete_prefixed(url: str, prefix: str, name: str) -> None:
    """Delete the queues (`rabbitmqctl list_queues`) and exchanges named with `prefix`."""
    settings = parse_amqp_url(url)
    queues = await anyio.to_thread.run_sync(list_queues, prefix, settings.vhost)
    base = f"{prefix}aqueue"
    exchanges = [base, f"{base}.dead", f"{base}.delayed", f"{base}.mailbox"]
    exchanges += [f"{base}.delay.{level}" for level in range(LEVELS)]
    async with aiormq.connect(settings.aiormq_url(name)) as connection:
        channel = await connection.channel()
        for queue in queues:
            await channel.queue_delete(queue)
        for exchange in exchanges:
            await channel.exchange_delete(exchange)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class PrivateNode:
    """A RabbitMQ node of one test's own, on free ports, in a temporary folder: to stop and start.

    Started with `rabbitmq-server` (the test must skip where it is not installed) and stopped
    with `rabbitmqctl shutdown`; `await_startup` is the readiness signal. Its queues and
    persistent messages survive a restart, as on any node.
    """

    def __init__(self) -> None:
        # Not under pytest's tmp_path: its folders are private to this user, and the node
        # runs as the rabbitmq user.
        self.base = base = Path(tempfile.mkdtemp(prefix="aqueue-rabbit-"))
        base.chmod(0o755)
        self.name = f"aqtest{uuid.uuid4().hex[:8]}@localhost"
        self.port = _free_port()
        self.url = f"amqp://guest:guest@127.0.0.1:{self.port}//"
        self.log = base / "server.log"
        self.process: subprocess.Popen[bytes] | None = None
        (base / "rabbitmq.conf").write_text(f"listeners.tcp.local = 127.0.0.1:{self.port}\n")
        for folder in ("mnesia", "log"):
            (base / folder).mkdir(exist_ok=True)
        if os.geteuid() == 0:  # the server script runs the node as the rabbitmq user
            for path in (base, *base.iterdir()):
                shutil.chown(path, "rabbitmq", "rabbitmq")

    @staticmethod
    def missing() -> str | None:
        """Why no private node can run here, or None."""
        for tool in ("rabbitmq-server", "rabbitmqctl"):
            if shutil.which(tool) is None:
                return f"{tool} is not on PATH: cannot start a RabbitMQ node of the test's own"
        return None

    def _ctl(self, *args: str, timeout: float = 60) -> None:
        subprocess.run(
            ["rabbitmqctl", "-n", self.name, *args],
            capture_output=True,
            timeout=timeout,
            check=True,
        )

    def start(self) -> None:
        """Start the node and return once it accepts connections."""
        env = {
            **os.environ,
            "RABBITMQ_NODENAME": self.name,
            "RABBITMQ_DIST_PORT": str(_free_port()),
            "RABBITMQ_CONFIG_FILE": str(self.base / "rabbitmq"),
            "RABBITMQ_MNESIA_BASE": str(self.base / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.base / "log"),
            "RABBITMQ_PID_FILE": str(self.base / "node.pid"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.base / "plugins"),
        }
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                ["rabbitmq-server"],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: killed whole if need be
            )
        self._ctl("wait", str(self.base / "node.pid"), "--timeout", "60", timeout=90)

    def stop(self) -> None:
        """Stop the node (as an operator would) and wait for its process to end."""
        if self.process is None:
            return
        try:
            self._ctl("shutdown")
        finally:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=30)
            if self.process.poll() is None:  # it did not stop: kill its whole group
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
            self.process = None

    def remove(self) -> None:
        """Stop the node if it runs, and delete its folder."""
        try:
            self.stop()
        finally:
            shutil.rmtree(self.base, ignore_errors=True)
