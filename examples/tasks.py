"""The README's tasks: run a worker for them with `aqueue worker tasks:app -l INFO`.

No broker is configured, so the app uses the embedded SQLite default: `aqueue.db` in the
current directory, shared by every process started there (producers, workers, callers).
"""

from __future__ import annotations

import hashlib
import pathlib
from typing import Any

from aqueue import App

app = App("tasks")  # no broker given: the embedded SQLite default


@app.task
async def add(x: int, y: int) -> int:
    """Runs on the worker's event loop."""
    return x + y


@app.task
def checksum(path: str) -> str:
    """A plain def: the worker runs it in a thread, so reading the file blocks nothing."""
    digest = hashlib.sha256()
    with pathlib.Path(path).open("rb") as file:
        for chunk in iter(lambda: file.read(1 << 16), b""):
            digest.update(chunk)
    return digest.hexdigest()


@app.task
async def divide(x: float, y: float) -> float:
    """Fails for y == 0: `get()` raises ZeroDivisionError, with the remote traceback attached."""
    return x / y


@app.task(bind=True)
async def whoami(self: Any) -> dict[str, Any]:
    """A bound task sees its own request: id, delivery count, the worker that runs it."""
    request = self.request
    return {"id": request.id, "hostname": request.hostname, "delivery": request.delivery_count}
