"""The value codec: msgpack plus an explicit allow-list of extension types.

Task arguments and results travel as msgpack. Beyond msgpack's own types (None, bool, int,
float, str, bytes, list, dict) these round-trip exactly, each as a msgpack extension type:

    datetime, date, time, timedelta, UUID, Decimal, tuple, set, frozenset

Nothing else is accepted: there is no pickle and no way for a message to name a type to build.
`pack` raises `SerializationError` naming where the offending value sits (`kwargs['when'][2]`)
and its type.
"""

from __future__ import annotations

import datetime as dt
import decimal
import uuid
from collections.abc import Callable
from typing import Any, cast

import msgpack

from .exceptions import SerializationError

__all__ = ["ALLOWED_TYPES", "find_unpackable", "pack", "unpack"]

_DATETIME, _DATE, _TIME, _TIMEDELTA, _UUID, _DECIMAL, _TUPLE, _SET, _FROZENSET = range(1, 10)

ALLOWED_TYPES = (
    "None, bool, int, float, str, bytes, list, dict, "
    "datetime, date, time, timedelta, UUID, Decimal, tuple, set, frozenset"
)


class _Unpackable(Exception):
    def __init__(self, value: object) -> None:
        self.value = value


def _encode_ext(value: object) -> msgpack.ExtType:
    # Order matters: datetime is a subclass of date.
    if isinstance(value, dt.datetime):
        return msgpack.ExtType(_DATETIME, value.isoformat().encode())
    if isinstance(value, dt.date):
        return msgpack.ExtType(_DATE, value.isoformat().encode())
    if isinstance(value, dt.time):
        return msgpack.ExtType(_TIME, value.isoformat().encode())
    if isinstance(value, dt.timedelta):
        triple = [value.days, value.seconds, value.microseconds]
        return msgpack.ExtType(_TIMEDELTA, _packb(triple))
    if isinstance(value, uuid.UUID):
        return msgpack.ExtType(_UUID, value.bytes)
    if isinstance(value, decimal.Decimal):
        return msgpack.ExtType(_DECIMAL, str(value).encode())
    if isinstance(value, tuple):
        return msgpack.ExtType(_TUPLE, _packb(list(value)))
    if isinstance(value, frozenset):
        return msgpack.ExtType(_FROZENSET, _packb(list(value)))
    if isinstance(value, set):
        return msgpack.ExtType(_SET, _packb(list(value)))
    return cast(msgpack.ExtType, _coerce_subclass(value))


# Exact base-type copies that ignore a subclass's own __str__/__int__...: str() of a
# `class Color(str, Enum)` member is "Color.RED", str.__str__ of it is its value, "red".
_BASE_COPIES: tuple[tuple[type, Callable[[Any], object]], ...] = (
    (dict, dict),
    (list, list),
    (str, str.__str__),
    (bytes, bytes.__bytes__),
    (int, int.__int__),
    (float, float.__float__),
)


def _coerce_subclass(value: object) -> Any:
    # strict_types makes msgpack refuse subclasses of its own types; plain containers and
    # scalars that merely subclass them (OrderedDict, defaultdict, str-based enums) are fine
    # to send as their base type. bool is handled natively, so int here is a real subclass.
    for base, copy in _BASE_COPIES:
        if isinstance(value, base):
            return copy(value)
    raise _Unpackable(value)


def _decode_ext(code: int, data: bytes) -> object:
    decoders: dict[int, Callable[[bytes], object]] = {
        _DATETIME: lambda d: dt.datetime.fromisoformat(d.decode()),
        _DATE: lambda d: dt.date.fromisoformat(d.decode()),
        _TIME: lambda d: dt.time.fromisoformat(d.decode()),
        _TIMEDELTA: lambda d: dt.timedelta(*_unpackb(d)),
        _UUID: lambda d: uuid.UUID(bytes=d),
        _DECIMAL: lambda d: decimal.Decimal(d.decode()),
        _TUPLE: lambda d: tuple(_unpackb(d)),
        _SET: lambda d: set(_unpackb(d)),
        _FROZENSET: lambda d: frozenset(_unpackb(d)),
    }
    decoder = decoders.get(code)
    if decoder is None:
        raise ValueError(f"unknown msgpack extension type {code}")
    return decoder(data)


def _packb(value: object) -> bytes:
    return msgpack.packb(value, default=_encode_ext, strict_types=True, use_bin_type=True)


def _unpackb(data: bytes) -> Any:
    return msgpack.unpackb(data, ext_hook=_decode_ext, raw=False, strict_map_key=False)


def pack(value: object, *, where: str = "value") -> bytes:
    """Encode `value`; raise `SerializationError` naming the part of `where` that cannot go."""
    try:
        return _packb(value)
    except _Unpackable as exc:
        path = find_unpackable(value, where) or where
        kind = type(exc.value)
        raise SerializationError(
            f"{path} is a {kind.__module__}.{kind.__qualname__}, which aqueue cannot send; "
            f"convert it to one of: {ALLOWED_TYPES}"
        ) from None
    except OverflowError as exc:  # an int outside msgpack's 64-bit range
        path = find_unpackable(value, where) or where
        raise SerializationError(f"{path} cannot be encoded: {exc}") from None
    except (ValueError, RecursionError) as exc:  # too deep, or a cycle
        raise SerializationError(f"{where} cannot be encoded: {exc}") from None


def unpack(data: bytes) -> Any:
    """Decode bytes made by `pack`; raise `ValueError` on anything else."""
    try:
        return _unpackb(data)
    except ValueError as exc:
        if str(exc):
            raise
        # msgpack's FormatError and StackError carry no message; name them at least.
        raise ValueError(f"undecodable msgpack: {type(exc).__name__}") from None
    except Exception as exc:  # msgpack raises a zoo of types for corrupt input
        raise ValueError(f"undecodable msgpack: {exc}") from None


def find_unpackable(value: object, path: str) -> str | None:
    """Return the path of the first value inside `value` that the codec refuses, if any."""
    if isinstance(value, dict):
        for key, item in value.items():
            found = find_unpackable(key, f"{path} key {key!r}") or find_unpackable(
                item, f"{path}[{key!r}]"
            )
            if found:
                return found
        return None
    if isinstance(value, list | tuple | set | frozenset):
        for index, item in enumerate(value):
            found = find_unpackable(item, f"{path}[{index}]")
            if found:
                return found
        return None
    try:
        _packb(value)
    except (_Unpackable, OverflowError):
        return path
    return None
