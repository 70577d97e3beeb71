"""Named analytics queries: every metric the notebooks and the dashboard show, returned as pandas DataFrames.

Every query takes a time window (``start`` inclusive, ``end`` exclusive; UTC datetimes or ISO strings, None = open)
and optional filters (:data:`FILTERS`: interaction_type, device, country, referrer, item_id — a string, a list of
strings, or None for all). Filter and parameter values are validated (:class:`~clickstream_lib.errors.QueryError`,
a ``ValueError``) and always bound as ClickHouse query parameters (``{name:Type}``); only whitelisted identifiers
(a column from a fixed list, the validated database name) are formatted into SQL.

Where a rollup (see :mod:`clickstream_lib.schema`) can answer exactly the same question — its time grain divides
the window and it keeps every filtered column — ``source="auto"`` reads the rollup, otherwise the raw ``events``
table. Every figure is exact either way: counts and sums, and distinct users/items, which a rollup merges from
exact sets (``uniqExact`` states). Only ``source="approx"`` gives estimates: distinct counts from the rollups'
``uniqCombined`` states (HyperLogLog-style) where a rollup answers. ``df.attrs["source"]`` says which table was
read, ``df.attrs["estimated"]`` whether a figure is an estimate, and ``df.attrs["error_bound"]`` its relative error
bound (three standard errors; 0 when exact).

An empty dimension value (an event without device, country, referrer, experiment or property) is shown as
:data:`NONE_LABEL` in breakdowns, and the same label as a filter value selects those events.

Example::

    from clickstream_lib import queries
    queries.kpis(store)                                   # one row: total_interactions, unique_users, ...
    queries.run(store, "top_items", limit=5, device="mobile", start=datetime(2026, 11, 29, tzinfo=UTC))
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

import numpy as np
import pandas as pd

from .errors import QueryError

# The machinery, also reached as queries.<name> (explicit re-exports).
from .query_engine import (
    _NEVER_EMPTY as _NEVER_EMPTY,
    BUCKET_SECONDS as BUCKET_SECONDS,
    BUCKETS as BUCKETS,
    EVENT_ROLLUPS as EVENT_ROLLUPS,
    EXPERIMENT_ROLLUP as EXPERIMENT_ROLLUP,
    FILTERS as FILTERS,
    FUNNEL_STEPS as FUNNEL_STEPS,
    ITEM_ROLLUP as ITEM_ROLLUP,
    NONE_LABEL as NONE_LABEL,
    PROPERTY_PREFIX as PROPERTY_PREFIX,
    QUERIES as QUERIES,
    SESSION_BUCKETS as SESSION_BUCKETS,
    USER_ROLLUP as USER_ROLLUP,
    Builder as Builder,
    NamedQuery as NamedQuery,
    Param as Param,
    Query as Query,
    Rollup as Rollup,
    _as_utc as _as_utc,
    _by_user as _by_user,
    _ms as _ms,
    column_expr as column_expr,
    plan as plan,
    property_key as property_key,
    read_only as read_only,
    run as run,
    run_many as run_many,
)
from .schema import COUNT_COLUMNS, TYPE_COLUMNS, USER_TOTAL_SQL
from .store import Store

# --- builders --------------------------------------------------------------------------------------------------

_PURCHASE_REVENUE = "toFloat64(sumIf(price, interaction_type = 'purchase'))"


def _kpis(q: Query) -> str:
    rollup = q.pick(*EVENT_ROLLUPS)
    if rollup:
        approx = q.source == "approx"
        if approx:
            q.error_bound = rollup.error_bound
        return (
            f"SELECT sum(events) AS total_interactions, {rollup.distinct('users', approx)} AS unique_users, "
            f"{rollup.distinct('items', approx)} AS unique_items, toFloat64(sum(revenue)) AS revenue "
            f"FROM {q.table(rollup.table)} {q.where(rollup=rollup)}"
        )
    return (
        "SELECT count() AS total_interactions, uniqExact(user_id) AS unique_users, "
        f"uniqExact(item_id) AS unique_items, {_PURCHASE_REVENUE} AS revenue "
        f"FROM {q.table('events')} {q.where()}"
    )


def _breakdown(q: Query) -> str:
    by = q.options["by"]  # one of FILTERS or prop.<key> (validated): safe to format
    expr = column_expr(by, q.property_columns)
    rollup = q.pick(ITEM_ROLLUP, need=[by]) if by == "item_id" else q.pick(*EVENT_ROLLUPS, need=[by])
    having = ""
    if rollup and rollup.wide:
        src, count, where = q.table(rollup.table), f"sum({' + '.join(q.type_columns())})", q.where(rollup=rollup)
        having = "HAVING events > 0"
    elif rollup:
        src, count, where = q.table(rollup.table), "sum(events)", q.where(rollup=rollup)
    else:
        src, count, where = q.table("events"), "count()", q.where()
    label = expr
    if by not in _NEVER_EMPTY:
        q.params["none_label"] = NONE_LABEL
        label = f"if({expr} = '', {{none_label:String}}, {expr})"
    # A label alias of its own: named after the column, it would replace the column in the WHERE clause's filters.
    return (
        f"SELECT {label} AS breakdown_value, {count} AS events, events / sum(events) OVER () AS share "
        f"FROM {src} {where} GROUP BY breakdown_value {having} ORDER BY events DESC, breakdown_value"
    )


def _breakdown_post(df: pd.DataFrame, q: Query) -> pd.DataFrame:
    return df.rename(columns={"breakdown_value": q.options["by"]})


def _timeseries(q: Query) -> str:
    bucket = q.options["bucket"]
    rollup = q.pick(*EVENT_ROLLUPS, max_grain_s=BUCKET_SECONDS[bucket])
    if rollup:
        expr = BUCKETS[bucket].format(col=rollup.time_col)
        return (
            f"SELECT {expr} AS time, interaction_type, sum(events) AS events "
            f"FROM {q.table(rollup.table)} {q.where(rollup=rollup)} "
            "GROUP BY time, interaction_type ORDER BY time, interaction_type"
        )
    expr = BUCKETS[bucket].format(col="event_time")
    return (
        f"SELECT {expr} AS time, interaction_type, count() AS events FROM {q.table('events')} {q.where()} "
        "GROUP BY time, interaction_type ORDER BY time, interaction_type"
    )


def _top(column: str, rollup: Rollup) -> Builder:
    def build(q: Query) -> str:
        q.params["limit"] = q.options["limit"]
        having = ""
        if q.pick(rollup):
            src, where = q.table(rollup.table), q.where(rollup=rollup)
            kept = q.type_columns()
            if len(kept) == len(COUNT_COLUMNS):
                # Every row has an event of some type. Spelled as in users_by_day's user_totals projection, which
                # the optimizer then reads when there is no day filter.
                count = f"sum({USER_TOTAL_SQL})"
            else:
                count = " + ".join(f"sum({c})" for c in kept)  # per-column sums: in the projection too
                having = "HAVING interactions > 0"  # rows of the kept types only, as the raw query counts
        else:
            src, count, where = q.table("events"), "count()", q.where()
        return (
            f"SELECT {column}, {count} AS interactions FROM {src} {where} "
            f"GROUP BY {column} {having} ORDER BY interactions DESC, {column} LIMIT {{limit:UInt32}}"
        )

    return build


def _live_window(q: Query, seconds: int) -> None:
    now = q.options.get("now") or datetime.now(UTC)
    q.start_ms = _ms(now - timedelta(seconds=seconds))
    q.end_ms = _ms(now)


def _active_users(q: Query) -> str:
    _live_window(q, q.options["minutes"] * 60)
    since = q.options.get("since")
    if since is not None and q.start_ms is not None:  # within a dashboard's window: never more than its users
        q.start_ms = max(q.start_ms, _ms(since) or 0)
    q.end_ms = None  # events stamped slightly ahead of this clock are still "active now"
    q.params["minutes"] = q.options["minutes"]
    return (
        "SELECT uniqExact(user_id) AS active_users, count() AS events, {minutes:UInt32} AS minutes "
        f"FROM {q.table('events')} {q.where()}"
    )


def _events_per_second(q: Query) -> str:
    _live_window(q, q.options["seconds"])
    q.params["seconds"] = q.options["seconds"]
    return (
        "SELECT count() AS events, {seconds:UInt32} AS seconds, events / {seconds:UInt32} AS events_per_second "
        f"FROM {q.table('events')} {q.where()}"
    )


def _funnel(q: Query) -> str:
    _by_user(q)
    q.params["window_ms"] = q.options["window_s"] * 1000
    steps = []
    for i, step in enumerate(FUNNEL_STEPS):
        q.params[f"step{i}"] = step
        steps.append(f"interaction_type = {{step{i}:String}}")
    # strict_increase: a step must come strictly after the previous one, so ties never fake an ordered path.
    return (
        "SELECT level, count() AS users FROM ("
        " SELECT user_id, windowFunnel({window_ms:UInt64}, 'strict_increase')"
        f"(toUInt64(toUnixTimestamp64Milli(event_time)), {', '.join(steps)}) AS level"
        f" FROM {q.table('events')} {q.where()} GROUP BY user_id"
        ") GROUP BY level ORDER BY level"
    )


def _funnel_post(df: pd.DataFrame, q: Query) -> pd.DataFrame:
    by_level = dict(zip(df["level"].astype(int), df["users"].astype(int), strict=True)) if len(df) else {}
    reached = [sum(n for lvl, n in by_level.items() if lvl >= k) for k in range(1, len(FUNNEL_STEPS) + 1)]
    out = pd.DataFrame({"step": range(1, len(FUNNEL_STEPS) + 1), "interaction_type": FUNNEL_STEPS, "users": reached})
    users = out["users"].astype(float)
    out["conversion_from_previous"] = users / users.shift(1).fillna(users.iloc[0]).replace(0, np.nan)
    out["conversion_from_start"] = users / (users.iloc[0] if users.iloc[0] else np.nan)
    return out


def _session_rows(q: Query) -> str:
    _by_user(q)
    q.params["gap_ms"] = q.options["gap_s"] * 1000
    # One row per session (n events, duration_ms, k = its number among the user's sessions): a session starts at a
    # user's first event and wherever the gap to the previous event exceeds gap_ms. Sizes and durations come from
    # the start positions, so no nested arrays and no per-session user_id are built (measured at 10M events: ~1.6x
    # faster than splitting the arrays); the user count is the number of first sessions.
    return (
        "SELECT n, duration_ms, k FROM ("
        " SELECT arrayFilter((i, t, p) -> i = 1 OR t - p > {gap_ms:Int64}, arrayEnumerate(ts), ts,"
        " arrayPushFront(arrayPopBack(ts), ts[1])) AS starts,"
        " arrayPushBack(arrayMap(i -> toUInt64(i - 1), arrayPopFront(starts)), length(ts)) AS ends,"
        " arrayMap((b, e) -> e - b + 1, starts, ends) AS ns, arrayMap((b, e) -> ts[e] - ts[b], starts, ends) AS ds"
        " FROM ("
        "  SELECT arraySort(groupArray(toUnixTimestamp64Milli(event_time))) AS ts"
        f"  FROM {q.table('events')} {q.where()} GROUP BY user_id)"
        ") ARRAY JOIN ns AS n, ds AS duration_ms, arrayEnumerate(ns) AS k"
    )


def _sessions(q: Query) -> str:
    return (
        "SELECT count() AS sessions, countIf(k = 1) AS users, countIf(n = 1) / count() AS bounce_rate, "
        "avg(n) AS events_per_session, avg(duration_ms) / 1000 AS avg_duration_s, "
        "quantileExact(0.5)(duration_ms) / 1000 AS p50_duration_s, "
        "quantileExact(0.9)(duration_ms) / 1000 AS p90_duration_s "
        f"FROM ({_session_rows(q)})"
    )


def _session_durations(q: Query) -> str:
    return (
        "SELECT multiIf(n = 1, 0, duration_ms < 60000, 1, duration_ms < 300000, 2, duration_ms < 900000, 3, "
        "duration_ms < 1800000, 4, duration_ms < 3600000, 5, 6) AS bucket_index, count() AS sessions "
        f"FROM ({_session_rows(q)}) GROUP BY bucket_index ORDER BY bucket_index"
    )


def _session_durations_post(df: pd.DataFrame, q: Query) -> pd.DataFrame:
    counts = dict(zip(df["bucket_index"].astype(int), df["sessions"].astype(int), strict=True)) if len(df) else {}
    n = [counts.get(i, 0) for i in range(len(SESSION_BUCKETS))]
    total = sum(n)
    return pd.DataFrame(
        {"duration": SESSION_BUCKETS, "sessions": n, "share": [c / total if total else np.nan for c in n]}
    )


def _retention(q: Query) -> str:
    _by_user(q)
    q.params["days"] = q.options["days"]
    return (
        "SELECT cohort, day_n, count() AS users FROM ("
        " SELECT arrayMin(days) AS cohort, days FROM ("
        f"  SELECT user_id, groupUniqArray(toDate(event_time)) AS days FROM {q.table('events')} {q.where()}"
        "  GROUP BY user_id)"
        ") ARRAY JOIN arrayMap(d -> toUInt32(dateDiff('day', cohort, d)), days) AS day_n "
        "WHERE day_n <= {days:UInt32} GROUP BY cohort, day_n ORDER BY cohort, day_n"
    )


def _retention_post(df: pd.DataFrame, q: Query) -> pd.DataFrame:
    if df.empty:
        return pd.DataFrame({"cohort": [], "day_n": [], "users": [], "cohort_size": [], "retention": []})
    df = df.astype({"day_n": int, "users": int})
    size = df[df["day_n"] == 0].set_index("cohort")["users"]
    df["cohort_size"] = df["cohort"].map(size).astype(int)
    df["retention"] = df["users"] / df["cohort_size"]
    return df.reset_index(drop=True)


def _item_performance(q: Query) -> str:
    q.params["limit"] = q.options["limit"]
    having = ""
    if q.pick(ITEM_ROLLUP):
        kept = q.type_columns()
        sel = ", ".join(f"{'sum(' + c + ')' if c in kept else 'toUInt64(0)'} AS {c}" for c in TYPE_COLUMNS.values())
        revenue = "toFloat64(sum(revenue))" if "purchases" in kept else "toFloat64(0)"
        sel += f", {revenue} AS revenue"
        src, where = q.table(ITEM_ROLLUP.table), q.where(rollup=ITEM_ROLLUP)
        # Items with events of the kept types (other types included when unfiltered), as in the raw query. The known
        # types' sums are selected under their column names; the other types' sum is not selected.
        known = TYPE_COLUMNS.values()
        having = f"HAVING {' + '.join(c if c in known else f'sum({c})' for c in kept)} > 0"
    else:
        sel = ", ".join(f"countIf(interaction_type = '{t}') AS {c}" for t, c in TYPE_COLUMNS.items())
        sel += f", {_PURCHASE_REVENUE} AS revenue"
        src, where = q.table("events"), q.where()
    return (
        f"SELECT item_id, {sel} FROM {src} {where} GROUP BY item_id {having} "
        "ORDER BY revenue DESC, purchases DESC, item_id LIMIT {limit:UInt32}"
    )


def _item_performance_post(df: pd.DataFrame, q: Query) -> pd.DataFrame:
    views = df["views"].astype(float).replace(0, np.nan)
    df["click_through"] = df["clicks"].astype(float) / views
    df["conversion"] = df["purchases"].astype(float) / views
    return df


# --- experiments (A/B) and the case study's daily facts ----------------------------------------------------------

CONTROL_VARIATION = "control"
_Z95 = 1.959963984540054  # the standard normal's 97.5th percentile: two-sided 95%
_EXPERIMENT_COUNTS = (
    "uniqExact(user_id) AS users, count() AS interactions, countIf(interaction_type = 'view') AS views, "
    "countIf(interaction_type = 'click') AS clicks, countIf(interaction_type = 'purchase') AS purchases"
)


def _experiment_sql(q: Query, keys: str) -> str:
    """Per ``keys`` (experiment and variation, with ``day`` for the daily series): users, interactions, views,
    clicks, purchases and purchasers (users with a purchase). From the experiments' rollup when it answers exactly
    (no type or other filter; whole days), in two steps: per user, then per key, so each user counts once."""
    rollup = q.pick(EXPERIMENT_ROLLUP)
    if rollup:
        where = q.where(rollup=rollup)
        return (
            f"SELECT {keys}, count() AS users, sum(i) AS interactions, sum(v) AS views, sum(c) AS clicks, "
            "sum(p) AS purchases, countIf(p > 0) AS purchasers FROM ("
            f" SELECT {keys}, user_id, sum(interactions) AS i, sum(views) AS v, sum(clicks) AS c, sum(purchases) AS p"
            f" FROM {q.table(rollup.table)} {where} GROUP BY {keys}, user_id"
            f") GROUP BY {keys} ORDER BY {keys}"
        )
    where = q.where()
    where = f"{where} AND experiment_name != ''" if where else "WHERE experiment_name != ''"
    day = "toDate(event_time) AS day, " if keys.startswith("day") else ""
    return (
        f"SELECT {day}experiment_name, experiment_variation, {_EXPERIMENT_COUNTS}, "
        "uniqExactIf(user_id, interaction_type = 'purchase') AS purchasers "
        f"FROM {q.table('events')} {where} GROUP BY {keys} ORDER BY {keys}"
    )


def _experiments(q: Query) -> str:
    return _experiment_sql(q, "experiment_name, experiment_variation")


def _normal_sf2(z: float) -> float:
    """Two-sided tail probability of a standard normal beyond ``|z|``."""
    return math.erfc(abs(z) / math.sqrt(2))


def compare_proportions(x1: int, n1: int, x0: int, n0: int) -> tuple[float, float, float, float]:
    """Variation (``x1`` of ``n1``) against control (``x0`` of ``n0``): difference of the proportions, its 95%
    confidence interval (Wald, unpooled standard error) and the two-sided p-value of the two-proportion z-test
    (pooled standard error). NaN where a proportion is undefined (no users) or the test has no variance."""
    if not n1 or not n0:
        return math.nan, math.nan, math.nan, math.nan
    p1, p0 = x1 / n1, x0 / n0
    diff = p1 - p0
    se = math.sqrt(p1 * (1 - p1) / n1 + p0 * (1 - p0) / n0)
    pooled = (x1 + x0) / (n1 + n0)
    se_pooled = math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n0))
    p_value = _normal_sf2(diff / se_pooled) if se_pooled > 0 else math.nan
    return diff, diff - _Z95 * se, diff + _Z95 * se, p_value


def _experiments_post(df: pd.DataFrame, q: Query) -> pd.DataFrame:
    df = df.astype({c: "int64" for c in ("users", "interactions", "views", "clicks", "purchases", "purchasers")})
    df["conversion_rate"] = df["purchasers"] / df["users"].replace(0, np.nan)
    rows = []
    for _, g in df.groupby("experiment_name", sort=True):
        names = list(g["experiment_variation"])
        control = CONTROL_VARIATION if CONTROL_VARIATION in names else names[0]
        c = g[g["experiment_variation"] == control].iloc[0]
        for _, r in g.iterrows():
            diff, lo, hi, p = compare_proportions(
                int(r["purchasers"]), int(r["users"]), int(c["purchasers"]), int(c["users"])
            )
            rows.append((control, diff, lo, hi, p))
    stats = pd.DataFrame(rows, columns=["control", "diff_vs_control", "ci_low", "ci_high", "p_value"], index=df.index)
    return pd.concat([df, stats], axis=1) if len(df) else df.assign(**{c: [] for c in stats.columns})


def _experiment_daily(q: Query) -> str:
    return _experiment_sql(q, "day, experiment_name, experiment_variation")


def _daily(key: str, rollup: Rollup, day_expr: str) -> Builder:
    """Per day and ``key`` (user_id / item_id): interactions, views, clicks, purchases (the case study's fct_user
    and fct_item). The wide rollup answers when no type filter narrows it (its columns are those counts)."""

    def build(q: Query) -> str:
        q.params["limit"] = q.options["limit"]
        types = q.filters.get("interaction_type")
        if types is None and q.pick(rollup):
            src, where = q.table(rollup.table), q.where(rollup=rollup)
            # views, clicks and purchases name the sums selected after it (an alias is the query's, not its column's)
            others = " + ".join(f"sum({c})" for c in COUNT_COLUMNS if c not in ("views", "clicks", "purchases"))
            sel = f"views + clicks + purchases + {others} AS interactions, sum(views) AS views, "
            sel += "sum(clicks) AS clicks, sum(purchases) AS purchases"
            day = day_expr
        else:
            if types is not None and q.source == "rollup":
                raise QueryError("source", f"{q.name} with an interaction_type filter reads events")
            q.used = "raw"
            src, where, day = q.table("events"), q.where(), "toDate(event_time)"
            sel = (
                "count() AS interactions, countIf(interaction_type = 'view') AS views, "
                "countIf(interaction_type = 'click') AS clicks, countIf(interaction_type = 'purchase') AS purchases"
            )
        return (
            f"SELECT {day} AS day, {key}, {sel} FROM {src} {where} GROUP BY day, {key} "
            f"HAVING interactions > 0 ORDER BY day, {key} LIMIT {{limit:UInt32}}"
        )

    return build


def _ingestion_partitions(q: Query) -> str:
    return (
        "SELECT kafka_topic AS topic, kafka_partition AS partition, count() AS events, "
        "min(kafka_offset) AS min_offset, max(kafka_offset) AS max_offset, "
        # A roaring bitmap of the offsets counts the distinct ones exactly in about a bit per offset (the offsets of a
        # partition are dense): uniqExact's hash set took ~42 MiB per million events and could not spill.
        "count() - groupBitmap(kafka_offset) AS duplicates, max(ingest_time) AS last_ingest "
        f"FROM {q.table('events')} {q.where(time_col='ingest_time')} "
        "GROUP BY topic, partition ORDER BY topic, partition"
    )


def _ingestion_latency(q: Query) -> str:
    ev = "toUnixTimestamp64Milli(ingest_time) - toUnixTimestamp64Milli(event_time)"
    kf = "toUnixTimestamp64Milli(ingest_time) - toUnixTimestamp64Milli(kafka_timestamp)"
    return (
        f"SELECT count() AS events, quantilesExact(0.5, 0.9, 0.99)({ev}) AS ev_q, max({ev}) AS ev_max, "
        f"quantilesExact(0.5, 0.9, 0.99)({kf}) AS kf_q, max({kf}) AS kf_max "
        f"FROM {q.table('events')} {q.where(time_col='ingest_time')}"
    )


def _ingestion_latency_post(df: pd.DataFrame, q: Query) -> pd.DataFrame:
    rows = []
    n = int(df["events"].iloc[0]) if len(df) else 0
    for label, qcol, mcol in (("event_to_ingest", "ev_q", "ev_max"), ("kafka_to_ingest", "kf_q", "kf_max")):
        qs = list(df[qcol].iloc[0]) if n else [np.nan] * 3
        rows.append(
            {
                "latency": label,
                "events": n,
                "p50_ms": qs[0],
                "p90_ms": qs[1],
                "p99_ms": qs[2],
                "max_ms": df[mcol].iloc[0] if n else np.nan,
            }
        )
    return pd.DataFrame(rows)


def _dead_letters(q: Query) -> str:
    return (
        "SELECT reason, count() AS messages, max(ingest_time) AS last_seen "
        f"FROM {q.table('dead_letters')} {q.where(time_col='ingest_time', use_filters=False)} "
        "GROUP BY reason ORDER BY messages DESC, reason"
    )


def _freshness(q: Query) -> str:
    ev = q.table("events")
    # Separate scalar subqueries: count() and max(event_time) (the partition key) are answered from part metadata.
    return (
        f"SELECT (SELECT count() FROM {ev}) AS events, "
        f"if(events = 0, NULL, (SELECT max(event_time) FROM {ev})) AS newest_event_time, "
        f"if(events = 0, NULL, (SELECT max(ingest_time) FROM {ev})) AS newest_ingest_time, "
        "dateDiff('millisecond', newest_ingest_time, now64(3)) / 1000 AS seconds_since_ingest"
    )


def _freshness_post(df: pd.DataFrame, q: Query) -> pd.DataFrame:
    # Nullable(DateTime64) columns arrive without their zone; say UTC like every other time column.
    for col in ("newest_event_time", "newest_ingest_time"):
        df[col] = pd.to_datetime(df[col], utc=True)
    return df


_NO_EVENT_ID = "00000000-0000-0000-0000-000000000000"


def _topic_where(q: Query) -> str:
    if not q.options.get("topic"):
        return ""
    q.params["topic"] = q.options["topic"]
    return "WHERE kafka_topic = {topic:String}"


def _reconcile(q: Query) -> str:
    # Duplicates are rows sharing an event_id (count() - uniqExact(event_id)); offsets_stored counts the distinct
    # Kafka offsets held by events and dead letters together (a roaring bitmap: offsets of a partition are dense).
    where = _topic_where(q)
    return (
        "SELECT kafka_topic AS topic, kafka_partition AS partition, countIf(dead = 0) AS rows_stored, "
        "countIf(dead = 1) AS dead_letters, rows_stored - uniqExactIf(event_id, dead = 0) AS duplicates, "
        "groupBitmap(kafka_offset) AS offsets_stored, min(kafka_offset) AS first_offset, "
        "max(kafka_offset) + 1 AS next_offset FROM ("
        f" SELECT kafka_topic, kafka_partition, kafka_offset, event_id, 0 AS dead FROM {q.table('events')} {where}"
        f" UNION ALL SELECT kafka_topic, kafka_partition, kafka_offset, toUUID('{_NO_EVENT_ID}'), 1"
        f" FROM {q.table('dead_letters')} {where}"
        ") GROUP BY topic, partition ORDER BY topic, partition"
    )


def _complete_through(q: Query) -> str:
    # Per partition the newest event time the sink stored (it stores in offset order and commits after the store
    # acknowledged), and the minimum over partitions: every partition has delivered its events up to then. Cut at
    # as_of, of the events stored by then.
    where = _topic_where(q)
    if q.as_of_ms is not None:
        q.params["as_of_ms"] = q.as_of_ms
        cut = "ingest_time <= fromUnixTimestamp64Milli({as_of_ms:Int64}, 'UTC')"
        where = f"{where} AND {cut}" if where else f"WHERE {cut}"
    return (
        "SELECT if(count() = 0, NULL, min(newest)) AS complete_through, count() AS partitions, "
        "if(count() = 0, NULL, max(newest)) AS newest_event_time FROM ("
        f" SELECT kafka_topic, kafka_partition, max(event_time) AS newest FROM {q.table('events')} {where}"
        " GROUP BY kafka_topic, kafka_partition)"
    )


def _complete_through_post(df: pd.DataFrame, q: Query) -> pd.DataFrame:
    for col in ("complete_through", "newest_event_time"):
        df[col] = pd.to_datetime(df[col], utc=True)
    return df


_TOPIC = Param("topic", str, "", help="the Kafka topic (default: every topic in the store)")
_LIMIT = Param("limit", int, 10, minimum=1, maximum=100_000, help="rows to return")
_DAILY_LIMIT = Param("limit", int, 100_000, minimum=1, maximum=10_000_000, help="rows to return")
_NOW = Param("now", datetime, None, help="the reference 'now' (default: the wall clock, UTC)")

QUERIES.update(
    (q.name, q)
    for q in (
        NamedQuery("kpis", "total interactions, unique users, unique items, revenue (one row)", _kpis),
        NamedQuery(
            "breakdown",
            "events and share per value of one column",
            _breakdown,
            (Param("by", str, "interaction_type", choices=FILTERS, properties=True),),
            post=_breakdown_post,
        ),
        NamedQuery(
            "timeseries",
            "events per time bucket and interaction type",
            _timeseries,
            (Param("bucket", str, "minute", choices=tuple(BUCKETS)),),
        ),
        NamedQuery("top_users", "most active users", _top("user_id", USER_ROLLUP), (_LIMIT,)),
        NamedQuery("top_items", "most interacted-with items", _top("item_id", ITEM_ROLLUP), (_LIMIT,)),
        NamedQuery(
            "active_users",
            "distinct users active in the last N minutes (live)",
            _active_users,
            (
                Param("minutes", int, 5, minimum=1, maximum=10_080),
                _NOW,
                Param("since", datetime, None, help="count no events before this time (a dashboard's window start)"),
            ),
            windowed=False,
        ),
        NamedQuery(
            "events_per_second",
            "events per second over the last N seconds (live)",
            _events_per_second,
            (Param("seconds", int, 10, minimum=1, maximum=86_400), _NOW),
            windowed=False,
        ),
        NamedQuery(
            "funnel",
            "ordered funnel view -> click -> add_to_cart -> purchase per user (windowFunnel)",
            _funnel,
            (Param("window_s", int, 1800, minimum=1, maximum=90 * 86_400),),
            filters=tuple(f for f in FILTERS if f != "interaction_type"),
            post=_funnel_post,
        ),
        NamedQuery(
            "sessions",
            "sessions (gap_s inactivity): count, bounce rate, events per session, durations",
            _sessions,
            (Param("gap_s", int, 1800, minimum=1, maximum=86_400),),
        ),
        NamedQuery(
            "session_durations",
            "sessions per duration bucket",
            _session_durations,
            (Param("gap_s", int, 1800, minimum=1, maximum=86_400),),
            post=_session_durations_post,
        ),
        NamedQuery(
            "retention",
            "users of each first-day cohort active again on day N",
            _retention,
            (Param("days", int, 7, minimum=0, maximum=366),),
            post=_retention_post,
        ),
        NamedQuery(
            "item_performance",
            "per item: views, clicks, add to carts, purchases, CTR, conversion, revenue",
            _item_performance,
            (Param("limit", int, 20, minimum=1, maximum=100_000),),
            post=_item_performance_post,
        ),
        NamedQuery(
            "experiments",
            "per experiment and variation: users, interactions, views, clicks, purchases, conversion, "
            "difference to control with 95% CI and z-test p-value",
            _experiments,
            post=_experiments_post,
        ),
        NamedQuery(
            "experiment_daily",
            "per day, experiment and variation: users, interactions, views, clicks, purchases, purchasers "
            "(fct_experiment)",
            _experiment_daily,
        ),
        NamedQuery(
            "user_daily",
            "per day and user: interactions, views, clicks, purchases (fct_user)",
            _daily("user_id", USER_ROLLUP, "day"),
            (_DAILY_LIMIT,),
        ),
        NamedQuery(
            "item_daily",
            "per day and item: interactions, views, clicks, purchases (fct_item)",
            _daily("item_id", ITEM_ROLLUP, "toDate(hour)"),
            (_DAILY_LIMIT,),
        ),
        NamedQuery(
            "ingestion_partitions",
            "per Kafka partition: events, offset range, duplicates, last ingest",
            _ingestion_partitions,
            filters=(),
        ),
        NamedQuery(
            "ingestion_latency",
            "latency percentiles: event time -> ingest, Kafka timestamp -> ingest (ms)",
            _ingestion_latency,
            filters=(),
            post=_ingestion_latency_post,
        ),
        NamedQuery("dead_letters", "dead-lettered messages by reason", _dead_letters, filters=()),
        NamedQuery(
            "freshness", "newest event and ingest time", _freshness, filters=(), windowed=False, post=_freshness_post
        ),
        NamedQuery(
            "reconcile",
            "per Kafka partition: rows stored, dead letters, duplicate event ids, distinct offsets stored, offsets",
            _reconcile,
            (_TOPIC,),
            filters=(),
            windowed=False,
        ),
        NamedQuery(
            "complete_through",
            "the time up to which every partition's events are stored: the minimum over partitions of the newest "
            "stored event time",
            _complete_through,
            (_TOPIC,),
            filters=(),
            windowed=False,
            post=_complete_through_post,
        ),
    )
)


# --- convenience functions -------------------------------------------------------------------------------------


def kpis(store: Store, **kwargs: Any) -> pd.DataFrame:
    """One row: total_interactions, unique_users, unique_items, revenue. Takes start, end, source and filters."""
    return run(store, "kpis", **kwargs)


def breakdown(store: Store, by: str = "interaction_type", **kwargs: Any) -> pd.DataFrame:
    """Events and share per value of ``by`` (one of :data:`FILTERS`), largest first: columns ``by``, events, share."""
    return run(store, "breakdown", by=by, **kwargs)


def timeseries(store: Store, bucket: str = "minute", **kwargs: Any) -> pd.DataFrame:
    """Events per ``bucket`` (second, minute, hour, day) and interaction type: time, interaction_type, events."""
    return run(store, "timeseries", bucket=bucket, **kwargs)


def top_users(store: Store, limit: int = 10, **kwargs: Any) -> pd.DataFrame:
    """The ``limit`` most active users: user_id, interactions (ties by user_id)."""
    return run(store, "top_users", limit=limit, **kwargs)


def top_items(store: Store, limit: int = 10, **kwargs: Any) -> pd.DataFrame:
    """The ``limit`` most interacted-with items: item_id, interactions (ties by item_id)."""
    return run(store, "top_items", limit=limit, **kwargs)


def active_users(store: Store, minutes: int = 5, **kwargs: Any) -> pd.DataFrame:
    """One row: active_users (exact distinct) and events since ``now - minutes`` (``now=`` defaults to the clock),
    or since ``since=`` when that is later (a window's start: never more than the window's unique users)."""
    return run(store, "active_users", minutes=minutes, **kwargs)


def events_per_second(store: Store, seconds: int = 10, **kwargs: Any) -> pd.DataFrame:
    """One row: events in ``[now - seconds, now)`` and events_per_second."""
    return run(store, "events_per_second", seconds=seconds, **kwargs)


def funnel(store: Store, window_s: int = 1800, **kwargs: Any) -> pd.DataFrame:
    """Users reaching each ordered step (view -> click -> add_to_cart -> purchase within ``window_s``).

    Columns: step, interaction_type, users, conversion_from_previous, conversion_from_start. The funnel spans all
    interaction types, so it takes every filter except interaction_type.
    """
    return run(store, "funnel", window_s=window_s, **kwargs)


def sessions(store: Store, gap_s: int = 1800, **kwargs: Any) -> pd.DataFrame:
    """One row: sessions, users, bounce_rate, events_per_session, avg/p50/p90 duration (s).

    A session is a user's run of events with no gap over ``gap_s``; sessions are cut at the window's edges.
    """
    return run(store, "sessions", gap_s=gap_s, **kwargs)


def session_durations(store: Store, gap_s: int = 1800, **kwargs: Any) -> pd.DataFrame:
    """Sessions per duration bucket (:data:`SESSION_BUCKETS`): duration, sessions, share."""
    return run(store, "session_durations", gap_s=gap_s, **kwargs)


def retention(store: Store, days: int = 7, **kwargs: Any) -> pd.DataFrame:
    """Cohorts by first active day (within the window): cohort, day_n, users, cohort_size, retention."""
    return run(store, "retention", days=days, **kwargs)


def item_performance(store: Store, limit: int = 20, **kwargs: Any) -> pd.DataFrame:
    """Per item, by revenue: views, clicks, add_to_carts, purchases, revenue, click_through, conversion."""
    return run(store, "item_performance", limit=limit, **kwargs)


def experiments(store: Store, **kwargs: Any) -> pd.DataFrame:
    """Per experiment and variation (events with an experiment_name): users, interactions, views, clicks, purchases,
    purchasers (users with a purchase), conversion_rate (purchasers / users), and against the experiment's control
    (the variation named ``control``, else the first in order): diff_vs_control, its 95% CI (ci_low, ci_high) and
    the two-proportion z-test p_value. Takes start, end and the filters."""
    return run(store, "experiments", **kwargs)


def experiment_daily(store: Store, **kwargs: Any) -> pd.DataFrame:
    """The case study's fct_experiment: per day, experiment and variation, users, interactions, views, clicks and
    purchases."""
    return run(store, "experiment_daily", **kwargs)


class IngestionHealth(NamedTuple):
    """The sink's health: per-partition offsets, latency percentiles, dead letters by reason."""

    partitions: pd.DataFrame
    latency: pd.DataFrame
    dead_letters: pd.DataFrame


