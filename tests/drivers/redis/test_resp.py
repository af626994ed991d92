"""The lean Redis client of the worker's hot path (`aqueue.drivers.redis.resp`), on a real Redis.

RESP encoding, pipelining many callers on one connection, error replies, cancelled callers,
`socket_timeout`, lost connections, AUTH / client name / SELECT, Unix sockets, TLS (with
certificates made by the openssl CLI) and `aclose`. Keys live under the test's own prefix
(`shared_url` deletes them) or on a redis-server of the test's own (killed at the end). Nothing
sleeps: tests wait on replies (Redis's own BLPOP timeout where time must pass) and on the lines
a server prints.
"""

from __future__ import annotations

import asyncio
import enum
import hashlib
import os
import secrets
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import anyio
import pytest

from tests.helpers import service_redis

service_redis.require_client_library()  # before anything imports redis-py

import redis.asyncio as aioredis  # noqa: E402
from redis.exceptions import (  # noqa: E402
    AuthenticationError,
    NoPermissionError,
    NoScriptError,
    OutOfMemoryError,
    ResponseError,
)
from redis.exceptions import ConnectionError as RedisConnectionError  # noqa: E402
from redis.exceptions import TimeoutError as RedisTimeoutError  # noqa: E402

from aqueue import App, Worker  # noqa: E402
from aqueue.drivers.redis.client import parse_redis_url  # noqa: E402
from aqueue.drivers.redis.resp import RespClient, encode_bulk, encode_command, encode_head  # noqa: E402
from tests.helpers.drivers import service_unavailable  # noqa: E402
from tests.helpers.processes import STEP, RedisServer, free_port, spawn  # noqa: E402

pytestmark = pytest.mark.both_loops  # asyncio and uvloop (tests/helpers/loops.py)

T = TypeVar("T")


class Clients:
    """The clients a test makes (RespClient and redis-py), every one closed at its end."""

    def __init__(self) -> None:
        self.made: list[RespClient | aioredis.Redis] = []

    def resp(self, url: str, **options: Any) -> RespClient:
        client = RespClient(parse_redis_url(url, options))
        self.made.append(client)
        return client

    def plain(self, url: str) -> aioredis.Redis:
        client = parse_redis_url(url, {}).client()
        self.made.append(client)
        return client

    async def close(self) -> None:
        for client in self.made:
            await client.aclose()


@pytest.fixture
async def clients() -> AsyncIterator[Clients]:
    made = Clients()
    yield made
    await made.close()


class Servers:
    """redis-servers of the test's own, on free ports: every one is killed at the end."""

    def __init__(self) -> None:
        self.made: list[RedisServer] = []

    async def plain(
        self, *, password: str | None = None, unix_socket: Path | None = None
    ) -> RedisServer:
        server = RedisServer(password, unix_socket)
        self.made.append(server)
        await server.start()
        return server

    async def tls(self, certificates: Path, *, client_certificates: bool = False) -> TlsRedisServer:
        server = TlsRedisServer(certificates, client_certificates=client_certificates)
        self.made.append(server)
        await server.start()
        return server

    def kill(self) -> None:
        for server in self.made:
            server.kill()


@pytest.fixture
def servers() -> Iterator[Servers]:
    if shutil.which("redis-server") is None:
        service_unavailable("redis-server is not on PATH")
    made = Servers()
    yield made
    made.kill()


def key(url: str, name: str) -> str:
    """A key under the URL's prefix (deleted by `shared_url` at the end)."""
    return f"{service_redis.prefix_of(url)}:{name}"


