"""Pure logic of the sink's parts, built by their constructors: tokens, recorded ranges, deterministic batches,
the batcher, delivery rounds, recovery of a group insert, backoff, live figures."""

from __future__ import annotations

import gc
import re
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import FrozenInstanceError
from typing import cast

import numpy as np
import orjson
import pytest
from kafka import TopicPartition
from kafka.structs import OffsetAndMetadata

from clickstream_lib import events, store
from clickstream_lib.errors import SinkError
from clickstream_lib.settings import Settings
from clickstream_lib.sink import DEFAULT_BATCH_MAX_ROWS, DEFAULT_BATCH_MAX_WAIT_S, Sink, SinkStats, memory
from clickstream_lib.sink.batch import DEAD_LETTER_COLUMNS, EVENT_COLUMNS, Batch, Record, TokenScope
from clickstream_lib.sink.batcher import Batcher, PartitionState
from clickstream_lib.sink.codec import (
    RecordedRange,
    batch_token,
    decode_group_insert,
    decode_pending,
    encode_group_insert,
    encode_pending,
    group_insert_token,
)
from clickstream_lib.sink.commits import OffsetCommitter
from clickstream_lib.sink.dead_letters import DeadLetterPublisher
from clickstream_lib.sink.delivery import Delivery
from clickstream_lib.sink.memory import PollSizer
from clickstream_lib.sink.recovery import Recovery
from clickstream_lib.sink.retry import backoff_s
from clickstream_lib.sink.stats import LatencyWindow, SinkFigures

T0 = 1_795_000_000_000  # 2026-11-18, a Kafka record timestamp


def _event(ts_ms: int, **kw: object) -> bytes:
    return orjson.dumps(
        {
            "user_id": "user_0001",
            "item_id": "item_0002",
            "interaction_type": "view",
            "timestamp": events.format_timestamp(ts_ms),
            **kw,
        }
    )


def test_token_names_topic_epoch_partition_range_database_and_group() -> None:
    token = batch_token("clicks", "a1b2c3", 4, 100, 199, database="clickstream", group="clickstream-sink")
    assert token == "clicks@a1b2c3:4:100-199/clickstream/clickstream-sink"
    # Another group or database replaying the same range gets its own token, so its insert is not dropped as if it
    # were this group's retry; a group id may hold any character, yet two (database, group) pairs never collide.
    others = {
        batch_token("clicks", "a1b2c3", 4, 100, 199, database="clickstream", group="replay"),
        batch_token("clicks", "a1b2c3", 4, 100, 199, database="rebuilt", group="clickstream-sink"),
        batch_token("clicks", "a1b2c3", 4, 100, 199, database="a", group="b/c"),
        batch_token("clicks", "a1b2c3", 4, 100, 199, database="a_b", group="c"),
    }
    assert token not in others and len(others) == 4


def test_pending_range_round_trips_and_rejects_what_it_did_not_write() -> None:
    meta = encode_pending("a1b2c3", 100, 199)
    assert decode_pending(meta, "a1b2c3") == (100, 199)
    assert decode_pending(meta, "ffffff") is None  # the topic was re-created: its offsets restarted
    for other in (
        "",
        None,
        "hello",
        "clickstream-sink/1 a1b2c3 199-100",
        "clickstream-sink/1 a1b2c3 x-1",
        "clickstream-sink/2 a1b2c3 1-2",
        "clickstream-sink/1 a1b2c3 12",
    ):
        assert decode_pending(other, "a1b2c3") is None, other


def test_group_record_round_trips_and_rejects_what_it_did_not_write() -> None:
    members = (RecordedRange(0, 100, 199), RecordedRange(3, 7, 7), RecordedRange(5, 0, 41))
    meta = encode_group_insert("a1b2c3", list(reversed(members)))
    assert meta == "clickstream-sink/2 a1b2c3 0:100-199,3:7-7,5:0-41"
    assert decode_group_insert(meta, "a1b2c3") == members
    assert decode_group_insert(meta, "ffffff") is None
    assert (
        decode_pending(meta, "a1b2c3") is None and decode_group_insert(encode_pending("a1b2c3", 1, 2), "a1b2c3") is None
    )
    for other in (
        "",
        None,
        "clickstream-sink/2 a1b2c3 0:100-199",  # a group of one is written as a plain range
        "clickstream-sink/2 a1b2c3 0:100-199,0:200-299",  # one partition twice
        "clickstream-sink/2 a1b2c3 0:100-199,1:9-8",
        "clickstream-sink/2 a1b2c3 0:100-199,x:1-2",
        "clickstream-sink/2 a1b2c3 0:100-199,1-2",
    ):
        assert decode_group_insert(other, "a1b2c3") is None, other


