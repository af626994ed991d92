"""The dashboard in a real browser: headless Chromium (the system's, driven by playwright)
against a dashboard over a live worker. A task that ran shows up live; a revoke clicked in the
page revokes a queued task; a rate limit set in the page reaches the worker; a purge and a
dead-letter retry clicked on the queues pages.

Skips (with the reason) when playwright or a chromium binary is missing, unless
AQUEUE_REQUIRE_SERVICES=1. With AQUEUE_DASHBOARD_SCREENSHOTS=DIR, each page is also saved
there as PNG (the README's screenshots under docs/ come from this).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from aqueue import Worker
from tests.helpers import service_redis
from tests.helpers.dashboard import Live, live_dashboard
from tests.helpers.drivers import driver_url, require, service_unavailable

SHOTS = os.environ.get("AQUEUE_DASHBOARD_SCREENSHOTS")
WAIT_MS = 10_000
ADD = "tests.helpers.dashboard.add"


def chromium() -> str | None:
    """The system's Chromium, if any."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


@pytest.fixture
async def page() -> AsyncIterator[Any]:
    """A page of headless Chromium (the system's binary: nothing is downloaded)."""
    try:
        from playwright.async_api import async_playwright
    except ImportError:
        service_unavailable("playwright is not installed (pip install playwright)")
    binary = chromium()
    if binary is None:
        service_unavailable("no chromium binary on PATH (apt-get install chromium)")
    async with async_playwright() as driver:
        browser = await driver.chromium.launch(
            executable_path=binary, args=["--no-sandbox", "--disable-gpu"]
        )
        try:
            context = await browser.new_context(viewport={"width": 1280, "height": 720})
            tab = await context.new_page()
            tab.set_default_timeout(WAIT_MS)
            yield tab
        finally:
            await browser.close()


async def shot(page: Any, name: str) -> None:
    if SHOTS:
        await anyio.Path(SHOTS).mkdir(parents=True, exist_ok=True)
        await page.screenshot(path=str(Path(SHOTS) / f"dashboard-{name}.png"), full_page=True)


@pytest.mark.parametrize("driver", ["sqlite", "redis"])
async def test_a_task_that_ran_appears_live_and_opens_with_its_result(
    driver: str, tmp_path: Path, page: Any
) -> None:
    await require(driver)
    url = driver_url(driver, tmp_path)
    try:
        async with live_dashboard(tmp_path, url) as live:
            await _task_that_ran(live, page)
    finally:
        if driver == "redis":
            await service_redis.cleanup(url)


async def _task_that_ran(live: Live, page: Any) -> None:
    await page.goto(f"{live.url}/tasks")
    await page.wait_for_selector("#live.on")  # the page's event stream is open
    ok = await live.tasks["add"].delay(2, 3)
    bad = await live.tasks["boom"].delay()
    assert await ok.get(timeout=10) == 5
    # No reload: the rows arrive over server-sent events.
    await page.wait_for_selector(f"#task-{ok.id} .state.success")
    await page.wait_for_selector(f"#task-{bad.id} .state.failure")
    assert "kaput" in await page.inner_text(f"#task-{bad.id}")
    await shot(page, "tasks")

    await page.select_option("#state", "FAILURE")  # the filter hides the others at once
    assert await page.is_hidden(f"#task-{ok.id}")
    assert await page.is_visible(f"#task-{bad.id}")

    await page.select_option("#state", "")
    await page.click(f"#task-{ok.id} a")
    await page.wait_for_url(f"**/tasks/{ok.id}")
    text = await page.inner_text("main")
    assert "(2, 3)" in text or "[2, 3]" in text  # the arguments, from the events
    assert "SUCCESS" in text
    assert "Runtime" in text
    await shot(page, "task")

    await page.goto(f"{live.url}/tasks/{bad.id}")
    assert "ValueError" in await page.inner_text("main")  # the stored traceback


async def test_a_revoke_clicked_in_the_page_revokes_a_queued_task(
    tmp_path: Path, page: Any
) -> None:
    async with live_dashboard(tmp_path) as live:
        await _revoke_clicked(live, page)


async def _revoke_clicked(live: Live, page: Any) -> None:
    queued = await live.tasks["later"].delay("never")  # on `held`: nobody consumes it
    await page.goto(f"{live.url}/tasks/{queued.id}")
    await page.click("form[action$='/revoke']:not(:has(input[name=terminate])) button")
    await page.wait_for_selector(".notice")
    assert f"revoked {queued.id}" in await page.inner_text(".notice")
    assert await queued.state() == "REVOKED"
    # A worker for `held` now finds the task revoked, and does not run it.
    await Worker(live.app, queues=["held"], burst=True, hostname="w2@dash").run()
    assert live.ran == []
    assert await queued.state() == "REVOKED"


async def test_a_rate_limit_set_in_the_page_reaches_the_worker(tmp_path: Path, page: Any) -> None:
    async with live_dashboard(tmp_path) as live:
        await _rate_limit_set(live, page)


async def _rate_limit_set(live: Live, page: Any) -> None:
    await page.goto(live.url)
    await page.wait_for_selector("tr[data-host='w1@dash'] .online")
    await shot(page, "workers")
    await page.select_option("#task", ADD)
    await page.fill("#rate", "7/m")
    await page.click("#rate-limit button")
    await page.wait_for_selector(".notice")
    notice = await page.inner_text(".notice")
    assert f"rate limit of {ADD} set to 7/m on 1 worker(s)" in notice
    assert live.worker.rate_limits[ADD] == "7/m"
    await page.goto("about:blank")  # closes the page's stream: the dashboard stops at once


async def test_the_queues_page_shows_depth_purges_and_retries_a_dead_letter(
    tmp_path: Path, page: Any
) -> None:
    async with live_dashboard(tmp_path) as live:
        await _queues_page(live, page)


async def _queues_page(live: Live, page: Any) -> None:
    for note in ("a", "b", "c"):
        await live.tasks["later"].delay(note)
    await live.tasks["later"].apply_async(("d",), countdown=3600)
    await page.goto(f"{live.url}/queues")
    row = "tr[data-queue='held']"
    await page.wait_for_selector(row)
    assert await page.inner_text(f"{row} .waiting") == "3"
    assert await page.inner_text(f"{row} .delayed") == "1"
    await shot(page, "queues")
    await page.click(f"{row} form button")
    await page.wait_for_selector(".notice")
    assert "held: 4 message(s) deleted" in await page.inner_text(".notice")  # SQLite: delayed too
    assert await page.inner_text(f"{row} .waiting") == "0"
    assert await page.inner_text(f"{row} .delayed") == "0"

    # A dead letter (a task nobody registered), then retried from the queue's page.
    unknown = await live.app.send_task("nobody.knows", (1,), queue="held")
    await Worker(live.app, queues=["held"], burst=True, hostname="w3@dash").run()
    await page.goto(f"{live.url}/queues/held")
    letter = "tr[data-letter]"
    assert f"nobody.knows[{unknown.id}]" in await page.inner_text(letter)
    await shot(page, "queue")
    await page.click(f"{letter} form button")
    await page.wait_for_selector(".notice")
    assert "held: 1 dead letter(s) sent back" in await page.inner_text(".notice")
    assert await page.inner_text("#dead") == "No dead letters"
