"""Numbers users can trust (issue #16): ground truth through the real broker and sink.

A plain kafka-python producer sends a fixed data set (4 321 events from 777 users, some without device, country or
referrer) to the session broker; the project's sink stores it; every figure the named queries give by default is
compared with a computation in plain Python over the messages as sent (not the project's SQL).
"""

from __future__ import annotations

import json
import random
import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from kafka import KafkaProducer

from clickstream_lib import queries, topics
from clickstream_lib.panels import reconcile as reconcile_panel
from clickstream_lib.settings import Settings
from clickstream_lib.sink import Sink
from clickstream_lib.store import Store

pytestmark = pytest.mark.integration

N_EVENTS = 4_321
N_USERS = 777
N_ITEMS = 61
# The fixed data set spans three whole days before this time (so day-aligned windows read the day rollups).
END = datetime(2026, 11, 30, tzinfo=UTC)
SPAN_S = 3 * 86_400
TYPES = (("view", 0.55), ("click", 0.25), ("add_to_cart", 0.12), ("purchase", 0.08))
DEVICES = ("mobile", "desktop", "tablet", None)  # None: the message has no device
COUNTRIES = ("DE", "US", "FR", "IN", None)
REFERRERS = ("search", "direct", "social", None)


def messages(n: int = N_EVENTS, users: int = N_USERS, seed: int = 16) -> list[dict[str, Any]]:
    """``n`` event messages from exactly ``users`` users (each sends at least one); a dimension left out of a
    message is missing from it, not sent empty."""
    rng = random.Random(seed)
    names, weights = [t for t, _ in TYPES], [w for _, w in TYPES]
    out: list[dict[str, Any]] = []
    for i in range(n):
        user = i if i < users else rng.randrange(users)
        itype = rng.choices(names, weights)[0]
        ts = END - timedelta(milliseconds=rng.randrange(1, SPAN_S * 1000))
        msg: dict[str, Any] = {
            "event_id": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
            "user_id": f"visitor-{user:05d}",
            "session_id": f"s-{user}-{rng.randrange(3)}",
            "item_id": f"sku-{rng.randrange(N_ITEMS):03d}",
            "interaction_type": itype,
            "timestamp": ts.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        }
        if itype in ("add_to_cart", "purchase"):
            msg["price"] = round(rng.uniform(1, 250), 2)
            msg["currency"] = "EUR"
        for key, choices in (("device", DEVICES), ("country", COUNTRIES), ("referrer", REFERRERS)):
            value = rng.choice(choices)
            if value is not None:
                msg[key] = value
        out.append(msg)
    return out


