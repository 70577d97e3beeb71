"""Issue #16 in headless Chromium: the dashboard shows exact numbers, "≈" only when asked, and reconciles."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from clickstream_lib.notebooks import VoilaServer
from clickstream_lib.settings import Settings
from tests.integration.test_trust import END, N_EVENTS, N_USERS, messages, send

from tests.helpers import wait_until

from .conftest import kpi, run_python, screenshot

pytestmark = [pytest.mark.integration, pytest.mark.notebooks]

SINK = """
import json
from clickstream_lib.sink import Sink
from clickstream_lib.settings import Settings
from clickstream_lib.store import connect
settings = Settings.from_env()
store = connect(settings)
stats = Sink(settings, store).run(max_events={n})
print(json.dumps({{"rows": stats.rows_inserted}}))
"""


def _text(page: Any, selector: str) -> str:
    return str(page.locator(selector).first.inner_text())


def test_dashboard_shows_exactly_777_users_and_estimates_only_when_asked(
    browser: Any, own_settings: Settings, tmp_path: Path
) -> None:
    sent = messages()
    send(own_settings, sent)  # a plain kafka-python producer
    assert run_python(own_settings, SINK.format(n=len(sent))) == {"rows": N_EVENTS}

    with VoilaServer(own_settings, "dashboard", port=0, log_file=tmp_path / "voila.log") as server:
        page = browser.new_page()
        try:
            page.goto(server.url, wait_until="domcontentloaded", timeout=90_000)
            page.locator('[data-kpi="users"]').wait_for(timeout=120_000)
            wait_until(lambda: kpi(page, "total") == N_EVENTS, 60, what="every event on the page")
            assert kpi(page, "users") == N_USERS
            assert _text(page, '[data-kpi="users"]') == f"{N_USERS}"
            assert "≈" not in _text(page, ".cs-kpis") and page.locator("[data-estimated]").count() == 0
            complete = _text(page, '[data-status="complete"]')
            assert complete < END.strftime("%Y-%m-%d %H:%M:%S")
            # Events without a device show as "(none)", offered as a filter value too.
            wait_until(lambda: "(none)" in page.locator(".cs-filter-device select option").all_inner_texts(), 60)
            screenshot(page, "dashboard-exact")

            page.locator(".cs-toggle-approx input").check()
            wait_until(lambda: page.locator('[data-kpi="users"][data-estimated="true"]').count() == 1, 60)
            shown = _text(page, '[data-kpi="users"]')
            assert shown.startswith("≈ ") and "±" in shown and "%" in shown
            assert page.locator('[data-kpi="total"][data-estimated]').count() == 0  # counts stay exact
            screenshot(page, "dashboard-approx")
            page.locator(".cs-toggle-approx input").uncheck()
            wait_until(lambda: page.locator("[data-estimated]").count() == 0, 60, what="exact numbers again")
            assert kpi(page, "users") == N_USERS

            page.locator(".cs-btn-reconcile").click()
            page.locator('[data-reconcile="verdict"]').wait_for(timeout=60_000)
            assert _text(page, '[data-reconcile="verdict"]') == "balanced"
            assert _text(page, '[data-reconcile="in_kafka"]') == f"{N_EVENTS:,}"
            assert _text(page, '[data-reconcile="rows_stored"]') == f"{N_EVENTS:,}"
            assert "Traceback" not in page.content()
        finally:
            page.close(run_before_unload=True)
