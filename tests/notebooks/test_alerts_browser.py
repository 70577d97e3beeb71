"""The dashboard's alert banner in headless Chromium: a firing rule shows it, in-process and through an owner."""

from __future__ import annotations

from typing import Any

import subprocess
import sys
from pathlib import Path

import pytest
from playwright.sync_api import BrowserContext

from clickstream_lib.notebooks import VoilaServer
from clickstream_lib.settings import Settings
from tests.integration.alert_helpers import CASE_STUDY_RULE, ITEM, SALE_END, T0
from tests.integration.owner import start_owner, stop_owner

from .conftest import ROOT, env_for, screenshot

pytestmark = [pytest.mark.integration, pytest.mark.notebooks]

AT = (T0 + (SALE_END - T0) / 2).isoformat()  # mid-sale: the case study's rule fires for ITEM


def _banner_text(server: VoilaServer, browser: BrowserContext) -> str:
    page = browser.new_page()
    try:
        page.goto(server.url, wait_until="domcontentloaded", timeout=90_000)
        page.locator('[data-kpi="total"]').wait_for(timeout=120_000)
        banner = page.locator(".cs-alerts-banner .clickstream-alerts")
        banner.wait_for(timeout=60_000)
        assert "Traceback" not in page.content()
        screenshot(page, "dashboard-alert-banner")
        return str(banner.inner_text())
    finally:
        page.close(run_before_unload=True)


def test_a_firing_rule_shows_the_banner(browser: BrowserContext, own_settings: Settings, tmp_path: Path) -> None:
    env = {**env_for(own_settings), "PYTHONPATH": str(ROOT)}
    run: dict[str, Any] = {"env": env, "cwd": ROOT, "timeout": 300, "capture_output": True, "text": True}
    fill = subprocess.run([sys.executable, "-m", "tests.integration.alert_helpers", "fill", "spike"], **run)
    assert fill.returncode == 0, fill.stderr[-3000:]
    rules = tmp_path / "alerts.toml"
    rules.write_text(CASE_STUDY_RULE)
    check = [sys.executable, "-m", "clickstream_lib", "alerts", "check", "--rules", str(rules), "--at", AT]
    fired = subprocess.run([*check, "--no-deliver"], **run)
    assert fired.returncode == 1, fired.stdout + fired.stderr  # recorded in alert_events, still firing

    with VoilaServer(own_settings, "dashboard", port=0, log_file=tmp_path / "voila.log") as server:
        text = _banner_text(server, browser)
    assert "1 alert(s) firing" in text and f"item purchase spike [item_id={ITEM}]" in text and "[critical]" in text

    # Served: the dashboard's kernel reads alert_events through the owner.
    owner = start_owner(env, "--no-sink", log=tmp_path / "owner.log")
    try:
        with VoilaServer(own_settings, "dashboard", port=0, log_file=tmp_path / "voila-served.log") as server:
            text = _banner_text(server, browser)
    finally:
        assert stop_owner(owner) == 0
    assert "1 alert(s) firing" in text and f"item purchase spike [item_id={ITEM}]" in text
