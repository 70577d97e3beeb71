"""The workbench served by Voila in headless Chromium: buttons drive the real pipeline."""

from __future__ import annotations

from pathlib import Path

import pytest
from playwright.sync_api import BrowserContext, Page

from clickstream_lib.notebooks import VoilaServer
from clickstream_lib.settings import Settings

from tests.helpers import wait_until

from .conftest import query_json, screenshot

pytestmark = [pytest.mark.integration, pytest.mark.notebooks]


def _stat(page: Page, key: str) -> str:
    return page.locator(f'[data-stat="{key}"]').first.inner_text()


def _num(page: Page, key: str) -> int:
    text = _stat(page, key).replace(",", "")
    return int(float(text)) if text not in ("", "–") else 0


def test_workbench_buttons_start_and_stop_the_pipeline(browser: BrowserContext, own_settings: Settings, tmp_path: Path) -> None:
    params = {"rate": 500.0, "refresh_s": 1.0}
    with VoilaServer(own_settings, "workbench", port=0, params=params, log_file=tmp_path / "voila.log") as server:
        page = browser.new_page()
        page.goto(server.url, wait_until="domcontentloaded", timeout=90_000)
        page.locator(".cs-workbench").wait_for(timeout=120_000)
        assert _stat(page, "producer") == "stopped" and _stat(page, "sink") == "stopped"

        page.locator(".cs-btn-start-sink").click()
        page.locator(".cs-btn-start-producer").click()
        wait_until(lambda: _stat(page, "producer") == "running", 30, what="producer running")
        wait_until(lambda: _num(page, "rows_inserted") > 0, 60, what="rows in the store")
        first = _num(page, "rows_inserted")
        wait_until(lambda: _num(page, "rows_inserted") > first, 30, what="rows to keep arriving")

        # A scenario reacts within a refresh: malformed messages show up as dead letters.
        page.locator(".cs-scenario-malformed").click()
        wait_until(lambda: _num(page, "dead_letters") > 0, 60, what="dead letters from the malformed scenario")
        page.locator(".cs-scenario-malformed").click()
        page.locator('[data-table="preview"] td').first.wait_for(timeout=30_000)

        page.locator(".cs-btn-stop-producer").click()
        wait_until(lambda: _stat(page, "producer") == "stopped", 30, what="producer stopped")
        page.locator(".cs-btn-stop-sink").click()
        wait_until(lambda: _stat(page, "sink") == "stopped", 60, what="sink stopped")
        rows = _num(page, "rows_inserted")
        assert "Traceback" not in page.content()
        screenshot(page, "workbench")
        page.close()
        server.stop()  # ends the kernel, releasing the store

    assert query_json(own_settings, {})["_count"] == rows
