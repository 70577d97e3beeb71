"""Pure logic of issue #16's presentation: estimate markers, the partial last bucket, reconciliation totals."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pandas as pd
import plotly.graph_objects as go
import pytest

from clickstream_lib import queries
from clickstream_lib.errors import QueryError
from clickstream_lib.panels.figures import mark_partial, partial_bucket
from clickstream_lib.panels.kpis import complete_html, kpi_estimates, kpi_html
from clickstream_lib.panels.reconcile import producer_acks, reconcile_html, totals


def test_exact_kpis_carry_no_estimate_marker_and_estimates_show_their_bound() -> None:
    values = {"total": 4321, "users": 777, "items": 61}
    exact = kpi_html(values)
    assert "≈" not in exact and "data-estimated" not in exact and ">777<" in exact
    marked = kpi_html(values, estimates={"users": 0.024})
    assert '<span data-kpi="users" data-value="777" data-estimated="true">≈ 777 <small>±2.4%</small>' in marked
    assert '<span data-kpi="total" data-value="4321">4,321</span>' in marked


def test_kpi_estimates_follow_the_query_attrs() -> None:
    df = pd.DataFrame({"unique_users": [5]})
    df.attrs.update(estimated=False, error_bound=0.0)
    assert kpi_estimates(df) == {}
    df.attrs.update(estimated=True, error_bound=0.0488)
    assert kpi_estimates(df) == {"users": 0.0488, "items": 0.0488}


def test_the_last_bucket_is_partial_only_when_it_ends_after_complete_through() -> None:
    times = pd.to_datetime(["2026-11-29T10:00Z", "2026-11-29T10:01Z", "2026-11-29T10:02Z"], utc=True)
    df = pd.DataFrame({"time": times, "interaction_type": ["view"] * 3, "events": [3, 4, 1]})
    assert partial_bucket(df, pd.Timestamp("2026-11-29T10:02:30Z"), 60) == (
        pd.Timestamp("2026-11-29T10:02Z"),
        pd.Timestamp("2026-11-29T10:03Z"),
    )
    assert partial_bucket(df, pd.Timestamp("2026-11-29T10:03:00Z"), 60) is None
    assert partial_bucket(df, None, 60) is None
    assert partial_bucket(df.iloc[:0], pd.Timestamp("2026-11-29T10:00Z"), 60) is None
    fig = go.Figure()
    mark_partial(fig, partial_bucket(df, pd.Timestamp("2026-11-29T10:02:30Z"), 60))
    (shape,) = fig.layout.shapes
    assert shape.type == "rect" and shape.x0.startswith("2026-11-29T10:02")
    assert fig.layout.annotations[0].text == "partial"
    mark_partial(fig, None)
    assert not fig.layout.shapes


def test_complete_html_names_the_time_or_says_there_is_none() -> None:
    got = complete_html(pd.DataFrame({"complete_through": [pd.Timestamp("2026-11-29T23:59:14.5Z")]}))
    assert '<span data-status="complete">2026-11-29 23:59:14</span> UTC' in got
    assert "no events stored" in complete_html(pd.DataFrame({"complete_through": [None]}))


def test_reconcile_totals_balance_only_when_every_offset_is_stored_once() -> None:
    df = pd.DataFrame(
        {
            "partition": [0, 1],
            "log_start": [0, 0],
            "high_watermark": [10, 5],
            "committed": [10, 5],
            "rows_stored": [9, 5],
            "dead_letters": [1, 0],
            "duplicates": [0, 0],
            "missing": [0, 0],
            "lag": [0, 0],
            "balanced": [True, True],
        }
    )
    assert totals(df, produced=15) == {
        "in_kafka": 15,
        "rows_stored": 14,
        "dead_letters": 1,
        "duplicates": 0,
        "missing": 0,
        "lag": 0,
        "producer_acked": 15,
        "acked_not_in_kafka": 0,
        "balanced": True,
    }
    assert not totals(df, produced=16)["balanced"]  # the producer had one acknowledged that Kafka does not hold
    html = reconcile_html(df, totals(df))
    assert '<b data-reconcile="verdict">balanced</b>' in html and 'data-reconcile="in_kafka">15<' in html


def test_none_label_selects_empty_values_and_approx_is_a_source() -> None:
    _, q, sql = queries.plan("kpis", "db", device=queries.NONE_LABEL, source="approx")
    assert q.params["f_device"] == "" and "uniqCombinedMerge(12)(users)" in sql
    assert q.error_bound == 3 * 1.04 / 64  # three standard errors of uniqCombined(12)
    _, q, sql = queries.plan("kpis", "db", interaction_type="view", source="approx", start="2026-11-29T10:00:01Z")
    assert "uniqExact(user_id)" in sql and q.error_bound == 0  # no rollup answers: exact even when asked
    _, q, sql = queries.plan("breakdown", "db", by="country")
    assert q.params["none_label"] == queries.NONE_LABEL and "'(none)'" not in sql  # bound, not formatted
    _, q, sql = queries.plan("kpis", "db", source="approx")
    assert "uniqCombinedMerge(14)(users)" in sql and q.error_bound > 0
    _, q, sql = queries.plan("kpis", "db")
    assert "uniqExactMerge(users_exact)" in sql and q.error_bound == 0


def test_reconcile_totals_take_the_producers_acks_per_partition() -> None:
    df = pd.DataFrame(
        {
            "partition": [0, 1],
            "log_start": [0, 0],
            "high_watermark": [10, 5],
            "producer_acked": [10, 4],
            "committed": [10, 5],
            "rows_stored": [10, 5],
            "dead_letters": [0, 0],
            "duplicates": [0, 0],
            "missing": [0, 0],
            "lag": [0, 0],
            "balanced": [True, True],
        }
    )
    got = totals(df)
    assert (got["producer_acked"], got["acked_not_in_kafka"], got["balanced"]) == (14, -1, False)
    html = reconcile_html(df, got)
    assert "<th>producer_acked</th>" in html and 'data-reconcile="producer_acked">14<' in html
    assert producer_acks({"acked": 14, "acked_by_partition": {"0": 10, "1": 4}}) == {"0": 10, "1": 4}
    assert producer_acks({"acked": 14}) == 14 and producer_acks(None) is None


def test_as_of_cuts_raw_events_at_one_ingest_time() -> None:
    cut = "2026-11-29T10:00:00.250Z"
    _, q, sql = queries.plan("kpis", "db", as_of=cut)
    assert q.used == "raw" and "uniqExact(user_id)" in sql
    assert "ingest_time <= fromUnixTimestamp64Milli({as_of_ms:Int64}, 'UTC')" in sql
    assert q.params["as_of_ms"] == int(datetime(2026, 11, 29, 10, tzinfo=UTC).timestamp()) * 1000 + 250
    _, q, sql = queries.plan("funnel", "db", as_of=cut)  # the by_user projection has no ingest_time: not forced
    assert "ingest_time <=" in sql and "force_optimize_projection" not in sql
    _, q, sql = queries.plan("kpis", "db", as_of=cut, source="approx")  # estimates come from a rollup, uncut
    assert q.used != "raw" and "ingest_time" not in sql
    with pytest.raises(QueryError, match="as_of"):
        queries.plan("kpis", "db", as_of=cut, source="rollup")
    with pytest.raises(QueryError, match="as_of"):
        queries.plan("kpis", "db", as_of="yesterday")


def test_active_users_stay_within_the_window_start() -> None:
    now = datetime(2026, 11, 29, 10, 0, tzinfo=UTC)
    now_ms = int(now.timestamp()) * 1000
    _, q, _ = queries.plan("active_users", "db", minutes=5, now=now)
    assert q.start_ms == now_ms - 300_000 and q.end_ms is None
    _, q, _ = queries.plan("active_users", "db", minutes=5, now=now, since=now - timedelta(minutes=1))
    assert q.start_ms == now_ms - 60_000
    _, q, _ = queries.plan("active_users", "db", minutes=5, now=now, since=now - timedelta(hours=1))
    assert q.start_ms == now_ms - 300_000
