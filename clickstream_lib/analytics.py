"""Analytics depth: paths within sessions, funnels of chosen steps, and retention by cohort.

Three named queries, registered into :data:`clickstream_lib.queries.QUERIES` (run them with
:func:`clickstream_lib.queries.run` or the functions below). Like every named query they take a window (``start``,
``end``) and the event filters, and bind every value as a query parameter; only validated integers (step counts) and
whitelisted column names are formatted into the SQL. They count the raw ``events`` table: each answer is exact.
(``paths`` takes the list of interaction types it codes from the ``events_by_day`` rollup, and from the window's
events when the rollup lacks one.)

* ``paths`` — the most common sequences of ``steps`` events (3–7) after (or before) a chosen event, within
  sessions. A session is a user's run of events with no gap over ``gap_s`` (as in ``sessions``); a user's events
  are ordered by time, ties by interaction type then item. ``direction="after"``: from the session's first
  ``event`` (optionally of ``item``) and the next ``steps - 1`` events; ``"before"``: the ``steps - 1`` events up to
  and including the session's last ``event``. A path shorter than ``steps`` ended with its session (a drop-off).
  ``path_steps`` gives the drop-offs per step over every path.
* ``funnel_steps`` — steps chosen by the user (interaction types, each optionally of one item). Order ``strict``:
  a user enters at their first step-1 event in the window; each later step is their first matching event strictly
  after the previous step and at most that step's window later. Order ``any``: a user enters at their first event
  matching any step in the window, and completes each (distinct) step at its first event in
  ``[entry, entry + sum of the windows]``; step k counts users who completed at least k steps. Steps after the
  window's end count (each user gets the full conversion window), entries do not. Optional breakdown by one column
  (the entry event's value; of entry events in one millisecond, the one whose value sorts first, compared by its
  first 10 bytes) and by entry day; per step the time to convert from the previous step (p50, p90).
* ``cohorts`` — users by first active day or week in the window; per period n the users active ``on`` period n or
  ``by`` it (in any of periods 1..n); optional breakdown by one column (the value of the user's first event).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from .errors import QueryError
from .events import interaction_type_problem
from .query_engine import (
    FILTERS,
    FUNNEL_STEPS,
    PROPERTY_PREFIX,
    QUERIES,
    NamedQuery,
    Param,
    Query,
    _by_user,
    column_expr,
    property_key,
    run,
)
from .store import Store

PATH_DIRECTIONS: tuple[str, ...] = ("after", "before")
FUNNEL_ORDERS: tuple[str, ...] = ("strict", "any")
COHORT_PERIODS: tuple[str, ...] = ("day", "week")
RETENTION_MODES: tuple[str, ...] = ("on", "by")
BREAKDOWNS: tuple[str, ...] = ("", *FILTERS)  # "" = no breakdown; prop.<key> also accepted
PATH_END = "(end)"  # the Sankey's node for a session that ended before the path's last step
MAX_FUNNEL_STEPS = 8
_PERIOD_EXPR = {"day": "toDate(event_time)", "week": "toMonday(event_time)"}
_PERIOD_DAYS = {"day": 1, "week": 7}
_MAX_VALUE_LEN = 256

# The per-step columns of a funnel_steps result (after the entry day and the breakdown value, when asked for).
FUNNEL_STEP_COLUMNS: tuple[str, ...] = (
    "step",
    "step_label",
    "users",
    "conversion_from_previous",
    "conversion_from_start",
    "p50_s_from_previous",
    "p90_s_from_previous",
    "p50_s_from_start",
)


@dataclass(frozen=True)
class ListParam(Param):
    """A query option holding a list: strings (``kind=str``) or integers (``kind=int``, each in min..max).

    A single value is taken as a one-element list; a string of comma-separated values is split (as a URL or CLI
    gives it).
    """

    min_len: int = 1
    max_len: int = MAX_FUNNEL_STEPS

    def coerce(self, value: Any) -> Any:
        if value is None:
            return self.default
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",")] if value.strip() else []
        elif isinstance(value, (int, np.integer)) and not isinstance(value, bool):
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise QueryError(self.name, f"expected a list, got {type(value).__name__}")
        if not self.min_len <= len(value) <= self.max_len:
            raise QueryError(self.name, f"{len(value)} values; expected {self.min_len} to {self.max_len}")
        item = Param(self.name, self.kind, minimum=self.minimum, maximum=self.maximum)
        out = []
        for v in value:
            if self.kind is str and not isinstance(v, str):
                raise QueryError(self.name, f"expected strings, got {type(v).__name__}")
            if self.kind is str and len(v) > _MAX_VALUE_LEN:
                raise QueryError(self.name, f"a value of {len(v)} characters is too long; at most {_MAX_VALUE_LEN}")
            out.append(item.coerce(v) if self.kind is int else v)
        return tuple(out)


def _event_type(value: str, name: str) -> str:
    problem = interaction_type_problem(value)
    if problem:
        raise QueryError(name, problem)
    return value


def _breakdown_expr(by: str) -> str:
    """The SQL of a breakdown column ('' = none): a whitelisted column or a validated property."""
    if by.startswith(PROPERTY_PREFIX):
        property_key(by, "by")
    return column_expr(by)


# --- paths -----------------------------------------------------------------------------------------------------


# A path's events packed as one Int64 each: time in ms times 2^20, plus 4 times the code of its interaction type
# (1-based index in a sorted list of types), plus where its item sorts against an anchor's item (0 before, 1 the
# item, 2 after; 0 for other types and without an item). Sorting integers then orders events by time, ties by type,
# and a tie of the anchor's type falls on the same side of the anchor as ordering by item puts it; other ties in one
# type cannot change a path, whose labels are types. The paths group as arrays of codes, named only in the final
# rows. Strings (or tuples) in the per-user arrays cost ~3x the time.
_TYPE_BITS = 1 << 20
_MAX_TYPES = _TYPE_BITS // 4
# The list is every type ``events_by_day`` holds: a few hundred rows, where listing the types of the window read the
# window twice (measured at 10M events over the last 24 h: ~30 ms of ~170). A rollup can lag its events (a
# rebuild, an insert seen half-way), so an event of a type it lacks stops the query with this marker, and run()
# reads the query again with the types listed from the window itself (Query.fallback).
_TYPES_LAG = "CLICKSTREAM_PATH_TYPES_LAG"


def _path_rows(q: Query) -> str:
    """One row per session that holds the anchor event: ``path``, its labels (at most ``steps``): type codes into
    ``types`` (a ``WITH`` alias, :func:`_with_path_types`)."""
    _by_user(q)
    steps, direction = q.options["steps"], q.options["direction"]
    q.params["event"] = _event_type(q.options["event"], "event")
    q.params["gap_ms"] = q.options["gap_s"] * 1000
    q.params["steps"] = steps
    if direction == "after":
        find, cut = "arrayFirstIndex", "arraySlice(l, a, {steps:UInt32})"
    else:
        find, cut = "arrayLastIndex", "arraySlice(l, greatest(1, a - {steps:UInt32} + 1), least(a, {steps:UInt32}))"
    code = "transform(toString(interaction_type), types, arrayEnumerate(types), 0)"
    side, anchor_side = "0", 0
    if q.options["item"]:
        q.params["item"] = q.options["item"]
        side = (
            "if(interaction_type = {event:String},"
            " if(item_id < {item:String}, 0, if(item_id = {item:String}, 1, 2)), 0)"
        )
        anchor_side = 1
    event = (
        f"toUnixTimestamp64Milli(event_time) * {_TYPE_BITS} + {code} * 4 + {side}"
        f" + throwIf(length(types) >= {_MAX_TYPES}, 'more interaction types than a path query can code')"
        f" + throwIf({code} = 0, '{_TYPES_LAG}')"
    )
    label_of = f"toUInt32(intDiv(e % {_TYPE_BITS}, 4))"
    anchor = f"e -> e % {_TYPE_BITS} = indexOf(types, {{event:String}}) * 4 + {anchor_side}"
    # A user's events sorted, split into sessions where the time since the previous event is over gap_ms; per
    # session the anchor's index a (0: none, and arraySlice from 0 is empty) and the labels of the path around it,
    # all inside the user's row: only the paths are unrolled (unrolling sessions first copied every user's events
    # once per session), and only a path's events are labelled (labelling every event first cost ~8% more).
    return (
        "SELECT path FROM ("
        f" SELECT arraySort(groupArray({event})) AS ev, arraySplit((e, d) -> d > {{gap_ms:Int64}}, ev,"
        f" arrayDifference(arrayMap(e -> intDiv(e, {_TYPE_BITS}), ev))) AS sessions"
        f" FROM {q.table('events')} {q.where()} GROUP BY user_id"
        f") ARRAY JOIN arrayFilter(p -> notEmpty(p), arrayMap((l, a) -> arrayMap(e -> {label_of}, {cut}),"
        f" sessions, arrayMap(s -> {find}({anchor}, s), sessions))) AS path"
    )


def _with_path_types(q: Query, body: str) -> str:
    """``body`` under the ``WITH`` clause naming the sorted types it codes (see ``_TYPES_LAG``); its fallback
    (:attr:`Query.fallback`) names the window's own types."""
    listed = "WITH (SELECT arraySort(groupUniqArray(toString(interaction_type))) FROM {}) AS types "
    q.fallback = (_TYPES_LAG, listed.format(f"{q.table('events')} {q.where()}") + body)
    # The subquery inherits the query's settings; a rollup has no projection to force (see _by_user).
    return listed.format(f"{q.table('events_by_day')} SETTINGS force_optimize_projection = 0") + body


