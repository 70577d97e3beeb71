"""The headline numbers: KPI cards (an estimate marked as one), "complete up to T", the pipeline's stats line, and
the one-row KPI result under the dashboard's keys (pure functions, unit-testable; the dashboard, the workbench and the
report notebook show them)."""

from __future__ import annotations

import html
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import pandas as pd

from .base import _CSS, first_row, format_number

KPI_LABELS: dict[str, str] = {
    "total": "Total interactions",
    "users": "Unique users",
    "items": "Unique items",
    "active_users": "Active users (5 min)",
    "revenue": "Revenue",
}


def kpi_html(
    values: Mapping[str, Any], labels: Mapping[str, str] = KPI_LABELS, estimates: Mapping[str, float] | None = None
) -> str:
    """KPI cards; each number sits in ``<span data-kpi="<key>" data-value="<raw>">`` for tests and scrapers.

    A key in ``estimates`` (its relative error bound, see :func:`kpi_estimates`) is an estimate: shown as
    "≈ 12,345 ±2.4%", with ``data-estimated="true"`` on its span. Every other number is exact.
    """
    cards = []
    for key, label in labels.items():
        if key not in values:
            continue
        value = values[key]
        shown = format_number(value)
        raw = "" if value is None else html.escape(str(value))
        marker = ""
        if estimates and key in estimates:
            shown = f"≈ {shown} <small>±{100 * estimates[key]:.1f}%</small>"
            marker = ' data-estimated="true"'
        cards.append(
            f'<div class="cs-kpi"><div class="cs-label">{html.escape(label)}</div>'
            f'<div class="cs-value"><span data-kpi="{html.escape(key)}" data-value="{raw}"{marker}>{shown}</span>'
            "</div></div>"
        )
    return _CSS + f'<div class="cs-kpis">{"".join(cards)}</div>'


def kpi_estimates(df: pd.DataFrame) -> dict[str, float]:
    """The KPI keys of a ``queries.kpis`` result that are estimates (``source="approx"``), with their error bound."""
    if not df.attrs.get("estimated"):
        return {}
    bound = float(df.attrs.get("error_bound") or 0.0)
    return {"users": bound, "items": bound}


def complete_html(df: pd.DataFrame) -> str:
    """ "complete up to T" from a ``queries.complete_through`` result, in ``<span data-status="complete">``."""
    value = first_row(df).get("complete_through")
    if value is None or pd.isna(value):
        return 'complete up to <span data-status="complete">–</span> (no events stored)'
    text = pd.Timestamp(value).strftime("%Y-%m-%d %H:%M:%S")
    return f'data complete up to <span data-status="complete">{text}</span> UTC'


def stats_html(stats: Mapping[str, Any], title: str) -> str:
    """``key: value`` pairs with ``data-stat`` hooks (pipeline health)."""
    parts = []
    for key, value in stats.items():
        if isinstance(value, Mapping):
            value = ", ".join(f"{k}: {format_number(v)}" for k, v in value.items()) or "none"
            shown = html.escape(value)
        else:
            shown = format_number(value)
        parts.append(f'<span class="cs-stat">{html.escape(key)}: <b data-stat="{html.escape(key)}">{shown}</b></span>')
    return _CSS + f'<div class="cs-status"><b>{html.escape(title)}</b> · ' + " · ".join(parts) + "</div>"


def status_html(fresh_df: pd.DataFrame, complete_through: Any, refresh_s: float, refreshes: int) -> str:
    """The dashboard's status line: when it updated, complete up to when, the last ingest, the newest event, and the
    refresh period with the number of this refresh (each value in a ``data-status`` span)."""
    fresh = first_row(fresh_df)
    lag_s = fresh.get("seconds_since_ingest")
    newest = fresh.get("newest_event_time")
    now = datetime.now(UTC).strftime("%H:%M:%S")
    parts = [f'updated at <span data-status="updated">{now}</span> UTC']
    parts.append(complete_html(pd.DataFrame({"complete_through": [complete_through]})))
    if lag_s is not None and pd.notna(lag_s):
        parts.append(f'last ingest <span data-status="freshness">{float(lag_s):.1f}</span> s ago')
    if newest is not None and pd.notna(newest):
        parts.append(f'newest event <span data-status="newest">{html.escape(str(newest))[:19]}</span>')
    parts.append(f'refresh every {refresh_s:g} s · <span data-status="refreshes">{refreshes}</span>')
    return '<div class="cs-status">' + " · ".join(parts) + "</div>"


PIPELINE_FIGURES = ("producer", "produced_per_s", "sink", "rows_inserted", "ingested_per_s", "dead_letters")


def pipeline_html(stats: Mapping[str, Any]) -> str:
    """The live pipeline's figures (:data:`PIPELINE_FIGURES` of its stats) as the dashboard shows them."""
    return stats_html({key: v for key, v in stats.items() if key in PIPELINE_FIGURES}, "Live pipeline")


def report_kpis(df: pd.DataFrame) -> dict[str, Any]:
    """The one-row result of ``queries.kpis`` under the dashboard's keys: total, users, items, revenue."""
    k = first_row(df)
    return {
        "total": int(k.get("total_interactions") or 0),
        "users": int(k.get("unique_users") or 0),
        "items": int(k.get("unique_items") or 0),
        "revenue": round(float(k.get("revenue") or 0.0), 2),
    }
