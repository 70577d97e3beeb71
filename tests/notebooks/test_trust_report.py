"""Issue #16: the report's figures equal the dashboard's for the same window and filters, number for number.

One store owner (``clickstream serve``) holds the fixed data set of tests/integration/test_trust.py (4 321 events
from 777 users, some without device, country or referrer), sent by a plain kafka-python producer and stored by the
owner's sink. The dashboard refreshes in this process as in Voila; the report runs under papermill as
``clickstream report`` runs it; both reach the store through the owner.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import nbformat
import pytest

from clickstream_lib import queries
from clickstream_lib.notebooks import recorded, run_report
from clickstream_lib.settings import Settings
from clickstream_lib.store import ServedStore, connect
from clickstream_lib.dashboard import Dashboard
from tests.integration.owner import start_owner, stop_owner
from tests.integration.test_trust import END, N_EVENTS, messages, send
from tests.helpers import RunManySpy, wait_until

from .conftest import env_for

pytestmark = [pytest.mark.integration, pytest.mark.notebooks]

DIMS = ("interaction_type", "device", "country", "referrer")
CHART_OF = {"interaction_type": "breakdown", "device": "device", "country": "country", "referrer": "referrer"}


@pytest.fixture
def served(own_settings: Settings, tmp_path: Path) -> Iterator[ServedStore]:
    """The owner of ``own_settings``' directory with its sink, holding the data set once it is stored."""
    proc = start_owner(env_for(own_settings), log=tmp_path / "owner.log")
    try:
        store = connect(own_settings)
        assert isinstance(store, ServedStore)
        send(own_settings, messages())
        wait_until(
            lambda: int(queries.kpis(store, source="raw")["total_interactions"][0]) == N_EVENTS,
            120,
            what="the data set stored by the owner's sink",
        )
        yield store
    finally:
        assert stop_owner(proc) == 0


@pytest.fixture
def spy(monkeypatch: pytest.MonkeyPatch) -> RunManySpy:
    recorder = RunManySpy(queries.run_many)
    monkeypatch.setattr(queries, "run_many", recorder)
    return recorder


def dashboard_numbers(dash: Dashboard) -> dict[str, Any]:
    """What the dashboard shows: the KPI row's values, each breakdown chart's bars, the funnel's steps."""
    kpis = {}
    for key in ("total", "users", "items", "revenue"):
        found = re.search(rf'data-kpi="{key}" data-value="([^"]*)"', dash.kpis.value)
        assert found, dash.kpis.value
        kpis[key] = float(found.group(1)) if key == "revenue" else int(found.group(1))
    bars = {}
    for dim in DIMS:
        trace = dash.figures[CHART_OF[dim]].data[0]
        bars[dim] = {str(label): int(value) for label, value in zip(trace.x, trace.y, strict=True)}
    funnel = [int(v) for v in dash.figures["funnel"].data[0].x]
    return {"kpis": kpis, "breakdowns": bars, "funnel": funnel}


def report_numbers(settings: Settings, out: Path, params: dict[str, Any]) -> dict[str, Any]:
    """What the report (papermill) recorded: KPIs, each breakdown, the funnel's steps."""
    result = run_report(settings, out, params)
    got = recorded(nbformat.read(result.notebook, as_version=4))
    bars = {dim: {str(r[dim]): int(r["events"]) for r in got[f"breakdown_{dim}"]} for dim in DIMS}
    return {"kpis": got["kpis"], "breakdowns": bars, "funnel": [int(r["users"]) for r in got["funnel"]]}


def assert_same(report: dict[str, Any], dashboard: dict[str, Any]) -> None:
    assert report["kpis"] == dashboard["kpis"]
    for dim in DIMS:
        assert report["breakdowns"][dim] == dashboard["breakdowns"][dim], dim
        assert sum(report["breakdowns"][dim].values()) == report["kpis"]["total"], dim
    assert report["funnel"] == dashboard["funnel"] and len(report["funnel"]) == 4


def test_the_report_shows_the_dashboards_numbers(
    served: ServedStore, own_settings: Settings, spy: RunManySpy, tmp_path: Path
) -> None:
    # All time, no filters.
    dash = Dashboard(own_settings)
    dash.refresh()
    shown = dashboard_numbers(dash)
    assert shown["kpis"]["total"] == N_EVENTS and "(none)" in shown["breakdowns"]["device"]
    assert_same(report_numbers(own_settings, tmp_path / "all", {}), shown)

    # A window that starts inside the data (its start as the dashboard computed it), a device and an interaction type:
    # the funnel spans every type in both, as the dashboard's funnel panel does.
    window_s = int((datetime.now(UTC) - (END - timedelta(hours=36))).total_seconds())
    dash = Dashboard(own_settings, window_s=window_s)
    dash.refresh()  # offers the data's devices
    dash.filters.device.value = "mobile"
    dash.filters.interaction_type.value = "view"
    spy.calls.clear()
    dash.refresh()
    (kpi_args, _), *_ = spy.frames()["kpis"]
    assert kpi_args["device"] == "mobile" and kpi_args["interaction_type"] == "view", kpi_args
    shown = dashboard_numbers(dash)
    assert 0 < shown["kpis"]["total"] < N_EVENTS and shown["breakdowns"]["device"].keys() == {"mobile"}
    params = {"start": kpi_args["start"].isoformat(), "device": "mobile", "interaction_type": "view"}
    assert_same(report_numbers(own_settings, tmp_path / "window", params), shown)
