"""The value codec: what round-trips exactly, what goes as its base type, what is refused."""

from __future__ import annotations

import collections
import datetime as dt
import decimal
import enum
import math
import subprocess
import sys
import uuid
from collections.abc import Callable
from typing import Any

import msgpack
import pytest

from aqueue import SerializationError
from aqueue.codec import ALLOWED_TYPES, MAX_DEPTH, find_unpackable, pack, unpack

UTC = dt.UTC
PLUS_0530 = dt.timezone(dt.timedelta(hours=5, minutes=30))
MINUS_0345 = dt.timezone(dt.timedelta(hours=-3, minutes=-45))


def roundtrip(value: object) -> Any:
    return unpack(pack(value))


class Colour(enum.IntEnum):
    RED = 1
    GREEN = 2


class Mood(str, enum.Enum):  # noqa: UP042 - str() of a member is "Mood.HAPPY"
    HAPPY = "happy"


class Level(enum.StrEnum):
    HIGH = "high"


class Opaque:
    pass


def a_function() -> None:
    pass


# -- exact round trips ------------------------------------------------------------------------

SCALARS: list[object] = [
    None,
    True,
    False,
    0,
    -1,
    2**64 - 1,
    -(2**63),
    1.5,
    -0.0,
    math.inf,
    "",
    "héllo ✓",
    b"",
    b"\x00\xffbytes",
    [],
    {},
]


@pytest.mark.parametrize("value", SCALARS, ids=repr)
def test_msgpack_native_values_round_trip(value: object) -> None:
    back = roundtrip(value)
    assert back == value
    assert type(back) is type(value)


def test_negative_zero_keeps_its_sign() -> None:
    assert math.copysign(1.0, roundtrip(-0.0)) == -1.0


def test_nan_float_round_trips() -> None:
    assert math.isnan(roundtrip(math.nan))


EXTENSIONS = [
    dt.datetime(2024, 2, 29, 13, 14, 15, 123456),
    dt.datetime(2024, 2, 29, 13, 14, 15, 123456, tzinfo=UTC),
    dt.datetime(1999, 12, 31, 23, 59, 59, tzinfo=PLUS_0530),
    dt.datetime(2030, 6, 1, 0, 0, tzinfo=MINUS_0345),
    dt.datetime(2024, 1, 1, tzinfo=dt.timezone(dt.timedelta(seconds=3661))),
    dt.datetime.min,
    dt.datetime.max,
    dt.date(2024, 2, 29),
    dt.date.min,
    dt.time(0, 0),
    dt.time(23, 59, 59, 999999),
    dt.time(12, 30, tzinfo=PLUS_0530),
    dt.timedelta(0),
    dt.timedelta(days=3, seconds=7, microseconds=11),
    dt.timedelta(seconds=-1),
    dt.timedelta(days=-5, microseconds=-3),
    dt.timedelta.max,
    dt.timedelta.min,
    uuid.UUID("12345678-1234-5678-1234-567812345678"),
    uuid.UUID(int=0),
    decimal.Decimal("0"),
    decimal.Decimal("-0"),
    decimal.Decimal("3.14159"),
    decimal.Decimal("1." + "0" * 60 + "1"),
    decimal.Decimal("123456789012345678901234567890.123456789012345678901234567890"),
    decimal.Decimal("1E+1000"),
    decimal.Decimal("-1.50E-7"),
    decimal.Decimal("Infinity"),
    decimal.Decimal("-Infinity"),
    (),
    (1, "two", 3.0),
    set(),
    {1, 2, 3},
    frozenset(),
    frozenset({"a", "b"}),
]


@pytest.mark.parametrize("value", EXTENSIONS, ids=repr)
def test_extension_types_round_trip_exactly(value: object) -> None:
    back = roundtrip(value)
    assert back == value
    assert type(back) is type(value)
    # str() shows what == can hide: Decimal precision and exponent, trailing zeros.
    if not isinstance(value, set | frozenset):  # whose order varies with the hash seed
        assert str(back) == str(value)


@pytest.mark.parametrize(
    "value",
    [
        dt.datetime(1999, 12, 31, 23, 59, 59, tzinfo=PLUS_0530),
        dt.datetime(2030, 6, 1, 0, 0, tzinfo=MINUS_0345),
        dt.time(12, 30, tzinfo=PLUS_0530),
    ],
    ids=repr,
)
def test_aware_values_keep_their_offset_not_just_the_instant(value: dt.datetime | dt.time) -> None:
    back = roundtrip(value)
    assert back.utcoffset() == value.utcoffset()
    assert back.tzinfo == value.tzinfo


