"""The sink: Kafka -> ClickHouse with no loss, no duplicates, and dead letters.

Kafka delivers at least once; ClickHouse insert deduplication makes the result exactly once. That only works if a
retried insert carries the same token *and the same rows* (the engine drops a re-used token silently even when
the rows differ), so the sink is built around one rule: **a batch is a fixed offset range of one partition**.

For every batch ``[first, last]`` of partition ``p``:

1. *pre-commit*: the group's committed offset for ``p`` is set to ``first`` with metadata naming the range
   (``clickstream-sink/1 <epoch> <first>-<last>``) — before anything is written;
2. the valid rows go to ``events`` in one columnar insert, the invalid records to ``dead_letters`` and to the
   dead-letter topic, both inserts carrying ``insert_deduplication_token =
   <topic>@<epoch>:<p>:<first>-<last>/<database>/<group>`` (:func:`batch_token`) and settings that keep
   deduplication on whatever the session or profile says (``store.DEDUP_INSERT_SETTINGS``);
3. *post-commit*: the committed offset becomes ``last + 1`` (its metadata names the next sealed batch, if any).

A member that starts on a partition (first start, restart after ``kill -9``, rebalance) reads the committed offset
and metadata: a recorded range is rebuilt exactly — same records, same validation decisions (the Kafka record
timestamp is the reference time), same token — so rows that were stored but not committed are dropped by the
engine instead of being doubled. The epoch is the topic's id, so a deleted and re-created topic (whose offsets
restart at 0) cannot collide with old tokens; the database and the consumer group are in the token too, so another
group replaying the topic into the same database (``--group replay --from-beginning``) stores its own copy instead
of having its inserts dropped as if they were the first group's retries.

A partition without a committed offset (a new group id, or offsets expired after the group was idle) starts after
the highest offset already stored from it in ``events``/``dead_letters`` — when the stored record at that offset
is the one the topic holds there — instead of re-inserting the retained log; ``from_beginning`` replays it
(:meth:`Sink._start_offsets`).

**Group inserts.** A round takes the oldest sealed batch of every partition (sealing the open ones) and inserts them
together: one insert into ``events`` instead of one per partition, which is what following a live stream costs
most (the engine's fixed cost per insert — materialized views, their parts, merges). The batches stay per
partition; the pre-commit records the whole set on every member partition (``clickstream-sink/2 <epoch>
<p>:<first>-<last>,...``, one offset commit) and the token names the set (:func:`group_token`). Whoever owns any
member partition next rebuilds the *whole* set — reading back the ranges of partitions it does not own with a
group-less consumer — and inserts it under the same token before committing its own members; if some member
neither records the set nor is past it, the pre-commit never completed, nothing was inserted, and the record is
cleared (:meth:`Sink._resolve_group`). A batch rebuilt from a single recorded range is inserted alone.

Failures: a failing store or broker pauses the partitions and retries the same batches with capped exponential
backoff; nothing is committed ahead of what ClickHouse acknowledged. On revoke, unfinished batches are abandoned
uncommitted (the next owner rebuilds them). :meth:`Sink.stop` (SIGTERM/Ctrl-C in the CLI) finishes the open
batches, commits, and leaves the group. Errors no retry clears do not loop: a dead letter the dead-letter topic
refuses for good stays in the table only (:meth:`Sink._send_dead_letters`), a group pre-commit over the broker's
``offset.metadata.max.bytes`` makes group inserts smaller, and a fenced ``group.instance.id`` stops the sink with
:class:`~clickstream_lib.errors.SinkError`. Batches and inserts are bounded in bytes too (``batch_max_bytes``).
See docs/sink.md.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import logging
import math
import os
import re
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, NamedTuple, TypeVar

import numpy as np
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.consumer.subscription_state import ConsumerRebalanceListener
from kafka.errors import (
    AuthorizationError,
    CommitFailedError,
    FencedInstanceIdError,
    IllegalGenerationError,
    InvalidRecordError,
    InvalidTopicError,
    KafkaError,
    MessageSizeTooLargeError,
    OffsetMetadataTooLargeError,
    RebalanceInProgressError,
    RecordListTooLargeError,
    UnknownMemberIdError,
)
from kafka.record import util as _record_util
from kafka.structs import OffsetAndMetadata

from . import events, record_decoder, schema, topics
from .errors import SinkError, StoreError
from .events import Rejection
from .producer import flush as producer_flush
from .settings import Settings
from .store import Store, connect, decimal_text

logger = logging.getLogger(__name__)
_T = TypeVar("_T")

# Chosen by bench/consume.py: 20k-row inserts reach the engine's bulk rate while a 1 s wait keeps p99 latency
# within the flush interval + 0.5 s at low rates.
DEFAULT_BATCH_MAX_ROWS = 20_000
# The bytes (message values) a batch, and a round's insert, may hold: what bounds the sink's memory when messages are
# large (a 20 000-row batch of 64 KiB values would hold 1.3 GB). 64 MiB is ~200 000 live events, so it never cuts a
# batch of ordinary events.
DEFAULT_BATCH_MAX_BYTES = 64 * 1024 * 1024
# A poll decompresses and keeps every record it returns, and a 5 MB value can arrive as a few KiB of lz4: after a value
# of L bytes a poll returns at most batch_max_bytes / L records, for this long after the largest such value was seen.
_LARGE_VALUE_MEMORY_S = 60.0
# The first poll after a start knows no value yet: it returns at most this many records (16 x 5 MB = 80 MB), the next
# ones batch_max_rows at once when values are ordinary, else at most twice as many as the poll before.
_FIRST_POLL_RECORDS = 16
DEFAULT_BATCH_MAX_WAIT_S = 1.0
DEFAULT_RETRY_BASE_S = 0.25
DEFAULT_RETRY_MAX_S = 5.0
DEFAULT_STOP_TIMEOUT_S = 30.0
DLQ_FLUSH_TIMEOUT_S = 10.0  # waiting for the dead-letter topic's acknowledgements, per round
# The dead-letter topic gets at most this much of a rejected value (Kafka's defaults take 1 MiB per record: the
# broker's message.max.bytes, kafka-python's max_request_size); a longer one goes cut, with headers saying so. Decided
# from the value alone, so a replayed batch sends the same and stores the same detail.
DEAD_LETTER_TOPIC_MAX_VALUE_BYTES = 512 * 1024
# Refusals of a dead-letter record that no retry can clear: the record is given up (it is in the dead_letters table)
# and the partition moves on. A size refusal is first answered with a copy without the value.
_DLQ_SIZE_ERRORS = (MessageSizeTooLargeError, RecordListTooLargeError)
_DLQ_NEVER_CLEARS = (*_DLQ_SIZE_ERRORS, InvalidRecordError, InvalidTopicError, AuthorizationError)
# Bytes fetched per partition per request (kafka-python's default is 1 MiB, ~2 500 events). kafka-python fetches a
# partition again only once its previous response is consumed, so a backlog costs a round trip per response; 8 MiB
# also lets a partition fill a 20 000-row batch from one response (bench/consume.py: half the inserts). Live traffic
# is unaffected: the broker answers with what it has.
FETCH_MAX_PARTITION_BYTES = 8 * 1024 * 1024

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
_PRICE_PRECISION, _PRICE_SCALE = (int(v) for v in re.findall(r"\d+", _EVENT_TYPES["price"]))
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
_META_PREFIX = "clickstream-sink/1"
_GROUP_META_PREFIX = "clickstream-sink/2"
# At most this many partitions' batches go into one insert (their ranges, ~25 bytes each, are the commit metadata of
# every member; Kafka's offset.metadata.max.bytes is 4096 by default).
GROUP_MAX_BATCHES = 64
_LATENCY_WINDOW_S = 30.0
_RATE_WINDOW_S = 10.0
_PERCENTILES_MAX_AGE_S = 1.0  # stats() recomputes the latency percentiles at most once a second
_PERCENTILE_SAMPLE = 100_000  # latencies at most per percentile computation (p99 of such a sample: +-0.1 rank)
# A record without a timestamp (old message formats report -1) gets no future-time check: any fixed reference keeps
# the decision deterministic, and rejecting every such record would be worse.
_NO_TIMESTAMP_REFERENCE_MS = 2**62
# until_idle waits at most this long for a first assignment (a group waiting for a dead member's session).
_JOIN_GRACE_S = 60.0
# How long one poll() may wait while the insert thread works: its result is committed on the next loop turn.
_INFLIGHT_POLL_S = 0.005
# Reading back the recorded ranges of a group insert (after a crash or a rebalance) gives up after this long.
_READ_BACK_TIMEOUT_S = 60.0

# Group-membership errors: the commit can never succeed in this generation, so the batch is abandoned uncommitted
# and the partition's next owner rebuilds it from the recorded range. Other Kafka errors are retried.
_FENCED = (CommitFailedError, IllegalGenerationError, UnknownMemberIdError, RebalanceInProgressError)


# --- pure helpers ----------------------------------------------------------------------------------------------


def batch_token(topic: str, epoch: str, partition: int, first: int, last: int, *, database: str, group: str) -> str:
    """The ``insert_deduplication_token`` of the batch ``[first, last]`` of ``topic``/``partition``, stored into
    ``database`` by the consumer group ``group``.

    Everything in it is stable across restarts of the group (so a rebuilt range gets the same token), and another
    group's batches get other tokens. The group comes last: a topic has no ``/``, a database is an identifier, so
    any group id (which may hold any character) cannot make two tokens alike.
    """
    return f"{topic}@{epoch}:{partition}:{first}-{last}/{database}/{group}"


def encode_pending(epoch: str, first: int, last: int) -> str:
    """Commit metadata recording that the batch ``[first, last]`` may be in the store but is not committed."""
    return f"{_META_PREFIX} {epoch} {first}-{last}"


def _parse_range(text: str) -> tuple[int, int] | None:
    first_s, sep, last_s = text.partition("-")
    if not sep or not first_s.isdigit() or not last_s.isdigit():
        return None
    first, last = int(first_s), int(last_s)
    return (first, last) if first <= last else None


def decode_pending(metadata: str | None, epoch: str) -> tuple[int, int] | None:
    """The ``(first, last)`` range recorded by :func:`encode_pending`, or None (absent, foreign, other epoch)."""
    if not metadata:
        return None
    parts = metadata.split(" ")
    if len(parts) != 3 or parts[0] != _META_PREFIX or parts[1] != epoch:
        return None
    return _parse_range(parts[2])


class Member(NamedTuple):
    """One partition's batch ``[first, last]`` within a group insert."""

    partition: int
    first: int
    last: int


