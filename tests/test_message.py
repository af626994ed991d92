"""The message envelope: encoding, its limits, and what decoding refuses."""

from __future__ import annotations

import dataclasses
import datetime as dt
import decimal
import os
import threading
import uuid
import warnings
from typing import Any

import msgpack
import pytest

from aqueue import MessageTooLarge, SerializationError
from aqueue.codec import pack
from aqueue.message import (
    ID_BATCH,
    VERSION,
    Envelope,
    InvalidMessage,
    _check_types,
    _well_typed,
    encode_body,
    new_id,
)

BIG = 1 << 20


def body_of(**fields: Any) -> bytes:
    """A body as a producer would make it, with some fields replaced or (as ...) removed."""
    data: dict[str, Any] = {
        "v": VERSION,
        "id": "abc",
        "task": "proj.add",
        "args": [1, 2],
        "kwargs": {},
        "eta": None,
        "expires": None,
        "retries": 0,
        "headers": {},
    }
    for key, value in fields.items():
        if value is ...:
            del data[key]
        else:
            data[key] = value
    return pack(data)


def test_round_trip_keeps_every_field() -> None:
    envelope = Envelope(
        id=str(uuid.UUID(int=1)),
        task="proj.tasks.add",
        args=[1, "two", (3, 4), {5}],
        kwargs={"when": dt.datetime(2024, 1, 2, tzinfo=dt.UTC), "d": decimal.Decimal("1.5")},
        eta=1700000000.25,
        expires=1700000100.5,
        retries=3,
        headers={"trace": "x-1", "n": 7},
    )
    back = Envelope.decode(envelope.encode(BIG))
    assert back.id == envelope.id
    assert back.task == "proj.tasks.add"
    assert list(back.args) == [1, "two", (3, 4), {5}]
    assert back.kwargs == envelope.kwargs
    assert back.eta == 1700000000.25
    assert back.expires == 1700000100.5
    assert back.retries == 3
    assert back.headers == {"trace": "x-1", "n": 7}


def test_a_decoded_envelope_is_one_built_by_its_constructor() -> None:
    """`decode` fills the slots itself: the outcome must not differ from `Envelope(...)`."""
    made = Envelope("i", "t", [1], {"k": 2}, 1.5, 2.5, 3, {"h": 4})
    back = Envelope.decode(made.encode(BIG))
    assert back == made
    assert repr(back) == repr(made)
    assert type(back) is Envelope
    with pytest.raises(dataclasses.FrozenInstanceError):
        back.retries = 4  # type: ignore[misc]


def test_round_trip_of_defaults() -> None:
    back = Envelope.decode(Envelope(id="i", task="t").encode(BIG))
    assert back == Envelope(id="i", task="t", args=[], kwargs={}, headers={})
    assert back.eta is None
    assert back.expires is None
    assert back.retries == 0


def test_body_is_a_versioned_msgpack_map() -> None:
    body = Envelope(id="i", task="t", args=(1,), kwargs={"k": "v"}).encode(BIG)
    assert msgpack.unpackb(body) == {
        "v": 1,
        "id": "i",
        "task": "t",
        "args": [1],
        "kwargs": {"k": "v"},
        "eta": None,
        "expires": None,
        "retries": 0,
        "headers": {},
    }


def test_body_over_max_bytes_is_message_too_large_saying_the_size() -> None:
    envelope = Envelope(id="i", task="proj.upload", args=[b"x" * 5000])
    size = len(envelope.encode(BIG))
    with pytest.raises(MessageTooLarge) as info:
        envelope.encode(size - 1)
    message = str(info.value)
    assert f"task proj.upload message is {size:,} bytes" in message
    assert f"over message_max_bytes ({size - 1:,})" in message
    assert isinstance(info.value, SerializationError)
    assert isinstance(info.value, ValueError)


def test_body_of_exactly_max_bytes_is_fine() -> None:
    envelope = Envelope(id="i", task="t", args=["y" * 100])
    size = len(envelope.encode(BIG))
    assert Envelope.decode(envelope.encode(size)).args == ["y" * 100]


