"""The producer's bulk path (whole chunks into kafka-python's accumulator) against the real broker.

What it writes must be what kafka-python's own send() writes: read back with a plain KafkaConsumer, compared with a
per-message run of the same messages; idempotence must hold across many batches; failures count per record.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections import defaultdict
from pathlib import Path
from types import SimpleNamespace

import pytest
from kafka import KafkaConsumer, TopicPartition
from kafka.partitioner.default import DefaultPartitioner

from clickstream_lib.generator import Generator
from clickstream_lib.producer import Producer
from clickstream_lib.settings import Settings
from clickstream_lib.stack import KafkaStack, free_port
from clickstream_lib.topics import admin, client_config, end_offsets
from tests.helpers import wait_until


class Replay:
    """A stand-in for the Generator that hands out fixed messages in order (so two runs send the same bytes)."""

    def __init__(self, keys: list[bytes], values: list[bytes]) -> None:
        self.keys, self.values, self.pos = keys, values, 0

    def batch(self, k: int) -> SimpleNamespace:
        keys, values = self.keys[self.pos : self.pos + k], self.values[self.pos : self.pos + k]
        self.pos += k
        return SimpleNamespace(keys_values=lambda: (keys, values))


def _records(settings: Settings, topic: str) -> dict[int, list[tuple[bytes | None, bytes, int]]]:
    """partition -> [(key, value, timestamp)] in offset order, read back with a plain KafkaConsumer."""
    ends = end_offsets(settings, topic)
    consumer = KafkaConsumer(
        **client_config(
            settings, enable_auto_commit=False, consumer_timeout_ms=10_000, max_partition_fetch_bytes=4 << 20
        )
    )
    out: dict[int, list[tuple[bytes | None, bytes, int]]] = defaultdict(list)
    try:
        tps = [TopicPartition(topic, p) for p in ends]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        for n, record in enumerate(consumer, 1):
            assert record.offset == len(out[record.partition])  # no gaps: every record once, in order
            out[record.partition].append((record.key, record.value, record.timestamp))
            if n >= sum(ends.values()):
                break
    finally:
        consumer.close()
    return dict(out)


def test_the_bulk_path_is_active_with_the_installed_kafka_python(settings: Settings) -> None:
    """If a kafka-python upgrade changes the internals the bulk path relies on, this fails (instead of the producer
    silently falling back to the slower send())."""
    with Producer(settings, rate=None, seed=1) as producer:
        assert producer.bulk_send
        stats = producer.run(events=3_000)
    assert (stats.sent, stats.acked, stats.failed) == (3_000, 3_000, 0)
    assert sum(end_offsets(settings, settings.kafka_topic).values()) == 3_000


def test_bulk_writes_what_send_writes(settings: Settings) -> None:
    """Same messages both ways: same partition per key, same keys and values in the same order per partition, lz4
    batches the broker accepted (it checks the CRC and record format); bulk timestamps are the chunk's."""
    keys, values = Generator(seed=11).batch(12_000).keys_values()
    # Records too large for a 128 KiB batch go through send() even on the bulk path, in their place; one over
    # max_request_size (1 MiB) is refused by send() itself.
    for pos, size in ((5, 150_000), (4_321, 300_000), (9_999, 1_100_000)):
        keys.insert(pos, keys[pos])
        values.insert(pos, os.urandom(size // 2).hex().encode())
    runs = {}
    for bulk in (True, False):
        s = settings.replace(kafka_topic=f"{settings.kafka_topic}_{'bulk' if bulk else 'send'}")
        with Producer(s, rate=None, generator=Replay(keys, values), batch_size=1_000, bulk=bulk) as producer:  # type: ignore[arg-type]
            assert producer.bulk_send is bulk
            t0 = int(time.time() * 1000)
            stats = producer.run(events=len(keys))
            if bulk:
                span = (t0, int(time.time() * 1000))
        assert (stats.sent, stats.acked, stats.failed) == (12_003, 12_002, 1), stats.summary()
        assert stats.errors == {"MessageSizeTooLargeError": 1}
        runs[bulk] = _records(s, s.kafka_topic)
    bulk_run, send_run = runs[True], runs[False]
    assert sum(map(len, bulk_run.values())) == 12_002
    assert {p: [(k, v) for k, v, _ in recs] for p, recs in bulk_run.items()} == {
        p: [(k, v) for k, v, _ in recs] for p, recs in send_run.items()
    }
    assert len(bulk_run) == settings.kafka_partitions
    # Chunks of 1000 messages (batch_size=1000), each stamped with one time, in order.
    position = {v: i for i, v in enumerate(values)}
    stamp: dict[int, set[int]] = defaultdict(set)
    for recs in bulk_run.values():
        times = [ts for _, _, ts in recs]
        assert times == sorted(times)
        for _, value, ts in recs:
            stamp[position[value] // 1_000].add(ts)
    assert all(len(ts) == 1 for ts in stamp.values()), stamp
    chunk_times = [next(iter(stamp[c])) for c in sorted(stamp)]
    assert chunk_times == sorted(chunk_times) and span[0] <= chunk_times[0] and chunk_times[-1] <= span[1]


def test_idempotence_holds_across_many_batches_and_partitions(settings: Settings) -> None:
    """60 000 events on 6 partitions: about 150 batches, each given its producer id and sequence by kafka-python at
    drain. The broker took them all in sequence: its last sequence per partition is the partition's count - 1."""
    settings = settings.replace(kafka_partitions=6)
    with Producer(settings, rate=None, seed=4) as producer:
        assert producer.bulk_send
        stats = producer.run(events=60_000)
        producer_id = producer._kafka._transaction_manager.producer_id_and_epoch.producer_id
    assert (stats.sent, stats.acked, stats.failed) == (60_000, 60_000, 0) and not stats.errors
    ends = end_offsets(settings, settings.kafka_topic)
    assert sum(ends.values()) == 60_000 and len(ends) == 6
    assert producer_id >= 0
    with admin(settings) as client:
        state = client.describe_producers([TopicPartition(settings.kafka_topic, p) for p in ends])
    for tp, partition_state in state.items():
        (active,) = partition_state.active_producers
        assert active.producer_id == producer_id
        assert active.last_sequence == ends[tp.partition] - 1  # one sequence per record, none skipped or repeated


def test_a_custom_partitioner_falls_back_to_send_with_one_warning(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    class EveryoneOnZero(DefaultPartitioner):
        def partition(self, *args: object) -> int:
            return 0

    with (
        caplog.at_level(logging.WARNING, logger="clickstream_lib.producer"),
        Producer(settings, rate=None, seed=2, partitioner=EveryoneOnZero()) as producer,
    ):
        assert not producer.bulk_send
        stats = producer.run(events=2_000)
    assert stats.acked == 2_000
    warnings = [r.getMessage() for r in caplog.records if r.name == "clickstream_lib.producer"]
    assert warnings == ["sending message by message (kafka-python's send()): a custom partitioner is configured"]


@pytest.mark.timeout(300)
def test_a_broker_stopped_mid_run_counts_failures_once(
    tmp_path: Path, base_settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    """The broker stops while batches are in flight and queued. Those in flight expire after the delivery timeout
    and count as failed, KafkaTimeoutError, exactly as many as kafka-python expired; the queued ones wait (kafka-python
    3.0.12's idempotent sender waits for a new producer id before it sends or expires anything more) until close()
    fails them. Then sent = acked + failed, and the broker, started again, holds at least what was acked."""
    settings = base_settings.replace(
        kafka_broker_url=f"127.0.0.1:{free_port()}",
        kafka_controller_port=free_port(),
        data_dir=tmp_path,
        kafka_topic="stopped_mid_run",
        kafka_partitions=3,
    )
    stack = KafkaStack(settings)
    stack.up(timeout_s=120)
    try:
        producer = Producer(settings, rate=5_000, seed=9, delivery_timeout_ms=8_000, request_timeout_ms=3_000)
        producer.flush_timeout_s = 12  # past the delivery timeout
        with caplog.at_level(logging.WARNING, logger="kafka.producer.producer_batch"):
            try:
                assert producer.bulk_send
                producer.start()
                wait_until(lambda: producer.stats().acked >= 5_000)
                stack.down()
                time.sleep(3)  # producing into the void
                stopped = producer.stop(timeout=60)
            finally:
                producer.close(timeout=2)
        final = producer.stats()
        expired = sum(int(n) for n in re.findall(r"Expiring (\d+) record", caplog.text))
        assert not stopped.running and stopped.acked >= 5_000 and stopped.in_flight > 0, stopped.summary()
        assert stopped.errors == {"KafkaTimeoutError": expired} and expired > 0, (expired, stopped.summary())
        assert final.in_flight == 0 and final.acked == stopped.acked, final.summary()
        assert final.errors == {"KafkaTimeoutError": expired, "IllegalStateError": stopped.in_flight}
        stack.up(timeout_s=120)
        kept = sum(end_offsets(settings, settings.kafka_topic).values())
        # Acknowledged means written. A batch that expired on our side may still have been written before the
        # broker stopped (at least once allows that), but never more than was sent.
        assert final.acked <= kept <= final.sent, (kept, final.summary())
    finally:
        stack.down()
