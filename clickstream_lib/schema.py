"""The warehouse schema as data: tables, rollups and materialized views, rendered for one machine or a cluster.

One set of definitions yields two dialects:

* :func:`local_ddl` — ``MergeTree`` / ``AggregatingMergeTree`` tables for the embedded engine (chdb) or a single
  ClickHouse server. ``store.MIGRATIONS`` is built from it.
* :func:`cluster_ddl` — the same tables as ``Replicated*MergeTree`` ``<name>_local`` tables on every node plus a
  ``Distributed`` table under the plain name, all ``ON CLUSTER``. Queries address the plain names, so every named
  query in :mod:`clickstream_lib.queries` runs unchanged on a cluster.

Rollups (read by the live panels) are ``AggregatingMergeTree`` tables fed by materialized views on ``events``:

* ``events_by_minute`` / ``events_by_day`` — per minute / day x interaction type: event count, revenue, and
  distinct users / items as ``uniqCombined(14)`` states (HyperLogLog-style, ~0.8% standard error; merging them over
  any window gives the distinct count of the window, not a sum of per-bucket distincts).
* ``segments_by_hour`` / ``segments_by_day`` — the same per hour / day x interaction type x device x country x
  referrer, with ``uniqCombined(12)`` states (~1.6%), for filtered panels.
* ``items_by_hour`` — per hour x item: views, clicks, add_to_carts, purchases, revenue.
* ``users_by_day`` — per day x user: views, clicks, add_to_carts, purchases (top users), with an aggregate
  projection ``user_totals`` (one row per user and part) that all-time top users read instead of a row per day.

``events`` carries a projection too: ``by_user``, the per-user columns ordered by ``(user_id, event_time)``, which the
per-user passes (funnel, sessions, retention) read over long windows (see :mod:`clickstream_lib.queries`).
Projections live inside their table, so inserts, dedup tokens, grants and the cluster variant need nothing extra.

Only the database name (validated by Settings) and integers are formatted into DDL.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# uniqCombined precision of the rollup states: 2^14 cells, ~0.8% standard error, a few KiB per large state.
# Measured on this engine: exact-set (uniqState) minute states made all-time distinct counts slower than the raw
# table; HLL-style states were ~2x faster. The segment rollups hold many more rows per bucket: 2^12 cells there.
HLL_PRECISION = 14
SEGMENT_HLL_PRECISION = 12
HLL_RELATIVE_ERROR = 0.016  # 1.04 / sqrt(2^12): one standard error of the coarser of the two

_IDENT_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")


@dataclass(frozen=True)
class Projection:
    """A projection stored inside its table's parts: ``select`` is its query (``SELECT ... ORDER BY|GROUP BY ...``)."""

    name: str
    select: str


@dataclass(frozen=True)
class Table:
    """A table definition. ``engine`` is the non-replicated engine name; the cluster renderer prefixes it."""

    name: str
    columns: tuple[tuple[str, str], ...]
    order_by: str
    engine: str = "MergeTree"
    # Arguments of the engine after the replication path and replica, e.g. a ReplacingMergeTree's version column.
    engine_args: tuple[str, ...] = ()
    partition_by: str = ""
    # Keep insert_deduplication_token effective (the sink's effectively-once delivery). Rollups need it too: a
    # replayed events block is dropped from events but still pushed through the views, and only a window on the
    # rollup drops it there (measured on chdb 26.9).
    dedup: bool = False
    shard_key: str = "rand()"
    # Added by migration 3 (ALTER TABLE), so migrations 1 and 2 render without them (see table_ddl).
    projections: tuple[Projection, ...] = ()
    settings: tuple[tuple[str, str], ...] = ()  # further MergeTree settings, values as SQL literals
    # Columns added by a later migration (name -> its version): the migrations before it render the table without
    # them, so an applied migration's text never changes (see table_ddl's ``at``).
    added: tuple[tuple[str, int], ...] = ()

    @property
    def column_names(self) -> tuple[str, ...]:
        return tuple(c for c, _ in self.columns)

    def columns_at(self, version: int | None) -> tuple[tuple[str, str], ...]:
        """The columns as of migration ``version`` (None: all of them)."""
        since = dict(self.added)
        return tuple(c for c in self.columns if version is None or since.get(c[0], 0) <= version)


@dataclass(frozen=True)
class View:
    """A materialized view ``name`` that writes ``select`` (reading ``{db}.source``) into ``target``."""

    name: str
    target: str
    source: str
    select: str  # uses {src} for the source table


