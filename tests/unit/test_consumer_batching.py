"""Pure logic of the sink: tokens, recorded ranges, deterministic batches, backoff, live figures."""

from __future__ import annotations

import gc
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import orjson
import pytest
from kafka import TopicPartition
from kafka.structs import OffsetAndMetadata

from clickstream_lib import consumer, events, store
from clickstream_lib.consumer import (
    DEAD_LETTER_COLUMNS,
    EVENT_COLUMNS,
    Member,
    Sink,
    SinkStats,
    _Batch,
    _PartitionState,
    _Record,
    _Window,
    backoff_s,
    batch_token,
    crc32c_accelerated,
    decode_group,
    decode_pending,
    encode_group,
    encode_pending,
    group_token,
)
from clickstream_lib.errors import SinkError
from clickstream_lib.settings import Settings

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
    members = (Member(0, 100, 199), Member(3, 7, 7), Member(5, 0, 41))
    meta = encode_group("a1b2c3", list(reversed(members)))
    assert meta == "clickstream-sink/2 a1b2c3 0:100-199,3:7-7,5:0-41"
    assert decode_group(meta, "a1b2c3") == members
    assert decode_group(meta, "ffffff") is None
    assert decode_pending(meta, "a1b2c3") is None and decode_group(encode_pending("a1b2c3", 1, 2), "a1b2c3") is None
    for other in (
        "",
        None,
        "clickstream-sink/2 a1b2c3 0:100-199",  # a group of one is written as a plain range
        "clickstream-sink/2 a1b2c3 0:100-199,0:200-299",  # one partition twice
        "clickstream-sink/2 a1b2c3 0:100-199,1:9-8",
        "clickstream-sink/2 a1b2c3 0:100-199,x:1-2",
        "clickstream-sink/2 a1b2c3 0:100-199,1-2",
    ):
        assert decode_group(other, "a1b2c3") is None, other


def test_group_token_names_exactly_one_set_of_ranges() -> None:
    members = [Member(0, 100, 199), Member(3, 7, 7)]
    ids = {"database": "clickstream", "group": "clickstream-sink"}
    token = group_token("clicks", "e1", members, **ids)
    # the order they were read in is no matter
    assert token == group_token("clicks", "e1", list(reversed(members)), **ids)
    assert token.startswith("clicks@e1:group:2:") and token.endswith("/clickstream/clickstream-sink")
    others = {
        group_token("clicks", "e2", members, **ids),
        group_token("views", "e1", members, **ids),
        group_token("clicks", "e1", [Member(0, 100, 199), Member(3, 7, 8)], **ids),
        group_token("clicks", "e1", [*members, Member(4, 0, 0)], **ids),
        group_token("clicks", "e1", members, database="clickstream", group="replay"),
        group_token("clicks", "e1", members, database="other", group="clickstream-sink"),
        batch_token("clicks", "e1", 0, 100, 199, **ids),
    }
    assert token not in others and len(others) == 7


def test_backoff_doubles_and_is_capped() -> None:
    assert [backoff_s(a, 0.25, 5.0) for a in range(1, 9)] == [0.25, 0.5, 1.0, 2.0, 4.0, 5.0, 5.0, 5.0]


def _build(records: list[tuple[int, int, bytes | None]]) -> _Batch:
    b = _Batch("clicks", "e1", 2, started=0.0, database="clickstream", group="g")
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
    w = _Window()
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
    w = _Window()
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
    with pytest.raises(AttributeError):
        s.rows_inserted = 6  # type: ignore[misc]


def test_crc32c_extension_is_active() -> None:
    assert crc32c_accelerated()


