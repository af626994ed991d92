"""`AsyncResult` over a memory backend, with results stored by hand (no worker)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from aqueue import (
    App,
    AsyncResult,
    ResultBackend,
    ResultTimeout,
    SerializationError,
    TaskError,
    TaskRevoked,
    states,
)
from aqueue.result_meta import ResultMeta, rebuild_exception

pytestmark = pytest.mark.both_loops  # asyncio and uvloop (tests/helpers/loops.py)

TRACEBACK = (
    "Traceback (most recent call last):\n"
    '  File "proj/tasks.py", line 3, in add\n'
    "    return x + y\n"
    "TypeError: unsupported operand\n"
)


@pytest.fixture
async def app() -> AsyncIterator[App]:
    app = App("results", broker="memory://", set_as_current=False)
    yield app
    await app.close()


@pytest.fixture
async def backend(app: App) -> ResultBackend:
    backend = await app.result_backend()
    assert backend is not None
    return backend


async def stored(
    app: App, backend: ResultBackend, state: str, meta: ResultMeta, ttl: float = 60
) -> AsyncResult[Any]:
    """Store `meta` under a fresh id, as a worker would; return its handle."""
    task_id = str(uuid.uuid4())
    await backend.store(task_id, state, meta.encode(), ttl)
    return app.AsyncResult(task_id)


def failure(exc_type: str | None, message: str = "it broke") -> ResultMeta:
    return ResultMeta(
        task="proj.tasks.add", exc_type=exc_type, exc_message=message, traceback=TRACEBACK
    )


# -- states -----------------------------------------------------------------------------------


async def test_unknown_id_is_pending(app: App) -> None:
    result = app.AsyncResult("never-sent")
    assert await result.state() == states.PENDING
    assert await result.ready() is False
    assert await result.successful() is False
    assert await result.failed() is False
    assert await result.traceback() is None


async def test_success(app: App, backend: ResultBackend) -> None:
    value = {"total": 3, "items": (1, 2), "ok": True}
    result = await stored(app, backend, states.SUCCESS, ResultMeta(task="t", result=value))
    assert await result.state() == states.SUCCESS
    assert await result.ready() is True
    assert await result.successful() is True
    assert await result.failed() is False
    assert await result.traceback() is None
    assert await result.get() == value
    assert await result.get(timeout=1) == value  # again: results are not consumed


@pytest.mark.parametrize("value", [None, 0, "", [], b"\x00"], ids=repr)
async def test_falsy_results(app: App, backend: ResultBackend, value: object) -> None:
    result = await stored(app, backend, states.SUCCESS, ResultMeta(task="t", result=value))
    assert await result.get() == value


@pytest.mark.parametrize("state", [states.STARTED, states.RETRY])
async def test_running_states_are_not_ready(app: App, backend: ResultBackend, state: str) -> None:
    result = await stored(app, backend, state, ResultMeta(task="t"))
    assert await result.state() == state
    assert await result.ready() is False
    assert await result.successful() is False
    assert await result.failed() is False


async def test_failure_state(app: App, backend: ResultBackend) -> None:
    result = await stored(app, backend, states.FAILURE, failure("TypeError"))
    assert await result.state() == states.FAILURE
    assert await result.ready() is True
    assert await result.successful() is False
    assert await result.failed() is True
    assert await result.traceback() == TRACEBACK


async def test_revoked_state(app: App, backend: ResultBackend) -> None:
    meta = ResultMeta(task="proj.tasks.add", exc_message="expired before it ran")
    result = await stored(app, backend, states.REVOKED, meta)
    assert await result.state() == states.REVOKED
    assert await result.ready() is True
    assert await result.failed() is False
    with pytest.raises(TaskRevoked) as info:
        await result.get()
    assert str(info.value) == (
        f"task proj.tasks.add[{result.id}] was revoked: expired before it ran"
    )
    assert isinstance(await result.get(propagate=False), TaskRevoked)


# -- failures are rebuilt, never imported ------------------------------------------------------


async def test_builtin_failure_is_raised_as_itself_with_the_remote_traceback(
    app: App, backend: ResultBackend
) -> None:
    result = await stored(app, backend, states.FAILURE, failure("TypeError", "bad operand"))
    with pytest.raises(TypeError) as info:
        await result.get()
    assert type(info.value) is TypeError
    assert str(info.value) == "bad operand"
    assert info.value.__notes__ == [
        f"Remote traceback (task proj.tasks.add):\n{TRACEBACK.rstrip()}"
    ]


@pytest.mark.parametrize(
    "name", ["ValueError", "KeyError", "ZeroDivisionError", "TimeoutError", "RuntimeError"]
)
async def test_other_builtin_failures(app: App, backend: ResultBackend, name: str) -> None:
    result = await stored(app, backend, states.FAILURE, failure(name))
    with pytest.raises(Exception) as info:  # noqa: PT011 - the exact type is checked below
        await result.get()
    assert type(info.value).__name__ == name
    assert type(info.value).__module__ == "builtins"


async def test_failure_without_a_type_is_an_exception(app: App, backend: ResultBackend) -> None:
    result = await stored(app, backend, states.FAILURE, failure(None, "no type"))
    with pytest.raises(Exception) as info:  # noqa: PT011 - the exact type is checked below
        await result.get()
    assert type(info.value) is Exception
    assert str(info.value) == "no type"


async def test_non_builtin_failure_is_a_task_error(app: App, backend: ResultBackend) -> None:
    result = await stored(app, backend, states.FAILURE, failure("myapp.errors.Boom", "kaboom"))
    with pytest.raises(TaskError) as info:
        await result.get()
    error = info.value
    assert error.type_name == "myapp.errors.Boom"
    assert error.message == "kaboom"
    assert error.remote_traceback == TRACEBACK
    assert str(error) == "myapp.errors.Boom: kaboom"
    assert error.__notes__ == [f"Remote traceback (task proj.tasks.add):\n{TRACEBACK.rstrip()}"]


async def test_task_error_without_a_message(app: App, backend: ResultBackend) -> None:
    result = await stored(app, backend, states.FAILURE, failure("myapp.errors.Quiet", ""))
    with pytest.raises(TaskError) as info:
        await result.get()
    assert str(info.value) == "myapp.errors.Quiet"


@pytest.mark.parametrize(
    "name",
    [
        "os.system",
        "subprocess.Popen",
        "subprocess.check_call",
        "builtins.eval",
        "eval",
        "exec",
        "__import__",
        "open",
        "print",
        "SystemExit",
        "KeyboardInterrupt",
        "GeneratorExit",
        "BaseException",
        "BaseExceptionGroup",
        "object",
        "type",
    ],
)
async def test_dangerous_type_names_are_never_imported_or_called(
    app: App, backend: ResultBackend, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    calls: list[tuple[Any, ...]] = []

    def spy(*args: Any, **kwargs: Any) -> Any:
        calls.append(args)
        raise AssertionError("called")

    monkeypatch.setattr(os, "system", spy)
    monkeypatch.setattr(subprocess, "Popen", spy)
    monkeypatch.setattr(subprocess, "check_call", spy)
    result = await stored(app, backend, states.FAILURE, failure(name, "touch /tmp/pwned"))
    with pytest.raises(TaskError) as info:
        await result.get()
    assert info.value.type_name == name
    assert info.value.message == "touch /tmp/pwned"
    assert calls == []


async def test_a_module_named_in_a_result_is_not_imported(
    app: App, backend: ResultBackend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    marker = tmp_path / "imported"
    module = "aqueue_test_result_trap"
    (tmp_path / f"{module}.py").write_text(
        textwrap.dedent(
            f"""
            import pathlib
            pathlib.Path({str(marker)!r}).write_text("yes")

            class Boom(Exception):
                pass
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    result = await stored(app, backend, states.FAILURE, failure(f"{module}.Boom"))
    with pytest.raises(TaskError):
        await result.get()
    assert module not in sys.modules
    assert not marker.exists()


