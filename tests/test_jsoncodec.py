"""The JSON codec: the msgpack codec's values, tagged; nothing else, and no tag forged by data."""

from __future__ import annotations

import datetime as dt
import decimal
import threading
import uuid
from collections import OrderedDict
from typing import Any

import pytest

from aqueue import App, SerializationError, Worker, codec, jsoncodec
from aqueue.formats import format_of, unpack_any
from aqueue.message import Envelope, InvalidMessage
from aqueue.result_meta import ResultMeta

VALUES: list[Any] = [
    None,
    True,
    -(2**63),
    2**64 - 1,
    1.5,
    "héllo",
    b"\x00\xffbytes",
    [1, [2, [3]]],
    {"a": {"b": [1, 2]}},
    {1: "int key", (1, 2): "tuple key", None: "none key"},
    {"__aqueue__": "forged", "v": 1},
    dt.datetime(2026, 12, 6, 2, 0, tzinfo=dt.UTC),
    dt.datetime(2026, 12, 6, 2, 0),
    dt.date(2026, 12, 6),
    dt.time(3, 50, 1, 5),
    dt.timedelta(days=-1, seconds=5, microseconds=7),
    uuid.UUID("12345678-1234-5678-1234-567812345678"),
    decimal.Decimal("3.14159265358979323846"),
    (1, (2, 3), ()),
    {1, 2, 3},
    frozenset({"a"}),
    [{"t": (dt.date(2020, 1, 1), {b"x"})}],
]


@pytest.mark.parametrize("value", VALUES, ids=repr)
def test_round_trip_matches_msgpack(value: Any) -> None:
    data = jsoncodec.pack(value)
    assert jsoncodec.unpack(data) == value
    assert type(jsoncodec.unpack(data)) is type(value)
    assert jsoncodec.unpack(data) == codec.unpack(codec.pack(value))


def test_subclasses_of_plain_types_go_as_the_base_type() -> None:
    assert jsoncodec.unpack(jsoncodec.pack(OrderedDict(a=1))) == {"a": 1}


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ([object()], "value[0] is a builtins.object, which aqueue cannot send"),
        ({"k": 2**64}, "value['k'] cannot be encoded: integer out of range"),
        (complex(1, 2), "value is a builtins.complex, which aqueue cannot send"),
    ],
)
def test_refuses_what_msgpack_refuses(value: Any, message: str) -> None:
    with pytest.raises(SerializationError, match="^" + message.replace("[", r"\[")):
        jsoncodec.pack(value)
    with pytest.raises(SerializationError):
        codec.pack(value)


def test_tuples_nest_no_deeper_than_msgpack_allows() -> None:
    value: Any = ()
    for _ in range(codec.MAX_DEPTH - 1):  # MAX_DEPTH levels, as msgpack allows
        value = (value,)
    assert jsoncodec.unpack(jsoncodec.pack(value)) == value
    codec.pack(value)
    with pytest.raises(SerializationError, match="nests tuples"):
        jsoncodec.pack((value,))
    with pytest.raises(SerializationError, match="nests tuples"):
        codec.pack((value,))


@pytest.mark.parametrize(
    "data",
    [
        b'{"__aqueue__": "os.system", "v": "x"}',
        b'{"__aqueue__": "bytes", "v": "not base64!"}',
        b'{"__aqueue__": "datetime", "v": 5}',
        b'{"__aqueue__": "tuple", "v": 1, "extra": 2}',
        b'{"__aqueue__": "dict", "v": [[[1], 2]]}',
        b'{"__aqueue__": "timedelta", "v": [1, 2]}',
        b"\xff\xfe",
        b"{",
        b"[" * 100_000 + b"]" * 100_000,
    ],
)
def test_bad_input_is_a_value_error(data: bytes) -> None:
    with pytest.raises(ValueError, match=r"undecodable json|unknown or malformed|bad "):
        jsoncodec.unpack(data)


def test_deep_input_is_refused_in_a_small_thread() -> None:
    outcome: list[BaseException] = []

    def decode() -> None:
        try:
            jsoncodec.unpack(b"[" * 300 + b"]" * 300)
        except ValueError as exc:
            outcome.append(exc)

    threading.stack_size(512 * 1024)
    try:
        thread = threading.Thread(target=decode)
        thread.start()
        thread.join()
    finally:
        threading.stack_size(0)
    assert len(outcome) == 1


def test_envelopes_and_results_in_either_format() -> None:
    envelope = Envelope(id="i", task="t", args=[(1, 2)], kwargs={"when": dt.date(2026, 1, 1)})
    body = envelope.encode(1 << 20, jsoncodec.pack)
    assert format_of(body) == "json"
    assert Envelope.decode(body) == envelope
    assert Envelope.decode(envelope.encode(1 << 20)) == envelope
    with pytest.raises(InvalidMessage, match="json, which accept_content does not list"):
        Envelope.decode(body, ("msgpack",))
    with pytest.raises(InvalidMessage, match="msgpack, which accept_content does not list"):
        Envelope.decode(envelope.encode(1 << 20), ("json",))
    meta = ResultMeta(task="t", result={"x": {1, 2}}, retries=1)
    assert ResultMeta.decode(meta.encode(jsoncodec.pack)) == meta
    assert unpack_any(meta.encode()) == unpack_any(meta.encode(jsoncodec.pack))


async def test_a_json_app_end_to_end_and_a_worker_that_does_not_accept_it() -> None:
    app = App("json", broker="memory://", set_as_current=False, task_serializer="json")
    app.conf.result_serializer = "json"

    @app.task
    async def echo(value: Any) -> Any:
        return value

    value = {"when": dt.date(2026, 12, 6), "pair": (1, b"\x00"), 7: {frozenset({1})}}
    async with app:
        result = await echo.delay(value)
        await Worker(app, burst=True).run()
        assert await result.get(timeout=5) == value
        stored = await (await app.result_backend()).fetch(result.id)  # type: ignore[union-attr]
        assert stored is not None
        assert stored.payload[:1] == b"{"  # the result is JSON too

        refused = await echo.delay(1)
        app.conf.update(task_serializer="msgpack", accept_content=["msgpack"])
        worker = Worker(app, burst=True)
        await worker.run()
        assert worker.runner is not None
        assert worker.runner.refused == 1  # dead-lettered as undecodable, not run
        assert not await refused.ready()
