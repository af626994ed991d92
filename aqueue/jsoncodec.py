"""The JSON codec (`task_serializer = "json"`): the same values as the msgpack codec.

JSON's own types (None, bool, int, float, str, list, dict with str keys) travel as themselves;
every other type of the allow-list (`aqueue.codec.ALLOWED_TYPES`: bytes, datetime, date, time,
timedelta, UUID, Decimal, tuple, set, frozenset) and a dict with a non-str key travels as a
tagged object, `{"__aqueue__": TAG, "v": PAYLOAD}`. A dict of the caller's that has the key
`__aqueue__` itself is tagged too (as `dict`), so no data can pass for a tag. Nothing else is
accepted: no type is ever named by a message beyond these tags, and an unknown tag is an error.

Tuples, sets, frozensets and timedeltas nest at most `codec.MAX_DEPTH` deep inside one another,
as with msgpack; the JSON text nests at most `MAX_NESTING` arrays and objects deep (a tagged
value takes two levels), and the decoder refuses deeper input before it recurses. Integers are
those msgpack carries (64 bits), so a value that one codec takes the other takes too.
"""

from __future__ import annotations

import base64
import datetime as dt
import decimal
import json
import re
import uuid
from collections.abc import Callable
from typing import Any

from .codec import ALLOWED_TYPES, MAX_DEPTH
from .exceptions import SerializationError

__all__ = ["MAX_NESTING", "pack", "unpack"]

TAG = "__aqueue__"
#: How deep arrays and objects may nest in the JSON text.
MAX_NESTING = 256
_INT_MIN, _INT_MAX = -(2**63), 2**64 - 1
_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=True)
_DECODER = json.JSONDecoder(object_hook=lambda obj: _untag(obj))


class _Refused(Exception):
    def __init__(self, path: str, why: str) -> None:
        self.path, self.why = path, why


def pack(value: object, *, where: str = "value") -> bytes:
    """Encode `value` as UTF-8 JSON; raise `SerializationError` naming what cannot go."""
    try:
        plain = _plain(value, where, 0, 0)
    except _Refused as exc:
        raise SerializationError(f"{exc.path} {exc.why}") from None
    return _ENCODER.encode(plain).encode()


def unpack(data: bytes) -> Any:
    """Decode bytes made by `pack`; raise `ValueError` on anything else."""
    try:
        text = data.decode()
    except UnicodeDecodeError as exc:
        raise ValueError(f"undecodable json: {exc}") from None
    _check_nesting(text)
    try:
        return _DECODER.decode(text)
    except ValueError as exc:
        raise ValueError(f"undecodable json: {exc}") from None
    except (TypeError, KeyError, RecursionError) as exc:
        raise ValueError(f"undecodable json: {type(exc).__name__}: {exc}") from None


def _tagged(tag: str, payload: object) -> dict[str, object]:
    return {TAG: tag, "v": payload}


def _plain(value: object, path: str, nesting: int, depth: int) -> object:  # noqa: C901
    """Return `value` made of JSON's types, tagging the others."""
    kind = type(value)
    if value is None or kind is bool or kind is str or kind is float:
        return value
    if kind is int:
        if not _INT_MIN <= value <= _INT_MAX:  # type: ignore[operator]
            raise _Refused(path, "cannot be encoded: integer out of range (64 bits)")
        return value
    if nesting >= MAX_NESTING - 2:
        raise _Refused(path, f"nests lists and maps too deep for JSON ({MAX_NESTING} levels)")
    if isinstance(value, dict):
        return _plain_dict(value, path, nesting + 1, depth)
    if isinstance(value, list):
        return [_plain(item, f"{path}[{i}]", nesting + 1, depth) for i, item in enumerate(value)]
    if isinstance(value, tuple | set | frozenset | dt.timedelta):
        if depth >= MAX_DEPTH:
            raise _Refused(path, f"nests tuples, sets, frozensets or timedeltas over {MAX_DEPTH}")
        return _plain_nested(value, path, nesting + 2, depth + 1)
    scalar = _scalar(value)
    if scalar is not None:
        return scalar
    for base, copy in _BASES:  # subclasses of the plain types go as their base type
        if isinstance(value, base):
            return _plain(copy(value), path, nesting, depth)
    kind_name = f"{kind.__module__}.{kind.__qualname__}"
    raise _Refused(
        path, f"is a {kind_name}, which aqueue cannot send; convert it to one of: {ALLOWED_TYPES}"
    )