async def test_builtin_needing_other_arguments_falls_back_to_task_error(
    app: App, backend: ResultBackend
) -> None:
    message = "'utf-8' codec can't decode byte 0xff in position 0: invalid start byte"
    result = await stored(app, backend, states.FAILURE, failure("UnicodeDecodeError", message))
    with pytest.raises(TaskError) as info:
        await result.get()
    assert info.value.type_name == "UnicodeDecodeError"
    assert info.value.message == message
    assert info.value.remote_traceback == TRACEBACK


async def test_propagate_false_returns_the_exception(app: App, backend: ResultBackend) -> None:
    result = await stored(app, backend, states.FAILURE, failure("ValueError", "nope"))
    error = await result.get(propagate=False)
    assert type(error) is ValueError
    assert str(error) == "nope"
    other = await stored(app, backend, states.FAILURE, failure("myapp.Boom"))
    assert isinstance(await other.get(propagate=False), TaskError)


def test_failure_meta_describes_an_exception_as_data() -> None:
    class Boom(Exception):
        pass

    builtin = ResultMeta.failure("t", KeyError("k"), "tb")
    assert (builtin.exc_type, builtin.exc_message, builtin.traceback) == ("KeyError", "k", "tb")
    assert builtin.date_done is not None
    custom = ResultMeta.failure("t", Boom("bad"), None)
    assert (
        custom.exc_type
        == f"{__name__}.test_failure_meta_describes_an_exception_as_data.<locals>.Boom"
    )
    rebuilt = rebuild_exception(custom)
    assert type(rebuilt) is TaskError
    assert rebuilt.type_name == custom.exc_type
    assert getattr(rebuilt, "__notes__", None) is None  # no traceback, no note


