"""The rate-controlled Kafka producer: generator batches -> kafka-python, with delivery accounting.

Messages are keyed by ``user_id`` (so one user's events stay in order on one partition), sent with ``acks=all`` and
idempotence (kafka-python 3's defaults, kept on purpose), lz4-compressed. A token bucket holds the rate; every
message is counted as sent, acknowledged or failed (with the broker's error name), and the run ends with a flush.

How messages reach Kafka: each chunk of generated events is split by partition and appended whole to
kafka-python's own RecordAccumulator (the bulk path, :class:`~clickstream_lib.kafka_compat.producer.BulkAppender`):
the Kafka v2 records are encoded there, straight into kafka-python's batches, and acknowledgements are counted per
batch. Drain, producer id and sequence numbers, compression, CRC, retries and expiry stay kafka-python's. That costs
about 5 us of CPU per event for the whole process instead of about 20 us with ``KafkaProducer.send()`` per message
(docs/events.md). The path relies on kafka-python internals, checked once per producer; when they differ (or a
serializer, custom partitioner or transactional id is configured) the producer logs one warning and uses ``send()``
per message, as ``Producer(..., bulk=False)`` does. Messages too large for a batch always go through ``send()``.

Two ways to drive it:

* blocking, as ``clickstream produce`` does: ``Producer(settings, rate=10_000).run(events=100_000)``;
* from a notebook, in a background thread: ``p.start()``, then ``p.set_rate(...)``, ``p.set_scenario(...)``,
  ``p.stats()`` while it runs, and ``p.stop()``.

Example:
    >>> with Producer(Settings.from_env(), rate=5_000, seed=1) as producer:
    ...     stats = producer.run(duration=10)
    >>> stats.summary()
    'sent 50000, acked 50000, failed 0 in 10.0 s (5000 events/s)'
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from kafka import KafkaProducer
from kafka.errors import KafkaConfigurationError, KafkaError
from kafka.partitioner.default import murmur2

from .errors import ConfigError
from .generator import CaseStudyGenerator, Generator
from .kafka_compat.producer import BulkAppender, bulk_unsupported, flush
from .settings import Settings
from .topics import DEFAULT_CONNECT_TIMEOUT_S, client_config, ensure_topic, unreachable

logger = logging.getLogger(__name__)

#: kafka-python settings of every producer here (and of the benchmark's raw baseline). batch_size/linger_ms come
#: from ``bench/produce.py --sweep`` on the local broker: 128 KiB / 20 ms beat 16 KiB / 0 ms (the defaults) by
#: 1.2-2.2x; 512 KiB / 50 ms was no better within the noise. acks=all + idempotence are kafka-python 3's defaults,
#: stated for the reader.
PRODUCER_CONFIG: dict[str, Any] = {
    "acks": "all",
    "enable_idempotence": True,
    "compression_type": "lz4",
    "batch_size": 128 * 1024,
    "linger_ms": 20,
    "delivery_timeout_ms": 60_000,
}
#: Records handed to kafka-python but not yet acknowledged before the loop waits: kafka-python 3 has no
#: buffer_memory limit, so without this a fast generator against a slow broker would grow memory without bound.
MAX_IN_FLIGHT = 100_000
_UNLIMITED_CHUNK = 2_000  # events per loop turn when no rate is set: amortises per-batch work, keeps stop() quick
_TICK_S = 0.01  # the token bucket refills continuously; the loop wakes at most every 10 ms
_BURST_S = 0.25  # seconds of events the bucket can hold: enough to catch up a scheduling stall


class KeyPartitioner:
    """Kafka's default key -> partition mapping (murmur2, as the Java client), memoised per key.

    kafka-python hashes every key again in pure Python: ~15% of a send. Users repeat, so a dict lookup does it;
    the result is identical, so one user's events share a partition whichever client wrote them.
    """

    def __init__(self, kafka: KafkaProducer, topic: str) -> None:
        self._kafka = kafka
        self._topic = topic
        self._all: list[int] = []
        self._cache: dict[bytes, int] = {}

    def partitions(self, keys: Sequence[bytes | None]) -> list[int | None]:
        """The partition of each key (None for a None key: kafka-python then picks one)."""
        current = sorted(self._kafka.partitions_for(self._topic))
        if current != self._all:  # partitions were added: keys move, as they would with the default partitioner
            self._all, self._cache = current, {}
        cache = self._cache
        return [cache[k] if k in cache else self._hash(k) for k in keys]

    def group(
        self, keys: Sequence[bytes | None], values: Sequence[bytes]
    ) -> dict[int | None, tuple[list[bytes | None], list[bytes]]]:
        """Keys and values split by partition, each partition's in their original order."""
        groups: dict[int | None, tuple[list[bytes | None], list[bytes]]] = {}
        for key, value, partition in zip(keys, values, self.partitions(keys), strict=True):
            group = groups.get(partition)
            if group is None:
                group = groups[partition] = ([], [])
            group[0].append(key)
            group[1].append(value)
        return groups

    def _hash(self, key: bytes | None) -> int | None:
        if key is None:
            return None
        partition: int = self._all[(murmur2(key) & 0x7FFFFFFF) % len(self._all)]
        self._cache[key] = partition
        return partition


