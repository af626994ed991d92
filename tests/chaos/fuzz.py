"""The envelope decoder fuzzed: mutations of valid envelopes, signed and not.

`mutate` is a seeded mutator (flip, insert, delete, duplicate, truncate, splice a msgpack
header that declares a huge length or deep nesting); `decode_checked` decodes one body and
says how long it took. benchmarks/chaos.py runs 100,000; tests/chaos/test_fuzz.py runs a few
thousand, and hypothesis over arbitrary bytes and over the mutations.
"""

from __future__ import annotations

import contextlib
import random
import time

from aqueue.message import Envelope, InvalidMessage, encode_body
from aqueue.signing import SignatureError, Signer

#: msgpack headers worth splicing in: huge declared lengths, deep nesting, bad bytes.
HEADERS = [
    b"\xdd\xff\xff\xff\xff",  # array 32, 4 billion elements
    b"\xdf\xff\xff\xff\xff",  # map 32
    b"\xdb\xff\xff\xff\xff",  # str 32, 4 GB
    b"\xc6\xff\xff\xff\xff",  # bin 32
    b"\xc9\xff\xff\xff\xff\x01",  # ext 32
    b"\x91" * 3000,  # nesting
    b"\x81\xa1k" * 2000,
    b"\xc1",  # never used
    b"\xd7\xff" + b"\x00" * 8,  # timestamp ext
    b"\xc7\x00\x05",  # ext 8 of an unknown type
]

SEEDS = [
    encode_body("id-1", "tasks.work", [1, "two", 3.0], {"k": [None]}, None, None, 0, {}, 1 << 20),
    encode_body("id-2", "tasks.add", [], {}, 1.5e9, 2e9, 3, {"h": {"x": 1}}, 1 << 20),
]


def mutate(body: bytes, rng: random.Random) -> bytes:
    data = bytearray(body)
    for _ in range(rng.randint(1, 4)):
        at = rng.randrange(len(data) + 1)
        kind = rng.randrange(6)
        if kind == 0 and data:
            data[min(at, len(data) - 1)] ^= 1 << rng.randrange(8)
        elif kind == 1:
            data[at:at] = bytes([rng.randrange(256)])
        elif kind == 2 and data:
            del data[at : at + rng.randint(1, 8)]
        elif kind == 3:
            data[at:at] = rng.choice(HEADERS)
        elif kind == 4:
            data = data[:at]
        else:
            data[at:at] = data[rng.randrange(len(data) + 1) :][: rng.randint(1, 64)]
    return bytes(data)


#: A decode slower than this is timed twice more, and the fastest of the three kept: on a
#: shared machine one run can be preempted; a decode that is really slow stays slow.
RETIME = 0.002


def decode_checked(body: bytes, signer: Signer | None = None) -> float:
    """Decode `body` as a worker does; return the seconds it took. Any error but the decoder's
    own (InvalidMessage, SignatureError) propagates: that is a finding."""
    took = _decode(body, signer)
    if took > RETIME:
        took = min(took, _decode(body, signer), _decode(body, signer))
    return took


def _decode(body: bytes, signer: Signer | None) -> float:
    started = time.perf_counter()
    with contextlib.suppress(InvalidMessage, SignatureError):
        Envelope.decode(signer.verify(body) if signer is not None else body)
    return time.perf_counter() - started


def run(count: int, seed: int = 0) -> tuple[int, float]:
    """Decode `count` mutated bodies (half of them signed); return (count, slowest seconds)."""
    rng = random.Random(seed)
    signer = Signer(b"f" * 32)
    slowest = 0.0
    for n in range(count):
        body = mutate(rng.choice(SEEDS), rng)
        if n % 2:
            slowest = max(slowest, decode_checked(signer.sign(body), signer))
            slowest = max(slowest, decode_checked(mutate(signer.sign(body), rng), signer))
        slowest = max(slowest, decode_checked(body))
    return count, slowest
