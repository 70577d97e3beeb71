"""kafka_compat.record_decoder against kafka-python's own decoder, on batches built with kafka-python's builder.

Both decoders read the same bytes; the records (all 13 ConsumerRecord fields) and the state the fetcher reads
afterwards (next_fetch_offset after every take, records_read, bytes_read, leader_epoch) must be equal, and corrupt
bytes must raise CorruptRecordError from both.
"""

from __future__ import annotations

import logging
import random
import struct
from collections import namedtuple
from types import SimpleNamespace
from typing import Any

import pytest
from kafka.consumer.fetcher import Fetcher
from kafka.errors import CorruptRecordError
from kafka.protocol.consumer import IsolationLevel
from kafka.record import MemoryRecords, MemoryRecordsBuilder
from kafka.record.util import calc_crc32c
from kafka.structs import TopicPartition

from clickstream_lib.kafka_compat import record_decoder
from clickstream_lib.kafka_compat.record_decoder import FastPartitionRecords, decode_all

KafkaPartitionRecords = Fetcher.PartitionRecords
CODECS = {"none": 0, "gzip": 1, "lz4": 3}
T0 = 1_790_000_000_000
AbortedTransaction = namedtuple("AbortedTransaction", ["producer_id", "first_offset"])
# Byte positions in a v2 batch header (kafka.record.default_records.DefaultRecordBase.HEADER_STRUCT).
CRC_AT, ATTRIBUTES_AT = 17, 21
LOG_APPEND_TIME, TRANSACTIONAL, CONTROL = 0x08, 0x10, 0x20

Spec = tuple[int, bytes | None, bytes | None, list[tuple[str, bytes | None]]]  # timestamp, key, value, headers


def batch(
    specs: list[Spec],
    base_offset: int = 0,
    codec: str = "none",
    attributes: int = 0,
    magic: int = 2,
    first_delta: int = 0,
    **builder_kw: Any,
) -> bytearray:
    """One record batch as the broker stores it: the producer numbers records from ``first_delta``, the broker
    writes ``base_offset``; ``attributes`` bits are set afterwards (with the CRC recomputed)."""
    builder = MemoryRecordsBuilder(magic, CODECS[codec], batch_size=1 << 24, offset=first_delta, **builder_kw)
    for ts, key, value, headers in specs:
        if magic == 2:
            assert builder.append(ts, key, value, headers) is not None
        else:
            assert builder.append(ts, key, value) is not None
    builder.close()
    buf = bytearray(builder.buffer())
    if magic == 2:
        struct.pack_into(">q", buf, 0, base_offset)  # not covered by the CRC
        if attributes:
            (attrs,) = struct.unpack_from(">h", buf, ATTRIBUTES_AT)
            struct.pack_into(">h", buf, ATTRIBUTES_AT, attrs | attributes)
            struct.pack_into(">I", buf, CRC_AT, calc_crc32c(memoryview(buf)[ATTRIBUTES_AT:]))
    return buf


def decode(
    cls: Any, data: bytes | bytearray, fetch_offset: int = 0, take: int = 1000, **kw: Any
) -> tuple[list[Any], list[Any]]:
    """Records taken ``take`` at a time, and the fetcher-visible state after every take and at the end."""
    parts = cls(fetch_offset, TopicPartition("clicks", 2), MemoryRecords(bytes(data)), **kw)
    out: list[Any] = []
    states = []
    while parts:
        got = parts.take(take)
        states.append((parts.next_fetch_offset, parts.records_read, parts.bytes_read, parts.leader_epoch, bool(parts)))
        if not got:
            break
        out.extend(got)
    return out, states


def assert_same(data: bytes | bytearray, fetch_offset: int = 0, take: int = 1000, **kw: Any) -> list[Any]:
    ours = decode(FastPartitionRecords, data, fetch_offset, take, **kw)
    theirs = decode(KafkaPartitionRecords, data, fetch_offset, take, **kw)
    assert ours[0] == theirs[0]
    assert [tuple(r) for r in ours[0]] == [tuple(r) for r in theirs[0]]  # types too: bytes, not bytearray
    assert [type(r.value) for r in ours[0]] == [type(r.value) for r in theirs[0]]
    assert ours[1] == theirs[1]
    return ours[0]


def varied(n: int, seed: int = 1) -> list[Spec]:
    """Records exercising every varint width the decoder special-cases, null keys/values and headers."""
    rng = random.Random(seed)
    sizes = [0, 1, 63, 64, 65, 200, 8191, 8192, 9000, 70_000]
    out: list[Spec] = []
    for i in range(n):
        key = None if i % 5 == 0 else rng.randbytes(rng.choice([0, 3, 64, 100]))
        value = None if i % 7 == 3 else rng.randbytes(rng.choice(sizes) if i % 3 == 0 else rng.randrange(400))
        headers: list[tuple[str, bytes | None]] = []
        if i % 4 == 1:
            headers = [("trace", rng.randbytes(8)), ("ünïcode-ключ", None), ("big", rng.randbytes(300))]
        ts = T0 + rng.choice([0, 1, 63, 64, 8191, 8192, 10**6, 10**10, -1, -64, -65, -(10**9)])
        out.append((ts, key, value, headers))
    return out


