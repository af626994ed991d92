"""What mypy --strict must accept: the typed API as users write it (see tests/test_typing.py).

This file is type-checked, never imported or run.
"""

from __future__ import annotations

import datetime as dt
from typing import Any, assert_type

from aqueue import (
    App,
    AsyncResult,
    AsyncTask,
    Chain,
    Chord,
    Group,
    GroupResult,
    Request,
    Signature,
    SyncResult,
    SyncTask,
    WorkflowResult,
    chain,
    chord,
    group,
    shared_task,
)

app = App("typing", broker="memory://")


@app.task
async def add(x: int, y: int) -> int:
    return x + y


@app.task
def checksum(text: str) -> int:
    return len(text)


@app.task(name="typing.upper", queue="text", priority=5, ignore_result=False)
async def upper(text: str, *, loud: bool = False) -> str:
    return text.upper() if loud else text


@app.task(bind=True)
async def bound(self: AsyncTask[[int], str], n: int) -> str:
    assert_type(self.request, Request)
    return f"{self.name}:{n}"


@app.task(bind=True, name="typing.sync_bound")
def sync_bound(self: Any, data: bytes) -> list[int]:
    return list(data)


@shared_task
async def shared_add(x: int, y: int) -> int:
    return x + y


@shared_task(bind=True)
def shared_bound(self: Any, name: str) -> None:
    pass


async def main() -> None:
    # assert_type would compare parameter names too; assignment checks the kind and types.
    async_task: AsyncTask[[int, int], int] = add
    sync_task: SyncTask[[str], int] = checksum
    bound_task: AsyncTask[[int], str] = bound
    print(async_task, sync_task, bound_task)

    result = await add.delay(1, 2)
    assert_type(result, AsyncResult[int])
    assert_type(await result.get(), int)
    assert_type(await result.get(timeout=1.5, propagate=False), int)
    assert_type(await result.state(), str)
    assert_type(await result.ready(), bool)
    assert_type(await result.traceback(), str | None)
    assert_type(await add.delay(x=1, y=2), AsyncResult[int])
    assert_type(await add.apply_async((1, 2), countdown=5, queue="q"), AsyncResult[int])
    assert_type(add.AsyncResult("id"), AsyncResult[int])
    assert_type(await add(1, 2), int)

    assert_type(checksum("x"), int)
    assert_type(await checksum.delay("x"), AsyncResult[int])

    assert_type(await upper("a", loud=True), str)
    assert_type(await upper.delay("a", loud=True), AsyncResult[str])

    # bind=True: the task is the first argument, which callers never pass.
    assert_type(await bound(3), str)
    assert_type(await bound.delay(3), AsyncResult[str])
    assert_type(sync_bound(b"ab"), list[int])
    assert_type(await sync_bound.delay(b"ab"), AsyncResult[list[int]])

    assert_type(await shared_add(1, 2), int)
    assert_type(await shared_add.delay(1, 2), AsyncResult[int])
    assert_type(shared_bound("n"), None)
    assert_type(await shared_bound.delay("n"), AsyncResult[None])

    assert_type(app.AsyncResult("id"), AsyncResult[Any])
    assert_type(await app.send_task("remote.task", [1], {"k": 2}), AsyncResult[Any])
    meta = await result.meta()
    assert_type(meta.date_done, dt.datetime | None)
    assert_type(await result.date_done(), dt.datetime | None)
    assert_type(await add.apply((1, 2)), AsyncResult[int])


def sync_caller() -> None:
    result = add.sync.delay(1, 2)
    assert_type(result, SyncResult[int])
    assert_type(result.get(timeout=5), int)
    assert_type(result.state, str)
    assert_type(result.ready(), bool)
    assert_type(result.date_done, dt.datetime | None)
    assert_type(add.sync.apply_async((1, 2), countdown=10, queue="fast"), SyncResult[int])
    assert_type(add.sync.delay_many([(1, 2), (3, 4)]), list[SyncResult[int]])
    assert_type(checksum.sync.delay("x"), SyncResult[int])
    assert_type(bound.sync.delay(3), SyncResult[str])
    assert_type(add.sync.apply((1, 2)), SyncResult[int])
    assert_type(app.sync.send_task("remote.task", [1]), SyncResult[Any])
    assert_type(app.sync.AsyncResult("id"), SyncResult[Any])


async def canvas() -> None:
    assert_type(add.s(1, 2), Signature[int])
    assert_type(add.si(1, 2), Signature[int])
    assert_type(add.signature((1,), countdown=5, link=checksum.s("x")), Signature[int])
    assert_type(add.s(1, 2).set(queue="fast").clone(), Signature[int])
    assert_type(await add.s(1, 2).delay(), AsyncResult[int])
    assert_type(add.s(1, 2) | checksum.s("x"), Chain[int])
    assert_type(add.s(1, 2) | add.s(3, 4) | checksum.s("x"), Chain[int])
    assert_type(chain(add.s(1, 2), checksum.s("x")), Chain[int])
    pipeline = await chain(checksum.s("x"), add.si(1, 2)).delay()
    assert_type(pipeline, WorkflowResult[int])
    assert_type(await pipeline.get(timeout=5), int)
    assert_type(group(add.s(i, i) for i in range(3)), Group[int])
    together = await group(add.s(1, 2), add.s(3, 4)).delay()
    assert_type(together, GroupResult[int])
    assert_type(await together.get(timeout=5), list[int])
    assert_type(await together.completed_count(), int)
    assert_type(app.GroupResult("id"), GroupResult[Any])
    assert_type(chord([add.s(1, 2)], checksum.s("x")), Chord[int])
    assert_type(group([add.s(1, 2)]) | checksum.s("x"), Chord[int])
    assert_type(await (await chord([add.s(1, 2)], upper.s("t")).delay()).get(), str)
    assert_type(together.sync.get(timeout=5), list[int])
    assert_type(pipeline.sync.get(timeout=5), int)
    assert_type(await chain(add.s(1, 2)).apply_async(countdown=5), WorkflowResult[int])
    assert_type(await group([add.s(1, 2)]).apply_async(queue="q"), GroupResult[int])