class TokenBucket:
    """How many events may go now at ``rate`` events/s: tokens refill continuously up to a burst.

    Without ``batch_size`` a turn waits for 10 ms worth of events, so sends are batched but the rate stays smooth;
    the bucket holds up to 250 ms worth, so a stall of the loop (a busy machine, a GC pause) is caught up instead of
    lost. With ``batch_size`` (the case study's "a batch every time_interval") both are the batch.
    Pure logic on a caller-supplied clock, so tests can drive it with a fake one.
    """

    def __init__(self, rate: float | None, batch_size: int | None = None, now: float = 0.0) -> None:
        self.rate = rate
        self.batch_size = batch_size
        self.tokens = 0.0  # start empty: the first second carries no burst, so short runs hold the rate too
        self.last = now

    def take(self, now: float, limit: int | None = None) -> tuple[int, float]:
        """``(k, 0.0)``: send ``k`` events now; or ``(0, wait_s)``: nothing yet, try again in ``wait_s``."""
        rate = self.rate
        if rate is None:  # unlimited: a chunk per turn; the bucket restarts empty if a rate is set later
            self.tokens, self.last = 0.0, now
            chunk = self.batch_size or _UNLIMITED_CHUNK
            return (chunk if limit is None else min(chunk, limit)), 0.0
        burst = float(self.batch_size or max(1.0, rate * _BURST_S))
        self.tokens = min(burst, self.tokens + max(0.0, now - self.last) * rate)
        self.last = now
        need = min(float(self.batch_size) if self.batch_size else max(1.0, rate * _TICK_S), burst)
        if limit is not None:
            need = min(need, float(limit))
        if self.tokens < need:
            # At least 0.5 ms: a float-rounding shortfall must not turn into a busy loop of zero-length waits.
            return 0, max(0.0005, (need - self.tokens) / rate)
        k = int(self.tokens)
        if limit is not None:
            k = min(k, limit)
        self.tokens -= k
        return k, 0.0


@dataclass(frozen=True)
class ProducerStats:
    """Delivery counters of one producer. ``sent = acked + failed + in_flight``."""

    sent: int = 0
    acked: int = 0
    failed: int = 0
    errors: dict[str, int] = field(default_factory=dict)  # error name (the broker's, e.g. "KafkaTimeoutError") -> n
    rate_now: float = 0.0  # messages/s sent over the last second or so
    elapsed_s: float = 0.0
    running: bool = False
    target_rate: float | None = None
    started_at: float = 0.0  # wall clock (epoch s) when the run began; 0 before (lines up several processes)
    # Acknowledged messages per partition of the topic (from the broker's answers: each batch's or send()'s
    # RecordMetadata), what reconciliation sets against each partition's high watermark and rows stored.
    acked_by_partition: dict[int, int] = field(default_factory=dict)

    @property
    def in_flight(self) -> int:
        return self.sent - self.acked - self.failed

    @property
    def rate_avg(self) -> float:
        """Acknowledged messages per second over the whole run."""
        return self.acked / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def summary(self) -> str:
        """The one-line summary ``clickstream produce`` prints."""
        text = (
            f"sent {self.sent}, acked {self.acked}, failed {self.failed} in {self.elapsed_s:.1f} s "
            f"({self.rate_avg:.0f} events/s)"
        )
        if self.in_flight:
            text += f", {self.in_flight} unacknowledged"
        if self.errors:
            text += "; errors: " + ", ".join(f"{k}={v}" for k, v in sorted(self.errors.items()))
        return text