def test_group_token_names_exactly_one_set_of_ranges() -> None:
    members = [RecordedRange(0, 100, 199), RecordedRange(3, 7, 7)]
    ids = {"database": "clickstream", "group": "clickstream-sink"}
    token = group_insert_token("clicks", "e1", members, **ids)
    # the order they were read in is no matter
    assert token == group_insert_token("clicks", "e1", list(reversed(members)), **ids)
    assert token.startswith("clicks@e1:group:2:") and token.endswith("/clickstream/clickstream-sink")
    others = {
        group_insert_token("clicks", "e2", members, **ids),
        group_insert_token("views", "e1", members, **ids),
        group_insert_token("clicks", "e1", [RecordedRange(0, 100, 199), RecordedRange(3, 7, 8)], **ids),
        group_insert_token("clicks", "e1", [*members, RecordedRange(4, 0, 0)], **ids),
        group_insert_token("clicks", "e1", members, database="clickstream", group="replay"),
        group_insert_token("clicks", "e1", members, database="other", group="clickstream-sink"),
        batch_token("clicks", "e1", 0, 100, 199, **ids),
    }
    assert token not in others and len(others) == 7


def test_backoff_doubles_and_is_capped() -> None:
    assert [backoff_s(a, 0.25, 5.0) for a in range(1, 9)] == [0.25, 0.5, 1.0, 2.0, 4.0, 5.0, 5.0, 5.0]


def _build(records: list[tuple[int, int, bytes | None]]) -> Batch:
    b = Batch("clicks", "e1", 2, started=0.0, database="clickstream", group="g")
    for offset, ts, value in records:
        b.add(offset, ts, None, value)
    return b


def test_a_replayed_range_gives_the_same_rows_and_decisions() -> None:
    records = [
        (10, T0, _event(T0 - 5_000, event_id="0b6f6f3e-9d3a-4c1e-8b51-5b1c2d3e4f50")),
        (11, T0, _event(T0 - 4_000)),  # no event_id: derived from topic/partition/offset
        (12, T0, b"{oops"),
        (13, T0, _event(T0 + 2 * 86_400_000)),  # two days after its own record timestamp
        (14, T0 + 3 * 86_400_000, _event(T0 + 2 * 86_400_000)),  # the same event, recorded later: valid
        (15, T0, None),
    ]
    first, again = _build(records), _build(records)
    assert (first.first, first.last, first.token) == (10, 15, "clicks@e1:2:10-15/clickstream/g")
    assert first.event_columns() == again.event_columns()
    assert first.dead_columns() == again.dead_columns()
    cols = dict(zip(EVENT_COLUMNS, first.event_columns(), strict=True))
    assert cols["kafka_offset"] == [10, 11, 14]
    assert cols["event_id"][0] == "0b6f6f3e-9d3a-4c1e-8b51-5b1c2d3e4f50"
    assert cols["event_id"][1] == events.derived_event_id("clicks", 2, 11)
    assert cols["event_time"] == [T0 - 5_000, T0 - 4_000, T0 + 2 * 86_400_000]
    assert cols["kafka_partition"] == [2, 2, 2] and cols["kafka_topic"] == ["clicks"] * 3
    dead = dict(zip(DEAD_LETTER_COLUMNS, first.dead_columns(), strict=True))
    assert dead["reason"] == [events.NOT_JSON, events.TIMESTAMP_OUT_OF_RANGE, events.NOT_JSON]
    assert dead["raw"] == [b"{oops", records[3][2], b""]
    assert dead["kafka_offset"] == [12, 13, 15]
    assert len(first) == 6


def test_columns_match_the_tables_of_the_migrations() -> None:
    ddl = " ".join(store.MIGRATIONS[0].statements)
    added = " ".join(s for m in store.MIGRATIONS for s in m.statements if "{db}.events ADD COLUMN" in s)

    def columns(table: str) -> list[str]:
        body = ddl.split(f"{{db}}.{table}")[1].split("ENGINE")[0]
        return re.findall(r"^\s*([a-z_]+)\s+[A-Z]", body, flags=re.M)

    later = re.findall(r"ADD COLUMN IF NOT EXISTS ([a-z_]+) ", added)  # the property columns
    assert set(EVENT_COLUMNS) | {"ingest_time"} == set(columns("events")) | set(later)
    assert set(DEAD_LETTER_COLUMNS) | {"ingest_time"} == set(columns("dead_letters"))
    # The parsed fields are the event columns in order (timestamp_ms is stored as event_time).
    assert [("event_time" if f == "timestamp_ms" else f) for f in events.FIELDS] == list(EVENT_COLUMNS[:16])


def test_window_rate_and_percentiles() -> None:
    w = LatencyWindow()
    assert w.percentiles(100.0) == (None, None, None, None)
    w.add(100.0, 1_000, np.arange(1, 101, dtype=np.float64), np.full(100, 7.0))
    w.add(101.0, 1_000, np.array([], dtype=np.float64), np.array([], dtype=np.float64))
    e50, e99, k50, k99 = w.percentiles(101.0)
    assert e50 == pytest.approx(50.5) and e99 == pytest.approx(99.01)
    assert k50 == k99 == 7.0
    assert w.rate(101.0, started=91.0) == pytest.approx(200.0)  # 2000 rows over the 10 s window
    assert w.rate(200.0, started=91.0) == 0.0  # old batches age out
    assert w.percentiles(200.0) == (None, None, None, None)  # and so do their latencies
    w.add(201.0, 10, np.full(10, 3.0), np.full(10, 4.0))
    assert w.percentiles(201.0) == (3.0, 3.0, 4.0, 4.0)
    w.add(201.5, 10, np.full(10, 5.0), np.full(10, 6.0))
    assert w.percentiles(201.5) == (3.0, 3.0, 4.0, 4.0)  # recomputed at most once a second
    assert w.percentiles(202.0)[0] == pytest.approx(4.0)  # then the new batch counts


