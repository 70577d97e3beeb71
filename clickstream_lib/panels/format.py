"""Presentation helpers shared by the dashboard and the report: the time bucket a range calls for, and tables
formatted for people (percentages as percent, money with two decimals and thousands separators, no index)."""

from __future__ import annotations

import html
from datetime import datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd

from ..errors import ConfigError
from ..queries import BUCKETS

# Up to this span, the bucket on the right: an hour of data in minutes, days in hours, months in days.
_BUCKET_SPANS: tuple[tuple[timedelta, str], ...] = (
    (timedelta(hours=6), "minute"),
    (timedelta(days=14), "hour"),
)
PERCENT_COLUMNS = frozenset(
    {
        "share",
        "retention",
        "drop_off",
        "click_through",
        "conversion",
        "conversion_rate",
        "conversion_from_previous",
        "conversion_from_start",
        "diff_vs_control",
        "ci_low",
        "ci_high",
        "bounce_rate",
    }
)
MONEY_COLUMNS = frozenset({"revenue", "price"})


def auto_bucket(start: datetime | None, end: datetime | None, override: str = "") -> str:
    """The timeseries bucket for a range: minute up to 6 hours, hour up to 14 days, day beyond (or ``override``).

    ``start``/``end`` are the range shown (for an open range, the first and last event times).

    Raises:
        ConfigError: ``override`` is not a bucket (names the ``bucket`` parameter).
    """
    if override:
        if override not in BUCKETS:
            raise ConfigError("bucket", f"{override!r} is not one of {', '.join(BUCKETS)} (or empty for automatic)")
        return override
    if start is None or end is None:
        return "hour"
    span = _utc(end) - _utc(start)
    for limit, bucket in _BUCKET_SPANS:
        if span <= limit:
            return bucket
    return "day"


def _utc(value: datetime) -> pd.Timestamp:
    ts = pd.Timestamp(value)
    return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")


def table_bucket(days: pd.DataFrame, start: datetime | None, end: datetime | None, override: str = "") -> str:
    """:func:`auto_bucket` where an open end of the range is taken from ``days`` (a ``timeseries`` frame by day)."""
    if (start is None or end is None) and days is not None and len(days):
        first, last = pd.Timestamp(days["time"].min()), pd.Timestamp(days["time"].max()) + pd.Timedelta(days=1)
        start = start or first.to_pydatetime()
        end = end or last.to_pydatetime()
    return auto_bucket(start, end, override)


def _cell(column: str, value: Any) -> str:
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return "–"
    if column in PERCENT_COLUMNS and isinstance(value, (int, float)):
        return f"{float(value) * 100:.1f}%"
    if column in MONEY_COLUMNS and isinstance(value, (int, float)):
        return f"{float(value):,.2f}"
    if column == "p_value" and isinstance(value, float):
        return f"{value:.4f}"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:,.0f}" if value.is_integer() and abs(value) >= 1 else f"{value:,.2f}"
    if isinstance(value, pd.Timestamp):
        return str(value.strftime("%Y-%m-%d %H:%M") if (value.hour or value.minute) else value.strftime("%Y-%m-%d"))
    return html.escape(str(value))


def format_table(df: pd.DataFrame, hook: str = "table", max_rows: int = 50) -> str:
    """An HTML table of ``df`` for people: percent columns as ``36.5%``, money as ``489,799.61``, counts with
    thousands separators, no index column; every cell escaped. ``data-table="<hook>"`` marks it."""
    if df is None or df.empty:
        return f'<div class="cs-table" data-table="{html.escape(hook)}"><i>no rows</i></div>'
    head = "".join(f"<th>{html.escape(str(c).replace('_', ' '))}</th>" for c in df.columns)
    rows = []
    for rec in df.head(max_rows).itertuples(index=False, name=None):
        cells = "".join(
            f"<td>{_cell(str(c), v.item() if isinstance(v, np.generic) else v)}</td>"
            for c, v in zip(df.columns, rec, strict=True)
        )
        rows.append(f"<tr>{cells}</tr>")
    style = (
        "<style>.cs-ftable table{border-collapse:collapse;font-size:12px}"
        ".cs-ftable td,.cs-ftable th{padding:2px 8px;border-bottom:1px solid #eee;text-align:right}</style>"
    )
    return (
        f'{style}<div class="cs-table cs-ftable" data-table="{html.escape(hook)}"><table>'
        f"<thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table></div>"
    )
