"""Paths, funnels of chosen steps and cohort retention on the real ClickHouse engine, each equal to a pure-Python
reference implementation on the same rows.

Data sets: hand-made funnel walks (two seeds, the second with late events inserted out of order in many parts), the
project's generator with its late_events and flash_sale scenarios, and a hand-written edge-case set (ties in time,
repeated steps, sessions split by the 30-minute rule) whose answers are also written out by hand.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from datetime import date, datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd
import pytest

from clickstream_lib import analytics, queries
from clickstream_lib.analytics import PATH_DIRECTIONS
from clickstream_lib.errors import QueryError
from clickstream_lib.generator import Generator
from clickstream_lib.settings import Settings
from clickstream_lib.store import Store, connect
from tests.integration.test_queries import BASE, EVENT_COLUMNS, insert_events, make_events, select

GAP_MS = 1_800_000
EPOCH = pd.Timestamp(0, tz="UTC")


def with_late_events(df: pd.DataFrame, seed: int = 11, share: float = 0.06) -> pd.DataFrame:
    """``df`` with a share of events stamped minutes to hours earlier (late arrivals), rows shuffled, so the store
    receives them out of event-time order (and in many parts, see :func:`load`)."""
    rng = np.random.default_rng(seed)
    df = df.copy()
    late = rng.random(len(df)) < share
    back = pd.to_timedelta(rng.integers(60_000, 6 * 3_600_000, int(late.sum())), unit="ms")
    df.loc[late, "event_time"] = (df.loc[late, "event_time"] - back).clip(lower=pd.Timestamp(BASE))
    return df.sample(frac=1.0, random_state=seed).reset_index(drop=True)


def from_generator_scenarios(n: int = 5000, seed: int = 33) -> pd.DataFrame:
    """The project's generator over three days with late events and a flash sale, as the events table holds it."""
    start_ms = int(BASE.timestamp() * 1000)
    gen = Generator(seed=seed, n_users=300, n_items=50)
    gen.set_scenario("late_events", share=0.1)
    gen.set_scenario("flash_sale")
    g = gen.backfill(start_ms, start_ms + 3 * 86_400_000, n).to_frame()
    m = len(g)
    df = g.drop(columns=["timestamp_ms", "scenario"]).astype(object)
    df["price"] = g["price"].astype(float).round(2)
    df["schema_version"] = g["schema_version"]
    df["event_time"] = pd.to_datetime(g["timestamp_ms"], unit="ms", utc=True)
    df["kafka_topic"] = "clicks"
    df["kafka_partition"] = np.arange(m) % 3
    df["kafka_offset"] = np.arange(m) // 3
    df["kafka_timestamp"] = df["event_time"]
    df["ingest_time"] = df["event_time"]
    for c in ("experiment_name", "experiment_variation"):
        df[c] = ""
    df["properties"] = "{}"
    # event_id duplicates (the duplicates scenario is off) would be the sink's to drop; the queries count rows
    return df[list(EVENT_COLUMNS)]


# --- the hand-written edge cases -----------------------------------------------------------------------------------

EDGE_T0 = BASE + timedelta(hours=1)