def ingestion_health(store: Store, *, start: Any = None, end: Any = None) -> IngestionHealth:
    """Per-partition offsets, latency percentiles and dead letters, for rows ingested in ``[start, end)``."""
    return IngestionHealth(
        run(store, "ingestion_partitions", start=start, end=end),
        run(store, "ingestion_latency", start=start, end=end),
        run(store, "dead_letters", start=start, end=end),
    )


def reconcile(store: Store, topic: str = "") -> pd.DataFrame:
    """Per Kafka partition of ``topic`` (every topic when empty): rows_stored, dead_letters, duplicates (rows sharing
    an event_id), offsets_stored (distinct offsets in events and dead letters), first_offset, next_offset. The
    Kafka side (high watermark, committed offset) is added by :func:`clickstream_lib.panels.reconcile.reconcile`."""
    return run(store, "reconcile", topic=topic)


def complete_through(store: Store, topic: str = "") -> pd.DataFrame:
    """One row: complete_through (every partition's events are stored up to this event time; None when empty),
    partitions, newest_event_time."""
    return run(store, "complete_through", topic=topic)


def freshness(store: Store) -> pd.DataFrame:
    """One row: events, newest_event_time, newest_ingest_time (None when empty), seconds_since_ingest."""
    return run(store, "freshness")


