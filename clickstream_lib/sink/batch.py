"""A batch: the records of one partition in one offset range, validated as they arrive, and how it is inserted.

A batch is the unit of exactly-once delivery (docs/sink.md): its range never changes once sealed, and rebuilding
the same range gives the same rows, the same dead-letter decisions and the same token.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

from .. import events, schema
from ..events import Rejection
from ..store import decimal_text
from .codec import RecordedRange, batch_token, group_insert_token

# The events table's columns: the event's own fields (event time stored as event_time) plus where Kafka had it.
EVENT_COLUMNS: tuple[str, ...] = (
    *("event_time" if name == "timestamp_ms" else name for name in events.FIELDS),
    "kafka_topic",
    "kafka_partition",
    "kafka_offset",
    "kafka_timestamp",
)


def _sent_as(column_type: str) -> str:
    """The type the sink sends a column of ``events`` as: String where clickhouse-connect would convert in Python.

    clickhouse-connect builds a LowCardinality dictionary, parses each UUID string and makes a ``decimal.Decimal``
    of each price in Python, holding the GIL the consumer thread needs (~4 us per row of 20 000); a String
    column is written in one C call and the engine converts it to the same values (tests/integration/test_sink.py).
    """
    if column_type.startswith(("LowCardinality(String", "UUID", "Decimal(")):
        return "String"
    return column_type


_EVENT_TYPES = dict(schema.EVENTS.columns)
# The events columns as sent (see _sent_as); naming them also spares clickhouse-connect a DESCRIBE per insert.
EVENT_INSERT_TYPES: tuple[str, ...] = tuple(_sent_as(_EVENT_TYPES[c]) for c in EVENT_COLUMNS)
_PRICE_INDEX = EVENT_COLUMNS.index("price")
_PRICE_SCALE = int(re.findall(r"\d+", _EVENT_TYPES["price"])[1])  # Decimal(P, S): S
DEAD_LETTER_COLUMNS: tuple[str, ...] = (
    "raw",
    "reason",
    "detail",
    "kafka_topic",
    "kafka_partition",
    "kafka_offset",
    "kafka_timestamp",
)
_DEAD_LETTER_TYPES = dict(schema.DEAD_LETTERS.columns)
DEAD_LETTER_INSERT_TYPES: tuple[str, ...] = tuple(_DEAD_LETTER_TYPES[c] for c in DEAD_LETTER_COLUMNS)  # as they are
_PARSED_FIELDS = events.FIELDS  # event_id ... schema_version, in EVENT_COLUMNS order (timestamp_ms = event_time)
_EVENT_TIME_INDEX = _PARSED_FIELDS.index("timestamp_ms")
# A record without a timestamp (old message formats report -1) gets no future-time check: any fixed reference keeps
# the decision deterministic, and rejecting every such record would be worse.
_NO_TIMESTAMP_REFERENCE_MS = 2**62
# The dead-letter topic gets at most this much of a rejected value (Kafka's defaults take 1 MiB per record: the
# broker's message.max.bytes, kafka-python's max_request_size); a longer one goes cut, with headers saying so. Decided
# from the value alone, so a replayed batch sends the same and stores the same detail.
DEAD_LETTER_TOPIC_MAX_VALUE_BYTES = 512 * 1024


@dataclass(frozen=True)
class BatchInfo:
    """What one stored batch was (passed to the ``on_batch_stored`` hook)."""

    partition: int
    first_offset: int
    last_offset: int
    rows: int
    dead_letters: int
    token: str  # the insert_deduplication_token it was stored under (one token for the batches of a group insert)


class Record(NamedTuple):
    """The fields of a Kafka record the sink uses (kafka-python's ConsumerRecord has them by these names)."""

    offset: int
    timestamp: int
    key: bytes | None
    value: bytes | None


@dataclass(frozen=True)
class TokenScope:
    """What names a batch's token besides its range: the topic and its epoch, the database, the consumer group."""

    topic: str
    epoch: str
    database: str
    group: str

    def new_batch(self, partition: int, started: float) -> Batch:
        return Batch(self.topic, self.epoch, partition, started, database=self.database, group=self.group)

    def group_insert_token(self, ranges: Sequence[RecordedRange]) -> str:
        return group_insert_token(self.topic, self.epoch, ranges, database=self.database, group=self.group)


class Batch:
    """The records of one partition in one offset range, validated as they arrive."""

    __slots__ = (
        "database",
        "dead",
        "dead_stored",
        "dlq_left",
        "dlq_sent",
        "epoch",
        "events_stored",
        "first",
        "first_kafka_ms",
        "group",
        "kafka_ms",
        "last",
        "nbytes",
        "offsets",
        "partition",
        "precommitted",
        "replayed",
        "rows",
        "started",
        "topic",
    )

    def __init__(self, topic: str, epoch: str, partition: int, started: float, *, database: str, group: str) -> None:
        self.topic = topic
        self.epoch = epoch
        self.database = database  # the database and consumer group name the batch's token
        self.group = group
        self.partition = partition
        self.started = started
        self.first_kafka_ms = 0
        self.first = -1
        self.last = -1
        self.nbytes = 0  # the records' values, in bytes
        self.rows: list[tuple[Any, ...]] = []  # the valid events, as events.parse_row gives them (FIELDS order)
        self.offsets: list[int] = []
        self.kafka_ms: list[int] = []
        # (raw, reason, detail, offset, kafka_ms, key)
        self.dead: list[tuple[bytes, str, str, int, int, bytes | None]] = []
        self.precommitted = False
        self.replayed = False  # rebuilt from a recorded range: it may be in the store under its own token
        self.events_stored = False
        self.dead_stored = False
        self.dlq_sent = False
        self.dlq_left: set[int] | None = None  # indexes into dead not yet settled on the topic (None: all of them)

    def __len__(self) -> int:
        return len(self.rows) + len(self.dead)

    @property
    def token(self) -> str:
        return batch_token(
            self.topic, self.epoch, self.partition, self.first, self.last, database=self.database, group=self.group
        )

    @property
    def event_ms(self) -> list[int]:
        """The valid rows' event times (epoch ms)."""
        return [r[_EVENT_TIME_INDEX] for r in self.rows]

    def add(self, offset: int, timestamp_ms: int, key: bytes | None, value: bytes | None) -> None:
        """Validate one record and keep it as a row or a dead letter (deterministic: no wall clock involved)."""
        self.add_records((Record(offset, timestamp_ms, key, value),))

    def add_records(self, records: Sequence[Any], max_bytes: int = 0) -> int:
        """:meth:`add` for consecutive records (ConsumerRecords or :class:`Record`), in one loop.

        With ``max_bytes``, stops after the record that brings the batch's values to ``max_bytes`` or more (at
        least one record is taken). Returns how many records were taken.
        """
        if not records:
            return 0
        if self.first < 0:
            self.first = records[0].offset
            self.first_kafka_ms = records[0].timestamp
        parse_row = events.parse_row
        rows = self.rows
        offsets = self.offsets
        kafka_ms_col = self.kafka_ms
        dead = self.dead
        nbytes = self.nbytes
        limit = max_bytes or math.inf
        taken = 0
        for r in records:
            offset = r.offset
            timestamp_ms = r.timestamp
            value = r.value
            taken += 1
            kafka_ms = timestamp_ms if timestamp_ms > 0 else 0
            row = parse_row(value, timestamp_ms if timestamp_ms >= 0 else _NO_TIMESTAMP_REFERENCE_MS)
            if isinstance(row, Rejection):
                raw = bytes(value or b"")
                detail = row.detail
                if len(raw) > DEAD_LETTER_TOPIC_MAX_VALUE_BYTES:
                    detail += f"; the dead-letter topic holds its first {DEAD_LETTER_TOPIC_MAX_VALUE_BYTES} bytes"
                dead.append((raw, row.reason, detail, offset, kafka_ms, r.key))
            else:
                if row[0] is None:
                    row = (events.derived_event_id(self.topic, self.partition, offset), *row[1:])
                rows.append(row)
                offsets.append(offset)
                kafka_ms_col.append(kafka_ms)
            if value is not None:
                nbytes += len(value)
                if nbytes >= limit:
                    break
        self.nbytes = nbytes
        self.last = records[taken - 1].offset
        return taken

    def event_columns(self) -> list[list[Any]]:
        """The valid rows as columns in :data:`EVENT_COLUMNS` order, sent as :data:`EVENT_INSERT_TYPES`."""
        rows = self.rows
        n = len(rows)
        cols: list[list[Any]] = [list(c) for c in zip(*rows, strict=True)] if n else [[] for _ in _PARSED_FIELDS]
        cols[_PRICE_INDEX] = decimal_text(cols[_PRICE_INDEX], _PRICE_SCALE)
        cols += [[self.topic] * n, [self.partition] * n, list(self.offsets), list(self.kafka_ms)]
        return cols

    def dead_columns(self) -> list[list[Any]]:
        """The dead letters as columns in :data:`DEAD_LETTER_COLUMNS` order."""
        d = self.dead
        return [
            [x[0] for x in d],
            [x[1] for x in d],
            [x[2] for x in d],
            [self.topic] * len(d),
            [self.partition] * len(d),
            [x[3] for x in d],
            [x[4] for x in d],
        ]

    @property
    def range(self) -> RecordedRange:
        return RecordedRange(self.partition, self.first, self.last)

    def info(self, token: str | None = None) -> BatchInfo:
        return BatchInfo(self.partition, self.first, self.last, len(self.rows), len(self.dead), token or self.token)


class DeliveryError(Exception):
    """A batch could not be delivered now; retried with backoff (``fenced``: abandon instead).

    ``metadata_too_large``: the broker refused an offset commit's metadata (``offset.metadata.max.bytes``).
    """

    def __init__(self, message: str, fenced: bool = False, metadata_too_large: bool = False) -> None:
        super().__init__(message)
        self.fenced = fenced
        self.metadata_too_large = metadata_too_large


class BatchStore(Protocol):
    """What inserting batches needs of a store (:class:`~clickstream_lib.store.Store` has it)."""

    def insert(
        self,
        table: str,
        columns: Sequence[Sequence[Any]],
        column_names: Sequence[str],
        dedup_token: str | None = None,
        column_types: Sequence[str] | None = None,
    ) -> int: ...


def _concat_columns(parts: list[list[list[Any]]]) -> list[list[Any]]:
    cols = parts[0]
    for more in parts[1:]:
        for col, extra in zip(cols, more, strict=True):
            col.extend(extra)
    return cols


def insert_batches(store: BatchStore, batches: list[Batch], token: str) -> None:
    """Insert ``batches`` under ``token``: their valid rows in one insert into ``events``, their dead letters in one
    into ``dead_letters``; marks them stored (a retry skips what was acknowledged). Raises :class:`DeliveryError`."""
    try:
        if not all(b.events_stored for b in batches):
            with_rows = [b for b in batches if b.rows]
            if with_rows:
                cols = _concat_columns([b.event_columns() for b in with_rows])
                store.insert("events", cols, EVENT_COLUMNS, dedup_token=token, column_types=EVENT_INSERT_TYPES)
            for b in batches:
                b.events_stored = True
        if not all(b.dead_stored for b in batches):
            with_dead = [b for b in batches if b.dead]
            if with_dead:
                cols = _concat_columns([b.dead_columns() for b in with_dead])
                store.insert(
                    "dead_letters", cols, DEAD_LETTER_COLUMNS, dedup_token=token, column_types=DEAD_LETTER_INSERT_TYPES
                )
            for b in batches:
                b.dead_stored = True
    except Exception as exc:  # chdb and the HTTP driver raise several types; every failure is retried
        raise DeliveryError(f"ClickHouse insert {token} failed: {type(exc).__name__}: {exc}") from exc