_BASES: tuple[tuple[type, Callable[[Any], object]], ...] = (
    (str, str.__str__),
    (int, int.__int__),
    (float, float.__float__),
    (bytes, bytes),
)


def _scalar(value: object) -> dict[str, object] | None:
    # Order matters: datetime is a subclass of date.
    if type(value) is bytes:
        return _tagged("bytes", base64.b64encode(value).decode())
    if isinstance(value, dt.datetime):
        return _tagged("datetime", value.isoformat())
    if isinstance(value, dt.date):
        return _tagged("date", value.isoformat())
    if isinstance(value, dt.time):
        return _tagged("time", value.isoformat())
    if isinstance(value, uuid.UUID):
        return _tagged("uuid", str(value))
    if isinstance(value, decimal.Decimal):
        return _tagged("decimal", str(value))
    return None


def _plain_dict(value: dict[Any, Any], path: str, nesting: int, depth: int) -> object:
    if TAG not in value and all(type(key) is str for key in value):
        return {
            key: _plain(item, f"{path}[{key!r}]", nesting, depth) for key, item in value.items()
        }
    pairs = [
        [
            _plain(key, f"{path} key {key!r}", nesting + 2, depth),
            _plain(item, f"{path}[{key!r}]", nesting + 2, depth),
        ]
        for key, item in value.items()
    ]
    return _tagged("dict", pairs)


def _plain_nested(value: object, path: str, nesting: int, depth: int) -> object:
    if isinstance(value, dt.timedelta):
        return _tagged("timedelta", [value.days, value.seconds, value.microseconds])
    tag = "tuple" if isinstance(value, tuple) else "set" if isinstance(value, set) else "frozenset"
    items = list(value)  # type: ignore[call-overload]
    plain = [_plain(item, f"{path}[{i}]", nesting, depth) for i, item in enumerate(items)]
    return _tagged(tag, plain)


def _pairs(payload: Any) -> dict[Any, Any]:
    if not isinstance(payload, list) or not all(
        isinstance(pair, list) and len(pair) == 2 for pair in payload
    ):
        raise ValueError("a tagged dict holds a list of [key, value] pairs")
    return {key: item for key, item in payload}


def _timedelta(payload: Any) -> dt.timedelta:
    if (
        not isinstance(payload, list)
        or len(payload) != 3
        or not all(type(part) is int for part in payload)
    ):
        raise ValueError("a tagged timedelta holds [days, seconds, microseconds]")
    return dt.timedelta(*payload)


def _text(build: Callable[[str], object]) -> Callable[[Any], object]:
    def decode(payload: Any) -> object:
        if not isinstance(payload, str):
            raise ValueError("a tagged scalar holds a string")
        return build(payload)

    return decode


def _items(build: Callable[[list[Any]], object]) -> Callable[[Any], object]:
    def decode(payload: Any) -> object:
        if not isinstance(payload, list):
            raise ValueError("a tagged collection holds a list")
        return build(payload)

    return decode


_UNTAG: dict[str, Callable[[Any], object]] = {
    "bytes": _text(lambda text: base64.b64decode(text, validate=True)),
    "datetime": _text(dt.datetime.fromisoformat),
    "date": _text(dt.date.fromisoformat),
    "time": _text(dt.time.fromisoformat),
    "uuid": _text(uuid.UUID),
    "decimal": _text(decimal.Decimal),
    "timedelta": _timedelta,
    "tuple": _items(tuple),
    "set": _items(set),
    "frozenset": _items(frozenset),
    "dict": _pairs,
}


def _untag(obj: dict[str, Any]) -> object:
    if TAG not in obj:
        return obj
    tag = obj[TAG]
    build = _UNTAG.get(tag) if isinstance(tag, str) else None
    if build is None or set(obj) != {TAG, "v"}:
        raise ValueError(f"unknown or malformed tagged value {tag!r}")
    try:
        return build(obj["v"])
    except (ValueError, TypeError, ArithmeticError, OverflowError) as exc:
        raise ValueError(f"bad {tag} value: {exc}") from None


def _check_nesting(text: str) -> None:
    """Refuse input nested deeper than the encoder makes, before the decoder recurses."""
    if text.count("[") + text.count("{") <= MAX_NESTING:
        return
    level = deepest = 0
    for char in _STRING.sub("", text):
        if char in "[{":
            level += 1
            deepest = max(deepest, level)
        elif char in "]}":
            level -= 1
    if deepest > MAX_NESTING:
        raise ValueError(f"undecodable json: nested over {MAX_NESTING} deep")


_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
