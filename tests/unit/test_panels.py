"""Pure logic of the analytics panels: Sankey links, the cohort heatmap, formatted tables, the time bucket, parsing
of the funnel controls and the list options of the analytics queries."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import numpy as np
import pandas as pd
import pytest

from clickstream_lib import queries
from clickstream_lib.errors import ConfigError, QueryError
from clickstream_lib.panels.analytics import parse_ints, parse_steps
from clickstream_lib.panels.figures import PATH_START, retention_heatmap, sankey_figure, sankey_links
from clickstream_lib.panels.format import auto_bucket, format_table, table_bucket

T0 = datetime(2026, 11, 26, tzinfo=UTC)


def paths_frame(rows: list[tuple[list[str], int]], steps: int) -> pd.DataFrame:
    data: dict[str, list[object]] = {
        f"step_{k + 1}": [p[k] if k < len(p) else None for p, _ in rows] for k in range(steps)
    }
    data["sessions"] = [n for _, n in rows]
    return pd.DataFrame(data)


def test_sankey_links_count_sessions_per_step_and_show_drop_offs() -> None:
    df = paths_frame([(["view", "click", "purchase"], 5), (["view", "click"], 3), (["view"], 2)], 3)
    names, links = sankey_links(df, 3)
    by_name = {(names[s], names[t]): n for (s, t), n in links.items()}
    assert by_name == {
        ("1. view", "2. click"): 8,
        ("2. click", "3. purchase"): 5,
        ("2. click", "3. (end)"): 3,
        ("1. view", "2. (end)"): 2,
    }
    fig = sankey_figure(df, 3)
    assert sum(fig.data[0].link.value) == 18


def test_sankey_before_aligns_paths_on_the_anchor() -> None:
    df = paths_frame([(["click", "add_to_cart", "purchase"], 4), (["purchase"], 1)], 3)
    names, links = sankey_links(df, 3, direction="before")
    by_name = {(names[s], names[t]): n for (s, t), n in links.items()}
    assert by_name == {
        ("1. click", "2. add_to_cart"): 4,
        ("2. add_to_cart", "3. purchase"): 4,
        (f"2. {PATH_START}", "3. purchase"): 1,
    }


def test_empty_sankey_says_so() -> None:
    fig = sankey_figure(paths_frame([], 4), 4)
    assert "no sessions" in fig.layout.annotations[0].text


def test_retention_heatmap_is_a_triangle_in_percent_with_cohort_sizes() -> None:
    d0, d1 = date(2026, 11, 26), date(2026, 11, 27)
    df = pd.DataFrame(
        {
            "cohort": [d0, d0, d1],
            "period_n": [0, 1, 0],
            "users": [40, 10, 8],
            "cohort_size": [40, 40, 8],
            "retention": [1.0, 0.25, 1.0],
        }
    )
    fig = retention_heatmap(df)
    hm = fig.data[0]
    assert list(hm.y) == ["2026-11-26  (n=40)", "2026-11-27  (n=8)"]
    assert list(hm.x) == ["0", "1"]
    assert list(hm.text[0]) == ["100.0%", "25.0%"]
    assert list(hm.text[1]) == ["100.0%", ""]  # day 1 of the last cohort is not observable yet: blank
    assert hm.z[1][1] is None or np.isnan(hm.z[1][1])


def test_format_table_percent_money_counts_and_no_index() -> None:
    df = pd.DataFrame(
        {
            "item_id": ["<b>x</b>", "item_2"],
            "purchases": [1234, 5],
            "revenue": [489799.61, 3.5],
            "conversion": [0.010349, np.nan],
            "retention": [0.364502, 1.0],
        },
        index=[7, 8],
    )
    out = format_table(df, "items")
    assert "489,799.61" in out and "1,234" in out
    assert "1.0%" in out and "36.5%" in out and "100.0%" in out and "–" in out
    assert "0.010349" not in out and "489799.61" not in out
    assert "<b>x</b>" not in out and "&lt;b&gt;x&lt;/b&gt;" in out
    assert ">7<" not in out and ">8<" not in out  # no index column
    assert 'data-table="items"' in out


def test_the_time_bucket_follows_the_range_and_can_be_overridden() -> None:
    assert auto_bucket(T0, T0 + timedelta(hours=1)) == "minute"
    assert auto_bucket(T0, T0 + timedelta(days=7)) == "hour"
    assert auto_bucket(T0, T0 + timedelta(days=60)) == "day"
    assert auto_bucket(T0, T0 + timedelta(days=60), override="minute") == "minute"
    with pytest.raises(ConfigError) as info:
        auto_bucket(T0, T0, override="fortnight")
    assert info.value.variable == "bucket"
    days = pd.DataFrame({"time": pd.to_datetime([T0, T0 + timedelta(days=40)])})
    assert table_bucket(days, None, None) == "day"
    assert table_bucket(days.head(1), None, None) == "hour"


def test_funnel_controls_parse_steps_items_and_windows() -> None:
    assert parse_steps("view, click, purchase@item_0007") == (["view", "click", "purchase"], ["", "", "item_0007"])
    with pytest.raises(ConfigError) as info:
        parse_steps("view")
    assert info.value.variable == "steps"
    assert parse_ints("30, 60", "windows") == [30, 60]
    with pytest.raises(ConfigError) as info:
        parse_ints("30, soon", "windows")
    assert info.value.variable == "windows"


def test_list_options_are_validated() -> None:
    _, q, _ = queries.plan("funnel_steps", "db", steps="view,click", windows_s=60)
    assert q.options["steps"] == ("view", "click") and q.options["windows_s"] == (60,)
    for kwargs, param in (
        ({"steps": ["view", 3]}, "steps"),
        ({"steps": "view"}, "steps"),
        ({"windows_s": [0]}, "windows_s"),
        ({"windows_s": ["x"]}, "windows_s"),
        ({"steps": [f"s{i}" for i in range(9)]}, "steps"),
    ):
        with pytest.raises(QueryError) as info:
            queries.plan("funnel_steps", "db", **kwargs)
        assert info.value.variable == param


def test_the_bucket_mixes_naive_and_aware_times() -> None:
    days = pd.DataFrame({"time": pd.to_datetime(["2026-11-26", "2026-11-27"])})  # naive, as a frame may hold them
    assert table_bucket(days, T0 - timedelta(days=1), None) == "hour"
    assert auto_bucket(datetime(2026, 11, 26), T0 + timedelta(minutes=30)) == "minute"
