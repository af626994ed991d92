"""The message envelope: what a producer puts on a queue and a worker takes off it.

The body of every message is one msgpack map (see `aqueue.codec` for the values it may hold),
or with `task_serializer = "json"` one JSON object (`aqueue.jsoncodec`, the same values):

    {"v": 1, "id": str, "task": str, "args": list, "kwargs": map,
     "eta": float | None, "expires": float | None, "retries": int, "headers": map}

`eta` and `expires` are POSIX timestamps. `v` is the envelope version: a worker refuses (and
dead-letters) a version it does not know instead of guessing.
"""

from __future__ import annotations

import enum
import os
from collections import deque
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from . import codec
from .exceptions import MessageTooLarge, SerializationError
from .formats import FORMATS, Packer, format_of, unpack_any
from .signing import MAGIC

__all__ = [
    "VERSION",
    "DeadLetterReason",
    "Envelope",
    "InvalidMessage",
    "OutgoingMessage",
    "encode_body",
    "new_id",
]

VERSION = 1


class DeadLetterReason(enum.StrEnum):
    """Why a worker refused a message; stored with the dead-lettered message, machine-readable."""

    UNDECODABLE = "undecodable"
    OVERSIZED = "oversized"
    UNKNOWN_TASK = "unknown-task"
    BAD_ARGUMENTS = "bad-arguments"
    MAX_DELIVERIES = "max-deliveries"
    #: task_message_key is set and the message has no signature (see aqueue/signing.py).
    UNSIGNED = "unsigned"
    #: A signature that does not match (tampered with) or names a key the worker does not have.
    BAD_SIGNATURE = "bad-signature"
    #: Signed longer ago than task_message_max_age.
    STALE = "stale"


class InvalidMessage(ValueError):
    """Raised by `Envelope.decode` for a body that is not a valid envelope."""


@dataclass(frozen=True, slots=True)
class Envelope:
    """One task invocation, as it travels."""

    id: str
    task: str
    args: Sequence[Any] = ()
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    eta: float | None = None
    expires: float | None = None
    retries: int = 0
    headers: Mapping[str, Any] = field(default_factory=dict)

    def encode(self, max_bytes: int, pack: Packer = codec.pack) -> bytes:
        """Encode the envelope, refusing arguments the codec cannot carry or a body too large."""
        return encode_body(
            self.id,
            self.task,
            list(self.args),
            dict(self.kwargs),
            self.eta,
            self.expires,
            self.retries,
            dict(self.headers),
            max_bytes,
            pack,
        )

    @classmethod
    def decode(cls, body: bytes, accept: Collection[str] = FORMATS) -> Envelope:
        """Decode a message body; raise `InvalidMessage` saying what is wrong with it.

        The body may be msgpack or JSON (`aqueue.formats`), if `accept` lists its format.
        """
        try:
            if body[:1] != b"{" and "msgpack" in accept:  # the common case, spelled out
                data = codec.unpack(body)
            else:
                data = unpack_any(body, accept)
        except ValueError as exc:
            if body[:4] == MAGIC:
                raise InvalidMessage(
                    "the message is signed, but this worker has no task_message_key"
                ) from None
            raise InvalidMessage(str(exc)) from None
        if not isinstance(data, dict):
            kind = format_of(body)
            raise InvalidMessage(f"body is a {kind} {type(data).__name__}, not a map")
        version = data.get("v")
        if type(version) is not int or version != VERSION:  # True == 1, but is no version
            raise InvalidMessage(
                f"unsupported envelope version {version!r} (this aqueue reads version {VERSION})"
            )
        get = data.get
        try:
            values = (
                data["id"],
                data["task"],
                get("args") or [],
                get("kwargs") or {},
                get("eta"),
                get("expires"),
                get("retries") or 0,
                get("headers") or {},
            )
        except KeyError as exc:
            raise InvalidMessage(f"envelope has no {exc.args[0]!r} field") from None
        if not _well_typed(values):
            _check_types(values)  # says what is wrong
        return _built(values) if cls is Envelope else cls(*values)


#: Each field's slot setter, in the order of the fields (`_built`).
_SETTERS = tuple(getattr(Envelope, name).__set__ for name in Envelope.__dataclass_fields__)


def _built(
    values: tuple[Any, ...],
    new: Any = object.__new__,
    setters: tuple[Any, ...] = _SETTERS,
) -> Envelope:
    """Return `Envelope(*values)` for checked values, at half the cost of the frozen `__init__`.

    A frozen dataclass sets each field through `object.__setattr__`; every message a worker
    takes is built here, so the fields go straight into their slots, spelled out (a loop
    costs what it saves).
    """
    envelope: Envelope = new(Envelope)
    id_, task, args, kwargs, eta, expires, retries, headers = values
    s0, s1, s2, s3, s4, s5, s6, s7 = setters
    s0(envelope, id_)
    s1(envelope, task)
    s2(envelope, args)
    s3(envelope, kwargs)
    s4(envelope, eta)
    s5(envelope, expires)
    s6(envelope, retries)
    s7(envelope, headers)
    return envelope


