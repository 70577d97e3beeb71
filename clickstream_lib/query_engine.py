"""The machinery of named queries: parameters, filters, the choice between rollups and raw events, and running a
query with bound parameters. The queries themselves are in :mod:`clickstream_lib.queries` (and
:mod:`clickstream_lib.analytics`), which register them in :data:`QUERIES`; import those, not this module, to run
one.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd
from clickhouse_connect.driver.exceptions import ClickHouseError

from .errors import QueryError
from .events import interaction_type_problem
from .schema import (
    COUNT_COLUMNS,
    EXACT_COLUMNS,
    EXACT_MERGE,
    HLL_PRECISION,
    PROPERTY_KEY_PATTERN,
    SEGMENT_HLL_PRECISION,
    TYPE_COLUMNS,
    property_column,
    property_expr,
)
from .store import ServedStore, Store, empty_frame, store_error

logger = logging.getLogger(__name__)

FILTERS: tuple[str, ...] = (
    "interaction_type",
    "device",
    "country",
    "referrer",
    "item_id",
    "experiment_name",
    "experiment_variation",
)
# A filter or breakdown on an event property (events' ``properties`` column) is named ``prop.<key>``, e.g.
# ``prop.plan`` or ``prop.utm.source`` (a dotted key is a path into nested objects). Keys are validated against
# schema.PROPERTY_KEY_PATTERN and formatted into the SQL as quoted identifiers (the engine's JSON type needs the path
# in the text: bound as a parameter, getSubcolumn read every key of every row); values are always bound as
# parameters. A key with a property column (CLICKSTREAM_PROPERTY_COLUMNS, schema.property_column_statements) is read
# from that LowCardinality column, which holds the same values as the JSON path.
PROPERTY_PREFIX = "prop."
_PROPERTY_KEY_RE = re.compile(PROPERTY_KEY_PATTERN)
SOURCES: tuple[str, ...] = ("auto", "raw", "rollup", "approx")
# What breakdowns show for an empty dimension value, and the filter value that selects it (interaction types and item
# ids are never empty).
NONE_LABEL = "(none)"
_NEVER_EMPTY = frozenset({"interaction_type", "item_id"})
FUNNEL_STEPS: tuple[str, ...] = ("view", "click", "add_to_cart", "purchase")
BUCKETS: dict[str, str] = {
    "second": "toDateTime({col}, 'UTC')",
    "minute": "toDateTime(toStartOfMinute({col}), 'UTC')",
    "hour": "toDateTime(toStartOfHour({col}), 'UTC')",
    "day": "toDateTime(toStartOfDay({col}), 'UTC')",
}
BUCKET_SECONDS: dict[str, int] = {"second": 1, "minute": 60, "hour": 3600, "day": 86400}
SESSION_BUCKETS: tuple[str, ...] = (
    "1 event (bounce)",
    "< 1 min",
    "1-5 min",
    "5-15 min",
    "15-30 min",
    "30-60 min",
    ">= 60 min",
)
_MAX_VALUE_LEN = 256
_MAX_VALUES = 1000
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MIN_TIME = datetime(1900, 1, 1, tzinfo=UTC)  # the range of ClickHouse's DateTime64
_MAX_TIME = datetime(2300, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class Rollup:
    """A rollup table: its time column and grain, and the columns a filter may use on it."""

    table: str
    time_col: str
    seconds: int
    dims: frozenset[str]
    time_type: str = "DateTime"
    hll_k: int = HLL_PRECISION  # uniqCombined precision of its users/items states (source="approx")
    # A count column per known interaction type plus one for all others (schema.COUNT_COLUMNS) instead of a type key.
    wide: bool = False

    def distinct(self, what: str, approx: bool) -> str:
        """The SQL merging the rollup's ``users`` or ``items`` states: exact, or the HLL estimate when ``approx``."""
        if approx:
            return f"uniqCombinedMerge({self.hll_k})({what})"
        return f"{EXACT_MERGE}({EXACT_COLUMNS[what]})"

    @property
    def error_bound(self) -> float:
        """Relative error bound of its HLL distinct counts: three standard errors (1.04 / sqrt(2^k) each)."""
        return 3 * 1.04 / math.sqrt(2**self.hll_k)