def _paths(q: Query) -> str:
    q.params["limit"] = q.options["limit"]
    rows = _path_rows(q)
    # Codes sort as their names do, so the order (ties by path) is the one of the names.
    return _with_path_types(
        q,
        "SELECT arrayMap(c -> types[c], path) AS path_labels, count() AS sessions,"
        f" sessions / sum(sessions) OVER () AS share FROM ({rows})"
        " GROUP BY path ORDER BY sessions DESC, path LIMIT {limit:UInt32}",
    )


def _paths_post(df: pd.DataFrame, q: Query) -> pd.DataFrame:
    steps = q.options["steps"]
    paths = [tuple(str(x) for x in p) for p in df["path_labels"]] if len(df) else []
    out = pd.DataFrame(
        {
            "path": [" → ".join(p) for p in paths],
            "length": [len(p) for p in paths],
            "sessions": df["sessions"].astype("int64").to_numpy() if len(df) else np.array([], dtype="int64"),
            "share": df["share"].astype(float).to_numpy() if len(df) else np.array([], dtype=float),
        }
    )
    for k in range(steps):
        out[f"step_{k + 1}"] = [p[k] if k < len(p) else None for p in paths]
    out["ended"] = out["length"] < steps  # the session ended (after) or began (before) within the path
    return out


