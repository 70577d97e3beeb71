"""`clickstream report`: papermill runs the report; its numbers equal the named queries' results."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

from playwright.sync_api import Route

import nbformat
import pandas as pd
import pytest

from clickstream_lib import queries
from clickstream_lib.notebooks import recorded
from clickstream_lib.settings import Settings
from clickstream_lib.store import ServedStore, connect
from tests.helpers import wait_until
from tests.integration.owner import start_owner, stop_owner
from tests.integration.sink_worker import worker_env

from .conftest import ARTIFACTS, ROOT, env_for, load_events, query_json

pytestmark = [pytest.mark.integration, pytest.mark.notebooks]

CLI = str(ROOT / ".venv" / "bin" / "clickstream")


def test_report_numbers_equal_the_named_queries(browser: Any, own_settings: Settings, tmp_path: Path) -> None:
    assert load_events(own_settings, 3000) == 3000
    out = tmp_path / "out"
    proc = subprocess.run(
        [
            CLI,
            "report",
            "--param",
            "start=2020-01-01",
            "--param",
            "device=mobile",
            "--param",
            "top_n=5",
            "--out",
            str(out),
        ],
        env=env_for(own_settings),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"html: {out / 'report.html'}" in proc.stdout

    nb = nbformat.read(out / "report.ipynb", as_version=4)
    assert "widgets" not in nb.metadata  # no widget state kept
    got = recorded(nb)
    args = {"start": "2020-01-01", "device": "mobile"}
    want = query_json(
        own_settings,
        {
            "kpis": ("kpis", args),
            "funnel": ("funnel", args),
            "top_items": ("item_performance", {**args, "limit": 5}),
            "retention": ("retention", args),
            "paths": ("paths", {**args, "event": "view", "steps": 4}),
            "cohorts": ("cohorts", {**args, "period": "day"}),
        },
    )
    assert got["kpis"] == want["kpis"]
    assert got["funnel"] == want["funnel"]
    assert got["top_items"] == want["top_items"]
    assert got["retention"] == want["retention"]
    assert got["paths"] == want["paths"] and got["paths"]
    assert got["cohorts"] == want["cohorts"] and got["cohorts"]
    # The filter took effect: mobile is a real share of all events, not all of them and not none.
    assert 0 < got["kpis"]["total"] < want["_count"] == 3000
    assert len(got["top_items"]) == 5
    assert [row["interaction_type"] for row in got["funnel"]] == ["view", "click", "add_to_cart", "purchase"]

    html = (out / "report.html").read_text()
    assert f'data-value="{got["kpis"]["total"]}"' in html
    assert "plotly" in html.lower()  # the charts are there
    assert "queries.run(" not in html and "report_arguments(" not in html  # no code cells
    # The HTML report opens offline: plotly.js travels inside it, so every chart draws with the network cut off.
    page = browser.new_page()
    blocked: list[str] = []

    def block(route: Route) -> None:
        blocked.append(route.request.url)
        route.abort()

    page.route("http*://**", block)
    try:
        page.goto((out / "report.html").as_uri())
        charts = page.locator(".js-plotly-plot")
        page.wait_for_function("document.querySelectorAll('.js-plotly-plot .main-svg').length >= 9", timeout=60_000)
        assert charts.count() == 9  # funnel, paths, activity, retention, top items, four breakdowns
        # The Sankey and the cohort heatmap draw offline too; a screenshot of each goes to the test artifacts.
        sankey = charts.filter(has=page.locator(".sankey"))
        page.wait_for_function("document.querySelectorAll('.sankey .sankey-link').length > 0", timeout=60_000)
        assert "1. view" in (sankey.text_content() or "")
        heatmap = charts.filter(has=page.locator(".heatmaplayer"))
        page.wait_for_function("document.querySelectorAll('.heatmaplayer .hm').length > 0", timeout=60_000)
        assert "(n=" in (heatmap.text_content() or "") and "100.0%" in (heatmap.text_content() or "")
        ARTIFACTS.mkdir(exist_ok=True)
        sankey.screenshot(path=str(ARTIFACTS / "report-sankey.png"))
        heatmap.screenshot(path=str(ARTIFACTS / "report-retention-heatmap.png"))
        # Tables for people: percent and thousands separators, no index column, the bucket said in the title.
        assert "Events over time (per " in html
        cells = page.locator('[data-table="paths"] td').all_inner_texts()
        assert cells and all(c.endswith("%") for c in cells[2::3])  # path, sessions, share: share in percent
    finally:
        page.close()
    assert not [url for url in blocked if "plot" in url], blocked


def test_report_experiments_panel_equals_the_query(own_settings: Settings, tmp_path: Path) -> None:
    """The case study's events (experiments in metadata): the report's A/B panel is the experiments query."""
    assert load_events(own_settings, 3000, profile="case-study") == 3000
    out = tmp_path / "out"
    proc = subprocess.run(
        [CLI, "report", "--param", "interaction_type=", "--out", str(out)],
        env=env_for(own_settings),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = recorded(nbformat.read(out / "report.ipynb", as_version=4))
    want = query_json(own_settings, {"experiments": ("experiments", {})})
    assert got["experiments"] == want["experiments"]
    assert len(got["experiments"]) == 5  # checkout_button: 2 variations, homepage_banner: 3
    assert sum(row["interactions"] for row in got["experiments"]) == 3000
    assert "Conversion rate by variation" in (out / "report.html").read_text()


def test_a_reports_cells_agree_while_the_owner_stores_events(settings: Settings, tmp_path: Path) -> None:
    """`clickstream serve` runs the live pipeline while the report runs: every cell reads the events stored when
    the report started (``report_cut``), so the KPIs' total is each breakdown's sum though more events came since."""
    env = worker_env(settings, tmp_path / "data")
    client = Settings.from_env(env)
    log = tmp_path / "owner.log"
    proc = start_owner(env, "--produce", "--rate", "1500", "--seed", "21", log=log)
    try:
        served = connect(client)
        assert isinstance(served, ServedStore)

        def total() -> int:
            return int(queries.run(served, "kpis", source="raw")["total_interactions"][0])

        wait_until(lambda: total() >= 3000, 120, what="3000 events stored", state=lambda: log.read_text()[-2000:])
        out = tmp_path / "out"
        run = subprocess.run(
            [CLI, "report", "--out", str(out)], env=env, capture_output=True, text=True, timeout=300, check=False
        )
        assert run.returncode == 0, run.stderr[-3000:]
        got = recorded(nbformat.read(out / "report.ipynb", as_version=4))
        shown = got["kpis"]["total"]
        for dim in ("interaction_type", "device", "country", "referrer"):
            assert sum(row["events"] for row in got[f"breakdown_{dim}"]) == shown, (dim, got[f"breakdown_{dim}"])
        assert pd.Timestamp(got["as_of"]) <= pd.Timestamp.now(tz="UTC")  # the cut, recorded
        assert total() > shown > 0  # events were stored while the report ran: the cut is what made them agree
        assert served.pipeline().stats()["sink"] == "running"
        served.close()
    finally:
        assert stop_owner(proc) == 0, log.read_text()[-3000:]


def test_a_failing_report_exits_1_and_keeps_the_executed_notebook(own_settings: Settings, tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = subprocess.run(
        [CLI, "report", "--param", "start=yesterday", "--out", str(out)],
        env=env_for(own_settings),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 1
    assert "not an ISO date" in proc.stderr
    assert str(out / "report.ipynb") in proc.stderr
    assert (out / "report.ipynb").exists() and not (out / "report.html").exists()
