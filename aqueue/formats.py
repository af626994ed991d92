"""The wire formats of messages and results: msgpack (the default) and JSON, nothing else.

`task_serializer` and `result_serializer` pick the format aqueue writes; `accept_content` the
formats a worker takes from its queues (a message in another is dead-lettered as
`undecodable`). Both formats carry the same values (`aqueue.codec`, `aqueue.jsoncodec`), and a
reader tells them apart by the first byte: a JSON envelope or result is an object (`{`), a
msgpack one a map (0x80-0x8f, 0xde, 0xdf). Celery's MIME names are accepted as well
(`application/json`, `application/x-msgpack`). `pickle` is refused: unpickling runs code
named by the message.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import Any

from . import codec, jsoncodec
from .exceptions import ConfigurationError

__all__ = ["FORMATS", "check_formats", "format_of", "packer", "unpack_any"]

#: The formats aqueue reads and writes, and the names (Celery's too) that select them.
FORMATS = ("msgpack", "json")
_NAMES = {
    "msgpack": "msgpack",
    "application/x-msgpack": "msgpack",
    "json": "json",
    "application/json": "json",
}
_REFUSED = {
    "pickle": "unpickling runs code named by the message",
    "application/x-python-serialize": "unpickling runs code named by the message",
    "yaml": "YAML can build arbitrary objects",
    "application/x-yaml": "YAML can build arbitrary objects",
}

Packer = Callable[..., bytes]


def _format_name(setting: str, value: Any, name: object) -> str:
    if isinstance(name, str):
        known = _NAMES.get(name.lower())
        if known is not None:
            return known
        why = _REFUSED.get(name.lower())
        if why is not None:
            raise ConfigurationError(
                f"{setting}={value!r} is refused: {why}; aqueue speaks msgpack and json only"
            )
    raise ConfigurationError(
        f"{setting}={value!r} is not supported: aqueue speaks msgpack and json only"
    )


def check_formats(setting: str, value: Any) -> list[str]:
    """Check a serializer setting (one name, or a non-empty list of names); return formats."""
    names = [value] if isinstance(value, str) else value
    if not isinstance(names, list | tuple | set | frozenset) or not names:
        raise ConfigurationError(
            f"{setting}={value!r} is not supported: aqueue speaks msgpack and json only"
        )
    return sorted({_format_name(setting, value, name) for name in names})


def format_of(data: bytes) -> str:
    """Return the format of an encoded envelope or result: "json" or "msgpack"."""
    return "json" if data[:1] == b"{" else "msgpack"


def packer(serializer: str) -> Packer:
    """Return the `pack(value, *, where=...)` of a serializer setting's format."""
    return jsoncodec.pack if _NAMES.get(serializer.lower()) == "json" else codec.pack


def unpack_any(data: bytes, accept: Collection[str] = FORMATS) -> Any:
    """Decode an envelope or a result in either format; one not in `accept` is a ValueError."""
    kind = format_of(data)
    if kind not in accept:
        raise ValueError(f"the body is {kind}, which accept_content does not list")
    return jsoncodec.unpack(data) if kind == "json" else codec.unpack(data)
