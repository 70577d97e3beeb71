"""The ``alert_events`` table: every firing and resolution, and what the dashboard and reports read from it.

One row per firing, keyed by (rule, key, fired_at). A resolution re-inserts that row with ``resolved_at`` set and a
newer ``updated_at`` (a ReplacingMergeTree), so reads use ``FINAL`` — the table holds a row per firing, small.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import pandas as pd
from clickhouse_connect.driver.exceptions import ClickHouseError

from ..queries import _as_utc
from ..store import Store, empty_frame, store_error
from .engine import FIRED, Engine, Transition
from .format import text

COLUMNS: tuple[str, ...] = (
    "rule",
    "key",
    "severity",
    "kind",
    "value",
    "baseline",
    "fired_at",
    "resolved_at",
    "message",
    "updated_at",
)


def _nan_to_none(x: float | None) -> float | None:
    return None if x is None or x != x else float(x)


def record(store: Store, transitions: Sequence[Transition]) -> int:
    """Store firings and resolutions; returns rows written.

    Raises:
        StoreError: ClickHouse failed.
    """
    if not transitions:
        return 0
    rows: list[list[Any]] = [[] for _ in COLUMNS]
    for t in transitions:
        # The row keeps what fired; a resolution only adds resolved_at.
        value = _nan_to_none(t.value if t.kind == FIRED else t.fired_value)
        baseline = t.baseline if t.kind == FIRED else t.fired_baseline
        for col, v in zip(
            rows,
            (
                t.rule.name,
                t.key,
                t.rule.severity,
                t.rule.kind,
                0.0 if value is None else value,
                _nan_to_none(baseline),
                t.fired_at,
                t.resolved_at,
                text(t),
                t.at,
            ),
            strict=True,
        ):
            col.append(v)
    return store.insert("alert_events", rows, COLUMNS)


def events(store: Store, *, start: Any = None, end: Any = None, open_only: bool = False) -> pd.DataFrame:
    """Firings (with their resolution, if any) fired in ``[start, end)``, newest first.

    Columns: rule, key, severity, kind, value, baseline, fired_at, resolved_at, message.
    """
    conds, params = [], {}
    for name, value, op in (("start", start, ">="), ("end", end, "<")):
        if value is not None:
            conds.append(f"fired_at {op} fromUnixTimestamp64Milli({{{name}:Int64}}, 'UTC')")
            params[name] = int(_as_utc(value, name).timestamp() * 1000)
    if open_only:
        conds.append("resolved_at IS NULL")
    where = f"WHERE {' AND '.join(conds)}" if conds else ""
    sql = (
        f"SELECT {', '.join(COLUMNS[:-1])} FROM {store.table('alert_events')} FINAL {where} "
        "ORDER BY fired_at DESC, rule, key"
    )
    try:
        df = store.query_df(sql, params)
        if df.columns.empty:
            df = empty_frame(store.query_rows(f"DESCRIBE ({sql})", params))
    except ClickHouseError as exc:
        raise store_error(exc, "reading alert_events", store.settings) from exc
    for col in ("fired_at", "resolved_at"):
        df[col] = pd.to_datetime(df[col], utc=True)
    return df


def restore(store: Store, engine: Engine, rules: Sequence[str]) -> int:
    """Load the latest firing of each rule and key into ``engine``; returns how many are still open."""
    if not rules:
        return 0
    sql = (
        "SELECT rule, key, argMax(fired_at, fired_at), argMax(resolved_at, fired_at), argMax(value, fired_at), "
        f"argMax(baseline, fired_at) FROM {store.table('alert_events')} FINAL "
        "WHERE rule IN {rules:Array(String)} GROUP BY rule, key"
    )
    try:
        rows = store.query_rows(sql, {"rules": list(rules)})
    except ClickHouseError as exc:
        raise store_error(exc, "reading alert_events", store.settings) from exc
    still_open = 0
    for rule, key, fired_at, resolved_at, value, baseline in rows:
        engine.restore(rule, key, _utc(fired_at), _utc(resolved_at) if resolved_at else None, value, baseline)
        still_open += resolved_at is None
    return still_open


def _utc(t: datetime) -> datetime:
    return pd.Timestamp(t).tz_localize("UTC").to_pydatetime() if pd.Timestamp(t).tz is None else t
