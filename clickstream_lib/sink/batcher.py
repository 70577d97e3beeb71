"""The batcher: polled records into each assigned partition's batches, sealed by rows, bytes, time or a recorded
range's end."""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from kafka import TopicPartition

from .batch import Batch, TokenScope
from .stats import SinkFigures

logger = logging.getLogger(__name__)


class PartitionState:
    """One assigned partition: its open batch, the sealed batches waiting for the store, its committed offset.

    Args:
        tp: the partition.
        committed: the consumer group's committed offset (None: none yet).
        replay: a recorded range to rebuild exactly before normal batching resumes.
    """

    def __init__(self, tp: TopicPartition, committed: int | None, replay: tuple[int, int] | None) -> None:
        self.tp = tp
        self.committed = committed
        self.replay = replay
        self.open: Batch | None = None
        self.sealed: deque[Batch] = deque()
        self.next_offset = committed if committed is not None else -1

    def __len__(self) -> int:
        """Records held in batches (sealed and open)."""
        return sum(len(b) for b in self.sealed) + (len(self.open) if self.open is not None else 0)


class Highwaters(Protocol):
    def highwater(self, tp: TopicPartition) -> int | None: ...


class Batcher:
    """The assigned partitions (:attr:`states`, by partition number) and their batches.

    Args:
        scope: names the batches' tokens.
        figures: counts the records taken.
        batch_max_rows: records per batch (valid + invalid) before it is sealed.
        batch_max_bytes: bytes of values at which a batch is sealed (at the record that reaches it).
        batch_max_wait_s: how long the first record of a batch may wait before the batch is sealed.
    """

    def __init__(
        self,
        scope: TokenScope,
        figures: SinkFigures,
        *,
        batch_max_rows: int,
        batch_max_bytes: int,
        batch_max_wait_s: float,
    ) -> None:
        self.scope = scope
        self.figures = figures
        self.batch_max_rows = batch_max_rows
        self.batch_max_bytes = batch_max_bytes
        self.batch_max_wait_s = batch_max_wait_s
        self.states: dict[int, PartitionState] = {}
        # Records taken into batches that a rebalance or rewind then dropped uncommitted: they no longer count
        # towards run(max_events=...), which must store exactly that many (see dropped_records).
        self._dropped = 0

    def take(self, state: PartitionState, records: Sequence[Any], now: float, limit: int | None = None) -> int:
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
                    self.seal(state)  # the recorded range ended in a gap: what follows is a new batch
                else:
                    batch = state.open
                    if batch is None:
                        batch = state.open = self.scope.new_batch(state.tp.partition, now)
                    batch.add_records((r,))
                    state.next_offset = offset + 1
                    n += 1
                    if offset >= state.replay[1]:
                        self.seal(state)
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
                batch = state.open = self.scope.new_batch(state.tp.partition, now)
            room = self.batch_max_rows - len(batch)
            if limit is not None:
                room = min(room, limit - n)
            run = records[i : i + room]
            taken = batch.add_records(run, self.batch_max_bytes)
            i += taken
            n += taken
            state.next_offset = run[taken - 1].offset + 1
            if len(batch) >= self.batch_max_rows or batch.nbytes >= self.batch_max_bytes:
                self.seal(state)
        self.figures.consumed_records(n)
        return n

    def take_replays(self, records: Mapping[TopicPartition, Sequence[Any]], now: float) -> None:
        """Take only what rebuilds the recorded ranges still open (on a stop); other records are read again later."""
        for tp, recs in records.items():
            state = self.states.get(tp.partition)
            if state is not None and state.replay is not None:
                self.take(state, recs, now, limit=0)

    def seal(self, state: PartitionState) -> None:
        """Close the open batch (its range is final) and queue it for the store."""
        if state.open is not None and len(state.open):
            replaying = state.replay is not None
            state.sealed.append(state.open)
            if replaying:
                state.open.replayed = True
                logger.info("rebuilt recorded batch %s", state.open.token)
        state.open = None
        state.replay = None

    def due_at(self, b: Batch, now: float, wall: float) -> float:
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

    def next_due_in(self, now: float, wait: float) -> float:
        """Seconds until the first open batch is due (recorded ranges excepted), at most ``wait``."""
        wall = time.time()
        for s in self.states.values():
            if s.open is not None and s.replay is None:
                wait = min(wait, self.due_at(s.open, now, wall) - now)
        return wait

    def seal_due(self, now: float, force: bool = False) -> None:
        """Seal the open batches that are due (all with ``force``); a recorded range is rebuilt whole, however long
        it takes to fetch."""
        wall = time.time()
        for state in self.states.values():
            b = state.open
            if b is None or state.replay is not None:
                continue
            if force or now >= self.due_at(b, now, wall):
                self.seal(state)

    def seal_for_stop(self) -> None:
        """Seal every open batch; an incomplete recorded range is dropped uncommitted (the next run rebuilds it)."""
        for state in self.states.values():
            if state.replay is not None:
                state.open = None
                state.replay = None
            else:
                self.seal(state)

    def busy(self) -> bool:
        """Some partition holds records not yet stored."""
        return any(s.open is not None or s.sealed for s in self.states.values())

    def any_sealed(self) -> bool:
        return any(s.sealed for s in self.states.values())

    def replaying(self) -> bool:
        """Some partition is rebuilding a recorded range."""
        return any(s.replay is not None for s in self.states.values())

    def store_behind(self) -> bool:
        """Backpressure: a partition has a batch waiting behind the one being inserted.

        The loop then waits for the insert instead of reading on. (Pausing the partition instead stalls it:
        kafka-python 3.0.12 can leave a paused partition's already-parsed records parked for good, see
        :func:`clickstream_lib.kafka_compat.consumer.unpark_resumed_records`.)
        """
        return any(len(s.sealed) >= 2 for s in self.states.values())

    def kafka_behind(self, consumer: Highwaters) -> bool:
        """At least a full batch of records is waiting in Kafka (as of the last fetch): reading is the bottleneck."""
        waiting = 0
        for s in self.states.values():
            hw = consumer.highwater(s.tp)
            if hw is not None:
                waiting += hw - max(s.next_offset, 0)
        return waiting >= self.batch_max_rows

    def lag(self, consumer: Highwaters) -> dict[int, int]:
        """High watermark minus committed offset, of each partition whose high watermark is known."""
        lag: dict[int, int] = {}
        for p, state in self.states.items():
            hw = consumer.highwater(state.tp)
            if hw is None:
                continue
            base = state.committed if state.committed is not None else 0
            lag[p] = max(0, hw - base)
        return lag

    def drop(self, partition: int) -> PartitionState | None:
        """Forget a partition with its batches, uncommitted; its records no longer count as taken."""
        state = self.states.pop(partition, None)
        if state is not None:
            self._dropped += len(state)
        return state

    def replace(self, state: PartitionState) -> None:
        """Start a partition afresh (dropping what an earlier state of it held)."""
        self.drop(state.tp.partition)
        self.states[state.tp.partition] = state

    def drop_all(self) -> list[TopicPartition]:
        """Forget every partition (see :meth:`drop`); returns them."""
        tps = [s.tp for s in self.states.values()]
        for p in list(self.states):
            self.drop(p)
        return tps

    def dropped_records(self) -> int:
        """Records dropped uncommitted since the last call (:meth:`drop`); the loop's ``taken`` excludes them.

        A rebalance that revokes a partition, or re-assigns one that stays (its state is rebuilt from the committed
        offset), drops the records read past that offset; the partition's next owner, or this sink, reads them
        again. Counted as taken, they would end ``run(max_events=n)`` with fewer than ``n`` records stored.
        """
        n, self._dropped = self._dropped, 0
        return n

    def unstored(self) -> int:
        """Records in sealed batches (what a stop deadline leaves uncommitted)."""
        return sum(len(b) for s in self.states.values() for b in s.sealed)