def _path_steps(q: Query) -> str:
    rows = _path_rows(q)
    return _with_path_types(
        q,
        "SELECT k AS step, countIf(length(path) >= k) AS sessions, countIf(length(path) = k) AS ended "
        f"FROM ({rows}) ARRAY JOIN range(1, {{steps:UInt32}} + 1) AS k GROUP BY k ORDER BY k",
    )


def _path_steps_post(df: pd.DataFrame, q: Query) -> pd.DataFrame:
    steps = q.options["steps"]
    got = {int(k): (int(s), int(e)) for k, s, e in zip(df["step"], df["sessions"], df["ended"], strict=True)}
    rows = []
    for k in range(1, steps + 1):
        sessions, ended = got.get(k, (0, 0))
        ended = ended if k < steps else 0  # a path of full length did not drop off
        rows.append(
            {"step": k, "sessions": sessions, "dropped": ended, "drop_off": ended / sessions if sessions else np.nan}
        )
    return pd.DataFrame(rows)


# --- funnels ---------------------------------------------------------------------------------------------------


def _funnel_spec(q: Query) -> tuple[tuple[str, ...], tuple[str, ...], tuple[int, ...]]:
    steps = tuple(_event_type(s, "steps") for s in q.options["steps"])
    if len(steps) < 2:
        raise QueryError("steps", "a funnel needs at least 2 steps")
    items = q.options["items"] or ("",) * len(steps)
    if len(items) != len(steps):
        raise QueryError("items", f"{len(items)} items for {len(steps)} steps; give one per step ('' = any item)")
    windows = q.options["windows_s"]
    if len(windows) == 1:
        windows = windows * (len(steps) - 1)
    if len(windows) != len(steps) - 1:
        raise QueryError(
            "windows_s", f"{len(windows)} windows for {len(steps)} steps; give one, or one per step after the first"
        )
    if q.options["order"] == "any" and len(set(zip(steps, items, strict=True))) < len(steps):
        raise QueryError("steps", "an any-order funnel needs distinct steps; use order='strict' to repeat a step")
    return steps, items, windows