_DIMS = frozenset({"interaction_type", "device", "country", "referrer"})
MINUTE_ROLLUP = Rollup("events_by_minute", "minute", 60, frozenset({"interaction_type"}))
DAY_ROLLUP = Rollup("events_by_day", "day", 86400, frozenset({"interaction_type"}))
SEGMENT_HOUR_ROLLUP = Rollup("segments_by_hour", "hour", 3600, _DIMS, hll_k=SEGMENT_HLL_PRECISION)
SEGMENT_DAY_ROLLUP = Rollup("segments_by_day", "day", 86400, _DIMS, hll_k=SEGMENT_HLL_PRECISION)
# Fewest rows (and HLL states to merge) first: the first rollup that fits is the cheapest exact one.
EVENT_ROLLUPS = (DAY_ROLLUP, SEGMENT_DAY_ROLLUP, MINUTE_ROLLUP, SEGMENT_HOUR_ROLLUP)
ITEM_ROLLUP = Rollup("items_by_hour", "hour", 3600, frozenset({"interaction_type", "item_id"}), wide=True)
USER_ROLLUP = Rollup("users_by_day", "day", 86400, frozenset({"interaction_type"}), time_type="Date", wide=True)
EXPERIMENT_ROLLUP = Rollup(
    "experiment_users_by_day", "day", 86400, frozenset({"experiment_name", "experiment_variation"}), time_type="Date"
)


@dataclass(frozen=True)
class Param:
    """A query option: name, type (int, str or datetime), default and allowed values or range."""

    name: str
    kind: type
    default: Any = None
    choices: tuple[str, ...] = ()
    minimum: int = 0
    maximum: int = 10**9
    help: str = ""
    properties: bool = False  # a str option that also takes prop.<key> (see PROPERTY_PREFIX)

    def coerce(self, value: Any) -> Any:
        if value is None:
            return self.default
        if self.kind is int:
            if isinstance(value, str):
                try:
                    value = int(value.strip())
                except ValueError:
                    raise QueryError(self.name, f"{value[:40]!r} is not an integer") from None
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool):
                raise QueryError(self.name, f"expected an integer, got {type(value).__name__}")
            if not self.minimum <= int(value) <= self.maximum:
                raise QueryError(self.name, f"{value} is out of range; expected {self.minimum}..{self.maximum}")
            return int(value)
        if self.kind is datetime:
            return _as_utc(value, self.name)
        if self.properties and isinstance(value, str) and value.startswith(PROPERTY_PREFIX):
            property_key(value, self.name)
            return value
        if not isinstance(value, str) or (self.choices and value not in self.choices):
            raise QueryError(self.name, f"{str(value)[:40]!r} is not one of {', '.join(self.choices)}")
        return value


