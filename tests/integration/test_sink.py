"""The sink against the real Kafka broker and the real ClickHouse engine: validity, dead letters, failures.

Every test asserts what a user cares about: rows stored == valid messages produced, no duplicate event ids, each
invalid message in dead_letters with its reason, committed offsets == what was stored.
"""

from __future__ import annotations

import json
import logging
import random
import signal
import subprocess
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import orjson
import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import NewPartitions, NewTopic

from clickstream_lib import events, topics
from clickstream_lib.errors import StoreError
from clickstream_lib.settings import Settings
from clickstream_lib.sink import EVENT_COLUMNS, Batch, BatchInfo, Sink
from clickstream_lib.sink.batch import insert_batches
from clickstream_lib.sink.startup import warn_undeduplicated_views
from clickstream_lib.stack import KafkaStack
from clickstream_lib.store import Store
from tests.helpers import wait_until
from tests.integration.sink_worker import ROOT, count, make_values, produce, worker_env

pytestmark = pytest.mark.integration


def _counts(store: Store) -> tuple[int, int]:
    rows, uniq = store.query_rows(f"SELECT count(), uniqExact(event_id) FROM {store.database}.events")[0]
    return int(rows), int(uniq)


def _committed(settings: Settings) -> dict[int, int]:
    """The group's committed offsets, read by a client that does not join the group."""
    c = KafkaConsumer(**topics.client_config(settings), group_id=settings.kafka_group_id, enable_auto_commit=False)
    try:
        out = {}
        for p in sorted(c.partitions_for_topic(settings.kafka_topic) or ()):
            off = c.committed(TopicPartition(settings.kafka_topic, p))
            if off is not None:
                out[p] = off
        return out
    finally:
        c.close(autocommit=False)


def _wait(predicate: Any, timeout: float, what: str, sink: Sink | None = None) -> None:
    wait_until(predicate, timeout, what, state=sink.stats().as_dict if sink is not None else None)


# One message per rejection reason of events.REASONS (plus a null value), built so the decision does not depend on
# when the test runs: the future check is relative to the Kafka record timestamp.
def _poison(now_ms: int) -> list[tuple[bytes | None, str]]:
    ok = {
        "user_id": "user_0001",
        "item_id": "item_0001",
        "interaction_type": "click",
        "timestamp": events.format_timestamp(now_ms),
    }

    def with_(**kw: Any) -> bytes:
        return orjson.dumps({**ok, **kw})

    cases = [
        (b"{not json", events.NOT_JSON),
        (None, events.NOT_JSON),
        (b'{"user_id": "\xff\xfe"}', events.INVALID_UTF8),
        (b"[1, 2, 3]", events.NOT_OBJECT),
        (orjson.dumps({k: v for k, v in ok.items() if k != "item_id"}), events.MISSING_FIELD),
        (with_(user_id=42), events.WRONG_TYPE),
        (with_(interaction_type="hover\n"), events.INVALID_INTERACTION_TYPE),
        (with_(timestamp="yesterday at noon"), events.TIMESTAMP_UNPARSABLE),
        (with_(timestamp="1999-12-31T23:59:59Z"), events.TIMESTAMP_OUT_OF_RANGE),
        (with_(timestamp=events.format_timestamp(now_ms + 3 * 86_400_000)), events.TIMESTAMP_OUT_OF_RANGE),
        (with_(page="x" * (events.MAX_MESSAGE_BYTES + 10)), events.TOO_LARGE),
    ]
    assert {reason for _, reason in cases} == set(events.REASONS)
    return cases