def _ranges_text(members: Sequence[Member]) -> str:
    """``p:first-last,...`` sorted by partition: the canonical spelling of a group's ranges."""
    return ",".join(f"{m.partition}:{m.first}-{m.last}" for m in sorted(members))


def encode_group(epoch: str, members: Sequence[Member]) -> str:
    """Commit metadata recording that the batches ``members`` went (or go) to the store in one insert.

    Every member partition carries the whole list, so the owner of any one of them can rebuild the insert.
    """
    return f"{_GROUP_META_PREFIX} {epoch} {_ranges_text(members)}"


def decode_group(metadata: str | None, epoch: str) -> tuple[Member, ...] | None:
    """The members recorded by :func:`encode_group`, sorted by partition, or None (absent, other, malformed)."""
    if not metadata:
        return None
    parts = metadata.split(" ")
    if len(parts) != 3 or parts[0] != _GROUP_META_PREFIX or parts[1] != epoch:
        return None
    members: list[Member] = []
    for item in parts[2].split(","):
        p_s, sep, range_s = item.partition(":")
        rng = _parse_range(range_s)
        if not sep or not p_s.isdigit() or rng is None:
            return None
        members.append(Member(int(p_s), *rng))
    partitions = [m.partition for m in members]
    if len(members) < 2 or len(set(partitions)) != len(partitions):
        return None
    return tuple(sorted(members))


def group_token(topic: str, epoch: str, members: Sequence[Member], *, database: str, group: str) -> str:
    """The ``insert_deduplication_token`` of one insert holding the batches ``members`` of ``topic``.

    A digest of the sorted ranges: the same batches always give the same token, and any other set (one batch
    more or less, one offset different) another one. Distinct from every :func:`batch_token`; names the database
    and the consumer group as :func:`batch_token` does.
    """
    digest = hashlib.sha256(_ranges_text(members).encode()).hexdigest()[:32]
    return f"{topic}@{epoch}:group:{len(members)}:{digest}/{database}/{group}"


def backoff_s(attempt: int, base_s: float = DEFAULT_RETRY_BASE_S, cap_s: float = DEFAULT_RETRY_MAX_S) -> float:
    """Capped exponential backoff: ``base * 2**(attempt-1)``, at most ``cap`` (attempt counts from 1)."""
    return float(min(cap_s, base_s * (2 ** max(0, attempt - 1))))


# How long one poll() may wait while this member is (re)joining its group: a join round trip seldom outlives it.
_JOIN_POLL_MS = 1_000


def join_in_progress(consumer: KafkaConsumer) -> bool:
    """True while the consumer's group join is under way; un-wedges a join kafka-python 3.0 would never complete.

    kafka-python 3.0.12 completes a JoinGroup/SyncGroup round trip only from a ``poll()`` that still finds a rejoin
    "needed". A rebalance started by a metadata change (e.g. new partitions) stops being needed as soon as the
    leader has computed the assignment, so when the round trip finishes between two polls (a busy or loaded
    process) its result is never applied: the member keeps no partitions, its heartbeats stay off, and the group
    drops it after the session timeout while it waits forever. Asking for a rejoin makes the next poll join again.
    """
    coordinator = getattr(consumer, "_coordinator", None)
    task = getattr(coordinator, "_join_task", None)
    if coordinator is None or task is None:
        return False
    if task.is_done and not coordinator.need_rejoin():
        logger.warning(
            "group %s: a finished group join was left unapplied by kafka-python; joining again", coordinator.group_id
        )
        coordinator.request_rejoin()
    return True


def unpark_resumed_records(consumer: KafkaConsumer) -> bool:
    """Let kafka-python 3.0.12 hand back the parsed records it parked for a partition that is resumed.

    When a partition is paused while part of its fetched records are already parsed (a poll stopped at
    ``max_records``), the fetcher parks them and restores them only into an *empty* in-line slot; but a drained slot
    keeps its exhausted ``PartitionRecords`` instead of becoming empty, and a partition with parked records is never
    fetched again. The resumed partition then stalls until it is reassigned (seen after the store-outage pause).
    Emptying a drained slot lets the next poll restore the parked records. True when it did.
    """
    fetcher = getattr(consumer, "_fetcher", None)
    parked = getattr(fetcher, "_paused_partition_records", None)
    if not parked:
        return False
    current = getattr(fetcher, "_next_partition_records", None)
    if current is None or current:
        return False  # empty already, or still holding records: they are returned first
    paused = consumer.paused()
    if all(tp in paused for tp in parked):
        return False
    fetcher._next_partition_records = None  # type: ignore[union-attr]
    return True


def crc32c_accelerated() -> bool:
    """True when kafka-python verifies record CRCs with the C ``crc32c`` extension (not its pure-Python fallback)."""
    return getattr(_record_util, "crc32c_c", None) is not None


# Per record, kafka-python allocates a ConsumerRecord and its headers list and the sink keeps a row tuple: with
# Python's default GC thresholds (700, 10, 10) a drain of 100 000 records ran ~640 young and ~5 full collections,
# each walking the ~40 000 objects of the records being validated or the whole heap — ~3 us of the consumer thread's
# ~11 us per record (bench/consume.py with per-thread CPU). While a sink runs, the youngest generation's threshold
# is raised to this (the consumer thread's CPU fell to ~8 us per record); reference counting still frees everything
# without cycles at once, and cyclic garbage waits for at most this many new objects. Restored when the last sink of
# the process stops, unless someone changed the thresholds meanwhile.
GC_YOUNG_THRESHOLD = 50_000
_gc_lock = threading.Lock()
_gc_users = 0
_gc_saved: tuple[int, ...] | None = None


@contextlib.contextmanager
def _relaxed_gc() -> Iterator[None]:
    """Raise the GC's youngest threshold to :data:`GC_YOUNG_THRESHOLD` while at least one sink of the process runs."""
    global _gc_users, _gc_saved
    with _gc_lock:
        _gc_users += 1
        if _gc_users == 1:
            saved = gc.get_threshold()
            if saved[0] < GC_YOUNG_THRESHOLD:
                _gc_saved = saved
                gc.set_threshold(GC_YOUNG_THRESHOLD, *saved[1:])
    try:
        yield
    finally:
        with _gc_lock:
            _gc_users -= 1
            if _gc_users == 0 and _gc_saved is not None:
                if gc.get_threshold() == (GC_YOUNG_THRESHOLD, *_gc_saved[1:]):
                    gc.set_threshold(*_gc_saved)
                _gc_saved = None


# --- stats -----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SinkStats:
    """A snapshot of the sink's live figures (what the workbench widgets and ``consume --stats`` show).

    Latencies are over the last 30 s of acknowledged inserts: *event* = event time -> insert acknowledged,
    *kafka* = Kafka record timestamp -> insert acknowledged. ``lag`` is high watermark minus committed offset.
    ``dead_letters_unpublished``: dead letters the dead-letter topic refused for good (too large even without their
    value, not authorized, invalid topic); they are in the ``dead_letters`` table, and the log names each.
    """

    rows_inserted: int = 0
    dead_letters: int = 0
    dead_letters_by_reason: dict[str, int] = field(default_factory=dict)
    dead_letters_unpublished: int = 0
    batches: int = 0
    rows_per_s: float = 0.0
    lag: dict[int, int] = field(default_factory=dict)
    latency_event_p50_ms: float | None = None
    latency_event_p99_ms: float | None = None
    latency_kafka_p50_ms: float | None = None
    latency_kafka_p99_ms: float | None = None
    assigned_partitions: tuple[int, ...] = ()
    running: bool = False
    last_error: str | None = None
    records_consumed: int = 0
    retries: int = 0
    committed: dict[int, int] = field(default_factory=dict)

    @property
    def total_lag(self) -> int:
        return sum(self.lag.values())

    def get(self, name: str, default: Any = None) -> Any:
        """Mapping-style access to a field (``stats.get("lag")``), for code that treats stats as a dict."""
        return getattr(self, name, default)

    def as_dict(self) -> dict[str, Any]:
        """Plain values for JSON (``consume --stats``)."""
        return {
            "rows_inserted": self.rows_inserted,
            "dead_letters": self.dead_letters,
            "dead_letters_by_reason": dict(self.dead_letters_by_reason),
            "dead_letters_unpublished": self.dead_letters_unpublished,
            "batches": self.batches,
            "rows_per_s": round(self.rows_per_s, 1),
            "lag": {str(k): v for k, v in sorted(self.lag.items())},
            "latency_event_p50_ms": self.latency_event_p50_ms,
            "latency_event_p99_ms": self.latency_event_p99_ms,
            "latency_kafka_p50_ms": self.latency_kafka_p50_ms,
            "latency_kafka_p99_ms": self.latency_kafka_p99_ms,
            "assigned_partitions": list(self.assigned_partitions),
            "running": self.running,
            "last_error": self.last_error,
            "records_consumed": self.records_consumed,
            "retries": self.retries,
        }