def test_window_percentiles_of_a_large_window_come_from_a_sample() -> None:
    """30 s at 50 000 events/s is 1.5M latencies: a strided sample of each batch gives the percentiles within 1%."""
    w = LatencyWindow()
    rng = np.random.default_rng(5)
    batches = [rng.gamma(4.0, 200.0, size=8_000) for _ in range(180)]
    for i, lat in enumerate(batches):
        w.add(100.0 + i * 0.15, lat.size, lat, lat + 50.0)
    e50, e99, _, k99 = w.percentiles(127.0)
    exact = np.concatenate(batches)
    assert e50 == pytest.approx(np.percentile(exact, 50), rel=0.01)
    assert e99 == pytest.approx(np.percentile(exact, 99), rel=0.01)
    assert k99 == pytest.approx(np.percentile(exact + 50.0, 99), rel=0.01)
    assert e50 != np.percentile(exact, 50)  # it was a sample, not the exact computation


def test_stats_read_as_dataclass_or_mapping() -> None:
    s = SinkStats(rows_inserted=5, lag={0: 3, 1: 4}, dead_letters_by_reason={"not_json": 1})
    assert s.total_lag == 7
    assert s.get("rows_inserted") == 5 and s.get("nope", 1) == 1
    d = s.as_dict()
    assert d["lag"] == {"0": 3, "1": 4} and d["dead_letters_by_reason"] == {"not_json": 1}
    with pytest.raises(FrozenInstanceError):
        setattr(s, "rows_inserted", 6)  # noqa: B010


def test_sink_rejects_nonsense_limits() -> None:
    settings = Settings()
    with pytest.raises(ValueError, match="batch_max_rows"):
        Sink(settings, batch_max_rows=0)
    with pytest.raises(ValueError, match="batch_max_wait_s"):
        Sink(settings, batch_max_wait_s=0)
    with pytest.raises(ValueError, match="batch_max_bytes"):
        Sink(settings, batch_max_bytes=0)
    assert DEFAULT_BATCH_MAX_ROWS >= 10_000 or DEFAULT_BATCH_MAX_WAIT_S <= 1.0


# --- runs of records, and the insert thread ---------------------------------------------------------------------


def _records(first: int, n: int, gap_at: int | None = None) -> list[Record]:
    out = []
    offset = first
    for i in range(n):
        if gap_at is not None and offset == gap_at:
            offset += 5  # e.g. compacted away, or transaction markers
        value = _event(T0 - 1_000 - i) if i % 7 else b"{broken"
        out.append(Record(offset, T0, b"k", value))
        offset += 1
    return out


# What a sink built from Settings() names in its tokens: its topic and the topic's epoch, the database, the consumer
# group.
SETTINGS = Settings()
TOPIC = SETTINGS.kafka_topic
SCOPE = TokenScope(TOPIC, "e1", SETTINGS.database, SETTINGS.kafka_group_id)
_IDS = {"database": "clickstream", "group": "clickstream-sink"}
_SUFFIX = "/clickstream/clickstream-sink"


def _batcher(batch_max_rows: int, batch_max_bytes: int = 64 * 1024 * 1024) -> Batcher:
    return Batcher(
        SCOPE, SinkFigures(), batch_max_rows=batch_max_rows, batch_max_bytes=batch_max_bytes, batch_max_wait_s=1.0
    )


def _state(
    batcher: Batcher, partition: int, committed: int | None, replay: tuple[int, int] | None = None
) -> PartitionState:
    state = batcher.states[partition] = PartitionState(TopicPartition(TOPIC, partition), committed, replay)
    return state


def _ranges(state: PartitionState) -> list[tuple[int, int, int]]:
    batches = [*state.sealed, *([state.open] if state.open is not None else [])]
    return [(b.first, b.last, len(b)) for b in batches]


def test_runs_of_records_cut_batches_where_one_by_one_would() -> None:
    records = _records(100, 23, gap_at=110)
    one, runs = _batcher(5), _batcher(5)
    s1, s2 = _state(one, 2, 100), _state(runs, 2, 100)
    for r in records:  # the per-record rule: seal whenever a batch reaches batch_max_rows
        assert one.take(s1, [r], 0.0) == 1
    assert runs.take(s2, records[:3], 0.0) == 3
    assert runs.take(s2, records[:9], 0.0) == 6  # a re-fetch after a seek: the first 3 are not taken twice
    assert runs.take(s2, records[9:], 0.0) == 14
    assert _ranges(s1) == _ranges(s2) == [(100, 104, 5), (105, 109, 5), (115, 119, 5), (120, 124, 5), (125, 127, 3)]
    for a, b in zip([*s1.sealed, s1.open], [*s2.sealed, s2.open], strict=True):
        assert a is not None and b is not None
        assert (a.token, a.event_columns(), a.dead_columns()) == (b.token, b.event_columns(), b.dead_columns())
    assert runs.figures.snapshot().records_consumed == 23


