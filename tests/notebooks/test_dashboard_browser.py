"""The Voila dashboard in headless Chromium, against the real broker and the real ClickHouse engine."""

from __future__ import annotations

from pathlib import Path

import pytest
from playwright.sync_api import BrowserContext, Page

from clickstream_lib.notebooks import VoilaServer
from clickstream_lib.settings import Settings
from clickstream_lib.store import Store

from tests.helpers import wait_until

from .conftest import ARTIFACTS, kpi, query_json, screenshot

pytestmark = [pytest.mark.integration, pytest.mark.notebooks]


def test_second_viewer_of_an_embedded_store_gets_a_clear_message(
    browser: BrowserContext, settings: Settings, store: Store, tmp_path: Path
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


def _select(page: Page, hook: str, label: str) -> None:
    page.locator(f".cs-filter-{hook} select").select_option(label=label)


def _chart_sum(page: Page, name: str) -> float:
    """Sum of the first trace's y values in the chart as plotly drew it on the page."""
    return float(
        page.evaluate(
            """name => {
            const el = Array.from(document.querySelectorAll(`.cs-chart-${name} .js-plotly-plot`)).find(e => e.data);
            return el ? el.data[0].y.reduce((a, b) => a + b, 0) : -1;
        }""",
            name,
        )
    )


def _options(page: Page, hook: str) -> list[str]:
    return page.locator(f".cs-filter-{hook} select option").all_inner_texts()


def test_live_dashboard_in_chromium(browser: BrowserContext, own_settings: Settings, tmp_path: Path) -> None:
    """Charts render; the KPIs grow with each refresh; a filter changes the panels; the numbers equal SQL counts;
    closing the tab ends the kernel and frees the embedded store."""
    params = {"live_pipeline": True, "rate": 400.0, "refresh_s": 1.5}
    with VoilaServer(own_settings, "dashboard", port=0, params=params, log_file=tmp_path / "voila.log") as server:
        page = browser.new_page()
        page.goto(server.url, wait_until="domcontentloaded", timeout=90_000)
        page.locator('[data-kpi="total"]').wait_for(timeout=120_000)
        page.locator(".cs-dashboard .jp-RenderedPlotly").first.wait_for(timeout=60_000)
        # 8 + Sankey, funnel and retention; the mime renderer draws them one by one
        wait_until(lambda: page.locator(".cs-dashboard .jp-RenderedPlotly").count() == 11, 60, what="11 charts")
        assert "Traceback" not in page.content()

        # Live: the page refreshes itself and the totals grow.
        first = wait_until(lambda: kpi(page, "total"), 60, what="first events on the page")
        wait_until(lambda: kpi(page, "total") > first, 60, what="the total to grow on a refresh")
        assert kpi(page, "users") > 0 and kpi(page, "items") > 0
        assert page.locator('[data-status="updated"]').inner_text()
        screenshot(page, "dashboard-live")

        # Pause the pipeline so the numbers hold still, then compare them with the store after the kernel is gone.
        page.locator(".cs-btn-pause").click()
        wait_until(lambda: page.locator('[data-stat="sink"]').inner_text() == "stopped", 60, what="pipeline paused")
        stable = kpi(page, "total")
        page.wait_for_timeout(3500)  # two refresh periods
        assert kpi(page, "total") == stable
        assert _chart_sum(page, "breakdown") == stable  # the chart drawn on the page holds the same events

        # A filter changes the panels: the device filter offers the devices seen, and narrows every number.
        wait_until(lambda: len(_options(page, "device")) > 1, 30, what="device choices")
        device = _options(page, "device")[1]
        _select(page, "device", device)
        wait_until(lambda: kpi(page, "total") < stable, 30, what="the filtered total")
        filtered = kpi(page, "total")
        assert filtered > 0
        page.wait_for_timeout(3500)  # later refreshes keep the filter
        assert kpi(page, "total") == filtered
        assert page.locator(".cs-filter-device select").input_value() == device
        assert _chart_sum(page, "breakdown") == filtered
        screenshot(page, "dashboard-filtered")
        _analytics_render(page, "dashboard")
        _select(page, "device", "All")
        wait_until(lambda: kpi(page, "total") == stable, 30, what="the unfiltered total again")

        kernels = server.kernel_pids()
        assert kernels, "a kernel serves the page"
        # Like a closed tab: beforeunload sends Voila's shutdown beacon (XSRF check disabled on loopback).
        page.close(run_before_unload=True)
        wait_until(lambda: not any(_alive(pid) for pid in kernels), 60, what="the kernel to exit after the tab closed")

    counts = query_json(own_settings, {"mobile": ("kpis", {"device": device})})
    assert counts["_count"] == stable
    assert counts["mobile"]["total"] == filtered


def _analytics_render(page: Page, prefix: str) -> None:
    """The paths Sankey (nodes and links drawn) and the retention heatmap (cells in percent, cohort sizes) are on the
    page; a screenshot of each goes to the test artifacts."""
    sankey = page.locator(".cs-chart-sankey .js-plotly-plot")
    page.wait_for_function(
        "document.querySelectorAll('.cs-chart-sankey .sankey .sankey-link').length > 0", timeout=60_000
    )
    assert page.locator(".cs-chart-sankey .sankey .sankey-node").count() >= 3
    assert "1. view" in (sankey.text_content() or "")
    heatmap = page.locator(".cs-chart-retention .js-plotly-plot")
    page.wait_for_function("document.querySelectorAll('.cs-chart-retention .heatmaplayer .hm').length > 0", timeout=60_000)
    assert "(n=" in (heatmap.text_content() or "") and "100.0%" in (heatmap.text_content() or "")
    ARTIFACTS.mkdir(exist_ok=True)
    sankey.scroll_into_view_if_needed()
    sankey.screenshot(path=str(ARTIFACTS / f"{prefix}-sankey.png"))
    heatmap.scroll_into_view_if_needed()
    heatmap.screenshot(path=str(ARTIFACTS / f"{prefix}-retention-heatmap.png"))


def _alive(pid: int) -> bool:
    import psutil

    try:
        return bool(psutil.Process(pid).status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False


def test_an_empty_store_shows_a_friendly_message(browser: BrowserContext, own_settings: Settings, tmp_path: Path) -> None:
    with VoilaServer(own_settings, "dashboard", port=0, log_file=tmp_path / "voila.log") as server:
        page = browser.new_page()
        try:
            page.goto(server.url, wait_until="domcontentloaded", timeout=90_000)
            msg = page.locator('[data-message="empty"]')
            msg.wait_for(timeout=90_000)
            assert "No events yet" in msg.inner_text() and "clickstream demo" in msg.inner_text()
            assert kpi(page, "total") == 0
            # empty charts, not errors
            wait_until(lambda: page.locator(".cs-dashboard .jp-RenderedPlotly").count() == 11, 60, what="11 charts")
            assert page.locator(".cs-experiments").count() == 1 and not page.locator(".cs-experiments").is_visible()
            assert "Traceback" not in page.content() and 'data-message="error"' not in page.content()
        finally:
            page.close(run_before_unload=True)