@dataclass
class Query:
    """One invocation being planned: window, validated filters and options, and the source decision."""

    name: str
    database: str
    start_ms: int | None
    end_ms: int | None
    filters: dict[str, tuple[str, ...]]
    options: dict[str, Any]
    source: str
    used: str = "raw"
    params: dict[str, Any] = field(default_factory=dict)
    # Query-level settings (validated names, integer values), appended to the SQL; see _by_user.
    settings: dict[str, int] = field(default_factory=dict)
    # The SQL without those settings: what run() falls back to if the engine refuses them.
    plain_sql: str = ""
    # Property keys the events table has a property column for (Store.property_columns).
    property_columns: frozenset[str] = frozenset()
    # Set by a builder that returns estimates (source="approx" from a rollup): their relative error bound.
    error_bound: float = 0.0
    # Read only events stored by then (their ingest_time, ms since the epoch): see plan's ``as_of``.
    as_of_ms: int | None = None
    # (marker, SQL): when the engine's error names the marker, run() reads this SQL instead; a builder's fast form
    # that relies on something that can lag (analytics: path type codes listed from a rollup) sets it.
    fallback: tuple[str, str] | None = None

    def pick(self, *candidates: Rollup, need: Iterable[str] = (), max_grain_s: int | None = None) -> Rollup | None:
        """The first rollup that answers this query exactly, or None (read raw events).

        A rollup qualifies when it keeps every filtered (and ``need``-ed) column, its grain is at most
        ``max_grain_s``, and its grain divides the window's bounds. Raises if ``source='rollup'`` but none does.
        """
        if self.source == "raw":
            return None
        if self.as_of_ms is not None and self.source != "approx":
            # A rollup has no ingest time: it cannot be cut at one. Estimates are not bound to the cut.
            if self.source == "rollup":
                raise QueryError("as_of", f"{self.name} cannot be read from a rollup as of an ingest time")
            return None
        problems: list[str] = []
        for rollup in candidates:
            grain = rollup.seconds * 1000
            missing = [c for c in (*self.filters, *need) if c not in rollup.dims]
            why = [f"it has no column {c!r}" for c in missing]
            others = [t for t in self.filters.get("interaction_type", ()) if t not in TYPE_COLUMNS]
            if rollup.wide and others:
                why.append(f"it counts {others[0]!r} together with every other type outside {', '.join(TYPE_COLUMNS)}")
            if max_grain_s is not None and rollup.seconds > max_grain_s:
                why.append(f"its grain is {rollup.seconds} s")
            why += [
                f"{label} is not a multiple of {rollup.seconds} s"
                for label, ms in (("start", self.start_ms), ("end", self.end_ms))
                if ms is not None and ms % grain
            ]
            if not why:
                self.used = rollup.table
                return rollup
            problems.append(f"{rollup.table}: {', '.join(why)}")
        if self.source == "rollup":
            detail = "; ".join(problems) or "no rollup keeps this query"
            raise QueryError("source", f"{self.name} cannot be answered from a rollup ({detail})")
        return None

    def type_columns(self) -> list[str]:
        """A wide rollup's count columns for the interaction types this query keeps (validated names).

        Without a type filter: every count column, the other types' included. With one, the known types' columns
        (:meth:`pick` leaves a wide rollup out when the filter names another type).
        """
        kept = self.filters.get("interaction_type")
        if kept is None:
            return list(COUNT_COLUMNS)
        return [TYPE_COLUMNS[t] for t in TYPE_COLUMNS if t in kept]

    def table(self, name: str) -> str:
        return f"{self.database}.{name}"

    def settings_sql(self) -> str:
        """The ``SETTINGS`` clause of :attr:`settings` ('' if none)."""
        if not self.settings:
            return ""
        return " SETTINGS " + ", ".join(f"{k} = {int(v)}" for k, v in self.settings.items())

    def where(self, time_col: str = "event_time", rollup: Rollup | None = None, use_filters: bool = True) -> str:
        """The WHERE clause for the window and filters; values go into :attr:`params`, never into the text."""
        conds: list[str] = []
        for op, key, ms in ((">=", "start_ms", self.start_ms), ("<", "end_ms", self.end_ms)):
            if ms is None:
                continue
            self.params[key] = ms
            if rollup is None:
                bound = f"fromUnixTimestamp64Milli({{{key}:Int64}}, 'UTC')"
            elif rollup.time_type == "Date":
                bound = f"toDate(toDateTime(intDiv({{{key}:Int64}}, 1000), 'UTC'))"
            else:
                bound = f"toDateTime(intDiv({{{key}:Int64}}, 1000), 'UTC')"
            conds.append(f"{rollup.time_col if rollup else time_col} {op} {bound}")
            if rollup is None and time_col == "event_time":
                # Implied by the bound, and what lets the primary key skip granules: measured on this engine, a bare
                # DateTime64 condition selected every granule of ORDER BY (toStartOfHour(event_time), ...).
                hour_op = ">=" if op == ">=" else "<="
                conds.append(f"toStartOfHour(event_time) {hour_op} toStartOfHour({bound})")
        if rollup is None and self.as_of_ms is not None:
            self.params["as_of_ms"] = self.as_of_ms
            conds.append("ingest_time <= fromUnixTimestamp64Milli({as_of_ms:Int64}, 'UTC')")
        if use_filters:
            for i, (name, values) in enumerate(self.filters.items()):
                if rollup is not None and rollup.wide and name == "interaction_type":
                    continue  # a wide rollup filters types by choosing columns (see type_columns)
                key = f"f_{name}" if name in FILTERS else f"f_prop{i}"
                expr = column_expr(name, self.property_columns)
                if len(values) == 1:
                    self.params[key] = values[0]
                    conds.append(f"{expr} = {{{key}:String}}")
                else:
                    self.params[key] = list(values)
                    conds.append(f"{expr} IN {{{key}:Array(String)}}")
        return ("WHERE " + " AND ".join(conds)) if conds else ""