def test_a_limit_caps_runs_but_a_recorded_range_is_rebuilt_whole() -> None:
    batcher = _batcher(100)
    state = _state(batcher, 2, 100)
    assert batcher.take(state, _records(100, 20), 0.0, limit=7) == 7
    assert _ranges(state) == [(100, 106, 7)] and state.next_offset == 107
    # A recorded range 100-111 that ends in a gap (112-116 are missing): rebuilt whole despite the limit, sealed
    # at the gap, and what follows starts a new batch.
    batcher = _batcher(100)
    state = _state(batcher, 2, 100, (100, 114))
    assert batcher.take(state, _records(100, 20, gap_at=112), 0.0, limit=3) == 12
    assert _ranges(state) == [(100, 111, 12)] and state.replay is None
    assert batcher.take(state, _records(100, 20, gap_at=112)[12:], 0.0, limit=5) == 5
    assert _ranges(state) == [(100, 111, 12), (117, 121, 5)]


class _FakeConsumer:
    def __init__(self, log: list[str]) -> None:
        self.log = log
        self.highwaters: dict[int, int] = {}

    def commit(self, offsets: Mapping[TopicPartition, OffsetAndMetadata], timeout_ms: int) -> None:
        for tp, om in sorted(offsets.items()):
            self.log.append(f"commit p{tp.partition} {om.offset} {om.metadata!r}")

    def committed(self, tp: TopicPartition, metadata: bool, timeout_ms: int) -> OffsetAndMetadata | None:
        return None

    def pause(self, *tps: TopicPartition) -> None:
        self.log.append("pause")

    def resume(self, *tps: TopicPartition) -> None:
        pass

    def paused(self) -> set[TopicPartition]:
        return set()

    def highwater(self, tp: TopicPartition) -> int | None:
        return self.highwaters.get(tp.partition)


class _FakeStore:
    """Records which thread inserted what; an insert waits until the test releases it."""

    def __init__(self, log: list[str]) -> None:
        self.log = log
        self.release = threading.Event()
        self.fail = False

    def insert(
        self,
        table: str,
        columns: Sequence[Sequence[object]],
        column_names: Sequence[str],
        dedup_token: str | None = None,
        column_types: Sequence[str] | None = None,
    ) -> int:
        self.release.wait(10)
        if self.fail:
            raise RuntimeError("engine down")
        self.log.append(f"insert {table} {dedup_token} {len(columns[0])} rows on {threading.current_thread().name}")
        return len(columns[0])


class _NoProducer:
    """The dead-letter producer of batches without dead letters: never asked to send."""

    def send(self, *args: object, **kwargs: object) -> None:
        raise AssertionError("no dead letters in these batches")


def _delivery(
    log: list[str], batcher: Batcher, consumer: _FakeConsumer | None = None
) -> tuple[Delivery, _FakeStore, _FakeConsumer]:
    """A Delivery over fakes of the store and the consumer, with a real insert thread."""
    fake_store = _FakeStore(log)
    fake_consumer = consumer or _FakeConsumer(log)
    delivery = Delivery(
        batcher,
        SCOPE,
        store=fake_store,
        consumer=fake_consumer,
        committer=OffsetCommitter(fake_consumer, SETTINGS),
        dead_letters=DeadLetterPublisher(_NoProducer(), SETTINGS.dead_letter_topic, TOPIC, batcher.figures),
        inserter=ThreadPoolExecutor(max_workers=1, thread_name_prefix="inserter"),
        figures=batcher.figures,
        rewind=lambda: log.append("rewind"),
    )
    return delivery, fake_store, fake_consumer


def _delivering(log: list[str]) -> tuple[Delivery, _FakeStore, PartitionState]:
    batcher = _batcher(5)
    delivery, fake_store, _ = _delivery(log, batcher)
    state = _state(batcher, 2, 100)
    valid = [Record(100 + i, T0, None, _event(T0 - 1_000)) for i in range(12)]
    batcher.take(state, valid, 0.0)  # two sealed batches of 5 (100-104, 105-109) and 110-111 open
    return delivery, fake_store, state


