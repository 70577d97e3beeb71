"""Recovery after assignment: where each newly assigned partition resumes, and the recorded ranges rebuilt first.

A partition resumes from the consumer group's committed offset; a range recorded there is rebuilt exactly, a
recorded group insert is settled across all its partitions, and a partition without a committed offset starts after
what the store already holds from it. The protocol is described in docs/sink.md.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

from kafka import KafkaConsumer, TopicPartition
from kafka.errors import KafkaError
from kafka.structs import OffsetAndMetadata

from ..settings import Settings
from ..store import Store
from .batch import Batch, DeliveryError, TokenScope, insert_batches
from .batcher import Batcher, PartitionState
from .codec import RecordedRange, decode_group_insert, decode_pending
from .commits import OffsetCommitter
from .dead_letters import DeadLetterPublisher
from .retry import backoff_s, retrying
from .stats import SinkFigures

logger = logging.getLogger(__name__)
_T = TypeVar("_T")

# Reading back the recorded ranges of a group insert (after a crash or a rebalance) gives up after this long.
READ_BACK_TIMEOUT_S = 60.0


class Recovery:
    """Sets up the partitions a rebalance assigned to the sink.

    Args:
        batcher: receives a fresh :class:`PartitionState` per assigned partition.
        scope: names the tokens.
        consumer: the sink's consumer (sought to where each partition resumes).
        committer: reads committed offsets and settles recorded group inserts.
        store: the store (what it holds already; where rebuilt group inserts go).
        dead_letters: sends the dead letters of rebuilt group inserts.
        figures: counts the rebuilt batches.
        settings: the consumer group and the broker.
        fetch_config: kafka-python options of a consumer-group-less reader of recorded ranges of any partition.
        stop: set when the sink is asked to stop: retries give up.
        from_beginning: a partition without a committed offset replays the log from its start.
        retry_max_s: cap of the backoff.
    """

    def __init__(
        self,
        batcher: Batcher,
        scope: TokenScope,
        *,
        consumer: Any,
        committer: OffsetCommitter,
        store: Store,
        dead_letters: DeadLetterPublisher,
        figures: SinkFigures,
        settings: Settings,
        fetch_config: Mapping[str, Any],
        stop: threading.Event,
        from_beginning: bool = False,
        retry_max_s: float = 5.0,
    ) -> None:
        self.batcher = batcher
        self.scope = scope
        self.consumer = consumer
        self.committer = committer
        self.store = store
        self.dead_letters = dead_letters
        self.figures = figures
        self.settings = settings
        self.fetch_config = dict(fetch_config)
        self.stop = stop
        self.from_beginning = from_beginning
        self.retry_max_s = retry_max_s

    def _retrying(self, what: str, fn: Callable[[], _T]) -> _T:
        return retrying(what, fn, settings=self.settings, stop=self.stop, retry_max_s=self.retry_max_s)

    def assign(self, tps: list[TopicPartition]) -> list[int]:
        """Start the partitions ``tps``; returns those started (a partition whose recorded group insert could not be
        settled stays paused and out of the batcher)."""
        consumer = self.consumer
        epoch = self.scope.epoch
        committed_of = {tp.partition: self.committer.committed(tp) for tp in tps}
        group_inserts: dict[tuple[RecordedRange, ...], list[int]] = {}
        for tp in tps:
            c = committed_of[tp.partition]
            ranges = decode_group_insert(c.metadata if c is not None else None, epoch)
            if (
                ranges is not None
                and c is not None
                and any(r.partition == tp.partition and r.first == c.offset for r in ranges)
            ):
                group_inserts.setdefault(ranges, []).append(tp.partition)  # recorded by a group insert's pre-commit
        resume: dict[int, int | None] = {}
        for ranges, own in group_inserts.items():
            resume.update(self.resolve_group_insert(ranges, own, committed_of))
        starts = self.start_offsets([tp for tp in tps if (c := committed_of[tp.partition]) is None or c.offset < 0])
        started: list[int] = []
        for tp in tps:
            committed = committed_of[tp.partition]
            offset = committed.offset if committed is not None and committed.offset >= 0 else None
            replay = decode_pending(committed.metadata if committed is not None else None, epoch)
            if tp.partition in resume:
                offset, replay = resume[tp.partition], None
                if offset is None:
                    # The group insert could not be settled (stopping, or the consumer group moved on): hold the
                    # partition uncommitted; its next owner settles the recorded group insert again.
                    consumer.pause(tp)
                    continue
            if replay is not None and offset is not None and replay[1] < offset:
                replay = None  # stale: the range is below the committed offset
            if offset is None:
                offset = starts.get(tp.partition)  # after what the store holds (not committed until stored)
            self.batcher.replace(PartitionState(tp, offset, replay))
            started.append(tp.partition)
            # kafka-python keeps the fetch position (and pause flag) of a partition that stays assigned across a
            # rebalance; the records read past the committed offset were dropped with the old state, so fetch again
            # from the committed offset (or the log start, as auto_offset_reset='earliest' would).
            if offset is not None:
                consumer.seek(tp, offset)
            else:
                consumer.seek_to_beginning(tp)
            if replay is not None:
                logger.info("partition %d: rebuilding recorded batch %d-%d", tp.partition, *replay)
        return started

    def start_offsets(self, tps: list[TopicPartition]) -> dict[int, int]:
        """Where the partitions ``tps``, which have no committed offset for the consumer group, start; absent: the
        log start.

        A new group id, or a consumer group whose offsets expired (Kafka drops them after
        ``offsets.retention.minutes``, 7 days by default, of the group being empty), would otherwise read the
        retained log from its start and store it again under its own tokens. So a partition starts after the
        highest offset already stored from it in ``events`` or ``dead_letters`` — unless ``from_beginning`` asks for
        a replay.

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
        consumer, store = self.consumer, self.store
        database = self.scope.database
        stored = self._retrying(
            "reading the offsets stored in ClickHouse", lambda: store.stored_offsets(self.scope.topic)
        )
        beginning = self._retrying("reading the partitions' log start", lambda: consumer.beginning_offsets(tps))
        end = self._retrying("reading the partitions' end", lambda: consumer.end_offsets(tps))
        out: dict[int, int] = {}
        for tp in tps:
            last = stored.get(tp.partition)
            where = f"partition {tp.partition}: no committed offset for group {group}"
            if last is None:
                logger.info("%s and nothing stored from it in %s: starting at the log start", where, database)
            elif last >= end[tp] or (last >= beginning[tp] and not self._stored_from_this_log(tp.partition, last)):
                # A re-created topic: starting after `last` would skip its records up to there.
                logger.warning(
                    "%s; %s holds offsets up to %d, but not from this topic's log (it ends at %d%s): starting at the "
                    "log start",
                    where,
                    database,
                    last,
                    end[tp],
                    "" if last >= end[tp] else f", and holds another record at {last}",
                )
            else:
                out[tp.partition] = max(last + 1, beginning[tp])
                logger.warning(
                    "%s; %s already holds offsets up to %d: starting at %d (--from-beginning would replay the log)",
                    where,
                    database,
                    last,
                    out[tp.partition],
                )
        return out

    def _stored_from_this_log(self, partition: int, offset: int) -> bool:
        """Whether a record stored for ``partition``/``offset`` is the one the topic holds there now."""
        store = self.store
        stored = self._retrying(
            "reading a stored record", lambda: store.stored_records(self.scope.topic, partition, offset)
        )
        try:
            batches = self.read_back([RecordedRange(partition, offset, offset)])
        except DeliveryError as exc:
            logger.warning("partition %d: %s — trusting the stored offset %d", partition, exc, offset)
            return True
        if not batches:
            return False
        b = batches[0]
        kafka = (str(b.rows[0][0]), b.kafka_ms[0]) if b.rows else (b.dead[0][0].hex(), b.dead[0][4])
        return (kafka[0].lower(), kafka[1]) in stored

    def resolve_group_insert(
        self,
        ranges: tuple[RecordedRange, ...],
        own: list[int],
        committed_of: Mapping[int, OffsetAndMetadata | None],
    ) -> dict[int, int | None]:
        """Settle a group insert recorded on the partitions ``own`` of this sink; returns where each resumes.

        The group insert's pre-commit named it on each of its partitions in one offset commit (Kafka appends a
        commit to the consumer group's log at once), and the insert ran only after that commit succeeded, so:

        * some partition of it neither names the group insert nor is past its range: the pre-commit never completed
          and nothing of it is in the store — the record is cleared and ``own`` resume from their offsets;
        * otherwise the group insert may be in the store: it is rebuilt whole, including ranges of partitions owned
          by other consumers (read back with a consumer-group-less consumer), and inserted under its token —
          ClickHouse drops it if it is there — then ``own`` are committed past their ranges. Every owner of one of
          its partitions does the same; the first insert counts, the others are dropped.

        None for a partition: not settled (stopping, or this consumer was fenced); it stays paused and uncommitted.
        """
        topic = self.scope.topic
        committed = {
            r.partition: committed_of[r.partition]
            if r.partition in committed_of
            else self.committer.committed(TopicPartition(topic, r.partition))
            for r in ranges
        }
        past = [r for r in ranges if (c := committed[r.partition]) is not None and c.offset > r.last]
        naming = [
            r
            for r in ranges
            if (c := committed[r.partition]) is not None
            and c.offset == r.first
            and decode_group_insert(c.metadata, self.scope.epoch) == ranges
        ]
        mine = [r for r in ranges if r.partition in own]
        token = self.scope.group_insert_token(ranges)
        complete = len(past) + len(naming) == len(ranges)
        if past and complete:
            logger.info("group insert %s: already settled on %d of its %d partitions", token, len(past), len(ranges))
        attempt = 0
        while not self.stop.is_set():
            try:
                if complete:
                    batches = self.read_back(ranges)
                    insert_batches(self.store, batches, token)
                    self.dead_letters.send(batches)
                    self.figures.rebuilt(b for b in batches if b.partition in own)
                    logger.info("partitions %s: rebuilt recorded group insert %s", own, token)
                    self.committer.commit(
                        {TopicPartition(topic, r.partition): OffsetAndMetadata(r.last + 1, "", -1) for r in mine}
                    )
                    return {r.partition: r.last + 1 for r in mine}
                logger.info(
                    "partitions %s: group insert %s was never made; resuming from the committed offsets", own, token
                )
                self.committer.commit(
                    {TopicPartition(topic, r.partition): OffsetAndMetadata(r.first, "", -1) for r in mine}
                )
                return {r.partition: r.first for r in mine}
            except DeliveryError as exc:
                if exc.fenced:
                    logger.warning("%s — leaving group insert %s to the partitions' next owner", exc, token)
                    break
                attempt += 1
                delay = backoff_s(attempt, cap_s=self.retry_max_s)
                logger.warning("%s — retrying group insert %s in %.2f s (attempt %d)", exc, token, delay, attempt)
                self.stop.wait(delay)
        return {r.partition: None for r in mine}

    def read_back(self, ranges: Sequence[RecordedRange]) -> list[Batch]:
        """The recorded ``ranges`` read again from Kafka and validated as batches (any partitions)."""
        topic = self.scope.topic
        tps = {r.partition: TopicPartition(topic, r.partition) for r in ranges}
        batches = {r.partition: self.scope.new_batch(r.partition, time.monotonic()) for r in ranges}
        try:
            reader = KafkaConsumer(**self.fetch_config)
        except KafkaError as exc:
            raise DeliveryError(f"cannot read back recorded ranges ({type(exc).__name__}: {exc})") from exc
        try:
            reader.assign(list(tps.values()))
            for r in ranges:
                reader.seek(tps[r.partition], r.first)
            todo = {r.partition: r for r in ranges}
            deadline = time.monotonic() + READ_BACK_TIMEOUT_S
            while todo:
                if time.monotonic() > deadline or self.stop.is_set():
                    raise DeliveryError(f"reading back recorded ranges {sorted(todo.values())} did not finish")
                for tp, recs in reader.poll(timeout_ms=500).items():
                    want = todo.get(tp.partition)
                    if want is not None:
                        batches[want.partition].add_records([x for x in recs if want.first <= x.offset <= want.last])
                for p, r in list(todo.items()):
                    if reader.position(tps[p]) > r.last:  # read up to the range's end (it may end in a gap)
                        reader.pause(tps[p])
                        del todo[p]
        except KafkaError as exc:
            raise DeliveryError(f"reading back recorded ranges failed ({type(exc).__name__}: {exc})") from exc
        finally:
            reader.close(autocommit=False)
        out = [batches[r.partition] for r in ranges if len(batches[r.partition])]
        for r in ranges:
            b = batches[r.partition]
            if (b.first, b.last) != (r.first, r.last):
                logger.warning("recorded range %s read back as %d-%d (records deleted?)", r, b.first, b.last)
        return out
