"""Fetched Kafka record batches -> ``ConsumerRecord``s, faster than kafka-python's own decoder (for the sink).

kafka-python 3.0 turns each fetched record into a ``ConsumerRecord`` through several pure-Python layers
(``DefaultRecordBatch.__next__`` -> ``_read_msg`` with a function call per varint -> a ``DefaultRecord`` object ->
``validate_crc`` (always True in format v2) -> two ``_deserialize`` calls -> a header-size sum -> the namedtuple's
Python ``__new__``): ~5.5 us of the sink's consumer thread per record. :class:`FastPartitionRecords` overrides only
``PartitionRecords._unpack_records``. Per batch it does what kafka-python does, in the same order and with
kafka-python's own code where there is any: the batch CRC check, the leader epoch, aborted transactions under
``read_committed``, skipping control batches, decompression (``DefaultRecordBatch._maybe_uncompress``). Then it
walks the batch's records in one loop with the varints decoded inline (one- and two-byte fast paths) and builds each
``ConsumerRecord`` with ``tuple.__new__``. What comes out is what kafka-python gives — the same 13 fields, headers
and sizes included, ``checksum`` None as in v2 — and ``next_fetch_offset``, ``records_read`` and ``bytes_read``
(the fetch position and the fetch metrics rely on them) move as kafka-python moves them, records before the fetch
offset included. Corrupt data raises ``CorruptRecordError`` as kafka-python does; a record whose declared lengths run
past the end of its batch raises it before the record is handed out (kafka-python hands it out truncated first).
Batches in the old message formats v0/v1 (brokers before 0.11) go to kafka-python's own path.

kafka-python internals relied on (checked by :func:`unsupported`, which also decodes a sample both ways, and by
tests/unit/test_record_decoder.py): ``Fetcher.PartitionRecords`` (looked up through the fetcher instance, so setting the
attribute on one consumer's fetcher affects that consumer only) with its ``__init__`` attributes and transaction
helpers; ``DefaultRecordBatch``'s ``_maybe_uncompress``, ``_buffer`` and ``_pos``; ``ConsumerRecord``'s fields.
:func:`install` leaves kafka-python's decoder in place, with one logged warning, when any of them is missing.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterator
from typing import Any

from kafka import KafkaConsumer, TopicPartition
from kafka.consumer import fetcher as _fetcher
from kafka.errors import CorruptRecordError
from kafka.record import MemoryRecords, MemoryRecordsBuilder
from kafka.record.default_records import DefaultRecordBatch
from kafka.record.util import decode_varint

logger = logging.getLogger(__name__)

CONSUMER_RECORD_FIELDS = (
    "topic",
    "partition",
    "leader_epoch",
    "offset",
    "timestamp",
    "timestamp_type",
    "key",
    "value",
    "headers",
    "checksum",
    "serialized_key_size",
    "serialized_value_size",
    "serialized_header_size",
)
_ConsumerRecord: Any = getattr(_fetcher, "ConsumerRecord", None)
# object when kafka-python has no such class: FastPartitionRecords is then defined but never installed.
_PartitionRecords: Any = getattr(getattr(_fetcher, "Fetcher", None), "PartitionRecords", object)
_READ_COMMITTED: Any = getattr(getattr(_fetcher, "IsolationLevel", None), "READ_COMMITTED", None)
_LOG_APPEND_TIME = 1
_new = tuple.__new__


class _Chain:
    """``batch`` and then the rest of ``records``: hands the remaining batches to kafka-python's own decoder."""

    def __init__(self, batch: Any, records: Any) -> None:
        self._batch = batch
        self._records = records

    def next_batch(self) -> Any:
        batch, self._batch = self._batch, None
        return batch if batch is not None else self._records.next_batch()


