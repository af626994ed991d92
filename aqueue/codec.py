"""The value codec: msgpack plus an explicit allow-list of extension types.

Task arguments and results travel as msgpack. Beyond msgpack's own types (None, bool, int,
float, str, bytes, list, dict) these round-trip exactly, each as a msgpack extension type:

    datetime, date, time, timedelta, UUID, Decimal, tuple, set, frozenset

Nothing else is accepted: there is no pickle and no way for a message to name a type to build.
`pack` raises `SerializationError` naming where the offending value sits (`kwargs['when'][2]`)
and its type.

An extension whose payload is msgpack itself (tuple, set, frozenset, timedelta) is decoded by a
nested call of msgpack's decoder, and `msgpack.unpackb` keeps its state (about 45 KB) on the C
stack: a tuple nested 200 deep (900 bytes) overflowed it and killed the process. So:

- extension payloads nest at most `MAX_DEPTH` deep: `pack` refuses deeper values, and `unpack`
  counts the depth before each nested call (every level has its own `ext_hook`) and refuses
  deeper input with a `ValueError`, never recursing past the limit;
- past the first `_STACK_LEVELS` levels, payloads are decoded by a `msgpack.Unpacker`, whose
  state is on the heap, so that even `MAX_DEPTH` levels fit a thread with a small stack
  (512 KB; tests/test_codec.py checks it). The shallow levels, the common case, keep the
  faster `unpackb`.

Lists and maps nest in one call, on msgpack's own bounded stack, so they do not count.
"""

from __future__ import annotations

import datetime as dt
import decimal
import functools
import threading
import uuid
from collections.abc import Callable
from typing import Any, cast

import msgpack

from .exceptions import SerializationError

__all__ = ["ALLOWED_TYPES", "MAX_DEPTH", "find_unpackable", "pack", "unpack"]

_DATETIME, _DATE, _TIME, _TIMEDELTA, _UUID, _DECIMAL, _TUPLE, _SET, _FROZENSET = range(1, 10)

ALLOWED_TYPES = (
    "None, bool, int, float, str, bytes, list, dict, "
    "datetime, date, time, timedelta, UUID, Decimal, tuple, set, frozenset"
)


#: How deep extension payloads (tuple, set, frozenset, timedelta) may nest in one value.
MAX_DEPTH = 32
#: Nesting levels decoded by `msgpack.unpackb` (C stack) before `msgpack.Unpacker` (heap).
_STACK_LEVELS = 3

_TOO_DEEP = (
    f"nests tuples, sets, frozensets or timedeltas more than {MAX_DEPTH} deep "
    "(aqueue's limit; or it contains itself): flatten it, or use lists"
)


class _Unpackable(Exception):
    def __init__(self, value: object) -> None:
        self.value = value


class _TooDeep(Exception):
    """Raised inside `pack` past `MAX_DEPTH`; `pack` turns it into a `SerializationError`."""


def _encode_ext(depth: int, value: object) -> msgpack.ExtType:
    # Order matters: datetime is a subclass of date.
    if isinstance(value, dt.datetime):
        return msgpack.ExtType(_DATETIME, value.isoformat().encode())
    if isinstance(value, dt.date):
        return msgpack.ExtType(_DATE, value.isoformat().encode())
    if isinstance(value, dt.time):
        return msgpack.ExtType(_TIME, value.isoformat().encode())
    if isinstance(value, dt.timedelta):
        triple = [value.days, value.seconds, value.microseconds]
        return msgpack.ExtType(_TIMEDELTA, _packb(triple, depth + 1))
    if isinstance(value, uuid.UUID):
        return msgpack.ExtType(_UUID, value.bytes)
    if isinstance(value, decimal.Decimal):
        return msgpack.ExtType(_DECIMAL, str(value).encode())
    if isinstance(value, tuple):
        return msgpack.ExtType(_TUPLE, _packb(list(value), depth + 1))
    if isinstance(value, frozenset):
        return msgpack.ExtType(_FROZENSET, _packb(list(value), depth + 1))
    if isinstance(value, set):
        return msgpack.ExtType(_SET, _packb(list(value), depth + 1))
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


_SCALAR_DECODERS: dict[int, Callable[[bytes], object]] = {
    _DATETIME: lambda d: dt.datetime.fromisoformat(d.decode()),
    _DATE: lambda d: dt.date.fromisoformat(d.decode()),
    _TIME: lambda d: dt.time.fromisoformat(d.decode()),
    _UUID: lambda d: uuid.UUID(bytes=d),
    _DECIMAL: lambda d: decimal.Decimal(d.decode()),
}
# Extensions whose payload is msgpack: built from the decoded payload, one level deeper.
_NESTED_DECODERS: dict[int, Callable[[Any], object]] = {
    _TIMEDELTA: lambda items: dt.timedelta(*items),
    _TUPLE: tuple,
    _SET: set,
    _FROZENSET: frozenset,
}