OPEN_TYPES_MIGRATION = 5  # the migration that added OTHER_TYPES_COLUMN to the wide rollups (store.MIGRATIONS)
PROPERTIES_MIGRATION = 6  # the migration that added the experiment columns and properties to events
EXPERIMENTS_MIGRATION = 7  # the migration that added the experiment_users_by_day rollup
ALERT_EVENTS_MIGRATION = 4  # the migration that added alert_events (clickstream_lib.alerts)
ALERT_PENDING_MIGRATION = 8  # the migration that added alert_pending (a rule's `for` across processes)
EXACT_DISTINCT_MIGRATION = 9  # the migration that added exact distinct states to the event rollups (rebuilt)

_EVENTS_COLUMNS: tuple[tuple[str, str], ...] = (
    ("event_id", "UUID"),
    ("user_id", "String"),
    ("session_id", "String"),
    ("item_id", "String"),
    ("interaction_type", "LowCardinality(String)"),
    ("event_time", "DateTime64(3, 'UTC')"),
    ("page", "String"),
    ("referrer", "LowCardinality(String)"),
    ("device", "LowCardinality(String)"),
    ("country", "LowCardinality(String)"),
    ("price", "Decimal(12, 2)"),
    ("currency", "LowCardinality(String)"),
    ("schema_version", "UInt8"),
    ("experiment_name", "LowCardinality(String)"),
    ("experiment_variation", "LowCardinality(String)"),
    # The event's other properties (events.PROPERTY_OBJECTS). The engine's JSON type stores each key as a column of
    # its own: measured at 1M events, a filter on a key took 18 ms and a breakdown 41 ms, against 69 and 94 ms for
    # Map(String, String) (which reads every key of every row), at 0.43x its size on disk.
    ("properties", "JSON"),
    ("kafka_topic", "LowCardinality(String)"),
    ("kafka_partition", "UInt32"),
    ("kafka_offset", "UInt64"),
    ("kafka_timestamp", "DateTime64(3, 'UTC')"),
    ("ingest_time", "DateTime64(3, 'UTC') DEFAULT now64(3)"),
)

EVENTS = Table(
    name="events",
    columns=_EVENTS_COLUMNS,
    # Hour first: every dashboard query has a time window, and live panels ("last 5 minutes") then read about one
    # hour of granules rather than a whole day. interaction_type next serves the type filter and breakdown;
    # user_id groups a user's events for funnels, sessions and retention.
    order_by="(toStartOfHour(event_time), interaction_type, user_id, event_time)",
    partition_by="toYYYYMM(event_time)",
    dedup=True,
    added=(
        ("experiment_name", PROPERTIES_MIGRATION),
        ("experiment_variation", PROPERTIES_MIGRATION),
        ("properties", PROPERTIES_MIGRATION),
    ),
    # A user's events on one shard keep per-user work (funnel, sessions) shard-local.
    shard_key="cityHash64(user_id)",
    # The per-user passes (funnel, sessions, retention) group every event of the window by user. Read in this order,
    # a user's events arrive together and in time order (measured at 10M events: the all-time funnel and sessions
    # ~2x faster); the hour-first key stays best for windows, and the optimizer picks whichever reads fewer marks.
    projections=(
        Projection(
            "by_user",
            "SELECT user_id, event_time, interaction_type, device, country, referrer, item_id "
            "ORDER BY user_id, event_time",
        ),
    ),
)

DEAD_LETTERS = Table(
    name="dead_letters",
    columns=(
        ("raw", "String"),
        ("reason", "LowCardinality(String)"),
        ("detail", "String"),
        ("kafka_topic", "LowCardinality(String)"),
        ("kafka_partition", "UInt32"),
        ("kafka_offset", "UInt64"),
        ("kafka_timestamp", "DateTime64(3, 'UTC')"),
        ("ingest_time", "DateTime64(3, 'UTC') DEFAULT now64(3)"),
    ),
    order_by="(kafka_topic, kafka_partition, kafka_offset)",
    dedup=True,
)

_COUNT = "SimpleAggregateFunction(sum, UInt64)"
_MONEY = "SimpleAggregateFunction(sum, Decimal(38, 2))"
_REVENUE = "sumIf(toDecimal128(price, 2), interaction_type = 'purchase')"
SEGMENTS: tuple[str, ...] = ("device", "country", "referrer")


# Exact distinct users / items in the event rollups: a set of the values' 128-bit hashes per row (``uniqExact``
# states), merged over the rows of a window. Exact up to hash collisions (~n^2 / 2^129). See EXACT_STATE_NOTE.
EXACT_STATE_TYPE = "AggregateFunction(uniqExact, String)"
EXACT_MERGE = "uniqExactMerge"
EXACT_COLUMNS: dict[str, str] = {"users": "users_exact", "items": "items_exact"}


def _exact_state(column: str) -> str:
    return f"uniqExactState({column})"