def test_result_meta_round_trip() -> None:
    meta = ResultMeta(
        task="t",
        result=[1, (2,)],
        exc_type="X",
        exc_message="m",
        traceback="tb",
        retries=2,
        date_done=12.5,
    )
    assert ResultMeta.decode(meta.encode()) == meta


def test_unserialisable_result_is_named() -> None:
    with pytest.raises(SerializationError) as info:
        ResultMeta(task="t", result={"rows": [object()]}).encode()
    assert str(info.value).startswith("result['result']['rows'][0] is a builtins.object, ")


# -- waiting, timeouts, forgetting, expiry ----------------------------------------------------


async def test_get_times_out_on_a_missing_result(app: App) -> None:
    result = app.AsyncResult("missing-id")
    with anyio.fail_after(5), pytest.raises(ResultTimeout) as info:
        await result.get(timeout=0.05)
    assert isinstance(info.value, TimeoutError)
    assert str(info.value) == (
        "task missing-id gave no result within 0.05 s; it may still be queued or running"
    )


async def test_get_times_out_while_the_task_runs(app: App, backend: ResultBackend) -> None:
    result = await stored(app, backend, states.STARTED, ResultMeta(task="t"))
    with anyio.fail_after(5), pytest.raises(ResultTimeout):
        await result.get(timeout=0.05)


async def test_get_waits_for_the_result_to_be_stored(app: App, backend: ResultBackend) -> None:
    result = app.AsyncResult("later")
    got: list[Any] = []

    async def waiter() -> None:
        got.append(await result.get(timeout=10))

    with anyio.fail_after(5):
        async with anyio.create_task_group() as group:
            group.start_soon(waiter)
            await anyio.wait_all_tasks_blocked()
            assert got == []
            await backend.store("later", states.STARTED, ResultMeta(task="t").encode(), 60)
            await anyio.wait_all_tasks_blocked()
            assert got == []  # STARTED is not a ready state: still waiting
            await backend.store("later", states.SUCCESS, ResultMeta(result=42).encode(), 60)
    assert got == [42]


async def test_several_waiters_wake_on_one_store(app: App, backend: ResultBackend) -> None:
    got: list[Any] = []

    async def waiter() -> None:
        got.append(await app.AsyncResult("shared").get())

    with anyio.fail_after(5):
        async with anyio.create_task_group() as group:
            for _ in range(3):
                group.start_soon(waiter)
            await anyio.wait_all_tasks_blocked()
            await backend.store("shared", states.SUCCESS, ResultMeta(result="v").encode(), 60)
    assert got == ["v", "v", "v"]


async def test_forget(app: App, backend: ResultBackend) -> None:
    result = await stored(app, backend, states.SUCCESS, ResultMeta(task="t", result=1))
    assert await result.state() == states.SUCCESS
    await result.forget()
    assert await result.state() == states.PENDING
    assert await result.traceback() is None
    await result.forget()  # forgetting twice is fine
    with pytest.raises(ResultTimeout):
        await result.get(timeout=0.05)


@pytest.mark.parametrize("ttl", [0, -1])
async def test_expired_result_is_pending(app: App, backend: ResultBackend, ttl: float) -> None:
    result = await stored(app, backend, states.SUCCESS, ResultMeta(result=1), ttl=ttl)
    assert await result.state() == states.PENDING
    assert await result.ready() is False
    with pytest.raises(ResultTimeout):
        await result.get(timeout=0.05)