def _headers(data: bytes, pos: int) -> tuple[list[tuple[str, bytes | None]], int, int]:
    """A record's headers at ``pos``: ``(headers, serialized size or -1 when none, next position)``."""
    count, pos = decode_varint(data, pos)
    if count < 0:
        raise CorruptRecordError(f"Found invalid number of record headers {count}")
    headers: list[tuple[str, bytes | None]] = []
    size = 0
    while count:
        key_len, pos = decode_varint(data, pos)
        if key_len < 0:
            raise CorruptRecordError(f"Invalid negative header key size {key_len}")
        key = data[pos : pos + key_len]
        pos += key_len
        value_len, pos = decode_varint(data, pos)
        value = None
        if value_len >= 0:
            value = data[pos : pos + value_len]
            pos += value_len
            size += len(value)
        size += len(key)
        headers.append((key.decode("utf-8"), value))  # a UnicodeDecodeError is a ValueError: corrupt, as there
        count -= 1
    return headers, size if headers else -1, pos


class FastPartitionRecords(_PartitionRecords):
    """kafka-python's ``Fetcher.PartitionRecords`` with a faster ``_unpack_records`` (see the module docstring)."""

    # Set by kafka-python's __init__; the fetcher reads them (position, metrics, fairness).
    next_fetch_offset: int
    records_read: int
    bytes_read: int

    def _unpack_records(
        self, tp: TopicPartition, records: Any, key_deserializer: Any, value_deserializer: Any
    ) -> Iterator[Any]:
        topic, partition = tp.topic, tp.partition
        deserialize = key_deserializer is not None or value_deserializer is not None
        ConsumerRecord = _ConsumerRecord
        try:
            batch = records.next_batch()
            last_batch = None
            while batch is not None:
                if batch.magic != 2:
                    yield from super()._unpack_records(tp, _Chain(batch, records), key_deserializer, value_deserializer)
                    return
                last_batch = batch
                # Batch-level logic as in kafka-python's PartitionRecords._unpack_records.
                if self.check_crcs and not batch.validate_crc():
                    raise CorruptRecordError(
                        f"Record batch for partition {self.topic_partition} at offset {batch.base_offset} "
                        "failed crc check"
                    )
                self.leader_epoch = batch.leader_epoch
                if self.isolation_level == _READ_COMMITTED and batch.has_producer_id():
                    self._consume_aborted_transactions_up_to(batch.last_offset)
                    if self._contains_abort_marker(batch):
                        self.aborted_producer_ids.discard(batch.producer_id)
                    elif self._is_batch_aborted(batch):
                        self.next_fetch_offset = batch.next_offset
                        batch = records.next_batch()
                        continue
                if batch.is_control_batch:
                    self.next_fetch_offset = batch.next_offset
                    batch = records.next_batch()
                    continue

                batch._maybe_uncompress()
                data = bytes(batch._buffer)  # slices of bytes are the keys and values, copied once
                pos = batch._pos
                end = len(data)
                base_offset = batch.base_offset
                timestamp_type = batch.timestamp_type
                log_append_time = timestamp_type == _LOG_APPEND_TIME
                first_timestamp = batch.first_timestamp
                max_timestamp = batch.max_timestamp
                leader_epoch = self.leader_epoch
                fetch_offset = self.fetch_offset
                records_read = self.records_read
                bytes_read = self.bytes_read
                remaining = batch.records_count
                while remaining > 0:
                    remaining -= 1
                    # Record => Length Attributes TimestampDelta OffsetDelta Key Value Headers, each length and
                    # delta a zigzag varint: (u >> 1) ^ -(u & 1).
                    try:
                        b = data[pos]
                        if b < 0x80:
                            length = (b >> 1) ^ -(b & 1)
                            pos += 1
                        elif data[pos + 1] < 0x80:
                            u = (b & 0x7F) | (data[pos + 1] << 7)
                            length = (u >> 1) ^ -(u & 1)
                            pos += 2
                        else:
                            length, pos = decode_varint(data, pos)
                        start = pos
                        if data[pos] < 0x80:  # attributes: unused in v2, read as a varint as kafka-python reads it
                            pos += 1
                        else:
                            pos = decode_varint(data, pos)[1]
                        b = data[pos]
                        if b < 0x80:
                            timestamp_delta = (b >> 1) ^ -(b & 1)
                            pos += 1
                        elif data[pos + 1] < 0x80:
                            u = (b & 0x7F) | (data[pos + 1] << 7)
                            timestamp_delta = (u >> 1) ^ -(u & 1)
                            pos += 2
                        else:
                            timestamp_delta, pos = decode_varint(data, pos)
                        b = data[pos]
                        if b < 0x80:
                            offset_delta = (b >> 1) ^ -(b & 1)
                            pos += 1
                        elif data[pos + 1] < 0x80:
                            u = (b & 0x7F) | (data[pos + 1] << 7)
                            offset_delta = (u >> 1) ^ -(u & 1)
                            pos += 2
                        else:
                            offset_delta, pos = decode_varint(data, pos)
                        b = data[pos]
                        if b < 0x80:
                            key_len = (b >> 1) ^ -(b & 1)
                            pos += 1
                        else:
                            key_len, pos = decode_varint(data, pos)
                        if key_len >= 0:
                            key = data[pos : pos + key_len]
                            pos += key_len
                        else:
                            key = None
                            key_len = -1
                        b = data[pos]
                        if b < 0x80:
                            value_len = (b >> 1) ^ -(b & 1)
                            pos += 1
                        elif data[pos + 1] < 0x80:
                            u = (b & 0x7F) | (data[pos + 1] << 7)
                            value_len = (u >> 1) ^ -(u & 1)
                            pos += 2
                        else:
                            value_len, pos = decode_varint(data, pos)
                        if value_len >= 0:
                            value = data[pos : pos + value_len]
                            pos += value_len
                        else:
                            value = None
                            value_len = -1
                        if data[pos] == 0:  # no headers
                            pos += 1
                            headers: list[tuple[str, bytes | None]] = []
                            header_size = -1
                        else:
                            headers, header_size, pos = _headers(data, pos)
                    except (ValueError, IndexError) as err:
                        raise CorruptRecordError(f"Found invalid record structure: {err!r}") from err
                    if pos - start != length:
                        raise CorruptRecordError(
                            f"Invalid record size: expected to read {length} bytes in record payload, "
                            f"but instead read {pos - start}"
                        )
                    if pos > end:
                        raise CorruptRecordError(f"Record lengths run {pos - end} bytes past the end of the batch")
                    offset = base_offset + offset_delta
                    records_read += 1
                    bytes_read += length
                    self.records_read = records_read
                    self.bytes_read = bytes_read
                    self.next_fetch_offset = offset + 1
                    if offset < fetch_offset:
                        continue  # kafka-python yields it and PartitionRecords._maybe_skip_record drops it
                    if deserialize:
                        key = self._deserialize(key_deserializer, topic, headers, key)
                        value = self._deserialize(value_deserializer, topic, headers, value)
                    yield _new(
                        ConsumerRecord,
                        (
                            topic,
                            partition,
                            leader_epoch,
                            offset,
                            max_timestamp if log_append_time else first_timestamp + timestamp_delta,
                            timestamp_type,
                            key,
                            value,
                            headers,
                            None,
                            key_len,  # = len(key): a key or value cut short by the end of the data
                            value_len,  # would have made the next field's read raise IndexError
                            header_size,
                        ),
                    )
                if pos != end:
                    raise CorruptRecordError(f"{end - pos} unconsumed bytes after all records consumed")
                batch = records.next_batch()
            # As kafka-python: the next fetch starts after the last batch's last offset, even where compaction
            # removed the batch's last records.
            if last_batch is not None:
                self.next_fetch_offset = last_batch.next_offset
            self.drain()
        except StopIteration as exc:  # a generator would turn it into a silent end; kafka-python raises it
            logger.exception("StopIteration raised unpacking messageset")
            raise RuntimeError("StopIteration raised unpacking messageset") from exc