def _event_rollup(name: str, time_col: str, time_expr: str, segments: bool, k: int) -> tuple[Table, View, View]:
    """A rollup of events per time bucket x interaction type (x device, country, referrer when ``segments``).

    Returns the table, its view as migration 2 made it (HLL states only) and its current view (exact states too).
    """
    keys = (time_col, "interaction_type", *(SEGMENTS if segments else ()))
    hll = f"AggregateFunction(uniqCombined({k}), String)"
    table = Table(
        name=name,
        columns=(
            (time_col, "DateTime('UTC')"),
            ("interaction_type", "LowCardinality(String)"),
            *((c, "LowCardinality(String)") for c in (SEGMENTS if segments else ())),
            ("events", _COUNT),
            ("revenue", _MONEY),
            ("users", hll),
            ("items", hll),
            (EXACT_COLUMNS["users"], EXACT_STATE_TYPE),
            (EXACT_COLUMNS["items"], EXACT_STATE_TYPE),
        ),
        engine="AggregatingMergeTree",
        partition_by=f"toYYYYMM({time_col})",
        order_by=f"({', '.join(keys)})",
        dedup=True,
        added=tuple((c, EXACT_DISTINCT_MIGRATION) for c in EXACT_COLUMNS.values()),
    )
    select = (
        f"SELECT {time_expr} AS {', '.join(keys)}, count() AS events, {_REVENUE} AS revenue, "
        f"uniqCombinedState({k})(user_id) AS users, uniqCombinedState({k})(item_id) AS items"
    )
    exact = "".join(f", {_exact_state(f'{what[:-1]}_id')} AS {col}" for what, col in EXACT_COLUMNS.items())
    group = f" FROM {{src}} GROUP BY {', '.join(keys)}"
    return (
        table,
        View(f"{name}_mv", name, "events", select + group),
        View(f"{name}_mv", name, "events", select + exact + group),
    )


# Distinct counts from a rollup merge one HLL state per row read, and a state merge costs far more than a sum
# (measured: 10^4 uniqCombined(14) states took ~0.8 s to merge, uniqCombined(12) ~0.2 s, uniqExact over 10M raw
# values ~0.1 s). So each window reads the coarsest rollup that fits: per day, then per minute; and the
# segment rollups (one row per device x country x referrer combination, thousands per bucket) use 2^12 cells.
EVENTS_BY_MINUTE, _MINUTE_MV_2, _MINUTE_MV = _event_rollup(
    "events_by_minute", "minute", "toStartOfMinute(event_time)", False, HLL_PRECISION
)
EVENTS_BY_DAY, _DAY_MV_2, _DAY_MV = _event_rollup(
    "events_by_day", "day", "toDateTime(toStartOfDay(event_time), 'UTC')", False, HLL_PRECISION
)
# A minute grain with the segment keys held ~2 raw rows per rollup row (1M events over 7 days): hours and days.
SEGMENTS_BY_HOUR, _SEG_HOUR_MV_2, _SEG_HOUR_MV = _event_rollup(
    "segments_by_hour", "hour", "toStartOfHour(event_time)", True, SEGMENT_HLL_PRECISION
)
SEGMENTS_BY_DAY, _SEG_DAY_MV_2, _SEG_DAY_MV = _event_rollup(
    "segments_by_day", "day", "toDateTime(toStartOfDay(event_time), 'UTC')", True, SEGMENT_HLL_PRECISION
)

# Wide rollups for the high-cardinality keys: one row per bucket x item (or user) with a count column per known
# interaction type, so an interaction_type filter picks columns instead of multiplying rows by four. Every other type
# (event types are open, see events.INTERACTION_TYPE_PATTERN) is counted in one more column, OTHER_TYPES_COLUMN, so
# the sum of the count columns is every event of the bucket.
TYPE_COLUMNS: dict[str, str] = {
    "view": "views",
    "click": "clicks",
    "add_to_cart": "add_to_carts",
    "purchase": "purchases",
}
OTHER_TYPES_COLUMN = "other_types"
COUNT_COLUMNS: tuple[str, ...] = (*TYPE_COLUMNS.values(), OTHER_TYPES_COLUMN)
_KNOWN_TYPES_SQL = ", ".join(f"'{t}'" for t in TYPE_COLUMNS)


def _type_count_sql(others: bool) -> str:
    sql = ", ".join(f"countIf(interaction_type = '{t}') AS {c}" for t, c in TYPE_COLUMNS.items())
    if others:
        sql += f", countIf(interaction_type NOT IN ({_KNOWN_TYPES_SQL})) AS {OTHER_TYPES_COLUMN}"
    return sql