# A funnel's events packed as one Int64 each: time in ms times 256 plus a mask of the steps the event matches (bit
# k-1 for step k; at most 8 steps), so a user's events sort as integers and each step is a bit test. The entry's
# breakdown value is an aggregate beside them, the value of the first entry event: of those in one millisecond the
# one whose value sorts first, compared by its first 10 bytes, so that (time, prefix) is one UInt128 (48 bits of ms,
# 80 of prefix): measured at 10M events over the last 24 h, a UInt256 key with 16 bytes cost ~25 ms more (of
# ~180), and tuples of strings in the per-user arrays ~4x the time.
_STEP_BITS = 256


def _funnel_steps(q: Query) -> str:
    steps, items, windows = _funnel_spec(q)
    n = len(steps)
    by = q.options["by"]
    match = []
    for i, (s, it) in enumerate(zip(steps, items, strict=True)):
        q.params[f"s{i}"] = s
        match.append(f"interaction_type = {{s{i}:String}}")
        if it:
            q.params[f"it{i}"] = it
            match[-1] += f" AND item_id = {{it{i}:String}}"
    entry = []  # entries in the window; later steps may fall after its end (a full conversion window each)
    if q.start_ms is not None:
        q.params["entry_start"] = q.start_ms
        entry.append(f"e >= {{entry_start:Int64}} * {_STEP_BITS}")
    if q.end_ms is not None:
        q.params["entry_end"] = q.end_ms
        entry.append(f"e < {{entry_end:Int64}} * {_STEP_BITS}")
        q.end_ms += sum(windows) * 1000
    for i, w_s in enumerate(windows):
        q.params[f"w{i + 1}"] = w_s * 1000
    q.params["total_ms"] = sum(windows) * 1000
    q.params["funnel_types"] = sorted(set(steps))
    _by_user(q)
    where = q.where()
    where = f"{where} AND " if where else "WHERE "
    where += "interaction_type IN {funnel_types:Array(String)}"
    in_window = " AND ".join(entry) or "1"

    def at(i: str) -> str:  # the time of the event at index i
        return f"intDiv(ev[{i}], {_STEP_BITS})"

    def within(t: str, w: str, after: bool) -> str:  # e's time in (t, t + w] (after) or [t, t + w]
        low = f"({t} + 1)" if after else t
        return f"e >= {low} * {_STEP_BITS} AND e < ({t} + {w} + 1) * {_STEP_BITS}"

    cols: list[str] = []
    if q.options["order"] == "strict":
        cols.append(f"arrayFirstIndex(e -> {in_window} AND bitTest(e, 0), ev) AS i1")
        for k in range(2, n + 1):
            cols.append(
                f"if(i{k - 1} = 0, 0, arrayFirstIndex(e -> {within(at(f'i{k - 1}'), f'{{w{k - 1}:Int64}}', True)}"
                f" AND bitTest(e, {k - 1}), ev)) AS i{k}"
            )
        cols += [f"if(i{k} = 0, toInt64(0), {at(f'i{k}')}) AS t{k}" for k in range(1, n + 1)]
        entry_index, entry_match = "i1", match[0]
    else:
        cols.append(f"arrayFirstIndex(e -> {in_window} AND e % {_STEP_BITS} > 0, ev) AS i0")
        cols += [
            f"if(i0 = 0, 0, arrayFirstIndex(e -> {within(at('i0'), '{total_ms:Int64}', False)} AND bitTest(e, {j}),"
            f" ev)) AS f{j}"
            for j in range(n)
        ]
        done = f"arraySort(arrayMap(i -> {at('i')}, arrayFilter(i -> i > 0, [{', '.join(f'f{j}' for j in range(n))}])))"
        cols.append(f"{done} AS done")
        cols += [f"if(length(done) >= {k}, done[{k}], toInt64(0)) AS t{k}" for k in range(1, n + 1)]
        cols += [f"toUInt32(length(done) >= {k}) AS i{k}" for k in range(1, n + 1)]
        entry_index, entry_match = "i0", " OR ".join(f"({m})" for m in match)
    mask = " + ".join(f"({m}) * {1 << i}" for i, m in enumerate(match))
    aggs = [f"arraySort(groupArray(toUnixTimestamp64Milli(event_time) * {_STEP_BITS} + {mask})) AS ev"]
    if by:
        cond = [f"({entry_match})"]
        if "entry_start" in q.params:
            cond.append("toUnixTimestamp64Milli(event_time) >= {entry_start:Int64}")
        if "entry_end" in q.params:
            cond.append("toUnixTimestamp64Milli(event_time) < {entry_end:Int64}")
        value = _breakdown_expr(by)
        # (time, the value's first 10 bytes) as one number: big-endian bytes compare as the string does.
        order = (
            "bitShiftLeft(toUInt128(toUnixTimestamp64Milli(event_time)), 80)"
            f" + bitShiftRight(reinterpretAsUInt128(reverse(rightPad(substring({value}, 1, 10), 16, '\\0'))), 48)"
        )
        aggs.append(f"argMinIf({value}, {order}, {' AND '.join(cond)}) AS b")
        entry_value = "b"
    else:
        entry_value = "''"
    keys = ["b"] + (["entry_day"] if q.options["cohort"] == "day" else [])
    agg = [f"countIf(i{k} > 0) AS users{k}" for k in range(1, n + 1)]
    for k in range(2, n + 1):
        agg.append(f"quantilesExactIf(0.5, 0.9)(toFloat64(t{k} - t{k - 1}), i{k} > 0) AS q{k}")
        agg.append(f"quantileExactIf(0.5)(toFloat64(t{k} - t1), i{k} > 0) AS qs{k}")
    return (
        f"SELECT {', '.join(keys)}, {', '.join(agg)} FROM ("
        f" SELECT {', '.join(cols)}, {entry_value} AS b,"
        f" toDate(fromUnixTimestamp64Milli({at(entry_index)}, 'UTC')) AS entry_day"
        f" FROM (SELECT {', '.join(aggs)} FROM {q.table('events')} {where} GROUP BY user_id)"
        f") WHERE {entry_index} > 0 GROUP BY {', '.join(keys)} ORDER BY {', '.join(keys)}"
    )