def test_naive_datetime_stays_naive() -> None:
    back = roundtrip(dt.datetime(2024, 5, 6, 7, 8, 9))
    assert back.tzinfo is None
    assert back == dt.datetime(2024, 5, 6, 7, 8, 9)


def test_datetime_is_not_decoded_as_a_date() -> None:
    # datetime subclasses date: the encoder must test datetime first.
    assert type(roundtrip(dt.datetime(2024, 1, 2, 3, 4))) is dt.datetime
    assert type(roundtrip(dt.date(2024, 1, 2))) is dt.date


@pytest.mark.parametrize("text", ["NaN", "-NaN", "sNaN", "NaN123"])
def test_decimal_nans_round_trip(text: str) -> None:
    value = decimal.Decimal(text)
    back = roundtrip(value)
    assert isinstance(back, decimal.Decimal)
    assert back.is_nan()
    assert back.is_snan() == value.is_snan()
    assert str(back) == str(value)


def test_values_nested_in_lists_dicts_and_tuples_round_trip() -> None:
    value = {
        "when": [dt.date(2024, 1, 1), (dt.time(1, 2), {dt.timedelta(seconds=-3)})],
        "ids": (uuid.UUID(int=7), [decimal.Decimal("1.10"), frozenset({(1, 2), (3,)})]),
        "deep": [[[(b"x", {"k": {1, 2}})]]],
        1: "int key",
        -5: {2: "nested int key"},
        (1, "a"): "tuple key",
    }
    back = roundtrip(value)
    assert back == value
    assert type(back["when"][1]) is tuple
    assert type(back["when"][1][1]) is set
    assert type(back["ids"][1][1]) is frozenset
    assert type(back["deep"][0][0][0]) is tuple
    assert list(back) == [*value]  # key order kept


def test_int_dict_keys_stay_ints() -> None:
    back = roundtrip({1: "a", 2**40: "b", -3: "c"})
    assert back == {1: "a", 2**40: "b", -3: "c"}
    assert all(type(key) is int for key in back)


def test_bool_is_not_confused_with_int() -> None:
    back = roundtrip([True, 1, False, 0])
    assert [type(item) for item in back] == [bool, int, bool, int]


# -- subclasses go as their base type ---------------------------------------------------------


def test_ordered_dict_goes_as_a_dict_keeping_order() -> None:
    value = collections.OrderedDict([("b", 1), ("a", collections.OrderedDict(z=2))])
    back = roundtrip(value)
    assert type(back) is dict
    assert type(back["a"]) is dict
    assert list(back.items()) == [("b", 1), ("a", {"z": 2})]


def test_defaultdict_and_list_subclasses_go_as_their_base_type() -> None:
    class Items(list[int]):
        pass

    counts = collections.defaultdict(int, {"x": 3})
    back = roundtrip({"counts": counts, "items": Items([1, 2])})
    assert back == {"counts": {"x": 3}, "items": [1, 2]}
    assert type(back["counts"]) is dict
    assert type(back["items"]) is list


def test_int_enum_goes_as_its_int_value() -> None:
    back = roundtrip([Colour.GREEN, {Colour.RED: "key"}])
    assert back == [2, {1: "key"}]
    assert type(back[0]) is int
    assert [type(key) for key in back[1]] == [int]


def test_str_enum_goes_as_its_value_not_its_name() -> None:
    back = roundtrip([Mood.HAPPY, Level.HIGH, {Mood.HAPPY: Level.HIGH}])
    assert back == ["happy", "high", {"happy": "high"}]
    assert [type(item) for item in back[:2]] == [str, str]


def test_str_subclass_with_its_own_str_goes_as_its_contents() -> None:
    class Secret(str):
        def __str__(self) -> str:
            return "***"

    back = roundtrip(Secret("hunter2"))
    assert back == "hunter2"
    assert type(back) is str


def test_float_and_bytes_subclasses_go_as_their_base_type() -> None:
    class Metres(float):
        pass

    class Blob(bytes):
        pass

    back = roundtrip([Metres(2.5), Blob(b"ab")])
    assert back == [2.5, b"ab"]
    assert [type(item) for item in back] == [float, bytes]