_TYPE_COUNTS = tuple((col, _COUNT) for col in COUNT_COLUMNS)
_ADDED_OTHERS = ((OTHER_TYPES_COLUMN, OPEN_TYPES_MIGRATION),)

ITEMS_BY_HOUR = Table(
    name="items_by_hour",
    columns=(("hour", "DateTime('UTC')"), ("item_id", "String"), *_TYPE_COUNTS, ("revenue", _MONEY)),
    engine="AggregatingMergeTree",
    partition_by="toYYYYMM(hour)",
    order_by="(hour, item_id)",
    dedup=True,
    added=_ADDED_OTHERS,
)


def _user_total_sql(columns: tuple[str, ...]) -> str:
    return " + ".join(columns)


# The sum of every count column: what all-time top users (no type filter) reads from the user_totals projection.
USER_TOTAL_SQL = _user_total_sql(COUNT_COLUMNS)


def _user_totals(columns: tuple[str, ...]) -> Projection:
    sums = ", ".join(f"sum({c})" for c in columns)
    return Projection("user_totals", f"SELECT user_id, {sums}, sum({_user_total_sql(columns)}) GROUP BY user_id")


USERS_BY_DAY = Table(
    name="users_by_day",
    columns=(("day", "Date"), ("user_id", "String"), *_TYPE_COUNTS),
    engine="AggregatingMergeTree",
    partition_by="toYYYYMM(day)",
    order_by="(day, user_id)",
    dedup=True,
    # A row per user and day is 7x the users for a week (1.5M rows for 100k users, before merges), and top users
    # over all time sums them per user. This aggregate projection keeps one row per user and part; queries
    # without a day filter read it (the optimizer matches the sums). Merges of an AggregatingMergeTree combine
    # rows, so the projection is rebuilt on merge ('rebuild'; the engine refuses projections here otherwise).
    projections=(_user_totals(COUNT_COLUMNS),),
    settings=(("deduplicate_merge_projection_mode", "'rebuild'"),),
    added=_ADDED_OTHERS,
)


def _wide_views(others: bool) -> tuple[View, View]:
    counts = _type_count_sql(others)
    return (
        View(
            "items_by_hour_mv",
            "items_by_hour",
            "events",
            f"SELECT toStartOfHour(event_time) AS hour, item_id, {counts}, {_REVENUE} AS revenue "
            "FROM {src} GROUP BY hour, item_id",
        ),
        View(
            "users_by_day_mv",
            "users_by_day",
            "events",
            f"SELECT toDate(event_time) AS day, user_id, {counts} FROM {{src}} GROUP BY day, user_id",
        ),
    )


_EVENT_VIEWS = (_MINUTE_MV, _DAY_MV, _SEG_HOUR_MV, _SEG_DAY_MV)
_EVENT_VIEWS_2 = (_MINUTE_MV_2, _DAY_MV_2, _SEG_HOUR_MV_2, _SEG_DAY_MV_2)  # as migration 2 made them
EVENT_ROLLUPS: tuple[Table, ...] = (EVENTS_BY_MINUTE, EVENTS_BY_DAY, SEGMENTS_BY_HOUR, SEGMENTS_BY_DAY)
VIEWS: tuple[View, ...] = (*_EVENT_VIEWS, *_wide_views(others=True))

ROLLUPS: tuple[Table, ...] = (
    EVENTS_BY_MINUTE,
    EVENTS_BY_DAY,
    SEGMENTS_BY_HOUR,
    SEGMENTS_BY_DAY,
    ITEMS_BY_HOUR,
    USERS_BY_DAY,
)

# The A/B experiments' rollup: per day x experiment x variation x user, the user's interactions, views, clicks and
# purchases there, for the events that carry an experiment. The experiments query counts distinct users and users
# with a purchase from it exactly (one row per user, day and variation: ~15x fewer rows than the events at 100
# events per user), where ROLLUPS' HLL states only estimate. Unlike ROLLUPS it does not count every event.
EXPERIMENT_USERS_BY_DAY = Table(
    name="experiment_users_by_day",
    columns=(
        ("day", "Date"),
        ("experiment_name", "LowCardinality(String)"),
        ("experiment_variation", "LowCardinality(String)"),
        ("user_id", "String"),
        ("interactions", _COUNT),
        ("views", _COUNT),
        ("clicks", _COUNT),
        ("purchases", _COUNT),
    ),
    engine="AggregatingMergeTree",
    partition_by="toYYYYMM(day)",
    order_by="(experiment_name, experiment_variation, day, user_id)",
    dedup=True,
)
_EXPERIMENT_MV = View(
    "experiment_users_by_day_mv",
    "experiment_users_by_day",
    "events",
    "SELECT toDate(event_time) AS day, experiment_name, experiment_variation, user_id, count() AS interactions, "
    "countIf(interaction_type = 'view') AS views, countIf(interaction_type = 'click') AS clicks, "
    "countIf(interaction_type = 'purchase') AS purchases "
    "FROM {src} WHERE experiment_name != '' GROUP BY day, experiment_name, experiment_variation, user_id",
)
EXPERIMENT_ROLLUPS: tuple[Table, ...] = (EXPERIMENT_USERS_BY_DAY,)
VIEWS = (*VIEWS, _EXPERIMENT_MV)
# Every table a materialized view writes (the sink's user needs INSERT on each).
VIEW_TARGETS: tuple[Table, ...] = (*ROLLUPS, *EXPERIMENT_ROLLUPS)

