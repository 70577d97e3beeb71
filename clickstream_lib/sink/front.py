"""The :class:`Sink` front: a consumer-group member that runs the loop and hands the work to its parts.

It creates, on each run, a :class:`~.batcher.Batcher` (records into batches), a :class:`~.delivery.Delivery` (rounds
of inserts and commits), a :class:`~.recovery.Recovery` (where assigned partitions resume) and their helpers, like
kafka-python's ``KafkaConsumer`` builds its fetcher and coordinator. The protocol is described in docs/sink.md.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.consumer.subscription_state import ConsumerRebalanceListener
from kafka.errors import FencedInstanceIdError, KafkaError

from .. import topics
from ..errors import BrokerUnavailable
from ..kafka_compat import record_decoder
from ..kafka_compat.consumer import JOIN_POLL_MS, crc32c_accelerated, join_in_progress, unpark_resumed_records
from ..settings import Settings
from ..store import Store, connect
from .batch import BatchInfo, TokenScope
from .batcher import Batcher
from .commits import OffsetCommitter
from .dead_letters import DeadLetterPublisher
from .delivery import GROUP_MAX_BATCHES, Delivery
from .memory import PollSizer, relaxed_gc
from .recovery import Recovery
from .retry import DEFAULT_RETRY_MAX_S, backoff_s
from .startup import await_partitions, check_dedup, consumer_configs, topic_epoch, warn_undeduplicated_views
from .stats import SinkFigures, SinkStats

logger = logging.getLogger(__name__)

# Chosen by bench/consume.py: 20k-row inserts reach the engine's bulk rate while a 1 s wait keeps p99 latency
# within the flush interval + 0.5 s at low rates.
DEFAULT_BATCH_MAX_ROWS = 20_000
# The bytes (message values) a batch, and a round's insert, may hold: what bounds the sink's memory when messages are
# large (a 20 000-row batch of 64 KiB values would hold 1.3 GB). 64 MiB is ~200 000 live events, so it never cuts a
# batch of ordinary events.
DEFAULT_BATCH_MAX_BYTES = 64 * 1024 * 1024
DEFAULT_BATCH_MAX_WAIT_S = 1.0
DEFAULT_STOP_TIMEOUT_S = 30.0
# until_idle waits at most this long for a first assignment (a consumer group waiting for a dead member's session).
JOIN_GRACE_S = 60.0
# How long one poll() may wait while the insert thread works: its result is committed on the next loop turn.
INFLIGHT_POLL_S = 0.005
# While no broker answers at start: the first retry after 1 s, then doubling up to this.
BROKER_WAIT_BACKOFF_MAX_S = 15.0


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
        from_beginning: a partition without a committed offset for the consumer group starts at the log start (a
            replay) instead of after the highest offset already stored from it (see
            :meth:`~.recovery.Recovery.start_offsets`). Partitions with a committed offset always resume from it.
        broker_wait_s: how long :meth:`run` waits at start for a broker that does not answer (retrying with
            backoff, logging what it waits for); None: until it answers or the sink is stopped. A broker that
            answers but refuses the security settings fails at once.

    Over 400 lines for a reason: it owns the consumer's thread — the poll loop, the rebalance queue, the drain at a
    stop — which kafka-python requires to stay on one thread; the work itself is in its parts.

    Example:
        >>> sink = Sink(Settings.from_env())
        >>> sink.start()            # a daemon thread; sink.stats() gives live figures
        >>> sink.stop()             # finishes the open batches, commits, leaves the consumer group
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
        broker_wait_s: float | None = None,
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
        self.batch_max_wait_s = batch_max_wait_s
        self.retry_max_s = retry_max_s
        self.instance_id = instance_id
        self._consumer_config = dict(consumer_config or {})
        self._on_batch_stored = on_batch_stored
        self._group_max_batches = group_max_batches
        self.from_beginning = from_beginning
        if broker_wait_s is not None and broker_wait_s < 0:
            raise ValueError(f"broker_wait_s must be >= 0 or None, got {broker_wait_s}")
        self.broker_wait_s = broker_wait_s
        self._store = store
        self.database = store.database if store is not None else settings.database  # named by the tokens
        self._owns_store = store is None
        self._poll_sizer = PollSizer(batch_max_rows, batch_max_bytes)
        self._figures = SinkFigures()
        self._consumer: KafkaConsumer | None = None
        self._producer: KafkaProducer | None = None
        self._inserter: ThreadPoolExecutor | None = None
        self.epoch = ""
        # The parts of a run, made by _open.
        self._batcher: Batcher | None = None
        self._delivery: Delivery | None = None
        self._recovery: Recovery | None = None
        self._committer: OffsetCommitter | None = None
        self._rebalances: list[tuple[str, set[TopicPartition]]] = []
        self._rebalance_lock = threading.Lock()
        self._joined = False
        self._fresh: set[int] = set()  # partitions (re)assigned during the current poll
        self._stop = threading.Event()
        self._stop_deadline: float | None = None
        self._thread: threading.Thread | None = None

    @property
    def group_max_batches(self) -> int:
        """How many batches one insert may hold now (smaller after the broker refused a group insert's record)."""
        return self._delivery.group_max_batches if self._delivery is not None else self._group_max_batches

    # --- public API ---------------------------------------------------------------------------------------------

    def run(self, until_idle: float | None = None, max_events: int | None = None) -> SinkStats:
        """Consume until stopped; blocks. Returns the final figures.

        Args:
            until_idle: return once no record arrived for this many seconds and everything read is committed.
            max_events: return after exactly this many records (rows + dead letters) are stored and committed.

        Raises:
            BrokerUnavailable: Kafka could not be reached within ``broker_wait_s`` (by default it waits until it
                answers; a stop request while waiting returns at once).
            KafkaSecurityError: the broker refused the TLS/SASL settings.
            StoreError: ClickHouse cannot be opened, or its tables would ignore deduplication tokens.
        """
        figures = self._figures
        if threading.current_thread() is not self._thread:
            self._stop.clear()  # a blocking run after an earlier stop(); start() clears it for its own thread
            self._stop_deadline = None
        with figures.lock:
            figures.running = True
            figures.last_error = None
            figures.started = time.monotonic()
        try:
            try:
                if self._open():
                    with relaxed_gc():
                        self._loop(until_idle, max_events)
                        self._drain()
            finally:
                self._close()
        except BaseException as exc:
            figures.error(f"{type(exc).__name__}: {exc}")
            raise
        finally:
            with figures.lock:
                figures.running = False
        return self.stats()

    def start(self, until_idle: float | None = None, max_events: int | None = None) -> Sink:
        """Run in a daemon thread (for notebooks); errors end up in ``stats().last_error``."""
        if self._thread and self._thread.is_alive():
            return self
        self._stop.clear()
        self._stop_deadline = None
        with self._figures.lock:
            self._figures.running = True  # so a caller polling stats() right after start() sees it running

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
        with self._figures.lock:
            return self._figures.running

    def stats(self) -> SinkStats:
        """Live figures; cheap and thread-safe (the workbench polls it)."""
        return self._figures.snapshot()

    # --- start-up / shutdown ------------------------------------------------------------------------------------

    def _open(self) -> bool:
        """Open the store, then Kafka (waiting for a broker); False if the sink was stopped while it waited."""
        if not crc32c_accelerated():
            logger.warning("the crc32c package is missing: kafka-python checks record CRCs in pure Python (slow)")
        if self._store is None:
            self._store = connect(self.settings)
            self._owns_store = True
        store = self._store
        self.database = store.database
        check_dedup(store)
        warn_undeduplicated_views(store)
        fetch_config = self._await_kafka()
        if fetch_config is None:
            return False
        assert self._consumer is not None
        self._inserter = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"clickstream-sink-insert-{self.topic}")
        self._make_parts(fetch_config)
        await_partitions(self._consumer, self.topic)
        self._consumer.subscribe([self.topic], listener=_Listener(self))
        logger.info(
            "sink %s -> %s.events: group %s, epoch %s, batches of <= %d rows / %d MiB / %.2f s",
            self.topic,
            store.database,
            self.settings.kafka_group_id,
            self.epoch,
            self.batch_max_rows,
            self.batch_max_bytes // (1024 * 1024),
            self.batch_max_wait_s,
        )
        return True

    def _await_kafka(self) -> dict[str, Any] | None:
        """:meth:`_open_kafka`, retried with backoff while no broker answers (a broker started after the sink, or
        restarting). Returns the fetch config; None if the sink was stopped while waiting.

        Raises:
            BrokerUnavailable: still no broker after ``broker_wait_s``.
            KafkaSecurityError: the broker answered but refused the security settings (waiting cannot fix that).
        """
        started = time.monotonic()
        attempt = 0
        while True:
            try:
                fetch_config = self._open_kafka()
            except (BrokerUnavailable, KafkaError) as exc:
                if isinstance(exc, KafkaError) and not exc.retriable:
                    raise
                waited = time.monotonic() - started
                if self.broker_wait_s is not None and waited >= self.broker_wait_s:
                    if isinstance(exc, BrokerUnavailable):
                        raise
                    raise topics.unreachable(self.settings, exc) from exc
                attempt += 1
                delay = backoff_s(attempt, base_s=1.0, cap_s=BROKER_WAIT_BACKOFF_MAX_S)
                if self.broker_wait_s is not None:
                    delay = min(delay, max(0.0, self.broker_wait_s - waited))
                message = (
                    f"waiting for Kafka at {self.settings.kafka_broker_url} (KAFKA_BROKER_URL) to consume "
                    f"{self.topic} as group {self.settings.kafka_group_id}: {exc}"
                )
                logger.warning("%s — next try in %.0f s (waited %.0f s so far)", message, delay, waited)
                self._figures.error(message)
                if self._stop.wait(delay):
                    logger.info("stopped while waiting for Kafka; nothing was consumed")
                    return None
                continue
            if attempt:
                # A warning, as the waiting was: whoever saw that sees it end.
                logger.warning(
                    "Kafka at %s answered after %.0f s of waiting; consuming",
                    self.settings.kafka_broker_url,
                    time.monotonic() - started,
                )
                self._figures.error(None)
            return fetch_config

    def _open_kafka(self) -> dict[str, Any]:
        """Topics, their epoch, the consumer and the dead-letter producer; returns the fetch config.

        Raises:
            BrokerUnavailable: no broker answered (nothing is left open).
        """
        topics.ensure_topic(self.settings, self.topic)
        topics.ensure_topic(self.settings, self.settings.dead_letter_topic)
        self.epoch = topic_epoch(self.settings, self.topic)
        cfg, fetch_config = consumer_configs(
            self.settings, self.batch_max_rows, instance_id=self.instance_id, extra=self._consumer_config
        )
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
        return fetch_config

    def _make_parts(self, fetch_config: Mapping[str, Any]) -> None:
        """The parts of a run, over the consumer, producer, store and insert thread that :meth:`_open` made."""
        assert self._consumer is not None and self._producer is not None and self._store is not None
        assert self._inserter is not None
        scope = TokenScope(self.topic, self.epoch, self.database, self.settings.kafka_group_id)
        figures = self._figures
        self._batcher = Batcher(
            scope,
            figures,
            batch_max_rows=self.batch_max_rows,
            batch_max_bytes=self.batch_max_bytes,
            batch_max_wait_s=self.batch_max_wait_s,
        )
        self._committer = OffsetCommitter(
            self._consumer, self.settings, instance_id=self.instance_id, stop=self._stop, retry_max_s=self.retry_max_s
        )
        dead_letters = DeadLetterPublisher(self._producer, self.settings.dead_letter_topic, self.topic, figures)
        self._delivery = Delivery(
            self._batcher,
            scope,
            store=self._store,
            consumer=self._consumer,
            committer=self._committer,
            dead_letters=dead_letters,
            inserter=self._inserter,
            figures=figures,
            rewind=self._rewind,
            group_max_batches=self.group_max_batches,
            retry_max_s=self.retry_max_s,
            on_batch_stored=self._on_batch_stored,
        )
        self._recovery = Recovery(
            self._batcher,
            scope,
            consumer=self._consumer,
            committer=self._committer,
            store=self._store,
            dead_letters=dead_letters,
            figures=figures,
            settings=self.settings,
            fetch_config=fetch_config,
            stop=self._stop,
            from_beginning=self.from_beginning,
            retry_max_s=self.retry_max_s,
        )

    def _close(self) -> None:
        # An insert still running (an error ended the loop, or its round was abandoned) finishes before the store
        # can close; it stays uncommitted, so the next owner rebuilds its range and ClickHouse drops what was stored.
        if self._delivery is not None:
            self._delivery.abandon_inflight()
            self._group_max_batches = self._delivery.group_max_batches
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
        self._batcher = self._delivery = self._recovery = self._committer = None
        with self._figures.lock:
            self._figures.assigned = ()

    # --- the loop -----------------------------------------------------------------------------------------------

    def _parts(self) -> tuple[KafkaConsumer, Batcher, Delivery, OffsetCommitter]:
        assert self._consumer is not None and self._batcher is not None
        assert self._delivery is not None and self._committer is not None
        return self._consumer, self._batcher, self._delivery, self._committer

    def _busy(self) -> bool:
        _, batcher, delivery, _ = self._parts()
        return delivery.busy() or batcher.busy()

    def _poll(self, timeout_ms: int) -> dict[TopicPartition, list[Any]]:
        """One poll of the consumer, after the kafka-python workarounds a poll needs; applies queued rebalances."""
        consumer, _, _, committer = self._parts()
        self._fresh.clear()
        unpark_resumed_records(consumer)
        try:
            records: dict[TopicPartition, list[Any]] = consumer.poll(
                timeout_ms=timeout_ms, max_records=self._poll_sizer.records
            )
        except FencedInstanceIdError as exc:
            raise committer.fenced(exc) from exc
        return records

    def _loop(self, until_idle: float | None, max_events: int | None) -> None:
        consumer, batcher, delivery, _ = self._parts()
        started = last_activity = time.monotonic()
        taken = 0
        joined = False
        while not self._stop.is_set():
            timeout_ms = self._poll_timeout_ms()
            if join_in_progress(consumer):
                timeout_ms = max(timeout_ms, JOIN_POLL_MS)  # eager rebalance: nothing is assigned meanwhile
            records = self._poll(timeout_ms)
            changed = self._apply_rebalances()
            taken -= batcher.dropped_records()
            now = time.monotonic()
            self._poll_sizer.note(records, now)
            if changed:
                last_activity = now
                joined = joined or self._joined
            for tp, recs in records.items():
                state = batcher.states.get(tp.partition)
                if state is None:
                    logger.warning("records for unassigned partition %s ignored", tp)
                    continue
                if tp.partition in self._fresh:
                    # Fetched before this poll's rebalance, from the position kafka-python kept for a partition
                    # that stayed assigned; the partition was just sought back to its committed offset. Taking them
                    # would open a batch past records not yet stored.
                    continue
                limit = None if max_events is None else max(0, max_events - taken)
                taken += batcher.take(state, recs, now, limit)
                last_activity = now
            batcher.seal_due(now, force=max_events is not None and taken >= max_events)
            if delivery.inflight is not None and (delivery.inflight[1].done() or batcher.store_behind()):
                delivery.finish_round()  # waits for the insert when the store is behind
            if delivery.inflight is None and batcher.any_sealed() and now >= delivery.retry_at:
                delivery.start_round()
                if delivery.inflight is not None and not batcher.kafka_behind(consumer):
                    # Caught up: reading on during the insert gains nothing, and on a small machine the insert is
                    # acknowledged sooner when it has the CPU to itself.
                    delivery.finish_round()
            self._update_lag()
            taken -= batcher.dropped_records()  # a refused commit rewinds
            if max_events is not None and taken >= max_events and not self._busy():
                return
            # Idle only counts once the consumer group assigned this member its partitions (possibly none): joining
            # can take longer than the idle time, e.g. while the group waits for a killed member's session to expire.
            if (
                until_idle is not None
                and (joined or now - started > until_idle + JOIN_GRACE_S)
                and not self._busy()
                and time.monotonic() - last_activity >= until_idle
            ):
                return

    def _poll_timeout_ms(self) -> int:
        _, batcher, delivery, _ = self._parts()
        now = time.monotonic()
        wait = batcher.next_due_in(now, 0.2)  # at most 0.2 s, so stop() and until_idle are noticed promptly
        if delivery.inflight is not None:
            wait = min(wait, INFLIGHT_POLL_S)  # commit promptly once the insert thread is done
        elif batcher.any_sealed():
            wait = min(wait, delivery.retry_at - now)
        return max(0, int(wait * 1000))

    def _drain(self) -> None:
        """On a requested stop or a finished run: store and commit what was read, within the stop deadline."""
        if self._consumer is None:
            return
        consumer, batcher, delivery, _ = self._parts()
        deadline = self._stop_deadline or (time.monotonic() + DEFAULT_STOP_TIMEOUT_S)
        if self._stop.is_set():
            self._finish_replays(min(deadline, time.monotonic() + DEFAULT_STOP_TIMEOUT_S / 2))
        batcher.seal_for_stop()
        if delivery.inflight is not None:
            delivery.finish_round()
        while batcher.any_sealed():
            if time.monotonic() >= deadline:
                logger.warning(
                    "stop deadline reached: %d records left uncommitted (a later run stores them)", batcher.unstored()
                )
                return
            if time.monotonic() < delivery.retry_at:
                consumer.poll(timeout_ms=min(200, int((delivery.retry_at - time.monotonic()) * 1000) + 1))
                if self._apply_rebalances():
                    batcher.seal_for_stop()
                continue
            delivery.deliver_round()
        self._update_lag()

    def _finish_replays(self, until: float) -> None:
        """On a requested stop: read the rest of every recorded range being rebuilt, until ``until`` at most.

        A partition re-assigned with a recorded range (e.g. after a rebalance abandoned its insert, which may have
        stored it) holds its records back until the range is rebuilt. Left unfinished, the range stays stored but
        uncommitted until a later run rebuilds it; finishing it lets the stop commit what the store holds. Only the
        ranges' records are taken; anything polled past them is read again by the next run.
        """
        _, batcher, _, _ = self._parts()
        while batcher.replaying() and time.monotonic() < until:
            records = self._poll(200)
            self._apply_rebalances()
            now = time.monotonic()
            self._poll_sizer.note(records, now)
            batcher.take_replays({tp: recs for tp, recs in records.items() if tp.partition not in self._fresh}, now)

    # --- rebalances ---------------------------------------------------------------------------------------------

    def _queue_rebalance(self, kind: str, tps: set[TopicPartition]) -> None:
        with self._rebalance_lock:
            self._rebalances.append((kind, tps))

    def _apply_rebalances(self) -> bool:
        consumer, batcher, delivery, _ = self._parts()
        assert self._recovery is not None
        with self._rebalance_lock:
            changes, self._rebalances = self._rebalances, []
        if changes:
            # The running round belongs to the old assignment: nothing is committed for it. What it stores is dropped
            # by ClickHouse when the partition's (next) owner rebuilds the recorded range.
            delivery.abandon_inflight()
        for kind, tps in changes:
            if kind == "revoked":
                for tp in tps:
                    state = batcher.drop(tp.partition)
                    if state and (state.open is not None or state.sealed):
                        logger.info("partition %d revoked: unfinished batches abandoned uncommitted", tp.partition)
            else:
                self._joined = True
                self._fresh.update(self._recovery.assign(sorted(tp for tp in tps if tp.topic == self.topic)))
        if changes:
            if batcher.states:
                consumer.resume(*[s.tp for s in batcher.states.values()])
            self._figures.assignment({p: s.committed for p, s in batcher.states.items()})
            delivery.resumed()
        return bool(changes)

    def _rewind(self) -> None:
        """Forget every buffered batch and fetch again from the committed offsets.

        After a refused commit the consumer group is rebalancing; if this member keeps a partition, it must not skip
        the records it had read past the committed offset.
        """
        _, batcher, _, _ = self._parts()
        assert self._recovery is not None
        tps = batcher.drop_all()
        try:
            self._fresh.update(self._recovery.assign(tps))
        except Exception as exc:  # no longer assigned: the rebalance callbacks rebuild the states
            logger.info("rewind after a refused commit: %s", exc)

    def _update_lag(self) -> None:
        if self._consumer is None or self._batcher is None:
            return
        self._figures.update_lag(self._batcher.lag(self._consumer))