def edge_events(spec: Sequence[tuple[str, float, str, str, str]] = ()) -> pd.DataFrame:
    """Four users; times in seconds from EDGE_T0. See the test for the answers each gives. ``spec``: other users,
    as (user, seconds, type, item, device)."""
    minute = 60
    day = 86_400
    spec = spec or (
        # u1: a view and a click at the same millisecond (tie), then a purchase 40 min later: a new session.
        ("u1", 0, "view", "i1", "mobile"),
        ("u1", 0, "click", "i1", "desktop"),
        ("u1", 10, "add_to_cart", "i1", "mobile"),
        ("u1", 40 * minute + 10, "purchase", "i1", "mobile"),
        # u2: repeated steps in one session.
        ("u2", 0, "view", "i2", "tablet"),
        ("u2", 5, "view", "i3", "tablet"),
        ("u2", 10, "click", "i3", "tablet"),
        ("u2", 15, "click", "i3", "tablet"),
        ("u2", 20 * minute, "purchase", "i3", "tablet"),
        ("u2", 2 * day, "view", "i3", "tablet"),
        # u3: a gap just under 30 min (same session), then one just over (split).
        ("u3", 0, "view", "i1", "desktop"),
        ("u3", 30 * minute - 1, "click", "i1", "desktop"),
        ("u3", 60 * minute, "purchase", "i1", "desktop"),
        # u4: active on day 0, day 1 and day 8.
        ("u4", 0, "view", "i4", "mobile"),
        ("u4", day, "click", "i4", "mobile"),
        ("u4", 8 * day, "purchase", "i4", "mobile"),
    )
    rows = []
    for n, (user, s, itype, item, device) in enumerate(spec):
        t = pd.Timestamp(EDGE_T0) + pd.Timedelta(seconds=s)
        rows.append(
            {
                "event_id": str(uuid.UUID(int=n + 1, version=4)),
                "user_id": user,
                "session_id": f"{user}_s",
                "item_id": item,
                "interaction_type": itype,
                "event_time": t,
                "page": f"/item/{item}",
                "referrer": "direct",
                "device": device,
                "country": "DE",
                "price": 10.0 if itype == "purchase" else 0.0,
                "currency": "EUR" if itype == "purchase" else "",
                "schema_version": 1,
                "experiment_name": "",
                "experiment_variation": "",
                "properties": "{}",
                "kafka_topic": "clicks",
                "kafka_partition": 0,
                "kafka_offset": n,
                "kafka_timestamp": t,
                "ingest_time": t,
            }
        )
    return pd.DataFrame(rows)[list(EVENT_COLUMNS)]


DATASETS: dict[str, Callable[[], pd.DataFrame]] = {
    "walks": lambda: make_events(),
    "walks_late": lambda: with_late_events(make_events(n_sessions=900, seed=11, n_users=300)),
    "generator_scenarios": from_generator_scenarios,
    "edge": lambda: edge_events(),
}


@pytest.fixture(scope="module")
def stores(base_settings: Settings) -> Iterator[dict[str, tuple[Store, pd.DataFrame]]]:
    """Every data set in its own database of the real engine (loaded once for the module)."""
    out: dict[str, tuple[Store, pd.DataFrame]] = {}
    try:
        for name, make in DATASETS.items():
            df = make()
            st = connect(base_settings.replace(clickhouse_database=f"test_an_{name}_{uuid.uuid4().hex[:6]}"))
            out[name] = (st, df)
            chunk = 500 if name == "walks_late" else 100_000  # many parts, each out of time order
            assert insert_events(st, df, chunk=chunk) == len(df)
        yield out
    finally:
        for st, _ in out.values():
            try:
                st.client.command(f"DROP DATABASE IF EXISTS {st.database} SYNC")
            finally:
                st.close()


GENERATED = ("walks", "walks_late", "generator_scenarios")
ALL = (*GENERATED, "edge")


# --- pure-Python references ----------------------------------------------------------------------------------------