def encode_body(
    message_id: str,
    task: str,
    args: list[Any],
    kwargs: dict[str, Any],
    eta: float | None,
    expires: float | None,
    retries: int,
    headers: dict[str, Any],
    max_bytes: int,
    pack: Packer = codec.pack,
) -> bytes:
    """Encode an envelope from its fields (what `Envelope.encode` does, with no `Envelope`).

    Every `delay()` comes this way, so it takes the list and maps the body holds as they are:
    building an `Envelope` to encode it costs a third of the whole encoding.
    """
    fields = {
        "v": VERSION,
        "id": message_id,
        "task": task,
        "args": args,
        "kwargs": kwargs,
        "eta": eta,
        "expires": expires,
        "retries": retries,
        "headers": headers,
    }
    try:
        body = pack(fields, where="message")
    except SerializationError:
        # Encode the parts again, only on failure, so the error names the argument.
        pack(args, where="args")
        pack(kwargs, where="kwargs")
        raise
    if len(body) > max_bytes:
        raise MessageTooLarge(
            f"task {task} message is {len(body):,} bytes, over message_max_bytes "
            f"({max_bytes:,}); pass a reference (a path, a URL, a key) instead of the data"
        )
    return body


#: The hex digit of a version 4 UUID's variant (RFC 4122: 0b10xx), by a random hex digit.
_VARIANT = {digit: "89ab"[int(digit, 16) & 3] for digit in "0123456789abcdef"}
#: How many ids one read of `os.urandom` makes.
ID_BATCH = 64
#: Ids made and not handed out yet. `os.urandom` is a system call, and the dearest part of an
#: id (measured: a sixth of a `delay()` on Redis): one call makes `ID_BATCH`. A deque's
#: `popleft` hands each out once across threads; a forked child empties it (it would hand out
#: its parent's), which makes it the one piece of process state in the module.
_ids: deque[str] = deque()
os.register_at_fork(after_in_child=_ids.clear)


def new_id() -> str:
    """Return a new message id: a random UUID (version 4) as `str(uuid.uuid4())` spells it.

    The same 122 random bits from `os.urandom` as `uuid.uuid4()`, the version and variant
    digits set, the same 8-4-4-4-12 form; made `ID_BATCH` at a time, at a fifth of the cost.
    """
    try:
        return _ids.popleft()
    except IndexError:
        return _make_ids()


def _make_ids() -> str:
    """Make `ID_BATCH` ids: keep all but one for later, and return that one."""
    digits = os.urandom(16 * ID_BATCH).hex()
    made = [
        f"{digits[at : at + 8]}-{digits[at + 8 : at + 12]}-4{digits[at + 13 : at + 16]}-"
        f"{_VARIANT[digits[at + 16]]}{digits[at + 17 : at + 20]}-{digits[at + 20 : at + 32]}"
        for at in range(0, 32 * ID_BATCH, 32)
    ]
    _ids.extend(made[1:])
    return made[0]


def _well_typed(values: tuple[Any, ...]) -> bool:
    """Say whether every field has its type: `_FIELD_TYPES`, spelled out as exact types.

    A subclass (a bool for an int) fails it and goes to `_check_types`, which accepts or
    names the field. Spelled out because it costs a third of a check driven by the table;
    tests/test_message.py checks that both agree for every field and kind of value.
    """
    id_, task, args, kwargs, eta, expires, retries, headers = values
    return (
        type(id_) is str
        and type(task) is str
        and type(args) in _LIST
        and type(kwargs) is dict
        and type(eta) in _NUMBER_OR_NONE
        and type(expires) in _NUMBER_OR_NONE
        and type(retries) is int
        and type(headers) is dict
        and (not kwargs or all(type(key) is str for key in kwargs))
    )


def _check_types(values: tuple[Any, ...]) -> None:
    """Raise `InvalidMessage` naming the first field of `values` that has a wrong type."""
    for value, (name, (kinds, expected)) in zip(values, _FIELD_TYPES.items(), strict=True):
        if isinstance(value, bool) or not isinstance(value, kinds):
            raise InvalidMessage(
                f"envelope field {name!r} is a {type(value).__name__}, not {expected}"
            )
    for key in values[3]:
        if not isinstance(key, str):
            raise InvalidMessage(f"envelope kwargs key {key!r} is not a str")


_FIELD_TYPES: dict[str, tuple[tuple[type, ...], str]] = {
    "id": ((str,), "a str"),
    "task": ((str,), "a str"),
    "args": ((list, tuple), "a list"),
    "kwargs": ((dict,), "a map"),
    "eta": ((int, float, type(None)), "a number or nil"),
    "expires": ((int, float, type(None)), "a number or nil"),
    "retries": ((int,), "an int"),
    "headers": ((dict,), "a map"),
}
_LIST = frozenset({list, tuple})
_NUMBER_OR_NONE = frozenset({int, float, type(None)})


@dataclass(frozen=True, slots=True, init=False)
class OutgoingMessage:
    """What the app hands a broker to publish: an encoded body and its routing."""

    id: str
    queue: str
    body: bytes
    eta: float | None = None
    priority: int = 0

    def __init__(
        self, id: str, queue: str, body: bytes, eta: float | None = None, priority: int = 0
    ) -> None:
        # The dataclass's own `__init__` of a frozen class looks `object.__setattr__` up for
        # each field; the slots' setters, looked up once, cost a quarter less: one is made
        # for every message sent.
        _set_id(self, id)
        _set_queue(self, queue)
        _set_body(self, body)
        _set_eta(self, eta)
        _set_priority(self, priority)


_set_id = OutgoingMessage.__dict__["id"].__set__
_set_queue = OutgoingMessage.__dict__["queue"].__set__
_set_body = OutgoingMessage.__dict__["body"].__set__
_set_eta = OutgoingMessage.__dict__["eta"].__set__
_set_priority = OutgoingMessage.__dict__["priority"].__set__