def test_valid_and_poison_messages_mixed(settings: Settings, store: Store) -> None:
    now_ms = int(time.time() * 1000)
    valid = make_values(3_000, seed=3, now_ms=now_ms)
    poison = _poison(now_ms)
    values: list[bytes | None] = list(valid)
    rng = random.Random(5)
    for raw, _ in poison:
        values.insert(rng.randrange(len(values)), raw)
    produce(settings, values)

    stats = Sink(settings, store, batch_max_rows=500).run(until_idle=2)

    assert _counts(store) == (len(valid), len(valid))
    rows = [
        (reason, bytes.fromhex(hexraw), p, o)
        for reason, hexraw, p, o in store.query_rows(
            f"SELECT reason, hex(raw), kafka_partition, kafka_offset FROM {store.database}.dead_letters"
        )
    ]
    # The raw bytes are kept exactly, invalid UTF-8 included.
    assert sorted((r[0], r[1]) for r in rows) == sorted((reason, raw or b"") for raw, reason in poison)
    # Each dead letter points at its message: re-reading that offset gives the same bytes.
    check = KafkaConsumer(**topics.client_config(settings))
    try:
        for reason, raw, partition, offset in rows:
            tp = TopicPartition(settings.kafka_topic, partition)
            check.assign([tp])
            check.seek(tp, offset)
            got = check.poll(timeout_ms=5_000, max_records=1)[tp][0]
            assert (got.value or b"") == raw, reason
    finally:
        check.close()
    reasons: dict[str, int] = {}
    for _, reason in poison:
        reasons[reason] = reasons.get(reason, 0) + 1
    assert stats.dead_letters_by_reason == reasons
    assert stats.rows_inserted == len(valid)
    assert stats.dead_letters == len(poison)
    assert stats.lag == {0: 0, 1: 0, 2: 0}
    assert sum(_committed(settings).values()) == len(values)

    # The dead-letter topic carries the same messages, with the reason and the source position in headers.
    dlq = KafkaConsumer(
        settings.dead_letter_topic,
        **topics.client_config(settings),
        auto_offset_reset="earliest",
        group_id=f"check_{uuid.uuid4().hex[:6]}",
        enable_auto_commit=False,
    )
    try:
        seen: list[dict[str, bytes]] = []
        deadline = time.monotonic() + 30
        while len(seen) < len(poison) and time.monotonic() < deadline:
            for recs in dlq.poll(timeout_ms=1_000).values():
                seen.extend(dict(r.headers) for r in recs)
    finally:
        dlq.close()
    assert sorted(h["reason"].decode() for h in seen) == sorted(reason for _, reason in poison)
    assert all(h["source_topic"].decode() == settings.kafka_topic for h in seen)


def test_dead_letters_reach_a_topic_that_makes_us_split_batches(settings: Settings, store: Store) -> None:
    """A dead-letter topic with a small max.message.bytes refuses the sink's batches as too large; kafka-python splits
    them, and its flush() then failed with "Future not done" (kafka-python 3.0.12): the sink retried the round for
    good. Every dead letter must reach the table and the topic."""
    with topics.admin(settings) as client:
        client.create_topics([NewTopic(settings.dead_letter_topic, 1, 1, topic_configs={"max.message.bytes": "8192"})])
    rng = random.Random(9)
    poison = [b"{" + bytes(rng.randrange(97, 123) for _ in range(1_000)) for _ in range(600)]  # not JSON, 1 KB each
    produce(settings, poison)
    sink = Sink(settings, store).start()
    try:
        _wait(lambda: sink.stats().dead_letters >= 600, 120, "every dead letter", sink)
    finally:
        stats = sink.stop()
    assert stats.dead_letters == 600 and stats.dead_letters_by_reason == {events.NOT_JSON: 600}
    assert int(store.scalar(f"SELECT count() FROM {store.database}.dead_letters")) == 600
    assert sum(topics.end_offsets(settings, settings.dead_letter_topic).values()) >= 600  # at-least-once topic
    assert sum(_committed(settings).values()) == 600