# -- refused values ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "type_name"),
    [
        (object(), "builtins.object"),
        (Opaque(), f"{__name__}.Opaque"),
        (a_function, "builtins.function"),
        (1 + 2j, "builtins.complex"),
        (Opaque, "builtins.type"),
        (range(3), "builtins.range"),
    ],
    ids=["object", "custom-class", "function", "complex", "a-class", "range"],
)
def test_refused_types_name_the_path_and_the_type(value: object, type_name: str) -> None:
    payload = {"when": [1, 2, value]}
    with pytest.raises(SerializationError) as info:
        pack(payload, where="kwargs")
    assert str(info.value) == (
        f"kwargs['when'][2] is a {type_name}, which aqueue cannot send; "
        f"convert it to one of: {ALLOWED_TYPES}"
    )
    assert isinstance(info.value, TypeError)


def test_refused_value_at_the_top_level_names_where() -> None:
    with pytest.raises(SerializationError, match=r"^result is a builtins\.object, "):
        pack(object(), where="result")


def test_default_where_is_value() -> None:
    with pytest.raises(SerializationError, match=r"^value\[0\] is a builtins\.complex, "):
        pack([1j])


@pytest.mark.parametrize(
    ("value", "path"),
    [
        ((1, (2, Opaque())), "args[1][1]"),
        ({"a": {"b": {Opaque()}}}, "args['a']['b'][0]"),
        ([frozenset({1j})], "args[0][0]"),
        ({"k": [dt.date(2024, 1, 1), {"z": object()}]}, "args['k'][1]['z']"),
        ([collections.OrderedDict(x=[Opaque()])], "args[0]['x'][0]"),
    ],
)
def test_path_points_inside_extension_containers(value: object, path: str) -> None:
    with pytest.raises(SerializationError) as info:
        pack(value, where="args")
    assert str(info.value).startswith(f"{path} is a ")


def test_refused_dict_key_is_named_as_a_key() -> None:
    key = Opaque()
    with pytest.raises(SerializationError) as info:
        pack({"fine": 1, key: 2}, where="kwargs")
    assert str(info.value).startswith(f"kwargs key {key!r} is a {__name__}.Opaque, ")


def test_find_unpackable_returns_none_for_a_packable_value() -> None:
    assert find_unpackable({"a": [1, (2, {3})], 4: dt.date(2024, 1, 1)}, "x") is None
    assert find_unpackable([1, {"b": object()}], "x") == "x[1]['b']"


@pytest.mark.parametrize("number", [2**70, 2**64, -(2**63) - 1, -(2**100)])
def test_ints_outside_64_bits_are_a_serialization_error_naming_the_path(number: int) -> None:
    with pytest.raises(SerializationError) as info:
        pack({"n": [0, (number,)]}, where="kwargs")
    assert str(info.value) == "kwargs['n'][1][0] cannot be encoded: Integer value out of range"


def test_huge_int_at_the_top_level() -> None:
    with pytest.raises(SerializationError, match=r"^value cannot be encoded: "):
        pack(2**70)


def test_a_list_containing_itself_is_a_serialization_error() -> None:
    cycle: list[object] = [1]
    cycle.append(cycle)
    with pytest.raises(SerializationError) as info:
        pack(cycle, where="args")
    assert str(info.value) == "args cannot be encoded: recursion limit exceeded."


def test_a_cycle_through_a_tuple_is_a_serialization_error() -> None:
    cycle: dict[str, object] = {}
    cycle["self"] = (cycle,)
    with pytest.raises(SerializationError, match=r"^kwargs nests tuples.*contains itself"):
        pack(cycle, where="kwargs")


# -- decoding refuses what pack did not make --------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\xc1",  # a byte msgpack never uses
        b"\x92\x01",  # an array of 2 with only one element
        b"\x81\xa1a",  # a map missing its value
        msgpack.packb([1, 2]) + b"\x00",  # trailing data
        b"\xff" * 3,
    ],
    ids=repr,
)
def test_corrupt_bytes_raise_value_error(data: bytes) -> None:
    with pytest.raises(ValueError, match=r"\S"):
        unpack(data)


@pytest.mark.parametrize("code", [0, 10, 42, 127])
def test_unknown_extension_code_is_a_value_error(code: int) -> None:
    data = msgpack.packb([1, msgpack.ExtType(code, b"payload")])
    with pytest.raises(ValueError, match=rf"^unknown msgpack extension type {code}$"):
        unpack(data)


