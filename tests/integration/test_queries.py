"""Named analytics queries against the real ClickHouse engine, checked against pandas on the same rows.

A seeded clickstream (sessions of view -> click -> add_to_cart -> purchase walks over three days) is inserted into
this test's database; every metric is recomputed independently in pandas and must be equal — exact for counts,
sums and exact distincts, within the stated HLL error for distincts read from rollups.
"""

from __future__ import annotations

import math
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import orjson
import pandas as pd
import pytest

from clickstream_lib import queries
from clickstream_lib.errors import QueryError
from clickstream_lib.generator import Generator
from clickstream_lib.schema import HLL_RELATIVE_ERROR
from clickstream_lib.settings import Settings
from clickstream_lib.sink import EVENT_COLUMNS as SINK_COLUMNS
from clickstream_lib.store import Store, connect

BASE = datetime(2026, 11, 26, tzinfo=UTC)
NOW = BASE + timedelta(days=3)
# The sink's columns plus ingest_time, which these tests set so latency figures have a ground truth.
EVENT_COLUMNS = (*SINK_COLUMNS, "ingest_time")
DEVICES = ("desktop", "mobile", "tablet")
COUNTRIES = ("DE", "US", "FR", "IN", "BR", "GB")
REFERRERS = ("direct", "search", "social", "email", "ads")


def make_events(n_sessions: int = 700, seed: int = 7, n_users: int = 250, n_items: int = 40) -> pd.DataFrame:
    """A seeded clickstream as the events table holds it (one row per event, times in UTC)."""
    rng = np.random.default_rng(seed)
    item_price = np.round(rng.uniform(3, 300, n_items), 2)
    user_weight = rng.zipf(1.6, n_users).astype(float)
    user_weight /= user_weight.sum()
    rows: list[dict[str, Any]] = []
    span_ms = 3 * 86_400_000
    for s in range(n_sessions):
        user = int(rng.choice(n_users, p=user_weight))
        t = int(rng.integers(0, span_ms))
        device, country, referrer = rng.choice(DEVICES), rng.choice(COUNTRIES), rng.choice(REFERRERS)
        stage = 0
        for _ in range(int(rng.geometric(0.22))):
            # a walk down the funnel that sometimes restarts; occasional long pauses split sessions
            stage = stage + 1 if stage < 3 and rng.random() < 0.45 else (0 if rng.random() < 0.5 else stage)
            itype = queries.FUNNEL_STEPS[stage]
            item = int(rng.integers(0, n_items))
            t += int(rng.exponential(70_000)) if rng.random() > 0.05 else int(rng.integers(1_800_001, 4_000_000))
            if t >= span_ms:
                break
            rows.append(
                {
                    "user_id": f"user_{user:04d}",
                    "session_id": f"s_{s}",
                    "item_id": f"item_{item:03d}",
                    "interaction_type": itype,
                    "t": t,
                    "page": f"/item/item_{item:03d}",
                    "referrer": str(referrer),
                    "device": str(device),
                    "country": str(country),
                    "price": float(item_price[item]) if itype in ("add_to_cart", "purchase") else 0.0,
                    "currency": "EUR" if itype in ("add_to_cart", "purchase") else "",
                }
            )
    df = pd.DataFrame(rows)
    n = len(df)
    df["event_id"] = [str(uuid.UUID(bytes=rng.bytes(16), version=4)) for _ in range(n)]
    df["event_time"] = pd.to_datetime(BASE) + pd.to_timedelta(df.pop("t"), unit="ms")
    df["schema_version"] = 1
    df["experiment_name"] = ""
    df["experiment_variation"] = ""
    df["properties"] = "{}"
    df["kafka_topic"] = "clicks"
    df["kafka_partition"] = np.arange(n) % 3
    df["kafka_offset"] = np.arange(n) // 3
    df["kafka_timestamp"] = df["event_time"] + pd.to_timedelta(rng.integers(0, 50, n), unit="ms")
    df["ingest_time"] = df["kafka_timestamp"] + pd.to_timedelta(rng.integers(5, 2500, n), unit="ms")
    return df[list(EVENT_COLUMNS)]


def from_generator(n: int = 4000, seed: int = 21) -> pd.DataFrame:
    """The project's generator (sessions, Zipf items, ordered funnel) over three days, as the events table holds it."""
    start_ms = int(BASE.timestamp() * 1000)
    g = Generator(seed=seed, n_users=400, n_items=60).backfill(start_ms, start_ms + 3 * 86_400_000, n).to_frame()
    rng = np.random.default_rng(seed)
    m = len(g)
    df = g.drop(columns=["timestamp_ms", "scenario"]).astype(
        {
            c: object
            for c in (
                "event_id",
                "user_id",
                "session_id",
                "item_id",
                "interaction_type",
                "page",
                "referrer",
                "device",
                "country",
                "currency",
            )
        }
    )
    df["price"] = df["price"].round(2)
    df["event_time"] = pd.to_datetime(g["timestamp_ms"], unit="ms", utc=True)
    df["kafka_topic"] = "clicks"
    df["kafka_partition"] = np.arange(m) % 3
    df["kafka_offset"] = np.arange(m) // 3
    df["kafka_timestamp"] = df["event_time"] + pd.to_timedelta(rng.integers(0, 50, m), unit="ms")
    df["ingest_time"] = df["kafka_timestamp"] + pd.to_timedelta(rng.integers(5, 2500, m), unit="ms")
    return df[list(EVENT_COLUMNS)]


# Event types outside the four known ones (events are open): the case study's, counted in the rollups' other_types.
OPEN_TYPES = ("open_app", "login", "payment_initiated")