def _funnel_steps_post(df: pd.DataFrame, q: Query) -> pd.DataFrame:
    steps, items, _ = _funnel_spec(q)
    n = len(steps)
    by, strict = q.options["by"], q.options["order"] == "strict"
    rows: list[dict[str, Any]] = []
    if df.empty and not by and q.options["cohort"] == "none":  # nobody entered: every step with 0 users
        df = pd.DataFrame([{"b": "", **{f"users{k}": 0 for k in range(1, n + 1)}}])
    for _, r in df.iterrows():
        users = [int(r[f"users{k}"]) for k in range(1, n + 1)]
        for k in range(1, n + 1):
            row: dict[str, Any] = {}
            if q.options["cohort"] == "day":
                row["entry_day"] = r["entry_day"]
            if by:
                row[by] = r["b"]
            label = steps[k - 1] + (f" ({items[k - 1]})" if items[k - 1] else "")
            ok = users[k - 1] > 0 and k > 1
            qs = list(r[f"q{k}"]) if ok else [np.nan, np.nan]
            row.update(
                step=k,
                step_label=label if strict else f"{k} of {n} steps",
                users=users[k - 1],
                conversion_from_previous=users[k - 1] / users[k - 2] if k > 1 and users[k - 2] else np.nan,
                conversion_from_start=users[k - 1] / users[0] if users[0] else np.nan,
                p50_s_from_previous=qs[0] / 1000 if ok else np.nan,
                p90_s_from_previous=qs[1] / 1000 if ok else np.nan,
                p50_s_from_start=float(r[f"qs{k}"]) / 1000 if ok else np.nan,
            )
            if k == 1:
                row["conversion_from_previous"] = 1.0 if users[0] else np.nan
            rows.append(row)
    columns = (["entry_day"] if q.options["cohort"] == "day" else []) + ([by] if by else [])
    return pd.DataFrame(rows, columns=[*columns, *FUNNEL_STEP_COLUMNS])


