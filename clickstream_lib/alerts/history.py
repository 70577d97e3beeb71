"""The ``alert_events`` and ``alert_pending`` tables: firings, resolutions, and keys waiting out a rule's ``for``.

``alert_events`` has one row per firing, keyed by (rule, key, fired_at). A resolution re-inserts that row with
``resolved_at`` set and a newer ``updated_at`` (a ReplacingMergeTree), so reads use ``FINAL`` — the table holds a
row per firing, small. ``alert_pending`` has one row per rule and key with ``for``: since when its condition holds
(NULL: it does not), so a cron ``alerts check`` sees where the previous run left off.

A client of an owner (``clickstream serve``) cannot insert; it hands the rows to the owner's ``alerts.record``
action, which writes only these two tables (:func:`write_rows`).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import pandas as pd
from clickhouse_connect.driver.exceptions import ClickHouseError

from .. import schema
from ..errors import StoreError
from ..queries import _as_utc
from ..store import ServedStore, Store, empty_frame, store_error
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
    return _insert(store, "alert_events", rows, COLUMNS)


PENDING_COLUMNS: tuple[str, ...] = schema.ALERT_PENDING.column_names
RECORDED_TABLES = {t.name: t for t in schema.ALERT_TABLES}


def record_pending(store: Store, changes: Sequence[tuple[str, str, datetime | None]], at: datetime) -> int:
    """Store (rule, key, pending_since) changes seen at ``at`` (pending_since None: no longer pending)."""
    if not changes:
        return 0
    rule, key, since = (list(c) for c in zip(*changes, strict=True))
    return _insert(store, "alert_pending", [rule, key, since, [at] * len(rule)], PENDING_COLUMNS)


def _insert(store: Store, table: str, rows: list[list[Any]], columns: Sequence[str]) -> int:
    if isinstance(store, ServedStore):  # the owner writes; its clients read only
        answer = store.action("alerts.record", {"table": table, "columns": list(columns), "rows": to_json(rows)})
        return int(answer["rows"])
    return store.insert(table, rows, columns)


def to_json(rows: list[list[Any]]) -> list[list[Any]]:
    return [[v.isoformat() if isinstance(v, datetime) else v for v in col] for col in rows]


def write_rows(store: Store, table: str, columns: Sequence[str], rows: list[list[Any]]) -> int:
    """The owner's side of ``alerts.record``: columnar rows from JSON into ``alert_events`` or ``alert_pending``.

    Raises:
        StoreError: another table, other columns, or columns of different lengths.
    """
    spec = RECORDED_TABLES.get(table)
    if spec is None or list(columns) != list(spec.column_names) or len(rows) != len(columns):
        raise StoreError(f"alerts.record writes the columns of {' or '.join(RECORDED_TABLES)} only")
    if len({len(col) for col in rows}) > 1:
        raise StoreError("alerts.record: columns of different lengths")
    typed = []
    for (_, ctype), col in zip(spec.columns, rows, strict=True):
        if "DateTime64" in ctype:
            col = [None if v is None else _as_utc(v, "time") for v in col]
        typed.append(col)
    return store.insert(table, typed, columns)


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
        # Through an owner (Arrow -> pandas) a NULL time arrives as NaT and a NULL number as NaN, not None.
        resolved = None if resolved_at is None or pd.isna(resolved_at) else _utc(resolved_at)
        base = None if baseline is None or pd.isna(baseline) else float(baseline)
        engine.restore(rule, key, _utc(fired_at), resolved, float(value), base)
        still_open += resolved is None
    return still_open


def restore_pending(store: Store, engine: Engine, rules: Sequence[str]) -> int:
    """Load the keys still pending (waiting out their rule's ``for``) into ``engine``; returns how many."""
    if not rules:
        return 0
    sql = (
        f"SELECT rule, key, pending_since FROM {store.table('alert_pending')} FINAL "
        "WHERE rule IN {rules:Array(String)} AND pending_since IS NOT NULL"
    )
    try:
        rows = store.query_rows(sql, {"rules": list(rules)})
    except ClickHouseError as exc:
        raise store_error(exc, "reading alert_pending", store.settings) from exc
    for rule, key, since in rows:
        engine.restore_pending(rule, key, _utc(since))  # never NULL: the query leaves those out
    return len(rows)


def _utc(t: datetime) -> datetime:
    return pd.Timestamp(t).tz_localize("UTC").to_pydatetime() if pd.Timestamp(t).tz is None else t
