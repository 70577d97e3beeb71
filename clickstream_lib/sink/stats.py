"""The sink's live figures: counters, lag, and rows/s and latency percentiles over a sliding window."""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .batch import Batch

LATENCY_WINDOW_S = 30.0
RATE_WINDOW_S = 10.0
PERCENTILES_MAX_AGE_S = 1.0  # stats() recomputes the latency percentiles at most once a second
PERCENTILE_SAMPLE = 100_000  # latencies at most per percentile computation (p99 of such a sample: +-0.1 rank)


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


class LatencyWindow:
    """Recent acknowledged batches: rows/s and latency percentiles over a sliding time window."""

    def __init__(self) -> None:
        self._rates: deque[tuple[float, int]] = deque()
        self._lat: deque[tuple[float, np.ndarray, np.ndarray]] = deque()
        # The percentiles of _lat, kept until it changes and then for up to PERCENTILES_MAX_AGE_S: stats() may be
        # polled far more often than batches are acknowledged, and stats() holds the lock the consumer thread needs
        # to acknowledge a batch.
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
        while self._rates and now - self._rates[0][0] > RATE_WINDOW_S:
            self._rates.popleft()
        while self._lat and now - self._lat[0][0] > LATENCY_WINDOW_S:
            self._lat.popleft()
            self._changed = True

    def rate(self, now: float, started: float) -> float:
        self._trim(now)
        rows = sum(n for _, n in self._rates)
        span = min(RATE_WINDOW_S, max(now - started, 1e-3))
        return rows / span

    def percentiles(self, now: float) -> tuple[float | None, float | None, float | None, float | None]:
        """p50/p99 of event-time and Kafka-timestamp latency (ms) over the window, as of at most 1 s ago.

        Beyond :data:`PERCENTILE_SAMPLE` latencies (30 s at 50 000 events/s hold 1.5M) they are computed from an
        evenly strided sample of each batch: exact percentiles of 1.5M values took ~40 ms, under the lock.
        """
        self._trim(now)
        if not self._lat:
            self._percentiles, self._changed = None, False
            return None, None, None, None
        if self._percentiles is not None and (not self._changed or now - self._percentiles_at < PERCENTILES_MAX_AGE_S):
            return self._percentiles
        total = sum(e.size for _, e, _ in self._lat)
        step = -(-total // PERCENTILE_SAMPLE)  # 1 = every latency
        ev = np.concatenate([e[::step] for _, e, _ in self._lat])
        ka = np.concatenate([k[::step] for _, _, k in self._lat])
        e50, e99 = np.percentile(ev, [50, 99])
        k50, k99 = np.percentile(ka, [50, 99])
        self._percentiles = (float(e50), float(e99), float(k50), float(k99))
        self._percentiles_at, self._changed = now, False
        return self._percentiles


class SinkFigures:
    """The counters behind :class:`SinkStats`, written by the sink's thread and read by any other under ``lock``."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.window = LatencyWindow()
        self.started = time.monotonic()
        self.running = False
        self.last_error: str | None = None
        self.rows = 0
        self.dead = 0
        self.dead_by_reason: dict[str, int] = {}
        self.dead_unpublished = 0
        self.batches = 0
        self.consumed = 0
        self.retries = 0
        self.lag: dict[int, int] = {}
        self.committed: dict[int, int] = {}
        self.assigned: tuple[int, ...] = ()

    def snapshot(self) -> SinkStats:
        now = time.monotonic()
        with self.lock:
            e50, e99, k50, k99 = self.window.percentiles(now)
            return SinkStats(
                rows_inserted=self.rows,
                dead_letters=self.dead,
                dead_letters_by_reason=dict(self.dead_by_reason),
                dead_letters_unpublished=self.dead_unpublished,
                batches=self.batches,
                rows_per_s=self.window.rate(now, self.started),
                lag=dict(self.lag),
                latency_event_p50_ms=e50,
                latency_event_p99_ms=e99,
                latency_kafka_p50_ms=k50,
                latency_kafka_p99_ms=k99,
                assigned_partitions=self.assigned,
                running=self.running,
                last_error=self.last_error,
                records_consumed=self.consumed,
                retries=self.retries,
                committed=dict(self.committed),
            )

    def _count_stored(self, b: Batch) -> None:
        """Add a stored batch to the counters; the caller holds ``lock``."""
        self.rows += len(b.rows)
        self.dead += len(b.dead)
        for d in b.dead:
            self.dead_by_reason[d[1]] = self.dead_by_reason.get(d[1], 0) + 1
        self.batches += 1

    def acknowledged(self, batches: Iterable[Batch], ack_ms: float, now: float) -> None:
        """Batches stored and committed: counters, committed offsets, rows/s and latencies (acknowledged at
        ``ack_ms`` wall-clock ms, ``now`` monotonic)."""
        with self.lock:
            for b in batches:
                self._count_stored(b)
                self.committed[b.partition] = b.last + 1
                self.window.add(
                    now,
                    len(b),
                    ack_ms - np.asarray(b.event_ms, dtype=np.float64),
                    ack_ms - np.asarray(b.kafka_ms, dtype=np.float64),
                )

    def rebuilt(self, batches: Iterable[Batch]) -> None:
        """Batches of a recorded group insert that were stored again (their latencies would mean nothing)."""
        with self.lock:
            for b in batches:
                self._count_stored(b)

    def consumed_records(self, n: int) -> None:
        with self.lock:
            self.consumed += n

    def retrying(self, message: str) -> None:
        with self.lock:
            self.retries += 1
            self.last_error = message

    def error(self, message: str | None) -> None:
        with self.lock:
            self.last_error = message

    def dead_letter_unpublished(self) -> None:
        with self.lock:
            self.dead_unpublished += 1

    def assignment(self, committed: Mapping[int, int | None]) -> None:
        """The partitions now assigned and their committed offsets (lag of others is forgotten)."""
        with self.lock:
            self.assigned = tuple(sorted(committed))
            self.committed = {p: c for p, c in committed.items() if c is not None}
            self.lag = {p: v for p, v in self.lag.items() if p in committed}

    def update_lag(self, lag: Mapping[int, int]) -> None:
        with self.lock:
            self.lag.update(lag)