def test_the_insert_runs_on_its_own_thread_between_the_pre_and_post_commit() -> None:
    log: list[str] = []
    delivery, fake_store, state = _delivering(log)
    delivery.start_round()
    assert log == [f"commit p2 100 '{encode_pending('e1', 100, 104)}'"]  # the range is recorded first
    assert delivery.inflight is not None and delivery.busy()
    time.sleep(0.05)
    assert len(log) == 1  # nothing is committed while the insert runs
    fake_store.release.set()
    assert delivery.inflight[1].result(5) is None
    assert delivery.finish_round()
    token = f"{TOPIC}@e1:2:100-104{_SUFFIX}"
    assert log[1] == f"insert events {token} 5 rows on inserter_0"
    assert log[2] == f"commit p2 105 '{encode_pending('e1', 105, 109)}'"  # post-commit names the next batch
    assert state.committed == 105 and len(state.sealed) == 1 and state.sealed[0].precommitted
    assert delivery.figures.snapshot().rows_inserted == 5
    delivery.inserter.shutdown()


def test_a_failed_insert_commits_nothing_and_the_same_batch_is_retried() -> None:
    log: list[str] = []
    delivery, fake_store, state = _delivering(log)
    fake_store.fail = True
    fake_store.release.set()
    assert not delivery.deliver_round()
    assert [line for line in log if line.startswith("commit")] == [f"commit p2 100 '{encode_pending('e1', 100, 104)}'"]
    error = delivery.figures.snapshot().last_error
    assert error is not None and "engine down" in error
    assert "pause" in log and delivery.retry_at > 0  # the partitions wait for the backoff
    fake_store.fail = False
    batch = state.sealed[0]
    assert delivery.deliver_round()
    assert state.sealed[0] is not batch and state.committed == 105
    assert log[-2].startswith(f"insert events {TOPIC}@e1:2:100-104{_SUFFIX} 5 rows")  # same range, same token
    assert delivery.figures.snapshot().last_error is None
    delivery.inserter.shutdown()


def test_a_rebalance_during_an_insert_leaves_the_round_uncommitted() -> None:
    log: list[str] = []
    delivery, fake_store, _state = _delivering(log)
    delivery.start_round()
    assert delivery.inflight is not None
    future = delivery.inflight[1]
    # What the sink does when a rebalance revokes the partition while the insert still runs:
    delivery.abandon_inflight()
    assert delivery.batcher.drop(2) is not None
    assert delivery.inflight is None and not delivery.batcher.states and not future.done()
    fake_store.release.set()
    future.result(5)
    delivery.inserter.shutdown(wait=True)
    assert [line for line in log if line.startswith("commit")] == [f"commit p2 100 '{encode_pending('e1', 100, 104)}'"]
    assert (
        delivery.figures.snapshot().rows_inserted == 0
    )  # the next owner rebuilds 100-104; ClickHouse drops the repeat


def test_records_a_revocation_drops_no_longer_count_towards_max_events() -> None:
    """run(max_events=n) stores exactly n: records of batches a rebalance dropped uncommitted are read again."""
    batcher = _batcher(5)
    kept, gone = _state(batcher, 1, 100), _state(batcher, 2, 100)
    assert batcher.take(kept, _records(100, 3), 0.0) == 3
    assert batcher.take(gone, _records(100, 7), 0.0) == 7  # a sealed batch of 5 and an open one of 2
    assert batcher.drop(2) is gone
    assert batcher.dropped_records() == 7 and batcher.dropped_records() == 0
    assert list(batcher.states) == [1]
    batcher.replace(PartitionState(TopicPartition(TOPIC, 1), 100, None))  # re-assigned: started afresh
    assert batcher.dropped_records() == 3 and len(batcher.states[1]) == 0


def test_backpressure_waits_for_the_insert_instead_of_pausing() -> None:
    log: list[str] = []
    delivery, fake_store, state = _delivering(log)
    assert len(state.sealed) == 2 and delivery.batcher.store_behind()
    delivery.start_round()
    fake_store.release.set()
    assert delivery.finish_round()
    assert not delivery.batcher.store_behind() and "pause" not in log
    delivery.inserter.shutdown()


def test_reading_on_during_an_insert_only_while_a_batch_waits_in_kafka() -> None:
    batcher = _batcher(5)
    state = _state(batcher, 2, 100)
    batcher.take(state, [Record(100 + i, T0, None, _event(T0 - 1_000)) for i in range(12)], 0.0)
    assert state.next_offset == 112
    consumer = _FakeConsumer([])
    assert not batcher.kafka_behind(consumer)  # nothing known in Kafka: caught up
    consumer.highwaters = {2: 112 + 4}
    assert not batcher.kafka_behind(consumer)
    consumer.highwaters = {2: 112 + 5}  # a full batch (batch_max_rows=5) waits
    assert batcher.kafka_behind(consumer)
    assert batcher.lag(consumer) == {2: 17}  # high watermark minus the committed offset


def test_gc_threshold_is_raised_while_sinks_run_and_restored_after_the_last() -> None:
    before = gc.get_threshold()
    try:
        gc.set_threshold(700, 10, 10)
        with memory.relaxed_gc():
            assert gc.get_threshold() == (memory.GC_YOUNG_THRESHOLD, 10, 10)
            with memory.relaxed_gc():  # a second sink in the process
                pass
            assert gc.get_threshold() == (memory.GC_YOUNG_THRESHOLD, 10, 10)  # the first one still runs
        assert gc.get_threshold() == (700, 10, 10)
        with memory.relaxed_gc():
            gc.set_threshold(1_000, 5, 5)  # changed by someone else meanwhile: theirs stays
        assert gc.get_threshold() == (1_000, 5, 5)
        gc.set_threshold(100_000, 10, 10)
        with memory.relaxed_gc():  # already higher: left alone
            assert gc.get_threshold() == (100_000, 10, 10)
        assert gc.get_threshold() == (100_000, 10, 10)
    finally:
        gc.set_threshold(*before)