class _Window:
    """Recent acknowledged batches: rows/s and latency percentiles over a sliding time window."""

    def __init__(self) -> None:
        self._rates: deque[tuple[float, int]] = deque()
        self._lat: deque[tuple[float, np.ndarray, np.ndarray]] = deque()
        # The percentiles of _lat, kept until it changes and then for up to _PERCENTILES_MAX_AGE_S: stats() may be
        # polled far more often than batches are acknowledged (bench/consume.py polls every 5 ms), and stats() holds
        # the lock the consumer thread needs to acknowledge a batch.
        self._percentiles: tuple[float | None, float | None, float | None, float | None] | None = None
        self._percentiles_at = -math.inf
        self._changed = False

    def add(self, now: float, rows: int, event_lat: np.ndarray, kafka_lat: np.ndarray) -> None:
        self._rates.append((now, rows))
        if event_lat.size:
            self._lat.append((now, event_lat, kafka_lat))
            self._changed = True
        self._trim(now)

    def _trim(self, now: float) -> None:
        while self._rates and now - self._rates[0][0] > _RATE_WINDOW_S:
            self._rates.popleft()
        while self._lat and now - self._lat[0][0] > _LATENCY_WINDOW_S:
            self._lat.popleft()
            self._changed = True

    def rate(self, now: float, started: float) -> float:
        self._trim(now)
        rows = sum(n for _, n in self._rates)
        span = min(_RATE_WINDOW_S, max(now - started, 1e-3))
        return rows / span

    def percentiles(self, now: float) -> tuple[float | None, float | None, float | None, float | None]:
        """p50/p99 of event-time and Kafka-timestamp latency (ms) over the window, as of at most 1 s ago.

        Beyond :data:`_PERCENTILE_SAMPLE` latencies (30 s at 50 000 events/s hold 1.5M) they are computed from an
        evenly strided sample of each batch: exact percentiles of 1.5M values took ~40 ms, under the lock.
        """
        self._trim(now)
        if not self._lat:
            self._percentiles, self._changed = None, False
            return None, None, None, None
        if self._percentiles is not None and (not self._changed or now - self._percentiles_at < _PERCENTILES_MAX_AGE_S):
            return self._percentiles
        total = sum(e.size for _, e, _ in self._lat)
        step = -(-total // _PERCENTILE_SAMPLE)  # 1 = every latency
        ev = np.concatenate([e[::step] for _, e, _ in self._lat])
        ka = np.concatenate([k[::step] for _, _, k in self._lat])
        e50, e99 = np.percentile(ev, [50, 99])
        k50, k99 = np.percentile(ka, [50, 99])
        self._percentiles = (float(e50), float(e99), float(k50), float(k99))
        self._percentiles_at, self._changed = now, False
        return self._percentiles


# --- batches ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BatchInfo:
    """What one stored batch was (passed to the ``on_batch_stored`` hook)."""

    partition: int
    first_offset: int
    last_offset: int
    rows: int
    dead_letters: int
    token: str  # the insert_deduplication_token it was stored under (one token for the batches of a group insert)


class _Record(NamedTuple):
    """The fields of a Kafka record the sink uses (kafka-python's ConsumerRecord has them by these names)."""

    offset: int
    timestamp: int
    key: bytes | None
    value: bytes | None


class _Batch:
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
        self.add_records((_Record(offset, timestamp_ms, key, value),))

    def add_records(self, records: Sequence[Any], max_bytes: int = 0) -> int:
        """:meth:`add` for consecutive records (ConsumerRecords or :class:`_Record`), in one loop.

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
        cols[_PRICE_INDEX] = decimal_text(cols[_PRICE_INDEX], _PRICE_PRECISION, _PRICE_SCALE)
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
    def member(self) -> Member:
        return Member(self.partition, self.first, self.last)

    def info(self, token: str | None = None) -> BatchInfo:
        return BatchInfo(self.partition, self.first, self.last, len(self.rows), len(self.dead), token or self.token)


def _concat_columns(parts: list[list[list[Any]]]) -> list[list[Any]]:
    cols = parts[0]
    for more in parts[1:]:
        for col, extra in zip(cols, more, strict=True):
            col.extend(extra)
    return cols


def _insert_batches(store: Store, batches: list[_Batch], token: str) -> None:
    """Insert ``batches`` under ``token``: their valid rows in one insert into ``events``, their dead letters in one
    into ``dead_letters``; marks them stored (a retry skips what was acknowledged). Raises :class:`_DeliveryError`."""
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
        raise _DeliveryError(f"ClickHouse insert {token} failed: {type(exc).__name__}: {exc}") from exc


class _PartitionState:
    """One assigned partition: its open batch, the sealed batches waiting for the store, its committed offset."""

    def __init__(self, tp: TopicPartition, committed: int | None, replay: tuple[int, int] | None) -> None:
        self.tp = tp
        self.committed = committed
        self.replay = replay  # a recorded range to rebuild exactly before normal batching resumes
        self.open: _Batch | None = None
        self.sealed: deque[_Batch] = deque()
        self.next_offset = committed if committed is not None else -1


class _Listener(ConsumerRebalanceListener):
    """Runs on kafka-python's IO thread, which may not block or call the consumer: it only queues the change."""

    def __init__(self, sink: Sink) -> None:
        self._sink = sink

    def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        self._sink._queue_rebalance("revoked", set(revoked))

    def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        self._sink._queue_rebalance("assigned", set(assigned))

    def on_partitions_lost(self, lost: Iterable[TopicPartition]) -> None:
        self._sink._queue_rebalance("revoked", set(lost))


class _DeliveryError(Exception):
    """A batch could not be delivered now; retried with backoff (``fenced``: abandon instead).

    ``metadata_too_large``: the broker refused an offset commit's metadata (``offset.metadata.max.bytes``).
    """

    def __init__(self, message: str, fenced: bool = False, metadata_too_large: bool = False) -> None:
        super().__init__(message)
        self.fenced = fenced
        self.metadata_too_large = metadata_too_large


# --- the sink --------------------------------------------------------------------------------------------------


class Sink:
    """A consumer-group member that sinks the events topic into ClickHouse, effectively once.

    Args:
        settings: where Kafka and ClickHouse are; ``kafka_topic``, ``kafka_group_id`` and ``dead_letter_topic``
            name what is consumed and where rejects go.
        store: an open :class:`~clickstream_lib.store.Store` to share (embedded mode: the one store of this
            process); None opens one from ``settings`` in :meth:`run` and closes it afterwards.
        batch_max_rows: records per partition batch (valid + invalid) before it is inserted.
        batch_max_bytes: bytes of message values a partition batch, and a round's insert, may hold (a batch closes
            at the record that reaches it); what bounds the sink's memory when messages are large.
        batch_max_wait_s: how long the first record of a batch may wait before the batch is inserted.
        retry_max_s: cap of the exponential backoff while ClickHouse or Kafka fail.
        instance_id: a static group-membership id (``group.instance.id``): a restarted member with the same id takes
            its partitions back at once instead of waiting for the session timeout.
        consumer_config: extra kafka-python consumer options (e.g. ``session_timeout_ms``).
        on_batch_stored: called after a batch is in ClickHouse and before its offsets are committed (fault tests).
        group_max_batches: how many partitions' batches may share one insert (1: an insert per batch).
        from_beginning: a partition without a committed offset for the group starts at the log start (a replay)
            instead of after the highest offset already stored from it (see :meth:`_start_offsets`). Partitions
            with a committed offset always resume from it.

    Example:
        >>> sink = Sink(Settings.from_env())
        >>> sink.start()            # a daemon thread; sink.stats() gives live figures
        >>> sink.stop()             # finishes the open batches, commits, leaves the group
    """

    def __init__(
        self,
        settings: Settings,
        store: Store | None = None,
        *,
        batch_max_rows: int = DEFAULT_BATCH_MAX_ROWS,
        batch_max_bytes: int = DEFAULT_BATCH_MAX_BYTES,
        batch_max_wait_s: float = DEFAULT_BATCH_MAX_WAIT_S,
        retry_max_s: float = DEFAULT_RETRY_MAX_S,
        instance_id: str | None = None,
        consumer_config: Mapping[str, Any] | None = None,
        on_batch_stored: Callable[[BatchInfo], None] | None = None,
        group_max_batches: int = GROUP_MAX_BATCHES,
        from_beginning: bool = False,
    ) -> None:
        if batch_max_rows < 1:
            raise ValueError(f"batch_max_rows must be >= 1, got {batch_max_rows}")
        if batch_max_bytes < 1:
            raise ValueError(f"batch_max_bytes must be >= 1, got {batch_max_bytes}")
        if batch_max_wait_s <= 0:
            raise ValueError(f"batch_max_wait_s must be > 0, got {batch_max_wait_s}")
        if not 1 <= group_max_batches <= GROUP_MAX_BATCHES:
            raise ValueError(f"group_max_batches must be 1..{GROUP_MAX_BATCHES}, got {group_max_batches}")
        self.settings = settings
        self.topic = settings.kafka_topic
        self.batch_max_rows = batch_max_rows
        self.batch_max_bytes = batch_max_bytes
        # How many records the next poll may return, and the largest value seen lately and when (_poll_records).
        self._poll_cap = min(batch_max_rows, _FIRST_POLL_RECORDS)
        self._large_value: tuple[int, float] = (0, -math.inf)
        self._bytes_since_gc = 0  # bytes of values polled since the last collection for large values
        self.batch_max_wait_s = batch_max_wait_s
        self.retry_max_s = retry_max_s
        self.instance_id = instance_id
        self._consumer_config = dict(consumer_config or {})
        self._on_batch_stored = on_batch_stored
        self.group_max_batches = group_max_batches
        self.from_beginning = from_beginning
        self._store = store
        self.database = store.database if store is not None else settings.database  # named by the tokens
        self._owns_store = store is None
        self._consumer: KafkaConsumer | None = None
        self._producer: KafkaProducer | None = None
        self.epoch = ""
        self._states: dict[int, _PartitionState] = {}
        self._rebalances: list[tuple[str, set[TopicPartition]]] = []
        self._joined = False
        self._fresh: set[int] = set()  # partitions (re)assigned during the current poll
        # Records taken into batches that a rebalance or rewind then dropped uncommitted: they no longer count
        # towards run(max_events=...), which must store exactly that many (see _dropped_records).
        self._dropped = 0
        self._rebalance_lock = threading.Lock()
        self._stop = threading.Event()
        self._stop_deadline: float | None = None
        self._thread: threading.Thread | None = None
        self._retry_at = 0.0
        self._attempt = 0
        self._paused_for_failure = False
        # The round of batches being inserted by the insert thread, and that thread (see _start_round).
        self._inflight: tuple[list[_Batch], Future[None]] | None = None
        # The batches of the round being delivered: once tried, a round is retried with exactly these batches (a
        # group insert's token names them all; another set under a new token would store the stored ones again).
        self._round: list[_Batch] | None = None
        self._round_precommitted = False
        self._fetch_config: dict[str, Any] = {}
        self._inserter: ThreadPoolExecutor | None = None
        # live figures, read by stats() from other threads
        self._lock = threading.Lock()
        self._window = _Window()
        self._started = time.monotonic()
        self._running = False
        self._last_error: str | None = None
        self._rows = 0
        self._dead = 0
        self._dead_by_reason: dict[str, int] = {}
        self._dead_unpublished = 0
        self._batches = 0
        self._consumed = 0
        self._retries = 0
        self._lag: dict[int, int] = {}
        self._committed: dict[int, int] = {}
        self._assigned: tuple[int, ...] = ()

    # --- public API ---------------------------------------------------------------------------------------------

    def run(self, until_idle: float | None = None, max_events: int | None = None) -> SinkStats:
        """Consume until stopped; blocks. Returns the final figures.

        Args:
            until_idle: return once no record arrived for this many seconds and everything read is committed.
            max_events: return after exactly this many records (rows + dead letters) are stored and committed.

        Raises:
            BrokerUnavailable: Kafka cannot be reached at start.
            StoreError: ClickHouse cannot be opened, or its tables would ignore deduplication tokens.
        """
        if threading.current_thread() is not self._thread:
            self._stop.clear()  # a blocking run after an earlier stop(); start() clears it for its own thread
            self._stop_deadline = None
        with self._lock:
            self._running = True
            self._last_error = None
            self._started = time.monotonic()
        try:
            self._open()
            try:
                with _relaxed_gc():
                    self._loop(until_idle, max_events)
                    self._drain()
            finally:
                self._close()
        except BaseException as exc:
            with self._lock:
                self._last_error = f"{type(exc).__name__}: {exc}"
            raise
        finally:
            with self._lock:
                self._running = False
        return self.stats()

    def start(self, until_idle: float | None = None, max_events: int | None = None) -> Sink:
        """Run in a daemon thread (for notebooks); errors end up in ``stats().last_error``."""
        if self._thread and self._thread.is_alive():
            return self
        self._stop.clear()
        self._stop_deadline = None
        with self._lock:
            self._running = True  # so a caller polling stats() right after start() sees it running

        def target() -> None:
            try:
                self.run(until_idle=until_idle, max_events=max_events)
            except Exception:
                logger.exception("the sink stopped with an error")

        self._thread = threading.Thread(target=target, name=f"clickstream-sink-{self.topic}", daemon=True)
        self._thread.start()
        return self

    def request_stop(self, timeout: float = DEFAULT_STOP_TIMEOUT_S) -> None:
        """Ask :meth:`run` to finish its open batches, commit and return (safe from signal handlers)."""
        self._stop_deadline = time.monotonic() + timeout
        self._stop.set()

    def stop(self, timeout: float = DEFAULT_STOP_TIMEOUT_S) -> SinkStats:
        """Finish the open batches, commit, close; waits up to ``timeout`` s for the thread started by :meth:`start`.

        Batches that cannot be stored within ``timeout`` (ClickHouse down) are abandoned uncommitted: a later run
        rebuilds them, so nothing is lost.
        """
        self.request_stop(timeout)
        thread = self._thread
        if thread and thread is not threading.current_thread():
            thread.join(timeout + 10)
            if thread.is_alive():
                logger.warning("the sink thread did not stop within %.0f s", timeout + 10)
        return self.stats()

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the thread started by :meth:`start`; True when it has finished."""
        if self._thread:
            self._thread.join(timeout)
            return not self._thread.is_alive()
        return True

    @property
    def running(self) -> bool:
        with self._lock:
            return self._running

    def stats(self) -> SinkStats:
        """Live figures; cheap and thread-safe (the workbench polls it)."""
        now = time.monotonic()
        with self._lock:
            e50, e99, k50, k99 = self._window.percentiles(now)
            return SinkStats(
                rows_inserted=self._rows,
                dead_letters=self._dead,
                dead_letters_by_reason=dict(self._dead_by_reason),
                dead_letters_unpublished=self._dead_unpublished,
                batches=self._batches,
                rows_per_s=self._window.rate(now, self._started),
                lag=dict(self._lag),
                latency_event_p50_ms=e50,
                latency_event_p99_ms=e99,
                latency_kafka_p50_ms=k50,
                latency_kafka_p99_ms=k99,
                assigned_partitions=self._assigned,
                running=self._running,
                last_error=self._last_error,
                records_consumed=self._consumed,
                retries=self._retries,
                committed=dict(self._committed),
            )

    # --- start-up / shutdown ------------------------------------------------------------------------------------

    def _open(self) -> None:
        if not crc32c_accelerated():
            logger.warning("the crc32c package is missing: kafka-python checks record CRCs in pure Python (slow)")
        if self._store is None:
            self._store = connect(self.settings)
            self._owns_store = True
        self.database = self._store.database
        self._check_dedup(self._store)
        self._warn_undeduplicated_views(self._store)
        topics.ensure_topic(self.settings, self.topic)
        topics.ensure_topic(self.settings, self.settings.dead_letter_topic)
        self.epoch = self._topic_epoch()
        cfg = topics.client_config(
            self.settings,
            group_id=self.settings.kafka_group_id,
            client_id=f"clickstream-sink-{socket.gethostname()}-{os.getpid()}",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_records=self.batch_max_rows,
            max_partition_fetch_bytes=FETCH_MAX_PARTITION_BYTES,
            check_crcs=True,
            # kafka-python 3.0 stopped returning records for partitions that were sought/paused during a rebalance
            # when incremental fetch sessions (KIP-227) were on (seen in the two-member takeover test).
            enable_incremental_fetch_sessions=False,
            # A group leader that saw no partitions for a just-created topic assigns nothing until its next metadata
            # refresh (default 5 min); refresh often enough that such a miss heals in seconds.
            metadata_max_age_ms=15_000,
        )
        if self.instance_id:
            cfg["group_instance_id"] = self.instance_id
        cfg.update(self._consumer_config)
        # A group-less reader of recorded ranges of any partition (recovering a group insert, see _resolve_group).
        self._fetch_config = {
            **{k: v for k, v in cfg.items() if k not in ("group_id", "group_instance_id", "client_id")},
            "group_id": None,
            "client_id": f"{cfg['client_id']}-rebuild",
        }
        try:
            self._consumer = KafkaConsumer(**cfg)
            record_decoder.install(self._consumer)  # ~2x faster than kafka-python's own record decoder
            # Not idempotent: an idempotent producer takes a record refused as too large for a fatal error and then
            # refuses every later one; the dead-letter topic is at-least-once anyway (a retried round re-sends).
            self._producer = KafkaProducer(**topics.client_config(self.settings, linger_ms=5, enable_idempotence=False))
        except KafkaError as exc:
            if self._consumer is not None:
                self._consumer.close(autocommit=False)
                self._consumer = None
            raise topics.unreachable(self.settings, exc) from exc
        self._inserter = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"clickstream-sink-insert-{self.topic}")
        self._await_partitions(self._consumer)
        self._consumer.subscribe([self.topic], listener=_Listener(self))
        logger.info(
            "sink %s -> %s.events: group %s, epoch %s, batches of <= %d rows / %d MiB / %.2f s",
            self.topic,
            self._store.database,
            self.settings.kafka_group_id,
            self.epoch,
            self.batch_max_rows,
            self.batch_max_bytes // (1024 * 1024),
            self.batch_max_wait_s,
        )

    def _check_dedup(self, store: Store) -> None:
        # Without a deduplication window the engine silently ignores insert tokens: a replayed batch would be
        # stored twice. Replicated tables use replicated_deduplication_window, which is on by default.
        for table in ("events", "dead_letters"):
            engine = store.scalar(
                "SELECT engine FROM system.tables WHERE database = {db:String} AND name = {t:String}",
                {"db": store.database, "t": table},
            )
            if engine is None:
                raise StoreError(f"table {store.table(table)} does not exist — run the schema migrations (connect())")
            if str(engine).startswith("Replicated"):
                continue
            if store.dedup_window(table) <= 0:
                raise StoreError(
                    f"{store.table(table)} has non_replicated_deduplication_window = 0, so ClickHouse would ignore "
                    "the sink's deduplication tokens and a replayed batch would be stored twice — run "
                    f"ALTER TABLE {store.table(table)} MODIFY SETTING non_replicated_deduplication_window = 100000"
                )

    @staticmethod
    def _warn_undeduplicated_views(store: Store) -> list[str]:
        """Materialized-view targets that would count a replayed batch twice; logged as a warning.

        The engine drops a replayed ``events`` block but still pushes it into the views; only a target table with
        its own deduplication window drops it there too (measured on chdb 26.9).
        """
        unsafe: list[str] = []
        views = store.query_rows(
            "SELECT create_table_query FROM system.tables WHERE database = {db:String} AND engine = 'MaterializedView'",
            {"db": store.database},
        )
        for (ddl,) in views:
            m = re.search(r"\bTO\s+`?(\w+)`?\.`?(\w+)`?", str(ddl))
            if not m or m.group(1) != store.database:
                continue
            target = m.group(2)
            engine = store.scalar(
                "SELECT engine FROM system.tables WHERE database = {db:String} AND name = {t:String}",
                {"db": store.database, "t": target},
            )
            if engine and not str(engine).startswith("Replicated") and store.dedup_window(target) <= 0:
                unsafe.append(store.table(target))
        if unsafe:
            logger.warning(
                "%s have non_replicated_deduplication_window = 0: a batch replayed after a crash is dropped from "
                "events but counted again in these rollups — run ALTER TABLE <table> MODIFY SETTING "
                "non_replicated_deduplication_window = 100000 on each",
                ", ".join(sorted(set(unsafe))),
            )
        return sorted(set(unsafe))

    def _await_partitions(self, consumer: KafkaConsumer, timeout_s: float = 15.0) -> None:
        """Wait until this consumer's metadata lists the topic's partitions (it was perhaps created a moment ago)."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                if consumer.partitions_for_topic(self.topic):
                    return
            except KafkaError as exc:
                logger.debug("metadata for %s not available yet: %s", self.topic, exc)
            if time.monotonic() > deadline:
                logger.warning(
                    "no partition metadata for %s after %.0f s; joining the group anyway", self.topic, timeout_s
                )
                return
            time.sleep(0.2)

    def _topic_epoch(self) -> str:
        try:
            with topics.admin(self.settings) as client:
                described = client.describe_topics([self.topic])
        except KafkaError as exc:
            raise topics.unreachable(self.settings, exc) from exc
        topic_id = str(described[0].get("topic_id") or "") if described else ""
        # Brokers older than 2.8 have no topic ids; the epoch then cannot tell a re-created topic apart.
        return topic_id.replace("-", "")[:12] or "0"

    def _close(self) -> None:
        # An insert still running (an error ended the loop, or its round was abandoned) finishes before the store
        # can close; it stays uncommitted, so the next owner rebuilds its range and ClickHouse drops what was stored.
        self._abandon_inflight()
        if self._inserter is not None:
            self._inserter.shutdown(wait=True)
            self._inserter = None
        if self._consumer is not None:
            try:
                self._consumer.close(autocommit=False)
            except Exception as exc:
                logger.warning("closing the Kafka consumer failed: %s", exc)
            self._consumer = None
        if self._producer is not None:
            try:
                self._producer.close(timeout=5)
            except Exception as exc:
                logger.warning("closing the dead-letter producer failed: %s", exc)
            self._producer = None
        if self._owns_store and self._store is not None:
            self._store.close()
            self._store = None
        self._states.clear()
        with self._lock:
            self._assigned = ()

    # --- the loop -----------------------------------------------------------------------------------------------

    def _loop(self, until_idle: float | None, max_events: int | None) -> None:
        consumer = self._consumer
        assert consumer is not None
        started = last_activity = time.monotonic()
        taken = 0
        joined = False
        self._dropped = 0
        while not self._stop.is_set():
            timeout_ms = self._poll_timeout_ms()
            if join_in_progress(consumer):
                timeout_ms = max(timeout_ms, _JOIN_POLL_MS)  # eager rebalance: nothing is assigned meanwhile
            self._fresh.clear()
            unpark_resumed_records(consumer)
            try:
                records = consumer.poll(timeout_ms=timeout_ms, max_records=self._poll_records())
            except FencedInstanceIdError as exc:
                raise self._fenced(exc) from exc
            changed = self._apply_rebalances()
            taken -= self._dropped_records()
            now = time.monotonic()
            self._note_large_values(records, now)
            if changed:
                last_activity = now
                joined = joined or self._joined
            for tp, recs in records.items():
                state = self._states.get(tp.partition)
                if state is None:
                    logger.warning("records for unassigned partition %s ignored", tp)
                    continue
                if tp.partition in self._fresh:
                    # Fetched before this poll's rebalance, from the position kafka-python kept for a partition
                    # that stayed assigned; the partition was just sought back to its committed offset. Taking them
                    # would open a batch past records not yet stored.
                    continue
                limit = None if max_events is None else max(0, max_events - taken)
                taken += self._take(state, recs, now, limit)
                last_activity = now
            self._seal_due(now, force=max_events is not None and taken >= max_events)
            if self._inflight is not None and (self._inflight[1].done() or self._store_behind()):
                self._finish_round()  # waits for the insert when the store is behind
            if self._inflight is None and any(s.sealed for s in self._states.values()) and now >= self._retry_at:
                self._start_round()
                if self._inflight is not None and not self._kafka_behind():
                    # Caught up: reading on during the insert gains nothing, and on a small machine the insert is
                    # acknowledged sooner when it has the CPU to itself (bench/consume.py: p50 latency at 20k ev/s
                    # 0.85 s this way, ~1 s when overlapped).
                    self._finish_round()
            self._update_lag()
            taken -= self._dropped_records()  # a refused commit rewinds
            if max_events is not None and taken >= max_events and not self._busy():
                return
            # Idle only counts once the group assigned this member its partitions (possibly none): joining can take
            # longer than the idle time, e.g. while the group waits for a killed member's session to expire.
            if (
                until_idle is not None
                and (joined or now - started > until_idle + _JOIN_GRACE_S)
                and not self._busy()
                and time.monotonic() - last_activity >= until_idle
            ):
                return

    def _busy(self) -> bool:
        return self._inflight is not None or any(s.open is not None or s.sealed for s in self._states.values())

    def _poll_timeout_ms(self) -> int:
        now = time.monotonic()
        wait = 0.2  # short, so stop() and until_idle are noticed promptly
        for s in self._states.values():
            if s.open is not None and s.replay is None:
                wait = min(wait, self._due_at(s.open, now, time.time()) - now)
        if self._inflight is not None:
            wait = min(wait, _INFLIGHT_POLL_S)  # commit promptly once the insert thread is done
        elif any(s.sealed for s in self._states.values()):
            wait = min(wait, self._retry_at - now)
        return max(0, int(wait * 1000))

    def _take(self, state: _PartitionState, records: list[Any], now: float, limit: int | None = None) -> int:
        """Add polled records to the partition's batches; returns how many were taken.

        ``limit`` caps the records taken, except that a recorded range is always rebuilt whole: cutting it would
        give its rows a different token and store them twice. Outside a recorded range the records go to the open
        batch in runs that fill it to ``batch_max_rows`` exactly, which is where the one-by-one rule would cut too;
        a batch also closes at the record that brings its values to ``batch_max_bytes``.
        """
        n = 0
        i = 0
        total = len(records)
        while i < total:
            if state.replay is not None:
                r = records[i]
                i += 1
                offset = r.offset
                if offset < state.next_offset:
                    continue  # already in a batch (a re-fetch after seek); taking it twice would double it
                if offset > state.replay[1]:
                    self._seal(state)  # the recorded range ended in a gap: what follows is a new batch
                else:
                    batch = state.open
                    if batch is None:
                        batch = state.open = self._new_batch(state.tp.partition, now)
                    batch.add_records((r,))
                    state.next_offset = offset + 1
                    n += 1
                    if offset >= state.replay[1]:
                        self._seal(state)
                    continue
                i -= 1  # the record after the gap starts a normal batch below
                continue
            if limit is not None and n >= limit:
                break
            while i < total and records[i].offset < state.next_offset:
                i += 1  # already in a batch (a re-fetch after seek); taking it twice would double it
            if i >= total:
                break
            batch = state.open
            if batch is None:
                batch = state.open = self._new_batch(state.tp.partition, now)
            room = self.batch_max_rows - len(batch)
            if limit is not None:
                room = min(room, limit - n)
            run = records[i : i + room]
            taken = batch.add_records(run, self.batch_max_bytes)
            i += taken
            n += taken
            state.next_offset = run[taken - 1].offset + 1
            if len(batch) >= self.batch_max_rows or batch.nbytes >= self.batch_max_bytes:
                self._seal(state)
        with self._lock:
            self._consumed += n
        return n

    def _poll_records(self) -> int:
        """How many records the next poll may return (``batch_max_rows`` once ordinary events are flowing).

        A poll decompresses and keeps every record it returns. The first after a start returns at most
        :data:`_FIRST_POLL_RECORDS`. After a value of ``L`` bytes too large for ``batch_max_rows`` of them to fit in
        ``batch_max_bytes``, a poll returns at most ``batch_max_bytes / L`` records (at least one), and at most twice
        as many as the poll before, until :data:`_LARGE_VALUE_MEMORY_S` passed without a value that large; with
        ordinary values the next poll returns ``batch_max_rows``.
        """
        return self._poll_cap

    def _note_large_values(self, records: Mapping[TopicPartition, list[Any]], now: float) -> None:
        """Set the next poll's size from this poll's values (see :meth:`_poll_records`)."""
        if not records:
            return
        largest = total = 0
        for recs in records.values():
            for r in recs:
                if r.value is not None:
                    n = len(r.value)
                    total += n
                    largest = max(largest, n)
        if largest * self.batch_max_rows > self.batch_max_bytes:
            # Values this large make cyclic garbage costly: the fetch path leaves garbage in reference cycles that
            # keeps fetched buffers until the cycle collector runs, and while a sink runs that waits for
            # GC_YOUNG_THRESHOLD new objects — hundreds of 5 MB values (300 of them: peak RSS 2.3-2.5 GB; 1.4 GB with
            # Python's own threshold; 1.2 GB collecting every batch_max_bytes, docs/sink.md).
            self._bytes_since_gc += total
            if self._bytes_since_gc >= self.batch_max_bytes:
                self._bytes_since_gc = 0
                gc.collect(1)
        size, seen = self._large_value
        if largest >= size or now - seen > _LARGE_VALUE_MEMORY_S:
            size, seen = self._large_value = (largest, now)
        if size * self.batch_max_rows <= self.batch_max_bytes:
            self._poll_cap = self.batch_max_rows  # ordinary values: the start's small first poll costs nothing more
        else:
            self._poll_cap = max(1, min(self.batch_max_rows, 2 * self._poll_cap, self.batch_max_bytes // size))

    def _seal(self, state: _PartitionState) -> None:
        """Close the open batch (its range is final) and queue it for the store."""
        if state.open is not None and len(state.open):
            replaying = state.replay is not None
            state.sealed.append(state.open)
            if replaying:
                state.open.replayed = True
                logger.info("rebuilt recorded batch %s", state.open.token)
        state.open = None
        state.replay = None

    def _due_at(self, b: _Batch, now: float, wall: float) -> float:
        """When the open batch ``b`` must be inserted (monotonic seconds).

        ``batch_max_wait_s`` after its first record arrived, or earlier: when that record's Kafka timestamp is
        already ``batch_max_wait_s`` old (the time it spent reaching us counts against the latency budget). The
        second rule waits at least a quarter of the interval, so a producer clock running behind cannot shrink
        batches to nothing.
        """
        by_arrival = b.started + self.batch_max_wait_s
        if b.first_kafka_ms <= 0:
            return by_arrival
        by_timestamp = now + (b.first_kafka_ms / 1000 + self.batch_max_wait_s - wall)
        return min(by_arrival, max(b.started + self.batch_max_wait_s / 4, by_timestamp))

    def _seal_due(self, now: float, force: bool = False) -> None:
        wall = time.time()
        for state in self._states.values():
            b = state.open
            if b is None:
                continue
            if state.replay is not None:
                continue  # a recorded range is rebuilt whole, however long it takes to fetch
            if force or now >= self._due_at(b, now, wall):
                self._seal(state)

    def _kafka_behind(self) -> bool:
        """At least a full batch of records is waiting in Kafka (as of the last fetch): reading is the bottleneck."""
        consumer = self._consumer
        if consumer is None:
            return False
        waiting = 0
        for s in self._states.values():
            hw = consumer.highwater(s.tp)
            if hw is not None:
                waiting += hw - max(s.next_offset, 0)
        return waiting >= self.batch_max_rows

    def _store_behind(self) -> bool:
        """Backpressure: a partition has a batch waiting behind the one being inserted.

        The loop then waits for the insert instead of reading on. (Pausing the partition instead stalls it:
        kafka-python 3.0.12 can leave a paused partition's already-parsed records parked for good, see
        :func:`unpark_resumed_records`.)
        """
        return any(len(s.sealed) >= 2 for s in self._states.values())

    # --- delivery -----------------------------------------------------------------------------------------------

    def _deliver_round(self) -> bool:
        """Store and commit the oldest sealed batch of every partition, waiting for it; True on success."""
        if self._inflight is None:
            self._start_round()
        if self._inflight is None:
            return False  # the pre-commit failed
        return self._finish_round()

    def _start_round(self) -> None:
        """Pre-commit the oldest sealed batch of every partition and hand the batches to the insert thread.

        The insert runs while this thread polls and validates the next records: chdb and the HTTP driver release
        the GIL in the engine / on the socket, which is most of an insert. Everything Kafka (pre- and post-commit,
        dead-letter topic) stays on this thread, and :meth:`_finish_round` commits only after the insert returned.
        """
        assert self._inflight is None and self._inserter is not None
        consumer = self._consumer
        assert consumer is not None
        if self._round is None:
            self._round = self._compose_round()
            self._round_precommitted = False
        batches = self._round
        try:
            if self._grouped(batches):
                if not self._round_precommitted:
                    meta = encode_group(self.epoch, [b.member for b in batches])
                    self._commit(
                        {TopicPartition(self.topic, b.partition): OffsetAndMetadata(b.first, meta, -1) for b in batches}
                    )
                    self._round_precommitted = True
            else:
                pre = {
                    TopicPartition(self.topic, b.partition): OffsetAndMetadata(
                        b.first, encode_pending(self.epoch, b.first, b.last), -1
                    )
                    for b in batches
                    if not b.precommitted
                }
                if pre:
                    self._commit(pre)
                    for b in batches:
                        b.precommitted = True
        except _DeliveryError as exc:
            if exc.metadata_too_large and self._grouped(batches) and not self._round_precommitted:
                # Nothing was recorded, so nothing was inserted: the batches may go in smaller groups.
                self.group_max_batches = max(1, len(batches) // 2)
                self._round = None
                logger.warning(
                    "%s: the pre-commit of a group insert of %d batches names every range; inserting at most %d "
                    "batches together from now on",
                    exc,
                    len(batches),
                    self.group_max_batches,
                )
                return
            self._round_failed(exc)
            return
        self._inflight = (batches, self._inserter.submit(self._store_batches, batches))

    def _compose_round(self) -> list[_Batch]:
        """The next round: every partition's oldest sealed batch (open ones are sealed to join it), by partition.

        Sealing the open batches here makes a round hold every partition that has records, so following a live
        stream costs one insert a round instead of one per partition (an insert's fixed cost in the engine — the
        views, their parts and merges — is most of the work at a few thousand rows per partition and second).
        """
        if self.group_max_batches == 1:  # each batch its own insert, one after the other
            return [s.sealed[0] for s in self._states.values() if s.sealed]
        for state in self._states.values():
            if state.replay is None and not state.sealed:
                self._seal(state)
        sealed = sorted((s for s in self._states.values() if s.sealed), key=lambda s: s.tp.partition)
        oldest = [s.sealed[0] for s in sealed]
        # A rebuilt recorded batch may already be in the store under its own token: it is inserted alone, with it.
        replayed = [b for b in oldest if b.replayed]
        if replayed:
            return replayed[:1]
        round_: list[_Batch] = []
        nbytes = 0
        for b in oldest[: self.group_max_batches]:
            if round_ and nbytes + b.nbytes > self.batch_max_bytes:
                break  # one insert holds at most batch_max_bytes of values (or one batch)
            round_.append(b)
            nbytes += b.nbytes
        return round_

    def _grouped(self, batches: list[_Batch]) -> bool:
        """Whether the round's batches go to the store as one group insert (else each under its own token)."""
        return self.group_max_batches > 1 and len(batches) > 1

    def _store_batches(self, batches: list[_Batch]) -> None:
        """The insert thread's work: only the store and the batches' stored flags, nothing of Kafka."""
        assert self._store is not None
        if self._grouped(batches):
            _insert_batches(self._store, batches, self._group_token(batches))
        else:
            for b in batches:
                _insert_batches(self._store, [b], b.token)

    def _abandon_inflight(self) -> None:
        """Forget the running round, uncommitted, without waiting for its insert.

        Its ranges are recorded (pre-committed), so whoever owns the partitions next rebuilds them with the same
        tokens and ClickHouse drops what this insert stored. The insert thread runs one round at a time, so a later
        round of this sink is inserted only after this one ended, and :meth:`_close` waits for it.
        """
        self._round = None
        if self._inflight is None:
            return
        batches, future = self._inflight
        self._inflight = None
        tokens = ", ".join(b.token for b in batches)

        def ended(f: Future[None]) -> None:
            exc = f.exception()
            logger.info("abandoned insert round %s ended%s; left uncommitted", tokens, f" with {exc}" if exc else "")

        future.add_done_callback(ended)

    def _finish_round(self) -> bool:
        """After the insert thread returned: dead-letter topic, hook, post-commit, figures; True on success."""
        assert self._inflight is not None
        batches, future = self._inflight
        self._inflight = None
        consumer = self._consumer
        assert consumer is not None
        try:
            future.result()
            self._send_dead_letters(batches)
            if self._on_batch_stored is not None:
                token = self._group_token(batches) if self._grouped(batches) else None
                for b in batches:
                    self._on_batch_stored(b.info(token))
            post: dict[TopicPartition, OffsetAndMetadata] = {}
            for b in batches:
                state = self._states[b.partition]
                nxt = state.sealed[1] if len(state.sealed) > 1 else None
                meta = encode_pending(self.epoch, nxt.first, nxt.last) if nxt is not None else ""
                post[state.tp] = OffsetAndMetadata(b.last + 1, meta, -1)
            self._commit(post)
        except _DeliveryError as exc:
            self._round_failed(exc)
            return False
        self._round = None
        ack = time.time() * 1000
        now = time.monotonic()
        for b in batches:
            state = self._states[b.partition]
            state.sealed.popleft()
            state.committed = b.last + 1
            if state.sealed:
                state.sealed[0].precommitted = True  # its range went out with the post-commit above
        self._recovered()
        with self._lock:
            for b in batches:
                self._count_stored(b)
                self._committed[b.partition] = b.last + 1
                self._window.add(
                    now,
                    len(b),
                    ack - np.asarray(b.event_ms, dtype=np.float64),
                    ack - np.asarray(b.kafka_ms, dtype=np.float64),
                )
        return True

    def _round_failed(self, exc: _DeliveryError) -> None:
        if exc.metadata_too_large:
            # A single range's record (~50 bytes) does not fit: no commit of this sink can succeed.
            raise SinkError(
                f"{exc} even for a single batch; raise offset.metadata.max.bytes on the brokers (Kafka's default is "
                "4096)"
            ) from exc
        if exc.fenced:
            logger.warning("%s — abandoning uncommitted batches; the partitions' next owner rebuilds them", exc)
            self._rewind()
        else:
            self._failed(str(exc))

    def _commit(self, offsets: dict[TopicPartition, OffsetAndMetadata]) -> None:
        consumer = self._consumer
        assert consumer is not None
        try:
            consumer.commit(offsets, timeout_ms=10_000)
        except FencedInstanceIdError as exc:
            raise self._fenced(exc) from exc
        except OffsetMetadataTooLargeError as exc:
            longest = max(len(o.metadata or "") for o in offsets.values())
            raise _DeliveryError(
                f"offset commit refused: its metadata ({longest} bytes) is over the broker's offset.metadata.max.bytes",
                metadata_too_large=True,
            ) from exc
        except _FENCED as exc:
            raise _DeliveryError(f"offset commit refused by the group ({type(exc).__name__})", fenced=True) from exc
        except KafkaError as exc:
            raise _DeliveryError(f"offset commit failed ({type(exc).__name__}: {exc})") from exc

    def _fenced(self, exc: KafkaError) -> SinkError:
        """The error that stops the sink when another member joined with its ``group.instance.id``.

        The group hands this member's partitions to the newcomer and refuses this member's commits and joins for
        good; what it has not committed is rebuilt by the newcomer from the recorded ranges.
        """
        return SinkError(
            f"another consumer joined group {self.settings.kafka_group_id} with this sink's instance id "
            f"{self.instance_id!r} and took over its partitions ({type(exc).__name__}); stopping — give each "
            "consumer its own --instance-id"
        )

    def _group_token(self, batches: list[_Batch]) -> str:
        return self._token_of_group([b.member for b in batches])

    def _token_of_group(self, members: Sequence[Member]) -> str:
        return group_token(self.topic, self.epoch, members, database=self.database, group=self.settings.kafka_group_id)

    def _new_batch(self, partition: int, started: float) -> _Batch:
        return _Batch(
            self.topic, self.epoch, partition, started, database=self.database, group=self.settings.kafka_group_id
        )

    def _send_dead_letters(self, batches: list[_Batch]) -> None:
        """Send the batches' dead letters to the dead-letter topic; raises :class:`_DeliveryError` to retry.

        Each record is settled on its own: acknowledged, or refused for good (:data:`_DLQ_NEVER_CLEARS`: too large,
        not authorized, invalid topic). A size refusal is answered with the same record without its value (the
        headers say it was cut and how large it was); a record refused for good is given up — its dead letter is in
        the ``dead_letters`` table — counted in ``dead_letters_unpublished`` and logged, and the partition moves on.
        Any other error retries the round after a backoff, re-sending only the records not settled yet.
        """
        producer = self._producer
        assert producer is not None
        pending = [b for b in batches if b.dead and not b.dlq_sent]
        if not pending:
            return
        topic = self.settings.dead_letter_topic
        todo: list[tuple[_Batch, int, bool]] = []  # (batch, index into its dead letters, with the value)
        for b in pending:
            if b.dlq_left is None:
                b.dlq_left = set(range(len(b.dead)))
            todo += [(b, i, True) for i in sorted(b.dlq_left)]
        retry: str | None = None
        while todo:
            sent: list[tuple[_Batch, int, bool, Any]] = []
            for b, i, with_value in todo:
                try:
                    sent.append((b, i, with_value, self._send_dead_letter(producer, topic, b, i, with_value)))
                except KafkaError as exc:  # refused before sending, e.g. over max_request_size
                    sent.append((b, i, with_value, exc))
            # kafka-python's own flush() fails with "Future not done" after a broker-forced batch split.
            deadline = time.monotonic() + DLQ_FLUSH_TIMEOUT_S
            if any(not isinstance(f, KafkaError) for *_, f in sent):
                producer_flush(producer, DLQ_FLUSH_TIMEOUT_S)
            todo = []
            for b, i, with_value, f in sent:
                try:
                    if isinstance(f, KafkaError):
                        raise f
                    f.get(timeout=max(0.1, deadline - time.monotonic()))
                except _DLQ_NEVER_CLEARS as exc:
                    if with_value and isinstance(exc, _DLQ_SIZE_ERRORS) and b.dead[i][0]:
                        todo.append((b, i, False))  # what the topic can take: the headers
                        continue
                    self._dead_letter_unpublished(topic, b, i, exc)
                except KafkaError as exc:
                    retry = retry or f"{type(exc).__name__}: {exc}"
                    continue
                assert b.dlq_left is not None
                b.dlq_left.discard(i)
        for b in pending:
            b.dlq_sent = not b.dlq_left
        if retry is not None:
            # A retry re-sends what was not acknowledged: the topic is at-least-once; the table is exactly-once.
            raise _DeliveryError(f"sending dead letters to {topic} failed ({retry})")

    def _send_dead_letter(self, producer: KafkaProducer, topic: str, b: _Batch, i: int, with_value: bool) -> Any:
        raw, reason, detail, offset, kafka_ms, key = b.dead[i]
        headers = [
            ("reason", reason.encode()),
            ("detail", detail.encode("utf-8", "replace")),
            ("source_topic", self.topic.encode()),
            ("source_partition", str(b.partition).encode()),
            ("source_offset", str(offset).encode()),
            ("source_timestamp_ms", str(kafka_ms).encode()),
        ]
        value = raw if with_value else b""
        if len(value) > DEAD_LETTER_TOPIC_MAX_VALUE_BYTES:
            value = value[:DEAD_LETTER_TOPIC_MAX_VALUE_BYTES]
        if len(value) < len(raw):
            headers += [("truncated", b"1"), ("original_size", str(len(raw)).encode())]
        return producer.send(topic, value=value, key=key, headers=headers)

    def _dead_letter_unpublished(self, topic: str, b: _Batch, i: int, exc: KafkaError) -> None:
        """A dead letter the topic refused for good: kept in the table only, counted, logged."""
        assert b.dlq_left is not None
        b.dlq_left.discard(i)
        _raw, reason, _detail, offset, _kafka_ms, _key = b.dead[i]
        logger.error(
            "dead letter %s:%d@%d (%s) could not be sent to %s (%s: %s); it is in the dead_letters table",
            self.topic,
            b.partition,
            offset,
            reason,
            topic,
            type(exc).__name__,
            exc,
        )
        with self._lock:
            self._dead_unpublished += 1

    def _failed(self, message: str) -> None:
        self._attempt += 1
        delay = backoff_s(self._attempt, cap_s=self.retry_max_s)
        self._retry_at = time.monotonic() + delay
        logger.warning("%s — retrying in %.2f s (attempt %d), partitions paused", message, delay, self._attempt)
        consumer = self._consumer
        if consumer is not None and self._states:
            consumer.pause(*[s.tp for s in self._states.values()])
            self._paused_for_failure = True
        with self._lock:
            self._retries += 1
            self._last_error = message

    def _recovered(self) -> None:
        if self._attempt:
            logger.info("delivery recovered after %d failed attempts", self._attempt)
        self._attempt = 0
        self._retry_at = 0.0
        if self._paused_for_failure and self._consumer is not None:
            self._consumer.resume(*[s.tp for s in self._states.values()])
            self._paused_for_failure = False
            with self._lock:
                self._last_error = None

    def _drain(self) -> None:
        """On a requested stop or a finished run: store and commit what was read, within the stop deadline."""
        consumer = self._consumer
        if consumer is None:
            return
        deadline = self._stop_deadline or (time.monotonic() + DEFAULT_STOP_TIMEOUT_S)
        if self._stop.is_set():
            self._finish_replays(min(deadline, time.monotonic() + DEFAULT_STOP_TIMEOUT_S / 2))
        self._seal_for_stop()
        if self._inflight is not None:
            self._finish_round()
        while any(s.sealed for s in self._states.values()):
            if time.monotonic() >= deadline:
                left = sum(len(b) for s in self._states.values() for b in s.sealed)
                logger.warning("stop deadline reached: %d records left uncommitted (a later run stores them)", left)
                return
            if time.monotonic() < self._retry_at:
                consumer.poll(timeout_ms=min(200, int((self._retry_at - time.monotonic()) * 1000) + 1))
                if self._apply_rebalances():
                    self._seal_for_stop()
                continue
            self._deliver_round()
        self._update_lag()

    def _finish_replays(self, until: float) -> None:
        """On a requested stop: read the rest of every recorded range being rebuilt, until ``until`` at most.

        A partition re-assigned with a recorded range (e.g. after a rebalance abandoned its insert, which may have
        stored it) holds its records back until the range is rebuilt. Left unfinished, the range stays stored but
        uncommitted until a later run rebuilds it; finishing it lets the stop commit what the store holds. Only the
        ranges' records are taken; anything polled past them is read again by the next run.
        """
        consumer = self._consumer
        assert consumer is not None
        while any(s.replay is not None for s in self._states.values()) and time.monotonic() < until:
            self._fresh.clear()
            unpark_resumed_records(consumer)
            try:
                records = consumer.poll(timeout_ms=200, max_records=self._poll_records())
            except FencedInstanceIdError as exc:
                raise self._fenced(exc) from exc
            self._apply_rebalances()
            now = time.monotonic()
            self._note_large_values(records, now)
            for tp, recs in records.items():
                state = self._states.get(tp.partition)
                if state is not None and state.replay is not None and tp.partition not in self._fresh:
                    self._take(state, recs, now, limit=0)

    def _seal_for_stop(self) -> None:
        for state in self._states.values():
            if state.replay is not None:
                state.open = None  # an incomplete recorded range stays uncommitted; the next run rebuilds it
                state.replay = None
            else:
                self._seal(state)

    # --- rebalances ---------------------------------------------------------------------------------------------

    def _queue_rebalance(self, kind: str, tps: set[TopicPartition]) -> None:
        with self._rebalance_lock:
            self._rebalances.append((kind, tps))

    def _apply_rebalances(self) -> bool:
        with self._rebalance_lock:
            changes, self._rebalances = self._rebalances, []
        if changes:
            # The running round belongs to the old assignment: nothing is committed for it. What it stores is dropped
            # by ClickHouse when the partition's (next) owner rebuilds the recorded range.
            self._abandon_inflight()
        for kind, tps in changes:
            if kind == "revoked":
                for tp in tps:
                    state = self._states.pop(tp.partition, None)
                    if state is not None:
                        self._drop(state)
                    if state and (state.open is not None or state.sealed):
                        logger.info("partition %d revoked: unfinished batches abandoned uncommitted", tp.partition)
            else:
                self._joined = True
                self._assign(sorted(tp for tp in tps if tp.topic == self.topic))
        if changes:
            consumer = self._consumer
            if consumer is not None and self._states:
                consumer.resume(*[s.tp for s in self._states.values()])
            with self._lock:
                self._assigned = tuple(sorted(self._states))
                self._committed = {p: s.committed for p, s in self._states.items() if s.committed is not None}
                self._lag = {p: v for p, v in self._lag.items() if p in self._states}
            self._paused_for_failure = False
        return bool(changes)

    def _drop(self, state: _PartitionState) -> None:
        """Count the records of a partition state about to be forgotten with its batches, uncommitted."""
        self._dropped += sum(len(b) for b in state.sealed) + (len(state.open) if state.open is not None else 0)

    def _dropped_records(self) -> int:
        """Records dropped uncommitted since the last call (:meth:`_drop`); the loop's ``taken`` excludes them.

        A rebalance that revokes a partition, or re-assigns one that stays (its state is rebuilt from the committed
        offset), drops the records read past that offset; the partition's next owner, or this sink, reads them
        again. Counted as taken, they would end ``run(max_events=n)`` with fewer than ``n`` records stored.
        """
        n, self._dropped = self._dropped, 0
        return n

    def _assign(self, tps: list[TopicPartition]) -> None:
        consumer = self._consumer
        assert consumer is not None
        committed_of = {tp.partition: self._committed_offset(tp) for tp in tps}
        groups: dict[tuple[Member, ...], list[int]] = {}
        for tp in tps:
            c = committed_of[tp.partition]
            members = decode_group(c.metadata if c is not None else None, self.epoch)
            if (
                members is not None
                and c is not None
                and any(m.partition == tp.partition and m.first == c.offset for m in members)
            ):
                groups.setdefault(members, []).append(tp.partition)  # recorded by a group's pre-commit
        resume: dict[int, int | None] = {}
        for members, own in groups.items():
            resume.update(self._resolve_group(members, own, committed_of))
        starts = self._start_offsets([tp for tp in tps if (c := committed_of[tp.partition]) is None or c.offset < 0])
        for tp in tps:
            committed = committed_of[tp.partition]
            offset = committed.offset if committed is not None and committed.offset >= 0 else None
            replay = decode_pending(committed.metadata if committed is not None else None, self.epoch)
            if tp.partition in resume:
                offset, replay = resume[tp.partition], None
                if offset is None:
                    # The group could not be resolved (stopping, or the group moved on): hold the partition
                    # uncommitted; its next owner resolves the recorded group again.
                    consumer.pause(tp)
                    continue
            if replay is not None and offset is not None and replay[1] < offset:
                replay = None  # stale: the range is below the committed offset
            if offset is None:
                offset = starts.get(tp.partition)  # after what the store holds (not committed until stored)
            old = self._states.get(tp.partition)
            if old is not None:
                self._drop(old)
            self._states[tp.partition] = _PartitionState(tp, offset, replay)
            self._fresh.add(tp.partition)
            # kafka-python keeps the fetch position (and pause flag) of a partition that stays assigned across a
            # rebalance; the records read past the committed offset were dropped with the old state, so fetch again
            # from the committed offset (or the log start, as auto_offset_reset='earliest' would).
            if offset is not None:
                consumer.seek(tp, offset)
            else:
                consumer.seek_to_beginning(tp)
            if replay is not None:
                logger.info("partition %d: rebuilding recorded batch %d-%d", tp.partition, *replay)

    def _start_offsets(self, tps: list[TopicPartition]) -> dict[int, int]:
        """Where the partitions ``tps``, which have no committed offset for the group, start; absent: the log start.

        A new group id, or a group whose offsets expired (Kafka drops them after ``offsets.retention.minutes``, 7
        days by default, of the group being empty), would otherwise read the retained log from its start and store
        it again under its own tokens. So a partition starts after the highest offset already stored from it in
        ``events`` or ``dead_letters`` — unless ``from_beginning`` asks for a replay.

        The stored rows do not name the topic's epoch, and a re-created topic restarts its offsets, so a stored offset
        is trusted only when it lies below the partition's end and the record Kafka holds at that offset is the one
        stored there (same event id, or same raw value for a dead letter, and the same Kafka timestamp); otherwise the
        rows came from an earlier incarnation of the topic and the partition starts at the log start. If Kafka cannot
        give that record back in time, the offset (below the end) is trusted and a warning says so.
        """
        if not tps:
            return {}
        group = self.settings.kafka_group_id
        if self.from_beginning:
            for tp in tps:
                logger.info(
                    "partition %d: no committed offset for group %s: replaying from the log start", tp.partition, group
                )
            return {}
        consumer, store = self._consumer, self._store
        assert consumer is not None and store is not None
        stored = self._retrying("reading the offsets stored in ClickHouse", lambda: store.stored_offsets(self.topic))
        beginning = self._retrying("reading the partitions' log start", lambda: consumer.beginning_offsets(tps))
        end = self._retrying("reading the partitions' end", lambda: consumer.end_offsets(tps))
        out: dict[int, int] = {}
        for tp in tps:
            last = stored.get(tp.partition)
            where = f"partition {tp.partition}: no committed offset for group {group}"
            if last is None:
                logger.info("%s and nothing stored from it in %s: starting at the log start", where, self.database)
            elif last >= end[tp] or (last >= beginning[tp] and not self._stored_from_this_log(tp.partition, last)):
                # A re-created topic: starting after `last` would skip its records up to there.
                logger.warning(
                    "%s; %s holds offsets up to %d, but not from this topic's log (it ends at %d%s): starting at the "
                    "log start",
                    where,
                    self.database,
                    last,
                    end[tp],
                    "" if last >= end[tp] else f", and holds another record at {last}",
                )
            else:
                out[tp.partition] = max(last + 1, beginning[tp])
                logger.warning(
                    "%s; %s already holds offsets up to %d: starting at %d (--from-beginning would replay the log)",
                    where,
                    self.database,
                    last,
                    out[tp.partition],
                )
        return out

    def _stored_from_this_log(self, partition: int, offset: int) -> bool:
        """Whether a record stored for ``partition``/``offset`` is the one the topic holds there now."""
        store = self._store
        assert store is not None
        stored = self._retrying("reading a stored record", lambda: store.stored_records(self.topic, partition, offset))
        try:
            batches = self._read_back([Member(partition, offset, offset)])
        except _DeliveryError as exc:
            logger.warning("partition %d: %s — trusting the stored offset %d", partition, exc, offset)
            return True
        if not batches:
            return False
        b = batches[0]
        kafka = (str(b.rows[0][0]), b.kafka_ms[0]) if b.rows else (b.dead[0][0].hex(), b.dead[0][4])
        return (kafka[0].lower(), kafka[1]) in stored

    def _retrying(self, what: str, fn: Callable[[], _T]) -> _T:
        """``fn()``, retried with backoff for about a minute while Kafka or ClickHouse fail, then the error."""
        for attempt in range(1, 100):
            try:
                return fn()
            except Exception as exc:
                if attempt >= 12 or self._stop.is_set():
                    if isinstance(exc, KafkaError):
                        raise topics.unreachable(self.settings, exc) from exc
                    raise
                logger.warning("%s failed (%s: %s); retrying", what, type(exc).__name__, exc)
                time.sleep(backoff_s(attempt, cap_s=self.retry_max_s))
        raise AssertionError("unreachable")

    def _resolve_group(
        self, members: tuple[Member, ...], own: list[int], committed_of: Mapping[int, OffsetAndMetadata | None]
    ) -> dict[int, int | None]:
        """Settle a group insert recorded on the partitions ``own`` of this member; returns where each resumes.

        The group's pre-commit named it on every member partition in one offset commit (Kafka appends a commit to
        the group's log at once), and the insert ran only after that commit succeeded, so:

        * some member partition neither names the group nor is past its range: the pre-commit never completed and
          nothing of the group is in the store — the record is cleared and ``own`` resume from their offsets;
        * otherwise the group may be in the store: it is rebuilt whole, including members owned by other consumers
          (read back with a group-less consumer), and inserted under its token — ClickHouse drops it if it is
          there — then ``own`` are committed past their ranges. Every owner of a member does the same; the first
          insert counts, the others are dropped.

        None for a partition: not settled (stopping, or this member was fenced); it stays paused and uncommitted.
        """
        committed = {
            m.partition: committed_of[m.partition]
            if m.partition in committed_of
            else self._committed_offset(TopicPartition(self.topic, m.partition))
            for m in members
        }
        past = [m for m in members if (c := committed[m.partition]) is not None and c.offset > m.last]
        naming = [
            m
            for m in members
            if (c := committed[m.partition]) is not None
            and c.offset == m.first
            and decode_group(c.metadata, self.epoch) == members
        ]
        mine = [m for m in members if m.partition in own]
        token = self._token_of_group(members)
        complete = len(past) + len(naming) == len(members)
        if past and complete:
            logger.info("group insert %s: already settled on %d of its %d partitions", token, len(past), len(members))
        attempt = 0
        while not self._stop.is_set():
            try:
                if complete:
                    batches = self._read_back(members)
                    assert self._store is not None
                    _insert_batches(self._store, batches, token)
                    self._send_dead_letters(batches)
                    with self._lock:
                        for b in batches:
                            if b.partition in own:
                                self._count_stored(b)
                    logger.info("partitions %s: rebuilt recorded group insert %s", own, token)
                    self._commit(
                        {TopicPartition(self.topic, m.partition): OffsetAndMetadata(m.last + 1, "", -1) for m in mine}
                    )
                    return {m.partition: m.last + 1 for m in mine}
                logger.info(
                    "partitions %s: group insert %s was never made; resuming from the committed offsets", own, token
                )
                self._commit(
                    {TopicPartition(self.topic, m.partition): OffsetAndMetadata(m.first, "", -1) for m in mine}
                )
                return {m.partition: m.first for m in mine}
            except _DeliveryError as exc:
                if exc.fenced:
                    logger.warning("%s — leaving group insert %s to the partitions' next owner", exc, token)
                    break
                attempt += 1
                delay = backoff_s(attempt, cap_s=self.retry_max_s)
                logger.warning("%s — retrying group insert %s in %.2f s (attempt %d)", exc, token, delay, attempt)
                self._stop.wait(delay)
        return {m.partition: None for m in mine}

    def _read_back(self, members: Sequence[Member]) -> list[_Batch]:
        """The recorded ranges ``members`` read again from Kafka and validated as batches (any partitions)."""
        tps = {m.partition: TopicPartition(self.topic, m.partition) for m in members}
        batches = {m.partition: self._new_batch(m.partition, time.monotonic()) for m in members}
        try:
            reader = KafkaConsumer(**self._fetch_config)
        except KafkaError as exc:
            raise _DeliveryError(f"cannot read back recorded ranges ({type(exc).__name__}: {exc})") from exc
        try:
            reader.assign(list(tps.values()))
            for m in members:
                reader.seek(tps[m.partition], m.first)
            todo = {m.partition: m for m in members}
            deadline = time.monotonic() + _READ_BACK_TIMEOUT_S
            while todo:
                if time.monotonic() > deadline or self._stop.is_set():
                    raise _DeliveryError(f"reading back recorded ranges {sorted(todo.values())} did not finish")
                for tp, recs in reader.poll(timeout_ms=500).items():
                    want = todo.get(tp.partition)
                    if want is not None:
                        batches[want.partition].add_records([r for r in recs if want.first <= r.offset <= want.last])
                for p, m in list(todo.items()):
                    if reader.position(tps[p]) > m.last:  # read up to the range's end (it may end in a gap)
                        reader.pause(tps[p])
                        del todo[p]
        except KafkaError as exc:
            raise _DeliveryError(f"reading back recorded ranges failed ({type(exc).__name__}: {exc})") from exc
        finally:
            reader.close(autocommit=False)
        out = [batches[m.partition] for m in members if len(batches[m.partition])]
        for m in members:
            b = batches[m.partition]
            if (b.first, b.last) != (m.first, m.last):
                logger.warning("recorded range %s read back as %d-%d (records deleted?)", m, b.first, b.last)
        return out

    def _count_stored(self, b: _Batch) -> None:
        """Add a stored batch to the live figures; the caller holds ``self._lock``."""
        self._rows += len(b.rows)
        self._dead += len(b.dead)
        for d in b.dead:
            self._dead_by_reason[d[1]] = self._dead_by_reason.get(d[1], 0) + 1
        self._batches += 1

    def _committed_offset(self, tp: TopicPartition) -> OffsetAndMetadata | None:
        consumer = self._consumer
        assert consumer is not None
        for attempt in range(1, 100):
            try:
                return consumer.committed(tp, metadata=True, timeout_ms=10_000)
            except KafkaError as exc:
                # Without the committed offset and metadata the partition cannot be resumed safely: wait for Kafka.
                if attempt >= 12 or self._stop.is_set():
                    raise topics.unreachable(self.settings, exc) from exc
                time.sleep(backoff_s(attempt, cap_s=self.retry_max_s))
        return None

    def _rewind(self) -> None:
        """Forget every buffered batch and fetch again from the committed offsets.

        After a refused commit the group is rebalancing; if this member keeps a partition, it must not skip the
        records it had read past the committed offset.
        """
        consumer = self._consumer
        assert consumer is not None
        tps = [s.tp for s in self._states.values()]
        for state in self._states.values():
            self._drop(state)
        self._states.clear()
        self._round = None
        try:
            self._assign(tps)
        except Exception as exc:  # no longer assigned: the rebalance callbacks rebuild the states
            logger.info("rewind after a refused commit: %s", exc)

    def _update_lag(self) -> None:
        consumer = self._consumer
        if consumer is None:
            return
        lag: dict[int, int] = {}
        for p, state in self._states.items():
            hw = consumer.highwater(state.tp)
            if hw is None:
                continue
            base = state.committed if state.committed is not None else 0
            lag[p] = max(0, hw - base)
        with self._lock:
            self._lag.update(lag)