def test_case_study_message_shape_from_a_plain_producer(settings: Settings, store: Store) -> None:
    """The original case study: JSON {user_id, item_id, interaction_type, timestamp} without event ids."""
    topics.ensure_topic(settings, settings.kafka_topic)
    producer = KafkaProducer(**topics.client_config(settings))
    rng = random.Random(11)
    sent = []
    for i in range(2_000):
        msg = {
            "user_id": f"user_{rng.randrange(9999):04d}",
            "item_id": f"item_{rng.randrange(50):04d}",
            "interaction_type": rng.choice(["click", "view", "purchase"]),
            "timestamp": f"2026-11-29 10:{i // 60 % 60:02d}:{i % 60:02d}",
        }
        producer.send(settings.kafka_topic, json.dumps(msg).encode())  # as the case study's producer did
        sent.append(msg)
    producer.flush()
    producer.close()

    Sink(settings, store).run(until_idle=2)

    assert _counts(store) == (len(sent), len(sent))  # derived event ids are distinct
    got = store.query_rows(
        f"SELECT user_id, item_id, interaction_type, formatDateTime(event_time, '%Y-%m-%d %H:%i:%S') "
        f"FROM {store.database}.events"
    )
    assert sorted(got) == sorted((m["user_id"], m["item_id"], m["interaction_type"], m["timestamp"]) for m in sent)
    # Derived ids are deterministic: the id of (topic, partition, offset) is what a replay would compute.
    p, o, eid = store.query_rows(
        f"SELECT kafka_partition, kafka_offset, toString(event_id) FROM {store.database}.events LIMIT 1"
    )[0]
    assert eid == events.derived_event_id(settings.kafka_topic, p, o)


def test_rows_are_stored_as_clickhouse_connect_stores_them_from_python_values(settings: Settings, store: Store) -> None:
    """The sink sends LowCardinality, UUID and Decimal columns as String (fast in clickhouse-connect) and lets the
    engine convert them: every stored value must be the one clickhouse-connect's own conversion of the parsed event
    would have stored (prices that float arithmetic would turn into x.xx99..., ids, low-cardinality strings)."""
    rng = random.Random(5)
    prices = [19.99, 2.01, 4.35, 8.2, 0.285, 1.005, 0.1 + 0.2, 1e-7, 9_999_999_999.999, 123_456.785, 0.0, 7, None]
    prices += [round(rng.uniform(0, 5_000), rng.randint(0, 5)) for _ in range(3_000)] + [rng.uniform(0, 1e9)] * 3
    now_ms = int(time.time() * 1000)
    values = []
    for i, price in enumerate(prices):
        msg: dict[str, Any] = {
            "user_id": f"user_{i % 97}",
            "item_id": f"item_{i % 13}",
            "interaction_type": events.INTERACTION_TYPES[i % 4],
            "timestamp": events.format_timestamp(now_ms - i * 1_001),
            "referrer": ["", "search", "ad", "Ünïcode ✓"][i % 4],
            "device": ["mobile", "desktop", None][i % 3],
            "country": ["DE", "", "FR", "JP", "US"][i % 5],
            "currency": "EUR" if price else None,
            "price": price,
        }
        if i % 3 == 0:
            msg["event_id"] = str(uuid.UUID(int=rng.getrandbits(128)))
        elif i % 3 == 1:
            msg["event_id"] = str(uuid.uuid4()).upper()  # normalised by events.parse
        values.append(orjson.dumps(msg))
    batch = Batch(settings.kafka_topic, "e", 2, 0.0, database=store.database, group=settings.kafka_group_id)
    for offset, value in enumerate(values):
        batch.add(offset, now_ms, None, value)
    assert len(batch.rows) == len(values)

    insert_batches(store, [batch], batch.token)

    # The reference: the same parsed rows, converted by clickhouse-connect from Python values (its DESCRIBE types).
    store.client.command(f"CREATE TABLE {store.database}.events_ref AS {store.database}.events")
    columns = [list(c) for c in zip(*batch.rows, strict=True)]
    columns += [[batch.topic] * len(values), [2] * len(values), batch.offsets, batch.kafka_ms]
    store.client.insert(f"{store.database}.events_ref", columns, column_names=list(EVENT_COLUMNS), column_oriented=True)
    select = "SELECT * EXCEPT ingest_time FROM {} ORDER BY kafka_offset"
    stored = store.query_rows(select.format(store.table("events")))
    expected = store.query_rows(select.format(store.table("events_ref")))
    assert len(stored) == len(values)
    assert stored == expected


def test_refuses_to_start_when_dedup_window_is_zero(settings: Settings, store: Store) -> None:
    store.client.command(f"ALTER TABLE {store.database}.events MODIFY SETTING non_replicated_deduplication_window = 0")
    sink = Sink(settings, store)
    with pytest.raises(StoreError, match="non_replicated_deduplication_window = 0"):
        sink.run(until_idle=1)
    assert sink.stats().last_error is not None
    assert not sink.running


