"""What mypy --strict must reject: each line marked `# error` (see tests/test_typing.py).

This file is type-checked, never imported or run.
"""

from __future__ import annotations

from typing import Any

from aqueue import App, AsyncResult, AsyncTask, Chain, SyncTask, group

app = App("typing", broker="memory://")


@app.task
async def add(x: int, y: int) -> int:
    return x + y


@app.task
def checksum(text: str) -> int:
    return len(text)


@app.task(bind=True)
async def bound(self: Any, n: int) -> str:
    return str(n)


async def main() -> None:
    await add.delay("a", b=2)  # error
    await add.delay(1)  # error
    await add.delay(1, 2, 3)  # error
    await add.delay(1, 2, queue="fast")  # error
    await add(1, "2")  # error
    await checksum.delay(5)  # error
    checksum(b"x")  # error
    await checksum("x")  # error
    await bound.delay(bound, 3)  # error
    await bound("3")  # error
    wrong: AsyncResult[str] = await add.delay(1, 2)  # error
    text: str = await (await add.delay(1, 2)).get()  # error
    await add.apply_async((1, 2), countdown="soon")  # error
    await add.apply_async((1, 2), priority="high")  # error
    not_sync: SyncTask[[int, int], int] = add  # error
    not_async: AsyncTask[[str], int] = checksum  # error
    with_self: AsyncTask[[Any, int], str] = bound  # error
    print(wrong, text, not_sync, not_async, with_self)
    await add.delay(1, 2)
    add.s("a", 2)  # error
    add.s(1, 2, 3)  # error
    add.si(1)  # error
    add.signature((1, 2), countdown="soon")  # error
    wrong_chain: Chain[str] = add.s(1, 2) | add.s(3, 4)  # error
    values: list[str] = await (await group([add.s(1, 2)]).delay()).get()  # error
    print(wrong_chain, values)


def sync_caller() -> None:
    add.sync.delay("a")  # error
    add.sync.delay(1, 2, 3)  # error
    checksum.sync.delay(5)  # error
    add.sync.apply_async((1, 2), countdown="soon")  # error
    wrong: str = add.sync.delay(1, 2).get()  # error
    print(wrong)


@app.task(bind=True)  # error
async def no_self() -> None:
    pass