def with_open_types(df: pd.DataFrame, share: float = 0.4, seed: int = 3) -> pd.DataFrame:
    """``df`` with a ``share`` of its events turned into other types (purchases stay, so revenue has a truth)."""
    rng = np.random.default_rng(seed)
    df = df.copy()
    pick = (rng.random(len(df)) < share) & (df["interaction_type"] != "purchase").to_numpy()
    df.loc[pick, "interaction_type"] = rng.choice(OPEN_TYPES, int(pick.sum()))
    return df


PLANS = ("free", "pro", "team")


def with_properties(df: pd.DataFrame, seed: int = 5) -> pd.DataFrame:
    """``df`` with an experiment per user and event properties: plan (most events), seats (a number), utm.source
    (nested), and a key only a few events have; the frame keeps the parsed keys as columns for pandas."""
    rng = np.random.default_rng(seed)
    df = df.copy()
    n = len(df)
    users = df["user_id"].str[-4:].astype(int).to_numpy()
    df["experiment_name"] = np.where(users % 5 == 0, "", np.where(users % 2 == 0, "checkout_button", "onboarding"))
    df["experiment_variation"] = np.where(df["experiment_name"] == "", "", np.where(users % 3 == 0, "control", "b"))
    plan = np.where(rng.random(n) < 0.8, rng.choice(PLANS, n), "")
    seats = rng.integers(1, 50, n)
    source = rng.choice(["ads", "email", ""], n)
    rare = rng.random(n) < 0.02
    props = []
    for p, k, u, r in zip(plan, seats.tolist(), source, rare, strict=True):
        d: dict[str, Any] = {"seats": k}
        if p:
            d["plan"] = str(p)
        if u:
            d["utm"] = {"source": str(u)}
        if r:
            d["beta-flag"] = "on"
        props.append(orjson.dumps(d).decode())
    df["properties"] = props
    df["prop.plan"], df["prop.seats"] = plan, seats.astype(str)
    df["prop.utm.source"], df["prop.beta-flag"] = source, np.where(rare, "on", "")
    df["prop.nokey"] = ""
    return df


def to_columns(part: pd.DataFrame, columns: tuple[str, ...] = EVENT_COLUMNS) -> list[list[Any]]:
    """An events frame as the columnar lists Store.insert takes, in ``columns`` order."""
    cols: list[list[Any]] = []
    for c in columns:
        s = part[c]
        if c in ("event_time", "kafka_timestamp", "ingest_time"):
            cols.append(list(s.dt.to_pydatetime()))
        elif c == "event_id":
            cols.append([uuid.UUID(x) for x in s])
        else:
            cols.append(s.tolist())
    return cols


def insert_events(store: Store, df: pd.DataFrame, chunk: int = 100_000) -> int:
    """Columnar insert of an events frame (as :func:`make_events` builds it), of the columns the table has (a store
    at an older schema version gets what the sink of that version wrote)."""
    have = {r[0] for r in store.query_rows(f"DESCRIBE TABLE {store.database}.events")}
    columns = tuple(c for c in EVENT_COLUMNS if c in have)
    written = 0
    for lo in range(0, len(df), chunk):
        written += store.insert("events", to_columns(df.iloc[lo : lo + chunk], columns), columns)
    return written


@pytest.fixture(scope="module", params=["walks", "generator", "open_types"])
def events(request: pytest.FixtureRequest) -> pd.DataFrame:
    """Three seeded datasets: hand-made funnel walks (with same-millisecond ties), the project's generator, and the
    walks with 40% of the events of other types (open_app, login, payment_initiated)."""
    if request.param == "open_types":
        return with_open_types(make_events())
    return make_events() if request.param == "walks" else from_generator()


@pytest.fixture
def loaded(store: Store, events: pd.DataFrame) -> Store:
    assert insert_events(store, events) == len(events)
    return store


# --- pandas ground truth ---------------------------------------------------------------------------------------


def select(df: pd.DataFrame, *window: datetime | None, **filters: Any) -> pd.DataFrame:
    """The rows of ``df`` in ``[start, end)`` (positional or by name) whose columns match ``filters``."""
    start, end = (*window, None, None)[:2]
    start, end = filters.pop("start", start), filters.pop("end", end)
    m = pd.Series(True, index=df.index)
    if start is not None:
        m &= df["event_time"] >= pd.Timestamp(start)
    if end is not None:
        m &= df["event_time"] < pd.Timestamp(end)
    for k, v in filters.items():
        m &= df[k].isin([v] if isinstance(v, str) else list(v))
    return df[m]


def revenue(df: pd.DataFrame) -> float:
    return round(float(df.loc[df["interaction_type"] == "purchase", "price"].sum()), 2)


def close_hll(estimate: float, exact: int) -> bool:
    return abs(estimate - exact) <= max(1, 3 * HLL_RELATIVE_ERROR * exact)


WINDOWS: list[dict[str, Any]] = [
    {},
    {"start": BASE + timedelta(hours=5), "end": BASE + timedelta(days=2)},  # aligned to days -> every rollup
    {"start": BASE + timedelta(hours=7, minutes=13, seconds=5), "end": BASE + timedelta(days=2, minutes=1)},
]
FILTER_SETS: list[dict[str, Any]] = [
    {},
    {"device": "mobile"},
    {"interaction_type": ["click", "purchase"], "country": "DE"},
    {"item_id": "item_007"},
    {"interaction_type": ["view", "purchase"]},  # wide rollups: type filter by choosing columns
    {"interaction_type": ["open_app", "click"]},  # another type: not from a wide rollup (it counts them together)
    {"referrer": "search", "device": ["desktop", "tablet"]},
]