def test_sink_rejects_nonsense_limits() -> None:
    settings = Settings()
    with pytest.raises(ValueError, match="batch_max_rows"):
        Sink(settings, batch_max_rows=0)
    with pytest.raises(ValueError, match="batch_max_wait_s"):
        Sink(settings, batch_max_wait_s=0)
    with pytest.raises(ValueError, match="batch_max_bytes"):
        Sink(settings, batch_max_bytes=0)
    assert consumer.DEFAULT_BATCH_MAX_ROWS >= 10_000 or consumer.DEFAULT_BATCH_MAX_WAIT_S <= 1.0


# --- runs of records, and the insert thread ---------------------------------------------------------------------


def _records(first: int, n: int, gap_at: int | None = None) -> list[_Record]:
    out = []
    offset = first
    for i in range(n):
        if gap_at is not None and offset == gap_at:
            offset += 5  # e.g. compacted away, or transaction markers
        value = _event(T0 - 1_000 - i) if i % 7 else b"{broken"
        out.append(_Record(offset, T0, b"k", value))
        offset += 1
    return out


# What a sink built from Settings() names in its tokens: the database and the consumer group.
_IDS = {"database": "clickstream", "group": "clickstream-sink"}
_SUFFIX = "/clickstream/clickstream-sink"


def _sink(batch_max_rows: int) -> Sink:
    sink = Sink(Settings(), batch_max_rows=batch_max_rows)
    sink.epoch = "e1"
    return sink


def _ranges(state: _PartitionState) -> list[tuple[int, int, int]]:
    batches = [*state.sealed, *([state.open] if state.open is not None else [])]
    return [(b.first, b.last, len(b)) for b in batches]


def test_runs_of_records_cut_batches_where_one_by_one_would() -> None:
    records = _records(100, 23, gap_at=110)
    one, runs = _sink(5), _sink(5)
    s1 = _PartitionState(TopicPartition(one.topic, 2), 100, None)
    s2 = _PartitionState(TopicPartition(runs.topic, 2), 100, None)
    for r in records:  # the per-record rule: seal whenever a batch reaches batch_max_rows
        assert one._take(s1, [r], 0.0) == 1
    assert runs._take(s2, records[:3], 0.0) == 3
    assert runs._take(s2, records[:9], 0.0) == 6  # a re-fetch after a seek: the first 3 are not taken twice
    assert runs._take(s2, records[9:], 0.0) == 14
    assert _ranges(s1) == _ranges(s2) == [(100, 104, 5), (105, 109, 5), (115, 119, 5), (120, 124, 5), (125, 127, 3)]
    for a, b in zip([*s1.sealed, s1.open], [*s2.sealed, s2.open], strict=True):
        assert a is not None and b is not None
        assert (a.token, a.event_columns(), a.dead_columns()) == (b.token, b.event_columns(), b.dead_columns())


def test_a_limit_caps_runs_but_a_recorded_range_is_rebuilt_whole() -> None:
    sink = _sink(100)
    state = _PartitionState(TopicPartition(sink.topic, 2), 100, None)
    assert sink._take(state, _records(100, 20), 0.0, limit=7) == 7
    assert _ranges(state) == [(100, 106, 7)] and state.next_offset == 107
    # A recorded range 100-111 that ends in a gap (112-116 are missing): rebuilt whole despite the limit, sealed
    # at the gap, and what follows starts a new batch.
    sink = _sink(100)
    state = _PartitionState(TopicPartition(sink.topic, 2), 100, (100, 114))
    assert sink._take(state, _records(100, 20, gap_at=112), 0.0, limit=3) == 12
    assert _ranges(state) == [(100, 111, 12)] and state.replay is None
    assert sink._take(state, _records(100, 20, gap_at=112)[12:], 0.0, limit=5) == 5
    assert _ranges(state) == [(100, 111, 12), (117, 121, 5)]


