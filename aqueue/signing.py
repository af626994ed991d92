"""Signed messages and results: HMAC-SHA256 over every body, checked before it is decoded.

With `task_message_key` set, every envelope a producer (or a retrying worker) sends and every
result a worker stores is wrapped as

    MAGIC (4) | key id (8) | issued at (8) | not before (8) | HMAC-SHA256 (32) | body

`MAGIC` starts with 0xc1, the one byte msgpack never uses, so an aqueue without the key refuses
a signed body as undecodable instead of misreading it. The key id is a hash of the key (never
the key), so a worker finds the key among `task_message_key` and `task_message_old_keys`
(rotation: sign with the new key, accept the old ones until their messages have drained)
without trying each. Times are POSIX seconds as big-endian doubles; the HMAC covers the header
and the body. With `task_message_max_age`, a message older than that (counted from its eta, if
it has one: "not before") is refused as stale, which bounds a replay.

The checks are done on the raw bytes, before msgpack sees them: a worker with a key never
decodes what an attacker wrote. A message that fails them is dead-lettered with its reason
(unsigned, bad-signature, stale) and never runs; a result that fails them is an error for
its caller, never a value.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import struct
import time
from collections.abc import Sequence
from typing import Protocol

from .exceptions import SignatureError

__all__ = [
    "MAGIC",
    "OVERHEAD",
    "SignatureError",
    "Signer",
    "SigningSettings",
    "open_result",
    "payload_of",
    "sign_result",
    "signer_for",
]

MAGIC = b"\xc1AQ1"
_HEADER = struct.Struct(">4s8sdd32s")
#: The bytes a signature adds to a body.
OVERHEAD = _HEADER.size
_SIGNED_PART = slice(0, 28)  # the header up to the HMAC


def key_id(key: bytes) -> bytes:
    """Return the 8 bytes naming a key in a signed body: a hash, not the key."""
    return hashlib.sha256(b"aqueue task_message_key id\x00" + key).digest()[:8]


def _as_bytes(key: str | bytes) -> bytes:
    return key.encode() if isinstance(key, str) else bytes(key)


class Signer:
    """Signs with one key, verifies with it and any old ones; `max_age` in seconds or None."""

    def __init__(
        self, key: str | bytes, old_keys: Sequence[str | bytes] = (), max_age: float | None = None
    ) -> None:
        self.key = _as_bytes(key)
        self.key_id = key_id(self.key)
        self.keys = {key_id(k): k for k in (_as_bytes(old) for old in old_keys)}
        self.keys[self.key_id] = self.key
        self.max_age = max_age

    def sign(self, body: bytes, not_before: float | None = None, now: float | None = None) -> bytes:
        """Return `body` signed: the header, then the body as it was."""
        issued = time.time() if now is None else now
        head = struct.pack(">4s8sdd", MAGIC, self.key_id, issued, not_before or 0.0)
        mac = hmac.digest(self.key, head + body, "sha256")
        return head + mac + body

    def verify(self, signed: bytes, now: float | None = None, *, check_age: bool = True) -> bytes:
        """Return the body inside `signed`, or raise `SignatureError` saying why not."""
        if len(signed) < OVERHEAD or signed[:4] != MAGIC:
            raise SignatureError("unsigned", "the body carries no aqueue signature")
        _, kid, issued, not_before, mac = _HEADER.unpack_from(signed)
        key = self.keys.get(kid)
        if key is None:
            raise SignatureError(
                "bad-signature",
                f"signed with an unknown key (id {kid.hex()}); "
                "add it to task_message_old_keys if it was rotated out",
            )
        body = signed[OVERHEAD:]
        expected = hmac.digest(key, signed[_SIGNED_PART] + body, "sha256")
        if not hmac.compare_digest(mac, expected):
            raise SignatureError("bad-signature", "the HMAC does not match: tampered with")
        if check_age and self.max_age is not None:
            age = (time.time() if now is None else now) - max(issued, not_before)
            if not age <= self.max_age:  # NaN too
                raise SignatureError(
                    "stale",
                    f"signed {age:.1f} s ago, over task_message_max_age ({self.max_age:g} s)",
                )
        return body


@functools.lru_cache(maxsize=8)
def _cached(key: str | bytes, old_keys: tuple[str | bytes, ...], max_age: float | None) -> Signer:
    return Signer(key, old_keys, max_age)


class SigningSettings(Protocol):
    """The settings signing reads (`aqueue.config.Settings` has them)."""

    @property
    def task_message_key(self) -> str | bytes | None:
        """The key messages are signed with (None: unsigned)."""
        ...

    @property
    def task_message_old_keys(self) -> Sequence[str | bytes]:
        """Keys still accepted when checking."""
        ...

    @property
    def task_message_max_age(self) -> float | None:
        """How old a signed message may be, in seconds."""
        ...


def signer_for(conf: SigningSettings) -> Signer | None:
    """Return the signer for an app's settings, or None when `task_message_key` is not set."""
    key = conf.task_message_key
    if key is None:
        return None
    return _cached(key, tuple(conf.task_message_old_keys), conf.task_message_max_age)


def sign_result(conf: SigningSettings, payload: bytes) -> bytes:
    """Return a result payload as it is stored, signed when the app has a key."""
    signer = signer_for(conf)
    return payload if signer is None else signer.sign(payload)


def open_result(conf: SigningSettings, payload: bytes) -> bytes:
    """Return a stored result payload, checked (no age limit) if the app has a key."""
    signer = signer_for(conf)
    return payload if signer is None else signer.verify(payload, check_age=False)


def payload_of(body: bytes) -> bytes:
    """Return the body inside a signed one, unverified (to show a dead letter)."""
    if len(body) >= OVERHEAD and body[:4] == MAGIC:
        return body[OVERHEAD:]
    return body
