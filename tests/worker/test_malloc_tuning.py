"""The worker's malloc setting (aqueue/worker/malloc_tuning.py), in a process of its own."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

from aqueue.worker.malloc_tuning import fix_mmap_threshold

GLIBC = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"


def test_none_leaves_the_allocator_alone() -> None:
    assert fix_mmap_threshold(None) is False
    assert fix_mmap_threshold(0) is False


@pytest.mark.skipif(not GLIBC, reason="mallopt's mmap threshold is glibc's")
def test_the_threshold_is_set_in_a_worker_process() -> None:
    # In a child: the setting lasts for the life of the process (not this test runner's).
    code = "from aqueue.worker.malloc_tuning import fix_mmap_threshold as f; print(f(131072))"
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert done.stdout.strip() == "True"