def test_store_failing_for_10_s_mid_stream(settings: Settings, store: Store) -> None:
    n = 24_000
    topics.ensure_topic(settings, settings.kafka_topic)
    sink = Sink(settings, store, batch_max_rows=2_000, batch_max_wait_s=0.5, retry_max_s=2.0).start()
    producing = threading.Thread(target=produce, args=(settings, make_values(n, seed=4)), kwargs={"rate": 1_500})
    producing.start()
    admin_store = store.fork()  # DETACH from another client, as an operator or a failing disk would
    try:
        # Generous: joining a group on a loaded 2-core machine can take a while; the state is shown on failure.
        _wait(lambda: sink.stats().rows_inserted > 1_000, 180, "the first rows", sink)
        admin_store.client.command(f"DETACH TABLE {store.database}.events")
        try:
            _wait(lambda: sink.stats().retries >= 2, 30, "failed inserts", sink)
            during = sink.stats()
            time.sleep(10)
            assert sink.stats().rows_inserted == during.rows_inserted  # nothing acknowledged while detached
            assert "events" in (sink.stats().last_error or "")
            # Nothing was committed ahead of the store.
            assert sum(_committed(settings).values()) <= during.rows_inserted
        finally:
            admin_store.client.command(f"ATTACH TABLE {store.database}.events")
        producing.join()
        _wait(lambda: sink.stats().rows_inserted >= n and sink.stats().total_lag == 0, 120, "the backlog", sink)
    finally:
        sink.stop()
        admin_store.close()
    assert _counts(store) == (n, n)
    assert sum(_committed(settings).values()) == n
    assert sink.stats().last_error is None


