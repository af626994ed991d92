"""Tasks: names, registration, in-process calls, binding, shared tasks and sending."""

from __future__ import annotations

import datetime as dt
import types
import weakref
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import anyio
import pytest

import aqueue.current
import aqueue.sending
from aqueue import (
    App,
    AsyncResult,
    AsyncTask,
    ConfigurationError,
    MessageTooLarge,
    NotRegistered,
    OutgoingMessage,
    Request,
    ResultsDisabled,
    SerializationError,
    SyncTask,
    Task,
    current_app,
    shared_task,
)
from aqueue.task import current_request
from tests.helpers.consuming import take_envelopes

NewApp = Callable[..., App]

#: The clock of `send_task`, pinned (and in the past, so every message is due at once).
NOW = 1_000_000.0


@pytest.fixture
async def new_app() -> AsyncIterator[NewApp]:
    apps: list[App] = []

    def make(main: str | None = "proj", **settings: Any) -> App:
        settings.setdefault("broker", "memory://")
        settings.setdefault("set_as_current", False)
        app = App(main, **settings)
        apps.append(app)
        return app

    yield make
    for app in apps:
        await app.close()


@pytest.fixture
def frozen_clock(monkeypatch: pytest.MonkeyPatch) -> float:
    monkeypatch.setattr(aqueue.sending, "time", types.SimpleNamespace(time=lambda: NOW))
    return NOW