def _check_rate(rate: float | None) -> float | None:
    if rate is None:
        return None
    if not 0 < float(rate) <= 10_000_000:
        raise ConfigError("rate", f"{rate} events/s is out of range; expected 0 < rate <= 10000000 (None: unlimited)")
    return float(rate)


def connect(settings: Settings, topic: str | None = None, **config: Any) -> KafkaProducer:
    """A kafka-python producer for ``settings`` with :data:`PRODUCER_CONFIG`; the topic exists afterwards.

    Raises:
        BrokerUnavailable: no broker answered within a few seconds.
    """
    topic = topic or settings.kafka_topic
    # The admin client's bootstrap wait is what a user waits when Kafka is down: keep it at a few seconds.
    ensure_topic(settings, topic, settings.kafka_partitions, timeout_s=DEFAULT_CONNECT_TIMEOUT_S)
    try:
        return KafkaProducer(**client_config(settings, **{**PRODUCER_CONFIG, **config}))
    except (KafkaConfigurationError, ValueError) as exc:  # a bad override is ours to report, not the broker's
        raise ConfigError("producer config", f"{exc}; see PRODUCER_CONFIG in clickstream_lib.producer") from exc
    except KafkaError as exc:
        raise unreachable(settings, exc) from exc


def send_raw(
    settings: Settings,
    values: Sequence[bytes | None],
    keys: Sequence[bytes | None] | None = None,
    topic: str | None = None,
    timeout_s: float = 60.0,
) -> int:
    """Send pre-serialised messages as they are (plain kafka-python) and wait for them; returns how many were acked.

    Meant for tests and tools that need exact bytes on the topic (e.g. malformed messages for the sink).

    Raises:
        BrokerUnavailable: no broker answered.
        kafka.errors.KafkaError: a message was rejected (the first error).
    """
    if keys is not None and len(keys) != len(values):
        raise ValueError("keys and values must have the same length")
    topic = topic or settings.kafka_topic
    producer = connect(settings, topic)
    deadline = time.monotonic() + timeout_s
    try:
        futures = [producer.send(topic, value, key=None if keys is None else keys[i]) for i, value in enumerate(values)]
        flush(producer, timeout_s)
        for fut in futures:
            fut.get(timeout=max(0.1, deadline - time.monotonic()))
        return len(futures)
    finally:
        producer.close(timeout=5)