class _FakeConsumer:
    def __init__(self, log: list[str]) -> None:
        self.log = log
        self.highwaters: dict[int, int] = {}

    def commit(self, offsets: dict[TopicPartition, OffsetAndMetadata], timeout_ms: int) -> None:
        for tp, om in sorted(offsets.items()):
            self.log.append(f"commit p{tp.partition} {om.offset} {om.metadata!r}")

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
        columns: list[list[object]],
        names: tuple[str, ...],
        dedup_token: str,
        column_types: tuple[str, ...] | None = None,
    ) -> int:
        self.release.wait(10)
        if self.fail:
            raise RuntimeError("engine down")
        self.log.append(f"insert {table} {dedup_token} {len(columns[0])} rows on {threading.current_thread().name}")
        return len(columns[0])


def _delivering_sink(log: list[str]) -> tuple[Sink, _FakeStore, _PartitionState]:
    sink = _sink(5)
    fake_store = _FakeStore(log)
    sink._store = fake_store  # type: ignore[assignment]
    sink._consumer = _FakeConsumer(log)  # type: ignore[assignment]
    sink._producer = object()  # type: ignore[assignment]  # no dead letters in these batches: never used
    sink._inserter = ThreadPoolExecutor(max_workers=1, thread_name_prefix="inserter")
    state = _PartitionState(TopicPartition(sink.topic, 2), 100, None)
    sink._states[2] = state
    valid = [_Record(100 + i, T0, None, _event(T0 - 1_000)) for i in range(12)]
    sink._take(state, valid, 0.0)  # two sealed batches of 5 (100-104, 105-109) and 110-111 open
    return sink, fake_store, state


def test_the_insert_runs_on_its_own_thread_between_the_pre_and_post_commit() -> None:
    log: list[str] = []
    sink, fake_store, state = _delivering_sink(log)
    sink._start_round()
    assert log == [f"commit p2 100 '{encode_pending('e1', 100, 104)}'"]  # the range is recorded first
    assert sink._inflight is not None and sink._busy()
    time.sleep(0.05)
    assert len(log) == 1  # nothing is committed while the insert runs
    fake_store.release.set()
    assert sink._inflight[1].result(5) is None
    assert sink._finish_round()
    token = f"{sink.topic}@e1:2:100-104{_SUFFIX}"
    assert log[1] == f"insert events {token} 5 rows on inserter_0"
    assert log[2] == f"commit p2 105 '{encode_pending('e1', 105, 109)}'"  # post-commit names the next batch
    assert state.committed == 105 and len(state.sealed) == 1 and state.sealed[0].precommitted
    assert sink.stats().rows_inserted == 5
    sink._inserter.shutdown()


def test_a_failed_insert_commits_nothing_and_the_same_batch_is_retried() -> None:
    log: list[str] = []
    sink, fake_store, state = _delivering_sink(log)
    fake_store.fail = True
    fake_store.release.set()
    assert not sink._deliver_round()
    assert [line for line in log if line.startswith("commit")] == [f"commit p2 100 '{encode_pending('e1', 100, 104)}'"]
    assert sink.stats().last_error is not None and "engine down" in sink.stats().last_error
    fake_store.fail = False
    batch = state.sealed[0]
    assert sink._deliver_round()
    assert state.sealed[0] is not batch and state.committed == 105
    assert log[-2].startswith(f"insert events {sink.topic}@e1:2:100-104{_SUFFIX} 5 rows")  # same range, same token
    sink._inserter.shutdown()


def test_a_rebalance_during_an_insert_leaves_the_round_uncommitted() -> None:
    log: list[str] = []
    sink, fake_store, _state = _delivering_sink(log)
    sink._start_round()
    assert sink._inflight is not None
    future = sink._inflight[1]
    sink._queue_rebalance("revoked", {TopicPartition(sink.topic, 2)})
    assert sink._apply_rebalances()  # applied at once, while the insert still runs
    assert sink._inflight is None and not sink._states and not future.done()
    fake_store.release.set()
    future.result(5)
    assert sink._inserter is not None
    sink._inserter.shutdown(wait=True)
    assert [line for line in log if line.startswith("commit")] == [f"commit p2 100 '{encode_pending('e1', 100, 104)}'"]
    assert sink.stats().rows_inserted == 0  # the next owner rebuilds 100-104; ClickHouse drops the repeat