def _ms(ts: Any) -> int:
    return int((pd.Timestamp(ts) - EPOCH) // pd.Timedelta(milliseconds=1))


def user_events(df: pd.DataFrame, extra: str | None = None) -> dict[str, list[tuple[Any, ...]]]:
    """Per user: (t_ms, type, item[, extra]) sorted — ties in time by type, then item; with ``extra`` (a funnel's
    breakdown value) by the value's first 10 bytes, then type, then item (as the queries order them)."""
    cols = ["interaction_type", "item_id", *([extra] if extra else [])]
    out: dict[str, list[tuple[Any, ...]]] = {}
    for user, t, *rest in zip(df["user_id"], df["event_time"], *(df[c] for c in cols), strict=True):
        out.setdefault(user, []).append((_ms(t), *rest))
    if not extra:
        return {u: sorted(ev) for u, ev in out.items()}
    return {u: sorted(ev, key=lambda e: (e[0], str(e[3]).encode()[:10], e[1], e[2])) for u, ev in out.items()}


def sessions_of(ev: list[tuple[Any, ...]], gap_ms: int = GAP_MS) -> list[list[tuple[Any, ...]]]:
    out: list[list[tuple[Any, ...]]] = []
    for e in ev:
        if not out or e[0] - out[-1][-1][0] > gap_ms:
            out.append([])
        out[-1].append(e)
    return out


def paths_truth(
    df: pd.DataFrame, event: str, direction: str, steps: int, item: str = "", gap_ms: int = GAP_MS
) -> Counter[tuple[str, ...]]:
    got: Counter[tuple[str, ...]] = Counter()
    for ev in user_events(df).values():
        for s in sessions_of(ev, gap_ms):
            hits = [i for i, e in enumerate(s) if e[1] == event and (not item or e[2] == item)]
            if not hits:
                continue
            labels = [e[1] for e in s]
            if direction == "after":
                got[tuple(labels[hits[0] : hits[0] + steps])] += 1
            else:
                a = hits[-1]
                got[tuple(labels[max(0, a - steps + 1) : a + 1])] += 1
    return got


def quantile_exact(values: list[float], level: float) -> float:
    """ClickHouse quantileExact: the element at index floor(level * n) of the sorted values."""
    v = sorted(values)
    return float(v[min(int(level * len(v)), len(v) - 1)]) if v else float("nan")


def funnel_truth(
    df: pd.DataFrame,
    steps: list[str],
    windows_s: list[int],
    order: str = "strict",
    by: str = "",
    items: list[str] | None = None,
    start: datetime | None = None,
    end: datetime | None = None,
    cohort: bool = False,
) -> dict[tuple[Any, ...], dict[str, list[Any]]]:
    """Per (breakdown value[, entry day]): users per step and the time-to-convert lists (ms) per step."""
    items = items or [""] * len(steps)
    windows = [w * 1000 for w in windows_s]
    total = sum(windows)
    lo = _ms(start) if start else None
    hi = _ms(end) if end else None
    sel = df[df["interaction_type"].isin(steps)]
    if lo is not None:
        sel = sel[sel["event_time"] >= pd.Timestamp(start)]
    if hi is not None:
        sel = sel[sel["event_time"] < pd.Timestamp(end) + pd.Timedelta(milliseconds=total)]
    key_col = by or None
    if key_col is None:
        sel = sel.assign(_b="")
        key_col = "_b"
    if not any(items):  # the query orders ties by (type, breakdown value) then, without the item
        sel = sel.assign(item_id="")

    def match(e: tuple[Any, ...], k: int) -> bool:
        return bool(e[1] == steps[k] and (not items[k] or e[2] == items[k]))

    def in_window(e: tuple[Any, ...]) -> bool:
        return (lo is None or e[0] >= lo) and (hi is None or e[0] < hi)

    out: dict[tuple[Any, ...], dict[str, list[Any]]] = {}
    n = len(steps)
    for ev in user_events(sel, key_col).values():
        times: list[int] = []
        if order == "strict":
            entry = next((e for e in ev if in_window(e) and match(e, 0)), None)
            if entry is None:
                continue
            times = [entry[0]]
            for k in range(1, n):
                prev = times[-1]
                nxt = next((e for e in ev if prev < e[0] <= prev + windows[k - 1] and match(e, k)), None)
                if nxt is None:
                    break
                times.append(nxt[0])
        else:
            entry = next((e for e in ev if in_window(e) and any(match(e, k) for k in range(n))), None)
            if entry is None:
                continue
            for k in range(n):
                hit = next((e for e in ev if entry[0] <= e[0] <= entry[0] + total and match(e, k)), None)
                if hit is not None:
                    times.append(hit[0])
            times.sort()
        key: tuple[Any, ...] = (entry[3],)
        if cohort:
            key += (pd.Timestamp(entry[0], unit="ms", tz="UTC").date(),)
        acc = out.setdefault(
            key, {"users": [0] * n, "from_start": [[] for _ in range(n)], **{f"prev{k}": [] for k in range(n)}}
        )
        for k in range(len(times)):
            acc["users"][k] += 1
            if k:
                acc[f"prev{k}"].append(times[k] - times[k - 1])
                acc["from_start"][k].append(times[k] - times[0])
    return out


def check_funnel(
    got: pd.DataFrame, want: dict[tuple[Any, ...], dict[str, list[Any]]], n: int, by: str, cohort: bool
) -> None:
    keys = [*([by] if by else []), *(["entry_day"] if cohort else [])]
    if not keys and not want:  # nobody entered: every step with 0 users
        assert list(got["users"]) == [0] * n and list(got["step"]) == list(range(1, n + 1))
        return
    assert len(got) == len(want) * n
    rows = got.groupby(keys, sort=False) if keys else [((), got)]
    seen = set()
    for key, g in rows:
        k = key if isinstance(key, tuple) else (key,)
        wkey = ((k[0] if by else ""), *((pd.Timestamp(k[-1]).date(),) if cohort else ()))
        seen.add(wkey)
        w = want[wkey]
        assert list(g["step"]) == list(range(1, n + 1))
        assert list(g["users"]) == w["users"]
        for s in range(1, n):
            assert g["p50_s_from_previous"].iloc[s] == pytest.approx(
                quantile_exact(w[f"prev{s}"], 0.5) / 1000, nan_ok=True
            )
            assert g["p90_s_from_previous"].iloc[s] == pytest.approx(
                quantile_exact(w[f"prev{s}"], 0.9) / 1000, nan_ok=True
            )
            assert g["p50_s_from_start"].iloc[s] == pytest.approx(
                quantile_exact(w["from_start"][s], 0.5) / 1000, nan_ok=True
            )
            if w["users"][s - 1]:
                assert g["conversion_from_previous"].iloc[s] == pytest.approx(w["users"][s] / w["users"][s - 1])
    assert seen == set(want)


def cohorts_truth(df: pd.DataFrame, period: str, periods: int, mode: str, by: str = "") -> dict[tuple[Any, ...], int]:
    """(cohort, [by value,] n) -> users, for every observable cell (zeros included)."""
    step = 7 if period == "week" else 1

    def period_of(t: pd.Timestamp) -> date:
        d = t.date()
        monday: date = d - timedelta(days=d.weekday()) if period == "week" else d
        return monday

    per_user: dict[str, list[tuple[int, str, date]]] = {}
    for user, t, b in zip(df["user_id"], df["event_time"], df[by] if by else [""] * len(df), strict=True):
        per_user.setdefault(user, []).append((_ms(t), b, period_of(t)))
    last = max(p for ev in per_user.values() for _, _, p in ev)
    out: dict[tuple[Any, ...], int] = {}
    for ev in per_user.values():
        first = min(ev)  # by time, ties by value
        cohort = min(p for _, _, p in ev)
        offs = {(p - cohort).days // step for _, _, p in ev}
        key = (cohort, first[1]) if by else (cohort,)
        for n in range(min(periods, (last - cohort).days // step) + 1):
            active = n in offs if mode == "on" or n == 0 else any(1 <= m <= n for m in offs)
            out[(*key, n)] = out.get((*key, n), 0) + int(active)
    return out


def cohort_frame_as_dict(got: pd.DataFrame, by: str = "") -> dict[tuple[Any, ...], int]:
    keys = ["cohort", *([by] if by else []), "period_n"]
    return {
        (pd.Timestamp(r[0]).date(), *r[1:-1], int(r[-1])): int(u)
        for r, u in zip(got[keys].itertuples(index=False, name=None), got["users"], strict=True)
    }


# --- tests ---------------------------------------------------------------------------------------------------------

PATH_CASES: list[dict[str, Any]] = [
    {"event": "view", "direction": "after", "steps": 4},
    {"event": "purchase", "direction": "before", "steps": 3},
    {"event": "click", "direction": "after", "steps": 7, "gap_s": 300},
    {"event": "add_to_cart", "direction": "before", "steps": 5, "device": "mobile"},
]


@pytest.mark.parametrize("dataset", ALL)
def test_paths_equal_reference(stores: dict[str, tuple[Store, pd.DataFrame]], dataset: str) -> None:
    st, df = stores[dataset]
    windows: list[dict[str, Any]] = [
        {},
        {"start": BASE + timedelta(hours=7, minutes=3), "end": BASE + timedelta(days=2)},
    ]
    # Anchored at an item too: the data set's most viewed item, after and before.
    item = str(df.loc[df["interaction_type"] == "view", "item_id"].value_counts().index[0])
    item_cases = [{"event": "view", "direction": d, "steps": 4, "item": item} for d in PATH_DIRECTIONS]
    for case in [*PATH_CASES, *item_cases]:
        for window in windows:
            opts: dict[str, Any] = {
                k: v for k, v in case.items() if k in ("event", "direction", "steps", "gap_s", "item")
            }
            filters = {k: v for k, v in case.items() if k not in opts}
            got = analytics.paths(st, limit=100_000, **opts, **window, **filters)
            want = paths_truth(
                select(df, **window, **filters), opts["event"], opts["direction"], opts["steps"],
                item=opts.get("item", ""), gap_ms=opts.get("gap_s", 1800) * 1000,
            )  # fmt: skip
            as_dict = {tuple(r[: int(n)]): int(s) for r, n, s in zip(
                got[[f"step_{k + 1}" for k in range(opts["steps"])]].itertuples(index=False, name=None),
                got["length"], got["sessions"], strict=True)}  # fmt: skip
            assert as_dict == dict(want), (dataset, case, window)
            assert list(got["sessions"]) == sorted(want.values(), reverse=True)
            total = sum(want.values())
            assert got["share"].sum() == pytest.approx(1.0 if total else 0.0)
            assert (got["ended"] == (got["length"] < opts["steps"])).all()
            assert all(" → ".join(p for p in key) in set(got["path"]) for key in want)

            drops = analytics.path_steps(st, **opts, **window, **filters)
            lengths: Counter[int] = Counter()
            for p, c in want.items():
                lengths[len(p)] += c
            reach = [sum(c for n, c in lengths.items() if n >= k) for k in range(1, opts["steps"] + 1)]
            dropped = [lengths[k] if k < opts["steps"] else 0 for k in range(1, opts["steps"] + 1)]
            assert list(drops["sessions"]) == reach
            assert list(drops["dropped"]) == dropped
    if dataset != "edge":
        assert sum(paths_truth(df, "view", "after", 4).values()) > 50  # the data has paths to count
    top = analytics.paths(st, limit=3)
    assert len(top) == min(3, len(analytics.paths(st, limit=100_000)))


def test_paths_on_the_edge_cases(stores: dict[str, tuple[Store, pd.DataFrame]]) -> None:
    """Ties sort by type (click before view at the same millisecond); the 30-minute rule splits sessions."""
    st, _ = stores["edge"]
    got = analytics.paths(st, event="view", steps=3, limit=100)
    assert dict(zip(got["path"], got["sessions"], strict=True)) == {
        "view → add_to_cart": 1,  # u1: click and view tie; the click sorts first
        "view → view → click": 1,  # u2: repeated steps
        "view": 2,  # u2's day-2 session and u4's day-0 session hold a view alone
        "view → click": 1,  # u3: 29:59 apart, one session; the purchase 30:01 later is another
    }
    before = analytics.paths(st, event="purchase", direction="before", steps=3, limit=100)
    assert dict(zip(before["path"], before["sessions"], strict=True)) == {
        "purchase": 3,  # u1 40 min later, u3 after the split, u4 on day 8: each alone in its session
        "click → click → purchase": 1,
    }
    drops = analytics.path_steps(st, event="view", steps=3)
    assert list(drops["sessions"]) == [5, 3, 1] and list(drops["dropped"]) == [2, 2, 0]


def test_paths_anchored_at_an_item_order_its_ties_by_item(base_settings: Settings) -> None:
    """Three views of one user in one millisecond, of items i5, i6 and i7, after an add_to_cart in it and before a
    click: anchored at each item, the path starts (or ends) where ordering the tie by item puts it."""
    spec = [
        ("u5", 0, "view", "i7", "mobile"),
        ("u5", 0, "view", "i5", "mobile"),
        ("u5", 0, "add_to_cart", "i6", "mobile"),
        ("u5", 0, "view", "i6", "mobile"),
        ("u5", 10, "click", "i6", "mobile"),
    ]
    df = edge_events(spec)
    st = connect(base_settings.replace(clickhouse_database=f"test_an_tie_{uuid.uuid4().hex[:6]}"))
    try:
        assert insert_events(st, df) == len(df)
        want = {
            ("after", "i5"): "view → view → view",
            ("after", "i6"): "view → view → click",
            ("after", "i7"): "view → click",
            ("before", "i5"): "add_to_cart → view",
            ("before", "i6"): "add_to_cart → view → view",
            ("before", "i7"): "view → view → view",
        }
        for (direction, item), path in want.items():
            got = analytics.paths(st, event="view", item=item, direction=direction, steps=3)
            assert list(got["path"]) == [path], (direction, item)
            truth = paths_truth(df, "view", direction, 3, item=item)
            assert dict(truth) == {tuple(path.split(" → ")): 1}
    finally:
        st.client.command(f"DROP DATABASE IF EXISTS {st.database} SYNC")
        st.close()


def test_paths_read_right_while_the_rollup_of_their_type_codes_lags(base_settings: Settings) -> None:
    """Paths code types from ``events_by_day``; with a type missing there (a rebuild, an insert seen half-way), the
    fast form stops on its marker and run() reads the window's own types: the answer is the same."""
    st = connect(base_settings.replace(clickhouse_database=f"test_an_lag_{uuid.uuid4().hex[:6]}"))
    try:
        df = edge_events()
        assert insert_events(st, df) == len(df)
        want = analytics.paths(st, event="view", steps=3, limit=100)
        want_steps = analytics.path_steps(st, event="view", steps=3)
        st.client.command(f"TRUNCATE TABLE {st.database}.events_by_day")
        _, q, sql = queries.plan("paths", st.database, event="view", steps=3, limit=100)
        with pytest.raises(Exception, match=analytics._TYPES_LAG):  # the fast form alone refuses to guess
            st.query_df(sql, q.params)
        pd.testing.assert_frame_equal(analytics.paths(st, event="view", steps=3, limit=100), want)
        pd.testing.assert_frame_equal(analytics.path_steps(st, event="view", steps=3), want_steps)
        assert dict(zip(want["path"], want["sessions"], strict=True))["view → add_to_cart"] == 1
    finally:
        st.client.command(f"DROP DATABASE IF EXISTS {st.database} SYNC")
        st.close()


FUNNEL_FILTERS: list[dict[str, Any]] = [{}, {"device": ["mobile", "desktop"]}]
FUNNEL_CASES: list[dict[str, Any]] = [
    {"steps": ["view", "click", "purchase"], "windows_s": [1800]},
    {"steps": ["view", "click", "add_to_cart", "purchase"], "windows_s": [60, 600, 3600], "by": "device"},
    {"steps": ["view", "view", "purchase"], "windows_s": [300, 7200], "by": "referrer"},
    {"steps": ["click", "purchase", "view"], "windows_s": [3600], "order": "any", "by": "country"},
    {"steps": ["view", "add_to_cart"], "windows_s": [86_400], "cohort": "day"},
]


@pytest.mark.parametrize("dataset", ALL)
def test_funnel_steps_equal_reference(stores: dict[str, tuple[Store, pd.DataFrame]], dataset: str) -> None:
    st, df = stores[dataset]
    windows: list[dict[str, Any]] = [
        {},
        {"start": BASE + timedelta(hours=3, minutes=7), "end": BASE + timedelta(days=1, hours=20)},
    ]
    for case in FUNNEL_CASES:
        for window in windows:
            for filters in FUNNEL_FILTERS:
                got = analytics.funnel_steps(st, **case, **window, **filters)
                windows_s = (
                    case["windows_s"] * (len(case["steps"]) - 1) if len(case["windows_s"]) == 1 else case["windows_s"]
                )
                want = funnel_truth(
                    select(df, **filters), case["steps"], windows_s, case.get("order", "strict"), case.get("by", ""),
                    start=window.get("start"), end=window.get("end"), cohort=case.get("cohort") == "day",
                )  # fmt: skip
                check_funnel(got, want, len(case["steps"]), case.get("by", ""), case.get("cohort") == "day")
    if dataset != "edge":
        f = analytics.funnel_steps(st, steps=["view", "click", "purchase"], windows_s=86_400)
        assert f["users"].iloc[0] > f["users"].iloc[1] > f["users"].iloc[2] > 0  # the data walks down the funnel


def test_funnel_steps_with_items_equal_reference(stores: dict[str, tuple[Store, pd.DataFrame]]) -> None:
    st, df = stores["walks"]
    top = df.loc[df["interaction_type"] == "purchase", "item_id"].value_counts().index[0]
    got = analytics.funnel_steps(st, steps=["view", "purchase"], items=["", top], windows_s=3 * 86_400)
    want = funnel_truth(df, ["view", "purchase"], [3 * 86_400], items=["", top])
    check_funnel(got, want, 2, "", False)
    assert got["step_label"].iloc[1] == f"purchase ({top})"
    assert got["users"].iloc[1] > 0


def test_funnel_counts_a_full_window_after_the_range(stores: dict[str, tuple[Store, pd.DataFrame]]) -> None:
    """Users entering just before the range's end still get their whole conversion window."""
    st, _ = stores["edge"]
    end = EDGE_T0 + timedelta(minutes=1)
    got = analytics.funnel_steps(st, steps=["view", "click", "purchase"], windows_s=[1800, 3600], end=end)
    # entries: u1 (view, then the click ties: no step 2), u2 (click 10 s, purchase 20 min), u3 (click 29:59,
    # purchase 30:01 after it: over the 1800 s? no, 3600 s window: yes), u4 (view; click a day later: no)
    assert list(got["users"]) == [4, 2, 2]
    tight = analytics.funnel_steps(st, steps=["view", "click", "purchase"], windows_s=[1800, 1800], end=end)
    assert list(tight["users"]) == [4, 2, 1]  # u3's purchase came 1801 s after the click
    repeated = analytics.funnel_steps(st, steps=["view", "view", "purchase"], windows_s=[60, 3600])
    assert list(repeated["users"]) == [4, 1, 1]  # only u2 views twice within a minute
    anyorder = analytics.funnel_steps(st, steps=["view", "click", "purchase"], windows_s=[3600], order="any", end=end)
    # u1 enters at the click (ties sort click first), views at the same ms, buys 40 min later: 3 steps in 2 h;
    # u2 and u3 do all three in order; u4 only views (its click comes a day later)
    assert list(anyorder["users"]) == [4, 3, 3]
    assert list(anyorder["step_label"]) == ["1 of 3 steps", "2 of 3 steps", "3 of 3 steps"]


@pytest.mark.parametrize("dataset", ALL)
def test_cohorts_equal_reference(stores: dict[str, tuple[Store, pd.DataFrame]], dataset: str) -> None:
    st, df = stores[dataset]
    for period in ("day", "week"):
        for mode in ("on", "by"):
            for by, filters in (("", {}), ("device", {"country": ["DE", "US", "FR"]})):
                got = analytics.cohorts(st, period=period, periods=9, mode=mode, by=by, **filters)
                want = cohorts_truth(select(df, **filters), period, 9, mode, by)
                assert cohort_frame_as_dict(got, by) == want, (period, mode, by)
                assert (got["retention"] == got["users"] / got["cohort_size"]).all()
    if dataset == "edge":
        on = cohort_frame_as_dict(analytics.cohorts(st, periods=9, mode="on"))
        by_ = cohort_frame_as_dict(analytics.cohorts(st, periods=9, mode="by"))
        d0 = EDGE_T0.date()
        # u1..u4 start on day 0; u2 returns on day 2, u4 on day 1 and day 8 (the last day with data: no day 9)
        assert [on[(d0, n)] for n in range(9)] == [4, 1, 1, 0, 0, 0, 0, 0, 1]
        assert [by_[(d0, n)] for n in range(9)] == [4, 1, 2, 2, 2, 2, 2, 2, 2]
        assert (d0, 9) not in on


def test_cohorts_window_and_old_retention_agree(stores: dict[str, tuple[Store, pd.DataFrame]]) -> None:
    """Daily cohorts "on day N" over a window are the existing retention grid's counts."""
    st, df = stores["walks"]
    start, end = BASE + timedelta(days=1), BASE + timedelta(days=3)
    got = analytics.cohorts(st, periods=2, start=start, end=end)
    old = queries.retention(st, days=2, start=start, end=end)
    want = {
        (pd.Timestamp(c).date(), int(n)): int(u)
        for c, n, u in zip(old["cohort"], old["day_n"], old["users"], strict=True)
    }
    got_d = {k: v for k, v in cohort_frame_as_dict(got).items() if v}
    assert got_d == want
    assert cohort_frame_as_dict(got) == cohorts_truth(select(df, start, end), "day", 2, "on")


def test_bad_input_names_the_parameter(stores: dict[str, tuple[Store, pd.DataFrame]]) -> None:
    st, _ = stores["edge"]
    cases: list[tuple[str, dict[str, Any], str]] = [
        ("paths", {"steps": 8}, "steps"),
        ("paths", {"steps": 2}, "steps"),
        ("paths", {"direction": "sideways"}, "direction"),
        ("paths", {"event": "bad\nvalue"}, "event"),
        ("funnel_steps", {"steps": ["view"]}, "steps"),
        ("funnel_steps", {"steps": ["view", "click"], "windows_s": [1, 2]}, "windows_s"),
        ("funnel_steps", {"steps": ["view", "click"], "items": ["a"]}, "items"),
        ("funnel_steps", {"steps": ["view", "view"], "order": "any"}, "steps"),
        ("funnel_steps", {"by": "password"}, "by"),
        ("funnel_steps", {"interaction_type": "view"}, "interaction_type"),
        ("cohorts", {"period": "month"}, "period"),
        ("cohorts", {"mode": "after"}, "mode"),
    ]
    for name, kwargs, param in cases:
        with pytest.raises(QueryError) as info:
            queries.run(st, name, **kwargs)
        assert info.value.variable == param, (name, kwargs)


def test_values_are_bound_not_formatted() -> None:
    """Event types, items and filter values go into parameters; the SQL text never holds them."""
    payload = "x' OR 1=1 --"
    for name, kwargs in (
        ("paths", {"event": "view", "item": payload, "country": payload}),
        ("funnel_steps", {"steps": ["view", "click"], "items": [payload, ""], "device": payload}),
        ("cohorts", {"referrer": payload, "by": "device"}),
    ):
        _, q, sql = queries.plan(name, "db", **kwargs)
        assert payload not in sql
        assert payload in str(q.params.values())