Builder = Callable[[Query], str]
Post = Callable[[pd.DataFrame, Query], pd.DataFrame]


@dataclass(frozen=True)
class NamedQuery:
    """A named query: what it answers, its options, the filters it honours, and how to build and shape it."""

    name: str
    description: str
    build: Builder
    params: tuple[Param, ...] = ()
    filters: tuple[str, ...] = FILTERS
    windowed: bool = True
    post: Post | None = None

    def describe(self) -> str:
        opts = ", ".join(f"{p.name}={p.default}" for p in self.params)
        return f"{self.name}({opts}): {self.description}"


# --- validation ------------------------------------------------------------------------------------------------


def _as_utc(value: Any, name: str) -> datetime:
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.strip())
        except ValueError:
            raise QueryError(name, f"{value[:40]!r} is not an ISO-8601 time, e.g. 2026-11-29T10:00:00Z") from None
    if isinstance(value, pd.Timestamp):
        value = value.to_pydatetime()
    if not isinstance(value, datetime):
        raise QueryError(name, f"expected a datetime or ISO-8601 string, got {type(value).__name__}")
    try:
        value = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    except OverflowError:  # e.g. 0001-01-01T00:00+01:00 is before year 1 in UTC
        value = _MIN_TIME - timedelta(days=1)
    if not _MIN_TIME <= value < _MAX_TIME:
        raise QueryError(
            name,
            f"{value.isoformat()[:40]} is out of range; expected a time from 1900 to 2299 (the store's DateTime64)",
        )
    return value


def _ms(value: datetime | None) -> int | None:
    if value is None:
        return None
    return (value - _EPOCH) // timedelta(milliseconds=1)  # exact integer arithmetic, no float rounding


def property_key(name: str, param: str | None = None) -> str:
    """The key of ``prop.<key>``, validated (:data:`PROPERTY_KEY_PATTERN`); raises QueryError naming ``param``."""
    key = name[len(PROPERTY_PREFIX) :]
    if len(key) > 128 or not _PROPERTY_KEY_RE.match(key):
        raise QueryError(
            param or name[:80],
            f"{key[:40]!r} is not a property key: letters, digits, _ $ - (dots for nested keys), at most 128 chars",
        )
    return key


def column_expr(name: str, property_columns: Collection[str] = ()) -> str:
    """The SQL of a filter or breakdown column: the column itself (:data:`FILTERS`), a property's column when its key
    is in ``property_columns``, else the property as a String from the JSON column (``properties.`plan`::String``;
    '' where an event does not have the key). ``name`` must be validated."""
    if name in FILTERS:
        return name
    key = property_key(name)
    if key in property_columns:
        return f"`{property_column(key)}`"
    return property_expr(key)


def _filter_values(name: str, value: Any) -> tuple[str, ...] | None:
    if value is None:
        return None
    values: tuple[Any, ...]
    if isinstance(value, str):
        values = (value,)
    elif isinstance(value, Iterable):
        values = tuple(value)
    else:
        raise QueryError(name, f"expected a string or a list of strings, got {type(value).__name__}")
    if not values:
        return None  # an empty multi-select means "all", as in the dashboard's filter widgets
    if len(values) > _MAX_VALUES:
        raise QueryError(name, f"{len(values)} values is too many; expected at most {_MAX_VALUES}")
    for v in values:
        if not isinstance(v, str):
            raise QueryError(name, f"expected strings, got {type(v).__name__}")
        if len(v) > _MAX_VALUE_LEN:
            raise QueryError(name, f"a value of {len(v)} characters is too long; expected at most {_MAX_VALUE_LEN}")
        if name == "interaction_type" and interaction_type_problem(v):
            raise QueryError(name, interaction_type_problem(v))
    if name not in _NEVER_EMPTY:
        values = tuple("" if v == NONE_LABEL else v for v in values)  # the label of an empty value selects it
    return tuple(dict.fromkeys(values))