def test_non_serialisable_positional_argument_is_named() -> None:
    with pytest.raises(SerializationError) as info:
        Envelope(id="i", task="t", args=[1, object()]).encode(BIG)
    assert str(info.value).startswith("args[1] is a builtins.object, which aqueue cannot send")


def test_non_serialisable_keyword_argument_is_named() -> None:
    with pytest.raises(SerializationError) as info:
        Envelope(id="i", task="t", args=[1], kwargs={"ok": 1, "x": 2j}).encode(BIG)
    assert str(info.value).startswith("kwargs['x'] is a builtins.complex, ")


def test_non_serialisable_value_deep_in_an_argument_is_named() -> None:
    with pytest.raises(SerializationError) as info:
        Envelope(id="i", task="t", kwargs={"when": [1, 2, {3: object()}]}).encode(BIG)
    assert str(info.value).startswith("kwargs['when'][2][3] is a builtins.object, ")


def test_huge_int_argument_is_named() -> None:
    with pytest.raises(SerializationError) as info:
        Envelope(id="i", task="t", args=[0, 2**70]).encode(BIG)
    assert str(info.value) == "args[1] cannot be encoded: Integer value out of range"


def test_non_serialisable_header_names_the_header() -> None:
    with pytest.raises(SerializationError) as info:
        Envelope(id="i", task="t", headers={"h": object()}).encode(BIG)
    assert str(info.value).startswith("message['headers']['h'] is a builtins.object, ")


# -- decode refuses ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"", r"^Unpack failed: incomplete input$"),
        (b"\xc1", r"^undecodable msgpack: FormatError$"),
        (b"\x81\xa1a", r"^Unpack failed: incomplete input$"),
        (b"garbage!", r"\S"),
    ],
    ids=["empty", "bad-byte", "truncated", "text"],
)
def test_decode_refuses_garbage_bytes(body: bytes, message: str) -> None:
    with pytest.raises(InvalidMessage, match=message):
        Envelope.decode(body)


@pytest.mark.parametrize(
    ("value", "kind"),
    [([1, 2], "list"), ("text", "str"), (7, "int"), (None, "NoneType"), ((1,), "tuple")],
)
def test_decode_refuses_a_body_that_is_not_a_map(value: object, kind: str) -> None:
    with pytest.raises(InvalidMessage) as info:
        Envelope.decode(pack(value))
    assert str(info.value) == f"body is a msgpack {kind}, not a map"


@pytest.mark.parametrize("version", [2, 0, "1", 1.5, None, True, ...], ids=repr)
def test_decode_refuses_an_unknown_version(version: object) -> None:
    with pytest.raises(InvalidMessage) as info:
        Envelope.decode(body_of(v=version))
    shown = None if version is ... else version
    assert str(info.value) == (
        f"unsupported envelope version {shown!r} (this aqueue reads version {VERSION})"
    )


@pytest.mark.parametrize("field", ["id", "task"])
def test_decode_refuses_a_missing_id_or_task(field: str) -> None:
    with pytest.raises(InvalidMessage) as info:
        Envelope.decode(body_of(**{field: ...}))
    assert str(info.value) == f"envelope has no {field!r} field"


def test_decode_fills_in_optional_fields() -> None:
    body = body_of(args=..., kwargs=..., eta=..., expires=..., retries=..., headers=...)
    assert Envelope.decode(body) == Envelope(
        id="abc", task="proj.add", args=[], kwargs={}, headers={}
    )


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("id", 5, "envelope field 'id' is a int, not a str"),
        ("id", b"abc", "envelope field 'id' is a bytes, not a str"),
        ("task", ["proj.add"], "envelope field 'task' is a list, not a str"),
        ("args", {"a": 1}, "envelope field 'args' is a dict, not a list"),
        ("args", "12", "envelope field 'args' is a str, not a list"),
        ("kwargs", [1], "envelope field 'kwargs' is a list, not a map"),
        ("eta", "soon", "envelope field 'eta' is a str, not a number or nil"),
        ("eta", True, "envelope field 'eta' is a bool, not a number or nil"),
        ("expires", [1], "envelope field 'expires' is a list, not a number or nil"),
        ("retries", 1.5, "envelope field 'retries' is a float, not an int"),
        ("retries", True, "envelope field 'retries' is a bool, not an int"),
        ("headers", ["h"], "envelope field 'headers' is a list, not a map"),
    ],
)
def test_decode_refuses_wrong_field_types_naming_the_field(
    field: str, value: object, message: str
) -> None:
    with pytest.raises(InvalidMessage) as info:
        Envelope.decode(body_of(**{field: value}))
    assert str(info.value) == message