LIVE_PANELS: tuple[str, ...] = (
    "kpis",
    "breakdown",
    "timeseries",
    "top_users",
    "top_items",
    "active_users",
    "events_per_second",
)


def live_panels(
    store: Store, *, start: Any = None, end: Any = None, source: str = "auto", as_of: Any = None, **filters: Any
) -> dict[str, pd.DataFrame]:
    """The dashboard's refresh set (:data:`LIVE_PANELS`) for one window and filter choice, keyed by query name.

    The live queries (active users, events per second) take the filters but not the window: theirs is "now" (active
    users within the window's start). They read one snapshot of a store whose writes this process or its owner holds
    off (``store.consistent_reads``: an embedded store); ``as_of`` cuts every query at one ingest time instead (see
    :func:`~clickstream_lib.query_engine.plan`), as a server store needs.
    """
    windowed = {"start": start, "end": end, "source": source}
    cut = {} if as_of is None else {"as_of": as_of}
    asked = [
        (name, {**filters, **cut, **windowed} if QUERIES[name].windowed else {**filters, **cut}) for name in LIVE_PANELS
    ]
    if start is not None:
        asked[LIVE_PANELS.index("active_users")][1]["since"] = start
    consistent = as_of is None and store.consistent_reads
    return dict(zip(LIVE_PANELS, run_many(store, asked, consistent=consistent), strict=True))


# Paths, funnels of chosen steps and cohort retention live in their own module, which adds its queries to QUERIES
# when imported: imported here so that run() and every reader of QUERIES know them.
from . import analytics as _analytics  # noqa: E402, F401