# Alerts (clickstream_lib.alerts, docs/alerts.md). Both tables are small: a row per firing, a row per pending key.
# A newer row of the same key (a resolution; a pending key cleared) replaces the older one: read them with FINAL.
# On a cluster a rule's rows stay on one shard, so FINAL over the Distributed table sees every version of a row.
ALERT_EVENTS = Table(
    name="alert_events",
    columns=(
        ("rule", "String"),
        ("key", "String"),
        ("severity", "LowCardinality(String)"),
        ("kind", "LowCardinality(String)"),
        ("value", "Float64"),
        ("baseline", "Nullable(Float64)"),
        ("fired_at", "DateTime64(3, 'UTC')"),
        ("resolved_at", "Nullable(DateTime64(3, 'UTC'))"),
        ("message", "String"),
        ("updated_at", "DateTime64(3, 'UTC')"),
    ),
    order_by="(rule, key, fired_at)",
    engine="ReplacingMergeTree",
    engine_args=("updated_at",),
    shard_key="cityHash64(rule)",
)
# Where a rule with `for` started to hold, per key, so that separate processes (`alerts check` from cron) count the
# same `for`: pending_since NULL means the key is not pending.
ALERT_PENDING = Table(
    name="alert_pending",
    columns=(
        ("rule", "String"),
        ("key", "String"),
        ("pending_since", "Nullable(DateTime64(3, 'UTC'))"),
        ("updated_at", "DateTime64(3, 'UTC')"),
    ),
    order_by="(rule, key)",
    engine="ReplacingMergeTree",
    engine_args=("updated_at",),
    shard_key="cityHash64(rule)",
)
ALERT_TABLES: tuple[Table, ...] = (ALERT_EVENTS, ALERT_PENDING)
TABLES: dict[str, Table] = {t.name: t for t in (EVENTS, DEAD_LETTERS, *VIEW_TARGETS, *ALERT_TABLES)}


def _check_ident(name: str, what: str) -> str:
    if not _IDENT_RE.match(name):
        raise ValueError(f"{what} {name!r} is not a valid identifier; expected letters, digits, underscore")
    return name


def _projection_sql(p: Projection) -> str:
    return f"PROJECTION {p.name} ({p.select})"


def _columns_sql(table: Table, projections: bool = True, at: int | None = None) -> str:
    lines = [f"{name} {ctype}" for name, ctype in table.columns_at(at)]
    if projections:
        lines += [_projection_sql(p) for p in table.projections]
    return ",\n    ".join(lines)


def _body(table: Table, engine: str, dedup_setting: str, dedup_window: int, projections: bool = True) -> str:
    parts = [f"ENGINE = {engine}"]
    if table.partition_by:
        parts.append(f"PARTITION BY {table.partition_by}")
    parts.append(f"ORDER BY {table.order_by}")
    settings = [f"{dedup_setting} = {int(dedup_window)}"] if table.dedup else []
    if projections:
        settings += [f"{k} = {v}" for k, v in table.settings]
    if settings:
        parts.append(f"SETTINGS {', '.join(settings)}")
    return "\n".join(parts)


def table_ddl(
    table: Table, db: str = "{db}", dedup_window: int = 100_000, projections: bool = True, at: int | None = None
) -> str:
    """``CREATE TABLE IF NOT EXISTS`` for one machine (MergeTree family). ``db`` defaults to a ``{db}`` slot.

    ``projections=False`` leaves out the projections and the settings they need, and ``at`` the columns added after
    that migration, as migrations 1 and 2 created the table (later ones add them with ``ALTER TABLE``); an applied
    migration's text never changes.
    """
    engine = f"{table.engine}({', '.join(table.engine_args)})" if table.engine_args else table.engine
    body = _body(table, engine, "non_replicated_deduplication_window", dedup_window, projections)
    return f"CREATE TABLE IF NOT EXISTS {db}.{table.name}\n(\n    {_columns_sql(table, projections, at)}\n)\n{body}"


