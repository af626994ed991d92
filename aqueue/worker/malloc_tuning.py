"""The C allocator's setting for a worker process (`aqueue worker`, `Worker.serve`).

glibc's malloc serves a large block (128 KiB and up, at first) with a mapping of its own,
returned to the system when freed; but each time such a block is freed it raises that
threshold to the block's size, so later blocks of that size come from the heap, whose free
space is rarely given back. A worker that handles large messages (1 MB bodies refused as
oversized, 1 MB results) then keeps what it once held at its peak: on RabbitMQ, a worker
refusing 111 bodies of 1 MB grew by 89-91 MB, against 27 MB with the threshold fixed at
128 KiB (issue 19, finding 8). `fix_mmap_threshold` fixes it (`mallopt(M_MMAP_THRESHOLD)`),
which also turns off that adjustment, for the life of the process: a setting of the worker's
process, as the collector's (`gc_tuning`), not of an application that embeds `Worker.run`.

Elsewhere than glibc on Linux (musl, macOS, Windows) it does nothing.
"""

from __future__ import annotations

import ctypes
import logging
import sys

__all__ = ["M_MMAP_THRESHOLD", "fix_mmap_threshold"]

logger = logging.getLogger("aqueue.worker")

#: glibc's `mallopt` parameter for the mmap threshold (malloc.h).
M_MMAP_THRESHOLD = -3


def fix_mmap_threshold(size: int | None) -> bool:
    """Serve blocks of `size` bytes and more with mappings of their own; False if not done.

    None (or 0) leaves the allocator alone.
    """
    if not size or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
        gnu = libc.gnu_get_libc_version  # glibc only: musl's mallopt does nothing
    except (AttributeError, OSError):
        return False
    gnu.restype = ctypes.c_char_p
    if mallopt(M_MMAP_THRESHOLD, int(size)) != 1:
        logger.warning("Could not set malloc's mmap threshold to %d bytes", size)
        return False
    return True