class _Drained:
    """A kafka-python PartitionRecords that was read to the end: falsy, yet not None."""

    def __bool__(self) -> bool:
        return False


class _FakeFetcher:
    def __init__(self, parked: dict[TopicPartition, object], current: object) -> None:
        self._paused_partition_records = parked
        self._next_partition_records = current


class _PausingConsumer:
    def __init__(self, fetcher: _FakeFetcher, paused: set[TopicPartition]) -> None:
        self._fetcher = fetcher
        self._paused = paused

    def paused(self) -> set[TopicPartition]:
        return self._paused


def test_parked_records_of_a_resumed_partition_are_handed_back() -> None:
    tp = TopicPartition("clicks", 0)
    drained = _Drained()
    # Resumed, parked, and the in-line slot drained: emptied, so the next poll restores the parked records.
    fetcher = _FakeFetcher({tp: object()}, drained)
    assert consumer.unpark_resumed_records(_PausingConsumer(fetcher, set()))  # type: ignore[arg-type]
    assert fetcher._next_partition_records is None
    # Still paused, nothing parked, or the slot still has records to return: left alone.
    for fetcher, paused in (
        (_FakeFetcher({tp: object()}, drained), {tp}),
        (_FakeFetcher({}, drained), set()),
        (_FakeFetcher({tp: object()}, "records"), set()),
    ):
        before = fetcher._next_partition_records
        assert not consumer.unpark_resumed_records(_PausingConsumer(fetcher, paused))  # type: ignore[arg-type]
        assert fetcher._next_partition_records is before


def test_backpressure_waits_for_the_insert_instead_of_pausing() -> None:
    log: list[str] = []
    sink, fake_store, state = _delivering_sink(log)
    assert len(state.sealed) == 2 and sink._store_behind()
    sink._start_round()
    fake_store.release.set()
    assert sink._finish_round()
    assert not sink._store_behind() and "pause" not in log
    sink._inserter.shutdown()


def test_reading_on_during_an_insert_only_while_a_batch_waits_in_kafka() -> None:
    log: list[str] = []
    sink, fake_store, state = _delivering_sink(log)
    assert state.next_offset == 112
    assert not sink._kafka_behind()  # nothing known in Kafka: caught up
    sink._consumer.highwaters = {2: 112 + 4}  # type: ignore[union-attr]
    assert not sink._kafka_behind()
    sink._consumer.highwaters = {2: 112 + 5}  # type: ignore[union-attr]  # a full batch (batch_max_rows=5) waits
    assert sink._kafka_behind()
    fake_store.release.set()
    assert sink._inserter is not None
    sink._inserter.shutdown()


def test_gc_threshold_is_raised_while_sinks_run_and_restored_after_the_last() -> None:
    before = gc.get_threshold()
    try:
        gc.set_threshold(700, 10, 10)
        with consumer._relaxed_gc():
            assert gc.get_threshold() == (consumer.GC_YOUNG_THRESHOLD, 10, 10)
            with consumer._relaxed_gc():  # a second sink in the process
                pass
            assert gc.get_threshold() == (consumer.GC_YOUNG_THRESHOLD, 10, 10)  # the first one still runs
        assert gc.get_threshold() == (700, 10, 10)
        with consumer._relaxed_gc():
            gc.set_threshold(1_000, 5, 5)  # changed by someone else meanwhile: theirs stays
        assert gc.get_threshold() == (1_000, 5, 5)
        gc.set_threshold(100_000, 10, 10)
        with consumer._relaxed_gc():  # already higher: left alone
            assert gc.get_threshold() == (100_000, 10, 10)
        assert gc.get_threshold() == (100_000, 10, 10)
    finally:
        gc.set_threshold(*before)


# --- group inserts ------------------------------------------------------------------------------------------------