def _decode_ext(depth: int, code: int, data: bytes) -> object:
    build = _NESTED_DECODERS.get(code)
    if build is not None:
        if depth >= MAX_DEPTH:  # checked before the nested call, not by the C stack
            raise ValueError(f"undecodable msgpack: extension types nested over {MAX_DEPTH} deep")
        if depth < _STACK_LEVELS:
            return build(_unpackb(data, depth + 1))
        return build(_unpack_on_heap(data, depth + 1))
    decoder = _SCALAR_DECODERS.get(code)
    if decoder is None:
        raise ValueError(f"unknown msgpack extension type {code}")
    return decoder(data)


# One callback per depth, made once: each nested call knows its depth at no cost per value.
_ENCODERS = [functools.partial(_encode_ext, depth) for depth in range(MAX_DEPTH + 1)]
_DECODERS = [functools.partial(_decode_ext, depth) for depth in range(MAX_DEPTH + 1)]


def _packb(value: object, depth: int = 0) -> bytes:
    if depth > MAX_DEPTH:
        raise _TooDeep
    return msgpack.packb(value, default=_ENCODERS[depth], strict_types=True, use_bin_type=True)


def _unpackb(data: bytes, depth: int = 0) -> Any:
    return msgpack.unpackb(data, ext_hook=_DECODERS[depth], raw=False, strict_map_key=False)


def _unpack_on_heap(data: bytes, depth: int) -> Any:
    """Decode one value as `_unpackb` does, keeping the decoder's state off the C stack."""
    unpacker = msgpack.Unpacker(
        ext_hook=_DECODERS[depth], raw=False, strict_map_key=False, max_buffer_size=len(data)
    )
    unpacker.feed(data)
    value = unpacker.unpack()
    if unpacker.tell() != len(data):
        raise ValueError("undecodable msgpack: extra data after an extension's value")
    return value


_ENCODE_TOP = _ENCODERS[0]
_DECODE_TOP = _DECODERS[0]


#: Each thread's packer for `pack`, made on its first use: `msgpack.packb` makes a `Packer`
#: (and allocates its buffer) at each call, a fifth of what packing a message costs (9.0k
#: against 11.4k instructions). A packer is not shared: its buffer holds the value being
#: packed while `_encode_ext` runs, and Python code may run there.
_packers = threading.local()
#: A packer whose buffer grew past this (it never shrinks) is dropped once it is done.
_KEEP_BYTES = 64 * 1024


def _new_packer() -> msgpack.Packer:
    return msgpack.Packer(default=_ENCODE_TOP, strict_types=True, use_bin_type=True)


def pack(value: object, *, where: str = "value") -> bytes:
    """Encode `value`; raise `SerializationError` naming the part of `where` that cannot go."""
    packers = _packers
    packer = getattr(packers, "packer", None)
    if packer is None:  # first use in this thread, or a call from inside another (a signal)
        packer = _new_packer()
    packers.packer = None  # taken while it packs
    try:  # _packb(value), spelled out, with the thread's packer: every message comes here
        data: bytes = packer.pack(value)  # its buffer is emptied whatever the outcome
    except _Unpackable as exc:
        path = find_unpackable(value, where) or where
        kind = type(exc.value)
        raise SerializationError(
            f"{path} is a {kind.__module__}.{kind.__qualname__}, which aqueue cannot send; "
            f"convert it to one of: {ALLOWED_TYPES}"
        ) from None
    except _TooDeep:
        raise SerializationError(f"{where} {_TOO_DEEP}") from None
    except OverflowError as exc:  # an int outside msgpack's 64-bit range
        path = find_unpackable(value, where) or where
        raise SerializationError(f"{path} cannot be encoded: {exc}") from None
    except (ValueError, RecursionError) as exc:  # too deep, or a cycle
        raise SerializationError(f"{where} cannot be encoded: {exc}") from None
    finally:
        packers.packer = packer
    if len(data) > _KEEP_BYTES:
        packers.packer = None
    return data


def unpack(data: bytes) -> Any:
    """Decode bytes made by `pack`; raise `ValueError` on anything else."""
    try:  # _unpackb(data), spelled out
        return msgpack.unpackb(data, ext_hook=_DECODE_TOP, raw=False, strict_map_key=False)
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
