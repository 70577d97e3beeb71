"""The Voila dashboard on the case study's events (``--profile case-study``) in headless Chromium: the experiments
panel equals the ``experiments`` query, and the interaction-type filter offers the data's open types."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import BrowserContext

from clickstream_lib.notebooks import VoilaServer
from clickstream_lib.settings import Settings

from tests.helpers import wait_until

from .conftest import ROOT, env_for, kpi, load_events, screenshot

pytestmark = [pytest.mark.integration, pytest.mark.notebooks]

CASE_STUDY_ONLY_TYPES = ("open_app", "login", "payment_initiated")


def cli_json(settings: Settings, *args: str) -> list[dict[str, Any]]:
    """``clickstream query ARGS --format json`` in its own process (the store is free: no kernel holds it yet)."""
    proc = subprocess.run(
        [sys.executable, "-m", "clickstream_lib", "query", *args, "--format", "json"],
        env=env_for(settings),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return list(json.loads(proc.stdout))


def _panel_rows(page: Any) -> dict[tuple[str, str], dict[str, str]]:
    """Every row of the experiments table on the page: (experiment, variation) -> {column: data-value}."""
    rows = page.evaluate(
        """() => Array.from(document.querySelectorAll('[data-table="experiments"] tr[data-experiment]')).map(tr => ({
            key: [tr.dataset.experiment, tr.dataset.variation],
            cells: Object.fromEntries(Array.from(tr.querySelectorAll('td')).map(td => [td.dataset.col, td.dataset.value])),
        }))"""
    )
    return {tuple(r["key"]): r["cells"] for r in rows}


def test_case_study_dashboard_experiments_panel_and_open_type_filter(
    browser: BrowserContext, own_settings: Settings, tmp_path: Path
) -> None:
    n = load_events(own_settings, 3000, seed=11, profile="case-study")
    experiments = cli_json(own_settings, "experiments")
    open_app = cli_json(own_settings, "kpis", "--param", "interaction_type=open_app")[0]
    assert experiments and open_app["total_interactions"] > 0

    with VoilaServer(own_settings, "dashboard", port=0, params={"refresh_s": 60.0}, log_file=tmp_path / "v.log") as s:
        page = browser.new_page()
        try:
            page.goto(s.url, wait_until="domcontentloaded", timeout=90_000)
            page.locator('[data-kpi="total"]').wait_for(timeout=120_000)
            wait_until(lambda: kpi(page, "total") == n, 60, what="the stored events on the page")

            # The experiments panel: one row per experiment and variation, each number as the query gives it.
            page.locator('.cs-experiments [data-table="experiments"]').wait_for(state="visible", timeout=60_000)
            shown = _panel_rows(page)
            assert set(shown) == {(e["experiment_name"], e["experiment_variation"]) for e in experiments}
            for e in experiments:
                cells = shown[(e["experiment_name"], e["experiment_variation"])]
                assert int(cells["users"]) == e["users"] and int(cells["purchasers"]) == e["purchasers"]
                assert float(cells["conversion_rate"]) == pytest.approx(e["conversion_rate"], rel=1e-12)
                if e["experiment_variation"] == e["control"]:
                    assert cells["diff_vs_control"] == ""
                else:
                    assert float(cells["diff_vs_control"]) == pytest.approx(e["diff_vs_control"], rel=1e-12)
                    assert float(cells["p_value"]) == pytest.approx(e["p_value"], rel=1e-9)
            text = page.locator(".cs-experiments").inner_text()
            assert "95% CI" in text and "p-value" in text and "control" in text
            screenshot(page, "dashboard-experiments")

            # The interaction-type filter lists the types in the data; choosing one narrows the KPIs to the CLI's.
            options = page.locator(".cs-filter-interaction_type select option").all_inner_texts()
            assert set(CASE_STUDY_ONLY_TYPES) <= set(options), options
            page.locator(".cs-filter-interaction_type select").select_option(label="open_app")
            wait_until(lambda: kpi(page, "total") == open_app["total_interactions"], 60, what="the open_app total")
            assert kpi(page, "users") == open_app["unique_users"]
            assert kpi(page, "items") == open_app["unique_items"]
            assert "Traceback" not in page.content()
        finally:
            page.close(run_before_unload=True)