def plan(
    name: str,
    database: str,
    *,
    start: Any = None,
    end: Any = None,
    source: str = "auto",
    as_of: Any = None,
    property_columns: Collection[str] = (),
    **kwargs: Any,
) -> tuple[NamedQuery, Query, str]:
    """Validate a call and build its SQL without running it: ``(named_query, query, sql)``.

    ``as_of`` (a datetime or ISO string, None = no cut) reads only events stored by then (``ingest_time <= as_of``),
    from ``events`` itself: rollups have no ingest time (estimates, ``source="approx"``, still come from them, not
    cut). Queries given the same ``as_of`` read the same rows however many events are stored while they run, so
    their figures agree with each other (a dashboard's refresh passes the newest ingest time it saw first).

    ``property_columns`` are the property keys the events table has a column for (:meth:`Store.property_columns`);
    a filter or breakdown on one of them reads that column.

    Raises:
        QueryError: unknown query, filter or option, or a bad value.
    """
    nq = QUERIES.get(name)
    if nq is None:
        raise QueryError("query", f"unknown query {name!r}; known queries: {', '.join(sorted(QUERIES))}")
    if source not in SOURCES:
        raise QueryError("source", f"{source!r} is not one of {', '.join(SOURCES)}")
    known = {p.name: p for p in nq.params}
    filters: dict[str, tuple[str, ...]] = {}
    options: dict[str, Any] = {}
    for key, value in kwargs.items():
        if key in FILTERS or key.startswith(PROPERTY_PREFIX):
            if key.startswith(PROPERTY_PREFIX):
                property_key(key)
            vals = _filter_values(key, value)
            if vals is None:
                continue
            # Every query that takes the event filters takes property filters too.
            if key not in nq.filters and not (key.startswith(PROPERTY_PREFIX) and nq.filters):
                honoured = ", ".join(nq.filters) or "none"
                raise QueryError(key, f"{name} does not take this filter (filters it takes: {honoured})")
            filters[key] = vals
        elif key in known:
            options[key] = known[key].coerce(value)
        else:
            allowed = ", ".join(
                [*known, *nq.filters, *(["prop.<key>"] if nq.filters else []), "start", "end", "source", "as_of"]
            )
            raise QueryError(key, f"is not a parameter of {name}; expected one of {allowed}")
    for p in nq.params:
        options.setdefault(p.name, p.default)
    start_dt = _as_utc(start, "start") if start is not None else None
    end_dt = _as_utc(end, "end") if end is not None else None
    if (start_dt or end_dt) and not nq.windowed:
        raise QueryError("start", f"{name} does not take a time window")
    if start_dt and end_dt and end_dt < start_dt:
        raise QueryError("end", f"{end_dt.isoformat()} is before start {start_dt.isoformat()}")
    q = Query(name, database, _ms(start_dt), _ms(end_dt), filters, options, source)
    q.as_of_ms = _ms(_as_utc(as_of, "as_of")) if as_of is not None else None
    q.property_columns = frozenset(property_columns)
    sql = q.plain_sql = nq.build(q)
    return nq, q, sql + q.settings_sql()


def run(
    store: Store, name: str, *, start: Any = None, end: Any = None, source: str = "auto", **kwargs: Any
) -> pd.DataFrame:
    """Run the named query ``name`` (a key of :data:`QUERIES`) and return a DataFrame.

    Args:
        store: an open store.
        name: the query name.
        start: window start (inclusive), a datetime (naive = UTC) or ISO string; None = from the beginning.
        end: window end (exclusive); None = up to now and beyond.
        source: "auto" (a rollup where it answers exactly, else raw), "raw", "rollup" (error if no rollup can
            answer), or "approx" (as "auto", but distinct counts from a rollup are HLL estimates: faster on long
            windows; ``df.attrs["estimated"]`` and ``df.attrs["error_bound"]`` say so).
        **kwargs: filters (:data:`FILTERS`) and the query's options (see ``QUERIES[name].params``).

    Raises:
        QueryError: unknown query, filter or option, or a bad value.
        StoreError: ClickHouse failed, or refused the query for memory (the message names the limit to raise).
    """
    if isinstance(store, ServedStore):  # the owner of the embedded store runs it (this same function, there)
        return store.run_query(name, start=start, end=end, source=source, **kwargs)
    columns = store.property_columns()
    nq, q, _ = plan(name, store.database, start=start, end=end, source=source, property_columns=columns, **kwargs)
    try:
        try:
            df, sql = _query_df(store, q, q.plain_sql)
        except ClickHouseError as exc:
            if q.fallback is None or q.fallback[0] not in str(exc):
                raise
            logger.debug("query %s: %s; reading its fallback", name, q.fallback[0])
            df, sql = _query_df(store, q, q.fallback[1])
        if df.columns.empty:
            df = empty_frame(store.query_rows(f"DESCRIBE ({sql})", q.params))
    except ClickHouseError as exc:
        raise store_error(exc, f"query {name} on {store.database}", store.settings) from exc
    if nq.post is not None:
        df = nq.post(df, q)
    df.attrs.update(query=name, source=q.used, estimated=q.error_bound > 0, error_bound=q.error_bound)
    logger.debug("query %s from %s: %d rows", name, q.used, len(df))
    return df