def view_ddl(view: View, db: str = "{db}", suffix: str = "", on_cluster: str = "") -> str:
    """``CREATE MATERIALIZED VIEW IF NOT EXISTS ... TO ...``; ``suffix`` addresses the ``_local`` tables."""
    select = view.select.replace("{src}", f"{db}.{view.source}{suffix}")
    return (
        f"CREATE MATERIALIZED VIEW IF NOT EXISTS {db}.{view.name}{on_cluster} TO {db}.{view.target}{suffix} AS {select}"
    )


def backfill_sql(view: View, db: str = "{db}") -> str:
    """Fill a new rollup from rows already in its source, only while the rollup is still empty.

    Run before the view is created, so a re-run of a half-applied migration cannot count a row twice.
    """
    select = view.select.replace("{src}", f"{db}.{view.source}")
    target = f"{db}.{view.target}"
    return f"INSERT INTO {target} SELECT * FROM ({select}) WHERE (SELECT count() FROM {target}) = 0"


def rollup_statements(db: str = "{db}") -> tuple[str, ...]:
    """Migration 2: the rollup tables, a one-off backfill from existing events, then the views that keep them."""
    views = (*_EVENT_VIEWS_2, *_wide_views(others=False))  # as migration 2 made them; migrations 5 and 8 change them
    out: list[str] = [table_ddl(t, db, projections=False, at=2) for t in ROLLUPS]
    out += [backfill_sql(v, db) for v in views]
    out += [view_ddl(v, db) for v in views]
    return tuple(out)


def _add_projection(db: str, table: str, p: Projection) -> tuple[str, str]:
    return (
        f"ALTER TABLE {db}.{table} ADD PROJECTION IF NOT EXISTS {p.name} ({p.select})",
        f"ALTER TABLE {db}.{table} MATERIALIZE PROJECTION {p.name}",
    )


def projection_statements(db: str = "{db}") -> tuple[str, ...]:
    """Migration 3: each table's extra settings and projections, then the building of them for existing parts.

    Every statement can re-run: ``MODIFY SETTING`` sets the same value, ``ADD PROJECTION IF NOT EXISTS``, and
    ``MATERIALIZE PROJECTION`` rebuilds. Materializing is a background mutation; until it has reached every old part
    the optimizer reads those parts from the table itself, so results never depend on its progress.
    """
    out: list[str] = []
    for t in (EVENTS, DEAD_LETTERS, *ROLLUPS):
        if t.settings:
            out.append(f"ALTER TABLE {db}.{t.name} MODIFY SETTING {', '.join(f'{k} = {v}' for k, v in t.settings)}")
        for p in t.projections:
            if t is USERS_BY_DAY:
                p = _user_totals(tuple(TYPE_COLUMNS.values()))  # as migration 3 made it; migration 5 replaces it
            out.extend(_add_projection(db, t.name, p))
    return tuple(out)


def open_types_statements(db: str = "{db}") -> tuple[str, ...]:
    """Migration 5: the wide rollups count every other interaction type in :data:`OTHER_TYPES_COLUMN`.

    Rows written before it hold 0 there, which is exact: the sink refused other types until then. Each statement can
    re-run: ``ADD COLUMN IF NOT EXISTS``; ``MODIFY QUERY`` swaps a view's query in place (no insert goes uncounted
    between a drop and a create); the ``user_totals`` projection is dropped and added again with the new total, then
    rebuilt for existing parts (until then the optimizer reads those parts from the table, so results stay exact).
    """
    out: list[str] = []
    for t in (ITEMS_BY_HOUR, USERS_BY_DAY):
        after = tuple(TYPE_COLUMNS.values())[-1]
        out.append(f"ALTER TABLE {db}.{t.name} ADD COLUMN IF NOT EXISTS {OTHER_TYPES_COLUMN} {_COUNT} AFTER {after}")
    for v in _wide_views(others=True):
        out.append(f"ALTER TABLE {db}.{v.name} MODIFY QUERY {v.select.replace('{src}', f'{db}.{v.source}')}")
    (totals,) = USERS_BY_DAY.projections
    out.append(f"ALTER TABLE {db}.{USERS_BY_DAY.name} DROP PROJECTION IF EXISTS {totals.name}")
    out.extend(_add_projection(db, USERS_BY_DAY.name, totals))
    return tuple(out)


def properties_statements(db: str = "{db}") -> tuple[str, ...]:
    """Migration 6: the events' experiment columns and properties. Rows stored before hold "" and ``{}``, which is
    exact: the sink kept no properties until then. ``ADD COLUMN IF NOT EXISTS`` can re-run."""
    out: list[str] = []
    types = dict(EVENTS.columns)
    names = EVENTS.column_names
    for name, version in EVENTS.added:
        if version == PROPERTIES_MIGRATION:
            after = names[names.index(name) - 1]
            out.append(f"ALTER TABLE {db}.{EVENTS.name} ADD COLUMN IF NOT EXISTS {name} {types[name]} AFTER {after}")
    return tuple(out)