@pytest.fixture
def isolated_shared_tasks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Give shared_task and current_app a fresh world, restored after the test."""
    monkeypatch.setattr(aqueue.current, "_shared", [])
    monkeypatch.setattr(aqueue.current, "_apps", weakref.WeakSet())
    monkeypatch.setattr(aqueue.current, "_current", [])


async def capture_publishes(app: App, monkeypatch: pytest.MonkeyPatch) -> list[OutgoingMessage]:
    """Record every message the app hands its broker (and still publish it)."""
    broker = await app.broker()
    publish = broker.publish
    sent: list[OutgoingMessage] = []

    async def recording(messages: Sequence[OutgoingMessage]) -> None:
        sent.extend(messages)
        await publish(messages)

    monkeypatch.setattr(broker, "publish", recording)
    return sent


async def add(x: int, y: int) -> int:
    return x + y


def checksum(text: str) -> int:
    return sum(text.encode()) % 256


# -- names and registration -------------------------------------------------------------------


async def test_default_name_is_module_and_function(new_app: NewApp) -> None:
    app = new_app()
    assert app.task(add).name == f"{__name__}.add"
    assert app.task(checksum).name == f"{__name__}.checksum"
    assert __name__.endswith("test_tasks")
    assert set(app.tasks) == {f"{__name__}.add", f"{__name__}.checksum"}


async def test_functions_of_main_are_named_after_the_app(new_app: NewApp) -> None:
    def job() -> None:
        pass

    job.__module__ = "__main__"
    job.__qualname__ = "job"
    assert new_app("billing").task(job).name == "billing.job"
    assert new_app(None).task(job).name == "__main__.job"


async def test_explicit_name(new_app: NewApp) -> None:
    app = new_app()
    task = app.task(name="custom.adder")(add)
    assert task.name == "custom.adder"
    assert app.get_task("custom.adder") is task
    assert repr(task) == "<@task: custom.adder>"


async def test_duplicate_name_with_a_different_function(new_app: NewApp) -> None:
    app = new_app()
    app.task(name="dup")(add)
    with pytest.raises(ConfigurationError) as info:
        app.task(name="dup")(checksum)
    assert str(info.value) == (
        "two tasks are named 'dup' (add and checksum); give one of them name=..."
    )
    assert app.get_task("dup").fn is add


async def test_registering_the_same_function_twice_is_fine(new_app: NewApp) -> None:
    app = new_app()
    app.task(add)
    again = app.task(add)
    assert app.tasks == {f"{__name__}.add": again}


async def test_async_def_makes_an_async_task_and_def_a_sync_task(new_app: NewApp) -> None:
    app = new_app()
    async_task = app.task(add)
    sync_task = app.task(checksum)
    assert type(async_task) is AsyncTask
    assert type(sync_task) is SyncTask
    assert async_task.is_async is True
    assert sync_task.is_async is False
    assert isinstance(async_task, Task)
    assert type(app.task(name="n1")(add)) is AsyncTask
    assert type(app.task(name="n2")(checksum)) is SyncTask


async def test_task_keeps_the_function_and_its_doc(new_app: NewApp) -> None:
    def documented(x: int) -> int:
        """Double x."""
        return 2 * x

    task = new_app().task(documented)
    assert task.__doc__ == "Double x."
    assert task.__wrapped__ is documented
    assert task.fn is documented
    assert list(task.call_signature.parameters) == ["x"]


async def test_get_task_unknown_is_not_registered(new_app: NewApp) -> None:
    app = new_app()
    with pytest.raises(NotRegistered) as info:
        app.get_task("proj.nope")
    assert str(info.value) == (
        "no task named 'proj.nope' is registered on this app; import the module that "
        "defines it before starting the worker"
    )
    assert isinstance(info.value, LookupError)


# -- calling in-process -----------------------------------------------------------------------


async def test_calling_an_async_task_runs_it_here(new_app: NewApp) -> None:
    app = new_app()
    task = app.task(add)
    assert await task(1, 2) == 3
    assert await task(x=5, y=-1) == 4
    assert await take_envelopes(app) == []  # nothing was sent


async def test_calling_a_sync_task_runs_it_here(new_app: NewApp) -> None:
    app = new_app()
    task = app.task(checksum)
    assert task("x") == 120
    assert await take_envelopes(app) == []


async def test_bound_task_gets_itself_and_a_direct_request(new_app: NewApp) -> None:
    app = new_app()

    @app.task(bind=True, name="proj.whoami")
    async def whoami(self: AsyncTask[[int], Any], x: int) -> tuple[Any, Request, int]:
        return self, self.request, x

    task, request, x = await whoami(7)
    assert task is whoami
    assert x == 7
    assert request == Request(task="proj.whoami", called_directly=True)
    assert request.id is None
    assert list(whoami.call_signature.parameters) == ["x"]


async def test_bound_sync_task(new_app: NewApp) -> None:
    app = new_app()

    @app.task(bind=True)
    def named(self: SyncTask[[], str]) -> str:
        return self.name

    assert type(named) is SyncTask
    assert named() == named.name


async def test_bound_task_sees_the_current_request(new_app: NewApp) -> None:
    app = new_app()

    @app.task(bind=True, name="proj.req")
    async def req(self: AsyncTask[[], Request]) -> Request:
        return self.request

    running = Request(id="abc", task="proj.req", retries=2, called_directly=False, queue="q")
    token = current_request.set(running)
    try:
        seen = await req()
    finally:
        current_request.reset(token)
    assert seen is running
    assert seen.called_directly is False
    assert (await req()).called_directly is True


async def test_bind_without_parameters_is_a_configuration_error(new_app: NewApp) -> None:
    app = new_app()

    async def lonely() -> None:
        pass

    with pytest.raises(ConfigurationError) as info:
        app.task(bind=True)(lonely)  # type: ignore[arg-type]
    assert str(info.value) == (
        "test_bind_without_parameters_is_a_configuration_error.<locals>.lonely is bound "
        "(bind=True) but takes no arguments; give it a first parameter, self"
    )
    assert app.tasks == {}


# -- shared tasks -----------------------------------------------------------------------------


@pytest.mark.usefixtures("isolated_shared_tasks")
async def test_shared_task_reaches_existing_and_later_apps(new_app: NewApp) -> None:
    before = new_app("before")

    @shared_task(name="lib.ping")
    async def ping(x: int) -> int:
        return x

    after = new_app("after")
    assert before.get_task("lib.ping") is ping
    assert after.get_task("lib.ping") is ping
    assert type(ping) is AsyncTask
    assert await ping(3) == 3


@pytest.mark.usefixtures("isolated_shared_tasks")
async def test_shared_task_sends_through_the_current_app(new_app: NewApp) -> None:
    first = new_app("first", set_as_current=True)

    @shared_task
    def ping(x: int) -> int:
        return x

    second = new_app("second", set_as_current=True)
    bystander = new_app("bystander", set_as_current=False)
    assert current_app() is second
    assert ping.app is second
    result = await ping.delay(5)
    assert result.app is second
    sent = await take_envelopes(second)
    assert [(e.id, e.task, list(e.args)) for e in sent] == [(result.id, ping.name, [5])]
    assert await take_envelopes(first) == []
    assert await take_envelopes(bystander) == []
    assert ping.name.endswith(".ping")


@pytest.mark.usefixtures("isolated_shared_tasks")
async def test_bound_shared_task(new_app: NewApp) -> None:
    new_app(set_as_current=True)

    @shared_task(bind=True, name="lib.me")
    def me(self: SyncTask[[], str]) -> str:
        return self.request.task

    assert me() == "lib.me"


@pytest.mark.usefixtures("isolated_shared_tasks")
async def test_current_app_without_an_app() -> None:
    with pytest.raises(ConfigurationError) as info:
        current_app()
    assert str(info.value) == "no aqueue App exists yet; create one before sending tasks"


# -- sending: eta, countdown, expires, priority -----------------------------------------------


async def test_delay_sends_args_and_kwargs(new_app: NewApp) -> None:
    app = new_app()
    task = app.task(add)
    result = await task.delay(1, y=2)
    [envelope] = await take_envelopes(app)
    assert envelope.id == result.id
    assert envelope.task == f"{__name__}.add"
    assert list(envelope.args) == [1]
    assert envelope.kwargs == {"y": 2}
    assert envelope.eta is None
    assert envelope.expires is None
    assert envelope.retries == 0
    assert envelope.headers == {}
    assert isinstance(result, AsyncResult)
    assert result.task_name == task.name


async def test_delay_sends_what_apply_async_with_every_option_given_sends(
    new_app: NewApp, monkeypatch: pytest.MonkeyPatch
) -> None:
    # delay() takes a path of its own (no options to resolve): the same message either way.
    routed: list[tuple[Any, Any]] = []

    def router(name: str, args: Any, kwargs: Any, options: Any) -> str | None:
        routed.append((args, kwargs))
        return "routed" if name.endswith("urgent") else None

    app = new_app(task_routes=router, task_default_priority=3, task_ignore_result=True)
    backend = await app.result_backend()
    assert backend is not None
    monkeypatch.setattr(backend, "message_headers", lambda: {"reply_to": "here"})
    sent = await capture_publishes(app, monkeypatch)
    plain = app.task(add)
    urgent = app.task(name="urgent", priority=8, queue="own", ignore_result=False)(add)
    other = app.task(name="other", queue="own")(add)
    for task in (plain, urgent, other):
        by_delay = await task.delay(1, y=2)
        by_options = await task.apply_async((1,), {"y": 2}, headers={"extra": 1})
        assert (by_delay.task_name, by_delay._ignored) == (
            by_options.task_name,
            by_options._ignored,
        )
    assert [(m.queue, m.priority, m.eta) for m in sent[::2]] == [
        ("default", 3, None),
        ("routed", 8, None),
        ("own", 3, None),
    ]
    assert [(m.queue, m.priority, m.eta) for m in sent[::2]] == [
        (m.queue, m.priority, m.eta) for m in sent[1::2]
    ]
    assert routed == [([1], {"y": 2})] * 6  # the router sees the same arguments
    envelopes = await take_envelopes(app) + await take_envelopes(app, "routed")
    envelopes += await take_envelopes(app, "own")
    for by_delay, by_options in zip(envelopes[::2], envelopes[1::2], strict=True):
        assert by_delay.headers == {"reply_to": "here"}
        assert by_options.headers == {"reply_to": "here", "extra": 1}
        assert by_delay.id != by_options.id
        assert (by_delay.task, by_delay.args, by_delay.kwargs) == (
            by_options.task,
            by_options.args,
            by_options.kwargs,
        )
        assert (by_delay.eta, by_delay.expires, by_delay.retries) == (None, None, 0)


async def test_apply_async_with_task_id_and_headers(new_app: NewApp) -> None:
    app = new_app()
    task = app.task(add)
    result = await task.apply_async([1, 2], task_id="fixed-id", headers={"trace": "t-1"})
    assert result.id == "fixed-id"
    [envelope] = await take_envelopes(app)
    assert envelope.id == "fixed-id"
    assert envelope.headers == {"trace": "t-1"}


async def test_a_misspelt_call_option_is_refused_before_anything_is_sent(
    new_app: NewApp,
) -> None:
    app = new_app()
    task = app.task(add)
    options: dict[str, Any] = {"countdwn": 5}  # as an untyped caller would pass it
    with pytest.raises(TypeError, match="unknown call option 'countdwn'; did you mean 'countdown'"):
        await task.apply_async([1, 2], **options)
    with pytest.raises(TypeError, match="unknown call option 'task_id'"):
        await task.delay_many([(1, 2)], **{"task_id": "x"})  # type: ignore[typeddict-unknown-key]
    with pytest.raises(TypeError, match="unknown call option 'qeue'; did you mean 'queue'"):
        await app.send_task(task.name, [1, 2], **{"qeue": "q"})  # type: ignore[typeddict-unknown-key]
    assert await take_envelopes(app) == []


@pytest.mark.usefixtures("frozen_clock")
@pytest.mark.parametrize(
    ("options", "eta"),
    [
        ({"countdown": 30}, NOW + 30),
        ({"countdown": 0.5}, NOW + 0.5),
        ({"countdown": 0}, None),
        ({"countdown": -5}, None),
        ({"eta": dt.datetime(2001, 1, 1, tzinfo=dt.UTC)}, 978307200.0),
        ({"eta": dt.datetime(2001, 1, 1)}, 978307200.0),  # naive is UTC
        (
            {"eta": dt.datetime(2001, 1, 1, 2, tzinfo=dt.timezone(dt.timedelta(hours=2)))},
            978307200.0,
        ),
        ({"eta": 12345.5}, 12345.5),
        ({"eta": 12345}, 12345.0),
        ({}, None),
    ],
    ids=repr,
)
async def test_send_task_eta(new_app: NewApp, options: dict[str, Any], eta: float | None) -> None:
    app = new_app()
    await app.send_task("remote.job", [1], **options)
    [envelope] = await take_envelopes(app)
    assert envelope.eta == eta


@pytest.mark.usefixtures("frozen_clock")
async def test_eta_reaches_the_broker(new_app: NewApp, monkeypatch: pytest.MonkeyPatch) -> None:
    app = new_app()
    sent = await capture_publishes(app, monkeypatch)
    await app.send_task("remote.job", countdown=10)
    [message] = sent
    assert message.eta == NOW + 10


@pytest.mark.usefixtures("frozen_clock")
@pytest.mark.parametrize(
    ("expires", "expected"),
    [
        (60, NOW + 60),
        (0.25, NOW + 0.25),
        (dt.datetime(2001, 1, 1, tzinfo=dt.UTC), 978307200.0),
        (dt.datetime(2001, 1, 1), 978307200.0),
        (None, None),
    ],
    ids=repr,
)
async def test_send_task_expires(
    new_app: NewApp, expires: dt.datetime | float | None, expected: float | None
) -> None:
    app = new_app()
    task = app.task(add)
    await task.apply_async((1, 2), expires=expires)
    [envelope] = await take_envelopes(app)
    assert envelope.expires == expected


async def test_countdown_and_eta_together_is_an_error(new_app: NewApp) -> None:
    app = new_app()
    with pytest.raises(ConfigurationError) as info:
        await app.send_task("remote.job", countdown=5, eta=dt.datetime(2001, 1, 1))
    assert str(info.value) == "give countdown or eta, not both"
    assert await take_envelopes(app) == []


@pytest.mark.parametrize("priority", [10, -1, True, 2.5, "5"], ids=repr)
async def test_priority_out_of_range_is_an_error(new_app: NewApp, priority: Any) -> None:
    app = new_app()
    task = app.task(add)
    with pytest.raises(ConfigurationError) as info:
        await task.apply_async((1, 2), priority=priority)
    assert str(info.value) == f"priority must be a whole number from 0 to 9, not {priority!r}"
    assert await take_envelopes(app) == []


async def test_task_priority_option_out_of_range_fails_at_send(new_app: NewApp) -> None:
    app = new_app()
    task = app.task(priority=12)(add)
    with pytest.raises(ConfigurationError, match=r"not 12$"):
        await task.delay(1, 2)
    assert await take_envelopes(app) == []


async def test_delay_and_apply_async_refuse_the_same_way_first(new_app: NewApp) -> None:
    app = new_app()
    task = app.task(priority=12)(add)  # a bad option, and an argument that cannot go
    with pytest.raises(ConfigurationError, match=r"not 12$"):
        await task.delay(1, object())  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match=r"not 12$"):
        await task.apply_async((1, object()), expires=60)
    assert await take_envelopes(app) == []


async def test_priority_precedence(new_app: NewApp, monkeypatch: pytest.MonkeyPatch) -> None:
    app = new_app(task_default_priority=3)
    sent = await capture_publishes(app, monkeypatch)
    plain = app.task(add)
    urgent = app.task(name="urgent", priority=8)(add)
    await plain.delay(1, 1)
    await urgent.delay(1, 1)
    await urgent.apply_async((1, 1), priority=0)
    await plain.apply_async((1, 1), priority=9)
    assert [message.priority for message in sent] == [3, 8, 0, 9]
    assert [message.queue for message in sent] == ["default"] * 4


async def test_higher_priority_is_delivered_first(new_app: NewApp) -> None:
    app = new_app()
    await app.send_task("low", priority=0)
    await app.send_task("high", priority=9)
    await app.send_task("middle", priority=5)
    assert [envelope.task for envelope in await take_envelopes(app)] == ["high", "middle", "low"]


# -- sending: what is refused -----------------------------------------------------------------


async def test_delay_with_a_non_serialisable_argument(new_app: NewApp) -> None:
    app = new_app()
    task = app.task(add)
    with pytest.raises(SerializationError) as info:
        await task.delay(1, object())  # type: ignore[arg-type]
    assert str(info.value).startswith("args[1] is a builtins.object, which aqueue cannot send;")
    with pytest.raises(SerializationError) as info:
        await task.delay(1, y={"when": [1, 1j]})  # type: ignore[arg-type]
    assert str(info.value).startswith("kwargs['y']['when'][1] is a builtins.complex, ")
    assert await take_envelopes(app) == []


async def test_oversized_message(new_app: NewApp) -> None:
    app = new_app(message_max_bytes=1000)
    task = app.task(checksum)
    with pytest.raises(MessageTooLarge) as info:
        await task.delay("x" * 2000)
    assert f"task {task.name} message is " in str(info.value)
    assert "over message_max_bytes (1,000)" in str(info.value)
    assert await take_envelopes(app) == []
    await task.delay("x" * 100)
    assert len(await take_envelopes(app)) == 1


# -- result handles ---------------------------------------------------------------------------


async def test_results_disabled_app(new_app: NewApp) -> None:
    app = new_app(backend=False)
    assert await app.result_backend() is None
    task = app.task(add)
    result = await task.delay(1, 2)
    assert len(await take_envelopes(app)) == 1  # sending still works
    expected = (
        "this app has no result backend (result_backend is disabled); "
        "set result_backend, or leave it unset to use the broker's own store"
    )
    for handle in (result, app.AsyncResult("some-id"), task.AsyncResult("other-id")):
        with pytest.raises(ResultsDisabled) as info:
            await handle.get()
        assert str(info.value) == expected
        with pytest.raises(ResultsDisabled):
            await handle.state()


async def test_ignore_result_task_get_raises_at_once(new_app: NewApp) -> None:
    app = new_app()
    task = app.task(ignore_result=True, name="proj.fire")(add)
    assert task.ignore_result is True
    result = await task.delay(1, 2)
    with anyio.fail_after(5), pytest.raises(ResultsDisabled) as info:
        await result.get()
    assert str(info.value) == (
        "task proj.fire ignores its results (ignore_result=True or task_ignore_result); "
        "there is nothing to wait for"
    )
    with pytest.raises(ResultsDisabled):
        await task.AsyncResult(result.id).get(timeout=10)


async def test_task_ignore_result_setting_and_its_override(new_app: NewApp) -> None:
    app = new_app(task_ignore_result=True)
    ignoring = app.task(add)
    keeping = app.task(ignore_result=False)(checksum)
    assert ignoring.ignore_result is True
    assert keeping.ignore_result is False
    with pytest.raises(ResultsDisabled, match="ignores its results"):
        await (await ignoring.delay(1, 2)).get()
    with pytest.raises(ResultsDisabled, match="ignores its results"):
        await (await app.send_task("unregistered.task")).get()
    assert await (await keeping.delay("x")).state() == "PENDING"


async def test_result_handles_compare_by_id(new_app: NewApp) -> None:
    app = new_app()
    first, same, other = app.AsyncResult("a"), app.AsyncResult("a"), app.AsyncResult("b")
    assert first == same
    assert first != other
    assert hash(first) == hash(same)
    assert len({first, same, other}) == 2
    assert repr(first) == "<AsyncResult: a>"
