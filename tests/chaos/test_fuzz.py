"""The envelope decoder under mutated and arbitrary input: no crash, no hang, each < 10 ms."""

from __future__ import annotations

import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .fuzz import SEEDS, decode_checked, mutate, run

LIMIT = 0.010  # seconds, per decode
pytestmark = pytest.mark.chaos


def test_seeded_mutations() -> None:
    count, slowest = run(3000, seed=1)
    assert count == 3000
    assert slowest < LIMIT


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=4096))
def test_arbitrary_bytes(body: bytes) -> None:
    assert decode_checked(body) < LIMIT


@settings(max_examples=500, deadline=None)
@given(st.integers(min_value=0, max_value=2**32), st.sampled_from(SEEDS))
def test_mutations_of_valid_envelopes(seed: int, body: bytes) -> None:
    assert decode_checked(mutate(body, random.Random(seed))) < LIMIT