# --- group inserts ------------------------------------------------------------------------------------------------


def _grouping(log: list[str], partitions: tuple[int, ...] = (0, 1, 2)) -> tuple[Delivery, _FakeStore]:
    batcher = _batcher(5)
    delivery, fake_store, _ = _delivery(log, batcher)
    for p in partitions:
        state = _state(batcher, p, 10 * p)
        batcher.take(state, [Record(10 * p + i, T0, None, _event(T0 - 1_000)) for i in range(3)], 0.0)
    return delivery, fake_store


def test_a_round_takes_every_partition_into_one_insert() -> None:
    log: list[str] = []
    delivery, fake_store = _grouping(log)
    fake_store.release.set()
    states = delivery.batcher.states
    states[1].open = None  # nothing read from partition 1 yet
    states[1].next_offset = 10
    assert delivery.deliver_round()
    ranges = [RecordedRange(0, 0, 2), RecordedRange(2, 20, 22)]
    meta = encode_group_insert("e1", ranges)
    token = group_insert_token(TOPIC, "e1", ranges, **_IDS)
    # The open batches were sealed to join the round; both partitions record the whole group insert before it.
    assert log == [
        f"commit p0 0 {meta!r}",
        f"commit p2 20 {meta!r}",
        f"insert events {token} 6 rows on inserter_0",
        "commit p0 3 ''",
        "commit p2 23 ''",
    ]
    stats = delivery.figures.snapshot()
    assert stats.rows_inserted == 6 and stats.batches == 2 and stats.committed == {0: 3, 2: 23}
    assert delivery.round is None and not delivery.busy() and not delivery.batcher.busy()
    delivery.inserter.shutdown()


def test_a_failed_group_insert_is_retried_with_exactly_the_same_batches() -> None:
    log: list[str] = []
    delivery, fake_store = _grouping(log, (0, 1))
    fake_store.fail = True
    fake_store.release.set()
    assert not delivery.deliver_round()
    # Meanwhile partition 2 gets records: they wait for the next round, the retried one keeps its two batches.
    state = _state(delivery.batcher, 2, 20)
    delivery.batcher.take(state, [Record(20, T0, None, _event(T0 - 1_000))], 0.0)
    fake_store.fail = False
    assert delivery.deliver_round()
    ranges = [RecordedRange(0, 0, 2), RecordedRange(1, 10, 12)]
    token = group_insert_token(TOPIC, "e1", ranges, **_IDS)
    inserts = [line for line in log if line.startswith("insert")]
    assert inserts == [f"insert events {token} 6 rows on inserter_0"]
    assert [line for line in log if line.startswith("commit")].count(
        f"commit p0 0 {encode_group_insert('e1', ranges)!r}"
    ) == 1
    assert state.open is not None and not state.sealed  # not taken into the retried round
    assert delivery.deliver_round()
    assert log[-2] == f"insert events {TOPIC}@e1:2:20-20{_SUFFIX} 1 rows on inserter_0"  # a round of one: its own token
    delivery.inserter.shutdown()


def test_group_max_batches_one_inserts_each_batch_alone() -> None:
    log: list[str] = []
    delivery, fake_store = _grouping(log, (0, 1))
    delivery.group_max_batches = 1
    fake_store.release.set()
    delivery.batcher.seal_due(0.0, force=True)
    assert delivery.deliver_round()  # one round, an insert per batch (each recorded under its own range)
    assert [line for line in log if line.startswith("commit")][:2] == [
        f"commit p0 0 {encode_pending('e1', 0, 2)!r}",
        f"commit p1 10 {encode_pending('e1', 10, 12)!r}",
    ]
    assert [line.split(" on ")[0] for line in log if line.startswith("insert")] == [
        f"insert events {TOPIC}@e1:0:0-2{_SUFFIX} 3 rows",
        f"insert events {TOPIC}@e1:1:10-12{_SUFFIX} 3 rows",
    ]
    with pytest.raises(ValueError, match="group_max_batches"):
        Sink(Settings(), group_max_batches=0)
    delivery.inserter.shutdown()


class _CommittedConsumer(_FakeConsumer):
    """A consumer whose consumer group has these committed offsets and metadata."""

    def __init__(self, log: list[str], committed: dict[int, OffsetAndMetadata]) -> None:
        super().__init__(log)
        self.offsets = committed

    def committed(self, tp: TopicPartition, metadata: bool, timeout_ms: int) -> OffsetAndMetadata | None:
        return self.offsets.get(tp.partition)