def test_broker_restarted_mid_stream(kafka: KafkaStack, settings: Settings, store: Store) -> None:
    n = 16_000
    topics.ensure_topic(settings, settings.kafka_topic)
    sink = Sink(settings, store, batch_max_rows=2_000, batch_max_wait_s=0.5).start()
    values = make_values(n, seed=6)
    try:
        produce(settings, values[: n // 2])
        # Generous: joining a group on a loaded 2-core machine can take a while; the state is shown on failure.
        _wait(lambda: sink.stats().rows_inserted > 1_000, 180, "the first rows", sink)
        kafka.down()
        time.sleep(2)
        kafka.up(timeout_s=120)
        produce(settings, values[n // 2 :])
        _wait(lambda: sink.stats().rows_inserted >= n and sink.stats().total_lag == 0, 180, "all rows after restart")
    finally:
        sink.stop()
    assert _counts(store) == (n, n)
    assert sum(_committed(settings).values()) == n


def test_two_members_split_partitions_and_survivor_takes_over(settings: Settings, store: Store) -> None:
    """Two sinks in one group; one crashes right after storing a batch, before committing it."""
    n = 30_000
    settings = settings.replace(kafka_partitions=4)
    topics.ensure_topic(settings, settings.kafka_topic)
    crashed: list[BatchInfo] = []
    split = threading.Event()
    survivor = Sink(settings, store, batch_max_rows=1_000, batch_max_wait_s=0.3).start()
    victim_ref: list[Sink] = []

    def crash(info: BatchInfo) -> None:
        # Crash only once both members hold partitions, so the survivor has something to take over.
        if split.is_set() and victim_ref[0].stats().batches >= 3 and not crashed:
            crashed.append(info)
            raise RuntimeError("simulated crash between insert and commit")

    victim = Sink(settings, store, batch_max_rows=1_000, batch_max_wait_s=0.3, on_batch_stored=crash)
    victim_ref.append(victim)
    values = make_values(n, seed=8)
    producing = threading.Thread(target=produce, args=(settings, values[: n // 2]), kwargs={"rate": 3_000})
    producing.start()
    try:
        # The survivor first owns every partition and has read ahead; when the victim joins, it keeps two of them
        # (kafka-python keeps their fetch positions) and must resume them from the committed offsets.
        _wait(
            lambda: survivor.stats().assigned_partitions == (0, 1, 2, 3) and survivor.stats().rows_inserted,
            60,
            "the first member",
        )
        victim.start()
        # Each member's stats show its assignment once its own loop has taken it: wait until both have, and the
        # survivor has given up what the victim took.
        _wait(
            lambda: (
                survivor.stats().assigned_partitions
                and victim.stats().assigned_partitions
                and set(survivor.stats().assigned_partitions).isdisjoint(victim.stats().assigned_partitions)
            ),
            90,
            "a split of the partitions",
        )
        assert set(survivor.stats().assigned_partitions).isdisjoint(victim.stats().assigned_partitions)
        split.set()
        # The second half arrives while both members hold partitions, so the victim has batches to crash on.
        producing.join()
        producing = threading.Thread(target=produce, args=(settings, values[n // 2 :]), kwargs={"rate": 3_000})
        producing.start()
        assert victim.join(120), "the victim did not crash"
        assert crashed and "simulated crash" in (victim.stats().last_error or "")
        _wait(lambda: survivor.stats().assigned_partitions == (0, 1, 2, 3), 90, "the survivor taking over")
        producing.join()
        _wait(lambda: _counts(store)[0] >= n and survivor.stats().total_lag == 0, 120, "all rows")
    finally:
        survivor.stop()
        victim.stop()
    assert victim.stats().rows_inserted > 0 and survivor.stats().rows_inserted > 0
    assert _counts(store) == (n, n)
    assert sum(_committed(settings).values()) == n


def _metadata(settings: Settings) -> dict[int, str]:
    """The group's committed offset metadata per partition."""
    c = KafkaConsumer(**topics.client_config(settings), group_id=settings.kafka_group_id, enable_auto_commit=False)
    try:
        tps = [TopicPartition(settings.kafka_topic, p) for p in range(settings.kafka_partitions)]
        return {tp.partition: om.metadata for tp in tps if (om := c.committed(tp, metadata=True)) is not None}
    finally:
        c.close(autocommit=False)


class _CrashingStore:
    """The store, except that the first group insert kills the sink that uses it (before anything is written)."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self.tokens: list[str] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    def insert(self, table: str, *args: Any, dedup_token: str | None = None, **kw: Any) -> int:
        if dedup_token and ":group:" in dedup_token and not self.tokens:
            self.tokens.append(dedup_token)
            raise SystemExit("simulated crash between a group's pre-commit and its insert")
        return self._store.insert(table, *args, **{**kw, "dedup_token": dedup_token})


@pytest.mark.parametrize("stored", [True, False], ids=["group-stored", "group-not-stored"])
@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # the simulated crash
def test_a_group_insert_split_by_a_rebalance_is_rebuilt_by_each_owner(
    settings: Settings, store: Store, caplog: pytest.LogCaptureFixture, stored: bool
) -> None:
    """A sink crashes after recording a group insert (several partitions' batches, one token) and before committing
    it — after the insert, or before it; the partitions then go to two members. Each rebuilds the whole group,
    reading back the other member's ranges: nothing lost, nothing doubled."""
    caplog.set_level(logging.INFO, logger="clickstream_lib.sink")
    n = 12_000
    settings = settings.replace(kafka_partitions=4)
    topics.ensure_topic(settings, settings.kafka_topic)
    crashed: list[BatchInfo] = []

    def crash(info: BatchInfo) -> None:
        if ":group:" in info.token and not crashed:
            crashed.append(info)
            raise RuntimeError("simulated crash between a group insert and its commit")

    values = make_values(n, seed=13)
    producing = threading.Thread(target=produce, args=(settings, values[: n // 2]), kwargs={"rate": 4_000})
    producing.start()
    crashing = _CrashingStore(store)
    victim = Sink(
        settings,
        store if stored else crashing,  # type: ignore[arg-type]
        batch_max_rows=1_000,
        batch_max_wait_s=0.3,
        on_batch_stored=crash if stored else None,
    ).start()
    assert victim.join(120), "the victim did not crash"
    producing.join()
    token = crashed[0].token if stored else crashing.tokens[0]
    assert "simulated crash" in (victim.stats().last_error or "")
    recorded = _metadata(settings)
    assert len({m for m in recorded.values() if m.startswith("clickstream-sink/2 ")}) == 1  # one group, on...
    grouped = sorted(p for p, m in recorded.items() if m.startswith("clickstream-sink/2 "))
    assert len(grouped) >= 2  # ...several partitions
    in_store = store.scalar(f"SELECT count() FROM {store.table('events')}")
    assert in_store > sum(_committed(settings).values()) if stored else in_store == sum(_committed(settings).values())

    # A member that holds partitions but never commits: the sink gets only some of the group's partitions.
    idle = KafkaConsumer(
        **topics.client_config(settings),
        group_id=settings.kafka_group_id,
        enable_auto_commit=False,
        session_timeout_ms=10_000,
    )
    idle.subscribe([settings.kafka_topic])
    stop_idle = threading.Event()

    def idle_loop() -> None:
        while not stop_idle.is_set():
            idle.poll(timeout_ms=100)
            idle.pause(*idle.assignment())
        idle.close(autocommit=False)

    idling = threading.Thread(target=idle_loop)
    idling.start()
    sink = Sink(settings, store, batch_max_rows=1_000, batch_max_wait_s=0.3)
    try:
        _wait(lambda: len(idle.assignment()) == 4, 60, "the idle member's partitions")
        sink.start()
        _wait(lambda: len(sink.stats().assigned_partitions) == 2, 90, "a split of the partitions", sink)
        mine = set(sink.stats().assigned_partitions)
        _wait(lambda: all(p in sink.stats().committed for p in mine), 60, "the sink's first commits", sink)
        left = _metadata(settings)
        # The sink settled its own partitions of the group; the idle member's still record it.
        assert all(left[p] != recorded[p] for p in mine if p in grouped)
        assert all(left[p] == recorded[p] for p in set(grouped) - mine)
        stop_idle.set()
        idling.join(30)
        _wait(lambda: sink.stats().assigned_partitions == (0, 1, 2, 3), 90, "the sink taking over", sink)
        produce(settings, values[n // 2 :], rate=4_000)
        _wait(lambda: _counts(store)[0] >= n and sink.stats().total_lag == 0, 120, "every event", sink)
    finally:
        stop_idle.set()
        sink.stop()
    rebuilt = [r.getMessage() for r in caplog.records if "rebuilt recorded group insert" in r.getMessage()]
    # Rebuilt once for each side that owned some of its partitions (twice if the sink had them all at first).
    assert rebuilt and all(token in m for m in rebuilt), rebuilt
    assert len(rebuilt) == (2 if set(grouped) - mine and set(grouped) & mine else 1)
    assert _counts(store) == (n, n)
    assert sum(_committed(settings).values()) == n


def test_a_group_join_slower_than_one_poll_still_completes(settings: Settings, store: Store) -> None:
    """A rebalance started by new partitions, whose JoinGroup waits seconds for a slow member, still assigns them.

    kafka-python 3.0.12 completes a join only from a poll() that still finds a rejoin "needed"; a rejoin started by a
    metadata change stops being needed once the leader has computed the assignment, so a join that outlived one
    poll() was never completed and the sink sat with no partitions, for good (seen as a CI flake under load).
    """
    settings = settings.replace(kafka_partitions=2)
    topics.ensure_topic(settings, settings.kafka_topic)
    # The sink leads the group and refreshes metadata often, so it sees the new partitions while the slow member is
    # still in the group: its JoinGroup then waits until that member leaves (max_poll_interval_ms after its last poll).
    sink = Sink(settings, store, batch_max_rows=500, batch_max_wait_s=0.3, consumer_config={"metadata_max_age_ms": 300})
    update_lag = sink._update_lag

    def busy_while_joining() -> None:
        # Forces the moment: the sink is busy between two polls (as under load) exactly while the join completes.
        consumer = sink._consumer
        task = getattr(getattr(consumer, "_coordinator", None), "_join_task", None)
        while task is not None and not task.is_done and not sink._stop.is_set():
            time.sleep(0.05)
        update_lag()

    sink._update_lag = busy_while_joining  # type: ignore[method-assign]
    sink.start()
    slow = KafkaConsumer(
        **topics.client_config(settings),
        group_id=settings.kafka_group_id,
        enable_auto_commit=False,
        max_poll_interval_ms=4_000,
        session_timeout_ms=10_000,
    )
    try:
        _wait(lambda: sink.stats().assigned_partitions == (0, 1), 120, "the sink's partitions", sink)
        slow.subscribe([settings.kafka_topic])
        deadline = time.monotonic() + 60
        while not slow.assignment():
            assert time.monotonic() < deadline, "the slow member never got partitions"
            slow.poll(timeout_ms=200)
        with topics.admin(settings) as admin:  # the slow member stops polling from here on
            admin.create_partitions({settings.kafka_topic: NewPartitions(total_count=4)})
        _wait(lambda: sink.stats().assigned_partitions == (0, 1, 2, 3), 120, "all four partitions", sink)
        n = 4_000
        produce(settings, make_values(n, seed=12))
        _wait(lambda: _counts(store)[0] >= n and sink.stats().total_lag == 0, 120, "every event", sink)
    finally:
        sink.stop()
        slow.close(autocommit=False)
    assert _counts(store) == (n, n)


def test_cli_consume_sigterm_commits_what_it_stored(settings: Settings, tmp_path: Path) -> None:
    n = 12_000
    produce(settings, make_values(n, seed=9))
    env = worker_env(settings, tmp_path / "cli")
    cli = [str(ROOT / ".venv" / "bin" / "clickstream"), "consume"]

    # --max-events: exactly that many stored and committed.
    done = subprocess.run([*cli, "--max-events", "1000"], cwd=ROOT, env=env, capture_output=True, timeout=180)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    assert "consumed: 1000 rows, 0 dead letters" in done.stdout.decode()
    assert sum(_committed(settings).values()) == 1_000

    # SIGTERM mid-stream: exit 0; what is stored is exactly what is committed.
    proc = subprocess.Popen(
        [*cli, "--stats", "--batch-max-rows", "500", "--batch-max-wait", "0.2"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        _wait(lambda: sum(_committed(settings).values()) > 2_000, 120, "the CLI to commit")
        proc.send_signal(signal.SIGTERM)
        out, errs = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, errs.decode()[-2000:]
    summary = json.loads(out.decode().strip().splitlines()[-1])
    assert "stopping" in errs.decode()
    committed = sum(_committed(settings).values())
    c = count(env)
    assert c["rows"] == c["uniq"] == committed == 1_000 + summary["rows_inserted"]

    # --until-idle drains the rest.
    done = subprocess.run([*cli, "--until-idle", "2"], cwd=ROOT, env=env, capture_output=True, timeout=180)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    assert count(env) == {"rows": n, "uniq": n, "dead": 0, "dead_uniq": 0}


def test_names_rollups_that_would_count_a_replay_twice(store: Store) -> None:
    """Measured on this engine: a replayed events block is dropped, but still pushed into materialized views."""
    targets = [
        t
        for (t,) in store.query_rows(
            "SELECT name FROM system.tables WHERE database = {db:String} AND engine LIKE '%MergeTree' "
            "AND name NOT IN ('events', 'dead_letters', 'schema_migrations')",
            {"db": store.database},
        )
    ]
    alter = "ALTER TABLE {} MODIFY SETTING non_replicated_deduplication_window = {}"
    for t in targets:
        store.client.command(alter.format(store.table(t), 0))
    expected = sorted(store.table(t) for t in targets if _is_view_target(store, t))
    assert expected and warn_undeduplicated_views(store) == expected
    for t in targets:
        store.client.command(alter.format(store.table(t), 10))
    assert warn_undeduplicated_views(store) == []


def _is_view_target(store: Store, table: str) -> bool:
    return any(
        f"TO {store.database}.{table} " in ddl or f"TO {store.database}.{table}\n" in ddl
        for (ddl,) in store.query_rows(
            "SELECT create_table_query FROM system.tables WHERE database = {db:String} AND engine = 'MaterializedView'",
            {"db": store.database},
        )
    )
