"""Signed messages and results (`task_message_key`): what is not signed right never runs."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import anyio
import pytest

from aqueue import App, ConfigurationError, OutgoingMessage, Worker, states
from aqueue.message import Envelope, encode_body
from aqueue.signing import MAGIC, OVERHEAD, SignatureError, Signer, payload_of

KEY = "k" * 32
OLD = b"o" * 16


def make(tmp_path: Path, **settings: Any) -> App:
    settings.setdefault("broker", f"sqlite:///{tmp_path / 'aqueue.db'}")
    return App("tests", set_as_current=False, **settings)


async def burst(app: App) -> Worker:
    worker = Worker(app, burst=True)
    with anyio.fail_after(30):
        await worker.run()
    return worker


def body(task: str = "tests.add", args: list[Any] | None = None) -> bytes:
    return encode_body("id-1", task, args or [1, 2], {}, None, None, 0, {}, 1 << 20)


def test_sign_then_verify_gives_the_body_back() -> None:
    signer = Signer(KEY)
    signed = signer.sign(body())
    assert signed.startswith(MAGIC)
    assert len(signed) == len(body()) + OVERHEAD
    assert signer.verify(signed) == body()
    assert payload_of(signed) == body()
    assert payload_of(body()) == body()


@pytest.mark.parametrize("at", [0, 5, 12, 20, 28, 40, 60, -1])
def test_any_flipped_byte_is_refused(at: int) -> None:
    signer = Signer(KEY)
    signed = bytearray(signer.sign(body()))
    signed[at] ^= 0x01
    with pytest.raises(SignatureError) as info:
        signer.verify(bytes(signed))
    assert info.value.reason in {"bad-signature", "unsigned"}


def test_unsigned_and_truncated_are_refused() -> None:
    signer = Signer(KEY)
    for raw in (body(), b"", MAGIC, signer.sign(body())[: OVERHEAD - 1]):
        with pytest.raises(SignatureError, match="unsigned"):
            signer.verify(raw)


def test_an_unknown_key_is_refused_and_an_old_one_accepted() -> None:
    signed = Signer(OLD).sign(body())
    with pytest.raises(SignatureError, match="unknown key"):
        Signer(KEY).verify(signed)
    assert Signer(KEY, [OLD]).verify(signed) == body()


def test_max_age_counts_from_the_eta() -> None:
    signer = Signer(KEY, max_age=60)
    now = time.time()
    old = signer.sign(body(), now=now - 120)
    with pytest.raises(SignatureError, match="stale"):
        signer.verify(old, now=now)
    assert signer.verify(old, now=now, check_age=False) == body()
    later = signer.sign(body(), not_before=now + 3600, now=now - 120)  # a countdown of an hour
    assert signer.verify(later, now=now + 3600 + 30) == body()
    with pytest.raises(SignatureError, match="stale"):
        signer.verify(later, now=now + 3600 + 61)


def test_settings_check_keys_and_never_show_them() -> None:
    app = App("tests", set_as_current=False, task_message_key=KEY, task_message_old_keys=[OLD])
    assert KEY not in repr(app.conf)
    assert repr(OLD) not in repr(app.conf)
    assert "task_message_key='***'" in repr(app.conf)
    with pytest.raises(ConfigurationError, match="16 bytes"):
        App("tests", set_as_current=False, task_message_key="short")
    with pytest.raises(ConfigurationError, match="16 bytes"):
        App("tests", set_as_current=False, task_message_old_keys=["short"])
    with pytest.raises(ConfigurationError, match="seconds"):
        App("tests", set_as_current=False, task_message_max_age=0)


async def test_signed_tasks_run_and_bad_ones_are_dead_lettered(tmp_path: Path) -> None:
    app = make(tmp_path, task_message_key=KEY, task_message_old_keys=[OLD])
    ran: list[int] = []

    @app.task
    async def add(x: int, y: int) -> int:
        ran.append(x)
        return x + y

    async with app:
        broker = await app.broker()
        good = await add.delay(1, 1)
        many = await add.delay_many([(2, 2)])
        countdown = await add.apply_async((3, 3), countdown=0.01)
        signed = Signer(KEY).sign(body(add.name, [100, 0]))
        tampered = signed[:-1] + b"\x05"  # args [100, 5]
        by_old = Signer(OLD).sign(body(add.name, [4, 4]))
        by_other = Signer(b"x" * 16).sign(body(add.name, [101, 0]))
        stale = Signer(KEY).sign(body(add.name, [5, 5]), now=time.time() - 10**6)
        await broker.publish(
            [
                OutgoingMessage(id="t", queue="default", body=tampered),
                OutgoingMessage(id="u", queue="default", body=body(add.name, [102, 0])),
                OutgoingMessage(id="o", queue="default", body=by_old),
                OutgoingMessage(id="x", queue="default", body=by_other),
                OutgoingMessage(id="s", queue="default", body=stale),  # no max age: runs
            ]
        )
        await anyio.sleep(0.02)  # the countdown's own duration
        worker = await burst(app)
        assert await good.get(timeout=5) == 2
        assert await many[0].get(timeout=5) == 4
        assert await countdown.get(timeout=5) == 6
        letters = await broker.dead_letters("default")
        assert sorted(letter.reason for letter in letters) == [
            "bad-signature",
            "bad-signature",
            "unsigned",
        ]
        assert worker.stats()["refused"] == 3
        assert sorted(ran) == [1, 2, 3, 4, 5]  # never 100, 101 or 102


async def test_stale_messages_are_dead_lettered(tmp_path: Path) -> None:
    app = make(tmp_path, task_message_key=KEY, task_message_max_age=60)

    @app.task
    async def add(x: int, y: int) -> int:
        return x + y

    async with app:
        broker = await app.broker()
        stale = Signer(KEY).sign(body(add.name, [5, 5]), now=time.time() - 120)
        await broker.publish([OutgoingMessage(id="s", queue="default", body=stale)])
        good = await add.delay(1, 2)
        await burst(app)
        assert await good.get(timeout=5) == 3
        (letter,) = await broker.dead_letters("default")
        assert letter.reason == "stale"
        assert "task_message_max_age" in (letter.detail or "")


async def test_a_retry_is_signed_again(tmp_path: Path) -> None:
    app = make(tmp_path, task_message_key=KEY)

    @app.task(bind=True, max_retries=2)
    async def flaky(self: Any) -> int:
        if self.request.retries < 1:
            raise self.retry(countdown=0)
        return int(self.request.retries)

    async with app:
        result = await flaky.delay()
        await burst(app)
        assert await result.get(timeout=5) == 1


async def test_results_are_signed_and_checked(tmp_path: Path) -> None:
    app = make(tmp_path, task_message_key=KEY)

    @app.task
    async def add(x: int, y: int) -> int:
        return x + y

    async with app:
        result = await add.delay(2, 3)
        await burst(app)
        assert await result.get(timeout=5) == 5
        backend = await app.result_backend()
        assert backend is not None
        stored = await backend.fetch(result.id)
        assert stored is not None
        assert stored.payload.startswith(MAGIC)
        # A result written by someone without the key is an error, never a value.
        await backend.store(result.id, states.SUCCESS, stored.payload[OVERHEAD:], 60.0)
        with pytest.raises(SignatureError, match="unsigned"):
            await result.get(timeout=5)


async def test_a_worker_without_the_key_refuses_signed_messages(tmp_path: Path) -> None:
    app = make(tmp_path)
    signed = Signer(KEY).sign(body())
    with pytest.raises(Exception, match="signed, but this worker has no task_message_key"):
        Envelope.decode(signed)
    async with app:
        broker = await app.broker()
        await broker.publish([OutgoingMessage(id="s", queue="default", body=signed)])
        await burst(app)
        (letter,) = await broker.dead_letters("default")
        assert letter.reason == "undecodable"