@pytest.mark.parametrize("window", WINDOWS)
@pytest.mark.parametrize("source", ["raw", "auto"])
def test_dashboard_queries_equal_pandas(
    loaded: Store, events: pd.DataFrame, window: dict[str, Any], source: str
) -> None:
    for filters in FILTER_SETS:
        sel = select(events, **window, **filters)
        kw = {**window, **filters, "source": source}
        exact_distinct = source == "raw"

        k = queries.kpis(loaded, **kw)
        assert len(k) == 1
        assert int(k["total_interactions"][0]) == len(sel)
        assert round(float(k["revenue"][0]), 2) == revenue(sel)
        for col, key in (("unique_users", "user_id"), ("unique_items", "item_id")):
            exact = sel[key].nunique()
            got = int(k[col][0])
            assert got == exact if k.attrs["source"] == "raw" else close_hll(got, exact), (col, got, exact)
        if exact_distinct:
            assert k.attrs["source"] == "raw"

        for by in queries.FILTERS:
            b = queries.breakdown(loaded, by=by, **kw)
            want = sel.groupby(sel[by].replace("", queries.NONE_LABEL)).size().sort_values(ascending=False)
            got = b.set_index(by)["events"].astype(int)
            assert got.to_dict() == want.to_dict(), (by, filters, window)
            assert list(got) == sorted(got, reverse=True)
            if len(b):
                assert abs(b["share"].sum() - 1) < 1e-9

        ts = queries.timeseries(loaded, bucket="hour", **kw)
        want_ts = sel.groupby([sel["event_time"].dt.floor("h"), "interaction_type"]).size()
        got_ts = ts.set_index([pd.to_datetime(ts["time"], utc=True), "interaction_type"])["events"].astype(int)
        assert got_ts.to_dict() == want_ts.to_dict()

        for fn, key in ((queries.top_users, "user_id"), (queries.top_items, "item_id")):
            top = fn(loaded, limit=7, **kw)
            counts = sel.groupby(key).size().reset_index(name="n").sort_values(["n", key], ascending=[False, True])
            assert list(zip(top[key], top["interactions"].astype(int), strict=True)) == list(
                zip(counts[key][:7], counts["n"][:7], strict=True)
            )


def test_auto_reads_rollups_only_when_exact(loaded: Store, events: pd.DataFrame) -> None:
    aligned: dict[str, Any] = {"start": BASE + timedelta(days=1), "end": BASE + timedelta(days=2)}
    assert queries.kpis(loaded, **aligned).attrs["source"] == "events_by_day"
    assert queries.kpis(loaded).attrs["source"] == "events_by_day"
    assert queries.kpis(loaded, start=BASE + timedelta(hours=1)).attrs["source"] == "events_by_minute"
    hour = {"start": BASE + timedelta(hours=1)}
    assert queries.kpis(loaded, interaction_type="view", **hour).attrs["source"] == "events_by_minute"
    assert queries.kpis(loaded, device="mobile", **hour).attrs["source"] == "segments_by_hour"
    assert queries.kpis(loaded, device="mobile").attrs["source"] == "segments_by_day"
    assert queries.breakdown(loaded, by="country", **hour).attrs["source"] == "segments_by_hour"
    assert queries.kpis(loaded, device="mobile", start=BASE + timedelta(minutes=1)).attrs["source"] == "raw"
    assert queries.timeseries(loaded, bucket="minute", device="mobile").attrs["source"] == "raw"
    assert queries.timeseries(loaded, bucket="hour", device="mobile").attrs["source"] == "segments_by_hour"
    assert queries.timeseries(loaded, bucket="hour").attrs["source"] == "events_by_minute"
    assert queries.timeseries(loaded, bucket="day").attrs["source"] == "events_by_day"
    assert queries.kpis(loaded, item_id="item_001").attrs["source"] == "raw"  # no event rollup has an item column
    assert queries.kpis(loaded, start=BASE + timedelta(seconds=30)).attrs["source"] == "raw"
    assert queries.top_items(loaded, **aligned).attrs["source"] == "items_by_hour"
    assert queries.top_items(loaded, interaction_type="view", **aligned).attrs["source"] == "items_by_hour"
    assert queries.top_items(loaded, interaction_type="login", **aligned).attrs["source"] == "raw"
    with pytest.raises(QueryError, match="counts 'login' together with every other type"):
        queries.top_users(loaded, interaction_type="login", source="rollup")
    assert queries.top_users(loaded, **aligned).attrs["source"] == "users_by_day"
    assert queries.top_users(loaded, device="mobile").attrs["source"] == "raw"
    assert queries.timeseries(loaded, bucket="second").attrs["source"] == "raw"
    with pytest.raises(QueryError, match="cannot be answered from a rollup"):
        queries.kpis(loaded, item_id="item_001", source="rollup")
    # Counts and sums agree exactly between the two sources.
    raw = queries.item_performance(loaded, source="raw", limit=100, **aligned)
    rolled = queries.item_performance(loaded, source="rollup", limit=100, **aligned)
    cols = ["item_id", "views", "clicks", "add_to_carts", "purchases", "revenue"]
    pd.testing.assert_frame_equal(raw[cols], rolled[cols], check_dtype=False)


