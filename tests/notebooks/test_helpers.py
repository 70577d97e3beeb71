"""Pure-logic units of the notebook helpers (no services)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_notebook, new_output

from clickstream_lib.errors import ConfigError
from clickstream_lib.notebooks import (
    PARAMS_ENV,
    export_html,
    parse_param,
    recorded,
    report_arguments,
    served_parameters,
    settings_env,
    strip_widget_state,
)
from clickstream_lib.settings import Settings
from clickstream_lib.panels.base import message_html, table_html
from clickstream_lib.panels.kpis import kpi_html

from ..conftest import base_env


def test_parse_param_types_values_like_papermill() -> None:
    assert parse_param("top_n=5") == ("top_n", 5)
    assert parse_param("rate=2.5") == ("rate", 2.5)
    assert parse_param("live=true") == ("live", True)
    assert parse_param("device=") == ("device", "")
    assert parse_param("start=2026-11-01") == ("start", "2026-11-01")
    assert parse_param("country=None") == ("country", None)
    with pytest.raises(ConfigError, match="--param"):
        parse_param("no-equals-sign")


def test_served_parameters_override_defaults_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(PARAMS_ENV, raising=False)
    assert served_parameters(refresh_s=5.0, live_pipeline=False) == {"refresh_s": 5.0, "live_pipeline": False}
    monkeypatch.setenv(PARAMS_ENV, json.dumps({"refresh_s": 2, "live_pipeline": True}))
    got = served_parameters(refresh_s=5.0, live_pipeline=False, top_n=10)
    assert got == {"refresh_s": 2.0, "live_pipeline": True, "top_n": 10}
    assert isinstance(got["refresh_s"], float)
    monkeypatch.setenv(PARAMS_ENV, json.dumps({"refresh": 2}))
    with pytest.raises(ConfigError, match="'refresh' is not a parameter"):
        served_parameters(refresh_s=5.0)
    monkeypatch.setenv(PARAMS_ENV, json.dumps({"live_pipeline": "yes"}))
    with pytest.raises(ConfigError, match="true or false"):
        served_parameters(live_pipeline=False)
    monkeypatch.setenv(PARAMS_ENV, "{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        served_parameters(refresh_s=5.0)


def test_settings_env_rebuilds_the_same_settings(tmp_path: Path) -> None:
    s = Settings.from_env(
        base_env(),
        kafka_broker_url="127.0.0.1:19092",
        kafka_topic="t1",
        data_dir=tmp_path,
        clickhouse_database="db_x",
        kafka_partitions=4,
    )
    env = settings_env(s, base_env(KAFKA_TOPIC="stale"))
    assert Settings.from_env(env) == s


def test_report_arguments_turn_empty_strings_into_no_restriction() -> None:
    assert report_arguments("", "", device="", country="DE") == {"country": "DE"}
    got = report_arguments("2026-11-01", "2026-11-02T12:00Z")
    assert got["start"] == datetime(2026, 11, 1, tzinfo=UTC)
    assert got["end"] == datetime(2026, 11, 2, 12, tzinfo=UTC)
    with pytest.raises(ConfigError, match="not an ISO date"):
        report_arguments("yesterday")


def test_strip_widget_state_drops_the_bundle_and_widget_views_but_keeps_other_outputs() -> None:
    nb = new_notebook(
        cells=[
            new_code_cell(
                "fig",
                outputs=[
                    new_output(
                        "display_data",
                        data={
                            "application/vnd.jupyter.widget-view+json": {
                                "model_id": "abc",
                                "version_major": 2,
                                "version_minor": 0,
                            },
                            "text/plain": "FigureWidget(...)",
                        },
                    )
                ],
            ),
            new_code_cell(
                "df", outputs=[new_output("execute_result", data={"text/html": "<table/>"}, execution_count=1)]
            ),
        ]
    )
    nb.metadata["widgets"] = {"application/vnd.jupyter.widget-state+json": {"state": {"x": "5 MB of plotly.js"}}}
    strip_widget_state(nb)
    assert "widgets" not in nb.metadata
    assert nb.cells[0].outputs == []
    assert nb.cells[1].outputs[0]["data"] == {"text/html": "<table/>"}


def test_recorded_reads_json_outputs_and_html_export_hides_code() -> None:
    nb = new_notebook(
        cells=[
            new_code_cell(
                "secret_code_marker = 1",
                outputs=[
                    new_output("display_data", data={"application/json": {"name": "kpis", "value": {"total": 42}}})
                ],
            ),
            new_code_cell("x", outputs=[new_output("display_data", data={"text/html": "<b>visible 42</b>"})]),
        ]
    )
    assert recorded(nb) == {"kpis": {"total": 42}}
    html = export_html(nbformat.from_dict(nb))
    assert "visible 42" in html
    assert "secret_code_marker" not in html


def test_kpi_html_exposes_raw_values_and_escapes_text() -> None:
    html = kpi_html({"total": 12345, "users": 17, "revenue": 12.5})
    assert '<span data-kpi="total" data-value="12345">12,345</span>' in html
    assert 'data-kpi="revenue" data-value="12.5">12.50<' in html
    assert "<script>" not in message_html("&lt;script&gt;")
    import pandas as pd

    table = table_html(pd.DataFrame({"item_id": ["<script>x</script>"], "views": [3]}), "items")
    assert "<script>x" not in table and 'data-table="items"' in table
