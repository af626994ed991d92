"""Tasks of the reports app (a plain INSTALLED_APPS entry)."""

from aqueue import shared_task


@shared_task
async def add(x: int, y: int) -> int:
    return x + y