def event_time(msg: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(msg["timestamp"].replace("Z", "+00:00"))


def pick(sent: list[dict[str, Any]], **filters: Any) -> list[dict[str, Any]]:
    """The messages in ``[start, end)`` whose fields equal the other ``filters`` (a missing field equals "")."""
    start, end = filters.pop("start", None), filters.pop("end", None)
    out = []
    for m in sent:
        t = event_time(m)
        if (start is not None and t < start) or (end is not None and t >= end):
            continue
        if all(m.get(k, "") == v for k, v in filters.items()):
            out.append(m)
    return out


def truth_kpis(sel: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "total_interactions": len(sel),
        "unique_users": len({m["user_id"] for m in sel}),
        "unique_items": len({m["item_id"] for m in sel}),
        "revenue": float(sum(Decimal(str(m["price"])) for m in sel if m["interaction_type"] == "purchase")),
    }


def send(settings: Settings, sent: list[dict[str, Any]]) -> None:
    topics.ensure_topic(settings, settings.kafka_topic)
    producer = KafkaProducer(**topics.client_config(settings))  # a plain kafka-python producer, not the project's
    try:
        for msg in sent:
            producer.send(settings.kafka_topic, json.dumps(msg).encode("utf-8"))
        producer.flush()
    finally:
        producer.close()


@pytest.fixture(scope="module")
def sent() -> list[dict[str, Any]]:
    data = messages()
    assert len(data) == N_EVENTS and len({m["user_id"] for m in data}) == N_USERS
    return data


@pytest.fixture
def sunk(settings: Settings, store: Store, sent: list[dict[str, Any]]) -> Iterator[Store]:
    """The data set sent through the session broker and stored by the sink."""
    send(settings, sent)
    stats = Sink(settings, store).run(max_events=len(sent))
    assert stats.rows_inserted == len(sent)
    yield store


DAY = timedelta(days=1)
WINDOWS: list[dict[str, datetime]] = [
    {},
    {"start": END - 2 * DAY, "end": END},  # whole days: the day rollups
    {"start": END - 2 * DAY + timedelta(hours=3)},  # whole hours: the hour / minute rollups
    {"start": END - 2 * DAY + timedelta(minutes=7), "end": END - timedelta(minutes=1)},  # whole minutes
    {"start": END - DAY + timedelta(seconds=13)},  # raw events
]
FILTERS: list[dict[str, str]] = [
    {},
    {"device": "mobile"},
    {"country": "DE", "interaction_type": "view"},
    {"referrer": "search", "device": "desktop"},
]


def test_kpis_by_default_equal_the_messages_sent(sunk: Store, sent: list[dict[str, Any]]) -> None:
    k = queries.kpis(sunk)
    assert int(k["unique_users"][0]) == N_USERS
    assert int(k["total_interactions"][0]) == N_EVENTS
    for window in WINDOWS:
        for filters in FILTERS:
            want = truth_kpis(pick(sent, **window, **filters))
            got = queries.kpis(sunk, **window, **filters).iloc[0]
            for col in ("total_interactions", "unique_users", "unique_items"):
                assert int(got[col]) == want[col], (col, window, filters, got.to_dict(), want)
            assert round(float(got["revenue"]), 2) == round(want["revenue"], 2)


def test_breakdowns_name_missing_values_none_and_sum_to_the_total(sunk: Store, sent: list[dict[str, Any]]) -> None:
    for window in WINDOWS:
        for by in ("device", "country", "referrer", "interaction_type"):
            b = queries.breakdown(sunk, by=by, **window)
            want = Counter(m.get(by) or "(none)" for m in pick(sent, **window))
            assert dict(zip(b[by], b["events"].astype(int), strict=True)) == dict(want), (by, window)
            assert int(b["events"].sum()) == int(queries.kpis(sunk, **window)["total_interactions"][0])


# --- reconciliation: Kafka against the store, to the event ----------------------------------------------------


def test_reconcile_balances_to_the_event(settings: Settings, store: Store, sent: list[dict[str, Any]]) -> None:
    """Every message the producer had acknowledged is in Kafka and in the store once, as an event or a dead letter;
    a message sent twice shows as one duplicate; per partition, counted from the producer's own acknowledgements."""
    data = sent[:900]
    poison = [b"not json", b'{"user_id": 1}', b"[]"]
    topics.ensure_topic(settings, settings.kafka_topic)
    producer = KafkaProducer(**topics.client_config(settings))
    try:
        futures = [(producer.send(settings.kafka_topic, json.dumps(m).encode()), "event") for m in data]
        # A repeat of the first message, to its partition (as a producer's retry of a keyed message lands): the
        # duplicates are counted per partition.
        first = futures[0][0].get(timeout=30).partition
        futures.append((producer.send(settings.kafka_topic, json.dumps(data[0]).encode(), partition=first), "event"))
        futures += [(producer.send(settings.kafka_topic, raw), "dead") for raw in poison]
        producer.flush()
        acked = Counter((f.get(timeout=30).partition, kind) for f, kind in futures)
    finally:
        producer.close()
    stats = Sink(settings, store).run(max_events=len(futures))
    assert stats.rows_inserted == len(data) + 1

    df = reconcile_panel.reconcile(store, settings)
    partitions = sorted({p for p, _ in acked})
    assert list(df["partition"]) == list(range(settings.kafka_partitions))
    for row in df.itertuples():
        assert row.rows_stored == acked[(row.partition, "event")], row
        assert row.dead_letters == acked[(row.partition, "dead")], row
        assert row.high_watermark - row.log_start == acked[(row.partition, "event")] + acked[(row.partition, "dead")]
        assert row.committed == row.high_watermark and row.lag == 0 and row.missing == 0
    repeated = df[df["duplicates"] > 0]
    assert list(repeated["duplicates"]) == [1] and not repeated["balanced"].any()
    assert df[df["duplicates"] == 0]["balanced"].all() and partitions
    summary = reconcile_panel.totals(df, produced=len(futures))
    assert summary["in_kafka"] == len(futures) and summary["acked_not_in_kafka"] == 0
    assert (summary["rows_stored"], summary["dead_letters"], summary["duplicates"]) == (len(data) + 1, 3, 1)
    assert summary["missing"] == 0 and not summary["balanced"]

    # The sink's event time per partition, the minimum over partitions: independent of the SQL, from the messages.
    newest: dict[int, datetime] = {}
    for (f, _kind), m in zip(futures, [*data, data[0]], strict=False):
        p = f.get().partition
        newest[p] = max(newest.get(p, event_time(m)), event_time(m))
    got = queries.complete_through(store, topic=settings.kafka_topic)
    assert got["complete_through"][0].to_pydatetime() == min(newest.values())
    assert int(got["partitions"][0]) == len(newest)


# --- invariants over generated data -----------------------------------------------------------------------------


def insert_messages(store: Store, data: list[dict[str, Any]]) -> None:
    """The messages as the sink stores them, inserted directly (many seeds, no broker round trip needed)."""
    from clickstream_lib.sink import EVENT_COLUMNS

    rows = []
    for i, m in enumerate(data):
        row = {
            "event_id": m["event_id"],
            "user_id": m["user_id"],
            "session_id": m.get("session_id", ""),
            "item_id": m["item_id"],
            "interaction_type": m["interaction_type"],
            "event_time": event_time(m),
            "page": "",
            "referrer": m.get("referrer", ""),
            "device": m.get("device", ""),
            "country": m.get("country", ""),
            "price": Decimal(str(m.get("price", 0))),
            "currency": m.get("currency", ""),
            "schema_version": 1,
            "experiment_name": "",
            "experiment_variation": "",
            "properties": {},
            "kafka_topic": "clicks",
            "kafka_partition": i % 3,
            "kafka_offset": i // 3,
            "kafka_timestamp": event_time(m),
        }
        rows.append([row[c] for c in EVENT_COLUMNS])
    columns = [list(col) for col in zip(*rows, strict=True)]
    assert store.insert("events", columns, EVENT_COLUMNS) == len(data)


SCENARIOS = {
    # seed -> (events, users): small and dense, wide and sparse, and one user in most events
    3: (2_500, 180),
    11: (6_000, 2_400),
    29: (3_000, 40),
}


@pytest.mark.parametrize("seed", sorted(SCENARIOS))
def test_panels_agree_with_each_other(store: Store, seed: int) -> None:
    n, users = SCENARIOS[seed]
    data = messages(n, users, seed=seed)
    insert_messages(store, data)
    rng = random.Random(seed)
    windows: list[dict[str, datetime]] = [{}, *WINDOWS[1:]]
    for _ in range(3):  # and a few arbitrary ones
        start = END - timedelta(seconds=rng.randrange(1, SPAN_S))
        windows.append({"start": start, "end": start + timedelta(seconds=rng.randrange(60, SPAN_S))})
    for window in windows:
        for filters in FILTERS:
            kw: dict[str, Any] = {**window, **filters}
            k = queries.kpis(store, **kw).iloc[0]
            users_total = int(k["unique_users"])
            assert users_total == truth_kpis(pick(data, **kw))["unique_users"]
            for by in ("interaction_type", "device", "country", "referrer"):
                parts = queries.breakdown(store, by=by, **kw)
                assert int(parts["events"].sum()) == int(k["total_interactions"]), (by, kw)
            no_type = {k_: v for k_, v in kw.items() if k_ != "interaction_type"}
            funnel = queries.funnel(store, **no_type)
            steps = list(funnel["users"].astype(int))
            assert steps == sorted(steps, reverse=True), (steps, kw)
            assert steps[0] <= int(queries.kpis(store, **no_type)["unique_users"][0])
            sessions = queries.sessions(store, **kw)
            assert int(sessions["users"][0]) <= users_total
            if "end" not in window:  # active users: the same question as unique users since start
                start = window.get("start", END - timedelta(minutes=90))
                minutes = max(1, int((END - start).total_seconds() // 60))
                now = END
                active = queries.active_users(store, minutes=minutes, now=now, **filters)
                since = queries.kpis(store, start=now - timedelta(minutes=minutes), **filters)
                assert int(active["active_users"][0]) <= int(since["unique_users"][0])
                assert int(active["active_users"][0]) == int(since["unique_users"][0])
