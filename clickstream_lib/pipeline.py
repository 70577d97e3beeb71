"""The live pipeline: generator/producer and sink, started, stopped and tuned together.

:class:`Pipeline` runs both as threads in this process — in the owner of an embedded store (``clickstream serve``)
or in a kernel that opened the store itself. :class:`ServedPipeline` has the same methods and drives the owner's
pipeline over the store's socket (see :mod:`clickstream_lib.service`), so every viewer controls the one pipeline.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol

from .served_pipeline import PipelineState, PipelineStats, ServedPipeline
from .settings import Settings

if TYPE_CHECKING:
    from .producer import Producer, ProducerStats
    from .sink import Sink
    from .store import Store


#: Users of the pipeline's generator: as many as its starting rate needs for sessions that the 30-minute rule
#: recovers (``Generator.users_for_rate``: about 540 per event/s), within these bounds (300k: ~75 MB, 0.3 s).
PIPELINE_USERS = (10_000, 300_000)


class Pipeline:
    """Producer and sink threads in this process: the store's owner (``clickstream serve``), or a notebook kernel that
    opened the embedded store itself.

    A stopped producer or sink is replaced by a fresh one on the next start (their threads run once); counters in
    :meth:`stats` add up over the replaced instances so the numbers on screen never go backwards.

    Args:
        settings: where Kafka and the store are.
        store: the open in-process store the sink writes to.
        rate: events/s of the producer.
        seed: the generator's seed (None: random).
        sink_options: keyword arguments for :class:`~clickstream_lib.sink.Sink` (e.g. ``instance_id``).
    """

    def __init__(
        self,
        settings: Settings,
        store: Store,
        rate: float = 200.0,
        seed: int | None = None,
        sink_options: Mapping[str, Any] | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.rate = float(rate)
        self.seed = seed
        self.sink_options = dict(sink_options or {})
        self.n_users: int | None = None
        self.scenarios: dict[str, bool] = {}
        self._done: dict[str, int] = {
            "sent": 0,
            "acked": 0,
            "rows_inserted": 0,
            "dead_letters": 0,
            "dead_letters_unpublished": 0,
        }
        self._dead_by_reason: dict[str, int] = {}
        self._acked_by_partition: dict[int, int] = {}
        self.producer: Producer = self._new_producer()
        self.sink: Sink = self._new_sink()
        self._producer_used = False
        self._sink_used = False

    def _new_producer(self) -> Producer:
        from .generator import Generator
        from .producer import Producer

        if self.n_users is None:  # sized once, for the starting rate: the user ids stay the same across restarts
            need = Generator(n_users=1).users_for_rate(self.rate)
            self.n_users = min(max(need, PIPELINE_USERS[0]), PIPELINE_USERS[1])
        generator = Generator(seed=self.seed, n_users=self.n_users)
        producer = Producer(self.settings, rate=self.rate, generator=generator)
        for name, on in self.scenarios.items():
            producer.set_scenario(name, on)
        return producer

    def _new_sink(self) -> Sink:
        from .sink import Sink

        return Sink(self.settings, self.store, **self.sink_options)

    def start(self, events: int | None = None) -> None:
        """Start the sink, then the producer (``events`` = stop after that many; None = until stopped)."""
        self.start_sink()
        self.start_producer(events)

    def start_producer(self, events: int | None = None) -> None:
        if self.producer.stats().running:
            return
        if self._producer_used:
            p = self.producer.stats()
            self._done["sent"] += p.sent
            self._done["acked"] += p.acked
            self._acked_by_partition = self._partition_acks(p)
            self.producer.close()
            self.producer = self._new_producer()
        self._producer_used = True
        self.producer.start(events=events)

    def stop_producer(self) -> None:
        self.producer.stop()

    def start_sink(self) -> None:
        if self.sink.stats().running:
            return
        if self._sink_used:
            s = self.sink.stats()
            self._done["rows_inserted"] += s.rows_inserted
            self._done["dead_letters"] += s.dead_letters
            self._done["dead_letters_unpublished"] += s.dead_letters_unpublished
            for reason, n in s.dead_letters_by_reason.items():
                self._dead_by_reason[reason] = self._dead_by_reason.get(reason, 0) + int(n)
            self.sink = self._new_sink()
        self._sink_used = True
        self.sink.start()

    def stop_sink(self) -> None:
        """Stop the sink: it inserts its open batches and commits their offsets first."""
        self.sink.stop()

    def stop(self) -> None:
        """Stop the producer, then the sink (which stores and commits what it has)."""
        try:
            self.stop_producer()
        finally:
            self.stop_sink()

    def close(self) -> None:
        """Stop both and close the producer's Kafka connection."""
        try:
            self.stop()
        finally:
            self.producer.close()

    def set_rate(self, rate: float) -> None:
        self.rate = float(rate)
        self.producer.set_rate(self.rate)

    def set_scenario(self, name: str, on: bool = True) -> None:
        self.scenarios[name] = bool(on)
        self.producer.set_scenario(name, bool(on))

    @property
    def running(self) -> bool:
        return self.producer.stats().running or self.sink.stats().running

    def rows_inserted(self) -> int:
        return self._done["rows_inserted"] + self.sink.stats().rows_inserted

    def _partition_acks(self, p: ProducerStats) -> dict[int, int]:
        """Messages acknowledged per partition, over this and the replaced producers."""
        out = dict(self._acked_by_partition)
        for partition, n in p.acked_by_partition.items():
            out[int(partition)] = out.get(int(partition), 0) + int(n)
        return out

    def stats(self) -> PipelineStats:
        """Live figures of both threads, flattened for display (``data-stat`` hooks use these keys).

        ``acked_by_partition`` maps each partition of the topic to the messages the producer had acknowledged there
        (what :mod:`clickstream_lib.panels.reconcile` sets against Kafka and the store).
        """
        p = self.producer.stats()
        s = self.sink.stats()
        reasons = dict(self._dead_by_reason)
        for reason, n in s.dead_letters_by_reason.items():
            reasons[reason] = reasons.get(reason, 0) + int(n)
        return {
            "producer": "running" if p.running else "stopped",
            "sent": self._done["sent"] + p.sent,
            "acked": self._done["acked"] + p.acked,
            "acked_by_partition": self._partition_acks(p),
            "produced_per_s": p.rate_now,
            "sink": "running" if s.running else "stopped",
            "rows_inserted": self.rows_inserted(),
            "ingested_per_s": s.rows_per_s,
            "lag": dict(s.lag),
            "latency_p50_ms": s.latency_event_p50_ms,
            "latency_p99_ms": s.latency_event_p99_ms,
            "dead_letters": self._done["dead_letters"] + s.dead_letters,
            "dead_letters_by_reason": reasons,
            "dead_letters_unpublished": self._done["dead_letters_unpublished"] + s.dead_letters_unpublished,
            "last_error": s.last_error or "",
        }

    def state(self) -> PipelineState:
        """The settings a viewer's controls show: rate and scenarios switched on."""
        return {"rate": self.rate, "scenarios": dict(self.scenarios)}


class PipelineControl(Protocol):
    """What the dashboard and the workbench call on a pipeline, in this process or the owner's."""

    def start(self, events: int | None = None) -> None: ...
    def start_producer(self, events: int | None = None) -> None: ...
    def stop_producer(self) -> None: ...
    def start_sink(self) -> None: ...
    def stop_sink(self) -> None: ...
    def stop(self) -> None: ...
    def close(self) -> None: ...
    def set_rate(self, rate: float) -> None: ...
    def set_scenario(self, name: str, on: bool = True) -> None: ...
    def rows_inserted(self) -> int: ...
    def stats(self) -> PipelineStats: ...
    def state(self) -> PipelineState: ...


__all__ = ["PIPELINE_USERS", "Pipeline", "PipelineControl", "PipelineState", "PipelineStats", "ServedPipeline"]