def _grouping_sink(log: list[str], partitions: tuple[int, ...] = (0, 1, 2)) -> tuple[Sink, _FakeStore]:
    sink = _sink(5)
    fake_store = _FakeStore(log)
    sink._store = fake_store  # type: ignore[assignment]
    sink._consumer = _FakeConsumer(log)  # type: ignore[assignment]
    sink._producer = object()  # type: ignore[assignment]
    sink._inserter = ThreadPoolExecutor(max_workers=1, thread_name_prefix="inserter")
    for p in partitions:
        state = sink._states[p] = _PartitionState(TopicPartition(sink.topic, p), 10 * p, None)
        sink._take(state, [_Record(10 * p + i, T0, None, _event(T0 - 1_000)) for i in range(3)], 0.0)
    return sink, fake_store


def test_a_round_takes_every_partition_into_one_insert() -> None:
    log: list[str] = []
    sink, fake_store = _grouping_sink(log)
    fake_store.release.set()
    sink._states[1].open = None  # nothing read from partition 1 yet
    sink._states[1].next_offset = 10
    assert sink._deliver_round()
    members = [Member(0, 0, 2), Member(2, 20, 22)]
    meta = encode_group("e1", members)
    token = group_token(sink.topic, "e1", members, **_IDS)
    # The open batches were sealed to join the round; both partitions record the whole group before the insert.
    assert log == [
        f"commit p0 0 {meta!r}",
        f"commit p2 20 {meta!r}",
        f"insert events {token} 6 rows on inserter_0",
        "commit p0 3 ''",
        "commit p2 23 ''",
    ]
    assert sink.stats().rows_inserted == 6 and sink.stats().batches == 2
    assert sink._round is None and not sink._busy()
    sink._inserter.shutdown()


def test_a_failed_group_insert_is_retried_with_exactly_the_same_batches() -> None:
    log: list[str] = []
    sink, fake_store = _grouping_sink(log, (0, 1))
    fake_store.fail = True
    fake_store.release.set()
    assert not sink._deliver_round()
    # Meanwhile partition 2 gets records: they wait for the next round, the retried one keeps its two batches.
    state = sink._states[2] = _PartitionState(TopicPartition(sink.topic, 2), 20, None)
    sink._take(state, [_Record(20, T0, None, _event(T0 - 1_000))], 0.0)
    fake_store.fail = False
    assert sink._deliver_round()
    token = group_token(sink.topic, "e1", [Member(0, 0, 2), Member(1, 10, 12)], **_IDS)
    inserts = [line for line in log if line.startswith("insert")]
    assert inserts == [f"insert events {token} 6 rows on inserter_0"]
    assert [line for line in log if line.startswith("commit")].count(
        f"commit p0 0 {encode_group('e1', [Member(0, 0, 2), Member(1, 10, 12)])!r}"
    ) == 1
    assert state.open is not None and not state.sealed  # not taken into the retried round
    assert sink._deliver_round()
    assert (
        log[-2] == f"insert events {sink.topic}@e1:2:20-20{_SUFFIX} 1 rows on inserter_0"
    )  # a round of one: its own token
    sink._inserter.shutdown()


def test_group_max_batches_one_inserts_each_batch_alone() -> None:
    log: list[str] = []
    sink, fake_store = _grouping_sink(log, (0, 1))
    sink.group_max_batches = 1
    fake_store.release.set()
    sink._seal_due(0.0, force=True)
    assert sink._deliver_round()  # one round, an insert per batch (each recorded under its own range)
    assert [line for line in log if line.startswith("commit")][:2] == [
        f"commit p0 0 {encode_pending('e1', 0, 2)!r}",
        f"commit p1 10 {encode_pending('e1', 10, 12)!r}",
    ]
    assert [line.split(" on ")[0] for line in log if line.startswith("insert")] == [
        f"insert events {sink.topic}@e1:0:0-2{_SUFFIX} 3 rows",
        f"insert events {sink.topic}@e1:1:10-12{_SUFFIX} 3 rows",
    ]
    with pytest.raises(ValueError, match="group_max_batches"):
        Sink(Settings(), group_max_batches=0)
    sink._inserter.shutdown()


