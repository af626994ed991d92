"""`task_routes`: which queue a call goes to, and the order of precedence in `App`."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import Any

import pytest

from aqueue import App, ConfigurationError
from aqueue.routing import route
from tests.helpers.consuming import take_envelopes

NewApp = Callable[..., App]


@pytest.fixture
async def new_app() -> AsyncIterator[NewApp]:
    apps: list[App] = []

    def make(**settings: Any) -> App:
        app = App("routing", broker="memory://", set_as_current=False, **settings)
        apps.append(app)
        return app

    yield make
    for app in apps:
        await app.close()


async def queues_of(app: App, *queues: str) -> dict[str, list[str]]:
    """Which task names each queue holds (draining them)."""
    return {
        queue: [envelope.task for envelope in await take_envelopes(app, queue)] for queue in queues
    }


# -- route() ----------------------------------------------------------------------------------


def test_no_routes() -> None:
    assert route(None, "a.b", [], {}) is None
    assert route({}, "a.b", [], {}) is None
    assert route([], "a.b", [], {}) is None


def test_exact_name() -> None:
    routes = {"feeds.tasks.import_feed": "feeds"}
    assert route(routes, "feeds.tasks.import_feed", [], {}) == "feeds"
    assert route(routes, "feeds.tasks.import_feeds", [], {}) is None
    assert route(routes, "feeds.tasks", [], {}) is None


@pytest.mark.parametrize(
    ("pattern", "name", "expected"),
    [
        ("video.*", "video.encode", "media"),
        ("video.*", "video.tasks.encode", "media"),
        ("video.*", "video", None),
        ("video.*", "Video.encode", None),  # case matters
        ("*.encode", "audio.encode", "media"),
        ("task.?", "task.1", "media"),
        ("task.?", "task.12", None),
        ("task.[ab]", "task.b", "media"),
        ("task.[ab]", "task.c", None),
        ("*", "anything.at.all", "media"),
    ],
)
def test_glob(pattern: str, name: str, expected: str | None) -> None:
    assert route({pattern: "media"}, name, [], {}) == expected


def test_exact_name_beats_an_earlier_glob() -> None:
    routes = {"a.*": "glob", "a.b": "exact"}
    assert route(routes, "a.b", [], {}) == "exact"
    assert route(routes, "a.c", [], {}) == "glob"


def test_first_matching_glob_wins() -> None:
    routes = {"a.b.*": "narrow", "a.*": "wide"}
    assert route(routes, "a.b.c", [], {}) == "narrow"
    assert route({"a.*": "wide", "a.b.*": "narrow"}, "a.b.c", [], {}) == "wide"


@pytest.mark.parametrize(
    "target", ["q", {"queue": "q"}, {"queue": "q", "routing_key": "ignored"}], ids=repr
)
def test_targets(target: object) -> None:
    assert route({"t": target}, "t", [], {}) == "q"


def test_none_target_is_no_route() -> None:
    assert route({"t": None}, "t", [], {}) is None


def test_callable_router_gets_the_call() -> None:
    calls: list[tuple[str, Sequence[Any], Mapping[str, Any], Mapping[str, Any]]] = []

    def router(
        name: str, args: Sequence[Any], kwargs: Mapping[str, Any], options: Mapping[str, Any]
    ) -> str | None:
        calls.append((name, args, kwargs, options))
        return "big" if kwargs.get("size", 0) > 10 else None

    assert route(router, "img.resize", [1], {"size": 20}) == "big"
    assert route(router, "img.resize", [2], {"size": 1}) is None
    assert calls == [
        ("img.resize", [1], {"size": 20}, {}),
        ("img.resize", [2], {"size": 1}, {}),
    ]


def test_callable_router_may_return_a_queue_mapping() -> None:
    assert route(lambda *_: {"queue": "q"}, "t", [], {}) == "q"


def test_list_of_routers_first_match_wins_and_none_falls_through() -> None:
    seen: list[str] = []

    def nothing(name: str, *_: Any) -> None:
        seen.append(f"nothing:{name}")

    def fast(name: str, *_: Any) -> str | None:
        seen.append(f"fast:{name}")
        return "fast" if name.startswith("x") else None

    routes = [nothing, {"a.*": "a-queue"}, fast, {"*": "catch-all"}]
    assert route(routes, "x.one", [], {}) == "fast"
    assert route(routes, "a.one", [], {}) == "a-queue"
    assert route(routes, "b.one", [], {}) == "catch-all"
    assert seen == [
        "nothing:x.one",
        "fast:x.one",
        "nothing:a.one",
        "nothing:b.one",
        "fast:b.one",
    ]


def test_tuple_of_routers() -> None:
    assert route(({"a": None}, {"a": "second"}), "a", [], {}) == "second"


def test_later_routers_are_not_consulted_after_a_match() -> None:
    assert route([{"a": "q"}, 42], "a", [], {}) == "q"
    with pytest.raises(ConfigurationError):
        route([{"a": "q"}, 42], "b", [], {})


@pytest.mark.parametrize(
    ("router", "kind"), [(42, "int"), ("proj.routers.route", "str"), ({"a"}, "set")]
)
def test_bad_router_type(router: object, kind: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        route(router, "a", [], {})
    assert str(info.value) == f"task_routes entries must be mappings or callables, not {kind}"


@pytest.mark.parametrize(
    "target", [42, ["q"], {"exchange": "x"}, {"queue": 5}, {"queue": None}], ids=repr
)
def test_bad_target(target: object) -> None:
    with pytest.raises(ConfigurationError) as info:
        route({"a.*": target}, "a.b", [], {})
    assert str(info.value) == f"a route must be a queue name or {{'queue': name}}, not {target!r}"


def test_bad_target_from_a_callable() -> None:
    with pytest.raises(ConfigurationError, match=r"^a route must be a queue name .*, not 7$"):
        route(lambda *_: 7, "a", [], {})


# -- precedence in App ------------------------------------------------------------------------

QUEUES = ("call", "routed", "own", "default", "fallback")


async def test_call_queue_beats_routes_and_task_queue(new_app: NewApp) -> None:
    app = new_app(task_routes={"proj.*": "routed"})

    @app.task(name="proj.resize", queue="own")
    async def resize(size: int) -> int:
        return size

    await resize.apply_async((1,), queue="call")
    assert await queues_of(app, *QUEUES) == {
        "call": ["proj.resize"],
        "routed": [],
        "own": [],
        "default": [],
        "fallback": [],
    }


async def test_route_beats_task_queue(new_app: NewApp) -> None:
    app = new_app(task_routes={"proj.resize": {"queue": "routed"}})

    @app.task(name="proj.resize", queue="own")
    async def resize(size: int) -> int:
        return size

    await resize.delay(1)
    assert (await queues_of(app, *QUEUES))["routed"] == ["proj.resize"]


async def test_task_queue_beats_default_when_no_route_matches(new_app: NewApp) -> None:
    app = new_app(task_routes={"other.*": "routed"}, task_default_queue="fallback")

    @app.task(name="proj.resize", queue="own")
    def resize(size: int) -> int:
        return size

    await resize.delay(1)
    assert await queues_of(app, *QUEUES) == {
        "call": [],
        "routed": [],
        "own": ["proj.resize"],
        "default": [],
        "fallback": [],
    }


async def test_task_default_queue_is_last(new_app: NewApp) -> None:
    app = new_app(task_default_queue="fallback")

    @app.task(name="proj.plain")
    async def plain() -> None:
        pass

    await plain.delay()
    assert (await queues_of(app, *QUEUES))["fallback"] == ["proj.plain"]


async def test_default_queue_is_named_default(new_app: NewApp) -> None:
    app = new_app()

    @app.task(name="proj.plain")
    async def plain() -> None:
        pass

    await plain.delay()
    assert await queues_of(app, *QUEUES) == {
        "call": [],
        "routed": [],
        "own": [],
        "default": ["proj.plain"],
        "fallback": [],
    }


async def test_router_returning_none_falls_through_to_the_task_queue(new_app: NewApp) -> None:
    app = new_app(task_routes=[lambda *_: None, {"nothing.*": "routed"}])

    @app.task(name="proj.resize", queue="own")
    async def resize(size: int) -> int:
        return size

    await resize.delay(1)
    assert (await queues_of(app, *QUEUES))["own"] == ["proj.resize"]


async def test_router_sees_the_call_arguments(new_app: NewApp) -> None:
    def by_size(name: str, args: Sequence[Any], kwargs: Mapping[str, Any], _: Any) -> str:
        return "routed" if args[0] > 10 else "call"

    app = new_app(task_routes=by_size)

    @app.task(name="proj.resize")
    async def resize(size: int) -> int:
        return size

    await resize.delay(50)
    await resize.delay(5)
    assert await queues_of(app, "routed", "call") == {
        "routed": ["proj.resize"],
        "call": ["proj.resize"],
    }


async def test_send_task_by_name_is_routed_too(new_app: NewApp) -> None:
    app = new_app(task_routes={"remote.*": "routed"}, task_default_queue="fallback")
    await app.send_task("remote.thing", [1])
    await app.send_task("elsewhere.thing", [2])
    await app.send_task("remote.thing", [3], queue="call")
    calls = {}
    for queue in ("routed", "fallback", "call"):
        calls[queue] = [(e.task, list(e.args)) for e in await take_envelopes(app, queue)]
    assert calls == {
        "routed": [("remote.thing", [1])],
        "fallback": [("elsewhere.thing", [2])],
        "call": [("remote.thing", [3])],
    }


async def test_bad_routes_fail_at_send_and_publish_nothing(new_app: NewApp) -> None:
    app = new_app(task_routes=42)

    @app.task(name="proj.resize")
    async def resize(size: int) -> int:
        return size

    with pytest.raises(ConfigurationError, match=r"not int$"):
        await resize.delay(1)
    assert await queues_of(app, "default") == {"default": []}