@pytest.mark.parametrize(
    ("code", "payload"),
    [
        (1, b"not a date"),  # datetime
        (2, b"\xff\xfe"),  # date, not even UTF-8
        (3, b"25:99"),  # time
        (4, msgpack.packb(7)),  # timedelta, not a list
        (5, b"short"),  # UUID, not 16 bytes
        (6, b"1.2.3"),  # Decimal
        (7, b"\xc1"),  # tuple of corrupt msgpack
        (8, msgpack.packb([[1]])),  # a set of lists: unhashable
    ],
)
def test_corrupt_extension_payloads_are_value_errors(code: int, payload: bytes) -> None:
    with pytest.raises(ValueError, match=r"\S"):
        unpack(msgpack.packb(msgpack.ExtType(code, payload)))


def test_corrupt_decimal_says_undecodable() -> None:
    with pytest.raises(ValueError, match=r"^undecodable msgpack: "):
        unpack(msgpack.packb(msgpack.ExtType(6, b"1.2.3")))


def test_unhashable_map_key_is_a_value_error() -> None:
    # A map whose key is an array: not something pack makes, and not a valid Python dict.
    data = b"\x81\x91\x01\x02"
    with pytest.raises(ValueError, match=r"^undecodable msgpack: "):
        unpack(data)


def test_a_byte_msgpack_never_uses_still_gets_a_message() -> None:
    # msgpack's own FormatError has an empty message.
    with pytest.raises(ValueError, match=r"^undecodable msgpack: FormatError$"):
        unpack(b"\xc1")


# -- nesting depth: the C decoder recurses once per extension payload -------------------------

_DEEP_PROBE = """
import functools, msgpack, sys
from aqueue import codec
from aqueue.exceptions import SerializationError

try:
    codec.unpack(codec.pack(functools.reduce(lambda a, _: (a,), range(200), 1)))
except SerializationError as exc:
    print("pack:", exc)
for code in (4, 7, 8, 9):  # timedelta, tuple, set, frozenset: payloads that are msgpack
    raw = msgpack.packb(1)
    for _ in range(200):
        raw = msgpack.packb(msgpack.ExtType(code, b"\\x91" + raw))  # an array of one
    try:
        codec.unpack(raw)
    except ValueError as exc:
        print(f"unpack {code}:", exc)
"""