async def started(coro: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
    """Run a command in a task as far as its first wait: on an open connection, it is written.

    `execute` and `execute_many` write synchronously once connected (with other commands in
    flight: at the end of this turn of the loop), then wait on the reply: a task scheduled now
    runs to that point before this coroutine resumes.
    """
    task = asyncio.create_task(coro)
    await asyncio.sleep(0)
    assert not task.done()
    return task


# -- encoding -------------------------------------------------------------------------------


def test_encode_command_takes_enums_by_value() -> None:
    class Colour(enum.IntEnum):
        RED = 3

    class Name(enum.StrEnum):
        BEE = "bee"

    assert encode_command([Colour.RED, Name.BEE]) == b"*2\r\n$1\r\n3\r\n$3\r\nbee\r\n"


def test_encode_command_writes_exact_resp() -> None:
    assert encode_command(["SET", b"k\r\n", 42, -7, 1.5]) == (
        b"*5\r\n$3\r\nSET\r\n$3\r\nk\r\n\r\n$2\r\n42\r\n$2\r\n-7\r\n$3\r\n1.5\r\n"
    )
    assert encode_command(["ECHO", "\u00e9\u20ac"]) == (
        b"*2\r\n$4\r\nECHO\r\n$5\r\n\xc3\xa9\xe2\x82\xac\r\n"  # the length in bytes
    )
    assert encode_command([0.1, 1e20, 2**70, 0, b""]) == (
        b"*5\r\n$3\r\n0.1\r\n$5\r\n1e+20\r\n$22\r\n1180591620717411303424\r\n$1\r\n0\r\n$0\r\n\r\n"
    )
    assert encode_command(()) == b"*0\r\n"


@pytest.mark.parametrize(
    "bad", [True, False, None, bytearray(b"x"), memoryview(b"x"), ["a"], ("a",), {"a": 1}]
)
def test_encode_command_refuses_other_types(bad: Any) -> None:
    with pytest.raises(TypeError, match="must be str, bytes, int or float"):
        encode_command(["SET", "k", bad])


def test_a_head_and_its_last_arguments_make_the_whole_command() -> None:
    head = encode_head(("XADD", "stream", "*", "b"), 5)
    assert head + encode_bulk(b"a\r\nbody") == encode_command(
        ("XADD", "stream", "*", "b", b"a\r\nbody")
    )
    assert encode_head(("SET",), 3) + encode_bulk(b"k") + encode_bulk(b"") == encode_command(
        ("SET", "k", b"")
    )


# -- one connection, pipelined --------------------------------------------------------------


async def test_a_thousand_concurrent_callers_get_their_own_replies_on_one_connection(
    shared_url: str, clients: Clients
) -> None:
    name = f"resp-{uuid.uuid4().hex[:8]}"
    client = clients.resp(shared_url, client_name=name)
    counter = key(shared_url, "counter")
    calls = []
    for i in range(1000):  # the first call opens the connection; the rest wait for it
        calls += [client.execute("ECHO", f"caller-{i}"), client.execute("INCRBY", counter, 1)]
    replies = await asyncio.gather(*calls)
    assert replies[0::2] == [f"caller-{i}".encode() for i in range(1000)]
    assert sorted(replies[1::2]) == list(range(1, 1001))  # each INCRBY got its own reply
    plain = clients.plain(shared_url)
    listed = [each for each in await plain.client_list() if each["name"] == name]
    assert len(listed) == 1  # one connection made, for all 2,000 calls
    assert int(listed[0]["id"]) == await client.execute("CLIENT", "ID")


async def test_commands_sent_in_one_turn_while_others_are_in_flight_go_in_one_write(
    servers: Servers, clients: Clients
) -> None:
    server = await servers.plain()  # of this test's own: its read count is this test's
    client = clients.resp(server.url)
    await client.execute("PING")  # connected
    plain = clients.plain(server.url)
    before = (await plain.info("stats"))["total_reads_processed"]
    # 500 callers in one turn of the loop: the first is written at once, and the 499 sent
    # while it is in flight go together at the end of the turn (12 kB: one or two reads).
    replies = await asyncio.gather(*(client.execute("INCR", "n") for _ in range(500)))
    assert sorted(replies) == list(range(1, 501))
    reads = (await plain.info("stats"))["total_reads_processed"] - before
    assert reads <= 6  # 2 or 3 for the 500 commands, 1 for INFO (about 250 without coalescing)


async def test_replies_round_trip_exactly(shared_url: str, clients: Clients) -> None:
    client = clients.resp(shared_url)
    binary = bytes(range(256)) + b"\r\n*3\r\n$-1\r\n"
    assert await client.execute("ECHO", binary) == binary
    assert await client.execute("ECHO", "\u00e9") == "\u00e9".encode()
    number = key(shared_url, "float")
    assert await client.execute("INCRBYFLOAT", number, 0.5) == b"0.5"
    assert await client.execute("INCRBY", key(shared_url, "int"), -7) == -7
    assert await client.execute("GET", key(shared_url, "missing")) is None
    pushed = key(shared_url, "list")
    assert await client.execute("RPUSH", pushed, "a", b"b", 3) == 3
    assert await client.execute("LRANGE", pushed, 0, -1) == [b"a", b"b", b"3"]
    assert await client.execute("SET", key(shared_url, "s"), "v") == b"OK"


async def test_a_value_larger_than_the_write_buffer_goes_through(
    shared_url: str, clients: Clients
) -> None:
    client = clients.resp(shared_url)
    value = bytes(range(256)) * (32 * 4096)  # 32 MiB: writing pauses on the way
    big = key(shared_url, "big")
    assert await client.execute("SET", big, value) == b"OK"
    assert await client.execute("GET", big) == value
    other = key(shared_url, "big2")
    replies = await client.execute_many([("SET", other, value), ("STRLEN", other), ("PING",)])
    assert replies == [b"OK", len(value), b"PONG"]


async def test_execute_many_returns_replies_in_order_with_errors_in_place(
    shared_url: str, clients: Clients
) -> None:
    client = clients.resp(shared_url)
    text = key(shared_url, "text")
    replies = await client.execute_many(
        [
            ("SET", text, "not a number"),
            ("INCR", text),
            ("GET", text),
            ("EVALSHA", "0" * 40, 0),
            ("ECHO", b"last"),
        ]
    )
    assert len(replies) == 5
    assert replies[0] == b"OK"
    assert type(replies[1]) is ResponseError
    assert "not an integer" in str(replies[1])
    assert replies[2] == b"not a number"
    assert type(replies[3]) is NoScriptError
    assert replies[4] == b"last"
    assert await client.execute("PING") == b"PONG"  # still in step
    assert await client.execute_many([]) == []
    # A bad argument is refused before anything is written: the connection stays in step.
    with pytest.raises(TypeError):
        await client.execute_many([("ECHO", "sent?"), ("ECHO", None)])
    with pytest.raises(TypeError):
        await client.execute("ECHO", None)
    assert await client.execute_many([("ECHO", "a"), ("ECHO", "b")]) == [b"a", b"b"]


async def test_execute_encoded_returns_the_reply_or_the_error_reply_as_an_exception(
    shared_url: str, clients: Clients
) -> None:
    client = clients.resp(shared_url)
    text = key(shared_url, "text")
    assert await client.execute_encoded(encode_command(("SET", text, "not a number"))) == b"OK"
    reply = await client.execute_encoded(encode_command(("INCR", text)))
    assert type(reply) is ResponseError  # returned, as execute_many does, not raised
    assert "not an integer" in str(reply)
    reply = await client.execute_encoded(encode_command(("EVALSHA", "0" * 40, 0)))
    assert type(reply) is NoScriptError
    assert await client.execute_encoded(encode_command(("GET", text))) == b"not a number"


# -- errors ---------------------------------------------------------------------------------


async def test_error_replies_raise_what_redis_py_raises(shared_url: str, clients: Clients) -> None:
    client = clients.resp(shared_url)
    target = key(shared_url, "k")
    tag = uuid.uuid4().hex  # a script of this test's own: the server does not know it yet
    source = f"return {{KEYS[1], ARGV[1], '{tag}'}}"
    sha = hashlib.sha1(source.encode(), usedforsecurity=False).hexdigest()
    with pytest.raises(NoScriptError, match="NOSCRIPT"):
        await client.evalsha(sha, 1, target, "arg")
    assert await client.script_load(source) == sha.encode()
    assert await client.evalsha(sha, 1, target, "arg") == [target.encode(), b"arg", tag.encode()]

    assert await client.execute("SET", target, "a string") == b"OK"
    with pytest.raises(ResponseError, match="WRONGTYPE") as caught:
        await client.execute("LPUSH", target, "x")
    assert type(caught.value) is ResponseError
    with pytest.raises(ResponseError, match="unknown command"):
        await client.execute("NO-SUCH-COMMAND")
    with pytest.raises(ResponseError, match="boom"):
        await client.execute("EVAL", "return redis.error_reply('boom')", 0)
    assert await client.execute("GET", target) == b"a string"  # still in step


# -- cancellation, timeouts, lost connections -----------------------------------------------


@pytest.mark.parametrize("how", ["execute", "execute_many", "execute_encoded"])
async def test_a_cancelled_caller_leaves_the_connection_in_step(
    shared_url: str, clients: Clients, how: str
) -> None:
    client = clients.resp(shared_url, socket_timeout=60)
    plain = clients.plain(shared_url)
    waiting = key(shared_url, "list")
    first = await client.execute("CLIENT", "ID")  # open: the next command is written at once
    if how == "execute":
        blocked = await started(client.execute("BLPOP", waiting, 0))
    elif how == "execute_encoded":
        blocked = await started(client.execute_encoded(encode_command(("BLPOP", waiting, 0))))
    else:
        commands = [("ECHO", "before"), ("BLPOP", waiting, 0), ("ECHO", "after")]
        blocked = await started(client.execute_many(commands))
    blocked.cancel()
    with pytest.raises(asyncio.CancelledError):
        await blocked
    assert await plain.lpush(waiting, "item") == 1
    with anyio.fail_after(STEP):
        assert await client.execute("PING") == b"PONG"  # not the BLPOP's reply
    assert await plain.llen(waiting) == 0  # the cancelled BLPOP was sent, and took it
    assert await client.execute("ECHO", "next") == b"next"
    assert await client.execute("CLIENT", "ID") == first  # the same connection throughout


async def test_a_reply_later_than_socket_timeout_fails_the_commands_in_flight(
    shared_url: str, clients: Clients
) -> None:
    timeout = 0.5
    client = clients.resp(shared_url, socket_timeout=timeout)
    waiting = key(shared_url, "never")
    first = await client.execute("CLIENT", "ID")  # opened: its timer is armed for 0.5 s on
    # Redis answers this one after half that: the timer goes off while the BLPOP below
    # waits, well before the BLPOP's own deadline.
    assert await client.execute("BLPOP", key(shared_url, "empty"), timeout / 2) is None
    loop = asyncio.get_running_loop()
    since = loop.time()
    blocked = asyncio.ensure_future(client.execute("BLPOP", waiting, 0))
    behind = asyncio.ensure_future(client.execute("ECHO", "behind"))  # pipelined after it
    with anyio.fail_after(STEP):
        results = await asyncio.gather(blocked, behind, return_exceptions=True)
    elapsed = loop.time() - since
    assert [type(each) for each in results] == [RedisTimeoutError, RedisTimeoutError]
    assert f"within {timeout} s" in str(results[0])
    assert elapsed >= timeout  # each command has its own deadline, not the timer's first one
    assert await client.execute("PING") == b"PONG"
    second = await client.execute("CLIENT", "ID")
    assert second != first  # a fresh connection

    # An idle connection outlives its timeout: only commands in flight have deadlines.
    other = clients.resp(shared_url, socket_timeout=STEP)
    assert await other.execute("BLPOP", waiting, timeout + 0.2) is None  # Redis waits
    assert await client.execute("CLIENT", "ID") == second


async def test_a_lost_connection_fails_the_command_in_flight_and_the_next_call_reconnects(
    shared_url: str, clients: Clients
) -> None:
    client = clients.resp(shared_url, socket_timeout=60)
    plain = clients.plain(shared_url)
    first = await client.execute("CLIENT", "ID")
    blocked = await started(client.execute("BLPOP", key(shared_url, "never"), 0))
    assert await plain.client_kill_filter(_id=first) == 1
    with anyio.fail_after(STEP), pytest.raises(RedisConnectionError, match="lost"):
        await blocked
    second = await client.execute("CLIENT", "ID")
    assert second != first
    assert await client.execute("PING") == b"PONG"
    assert await client.execute("CLIENT", "ID") == second  # and it keeps that one


async def test_aclose_fails_the_command_in_flight_and_every_later_call(
    shared_url: str, clients: Clients
) -> None:
    client = clients.resp(shared_url, socket_timeout=60)
    assert await client.execute("PING") == b"PONG"
    blocked = await started(client.execute("BLPOP", key(shared_url, "never"), 0))
    await client.aclose()
    with anyio.fail_after(STEP), pytest.raises(RedisConnectionError, match="closed"):
        await blocked
    with pytest.raises(RedisConnectionError, match="closed"):
        await client.execute("PING")
    with pytest.raises(RedisConnectionError, match="closed"):
        await client.execute_many([("PING",)])
    await client.aclose()  # again: nothing to do

    never_opened = clients.resp(shared_url)
    await never_opened.aclose()
    with pytest.raises(RedisConnectionError, match="closed"):
        await never_opened.execute("PING")


async def test_aclose_while_a_call_opens_the_connection_fails_that_call(
    shared_url: str, clients: Clients
) -> None:
    client = clients.resp(shared_url)
    opening = asyncio.ensure_future(client.execute("PING"))
    await asyncio.sleep(0)  # now inside `_open`: it needs a round trip (CLIENT SETNAME) more
    assert not opening.done()
    await client.aclose()
    with anyio.fail_after(STEP), pytest.raises(RedisConnectionError, match="closed"):
        await opening


async def test_nothing_listening_is_a_prompt_connection_error(clients: Clients) -> None:
    client = clients.resp(f"redis://127.0.0.1:{free_port()}/0")
    for _ in range(2):  # a failed opening is not kept: the next call tries again
        with anyio.fail_after(5), pytest.raises(RedisConnectionError, match="could not connect"):
            await client.execute("PING")


async def test_a_server_that_never_answers_times_out(servers: Servers, clients: Clients) -> None:
    server = await servers.plain()
    assert server.process is not None
    pid = server.process.proc.pid
    connecting = clients.resp(server.url, socket_connect_timeout=0.2)
    replying = clients.resp(server.url, socket_timeout=0.2, socket_connect_timeout=STEP)
    os.kill(pid, signal.SIGSTOP)  # the kernel still accepts connections; nothing answers
    try:
        with anyio.fail_after(STEP), pytest.raises(RedisTimeoutError, match="connecting"):
            await connecting.execute("PING")
        with anyio.fail_after(STEP), pytest.raises(RedisTimeoutError, match="no reply"):
            await replying.execute("PING")
    finally:
        os.kill(pid, signal.SIGCONT)
    assert await connecting.execute("PING") == b"PONG"
    assert await replying.execute("PING") == b"PONG"


async def test_callers_waiting_on_a_failed_opening_share_its_error(
    servers: Servers, clients: Clients
) -> None:
    server = await servers.plain()
    assert server.process is not None
    pid = server.process.proc.pid
    client = clients.resp(server.url, socket_connect_timeout=0.5)
    os.kill(pid, signal.SIGSTOP)
    try:
        started = time.perf_counter()
        outcomes = await asyncio.gather(
            *(client.execute("PING") for _ in range(5)), return_exceptions=True
        )
        elapsed = time.perf_counter() - started
    finally:
        os.kill(pid, signal.SIGCONT)
    assert all(isinstance(outcome, RedisTimeoutError) for outcome in outcomes), outcomes
    assert elapsed < 4 * 0.5, elapsed  # one attempt for all five (five in a row: 2.5 s)
    assert await client.execute("PING") == b"PONG"  # the next call tries again


# -- AUTH, client name, database, Unix sockets ----------------------------------------------


async def test_auth_client_name_and_database(servers: Servers, clients: Clients) -> None:
    password = f"pw-{secrets.token_hex(8)}"
    server = await servers.plain(password=password)
    on_db_2 = server.url.removesuffix("/0") + "/2"
    client = clients.resp(on_db_2)
    assert await client.execute("SET", "where", "on db 2") == b"OK"
    assert await client.execute("CLIENT", "GETNAME") == b"aqueue"  # the default name
    assert await clients.plain(on_db_2).get("where") == b"on db 2"
    plain = clients.plain(server.url)
    assert await plain.get("where") is None  # not on db 0
    assert password not in repr(client)

    named = clients.resp(on_db_2, client_name="resp-worker")
    named_id = await named.execute("CLIENT", "ID")
    listed = {int(each["id"]): each for each in await plain.client_list()}
    assert (listed[named_id]["name"], listed[named_id]["db"]) == ("resp-worker", "2")

    user_password = f"{password}-user"
    assert await plain.acl_setuser(
        "worker", enabled=True, passwords=[f"+{user_password}"], keys=["*"], commands=["+@all"]
    )
    as_user = clients.resp(f"redis://worker:{user_password}@127.0.0.1:{server.port}/0")
    assert await as_user.execute("ACL", "WHOAMI") == b"worker"  # AUTH username password

    wrong = clients.resp(server.url.replace(password, f"{password}x"))
    with pytest.raises(AuthenticationError, match="WRONGPASS") as caught:
        await wrong.execute("PING")
    assert password not in str(caught.value) + repr(caught.value) + repr(wrong)
    anonymous = clients.resp(f"redis://127.0.0.1:{server.port}/0")
    with pytest.raises(AuthenticationError, match="NOAUTH"):
        await anonymous.execute("PING")


async def test_refusals_raise_redis_py_s_classes(servers: Servers, clients: Clients) -> None:
    server = await servers.plain()
    admin = clients.plain(server.url)
    assert await admin.acl_setuser(
        "reader", enabled=True, passwords=["+pw"], keys=["*"], commands=["+get", "+client"]
    )
    reader = clients.resp(f"redis://reader:pw@127.0.0.1:{server.port}/0")
    assert await reader.execute("GET", "k") is None
    with pytest.raises(NoPermissionError, match="NOPERM"):
        await reader.execute("SET", "k", "v")
    writer = clients.resp(server.url)
    assert await admin.config_set("maxmemory", "1")
    with pytest.raises(OutOfMemoryError, match="OOM"):
        await writer.execute("SET", "k", "v")
    assert await writer.execute("GET", "k") is None  # reads still work: the connection too


async def test_a_password_for_a_server_without_one_is_an_authentication_error(
    servers: Servers, clients: Clients
) -> None:
    server = await servers.plain()
    client = clients.resp(f"redis://:unneeded@127.0.0.1:{server.port}/0")
    with pytest.raises(AuthenticationError):  # what redis-py raises for this reply
        await client.execute("PING")


async def test_a_unix_socket_url(servers: Servers, clients: Clients, tmp_path: Path) -> None:
    path = tmp_path / "r.sock"
    server = await servers.plain(unix_socket=path)
    client = clients.resp(f"unix://{path}?db=3")
    assert await client.execute("SET", "where", "over the socket") == b"OK"
    info = await client.execute("CLIENT", "INFO")
    assert f"addr={path}:0 ".encode() in info
    assert b" db=3 " in info
    assert b" name=aqueue " in info
    assert await clients.plain(f"redis://127.0.0.1:{server.port}/3").get("where") == (
        b"over the socket"
    )
    bare = clients.resp(f"unix://{path}", client_name="")  # nothing to set up: no round trip
    assert await bare.execute("CLIENT", "GETNAME") is None
    assert await bare.execute("GET", "where") is None  # db 0


# -- TLS ------------------------------------------------------------------------------------


class TlsRedisServer(RedisServer):
    """A redis-server of the test's own that speaks TLS only, on a free port."""

    def __init__(self, certificates: Path, *, client_certificates: bool = False) -> None:
        super().__init__()
        self.certificates = certificates
        self.client_certificates = client_certificates

    async def start(self) -> None:
        certs = self.certificates
        command = ["redis-server", "--port", "0", "--tls-port", str(self.port)]
        command += ["--bind", "127.0.0.1"]
        command += ["--tls-auth-clients", "yes" if self.client_certificates else "no"]
        command += ["--tls-cert-file", str(certs / "server.pem")]
        command += ["--tls-key-file", str(certs / "server.key")]
        command += ["--tls-ca-cert-file", str(certs / "ca.pem")]
        command += ["--save", "", "--appendonly", "no"]
        self.process = spawn(command)
        try:
            await self.process.wait_line("Ready to accept connections")
        except AssertionError:
            if "tls" in self.process.output.lower() and "Bad directive" in self.process.output:
                service_unavailable("redis-server was built without TLS")
            raise


@pytest.fixture
def certificates(tmp_path: Path) -> Path:
    """A CA, and a certificate it signed for localhost and 127.0.0.1 (openssl CLI)."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not on PATH: no certificates for the TLS tests")
    directory = tmp_path / "certs"
    directory.mkdir()

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=directory, check=True, capture_output=True)

    key_options = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    openssl(
        "req", "-x509", *key_options, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
        "-subj", "/CN=aqueue test CA",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
    )  # fmt: skip

    def signed(name: str, subject: str, extensions: str) -> None:
        """Make `name`.key and `name`.pem, signed by the CA."""
        openssl(
            "req", *key_options, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", subject
        )
        (directory / f"{name}.ext").write_text(
            f"{extensions}basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n"
        )
        openssl(
            "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-out", f"{name}.pem", "-days", "2", "-extfile", f"{name}.ext",
        )  # fmt: skip

    signed(
        "server",
        "/CN=localhost",
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
    )
    signed("client", "/CN=aqueue worker", "extendedKeyUsage=clientAuth\n")
    return directory


async def test_tls_checks_the_certificate_unless_told_not_to(
    servers: Servers, certificates: Path, clients: Clients
) -> None:
    port = (await servers.tls(certificates)).port
    ca = certificates / "ca.pem"
    verified = clients.resp(f"rediss://localhost:{port}/0?ssl_ca_certs={ca}")
    assert await verified.execute("PING") == b"PONG"
    assert await verified.execute("CLIENT", "GETNAME") == b"aqueue"
    by_address = clients.resp(f"rediss://127.0.0.1:{port}/0?ssl_ca_certs={ca}")
    assert await by_address.execute("ECHO", "by address") == b"by address"

    unknown_ca = clients.resp(f"rediss://localhost:{port}/0")
    with anyio.fail_after(STEP), pytest.raises(RedisConnectionError, match="certificate"):
        await unknown_ca.execute("PING")
    unchecked = clients.resp(f"rediss://localhost:{port}/0?ssl_cert_reqs=none")
    assert await unchecked.execute("PING") == b"PONG"

    cleartext = clients.resp(f"redis://localhost:{port}/0")
    with anyio.fail_after(STEP), pytest.raises(RedisConnectionError):
        await cleartext.execute("PING")


async def test_tls_with_a_client_certificate(
    servers: Servers, certificates: Path, clients: Clients
) -> None:
    server = await servers.tls(certificates, client_certificates=True)
    url = f"rediss://localhost:{server.port}/0?ssl_ca_certs={certificates / 'ca.pem'}"
    with_certificate = clients.resp(
        url,
        ssl_certfile=str(certificates / "client.pem"),
        ssl_keyfile=str(certificates / "client.key"),
    )
    assert await with_certificate.execute("PING") == b"PONG"
    without = clients.resp(url)
    with anyio.fail_after(STEP), pytest.raises(RedisConnectionError):
        await without.execute("PING")


async def test_a_task_round_trip_over_tls(servers: Servers, certificates: Path) -> None:
    server = await servers.tls(certificates)
    url = f"rediss://localhost:{server.port}/0?ssl_ca_certs={certificates / 'ca.pem'}"
    async with App("tls", broker=url, set_as_current=False) as app:

        @app.task
        async def add(x: int, y: int) -> int:
            return x + y

        results = [await add.delay(i, 1) for i in range(20)]
        with anyio.fail_after(STEP):
            await Worker(app, concurrency=4, burst=True).run()
            assert [await result.get(timeout=STEP) for result in results] == [
                i + 1 for i in range(20)
            ]