def test_a_group_insert_whose_record_did_not_reach_every_partition_was_never_made() -> None:
    log: list[str] = []
    ranges = (RecordedRange(0, 0, 2), RecordedRange(1, 10, 12))
    meta = encode_group_insert("e1", ranges)
    # Partition 1 still holds its previous (single) record: the group insert's pre-commit never completed.
    offsets = {0: OffsetAndMetadata(0, meta, -1), 1: OffsetAndMetadata(10, encode_pending("e1", 10, 14), -1)}
    consumer = _CommittedConsumer(log, offsets)
    batcher = _batcher(5)
    recovery = Recovery(
        batcher,
        SCOPE,
        consumer=consumer,
        committer=OffsetCommitter(consumer, SETTINGS),
        store=cast(store.Store, _FakeStore(log)),  # reads nothing from the store: the commits decide
        dead_letters=DeadLetterPublisher(_NoProducer(), SETTINGS.dead_letter_topic, TOPIC, batcher.figures),
        figures=batcher.figures,
        settings=SETTINGS,
        fetch_config={},
        stop=threading.Event(),
    )
    assert recovery.resolve_group_insert(ranges, [0], {0: offsets[0]}) == {0: 0}
    assert log == ["commit p0 0 ''"]  # the record is cleared, so it cannot be taken for a stored group insert later


def test_a_rebuilt_recorded_batch_is_inserted_alone_under_its_own_token() -> None:
    log: list[str] = []
    delivery, fake_store = _grouping(log, (0, 2))
    fake_store.release.set()
    # Partition 1 resumes with a recorded range 10-12 (perhaps stored before a crash, under its own token).
    state = _state(delivery.batcher, 1, 10, (10, 12))
    delivery.batcher.take(state, [Record(10 + i, T0, None, _event(T0 - 1_000)) for i in range(3)], 0.0)
    assert state.sealed and state.sealed[0].replayed
    assert delivery.deliver_round()
    assert [line.split(" on ")[0] for line in log if line.startswith("insert")] == [
        f"insert events {TOPIC}@e1:1:10-12{_SUFFIX} 3 rows"
    ]
    assert delivery.deliver_round()  # then the others, together
    token = group_insert_token(TOPIC, "e1", [RecordedRange(0, 0, 2), RecordedRange(2, 20, 22)], **_IDS)
    assert log[-3].startswith(f"insert events {token} 6 rows")
    delivery.inserter.shutdown()


# --- bounded in bytes -------------------------------------------------------------------------------------------


def test_a_batch_closes_at_the_record_that_reaches_batch_max_bytes() -> None:
    batcher = _batcher(100, batch_max_bytes=1_000)
    state = _state(batcher, 2, 100)
    records = [Record(100 + i, T0, None, b"x" * (300 if i % 2 else 100)) for i in range(12)]  # 100, 300, 100...
    assert batcher.take(state, records[:5], 0.0) == 5
    assert batcher.take(state, records[5:], 0.0) == 7
    # 100+300+100+300+100+300 = 1200 >= 1000 at the 6th record; the next batch likewise.
    assert _ranges(state) == [(100, 105, 6), (106, 111, 6)]
    assert [b.nbytes for b in state.sealed] == [1_200, 1_200]
    # A recorded range is rebuilt exactly, whatever its bytes: replay reads its end from the commit metadata.
    replay = _state(batcher, 3, 100, (100, 109))
    assert batcher.take(replay, records, 0.0) == 12
    assert _ranges(replay) == [(100, 109, 10), (110, 111, 2)]


def test_a_round_holds_at_most_batch_max_bytes_of_values() -> None:
    batcher = _batcher(100, batch_max_bytes=1_000)
    delivery, _, _ = _delivery([], batcher)
    for p in range(4):
        state = _state(batcher, p, 0)
        batcher.take(state, [Record(i, T0, None, b"x" * 200) for i in range(2)], 0.0)  # 400 bytes, open
    assert [b.partition for b in delivery.compose_round()] == [0, 1]  # 800; a third would make 1200
    delivery.inserter.shutdown()


def test_polls_shrink_for_large_values_and_grow_back_once_they_are_forgotten() -> None:
    sizer = PollSizer(batch_max_rows=20_000, batch_max_bytes=64 * 1024 * 1024)
    tp = TopicPartition(TOPIC, 0)
    small = {tp: [Record(0, T0, None, b"{}" * 200)]}
    assert sizer.records == 16  # the first poll knows no value yet
    sizer.note(small, time.monotonic())
    assert sizer.records == 20_000  # ordinary events: at once
    sizer.note({tp: [Record(1, T0, None, b"x" * 5_000_000)]}, time.monotonic())
    assert sizer.records == 13  # 64 MiB / 5 MB
    sizer.note(small, time.monotonic())
    assert sizer.records == 13  # a 5 MB value was seen lately
    sizer.large_value = (5_000_000, time.monotonic() - memory.LARGE_VALUE_MEMORY_S - 1)
    caps = []
    for _ in range(12):
        sizer.note(small, time.monotonic())
        caps.append(sizer.records)
    assert caps == [20_000] * 12  # forgotten: ordinary values again
    large = PollSizer(batch_max_rows=20_000, batch_max_bytes=64 * 1024 * 1024)
    caps = []
    for _ in range(4):  # a backlog of 1 MB values at start: 16, then doubling up to 64 MiB / 1 MB
        caps.append(large.records)
        large.note({tp: [Record(1, T0, None, b"x" * 1_000_000)]}, time.monotonic())
    assert caps == [16, 32, 64, 67]


