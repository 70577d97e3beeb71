"""What the dashboard, the workbench and the report show of alerts: thin reads of ``alert_events`` and backtests."""

from __future__ import annotations

import html
from datetime import timedelta
from pathlib import Path
from typing import Any

import pandas as pd

from ..store import Store
from . import history
from .rules import RuleSet, load_rules, parse_duration
from .runner import backtest

_COLOURS = {"info": "#1f6feb", "warning": "#9a6700", "critical": "#cf222e"}


def firing(store: Store) -> pd.DataFrame:
    """The alerts firing now (recorded in ``alert_events`` and not resolved), newest first."""
    return history.events(store, open_only=True)


def banner_html(store: Store, limit: int = 5) -> str:
    """An HTML banner listing the alerts firing now (empty string when none): for the dashboard's header."""
    df = firing(store)
    if df.empty:
        return ""
    worst = next((s for s in ("critical", "warning", "info") if (df["severity"] == s).any()), "warning")
    items = "".join(f"<li>{html.escape(str(r.message))}</li>" for r in df.head(limit).itertuples(index=False))
    more = f"<li>... and {len(df) - limit} more</li>" if len(df) > limit else ""
    return (
        f'<div class="clickstream-alerts" style="border-left:4px solid {_COLOURS[worst]};padding:4px 8px;'
        f'margin:4px 0"><b>{len(df)} alert(s) firing</b><ul style="margin:2px 0">{items}{more}</ul></div>'
    )


def report(
    store: Store,
    rules: str | Path | RuleSet | None = None,
    *,
    start: Any = None,
    end: Any = None,
    step: str | timedelta = "5m",
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The report's alerts section: (recorded firings in the window, a backtest of ``rules`` over it).

    Without rules, or without both ``start`` and ``end``, the backtest is an empty frame.
    """
    recorded = history.events(store, start=start or None, end=end or None)
    if not rules or not start or not end:
        return recorded, pd.DataFrame()
    rule_set = rules if isinstance(rules, RuleSet) else load_rules(rules)
    step_td = step if isinstance(step, timedelta) else parse_duration(step, "step")
    return recorded, backtest(store, rule_set, start, end, step_td)