@pytest.mark.parametrize("codec", list(CODECS))
def test_varied_records_equal_kafka_python(codec: str) -> None:
    got = assert_same(batch(varied(300), base_offset=1_000, codec=codec))
    assert [r.offset for r in got] == list(range(1_000, 1_300))
    assert any(r.key is None for r in got) and any(r.value is None for r in got)
    assert any(r.headers for r in got) and any(r.serialized_value_size > 8192 for r in got)


@pytest.mark.parametrize("codec", list(CODECS))
def test_many_records_several_batches_and_small_takes(codec: str) -> None:
    """10 000 records (offset deltas past two varint bytes) in three batches, taken 777 at a time: the position
    after every take must be kafka-python's."""
    rng = random.Random(3)
    specs: list[Spec] = [
        (T0 + i // 10, b"user_%04d" % rng.randrange(9999), rng.randbytes(330), []) for i in range(10_000)
    ]
    data = batch(specs[:10], 5, codec) + batch(specs[10:9_000], 15, codec) + batch(specs[9_000:], 9_005, codec)
    got = assert_same(data, take=777)
    assert len(got) == 10_000 and got[-1].offset == 10_004


@pytest.mark.parametrize("fetch_offset", [0, 100, 101, 150, 199, 200, 260])
def test_fetch_offset_in_the_middle_of_a_batch(fetch_offset: int) -> None:
    data = batch(varied(50), base_offset=100, codec="lz4") + batch(varied(50, seed=2), base_offset=150)
    got = assert_same(data, fetch_offset=fetch_offset, take=7)
    assert [r.offset for r in got] == list(range(max(100, fetch_offset), 200))


def test_offset_gaps_from_compaction_and_first_delta() -> None:
    """A compacted batch: its first record is not at the base offset and its last offset is past its last record;
    the next fetch must start after the batch's last offset."""
    specs = varied(5)
    data = batch(specs, base_offset=40, first_delta=3)
    (last_delta,) = struct.unpack_from(">i", data, 23)
    struct.pack_into(">i", data, 23, last_delta + 5)  # LastOffsetDelta: not covered... it is: recompute the CRC
    struct.pack_into(">I", data, CRC_AT, calc_crc32c(memoryview(data)[ATTRIBUTES_AT:]))
    got = assert_same(data)
    assert [r.offset for r in got] == [43, 44, 45, 46, 47]
    assert decode(FastPartitionRecords, data)[1][-1][0] == 40 + last_delta + 5 + 1


def test_log_append_time() -> None:
    got = assert_same(batch(varied(20), base_offset=7, attributes=LOG_APPEND_TIME, codec="gzip"))
    assert {r.timestamp_type for r in got} == {1} and len({r.timestamp for r in got}) == 1


def test_deserializers_get_topic_headers_and_bytes() -> None:
    class Upper:
        def deserialize(self, topic: str, headers: list[Any], data: bytes | None) -> Any:
            return None if data is None else (topic, len(headers), data.upper())

    got = assert_same(batch(varied(40)), key_deserializer=Upper(), value_deserializer=Upper())
    assert any(isinstance(r.value, tuple) and r.value[1] == 3 for r in got)


def test_read_committed_skips_aborted_and_control_batches() -> None:
    pid: dict[str, Any] = {"producer_id": 77, "producer_epoch": 1, "base_sequence": 0}
    committed = batch(varied(5), base_offset=0, transactional=True, **pid)
    aborted = batch(varied(5, seed=4), base_offset=5, transactional=True, **pid)
    marker: list[Spec] = [(T0, struct.pack(">hh", 0, 0), b"\x00\x00\x00\x00\x00\x00", [])]  # version 0, type 0 = abort
    abort = batch(marker, base_offset=10, attributes=CONTROL, transactional=True, **pid)
    plain = batch(varied(5, seed=5), base_offset=11)
    data = committed + aborted + abort + plain
    kw = dict(isolation_level=IsolationLevel.READ_COMMITTED, aborted_transactions=[AbortedTransaction(77, 5)])
    got = assert_same(data, take=3, **kw)
    assert [r.offset for r in got] == [0, 1, 2, 3, 4, 11, 12, 13, 14, 15]
    got = assert_same(data, take=3)  # read_uncommitted: only the control record is left out
    assert [r.offset for r in got] == list(range(10)) + list(range(11, 16))


def test_legacy_message_formats_go_to_kafka_pythons_decoder() -> None:
    legacy: list[Spec] = [(T0 + i, b"k", b"v" * i, []) for i in range(5)]
    data = batch(varied(5), base_offset=0) + batch(legacy, magic=1, first_delta=5) + batch(varied(5), base_offset=10)
    got = assert_same(data, take=4)
    assert [r.offset for r in got] == list(range(15))


def test_an_empty_fetch_and_a_truncated_last_batch() -> None:
    assert assert_same(b"") == []
    data = batch(varied(10), base_offset=0) + batch(varied(10), base_offset=10)
    assert len(assert_same(data[:-30])) == 10  # a fetch response may end inside a batch: it is not returned


def _flip(data: bytearray, at: int, value: int | None = None) -> bytearray:
    out = bytearray(data)
    out[at] = (out[at] ^ 0xFF) if value is None else value
    return out


def test_a_corrupted_batch_fails_the_crc_check_in_both() -> None:
    data = batch(varied(10), base_offset=0, codec="lz4")
    for at in (ATTRIBUTES_AT + 10, len(data) // 2, len(data) - 1):
        for cls in (FastPartitionRecords, KafkaPartitionRecords):
            with pytest.raises(CorruptRecordError, match="crc"):
                decode(cls, _flip(data, at))


def _corruptions() -> dict[str, bytearray]:
    """Record-level corruptions (the CRC left stale: decoded with check_crcs=False)."""
    header = 61  # DefaultRecordBase.HEADER_STRUCT.size: the first record's length varint starts here
    one: list[Spec] = [(T0, b"key", b"value", [("h", b"x")])]
    good = batch([*one, (T0, b"k2", b"v2", [])])
    # length, attributes, timestamp delta, offset delta, key length, b"key", value length, b"value"
    headers_at = header + 1 + 1 + 1 + 1 + 1 + 3 + 1 + 5
    out = {
        "record length too long": _flip(good, header, 0x7E),
        "record length too short": _flip(good, header, 0x02),
        "negative header count": _flip(good, headers_at, 0x01),
        "negative header key length": _flip(good, headers_at + 1, 0x03),
        "header key not UTF-8": _flip(good, headers_at + 2, 0xFF),
        "varint past 64 bits": bytearray(good[:header] + b"\xff" * 12 + good[header + 12 :]),
        "more records announced than present": _flip(good, 60, 3),
        "trailing bytes": bytearray(good + b"\x00\x00"),
    }
    # A record whose header value (its last field) and so the record say they are 10 bytes longer than they are:
    # consistent lengths that run past the end of the batch (kafka-python hands the record out cut short first).
    past = batch(one)
    past[header] += 2 * 10
    past[headers_at + 3] += 2 * 10
    out["header value past the end of the batch"] = past
    struct.pack_into(">i", out["trailing bytes"], 8, len(out["trailing bytes"]) - 12)
    return out


@pytest.mark.parametrize("name", list(_corruptions()))
def test_corrupt_records_raise_corrupt_record_error_in_both(name: str) -> None:
    data = _corruptions()[name]
    for cls in (FastPartitionRecords, KafkaPartitionRecords):
        with pytest.raises(CorruptRecordError):
            decode(cls, data, check_crcs=False)


def test_the_installed_kafka_python_is_supported() -> None:
    """An upgrade of kafka-python that changes what the decoder relies on must fail here, not slow the sink down."""
    assert record_decoder.unsupported() is None
    ours, _ = decode_all(FastPartitionRecords, 0, MemoryRecords(bytes(batch(varied(3)))))
    assert len(ours) == 3


def test_install_sets_the_class_on_that_fetcher_only_or_warns_once(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def consumer() -> Any:
        return SimpleNamespace(_fetcher=SimpleNamespace(PartitionRecords=KafkaPartitionRecords))

    one, two = consumer(), consumer()
    assert record_decoder.install(one) is True
    assert one._fetcher.PartitionRecords is FastPartitionRecords
    assert two._fetcher.PartitionRecords is KafkaPartitionRecords

    monkeypatch.setattr(record_decoder, "_warned", False)
    monkeypatch.setattr(record_decoder, "unsupported", lambda: "kafka-python 9 moved things")
    with caplog.at_level(logging.WARNING, logger="clickstream_lib.kafka_compat.record_decoder"):
        assert record_decoder.install(two) is False
        assert record_decoder.install(consumer()) is False
    assert two._fetcher.PartitionRecords is KafkaPartitionRecords  # kafka-python's decoder stays
    assert [r.getMessage() for r in caplog.records] == [
        "kafka-python's record decoder stays in use (slower): kafka-python 9 moved things"
    ]
    monkeypatch.setattr(record_decoder, "unsupported", lambda: None)
    assert record_decoder.install(SimpleNamespace(_fetcher=SimpleNamespace())) is False  # not a fetcher it knows