def test_a_tuple_nested_200_deep_is_a_clean_error_not_a_segfault() -> None:
    # Before MAX_DEPTH this died with SIGSEGV (exit 139) in msgpack's C decoder.
    done = subprocess.run(
        [sys.executable, "-c", _DEEP_PROBE], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, (done.returncode, done.stderr[-2000:])
    lines = done.stdout.splitlines()
    assert lines[0] == f"pack: value {_TOO_DEEP_TEXT}"
    assert lines[1:] == [
        f"unpack {code}: undecodable msgpack: extension types nested over {MAX_DEPTH} deep"
        for code in (4, 7, 8, 9)
    ]


_TOO_DEEP_TEXT = (
    "nests tuples, sets, frozensets or timedeltas more than 32 deep "
    "(aqueue's limit; or it contains itself): flatten it, or use lists"
)


def nested(depth: int, wrap: Callable[[object], object] = lambda inner: (inner,)) -> object:
    value: object = 1
    for _ in range(depth):
        value = wrap(value)
    return value


@pytest.mark.parametrize(
    "wrap",
    [
        lambda inner: (inner,),
        lambda inner: frozenset({inner}),
        lambda inner: {"k": (inner,)},
        lambda inner: {"k": [(inner, 2)]},
    ],
    ids=["tuple", "frozenset", "tuple-in-dict", "tuple-in-list-in-dict"],
)
def test_extension_types_nest_up_to_max_depth_and_no_deeper(
    wrap: Callable[[object], object],
) -> None:
    assert MAX_DEPTH == 32
    fine = nested(MAX_DEPTH, wrap)
    assert roundtrip(fine) == fine
    with pytest.raises(SerializationError) as info:
        pack([nested(MAX_DEPTH + 1, wrap)], where="args")
    assert str(info.value) == f"args {_TOO_DEEP_TEXT}"


def test_a_timedelta_counts_as_one_level() -> None:
    fine = nested(MAX_DEPTH - 1, lambda inner: (inner,))
    assert roundtrip((fine, dt.timedelta(1))) == (fine, dt.timedelta(1))
    with pytest.raises(SerializationError, match="more than 32 deep"):
        pack((nested(MAX_DEPTH, lambda inner: (inner,)), dt.timedelta(1)))


def test_deep_lists_inside_each_extension_level_stay_fine() -> None:
    # Lists do not count: msgpack nests them in one call; 30 tuples of 500 lists each.
    value: object = 1
    for _ in range(30):
        for _ in range(500):
            value = [value]
        value = (value,)
    data = pack(value)
    assert pack(unpack(data)) == data  # == on the values themselves hits Python's recursion limit


def raw_nesting(depth: int, code: int = 7) -> bytes:
    """Bytes of `depth` extensions (tuple by default) nested, as an attacker writes them."""
    data = msgpack.packb(1)
    for _ in range(depth):
        data = msgpack.packb(msgpack.ExtType(code, b"\x91" + data))
    return data


@pytest.mark.parametrize("code", [7, 9])
def test_the_decoder_refuses_input_one_level_past_the_limit(code: int) -> None:
    unpack(raw_nesting(MAX_DEPTH, code))
    with pytest.raises(ValueError, match=r"^undecodable msgpack: extension types nested over 32"):
        unpack(raw_nesting(MAX_DEPTH + 1, code))


_SMALL_STACK_PROBE = """
import threading
from aqueue import codec

value = 1
for level in range(codec.MAX_DEPTH):
    value = (value,) if level % 2 else frozenset({value})
data = codec.pack(value)
out = []

def decode():
    out.append(codec.unpack(data) == value)

threading.stack_size(512 * 1024)
thread = threading.Thread(target=decode)
thread.start()
thread.join()
print(out)
"""


def test_max_depth_decodes_in_a_thread_with_a_small_stack() -> None:
    # msgpack.unpackb keeps ~45 KB of state on the C stack per level: 32 levels of it
    # overflowed a 1 MB thread stack. Past the first levels the state is on the heap.
    done = subprocess.run(
        [sys.executable, "-c", _SMALL_STACK_PROBE], capture_output=True, text=True, timeout=60
    )
    assert (done.returncode, done.stdout.strip()) == (0, "[True]"), done.stderr[-2000:]


def test_trailing_bytes_in_a_deep_payload_are_refused() -> None:
    data = msgpack.packb(1)
    for level in range(6):  # the deeper levels are decoded on the heap
        extra = b"\x00" if level == 0 else b""
        data = msgpack.packb(msgpack.ExtType(7, b"\x91" + data + extra))
    with pytest.raises(ValueError, match=r"^undecodable msgpack: extra data after an extension"):
        unpack(data)
    inner = msgpack.packb(1)
    for level in range(6):
        inner = msgpack.packb(
            msgpack.ExtType(7, b"\x92" + inner if level == 0 else b"\x91" + inner)
        )
    with pytest.raises(ValueError, match=r"\S"):  # an array of 2 holding 1 value, deep down
        unpack(inner)


def test_each_thread_packs_on_a_packer_of_its_own_and_a_failure_leaves_it_empty() -> None:
    # `pack` keeps one msgpack packer per thread (not one per call): what a failed pack
    # left in its buffer must not reach the next value, nor one thread's value another's.
    import threading

    from aqueue import codec

    value = {"id": "x" * 36, "args": [1, dt.date(2024, 1, 2)], "kwargs": {"k": [None, 1.5]}}
    expected = pack(value)
    with pytest.raises(SerializationError):
        pack({"a": [1, object()]})
    with pytest.raises(SerializationError):
        pack({"a": 2**70})
    assert pack(value) == expected
    assert unpack(expected) == value
    taken = codec._packers.packer
    codec._packers.packer = None  # as if a pack were under way (a signal handler's call)
    assert pack(value) == expected
    codec._packers.packer = taken
    big = pack(b"x" * (codec._KEEP_BYTES + 1))  # a packer whose buffer grew is not kept
    assert codec._packers.packer is None
    assert unpack(big) == b"x" * (codec._KEEP_BYTES + 1)
    barrier = threading.Barrier(4)
    outcomes: list[bool] = []

    def packs(index: int) -> None:
        mine = {"thread": index, "payload": list(range(index * 50))}
        barrier.wait()
        outcomes.append(all(unpack(pack(mine)) == mine for _ in range(2000)))

    threads = [threading.Thread(target=packs, args=(index,)) for index in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert outcomes == [True] * 4