class _CommittedConsumer(_FakeConsumer):
    """A consumer whose group has these committed offsets and metadata."""

    def __init__(self, log: list[str], committed: dict[int, OffsetAndMetadata]) -> None:
        super().__init__(log)
        self.offsets = committed

    def committed(self, tp: TopicPartition, metadata: bool, timeout_ms: int) -> OffsetAndMetadata | None:
        return self.offsets.get(tp.partition)


def test_a_group_whose_record_did_not_reach_every_partition_was_never_inserted() -> None:
    log: list[str] = []
    sink = _sink(5)
    members = (Member(0, 0, 2), Member(1, 10, 12))
    meta = encode_group("e1", members)
    # Partition 1 still holds its previous (single) record: the group's pre-commit never completed.
    offsets = {0: OffsetAndMetadata(0, meta, -1), 1: OffsetAndMetadata(10, encode_pending("e1", 10, 14), -1)}
    sink._consumer = _CommittedConsumer(log, offsets)  # type: ignore[assignment]
    assert sink._resolve_group(members, [0], {0: offsets[0]}) == {0: 0}
    assert log == ["commit p0 0 ''"]  # the record is cleared, so it cannot be taken for a stored group later


def test_a_rebuilt_recorded_batch_is_inserted_alone_under_its_own_token() -> None:
    log: list[str] = []
    sink, fake_store = _grouping_sink(log, (0, 2))
    fake_store.release.set()
    # Partition 1 resumes with a recorded range 10-12 (perhaps stored before a crash, under its own token).
    state = sink._states[1] = _PartitionState(TopicPartition(sink.topic, 1), 10, (10, 12))
    sink._take(state, [_Record(10 + i, T0, None, _event(T0 - 1_000)) for i in range(3)], 0.0)
    assert state.sealed and state.sealed[0].replayed
    assert sink._deliver_round()
    assert [line.split(" on ")[0] for line in log if line.startswith("insert")] == [
        f"insert events {sink.topic}@e1:1:10-12{_SUFFIX} 3 rows"
    ]
    assert sink._deliver_round()  # then the others, together
    token = group_token(sink.topic, "e1", [Member(0, 0, 2), Member(2, 20, 22)], **_IDS)
    assert log[-3].startswith(f"insert events {token} 6 rows")
    assert sink._inserter is not None
    sink._inserter.shutdown()


# --- bounded in bytes -------------------------------------------------------------------------------------------


def test_a_batch_closes_at_the_record_that_reaches_batch_max_bytes() -> None:
    sink = Sink(Settings(), batch_max_rows=100, batch_max_bytes=1_000)
    sink.epoch = "e1"
    state = _PartitionState(TopicPartition(sink.topic, 2), 100, None)
    records = [_Record(100 + i, T0, None, b"x" * (300 if i % 2 else 100)) for i in range(12)]  # 100, 300, 100...
    assert sink._take(state, records[:5], 0.0) == 5
    assert sink._take(state, records[5:], 0.0) == 7
    # 100+300+100+300+100+300 = 1200 >= 1000 at the 6th record; the next batch likewise.
    assert _ranges(state) == [(100, 105, 6), (106, 111, 6)]
    assert [b.nbytes for b in state.sealed] == [1_200, 1_200]
    # A recorded range is rebuilt exactly, whatever its bytes: replay reads its end from the commit metadata.
    replay = _PartitionState(TopicPartition(sink.topic, 2), 100, (100, 109))
    assert sink._take(replay, records, 0.0) == 12
    assert _ranges(replay) == [(100, 109, 10), (110, 111, 2)]