def test_a_stop_finishes_the_recorded_ranges_being_rebuilt() -> None:
    """A range re-read after a rebalance is rebuilt before the stop seals: what the store holds gets committed."""
    batcher = _batcher(100)
    tp1, tp2 = TopicPartition(TOPIC, 1), TopicPartition(TOPIC, 2)
    replaying = _state(batcher, 1, 100, (100, 111))
    other = _state(batcher, 2, 50)
    records = _records(100, 20)
    assert batcher.replaying()
    batcher.take_replays({tp1: records[:5], tp2: _records(50, 3)}, 0.0)
    batcher.take_replays({tp1: records[5:]}, 0.0)
    assert replaying.replay is None and _ranges(replaying) == [(100, 111, 12)]  # only the range's records
    assert replaying.sealed[0].replayed and not batcher.replaying()
    assert _ranges(other) == []  # read again by the next run
    batcher.seal_for_stop()
    assert _ranges(replaying) == [(100, 111, 12)]
    # An incomplete recorded range is not sealed at a stop: the next run rebuilds it whole.
    unfinished = _state(batcher, 3, 100, (100, 111))
    batcher.take_replays({TopicPartition(TOPIC, 3): records[:5]}, 0.0)
    batcher.seal_for_stop()
    assert unfinished.open is None and unfinished.replay is None and not unfinished.sealed


class _MetadataLimitConsumer(_FakeConsumer):
    """Refuses an offset commit whose metadata is over ``limit`` bytes, as a broker's offset.metadata.max.bytes."""

    def __init__(self, log: list[str], limit: int) -> None:
        super().__init__(log)
        self.limit = limit

    def commit(self, offsets: Mapping[TopicPartition, OffsetAndMetadata], timeout_ms: int) -> None:
        from kafka.errors import OffsetMetadataTooLargeError

        if any(len(om.metadata) > self.limit for om in offsets.values()):
            self.log.append("refused")
            raise OffsetMetadataTooLargeError()
        super().commit(offsets, timeout_ms)


def _refusing(log: list[str], partitions: tuple[int, ...], limit: int) -> tuple[Delivery, _FakeStore]:
    batcher = _batcher(5)
    delivery, fake_store, _ = _delivery(log, batcher, _MetadataLimitConsumer(log, limit))
    for p in partitions:
        state = _state(batcher, p, 10 * p)
        batcher.take(state, [Record(10 * p + i, T0, None, _event(T0 - 1_000)) for i in range(3)], 0.0)
    fake_store.release.set()
    return delivery, fake_store


def test_a_refused_group_pre_commit_falls_back_to_smaller_groups() -> None:
    log: list[str] = []
    delivery, _ = _refusing(log, (0, 1, 2, 3), limit=32)
    while delivery.batcher.busy():
        delivery.deliver_round()
    # 4 -> 2 -> 1 batches per insert: each batch then inserted alone under its own token (its record: 27 bytes).
    assert delivery.group_max_batches == 1
    assert log.count("refused") == 2
    assert sorted(line for line in log if line.startswith("insert")) == [
        f"insert events {batch_token(TOPIC, 'e1', p, 10 * p, 10 * p + 2, **_IDS)} 3 rows on inserter_0"
        for p in range(4)
    ]
    assert delivery.figures.snapshot().rows_inserted == 12
    delivery.inserter.shutdown()


def test_a_refused_single_batch_pre_commit_stops_the_sink() -> None:
    log: list[str] = []
    delivery, _ = _refusing(log, (0,), limit=10)
    with pytest.raises(SinkError, match=r"offset\.metadata\.max\.bytes"):
        delivery.deliver_round()
    delivery.inserter.shutdown()


def test_large_values_are_collected_every_batch_max_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    collected: list[int] = []

    def collect(generation: int = 2) -> int:
        collected.append(generation)
        return 0

    monkeypatch.setattr(gc, "collect", collect)
    sizer = PollSizer(batch_max_rows=20_000, batch_max_bytes=16 * 1024 * 1024)
    tp = TopicPartition(TOPIC, 0)
    for i in range(200):  # ordinary events: the raised GC threshold is left alone
        sizer.note({tp: [Record(i, T0, None, b"{}" * 200)] * 100}, time.monotonic())
    assert collected == []
    for i in range(8):  # 8 x 5 MB: a collection each time 16 MiB of them went by (after the 4th and the 8th)
        sizer.note({tp: [Record(i, T0, None, b"x" * 5_000_000)]}, time.monotonic())
    assert collected == [1, 1]