# --- retention by cohort ---------------------------------------------------------------------------------------


def _cohorts(q: Query) -> str:
    _by_user(q)
    period, by, mode = q.options["period"], q.options["by"], q.options["mode"]
    q.params["periods"] = q.options["periods"]
    days = _PERIOD_DAYS[period]
    dim = _breakdown_expr(by) if by else "''"
    offsets = f"arrayMap(p -> toUInt32(intDiv(dateDiff('day', cohort, p), {days})), ps)"
    if mode == "on":
        join = "arrayFilter(n -> n <= {periods:UInt32}, offs)"
    else:  # returned in any period 1..n: every n from the first return on
        join = (
            "arrayConcat([toUInt32(0)], arrayMap(n -> toUInt32(n), "
            "range(arrayMin(arrayConcat(arrayFilter(x -> x > 0, offs), [toUInt32({periods:UInt32} + 1)])), "
            "toUInt32({periods:UInt32} + 1))))"
        )
    return (
        "SELECT cohort, b, n, count() AS users, max(max(last)) OVER () AS last_period FROM ("
        f" SELECT cohort, b, arrayMax(ps) AS last, {offsets} AS offs FROM ("
        f"  SELECT groupUniqArray({_PERIOD_EXPR[period]}) AS ps, arrayMin(ps) AS cohort,"
        f"  argMin({dim}, (event_time, {dim})) AS b"
        f"  FROM {q.table('events')} {q.where()} GROUP BY user_id)"
        f") ARRAY JOIN {join} AS n GROUP BY cohort, b, n ORDER BY cohort, b, n"
    )