def experiment_rollup_statements(db: str = "{db}") -> tuple[str, ...]:
    """Migration 7: the experiments' rollup, a one-off backfill from the events already stored (only while it is
    empty, before its view exists, as migration 2 did), then the view that keeps it."""
    return (
        table_ddl(EXPERIMENT_USERS_BY_DAY, db),
        backfill_sql(_EXPERIMENT_MV, db),
        view_ddl(_EXPERIMENT_MV, db),
    )


def exact_distinct_statements(db: str = "{db}") -> tuple[str, ...]:
    """Migration 8, first part: exact distinct users and items in the event rollups.

    Per rollup: the two state columns, the view's new query (``MODIFY QUERY`` swaps it in place, so no insert goes
    uncounted between a drop and a create), and the rollup emptied: rows written before hold empty exact states,
    which a merge cannot fill. :func:`exact_distinct_rebuild` then fills them again from ``events``, a day at a time.
    Every statement can re-run. Inserts into ``events`` while the migration runs would be counted twice or not at
    all in the rollups: the embedded owner migrates before its sink starts; on a server, stop the sinks
    (``clickstream consume``) for the migration.
    """
    out: list[str] = []
    for table, view in zip(EVENT_ROLLUPS, _EVENT_VIEWS, strict=True):
        names = table.column_names
        for column in EXACT_COLUMNS.values():
            after = names[names.index(column) - 1]
            out.append(
                f"ALTER TABLE {db}.{table.name} ADD COLUMN IF NOT EXISTS {column} {EXACT_STATE_TYPE} AFTER {after}"
            )
        out.append(f"ALTER TABLE {db}.{view.name} MODIFY QUERY {view.select.replace('{src}', f'{db}.{view.source}')}")
        out.append(f"TRUNCATE TABLE IF EXISTS {db}.{table.name}")
    return tuple(out)


def exact_distinct_rebuild() -> tuple[str, ...]:
    """Migration 8, second part: each event rollup filled from the events of one day (query parameter ``day``).

    Texts with a ``{db}`` slot (formatted by ``Store.migrate``, which leaves ``{day:Date}`` for the binding).

    A day at a time bounds the memory of the aggregation (all of 10M events at once passed the embedded engine's 1 GB
    limit, and so did one day of 1.4M events once, on a loaded machine, until the aggregation could spill to disk past
    256 MiB); every bucket of these rollups lies within one day. The inserts do not deduplicate: a re-run after a
    failure must not have its blocks dropped as repeats of the first attempt's.
    """
    out: list[str] = []
    for table, view in zip(EVENT_ROLLUPS, _EVENT_VIEWS, strict=True):
        select = view.select.replace(
            "FROM {src} GROUP BY", f"FROM {{db}}.{view.source} WHERE toDate(event_time) = {{{{day:Date}}}} GROUP BY"
        )
        out.append(
            f"INSERT INTO {{db}}.{table.name} ({', '.join(table.column_names)}) {select} "
            "SETTINGS insert_deduplicate = 0, async_insert = 0, max_bytes_before_external_group_by = 268435456"
        )
    return tuple(out)


def local_ddl(database: str, dedup_window: int = 100_000) -> list[str]:
    """Every statement that builds the schema on one machine, for ``database`` (e.g. to review or apply by hand)."""
    db = _check_ident(database, "database")
    stmts = [table_ddl(t, db, dedup_window) for t in (EVENTS, DEAD_LETTERS, *VIEW_TARGETS, *ALERT_TABLES)]
    stmts += [view_ddl(v, db) for v in VIEWS]
    return stmts