class Producer:
    """Generates events and sends them to ``settings.kafka_topic`` at a controlled rate.

    Args:
        settings: where Kafka is and which topic to write (created with ``settings.kafka_partitions`` if missing).
        rate: events per second (token bucket); ``None`` sends as fast as the broker acknowledges.
        seed: seed of the default :class:`Generator` (ignored when ``generator`` is given).
        generator: the event source; ``Generator(seed=seed)`` by default.
        batch_size: events generated per loop turn at most, and the bucket's burst. The case study's
            ``--batch_size 1000 --time_interval 1`` is ``batch_size=1000, rate=1000``: a batch of 1000 each second.
        bulk: append each chunk to kafka-python's accumulator whole (the default; see the module docstring);
            False sends message by message with ``KafkaProducer.send()`` (the comparison in bench/produce.py).
        **config: kafka-python producer settings overriding :data:`PRODUCER_CONFIG`.

    Raises:
        BrokerUnavailable: no broker answered within a few seconds (not kafka-python's 30 s).
    """

    flush_timeout_s = 90.0  # at the end of a run; delivery_timeout_ms bounds each message anyway

    def __init__(
        self,
        settings: Settings,
        *,
        rate: float | None = 10_000.0,
        seed: int | None = None,
        generator: Generator | CaseStudyGenerator | None = None,
        batch_size: int | None = None,
        bulk: bool = True,
        **config: Any,
    ) -> None:
        self.settings = settings
        self.topic = settings.kafka_topic
        self.generator: Generator | CaseStudyGenerator = generator if generator is not None else Generator(seed=seed)
        self._rate = _check_rate(rate)
        if batch_size is not None and batch_size < 1:
            raise ConfigError("batch_size", f"{batch_size} must be at least 1")
        self._batch_size = batch_size
        self._kafka = connect(settings, self.topic, **config)
        self._lock = threading.Lock()
        self._delivered = threading.Condition(self._lock)  # notified when batches finish (back-pressure waits)
        self._bulk: BulkAppender | None = None
        if bulk:
            reason = bulk_unsupported(self._kafka)
            if reason is None:
                self._bulk = BulkAppender(self._kafka, self.topic, self._bulk_sent, self._bulk_done)
            else:
                logger.warning("sending message by message (kafka-python's send()): %s", reason)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._thread_error: BaseException | None = None
        self._closed = False
        self._reset()

    # --- counters -----------------------------------------------------------------------------------------------

    def _reset(self) -> None:
        self._sent = 0
        self._acked = 0
        self._acked_by_partition: Counter[int] = Counter()
        self._failed = 0
        self._errors: Counter[str] = Counter()
        self._started = 0.0
        self._started_at = 0.0
        self._ended: float | None = None
        self._running = False
        self._rate_mark = (time.monotonic(), 0)
        self._rate_now = 0.0

    def stats(self) -> ProducerStats:
        """A snapshot of the counters; cheap and safe from any thread while the producer runs."""
        with self._lock:
            end = self._ended if self._ended is not None else time.monotonic()
            return ProducerStats(
                sent=self._sent,
                acked=self._acked,
                failed=self._failed,
                errors=dict(self._errors),
                rate_now=self._rate_now,
                elapsed_s=max(0.0, end - self._started) if self._started else 0.0,
                running=self._running,
                target_rate=self._rate,
                started_at=self._started_at,
                acked_by_partition=dict(self._acked_by_partition),
            )

    @property
    def bulk_send(self) -> bool:
        """True when chunks go to kafka-python's accumulator whole (the bulk path), False for send() per message."""
        return self._bulk is not None

    def _bulk_sent(self, n: int) -> None:
        with self._lock:
            self._sent += n

    def _bulk_done(self, partition: int, acked: int, errors: Counter[str]) -> None:
        failed = sum(errors.values())
        with self._lock:
            self._acked += acked
            if acked:
                self._acked_by_partition[partition] += acked
            self._failed += failed
            self._errors.update(errors)
            self._delivered.notify_all()
        if failed:
            logger.warning("delivery failed for %d message(s): %s", failed, dict(errors))

    def _reap(self, pending: deque[Any], block: bool = False) -> None:
        """Count finished sends, oldest first; ``block`` waits for the oldest one."""
        acked = failed = 0
        errors: Counter[str] = Counter()
        by_partition: Counter[int] = Counter()
        while pending:
            fut = pending[0]
            if not fut.is_done:
                if not block:
                    break
                try:
                    fut.get(timeout=1.0)
                except KafkaError:
                    pass  # counted below from fut.exception
                if not fut.is_done:
                    break
                block = False
            pending.popleft()
            if fut.exception is None:
                acked += 1
                by_partition[fut.value.partition] += 1  # the broker's RecordMetadata
            else:
                failed += 1
                errors[type(fut.exception).__name__] += 1
        if acked or failed:
            with self._lock:
                self._acked += acked
                self._acked_by_partition.update(by_partition)
                self._failed += failed
                self._errors.update(errors)
                if errors:
                    logger.warning("delivery failed for %d message(s): %s", failed, dict(errors))

    # --- control ------------------------------------------------------------------------------------------------

    @property
    def rate(self) -> float | None:
        return self._rate

    def set_rate(self, rate: float | None) -> None:
        """Change the target rate (events/s; ``None`` = unlimited); takes effect within one loop turn."""
        self._rate = _check_rate(rate)

    def set_scenario(self, name: str, on: bool = True, **params: Any) -> None:
        """Switch a generator scenario on or off while running (see :data:`generator.SCENARIOS`)."""
        self.generator.set_scenario(name, on, **params)

    def run(
        self,
        events: int | None = None,
        duration: float | None = None,
        progress: Callable[[ProducerStats], None] | None = None,
        progress_every_s: float = 0.5,
    ) -> ProducerStats:
        """Produce until ``events`` were sent, ``duration`` seconds passed, or :meth:`stop`; then flush.

        Blocking. With neither limit it runs until stopped (Ctrl-C in a terminal: the flush still happens, then
        KeyboardInterrupt propagates). ``progress`` is called with a stats snapshot about every
        ``progress_every_s`` and once at the end.
        """
        in_thread = self._thread is not None and threading.current_thread() is self._thread
        if not in_thread and self._thread is not None and self._thread.is_alive():
            raise RuntimeError("producer is running in the background; stop() it before run()")
        if not in_thread:
            self._stop.clear()  # a blocking run after an earlier stop(); start() clears it for its thread
        return self._run(events, duration, progress, progress_every_s)

    def _run(
        self,
        events: int | None,
        duration: float | None,
        progress: Callable[[ProducerStats], None] | None,
        progress_every_s: float,
    ) -> ProducerStats:
        if self._closed:
            raise RuntimeError("producer is closed")
        if events is not None and events < 0:
            raise ValueError("events must be >= 0")
        if duration is not None and duration < 0:
            raise ValueError("duration must be >= 0")
        with self._lock:
            self._reset()
            self._started = time.monotonic()
            self._started_at = time.time()
            self._rate_mark = (self._started, 0)
            self._running = True
        pending: deque[Any] = deque()  # send() futures: every message without the bulk path, oversized ones with it
        send = self._kafka.send
        topic = self.topic
        bulk = self._bulk

        def send_one(key: bytes | None, value: bytes, partition: int | None, timestamp_ms: int | None = None) -> None:
            try:
                pending.append(send(topic, value, key=key, partition=partition, timestamp_ms=timestamp_ms))
            except KafkaError as exc:  # synchronous refusal, e.g. a message over max_request_size
                with self._lock:
                    self._sent += 1
                    self._failed += 1
                    self._errors[type(exc).__name__] += 1

        gen = self.generator
        last = time.monotonic()
        bucket = TokenBucket(self._rate, self._batch_size, now=last)
        partitioner = KeyPartitioner(self._kafka, topic)
        next_progress = last + progress_every_s
        deadline = None if duration is None else self._started + duration
        try:
            while not self._stop.is_set():
                now = time.monotonic()
                if deadline is not None and now >= deadline:
                    break
                left = None if events is None else events - self._sent
                if left is not None and left <= 0:
                    break
                bucket.rate = self._rate  # set_rate() from another thread takes effect here
                k, wait = bucket.take(now, left)
                if k == 0:
                    if deadline is not None:
                        wait = min(wait, max(0.0, deadline - now))
                    self._stop.wait(wait)
                    self._reap(pending)
                    continue
                keys, values = gen.batch(k).keys_values()
                before = len(pending)
                try:
                    if bulk is None:
                        for key, value, partition in zip(keys, values, partitioner.partitions(keys), strict=True):
                            send_one(key, value, partition)
                    else:
                        self._send_bulk(bulk, partitioner.group(keys, values), send_one)
                finally:  # count what was handed to send() even if Ctrl-C lands mid-chunk (bulk counts its own)
                    with self._lock:
                        self._sent += len(pending) - before
                self._reap(pending)
                self._hold_in_flight(pending)
                if time.monotonic() >= next_progress:
                    self._update_rate()
                    next_progress = time.monotonic() + progress_every_s
                    if progress is not None:
                        progress(self.stats())
        finally:
            self._finish(pending)
        final = self.stats()
        if progress is not None:
            progress(final)
        return final

    @staticmethod
    def _send_bulk(
        bulk: BulkAppender,
        groups: dict[int | None, tuple[list[bytes | None], list[bytes]]],
        send_one: Callable[[bytes | None, bytes, int | None, int | None], None],
    ) -> None:
        """One chunk through the bulk path, stamped with one timestamp (what send() would give it within a ms or so)."""
        timestamp_ms = int(time.time() * 1000)
        wake = False
        for partition, (keys, values) in groups.items():
            if partition is None:  # no key: kafka-python's partitioner picks (sticky), message by message
                for value in values:
                    send_one(None, value, None, timestamp_ms)
                continue
            keyed: list[bytes] = keys  # type: ignore[assignment]  # only a None key maps to partition None
            wake = bulk.append(partition, keyed, values, timestamp_ms, send_one) or wake
        if wake:
            bulk.wakeup()

    def _hold_in_flight(self, pending: deque[Any]) -> None:
        """Wait while more than MAX_IN_FLIGHT records are unacknowledged (kafka-python 3 has no buffer_memory)."""
        while not self._stop.is_set():
            with self._lock:
                if self._sent - self._acked - self._failed <= MAX_IN_FLIGHT:
                    return
                if not pending:
                    self._delivered.wait(0.1)
                    continue
            self._reap(pending, block=True)

    def _update_rate(self) -> None:
        with self._lock:
            now = time.monotonic()
            t0, n0 = self._rate_mark
            if now - t0 >= 0.25:
                self._rate_now = (self._sent - n0) / (now - t0)
                self._rate_mark = (now, self._sent)

    def _finish(self, pending: deque[Any]) -> None:
        self._flush(self.flush_timeout_s)
        self._reap(pending)
        with self._lock:
            self._ended = time.monotonic()
            self._running = False
            self._rate_now = 0.0

    def _flush(self, timeout_s: float) -> None:
        if not flush(self._kafka, timeout_s):
            logger.warning("flush did not complete within %.0f s; the counters say what was delivered", timeout_s)

    def start(self, events: int | None = None, duration: float | None = None) -> None:
        """Run :meth:`run` in a daemon thread (for notebooks) and return at once.

        Read :meth:`stats` while it runs; :meth:`stop` ends it, :meth:`wait` waits for its limit.
        """
        if self._thread is not None and self._thread.is_alive():
            raise RuntimeError("producer is already running; stop() it first")
        self._stop.clear()
        self._thread_error = None
        with self._lock:
            self._running = True  # visible before the thread gets scheduled

        def target() -> None:
            try:
                self.run(events=events, duration=duration)
            except BaseException as exc:  # handed to stop(): a thread has no one else to tell
                logger.exception("producer thread failed")
                self._thread_error = exc
                with self._lock:
                    self._running = False

        self._thread = threading.Thread(target=target, name="clickstream-producer", daemon=True)
        self._thread.start()

    def stop(self, timeout: float | None = 30.0) -> ProducerStats:
        """Stop the loop (thread or blocking run), wait for the flush, and return the final counters.

        Raises:
            the error that ended the background thread, if one did.
        """
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                logger.warning("producer thread still flushing after %s s", timeout)
            else:
                self._thread = None
        if self._thread_error is not None:
            exc, self._thread_error = self._thread_error, None
            raise exc
        return self.stats()

    def wait(self, timeout: float | None = None) -> ProducerStats:
        """Wait for a :meth:`start`-ed run to reach its events/duration limit; returns the counters."""
        if self._thread is not None:
            self._thread.join(timeout)
        return self.stats()

    def close(self, timeout: float = 10.0) -> None:
        """Stop, flush and close the Kafka connection. Idempotent."""
        if self._closed:
            return
        try:
            self.stop(timeout=timeout)
        finally:
            self._closed = True
            self._flush(timeout)
            try:
                self._kafka.close(timeout=timeout)
            except KafkaError as exc:  # closing is best effort: the counters already say what was delivered
                logger.warning("closing the Kafka producer: %s", exc)
                self._force_close(timeout)

    def _force_close(self, timeout: float) -> None:
        """Stop kafka-python's I/O thread when its close() gave up.

        kafka-python 3.0.12's close() raises from its flush() before it stops the sender thread, which then retries
        an unreachable broker for the life of the process. force_close() is what its close() does after a timeout:
        the records still queued fail ("Producer is closed forcefully"), and the bulk path counts them as failed.
        """
        sender = getattr(self._kafka, "_sender", None)
        if sender is not None and sender.is_alive():
            sender.force_close()
            sender.join(timeout)

    def __enter__(self) -> Producer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