def test_a_round_holds_at_most_batch_max_bytes_of_values() -> None:
    sink = Sink(Settings(), batch_max_rows=100, batch_max_bytes=1_000)
    sink.epoch = "e1"
    for p in range(4):
        state = sink._states[p] = _PartitionState(TopicPartition(sink.topic, p), 0, None)
        sink._take(state, [_Record(i, T0, None, b"x" * 200) for i in range(2)], 0.0)  # 400 bytes, open
    assert [b.partition for b in sink._compose_round()] == [0, 1]  # 800; a third would make 1200
    sink._round = None


def test_polls_shrink_for_large_values_and_grow_back_once_they_are_forgotten() -> None:
    sink = Sink(Settings(), batch_max_rows=20_000, batch_max_bytes=64 * 1024 * 1024)
    tp = TopicPartition(sink.topic, 0)
    small = {tp: [_Record(0, T0, None, b"{}" * 200)]}
    assert sink._poll_records() == 16  # the first poll knows no value yet
    sink._note_large_values(small, time.monotonic())
    assert sink._poll_records() == 20_000  # ordinary events: at once
    sink._note_large_values({tp: [_Record(1, T0, None, b"x" * 5_000_000)]}, time.monotonic())
    assert sink._poll_records() == 13  # 64 MiB / 5 MB
    sink._note_large_values(small, time.monotonic())
    assert sink._poll_records() == 13  # a 5 MB value was seen lately
    sink._large_value = (5_000_000, time.monotonic() - consumer._LARGE_VALUE_MEMORY_S - 1)
    caps = []
    for _ in range(12):
        sink._note_large_values(small, time.monotonic())
        caps.append(sink._poll_records())
    assert caps == [20_000] * 12  # forgotten: ordinary values again
    large = Sink(Settings(), batch_max_rows=20_000, batch_max_bytes=64 * 1024 * 1024)
    caps = []
    for _ in range(4):  # a backlog of 1 MB values at start: 16, then doubling up to 64 MiB / 1 MB
        caps.append(large._poll_records())
        large._note_large_values({tp: [_Record(1, T0, None, b"x" * 1_000_000)]}, time.monotonic())
    assert caps == [16, 32, 64, 67]


def test_records_a_revocation_drops_no_longer_count_towards_max_events() -> None:
    """run(max_events=n) stores exactly n: records of batches a rebalance dropped uncommitted are read again."""
    sink = _sink(5)
    log: list[str] = []
    sink._consumer = _FakeConsumer(log)  # type: ignore[assignment]
    kept = sink._states[1] = _PartitionState(TopicPartition(sink.topic, 1), 100, None)
    gone = sink._states[2] = _PartitionState(TopicPartition(sink.topic, 2), 100, None)
    assert sink._take(kept, _records(100, 3), 0.0) == 3
    assert sink._take(gone, _records(100, 7), 0.0) == 7  # a sealed batch of 5 and an open one of 2
    sink._queue_rebalance("revoked", {gone.tp})
    assert sink._apply_rebalances()
    assert sink._dropped_records() == 7 and sink._dropped_records() == 0
    assert list(sink._states) == [1]


class _PollingConsumer(_FakeConsumer):
    """Returns the given polls in turn, then nothing."""

    def __init__(self, log: list[str], polls: list[dict[TopicPartition, list[_Record]]]) -> None:
        super().__init__(log)
        self.polls = polls

    def poll(self, timeout_ms: int, max_records: int) -> dict[TopicPartition, list[_Record]]:
        return self.polls.pop(0) if self.polls else {}