def _sample_records(offset: int = 0) -> MemoryRecords:
    """A small v2 batch (gzip, a header, a null key, a 2-byte-varint value) for the self-check."""
    builder = MemoryRecordsBuilder(magic=2, compression_type=1, batch_size=1 << 20, offset=offset)
    for i in range(3):
        builder.append(1_700_000_000_000 + 100 * i, None if i == 1 else b"k%d" % i, b"v" * (60 * i + 1), [("h", b"x")])
    builder.close()
    return MemoryRecords(builder.buffer())


def decode_all(cls: Any, fetch_offset: int, records: MemoryRecords, **kwargs: Any) -> tuple[list[Any], Any]:
    """Every ConsumerRecord a ``cls`` (a PartitionRecords class) decodes from ``records``, and the parts object."""
    parts = cls(fetch_offset, TopicPartition("t", 0), records, **kwargs)
    out: list[Any] = []
    while parts:
        got = parts.take(1000)
        if not got:
            break
        out.extend(got)
    return out, parts


@functools.cache
def unsupported() -> str | None:
    """Why the installed kafka-python cannot use :class:`FastPartitionRecords`, or None when it can."""
    if _PartitionRecords is object or _READ_COMMITTED is None:
        return "kafka.consumer.fetcher has no Fetcher.PartitionRecords or IsolationLevel"
    if getattr(_ConsumerRecord, "_fields", None) != CONSUMER_RECORD_FIELDS:
        return "kafka.consumer.fetcher.ConsumerRecord has other fields"
    helpers = ("_deserialize", "_consume_aborted_transactions_up_to", "_contains_abort_marker", "_is_batch_aborted")
    if not all(callable(getattr(_PartitionRecords, name, None)) for name in helpers):
        return "Fetcher.PartitionRecords lacks " + ", ".join(n for n in helpers if not hasattr(_PartitionRecords, n))
    slots = getattr(DefaultRecordBatch, "__slots__", ())
    if not callable(getattr(DefaultRecordBatch, "_maybe_uncompress", None)) or not {"_buffer", "_pos"} <= set(slots):
        return "DefaultRecordBatch has no _maybe_uncompress/_buffer/_pos"
    try:
        for fetch_offset in (10, 11):  # from the start, and from the middle of the batch
            ours, a = decode_all(FastPartitionRecords, fetch_offset, _sample_records(10))
            theirs, b = decode_all(_PartitionRecords, fetch_offset, _sample_records(10))
            state = ("next_fetch_offset", "records_read", "bytes_read", "leader_epoch")
            if ours != theirs or [getattr(a, s) for s in state] != [getattr(b, s) for s in state]:
                return "its decoder gives other records than kafka-python's on a sample batch"
    except Exception as exc:
        return f"decoding a sample batch failed: {exc!r}"
    return None


_warned = False


def install(consumer: KafkaConsumer) -> bool:
    """Make ``consumer`` (only this instance) decode fetched records with :class:`FastPartitionRecords`.

    Returns:
        True when installed; False, with one warning per process, when the installed kafka-python lacks something
        the decoder relies on (the consumer then keeps kafka-python's decoder, correct but slower).
    """
    global _warned
    fetcher = getattr(consumer, "_fetcher", None)
    problem = unsupported()
    if problem is None and getattr(fetcher, "PartitionRecords", None) is not _PartitionRecords:
        problem = "the consumer's fetcher does not use Fetcher.PartitionRecords"
    if problem is not None:
        if not _warned:
            _warned = True
            logger.warning("kafka-python's record decoder stays in use (slower): %s", problem)
        return False
    fetcher.PartitionRecords = FastPartitionRecords  # type: ignore[union-attr]
    return True