def cluster_ddl(database: str, cluster: str = "clickstream", dedup_window: int = 1000) -> list[str]:
    """The same schema for a ClickHouse cluster: replicated ``<name>_local`` tables and ``Distributed`` tables.

    Uses the server macros ``{shard}`` and ``{replica}`` (set in each node's config). Inserts go to the
    ``Distributed`` ``events`` table, which routes rows by ``cityHash64(user_id)``; each shard's views fill its local
    rollups; queries read the ``Distributed`` names and ClickHouse merges the partial aggregates.
    ``replicated_deduplication_window`` keeps the sink's ``insert_deduplication_token`` effective (insert with
    ``distributed_foreground_insert = 1``, formerly ``insert_distributed_sync``, so the token reaches the shard).

    Args:
        database: the database (a plain identifier).
        cluster: the cluster name from ``remote_servers``.
        dedup_window: blocks remembered for insert deduplication on replicated tables.
    """
    db = _check_ident(database, "database")
    cl = _check_ident(cluster, "cluster")
    on = f" ON CLUSTER '{cl}'"
    stmts = [f"CREATE DATABASE IF NOT EXISTS {db}{on}"]
    for t in (EVENTS, DEAD_LETTERS, *VIEW_TARGETS, *ALERT_TABLES):
        args = ", ".join((f"'/clickhouse/tables/{{shard}}/{db}/{t.name}'", "'{replica}'", *t.engine_args))
        engine = f"Replicated{t.engine}({args})"
        body = _body(t, engine, "replicated_deduplication_window", dedup_window)
        stmts.append(f"CREATE TABLE IF NOT EXISTS {db}.{t.name}_local{on}\n(\n    {_columns_sql(t)}\n)\n{body}")
        stmts.append(
            f"CREATE TABLE IF NOT EXISTS {db}.{t.name}{on} AS {db}.{t.name}_local\n"
            f"ENGINE = Distributed('{cl}', '{db}', '{t.name}_local', {t.shard_key})"
        )
    stmts += [view_ddl(v, db, suffix="_local", on_cluster=on) for v in VIEWS]
    return stmts


def ttl_statement(database: str, days: int) -> str:
    """``ALTER TABLE ... MODIFY TTL`` dropping events older than ``days`` (rollups keep their history)."""
    db = _check_ident(database, "database")
    if not isinstance(days, int) or isinstance(days, bool) or not 1 <= days <= 36_500:
        raise ValueError(f"retention days {days!r} is out of range; expected an integer 1..36500")
    return f"ALTER TABLE {db}.events MODIFY TTL toDateTime(event_time) + INTERVAL {days} DAY"


# --- property columns: a LowCardinality copy of a frequently filtered event property ---------------------------

# A property key (``prop.<key>`` in queries, CLICKSTREAM_PROPERTY_COLUMNS): letters, digits, _ $ -, with dots for a
# path into nested objects. Keys that match are safe to format into SQL as quoted identifiers.
PROPERTY_KEY_PATTERN = r"^[A-Za-z0-9_$-]{1,64}(?:\.[A-Za-z0-9_$-]{1,64}){0,7}\Z"
PROPERTY_KEY_RE = re.compile(PROPERTY_KEY_PATTERN)
# Property columns are named ``prop/<key>`` with each dot written as ``/`` (a key never holds a slash, so two keys
# never share a name); the name is quoted with backticks wherever it is used.
PROPERTY_COLUMN_PREFIX = "prop/"


def property_expr(key: str) -> str:
    """A property as a String from the ``properties`` JSON column ('' where an event lacks the key); ``key`` must
    match :data:`PROPERTY_KEY_PATTERN`."""
    _check_property_key(key)
    path = ".".join(f"`{part}`" for part in key.split("."))
    return f"properties.{path}::String"


def property_column(key: str) -> str:
    """The name of ``key``'s property column (unquoted)."""
    _check_property_key(key)
    return PROPERTY_COLUMN_PREFIX + key.replace(".", "/")


def property_key_of_column(column: str) -> str | None:
    """The key a property column holds, or None when ``column`` is not one."""
    if not column.startswith(PROPERTY_COLUMN_PREFIX):
        return None
    key = column[len(PROPERTY_COLUMN_PREFIX) :].replace("/", ".")
    return key if PROPERTY_KEY_RE.match(key) else None


def property_column_statements(key: str, db: str = "{db}") -> tuple[str, ...]:
    """Add ``key``'s property column to events and fill it in the parts stored before (a mutation, waited for).

    The column is ``MATERIALIZED`` from exactly the expression a query on ``prop.<key>`` reads (:func:`property_expr`),
    so reading it gives the same values; as ``LowCardinality(String)`` a filter compares dictionary positions instead
    of each row's string, and a breakdown groups by them (bench/properties_filter.py measures both forms).
    ``MATERIALIZED`` columns are not part of ``SELECT *`` nor of inserts, so the sink and user SQL see no change.
    """
    column = f"`{property_column(key)}`"
    return (
        f"ALTER TABLE {db}.{EVENTS.name} ADD COLUMN IF NOT EXISTS {column} LowCardinality(String) "
        f"MATERIALIZED {property_expr(key)}",
        f"ALTER TABLE {db}.{EVENTS.name} MATERIALIZE COLUMN {column} SETTINGS mutations_sync = 2",
    )


def _check_property_key(key: str) -> None:
    if not PROPERTY_KEY_RE.match(key):
        raise ValueError(f"{key[:40]!r} is not a property key")