def _query_df(store: Store, q: Query, plain: str) -> tuple[pd.DataFrame, str]:
    """Run ``plain`` with the query's settings: the frame and the SQL that gave it."""
    sql = plain + q.settings_sql()
    try:
        return store.query_df(sql, q.params), sql
    except ClickHouseError as exc:
        if not q.settings or "PROJECTION_NOT_USED" not in str(exc):
            raise
        # An engine that cannot use the projection here (e.g. an older server, which only considers projections
        # for filtered queries): the same query without forcing it, reading the table itself.
        logger.debug("query %s: projection not used (%s); reading without it", q.name, exc)
        return store.query_df(plain, q.params), plain


def run_many(store: Store, asked: Iterable[tuple[str, dict[str, Any]]], consistent: bool = False) -> list[pd.DataFrame]:
    """Run several named queries, ``(name, keyword arguments)`` pairs as :func:`run` takes them; results in order.

    A served store sends them to its owner in one call (a dashboard's refresh set pays one round trip, not one per
    panel); otherwise they run here one after the other. ``consistent``: no insert lands between them, so they all
    read the same events (:mod:`clickstream_lib.snapshot`; only where ``store.consistent_reads``). Same errors as
    :func:`run`, and StoreError for ``consistent`` on a store with writers in other processes.
    """
    asked = list(asked)
    if isinstance(store, ServedStore):
        return store.run_queries(asked, consistent=consistent)
    if consistent:
        with store.snapshot():
            return [run(store, name, **kwargs) for name, kwargs in asked]
    return [run(store, name, **kwargs) for name, kwargs in asked]


def read_only(store: Store, sql: str, parameters: dict[str, Any] | None = None) -> pd.DataFrame:
    """Run one statement a user typed, read-only as the engine enforces it (:mod:`clickstream_lib.user_sql`).

    SELECT, SHOW, DESCRIBE and EXISTS work; several statements, writes, DDL, SET, SYSTEM, KILL, INTO OUTFILE and
    table functions that reach outside the store are refused.

    Raises:
        QueryError: the SQL is empty, not one read-only statement, or refused by the engine's read-only mode.
        StoreError: ClickHouse failed.
    """
    if isinstance(store, ServedStore):  # the owner of the embedded store runs it (this same function, there)
        return store.read_only(sql, parameters)
    try:
        return store.read_only_df(sql, parameters)
    except ClickHouseError as exc:
        raise store_error(exc, "read-only query", store.settings) from exc


# Every named query by name; filled by the modules that define them (queries, analytics) when they are imported.
QUERIES: dict[str, NamedQuery] = {}


def _by_user(q: Query) -> None:
    """Per-user passes over a window with no time bound read ``events`` through its ``by_user`` projection.

    Ordered by (user_id, event_time), a user's events arrive together and in time order, so grouping by user and
    ordering each user's events cost far less (measured at 10M events over 7 days: funnel and sessions ~2x faster).
    It holds the same rows, so results are equal. The optimizer keeps the hour-first table when a time bound lets
    it skip granules; with no bound both read every granule, and the tie goes to the table unless forced.
    """
    if q.start_ms is None and q.end_ms is None and q.as_of_ms is None:  # the projection has no ingest_time
        q.settings["force_optimize_projection"] = 1