def test_live_queries(loaded: Store, events: pd.DataFrame) -> None:
    now = BASE + timedelta(days=2, hours=3, minutes=17, seconds=23, milliseconds=456)
    for minutes in (1, 5, 60):
        got = queries.active_users(loaded, minutes=minutes, now=now)
        sel = events[events["event_time"] >= pd.Timestamp(now - timedelta(minutes=minutes))]
        assert int(got["active_users"][0]) == sel["user_id"].nunique()
        assert int(got["events"][0]) == len(sel)
    for seconds in (10, 600, 3600):
        got = queries.events_per_second(loaded, seconds=seconds, now=now, device="mobile")
        sel = select(events, now - timedelta(seconds=seconds), now, device="mobile")
        assert int(got["events"][0]) == len(sel)
        assert got["events_per_second"][0] == pytest.approx(len(sel) / seconds)


def funnel_truth(df: pd.DataFrame, window_ms: int) -> list[int]:
    """Users reaching each step: the longest chain of steps in order, strictly increasing times, within the window."""
    steps = {s: i for i, s in enumerate(queries.FUNNEL_STEPS)}
    reached = [0] * len(steps)
    t_ms = (df["event_time"] - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(milliseconds=1)
    for _, g in df.assign(t=t_ms).sort_values("t").groupby("user_id"):
        # best[i]: the latest start of a chain that has reached step i, and that chain's last time
        best: list[tuple[int, int] | None] = [None] * len(steps)
        for t, grp in g.groupby("t", sort=True):
            updates = []
            for itype in grp["interaction_type"]:
                if itype not in steps:  # another type is no step of the funnel
                    continue
                i = steps[itype]
                if i == 0:
                    updates.append((0, (t, t)))
                elif (prev := best[i - 1]) is not None and t > prev[1] and t - prev[0] <= window_ms:
                    updates.append((i, (prev[0], t)))
            for i, val in updates:  # events at the same time cannot extend each other (strict increase)
                if (cur := best[i]) is None or val[0] >= cur[0]:
                    best[i] = val
        level = max((i + 1 for i in range(len(steps)) if best[i] is not None), default=0)
        for i in range(level):
            reached[i] += 1
    return reached


@pytest.mark.parametrize("window_s", [60, 1800])
def test_funnel_equals_pandas(loaded: Store, events: pd.DataFrame, window_s: int) -> None:
    for filters in ({}, {"device": "mobile", "country": ["DE", "US"]}):
        f = queries.funnel(loaded, window_s=window_s, start=BASE + timedelta(hours=1), **filters)
        want = funnel_truth(select(events, start=BASE + timedelta(hours=1), **filters), window_s * 1000)
        assert list(f["users"]) == want
        assert list(f["interaction_type"]) == list(queries.FUNNEL_STEPS)
        assert f["conversion_from_start"].iloc[-1] == pytest.approx(want[-1] / want[0])
        assert f["conversion_from_previous"].iloc[2] == pytest.approx(want[2] / want[1])
        assert want[0] > want[1] > want[2] >= want[3]  # the data walks down the funnel
        assert want[3] > 0 or window_s < 600
    with pytest.raises(QueryError, match="interaction_type"):
        queries.funnel(loaded, interaction_type="view")


def test_funnel_over_all_time_equals_pandas(loaded: Store, events: pd.DataFrame) -> None:
    """No time bound: the funnel reads events through their by_user projection, with the same answer."""
    for filters in ({}, {"referrer": "search"}):
        f = queries.funnel(loaded, window_s=1800, **filters)
        assert list(f["users"]) == funnel_truth(select(events, **filters), 1_800_000)


def sessions_truth(df: pd.DataFrame, gap_ms: int) -> pd.DataFrame:
    t = ((df["event_time"] - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(milliseconds=1)).rename("t")
    d = pd.DataFrame({"user_id": df["user_id"], "t": t}).sort_values(["user_id", "t"])
    new = (d["user_id"] != d["user_id"].shift()) | (d["t"] - d["t"].shift() > gap_ms)
    d["sid"] = new.cumsum()
    return d.groupby("sid").agg(user_id=("user_id", "first"), n=("t", "size"), lo=("t", "min"), hi=("t", "max"))


def exact_quantile(values: np.ndarray, level: float) -> float:
    """ClickHouse quantileExact: the element at index floor(level * n) of the sorted values."""
    v = np.sort(values)
    return float(v[min(int(level * len(v)), len(v) - 1)])


def test_sessions_equal_pandas(loaded: Store, events: pd.DataFrame) -> None:
    for gap_s, filters in ((1800, {}), (300, {"country": "FR"})):
        s = queries.sessions(loaded, gap_s=gap_s, **filters)
        truth = sessions_truth(select(events, **filters), gap_s * 1000)
        dur = (truth["hi"] - truth["lo"]).to_numpy()
        assert int(s["sessions"][0]) == len(truth)
        assert int(s["users"][0]) == truth["user_id"].nunique()
        assert s["bounce_rate"][0] == pytest.approx((truth["n"] == 1).mean())
        assert s["events_per_session"][0] == pytest.approx(truth["n"].mean())
        assert s["avg_duration_s"][0] == pytest.approx(dur.mean() / 1000)
        assert s["p50_duration_s"][0] == pytest.approx(exact_quantile(dur, 0.5) / 1000)
        assert s["p90_duration_s"][0] == pytest.approx(exact_quantile(dur, 0.9) / 1000)

        h = queries.session_durations(loaded, gap_s=gap_s, **filters)
        edges = [60_000, 300_000, 900_000, 1_800_000, 3_600_000]
        bucket = np.where(truth["n"] == 1, 0, 1 + np.searchsorted(edges, dur, side="right"))
        want = np.bincount(bucket, minlength=7)
        assert list(h["sessions"]) == list(want)
        assert list(h["duration"]) == list(queries.SESSION_BUCKETS)


def test_retention_equals_pandas(loaded: Store, events: pd.DataFrame) -> None:
    r = queries.retention(loaded, days=2, device=["mobile", "desktop"])
    sel = select(events, device=["mobile", "desktop"])
    day = sel["event_time"].dt.floor("D")
    active = pd.DataFrame({"user_id": sel["user_id"], "day": day}).drop_duplicates()
    active["cohort"] = active.groupby("user_id")["day"].transform("min")
    active["day_n"] = (active["day"] - active["cohort"]).dt.days
    want = active[active["day_n"] <= 2].groupby(["cohort", "day_n"]).size()
    got = r.set_index([pd.to_datetime(r["cohort"]).dt.tz_localize("UTC"), "day_n"])["users"]
    assert got.astype(int).to_dict() == want.to_dict()
    assert (r.loc[r["day_n"] == 0, "retention"] == 1).all()
    sizes = active[active["day_n"] == 0].groupby("cohort").size()
    day1 = r[r["day_n"] == 1]
    for cohort, users, ret in zip(
        pd.to_datetime(day1["cohort"]).dt.tz_localize("UTC"), day1["users"], day1["retention"], strict=True
    ):
        assert ret == pytest.approx(users / sizes[cohort])


def test_item_performance_equals_pandas(loaded: Store, events: pd.DataFrame) -> None:
    for source, filters in (
        ("raw", {"device": "tablet"}),
        ("auto", {}),
        ("auto", {"interaction_type": "click"}),
        ("auto", {"interaction_type": ["view", "purchase"]}),
        ("auto", {"interaction_type": ["login", "purchase"]}),
    ):
        got = queries.item_performance(loaded, limit=15, source=source, **filters)
        sel = select(events, **filters)
        g = sel.groupby("item_id")
        want = pd.DataFrame(
            {
                "views": g["interaction_type"].apply(lambda s: int((s == "view").sum())),
                "clicks": g["interaction_type"].apply(lambda s: int((s == "click").sum())),
                "purchases": g["interaction_type"].apply(lambda s: int((s == "purchase").sum())),
                "revenue": g.apply(revenue),
            }
        ).reset_index()
        want = want.sort_values(["revenue", "purchases", "item_id"], ascending=[False, False, True]).head(15)
        assert list(got["item_id"]) == list(want["item_id"])
        assert list(got["views"].astype(int)) == list(want["views"])
        assert list(got["clicks"].astype(int)) == list(want["clicks"])
        assert list(got["purchases"].astype(int)) == list(want["purchases"])
        assert list(got["revenue"].round(2)) == list(want["revenue"])
        ctr = want["clicks"].to_numpy() / want["views"].replace(0, np.nan).to_numpy()  # no views: undefined (NaN)
        assert np.allclose(got["click_through"].astype(float), ctr, equal_nan=True)


def test_ingestion_health_and_freshness(loaded: Store, events: pd.DataFrame) -> None:
    reasons = ["not_json"] * 3 + ["missing_field"] * 2 + ["too_large"]
    loaded.insert(
        "dead_letters",
        [[b"{" for _ in reasons], reasons, ["d"] * 6, ["clicks"] * 6, [0] * 6, list(range(6)), [NOW] * 6, [NOW] * 6],
        ["raw", "reason", "detail", "kafka_topic", "kafka_partition", "kafka_offset", "kafka_timestamp", "ingest_time"],
    )
    h = queries.ingestion_health(loaded)
    parts = h.partitions.set_index("partition")
    for p, g in events.groupby("kafka_partition"):
        assert int(parts.loc[p, "events"]) == len(g)
        assert int(parts.loc[p, "max_offset"]) == g["kafka_offset"].max()
        assert int(parts.loc[p, "duplicates"]) == 0
    lat = h.latency.set_index("latency")
    e2i = ((events["ingest_time"] - events["event_time"]) // pd.Timedelta(milliseconds=1)).to_numpy()
    k2i = ((events["ingest_time"] - events["kafka_timestamp"]) // pd.Timedelta(milliseconds=1)).to_numpy()
    for label, values in (("event_to_ingest", e2i), ("kafka_to_ingest", k2i)):
        for col, level in (("p50_ms", 0.5), ("p90_ms", 0.9), ("p99_ms", 0.99)):
            assert float(lat.loc[label, col]) == exact_quantile(values, level)
        assert float(lat.loc[label, "max_ms"]) == values.max()
    assert dict(zip(h.dead_letters["reason"], h.dead_letters["messages"].astype(int), strict=True)) == {
        "not_json": 3,
        "missing_field": 2,
        "too_large": 1,
    }
    f = queries.freshness(loaded)
    assert int(f["events"][0]) == len(events)
    assert pd.Timestamp(f["newest_event_time"][0]) == events["event_time"].max()
    assert pd.Timestamp(f["newest_ingest_time"][0]) == events["ingest_time"].max()


INJECTIONS = [
    "x' OR '1'='1",
    "'; DROP TABLE events; --",
    "mobile' UNION SELECT * FROM system.tables --",
    "\\'",
    "`events`",
    "{f_device:String}",
    "mobile\x00",
    'a"b',
    "); SELECT 1; --",
    "${db}",
]


def test_injection_payloads_change_nothing(loaded: Store, events: pd.DataFrame) -> None:
    before = queries.kpis(loaded, source="raw")
    for payload in INJECTIONS:
        for name in ("device", "country", "referrer", "item_id"):
            for qname in ("kpis", "top_items", "funnel", "sessions", "item_performance", "breakdown"):
                df = queries.run(loaded, qname, **{name: payload})
                if qname == "kpis":
                    assert int(df["total_interactions"][0]) == 0
                elif qname == "funnel":
                    assert list(df["users"]) == [0, 0, 0, 0]
                elif qname == "sessions":
                    assert int(df["sessions"][0]) == 0
                else:
                    assert df.empty
        with pytest.raises(QueryError, match="interaction_type"):
            queries.kpis(loaded, interaction_type=payload)
        with pytest.raises(QueryError):
            queries.breakdown(loaded, by=payload)
        with pytest.raises(QueryError):
            queries.run(loaded, payload)
        with pytest.raises(QueryError):
            queries.run(loaded, "kpis", **{"device) OR (1": "x"})
        with pytest.raises(QueryError):
            queries.top_items(loaded, limit=payload)  # type: ignore[arg-type]  # a string where an int goes
    after = queries.kpis(loaded, source="raw")
    pd.testing.assert_frame_equal(before, after)
    assert int(after["total_interactions"][0]) == len(events)
    tables = {r[0] for r in loaded.query_rows(f"SHOW TABLES FROM {loaded.database}")}
    assert {"events", "dead_letters", "events_by_minute"} <= tables


def test_validation_errors_name_the_parameter(store: Store) -> None:
    with pytest.raises(QueryError, match="unknown query 'nope'; known queries: active_users, breakdown, cohorts"):
        queries.run(store, "nope")
    with pytest.raises(QueryError, match=r"^colour: is not a parameter of kpis"):
        queries.run(store, "kpis", colour="red")
    with pytest.raises(QueryError, match=r"^interaction_type: 'hover\\n' is not a name of letters, digits"):
        queries.kpis(store, interaction_type="hover\n")
    with pytest.raises(QueryError, match=r"^limit: 0 is out of range"):
        queries.top_users(store, limit=0)
    with pytest.raises(QueryError, match=r"^start: 'yesterday' is not an ISO-8601 time"):
        queries.kpis(store, start="yesterday")
    with pytest.raises(QueryError, match=r"^end: .* is before start"):
        queries.kpis(store, start=NOW, end=BASE)
    with pytest.raises(QueryError, match=r"^device: dead_letters does not take this filter"):
        queries.run(store, "dead_letters", device="mobile")
    assert isinstance(QueryError("x", "y"), ValueError)


def test_empty_store_gives_empty_frames(store: Store) -> None:
    for name in queries.QUERIES:
        df = queries.run(store, name)
        assert isinstance(df, pd.DataFrame), name
        if name in ("kpis", "active_users", "events_per_second", "sessions", "freshness", "complete_through"):
            assert len(df) == 1
            numeric = df.select_dtypes("number").drop(columns=["minutes", "seconds"], errors="ignore")
            assert (numeric.fillna(0) == 0).all().all(), name
        elif name == "funnel":
            assert list(df["users"]) == [0, 0, 0, 0]
        elif name in ("path_steps", "funnel_steps"):  # one row per step, like the funnel's
            assert len(df) == 4, name  # four steps by default, each with nobody
            assert (df["sessions" if name == "path_steps" else "users"] == 0).all(), name
        elif name == "session_durations":
            assert df["sessions"].sum() == 0
        elif name == "ingestion_latency":
            assert (df["events"] == 0).all()
        else:
            assert df.empty, name
    assert queries.freshness(store)["newest_event_time"].isna().all()
    assert queries.complete_through(store)["complete_through"].isna().all()
    panels = queries.live_panels(store)
    assert set(panels) == set(queries.LIVE_PANELS)


def test_property_and_experiment_filters_and_breakdowns_equal_pandas(store: Store) -> None:
    df = with_properties(with_open_types(make_events(n_sessions=400, seed=41)))
    insert_events(store, df)
    cases: list[dict[str, Any]] = [
        {"prop.plan": "pro"},
        {"prop.plan": ["pro", "team"], "device": "mobile"},
        {"prop.seats": "7"},  # a number, compared as its text
        {"prop.utm.source": "ads", "interaction_type": ["view", "open_app"]},
        {"prop.beta-flag": "on"},
        {"prop.nokey": "x"},  # no event has it: empty, not an error
        {"prop.plan": "", "experiment_name": "onboarding"},  # '' matches events without the key
        {"experiment_name": "checkout_button", "experiment_variation": "control"},
    ]
    for filters in cases:
        sel = select(df, **filters)
        k = queries.kpis(store, **filters)
        assert k.attrs["source"] == ("raw" if any(f.startswith("prop.") for f in filters) else k.attrs["source"])
        assert int(k["total_interactions"][0]) == len(sel), filters
        top = queries.top_users(store, limit=5, **filters)
        counts = sel.groupby("user_id").size().reset_index(name="n").sort_values(["n", "user_id"], ascending=[0, 1])
        assert list(top["interactions"].astype(int)) == list(counts["n"][:5]), filters
        assert int(queries.sessions(store, **filters)["sessions"][0]) >= (1 if len(sel) else 0)
    for by in ("prop.plan", "prop.utm.source", "prop.seats", "experiment_name", "experiment_variation"):
        for filters in ({}, {"interaction_type": "login"}, {"prop.plan": ["free", "team"]}):
            b = queries.breakdown(store, by=by, **filters)
            part = select(df, **filters)
            want = part.groupby(part[by].replace("", queries.NONE_LABEL)).size()
            assert b.set_index(by)["events"].astype(int).to_dict() == want.to_dict(), (by, filters)


PROPERTY_COLUMN_KEYS = ("plan", "seats", "utm.source", "beta-flag")


def property_answers(store: Store) -> dict[str, Any]:
    """kpis and breakdowns with property filters, as plain values, to compare across forms of the same store."""
    out: dict[str, Any] = {}
    for filters in (
        {"prop.plan": "pro"},
        {"prop.seats": "7"},
        {"prop.utm.source": ["ads", ""]},
        {"prop.beta-flag": "on"},
    ):
        out[repr(filters)] = queries.kpis(store, **filters).to_dict("records")
    for by in ("prop.plan", "prop.seats", "prop.utm.source"):
        out[by] = queries.breakdown(store, by=by, **{"prop.plan": ["free", "team"]}).to_dict("records")
    return out


def test_property_columns_upgrade_a_store_with_data_and_answer_the_same(settings: Settings, store: Store) -> None:
    df = with_properties(with_open_types(make_events(n_sessions=300, seed=47)))
    first, later = df.iloc[: len(df) // 2], df.iloc[len(df) // 2 :]
    insert_events(store, first)
    before = property_answers(store)
    assert store.property_columns() == frozenset()
    # Opening the store with CLICKSTREAM_PROPERTY_COLUMNS adds the columns and fills them for the stored events.
    upgraded = connect(settings.replace(property_columns=",".join(PROPERTY_COLUMN_KEYS)))
    try:
        assert upgraded.property_columns() == frozenset(PROPERTY_COLUMN_KEYS)
        written = upgraded.query_rows(
            "SELECT DISTINCT column FROM system.parts_columns WHERE database = {db:String} AND table = 'events' "
            "AND active AND startsWith(column, 'prop/')",
            {"db": store.database},
        )
        assert {r[0] for r in written} == {"prop/plan", "prop/seats", "prop/utm/source", "prop/beta-flag"}
        _, _, sql = queries.plan(
            "kpis", store.database, property_columns=upgraded.property_columns(), **{"prop.utm.source": "ads"}
        )
        assert "`prop/utm/source` = {f_prop0:String}" in sql and "properties." not in sql
        assert property_answers(upgraded) == before
        assert upgraded.add_property_columns(PROPERTY_COLUMN_KEYS) == []  # re-running adds nothing
        # Events stored after the upgrade fill the columns as they are inserted; answers still equal pandas.
        insert_events(upgraded, later)
        for filters in ({"prop.plan": "pro"}, {"prop.seats": "7", "device": "mobile"}, {"prop.beta-flag": "on"}):
            assert int(queries.kpis(upgraded, **filters)["total_interactions"][0]) == len(select(df, **filters))
        for by in ("prop.plan", "prop.utm.source"):
            b = queries.breakdown(upgraded, by=by, **{"prop.seats": ["7", "8"]})
            want = select(df, **{"prop.seats": ["7", "8"]}).groupby(by).size()
            want = want.rename(index={"": queries.NONE_LABEL})  # breakdowns label an empty value "(none)"
            assert b.set_index(by)["events"].astype(int).to_dict() == want.to_dict(), by
        # The columns stay out of SELECT * and out of what the sink inserts.
        star = upgraded.query_df(f"SELECT * FROM {store.database}.events LIMIT 1")
        assert not [c for c in star.columns if c.startswith("prop/")]
    finally:
        upgraded.close()


def test_property_keys_are_validated_and_values_bound(store: Store) -> None:
    insert_events(store, with_properties(make_events(n_sessions=50, seed=43)))
    for bad in ("prop.", "prop.a`b", "prop.a b", "prop.a..b", "prop.x') OR 1=1 --", "prop." + "k" * 129):
        with pytest.raises(QueryError, match="is not a property key"):
            queries.kpis(store, **{bad: "x"})
        with pytest.raises(QueryError, match="is not a property key"):
            queries.breakdown(store, by=bad)
    with pytest.raises(QueryError, match="dead_letters does not take this filter"):
        queries.run(store, "dead_letters", **{"prop.plan": "pro"})
    # A value is data, whatever it holds.
    assert int(queries.kpis(store, **{"prop.plan": "pro' OR '1'='1"})["total_interactions"][0]) == 0


def fct_experiment(df: pd.DataFrame) -> pd.DataFrame:
    """The case study's fct_experiment in pandas: per day, experiment and variation, users, interactions, views,
    clicks, purchases (events without an experiment left out)."""
    e = df[df["experiment_name"] != ""].assign(day=lambda d: d["event_time"].dt.tz_convert("UTC").dt.date)
    keys = ["day", "experiment_name", "experiment_variation"]
    out = e.groupby(keys).agg(
        users=("user_id", "nunique"),
        interactions=("user_id", "size"),
        views=("interaction_type", lambda s: int((s == "view").sum())),
        clicks=("interaction_type", lambda s: int((s == "click").sum())),
        purchases=("interaction_type", lambda s: int((s == "purchase").sum())),
    )
    return out.reset_index().sort_values(keys).reset_index(drop=True)


def experiments_truth(df: pd.DataFrame) -> pd.DataFrame:
    """experiments in pandas; the test statistic from the 2x2 chi-square (without continuity correction), which is
    the square of the two-proportion z statistic: a second route to the same p-value."""
    e = df[df["experiment_name"] != ""]
    keys = ["experiment_name", "experiment_variation"]
    out = e.groupby(keys).agg(
        users=("user_id", "nunique"),
        interactions=("user_id", "size"),
        purchases=("interaction_type", lambda s: int((s == "purchase").sum())),
    )
    out["purchasers"] = e[e["interaction_type"] == "purchase"].groupby(keys)["user_id"].nunique()
    out = out.fillna({"purchasers": 0}).astype({"purchasers": int}).reset_index()
    out["conversion_rate"] = out["purchasers"] / out["users"]
    rows = []
    for name, g in out.groupby("experiment_name"):
        control = "control" if "control" in set(g["experiment_variation"]) else sorted(g["experiment_variation"])[0]
        c = g[g["experiment_variation"] == control].iloc[0]
        for _, r in g.iterrows():
            table = np.array([[r.purchasers, r.users - r.purchasers], [c.purchasers, c.users - c.purchasers]], float)
            expected = table.sum(1, keepdims=True) * table.sum(0, keepdims=True) / table.sum()
            chi2 = ((table - expected) ** 2 / expected).sum() if (expected > 0).all() else np.nan
            diff = r.conversion_rate - c.conversion_rate
            se = np.sqrt(
                r.conversion_rate * (1 - r.conversion_rate) / r.users
                + c.conversion_rate * (1 - c.conversion_rate) / c.users
            )
            p = np.nan if np.isnan(chi2) else float(np.vectorize(math.erfc)(np.sqrt(chi2 / 2)))
            rows.append((name, r.experiment_variation, control, diff, diff - 1.96 * se, diff + 1.96 * se, p))
    stats = pd.DataFrame(rows, columns=[*keys, "control", "diff_vs_control", "ci_low", "ci_high", "p_value"])
    return out.merge(stats, on=keys).sort_values(keys).reset_index(drop=True)


@pytest.mark.parametrize("source", ["raw", "auto"])
def test_experiments_equal_pandas(store: Store, source: str) -> None:
    df = with_properties(with_open_types(make_events(n_sessions=900, seed=61)))
    # One experiment without a variation named control: the first in order is the control.
    onboarding_control = (df["experiment_name"] == "onboarding") & (df["experiment_variation"] == "control")
    df.loc[onboarding_control, "experiment_variation"] = "a"
    insert_events(store, df)
    got = queries.experiments(store, source=source)
    assert got.attrs["source"] == ("raw" if source == "raw" else "experiment_users_by_day")
    want = experiments_truth(df)
    assert list(got[["experiment_name", "experiment_variation"]].itertuples(index=False, name=None)) == list(
        want[["experiment_name", "experiment_variation"]].itertuples(index=False, name=None)
    )
    for col in ("users", "interactions", "purchases", "purchasers"):
        assert list(got[col].astype(int)) == list(want[col]), col
    assert list(got["control"]) == list(want["control"]) == ["control", "control", "a", "a"]
    for col in ("conversion_rate", "diff_vs_control", "p_value"):
        assert np.allclose(got[col].astype(float), want[col].astype(float), equal_nan=True, rtol=1e-9), col
    for col in ("ci_low", "ci_high"):  # 1.96 here, the exact 97.5th percentile there
        assert np.allclose(got[col].astype(float), want[col].astype(float), equal_nan=True, atol=1e-4), col
    control = got[got["experiment_variation"] == got["control"]]
    assert (control["diff_vs_control"] == 0).all() and (control["p_value"].isna() | (control["p_value"] == 1)).all()
    # Filters and windows apply as everywhere; fct_experiment per day.
    mobile = queries.experiments(store, source=source, device="mobile", **{"prop.plan": "pro"})
    sel = select(df, device="mobile", **{"prop.plan": "pro"})
    assert list(mobile["users"].astype(int)) == list(experiments_truth(sel)["users"])
    window: dict[str, Any] = {"start": BASE + timedelta(days=1), "end": BASE + timedelta(days=2)}
    part = queries.experiments(store, source=source, experiment_name="onboarding", **window)
    assert part.attrs["source"] == got.attrs["source"]
    truth = experiments_truth(select(df, experiment_name="onboarding", **window))
    assert list(part["users"].astype(int)) == list(truth["users"])
    assert list(part["purchasers"].astype(int)) == list(truth["purchasers"])
    daily = queries.experiment_daily(store, source=source)
    assert daily.attrs["source"] == got.attrs["source"]
    want_daily = fct_experiment(df)
    assert len(daily) == len(want_daily) > 0
    for col in ("experiment_name", "experiment_variation", "users", "interactions", "views", "clicks", "purchases"):
        assert list(daily[col]) == list(want_daily[col]), col
    assert list(pd.to_datetime(daily["day"]).dt.date) == list(want_daily["day"])


@pytest.mark.parametrize("source", ["raw", "auto"])
def test_user_and_item_daily_equal_pandas(store: Store, source: str) -> None:
    df = with_open_types(make_events(n_sessions=400, seed=43))
    insert_events(store, df)
    window: dict[str, Any] = {"start": BASE + timedelta(days=1), "end": BASE + timedelta(days=3)}
    for name, key in (("user_daily", "user_id"), ("item_daily", "item_id")):
        for filters in ({}, {"interaction_type": ["view", "login"]}):
            got = queries.run(store, name, source=source, **window, **filters)
            if source == "auto" and not filters:
                assert got.attrs["source"] == ("users_by_day" if key == "user_id" else "items_by_hour")
            sel = select(df, **window, **filters).assign(day=lambda d: d["event_time"].dt.date)
            want = (
                sel.groupby(["day", key])
                .agg(
                    interactions=(key, "size"),
                    views=("interaction_type", lambda s: int((s == "view").sum())),
                    clicks=("interaction_type", lambda s: int((s == "click").sum())),
                    purchases=("interaction_type", lambda s: int((s == "purchase").sum())),
                )
                .reset_index()
            )
            assert list(pd.to_datetime(got["day"]).dt.date) == list(want["day"]), (name, filters)
            for col in (key, "interactions", "views", "clicks", "purchases"):
                assert list(got[col]) == list(want[col]), (name, col, filters)