def _cohorts_post(df: pd.DataFrame, q: Query) -> pd.DataFrame:
    """Cells of every observable period (cohort + n periods up to the last active period), zeros included."""
    by, periods = q.options["by"], q.options["periods"]
    step = _PERIOD_DAYS[q.options["period"]]
    keys = ["cohort", *([by] if by else [])]
    columns = [*keys, "period_n", "users", "cohort_size", "retention"]
    if df.empty:
        return pd.DataFrame({c: [] for c in columns})
    last = pd.Timestamp(df["last_period"].max()).date()
    got = {
        (pd.Timestamp(c).date(), b, int(n)): int(u)
        for c, b, n, u in zip(df["cohort"], df["b"], df["n"], df["users"], strict=True)
    }
    rows = []
    for cohort, b in sorted({(k[0], k[1]) for k in got}):
        size = got[(cohort, b, 0)]
        observable = min(periods, (last - cohort).days // step)
        for n in range(observable + 1):
            users = got.get((cohort, b, n), 0)
            row: dict[str, Any] = {"cohort": cohort}
            if by:
                row[by] = b
            row.update(period_n=n, users=users, cohort_size=size, retention=users / size)
            rows.append(row)
    return pd.DataFrame(rows, columns=columns)


# --- registration and functions --------------------------------------------------------------------------------

_BY = Param("by", str, "", choices=BREAKDOWNS, properties=True, help="breakdown column ('' = none)")
_GAP = Param("gap_s", int, 1800, minimum=1, maximum=86_400, help="session inactivity gap")
_PATH_PARAMS: tuple[Param, ...] = (
    Param("event", str, "view", help="the anchor event's interaction type"),
    Param("direction", str, "after", choices=PATH_DIRECTIONS),
    Param("steps", int, 4, minimum=3, maximum=7, help="events per path, the anchor included"),
    Param("item", str, "", help="the anchor's item ('' = any)"),
    _GAP,
)

NAMED_QUERIES: tuple[NamedQuery, ...] = (
    NamedQuery(
        "paths",
        "most common sequences of N events after (or before) an event within sessions, with counts and share",
        _paths,
        (*_PATH_PARAMS, Param("limit", int, 20, minimum=1, maximum=100_000)),
        post=_paths_post,
    ),
    NamedQuery(
        "path_steps",
        "per step of the paths after (or before) an event: sessions reaching it, sessions ending there",
        _path_steps,
        _PATH_PARAMS,
        post=_path_steps_post,
    ),
    NamedQuery(
        "funnel_steps",
        "funnel of chosen steps (strict or any order, a window per step), users by entry, breakdown, time to convert",
        _funnel_steps,
        (
            ListParam("steps", str, FUNNEL_STEPS, min_len=2, help="interaction types, in order"),
            ListParam("items", str, (), min_len=0, help="an item per step ('' = any)"),
            ListParam("windows_s", int, (1800,), minimum=1, maximum=90 * 86_400, help="window per step"),
            Param("order", str, "strict", choices=FUNNEL_ORDERS),
            _BY,
            Param("cohort", str, "none", choices=("none", "day"), help="also group by entry day"),
        ),
        filters=tuple(f for f in FILTERS if f != "interaction_type"),
        post=_funnel_steps_post,
    ),
    NamedQuery(
        "cohorts",
        "retention by daily or weekly cohort: users active on (or by) period N, optional breakdown",
        _cohorts,
        (
            Param("period", str, "day", choices=COHORT_PERIODS),
            Param("periods", int, 7, minimum=0, maximum=366),
            Param("mode", str, "on", choices=RETENTION_MODES),
            _BY,
        ),
        post=_cohorts_post,
    ),
)

QUERIES.update((nq.name, nq) for nq in NAMED_QUERIES)


def paths(store: Store, event: str = "view", direction: str = "after", steps: int = 4, **kwargs: Any) -> pd.DataFrame:
    """The most common paths of ``steps`` events after (or before) ``event`` within sessions.

    Columns: path ("view → click → ..."), length, sessions, share (of sessions holding the anchor), step_1..step_N
    (None past the session's end), ended (the session ended within the path). Takes item, gap_s, limit, the window
    and filters.
    """
    return run(store, "paths", event=event, direction=direction, steps=steps, **kwargs)


def path_steps(
    store: Store, event: str = "view", direction: str = "after", steps: int = 4, **kwargs: Any
) -> pd.DataFrame:
    """Per step of the paths: sessions reaching it, dropped (the session ended there), drop_off (their share)."""
    return run(store, "path_steps", event=event, direction=direction, steps=steps, **kwargs)


def funnel_steps(
    store: Store,
    steps: Sequence[str] = FUNNEL_STEPS,
    windows_s: int | Sequence[int] = 1800,
    order: str = "strict",
    by: str = "",
    **kwargs: Any,
) -> pd.DataFrame:
    """A funnel of chosen ``steps`` (see the module docstring), one row per step (and breakdown value / entry day).

    Columns: [entry_day], [by], step, step_label, users, conversion_from_previous, conversion_from_start,
    p50_s_from_previous, p90_s_from_previous, p50_s_from_start. Takes items, cohort ("day"), the window and filters.
    """
    return run(store, "funnel_steps", steps=list(steps), windows_s=windows_s, order=order, by=by, **kwargs)


def cohorts(store: Store, period: str = "day", periods: int = 7, mode: str = "on", **kwargs: Any) -> pd.DataFrame:
    """Retention by cohort: cohort, [by], period_n, users, cohort_size, retention (every observable cell)."""
    return run(store, "cohorts", period=period, periods=periods, mode=mode, **kwargs)


__all__ = [
    "BREAKDOWNS",
    "COHORT_PERIODS",
    "FUNNEL_ORDERS",
    "NAMED_QUERIES",
    "PATH_DIRECTIONS",
    "PATH_END",
    "RETENTION_MODES",
    "ListParam",
    "cohorts",
    "funnel_steps",
    "path_steps",
    "paths",
]
