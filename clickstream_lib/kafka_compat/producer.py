"""The producer's uses of kafka-python internals: whole chunks of records appended to its ``RecordAccumulator`` (the
bulk path), and a ``flush()`` that survives a broker-forced batch split.

tests/unit/test_kafka_compat.py fails when a kafka-python release changes what these rely on; :func:`bulk_unsupported`
also checks it once per producer, and the producer falls back to ``send()`` when it differs.
"""

from __future__ import annotations

import itertools
import logging
import time
import weakref
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

from kafka import KafkaProducer, TopicPartition
from kafka.errors import IllegalStateError, KafkaError, KafkaTimeoutError
from kafka.partitioner.default import DefaultPartitioner
from kafka.partitioner.sticky import StickyPartitioner
from kafka.producer.producer_batch import ProducerBatch
from kafka.producer.record_accumulator import RecordAccumulator
from kafka.record.memory_records import MemoryRecordsBuilder
from kafka.record.util import encode_varint

logger = logging.getLogger(__name__)


def flush(kafka: KafkaProducer, timeout_s: float) -> bool:
    """Flush ``kafka``; True when every record handed to it is done (acknowledged or failed) within ``timeout_s``.

    kafka-python 3.0.12 raises ``UnknownError: Future not done`` from ``flush()`` (and ``close()``) when the broker
    made it split a batch that was too large (MESSAGE_TOO_LARGE): it waits on the old batch's future, which the
    split leaves pending. The new batches are on their way, so flushing again waits for them.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            kafka.flush(timeout=max(0.1, deadline - time.monotonic()))
            return True
        except KafkaTimeoutError:
            return False
        except KafkaError:  # a split batch's old future: flush again waits on the new batches
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)


# --- the bulk send path: whole chunks into kafka-python's RecordAccumulator --------------------------------------
#
# kafka-python's send() costs ~10 us of pure Python per record (a FutureRecordMetadata, two accumulator locks, size
# estimates, DefaultRecordBatchBuilder.append's varints) plus one future completed per record by the sender thread.
# For a chunk of events bound for one partition, BulkAppender writes the Kafka v2 records itself, straight into
# the builders of kafka-python's own ProducerBatches, and counts deliveries per batch. Everything after the
# accumulator stays kafka-python's: drain, producer id / epoch / base sequence (idempotence), compression, CRC,
# retries, delivery-timeout expiry and the MESSAGE_TOO_LARGE split. It relies on these internals of kafka-python
# 3.0.x, checked once per producer by bulk_unsupported (the producer falls back to send() when they differ):
#   RecordAccumulator._batches (TopicPartition -> deque of ProducerBatch), ._tp_lock(tp), ._incomplete,
#     ._appends_in_progress, ._closed, .config, .split_and_reenqueue(batch);
#   ProducerBatch(tp, records, now) with .records, .produce_future, ._record_futures, .record_count,
#     .max_record_size, .last_append;
#   MemoryRecordsBuilder ._builder, ._next_offset, ._closed; DefaultRecordBatchBuilder ._buffer (61 header bytes
#     + records), ._first_timestamp, ._max_timestamp, ._last_offset, ._num_records - the counters build() writes
#     into the batch header;
#   FutureProduceResult resolving to (base_offset, log_append_time, record_exceptions_fn), the last None on success.


def _zigzag_varint(value: int) -> bytes:
    """Kafka's variable-length signed integer (protobuf zig-zag) as bytes, written by kafka-python's own encoder."""
    out = bytearray()
    encode_varint(value, out.append)
    return bytes(out)


_VARINTS = [_zigzag_varint(i) for i in range(1 << 14)]  # lengths and offset deltas below 16384: a list lookup
_HEAD_SAME_MS = b"\x00\x00"  # attributes 0, timestamp delta 0
_NO_HEADERS = b"\x00"


def _encode(
    keys: Sequence[bytes],
    values: Sequence[bytes],
    start: int,
    stop: int,
    offset: int,
    head: bytes,
    size: int,
    limit: int,
) -> tuple[int, bytes, int]:
    """Kafka v2 records for ``keys/values[start:stop]`` (offset deltas from ``offset``; ``head`` = attributes and
    timestamp delta), as many as keep a batch of ``size`` bytes within ``limit``.

    Returns ``(end, data, largest)``: records ``start..end-1`` are in ``data``; ``largest`` is the biggest record's
    size with its length prefix. The same bytes DefaultRecordBatchBuilder.append writes (checked at startup).
    """
    varints = _VARINTS
    parts: list[bytes] = []
    add = parts.extend
    fixed = len(head) + 1  # head + the header count (0)
    largest = 0
    for i in range(start, stop):
        key = keys[i]
        value = values[i]
        key_len = len(key)
        value_len = len(value)
        try:
            off_v, key_v, value_v = varints[offset], varints[key_len], varints[value_len]
            body = fixed + len(off_v) + len(key_v) + key_len + len(value_v) + value_len
            body_v = varints[body]
        except IndexError:  # a long record or a huge batch: the general encoding
            off_v, key_v, value_v = _zigzag_varint(offset), _zigzag_varint(key_len), _zigzag_varint(value_len)
            body = fixed + len(off_v) + len(key_v) + key_len + len(value_v) + value_len
            body_v = _zigzag_varint(body)
        record = len(body_v) + body
        if size + record > limit:
            return i, b"".join(parts), largest
        add((body_v, head, off_v, key_v, key, value_v, value, _NO_HEADERS))
        size += record
        offset += 1
        if record > largest:
            largest = record
    return stop, b"".join(parts), largest


def _fill(
    records: Any, keys: Sequence[bytes], values: Sequence[bytes], start: int, stop: int, timestamp_ms: int, limit: int
) -> tuple[int, int]:
    """Append records ``start..`` to an open v2 ``MemoryRecordsBuilder`` while they fit in ``limit`` bytes, and set
    its counters as ``stop - start`` calls of its ``append`` would. Returns ``(end, largest record)``."""
    inner = records._builder
    first = inner._first_timestamp
    head = _HEAD_SAME_MS if first is None or first == timestamp_ms else b"\x00" + _zigzag_varint(timestamp_ms - first)
    base = records._next_offset
    end, data, largest = _encode(keys, values, start, stop, base, head, len(inner._buffer), limit)
    count = end - start
    if count:
        inner._buffer += data
        if first is None:
            inner._first_timestamp = inner._max_timestamp = timestamp_ms
        elif inner._max_timestamp < timestamp_ms:
            inner._max_timestamp = timestamp_ms
        inner._num_records += count
        inner._last_offset = base + count - 1
        records._next_offset = base + count
    return end, largest


class BulkAppender:
    """Appends chunks of keyed records for one partition to kafka-python's accumulator, and counts them per batch.

    ``sent(n)`` is called once ``n`` records are enqueued; ``done(partition, acked, errors)`` once per finished batch,
    with the error names of its failed records (both from the caller's and the sender's thread).
    """

    def __init__(
        self,
        kafka: KafkaProducer,
        topic: str,
        sent: Callable[[int], None],
        done: Callable[[int, int, Counter[str]], None],
    ) -> None:
        self._kafka = kafka
        self._acc = kafka._accumulator
        self._topic = topic
        self._sent = sent
        self._done = done
        self._limit: int = self._acc.config["batch_size"]
        self._compression: int = self._acc.config["compression_attrs"]
        self._tps: dict[int, TopicPartition] = {}
        self._counted: weakref.WeakSet[Any] = weakref.WeakSet()  # batches whose produce_future counts for us
        self._wrap_split()

    def wakeup(self) -> None:
        self._kafka._sender.wakeup()

    def append(
        self,
        partition: int,
        keys: Sequence[bytes],
        values: Sequence[bytes],
        timestamp_ms: int,
        oversized: Callable[[bytes, bytes, int, int], None],
    ) -> bool:
        """Enqueue ``keys``/``values`` (in order) for ``partition`` with one timestamp; True if the sender should wake.

        A record too large for an empty batch goes to ``oversized`` (kafka-python's send(), with its size checks and
        error names), after the records before it and before the ones after it: the partition's order holds.
        """
        tp = self._tps.get(partition)
        if tp is None:
            tp = self._tps[partition] = TopicPartition(self._topic, partition)
        i, stop, wake = 0, len(keys), False
        while i < stop:
            i, woke = self._append_locked(tp, keys, values, i, stop, timestamp_ms)
            wake = wake or woke
            if i < stop:  # send() takes the partition lock itself: called outside it
                oversized(keys[i], values[i], partition, timestamp_ms)
                i += 1
        return wake

    def _append_locked(
        self, tp: TopicPartition, keys: Sequence[bytes], values: Sequence[bytes], start: int, stop: int, ts: int
    ) -> tuple[int, bool]:
        """As RecordAccumulator.append, for many records: fill the partition's open batch, then new ones. Returns
        (the first record not enqueued: stop, or one too large for any batch; whether to wake the sender)."""
        acc, limit, now = self._acc, self._limit, time.monotonic()
        acc._appends_in_progress.increment()  # abort_incomplete_batches() waits for appends in progress
        try:
            with acc._tp_lock(tp):
                if acc._closed:
                    raise IllegalStateError("RecordAccumulator is closed")
                dq = acc._batches[tp]
                i, new = start, False
                if dq and not dq[-1].records._closed:  # the open batch is the partition's tail: fill it first
                    last = dq[-1]
                    i, largest = _fill(last.records, keys, values, i, stop, ts, limit)
                    if i > start:
                        last.max_record_size = max(last.max_record_size, largest)
                        last.last_append = now
                        self._count(last)
                while i < stop:
                    records = MemoryRecordsBuilder(2, self._compression, limit)
                    end, largest = _fill(records, keys, values, i, stop, ts, limit)
                    if end == i:  # too large even for an empty batch
                        break
                    batch = ProducerBatch(tp, records, now=now)
                    batch.max_record_size = largest
                    self._count(batch)
                    dq.append(batch)
                    acc._incomplete.add(batch)
                    i, new = end, True
                # Counted before the lock is released: the sender cannot finish a batch it has not drained.
                self._sent(i - start)
                return i, bool(dq) and (new or len(dq) > 1 or dq[-1].records.is_full())
        finally:
            acc._appends_in_progress.decrement()

    def _count(self, batch: Any) -> None:
        if batch not in self._counted:
            self._counted.add(batch)
            batch.produce_future.add_callback(self._batch_done, batch)
            batch.produce_future.add_errback(self._batch_failed, batch)

    def _batch_done(self, batch: Any, result: tuple[int, int, Callable[[int], BaseException] | None]) -> None:
        """A batch finished (sender thread): its records without a send() future are ours."""
        futures = batch._record_futures
        n = batch.record_count - len(futures)
        if n <= 0:
            return
        record_error = result[2]
        partition = batch.topic_partition.partition
        if record_error is None:
            self._done(partition, n, Counter())
            return
        theirs = {f.args[0] for f in futures}  # batch indices of records that send() added to this batch
        failed = Counter(type(record_error(j)).__name__ for j in range(batch.record_count) if j not in theirs)
        self._done(partition, 0, failed)

    def _batch_failed(self, batch: Any, exc: BaseException) -> None:
        n = batch.record_count - len(batch._record_futures)
        if n > 0:
            self._done(batch.topic_partition.partition, 0, Counter({type(exc).__name__: n}))

    def _wrap_split(self) -> None:
        """Count the halves of a batch kafka-python splits (MESSAGE_TOO_LARGE from the broker) like the batch.

        split_and_reenqueue moves the records into new batches at the partition's head and rebinds the send()
        futures; the old batch's future never completes. So the new batches, still at the head (only the sender
        thread, which calls this, takes batches off a deque), get the counting callback. A rebind also wakes a
        flush() waiting on the old batch (which then fails "Future not done" and :func:`flush` flushes again);
        with no send() futures nothing would, and flush() would wait for its whole timeout: wake it here.
        """
        acc = self._acc
        split = acc.split_and_reenqueue

        def split_and_reenqueue(batch: Any, now: float | None = None) -> int:
            made: int = split(batch, now=now)
            if batch in self._counted:
                with acc._tp_lock(batch.topic_partition):
                    halves = list(itertools.islice(acc._batches[batch.topic_partition], made))
                for half in halves:
                    self._count(half)
                batch.produce_future._latch.set()
            return made

        acc.split_and_reenqueue = split_and_reenqueue


def bulk_unsupported(kafka: KafkaProducer) -> str | None:
    """Why the bulk path would not send exactly what send() sends with this producer, or None when it would."""
    config = kafka.config
    if config.get("key_serializer") is not None or config.get("value_serializer") is not None:
        return "a key/value serializer is configured"
    if type(config.get("partitioner")) not in (DefaultPartitioner, StickyPartitioner):
        return "a custom partitioner is configured"
    if config.get("transactional_id"):
        return "the producer is transactional"
    acc: Any = getattr(kafka, "_accumulator", None)
    if type(acc) is not RecordAccumulator:
        return "kafka-python's RecordAccumulator is not the one this code knows"
    if acc.config.get("message_version") != 2:
        return "the broker does not take message format v2"
    if config["batch_size"] > config["max_request_size"]:
        return "batch_size is larger than max_request_size"
    try:
        return probe(acc)
    except Exception as exc:  # an attribute renamed or a signature changed in kafka-python
        return f"kafka-python's internals differ from those coded against ({type(exc).__name__}: {exc})"


def probe(acc: Any) -> str | None:
    """Write a few records both ways (kafka-python's builder, ours) into the structures the bulk path uses."""
    for name in ("_batches", "_tp_lock", "_incomplete", "_appends_in_progress", "_closed", "split_and_reenqueue"):
        getattr(acc, name)
    keys = [b"k", b"key-" * 40, b""]
    values = [b"{}", b"v" * 300, b"x" * 20_000]  # 1-, 2- and 3-byte length varints
    ts = 1_700_000_000_000
    theirs = MemoryRecordsBuilder(2, 0, 1 << 20)
    sizes = [
        theirs.append(t, key, value, []).size for key, value, t in zip(keys, values, (ts, ts, ts + 7), strict=True)
    ]
    ours = MemoryRecordsBuilder(2, 0, 1 << 20)
    batch = ProducerBatch(TopicPartition("probe", 0), ours, now=time.monotonic())
    for name in ("max_record_size", "last_append", "topic_partition"):
        getattr(batch, name)
    batch.produce_future.add_callback(lambda _: None)
    batch.produce_future.add_errback(lambda _: None)
    batch.produce_future._latch.is_set()
    if batch._record_futures != [] or batch.record_count != 0 or ours._closed or len(ours._builder._buffer) != 61:
        return "ProducerBatch or MemoryRecordsBuilder look different"
    if _fill(ours, keys, values, 0, 2, ts, 1 << 20) != (2, max(sizes[:2])):
        return "record sizes differ from kafka-python's"
    if _fill(ours, keys, values, 2, 3, ts + 7, 1 << 20) != (3, sizes[2]) or batch.record_count != 3:
        return "record sizes or counts differ from kafka-python's"
    theirs.close()
    ours.close()
    if bytes(ours.buffer()) != bytes(theirs.buffer()):
        return "the records written differ from kafka-python's DefaultRecordBatchBuilder"
    return None
