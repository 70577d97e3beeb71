"""The Voila dashboard in headless Chromium, against the real broker and the real ClickHouse engine."""

from __future__ import annotations

from pathlib import Path

import pytest

from clickstream_lib.notebooks import VoilaServer
from clickstream_lib.settings import Settings
from clickstream_lib.store import Store

from .conftest import screenshot

pytestmark = [pytest.mark.integration, pytest.mark.notebooks]


def test_second_viewer_of_an_embedded_store_gets_a_clear_message(
    browser, settings: Settings, store: Store, tmp_path: Path
) -> None:
    # This pytest process holds the embedded store (the `store` fixture), exactly as a first viewer's kernel would.
    with VoilaServer(settings, "dashboard", port=0, log_file=tmp_path / "voila.log") as server:
        page = browser.new_page()
        try:
            page.goto(server.url, wait_until="domcontentloaded", timeout=90_000)
            msg = page.locator('[data-message="store-locked"]')
            msg.wait_for(timeout=90_000)
            text = msg.inner_text()
            assert "already open in another tab or process" in text
            assert "CLICKHOUSE_URL" in text
            assert str(Path(settings.data_dir) / "chdb") in text
            # No traceback reaches the page.
            assert "Traceback" not in page.content()
            screenshot(page, "dashboard-store-locked")
        finally:
            page.close()