def test_decode_refuses_non_string_kwargs_keys() -> None:
    with pytest.raises(InvalidMessage) as info:
        Envelope.decode(body_of(kwargs={"ok": 1, 3: "x"}))
    assert str(info.value) == "envelope kwargs key 3 is not a str"


def test_decode_accepts_int_timestamps_and_tuple_args() -> None:
    envelope = Envelope.decode(body_of(eta=1700000000, expires=1700000001, args=(1, 2)))
    assert envelope.eta == 1700000000
    assert envelope.expires == 1700000001
    assert tuple(envelope.args) == (1, 2)


def test_invalid_message_is_a_value_error() -> None:
    assert issubclass(InvalidMessage, ValueError)


FIELD_VALUES: list[object] = [None, True, 0, 1.5, "s", b"b", [], [1], (1,), {}, {"k": 1}, {1: 2}]


@pytest.mark.parametrize("index", range(8))
@pytest.mark.parametrize("value", FIELD_VALUES, ids=repr)
def test_the_fast_type_check_agrees_with_the_field_table(index: int, value: object) -> None:
    values: list[object] = ["abc", "proj.add", [1], {"x": 1}, None, 1.5, 0, {}]
    values[index] = value
    try:
        _check_types(tuple(values))
    except InvalidMessage:
        accepted = False
    else:
        accepted = True
    assert _well_typed(tuple(values)) is accepted


def test_new_ids_are_random_uuids_spelled_as_uuid4s_are() -> None:
    ids = [new_id() for _ in range(10_000)]
    assert len(set(ids)) == len(ids)
    for each in ids[:1000]:
        parsed = uuid.UUID(each)
        assert str(parsed) == each  # lowercase, 8-4-4-4-12
        assert parsed.version == 4
        assert parsed.variant == uuid.RFC_4122
    # Every variant digit comes up: the random bits reach it.
    assert {each[19] for each in ids} == set("89ab")


def test_encode_body_is_what_an_envelope_encodes() -> None:
    envelope = Envelope(
        id="i", task="t", args=(1, "x"), kwargs={"k": [2]}, eta=5.0, retries=2, headers={"h": 1}
    )
    body = encode_body("i", "t", [1, "x"], {"k": [2]}, 5.0, None, 2, {"h": 1}, BIG)
    assert body == envelope.encode(BIG)
    assert Envelope.decode(body) == Envelope(
        id="i", task="t", args=[1, "x"], kwargs={"k": [2]}, eta=5.0, retries=2, headers={"h": 1}
    )


def test_a_forked_child_makes_ids_of_its_own() -> None:
    new_id()  # the parent holds ids made and not handed out yet
    read, write = os.pipe()
    with warnings.catch_warnings():  # 3.12+ warns of forking with threads (pytest-timeout's)
        warnings.simplefilter("ignore", DeprecationWarning)
        child = os.fork()
    if child == 0:  # pragma: no cover (the child reports through the pipe)
        try:
            os.write(write, " ".join(new_id() for _ in range(ID_BATCH)).encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        theirs = set(pipe.read().split())
    os.waitpid(child, 0)
    ours = {new_id() for _ in range(ID_BATCH)}
    assert len(theirs) == ID_BATCH
    assert not ours & theirs  # without the reset, the child hands out the parent's next ids


def test_threads_never_get_the_same_id() -> None:
    got: list[list[str]] = [[] for _ in range(4)]

    def take(into: list[str]) -> None:
        into.extend(new_id() for _ in range(5000))

    threads = [threading.Thread(target=take, args=(into,)) for into in got]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    every = [each for into in got for each in into]
    assert len(set(every)) == len(every) == 20_000
