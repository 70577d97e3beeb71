"""The sink decodes fetched records with kafka_compat.record_decoder and stores exactly what was produced.

The reference is a plain kafka-python consumer (kafka-python's own decoder) reading the same topic: every record it
sees must be in the store with the same partition, offset, Kafka timestamp and payload — as a row or a dead letter.
"""

from __future__ import annotations

import random
import time
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from clickstream_lib import topics
from clickstream_lib.kafka_compat import record_decoder
from clickstream_lib.kafka_compat.record_decoder import FastPartitionRecords
from clickstream_lib.producer import Producer
from clickstream_lib.settings import Settings
from clickstream_lib.sink import Sink
from clickstream_lib.store import Store

pytestmark = pytest.mark.integration


def _read_all(settings: Settings) -> list[Any]:
    """Every record of the topic, decoded by kafka-python's own decoder."""
    consumer = KafkaConsumer(**topics.client_config(settings), enable_auto_commit=False)
    assert consumer._fetcher.PartitionRecords is not FastPartitionRecords
    try:
        partitions = sorted(consumer.partitions_for_topic(settings.kafka_topic))
        tps = [TopicPartition(settings.kafka_topic, p) for p in partitions]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        ends = consumer.end_offsets(tps)
        out: list[Any] = []
        deadline = time.monotonic() + 60
        while any(consumer.position(tp) < ends[tp] for tp in tps):
            assert time.monotonic() < deadline, "reading the topic back timed out"
            for recs in consumer.poll(timeout_ms=1_000).values():
                out.extend(recs)
        return out
    finally:
        consumer.close(autocommit=False)


def test_the_sink_stores_what_kafka_pythons_decoder_reads(
    settings: Settings, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    unpacked: list[TopicPartition] = []
    fast_unpack = FastPartitionRecords._unpack_records

    def counting(self: Any, tp: TopicPartition, *args: Any) -> Any:
        unpacked.append(tp)
        return fast_unpack(self, tp, *args)

    monkeypatch.setattr(FastPartitionRecords, "_unpack_records", counting)
    topics.ensure_topic(settings, settings.kafka_topic)
    # The project's producer (lz4, 128 KiB batches, user keys) ...
    produced = Producer(settings, rate=None, seed=7).run(events=30_000)
    assert produced.acked == 30_000
    # ... and a plain one with gzip, headers, null keys, large values and invalid messages (dead letters).
    rng = random.Random(1)
    plain = KafkaProducer(**topics.client_config(settings), compression_type="gzip", linger_ms=5)
    for i in range(300):
        value = orjson.dumps(
            {
                "user_id": f"user_{i:04d}",
                "item_id": "item_0001",
                "interaction_type": "view",
                "timestamp": "2026-11-29 10:00:00",
                "page": "/" + "p" * rng.choice([0, 70, 9_000]),
            }
        )
        if i % 10 == 0:
            value = b"{not json " + rng.randbytes(rng.choice([5, 100, 10_000]))
        headers = [("trace", rng.randbytes(8)), ("ключ", b"")] if i % 3 == 0 else []
        plain.send(settings.kafka_topic, value, key=None if i % 2 else b"k%d" % i, headers=headers)
    plain.flush()
    plain.close()

    stats = Sink(settings, store).run(until_idle=2)

    assert unpacked, "the sink's consumer did not decode with FastPartitionRecords"
    reference = _read_all(settings)
    assert len(reference) == 30_300
    rows = store.query_rows(
        f"SELECT kafka_partition, kafka_offset, kafka_timestamp, toString(event_id), user_id, page "
        f"FROM {store.database}.events"
    )
    dead = store.query_rows(
        f"SELECT kafka_partition, kafka_offset, kafka_timestamp, hex(raw) FROM {store.database}.dead_letters"
    )
    assert (stats.rows_inserted, stats.dead_letters) == (len(rows), len(dead))
    assert len(rows) + len(dead) == len(reference)
    stored = {(p, o): (ts, rest) for p, o, ts, *rest in rows}
    stored_dead = {(p, o): (ts, bytes.fromhex(raw)) for p, o, ts, raw in dead}
    assert len(stored) + len(stored_dead) == len(reference)  # each record once: a row or a dead letter
    for r in reference:
        kafka_time = datetime.fromtimestamp(r.timestamp / 1000, tz=UTC).replace(tzinfo=None)
        if r.value.startswith(b"{not json") or (r.partition, r.offset) in stored_dead:  # also: page too long
            assert stored_dead[(r.partition, r.offset)] == (kafka_time, r.value)
        else:
            msg = orjson.loads(r.value)
            ts, (event_id, user_id, page) = stored[(r.partition, r.offset)]
            assert ts == kafka_time
            assert (user_id, page) == (msg["user_id"], msg.get("page", ""))
            if "event_id" in msg:
                assert event_id == msg["event_id"]
    assert len({row[3] for row in rows}) == len(rows)  # no duplicate event ids


def test_the_installed_kafka_python_gets_the_fast_decoder(settings: Settings) -> None:
    consumer = KafkaConsumer(**topics.client_config(settings))
    try:
        assert record_decoder.install(consumer) is True
        assert consumer._fetcher.PartitionRecords is FastPartitionRecords
        other = KafkaConsumer(**topics.client_config(settings))
        try:
            assert other._fetcher.PartitionRecords is not FastPartitionRecords  # only the instance it was given
        finally:
            other.close()
    finally:
        consumer.close()
