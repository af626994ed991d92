"""The garbage collector's settings for a worker process (`aqueue worker`, `Worker.serve`).

A worker's heap is mostly permanent (the app, its imports, the broker's client library), and it
allocates tens of thousands of short-lived objects a second (coroutines, futures, messages).
With CPython's defaults the young generation is collected every 700 allocations, and every
full collection walks the whole start-up heap: on a RabbitMQ worker running 5,000 sleeping
tasks, 15 to 20% of its time (one full collection took 14 to 22 ms). So the worker freezes
the heap it started with (`gc.freeze()`: never scanned again, as long-running servers that
fork do) and collects the young generation every `YOUNG` allocations. Measured on that run:
16.1k to 19.4k tasks/s (medians of 8). Cycles still get collected; objects frozen at start-up
that become cyclic garbage later are not (a worker's start-up objects live as long as it).

`Worker.run` leaves the collector alone (it may run inside an application of its own); the
`worker_tune_gc` setting turns this off for `serve` too.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator

__all__ = ["YOUNG", "tuned_for_worker"]

#: Allocations (net of deallocations) between two collections of the young generation.
YOUNG = 10_000


@contextlib.contextmanager
def tuned_for_worker(enabled: bool = True) -> Iterator[None]:
    """Freeze the heap and collect the young generation less often; put both back after."""
    if not enabled:
        yield
        return
    threshold = gc.get_threshold()
    freeze = not gc.get_freeze_count()  # else the process froze its heap itself: leave it
    if freeze:
        gc.collect()  # what start-up left as garbage goes now, not into the frozen heap
        gc.freeze()
    gc.set_threshold(max(YOUNG, threshold[0]), *threshold[1:])
    try:
        yield
    finally:
        gc.set_threshold(*threshold)
        if freeze:
            gc.unfreeze()