def test_a_stop_finishes_the_recorded_ranges_being_rebuilt() -> None:
    """A range re-read after a rebalance is rebuilt before the stop seals: what the store holds gets committed."""
    sink = _sink(100)
    tp1, tp2 = TopicPartition(sink.topic, 1), TopicPartition(sink.topic, 2)
    replaying = sink._states[1] = _PartitionState(tp1, 100, (100, 111))
    other = sink._states[2] = _PartitionState(tp2, 50, None)
    records = _records(100, 20)
    polls = [{tp1: records[:5], tp2: _records(50, 3)}, {tp1: records[5:]}]
    sink._consumer = _PollingConsumer([], polls)  # type: ignore[assignment]
    sink._finish_replays(time.monotonic() + 5)
    assert replaying.replay is None and _ranges(replaying) == [(100, 111, 12)]  # only the range's records
    assert replaying.sealed[0].replayed
    assert _ranges(other) == []  # read again by the next run
    sink._consumer = _PollingConsumer([], [])  # type: ignore[assignment]
    sink._states[1] = _PartitionState(tp1, 100, (100, 111))
    sink._finish_replays(time.monotonic() + 0.3)  # gives up at the deadline: the next run rebuilds it
    assert sink._states[1].replay == (100, 111)


class _MetadataLimitConsumer(_FakeConsumer):
    """Refuses an offset commit whose metadata is over ``limit`` bytes, as a broker's offset.metadata.max.bytes."""

    limit = 32

    def commit(self, offsets: dict[TopicPartition, OffsetAndMetadata], timeout_ms: int) -> None:
        from kafka.errors import OffsetMetadataTooLargeError

        if any(len(om.metadata) > self.limit for om in offsets.values()):
            self.log.append("refused")
            raise OffsetMetadataTooLargeError()
        super().commit(offsets, timeout_ms)


def test_a_refused_group_pre_commit_falls_back_to_smaller_groups() -> None:
    log: list[str] = []
    sink, fake_store = _grouping_sink(log, partitions=(0, 1, 2, 3))
    sink._consumer = _MetadataLimitConsumer(log)  # type: ignore[assignment]
    fake_store.release.set()
    while any(s.open is not None or s.sealed for s in sink._states.values()):
        sink._deliver_round()
    # 4 -> 2 -> 1 batches per insert: each batch then inserted alone under its own token (its record: 27 bytes).
    assert sink.group_max_batches == 1
    assert log.count("refused") == 2
    ids = {"database": sink.database, "group": sink.settings.kafka_group_id}
    assert sorted(line for line in log if line.startswith("insert")) == [
        f"insert events {batch_token(sink.topic, 'e1', p, 10 * p, 10 * p + 2, **ids)} 3 rows on inserter_0"
        for p in range(4)
    ]
    assert sink.stats().rows_inserted == 12
    sink._inserter.shutdown()  # type: ignore[union-attr]


def test_a_refused_single_batch_pre_commit_stops_the_sink() -> None:
    log: list[str] = []
    sink, fake_store = _grouping_sink(log, partitions=(0,))
    sink._consumer = _MetadataLimitConsumer(log)  # type: ignore[assignment]
    sink._consumer.limit = 10  # type: ignore[attr-defined]
    fake_store.release.set()
    with pytest.raises(SinkError, match=r"offset\.metadata\.max\.bytes"):
        sink._deliver_round()
    sink._inserter.shutdown()  # type: ignore[union-attr]


def test_large_values_are_collected_every_batch_max_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    collected: list[int] = []
    monkeypatch.setattr(consumer.gc, "collect", lambda generation=2: collected.append(generation) or 0)
    sink = Sink(Settings(), batch_max_rows=20_000, batch_max_bytes=16 * 1024 * 1024)
    tp = TopicPartition(sink.topic, 0)
    for i in range(200):  # ordinary events: the raised GC threshold is left alone
        sink._note_large_values({tp: [_Record(i, T0, None, b"{}" * 200)] * 100}, time.monotonic())
    assert collected == []
    for i in range(8):  # 8 x 5 MB: a collection each time 16 MiB of them went by (after the 4th and the 8th)
        sink._note_large_values({tp: [_Record(i, T0, None, b"x" * 5_000_000)]}, time.monotonic())
    assert collected == [1, 1]
