"""Delivery: rounds of sealed batches pre-committed, inserted on the insert thread, then post-committed; failures
retried with backoff. The protocol is described in docs/sink.md."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import Executor, Future
from typing import Protocol

from kafka import TopicPartition
from kafka.structs import OffsetAndMetadata

from ..errors import SinkError
from .batch import Batch, BatchInfo, BatchStore, DeliveryError, TokenScope, insert_batches
from .batcher import Batcher
from .codec import encode_group_insert, encode_pending
from .commits import OffsetCommitter
from .dead_letters import DeadLetterPublisher
from .retry import backoff_s
from .stats import SinkFigures

logger = logging.getLogger(__name__)

# At most this many partitions' batches go into one insert (their ranges, ~25 bytes each, are the commit metadata of
# each of its partitions; Kafka's offset.metadata.max.bytes is 4096 by default).
GROUP_MAX_BATCHES = 64


class Pausable(Protocol):
    def pause(self, *tps: TopicPartition) -> None: ...

    def resume(self, *tps: TopicPartition) -> None: ...


class Delivery:
    """Stores and commits the sealed batches of a :class:`Batcher`, a round at a time.

    A round takes the oldest sealed batch of every partition (sealing the open ones): with ``group_max_batches`` > 1
    and more than one batch it is a *group insert* (one insert, one token naming every range), else each batch goes
    under its own token. The insert runs on ``inserter`` while the sink's thread polls; everything Kafka stays on
    the sink's thread.

    Args:
        batcher: the partitions and their batches.
        scope: names the tokens.
        store: where the batches go.
        consumer: paused while delivery fails, resumed once it succeeds.
        committer: pre- and post-commits.
        dead_letters: sends the rounds' dead letters to the dead-letter topic.
        inserter: runs the inserts, one round at a time.
        figures: the live figures.
        rewind: called when a commit is refused by the consumer group (fenced): forget the batches, fetch again.
        group_max_batches: how many batches one insert may hold (halved when the broker refuses a group's record).
        retry_max_s: cap of the backoff.
        on_batch_stored: called after a batch is in ClickHouse and before its offsets are committed.
    """

    def __init__(
        self,
        batcher: Batcher,
        scope: TokenScope,
        *,
        store: BatchStore,
        consumer: Pausable,
        committer: OffsetCommitter,
        dead_letters: DeadLetterPublisher,
        inserter: Executor,
        figures: SinkFigures,
        rewind: Callable[[], None],
        group_max_batches: int = GROUP_MAX_BATCHES,
        retry_max_s: float = 5.0,
        on_batch_stored: Callable[[BatchInfo], None] | None = None,
    ) -> None:
        self.batcher = batcher
        self.scope = scope
        self.store = store
        self.consumer = consumer
        self.committer = committer
        self.dead_letters = dead_letters
        self.inserter = inserter
        self.figures = figures
        self._rewind = rewind
        self.group_max_batches = group_max_batches
        self.retry_max_s = retry_max_s
        self._on_batch_stored = on_batch_stored
        # The round of batches being inserted by the insert thread, and its future (see start_round).
        self.inflight: tuple[list[Batch], Future[None]] | None = None
        # The batches of the round being delivered: once tried, a round is retried with exactly these batches (a
        # group insert's token names them all; another set under a new token would store the stored ones again).
        self.round: list[Batch] | None = None
        self._round_precommitted = False
        self.retry_at = 0.0
        self._attempt = 0
        self._paused_for_failure = False

    def busy(self) -> bool:
        """A round is being inserted."""
        return self.inflight is not None

    def deliver_round(self) -> bool:
        """Store and commit the oldest sealed batch of every partition, waiting for it; True on success."""
        if self.inflight is None:
            self.start_round()
        if self.inflight is None:
            return False  # the pre-commit failed
        return self.finish_round()

    def start_round(self) -> None:
        """Pre-commit the oldest sealed batch of every partition and hand the batches to the insert thread.

        The insert runs while the sink's thread polls and validates the next records: chdb and the HTTP driver
        release the GIL in the engine / on the socket, which is most of an insert. Everything Kafka (pre- and
        post-commit, dead-letter topic) stays on the sink's thread, and :meth:`finish_round` commits only after the
        insert returned.
        """
        assert self.inflight is None
        if self.round is None:
            self.round = self.compose_round()
            self._round_precommitted = False
        batches = self.round
        topic = self.scope.topic
        epoch = self.scope.epoch
        try:
            if self.grouped(batches):
                if not self._round_precommitted:
                    meta = encode_group_insert(epoch, [b.range for b in batches])
                    self.committer.commit(
                        {TopicPartition(topic, b.partition): OffsetAndMetadata(b.first, meta, -1) for b in batches}
                    )
                    self._round_precommitted = True
            else:
                pre = {
                    TopicPartition(topic, b.partition): OffsetAndMetadata(
                        b.first, encode_pending(epoch, b.first, b.last), -1
                    )
                    for b in batches
                    if not b.precommitted
                }
                if pre:
                    self.committer.commit(pre)
                    for b in batches:
                        b.precommitted = True
        except DeliveryError as exc:
            if exc.metadata_too_large and self.grouped(batches) and not self._round_precommitted:
                # Nothing was recorded, so nothing was inserted: the batches may go in smaller groups.
                self.group_max_batches = max(1, len(batches) // 2)
                self.round = None
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
        self.inflight = (batches, self.inserter.submit(self._store_batches, batches))

    def compose_round(self) -> list[Batch]:
        """The next round: every partition's oldest sealed batch (open ones are sealed to join it), by partition.

        Sealing the open batches here makes a round hold every partition that has records, so following a live
        stream costs one insert a round instead of one per partition (an insert's fixed cost in the engine — the
        views, their parts and merges — is most of the work at a few thousand rows per partition and second).
        """
        states = self.batcher.states
        if self.group_max_batches == 1:  # each batch its own insert, one after the other
            return [s.sealed[0] for s in states.values() if s.sealed]
        for state in states.values():
            if state.replay is None and not state.sealed:
                self.batcher.seal(state)
        sealed = sorted((s for s in states.values() if s.sealed), key=lambda s: s.tp.partition)
        oldest = [s.sealed[0] for s in sealed]
        # A rebuilt recorded batch may already be in the store under its own token: it is inserted alone, with it.
        replayed = [b for b in oldest if b.replayed]
        if replayed:
            return replayed[:1]
        round_: list[Batch] = []
        nbytes = 0
        for b in oldest[: self.group_max_batches]:
            if round_ and nbytes + b.nbytes > self.batcher.batch_max_bytes:
                break  # one insert holds at most batch_max_bytes of values (or one batch)
            round_.append(b)
            nbytes += b.nbytes
        return round_

    def grouped(self, batches: list[Batch]) -> bool:
        """Whether the round's batches go to the store as one group insert (else each under its own token)."""
        return self.group_max_batches > 1 and len(batches) > 1

    def _store_batches(self, batches: list[Batch]) -> None:
        """The insert thread's work: only the store and the batches' stored flags, nothing of Kafka."""
        if self.grouped(batches):
            insert_batches(self.store, batches, self.scope.group_insert_token([b.range for b in batches]))
        else:
            for b in batches:
                insert_batches(self.store, [b], b.token)

    def abandon_inflight(self) -> None:
        """Forget the running round, uncommitted, without waiting for its insert.

        Its ranges are recorded (pre-committed), so whoever owns the partitions next rebuilds them with the same
        tokens and ClickHouse drops what this insert stored. The insert thread runs one round at a time, so a later
        round of this sink is inserted only after this one ended, and closing the sink waits for it.
        """
        self.round = None
        if self.inflight is None:
            return
        batches, future = self.inflight
        self.inflight = None
        tokens = ", ".join(b.token for b in batches)

        def ended(f: Future[None]) -> None:
            exc = f.exception()
            logger.info("abandoned insert round %s ended%s; left uncommitted", tokens, f" with {exc}" if exc else "")

        future.add_done_callback(ended)

    def finish_round(self) -> bool:
        """After the insert thread returned: dead-letter topic, hook, post-commit, figures; True on success."""
        assert self.inflight is not None
        batches, future = self.inflight
        self.inflight = None
        states = self.batcher.states
        try:
            future.result()
            self.dead_letters.send(batches)
            if self._on_batch_stored is not None:
                token = self.scope.group_insert_token([b.range for b in batches]) if self.grouped(batches) else None
                for b in batches:
                    self._on_batch_stored(b.info(token))
            post: dict[TopicPartition, OffsetAndMetadata] = {}
            for b in batches:
                state = states[b.partition]
                nxt = state.sealed[1] if len(state.sealed) > 1 else None
                meta = encode_pending(self.scope.epoch, nxt.first, nxt.last) if nxt is not None else ""
                post[state.tp] = OffsetAndMetadata(b.last + 1, meta, -1)
            self.committer.commit(post)
        except DeliveryError as exc:
            self._round_failed(exc)
            return False
        self.round = None
        ack = time.time() * 1000
        now = time.monotonic()
        for b in batches:
            state = states[b.partition]
            state.sealed.popleft()
            state.committed = b.last + 1
            if state.sealed:
                state.sealed[0].precommitted = True  # its range went out with the post-commit above
        self._recovered()
        self.figures.acknowledged(batches, ack, now)
        return True

    def _round_failed(self, exc: DeliveryError) -> None:
        if exc.metadata_too_large:
            # A single range's record (~50 bytes) does not fit: no commit of this sink can succeed.
            raise SinkError(
                f"{exc} even for a single batch; raise offset.metadata.max.bytes on the brokers (Kafka's default is "
                "4096)"
            ) from exc
        if exc.fenced:
            logger.warning("%s — abandoning uncommitted batches; the partitions' next owner rebuilds them", exc)
            self.round = None
            self._rewind()
        else:
            self._failed(str(exc))

    def _failed(self, message: str) -> None:
        self._attempt += 1
        delay = backoff_s(self._attempt, cap_s=self.retry_max_s)
        self.retry_at = time.monotonic() + delay
        logger.warning("%s — retrying in %.2f s (attempt %d), partitions paused", message, delay, self._attempt)
        if self.batcher.states:
            self.consumer.pause(*[s.tp for s in self.batcher.states.values()])
            self._paused_for_failure = True
        self.figures.retrying(message)

    def _recovered(self) -> None:
        if self._attempt:
            logger.info("delivery recovered after %d failed attempts", self._attempt)
        self._attempt = 0
        self.retry_at = 0.0
        if self._paused_for_failure:
            self.consumer.resume(*[s.tp for s in self.batcher.states.values()])
            self._paused_for_failure = False
            self.figures.error(None)

    def resumed(self) -> None:
        """A rebalance resumed every partition (no longer paused for a failure)."""
        self._paused_for_failure = False
