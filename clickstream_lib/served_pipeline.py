"""The owner's live pipeline, driven from another process over the store's socket.

:class:`ServedPipeline` has the methods of :class:`~clickstream_lib.pipeline.Pipeline`; a
:class:`~clickstream_lib.store.ServedStore` hands one out. It needs nothing of the producer or the sink, so the store
can import it without importing them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, TypedDict, cast

if TYPE_CHECKING:
    from .store import ServedStore


class PipelineStats(TypedDict, total=False):
    """A pipeline's live figures, flat for display (the ``data-stat`` hooks use these keys).

    The owner answers with only the first five before its pipeline has started (``service.StoreService``); over the
    socket the keys of ``lag`` (partitions) arrive as strings.
    """

    producer: str  # "running" or "stopped"
    sent: int
    acked: int
    acked_by_partition: dict[int, int]  # over the socket the keys arrive as strings, as lag's do
    sink: str  # "running" or "stopped"
    rows_inserted: int
    produced_per_s: float
    ingested_per_s: float
    lag: dict[int, int]
    latency_p50_ms: float | None
    latency_p99_ms: float | None
    dead_letters: int
    dead_letters_by_reason: dict[str, int]
    dead_letters_unpublished: int
    last_error: str


class PipelineState(TypedDict):
    """What a viewer's controls show: the producer's rate and the scenarios switched on or off."""

    rate: float
    scenarios: dict[str, bool]


class ServedPipeline:
    """The owner's pipeline, driven over the store's socket: the same methods as :class:`Pipeline`.

    Every call is one Flight action on the owner (``pipeline.<method>``). :meth:`close` stops the pipeline but leaves
    it to the owner; a viewer that goes away without calling anything stops nothing.
    """

    def __init__(self, store: ServedStore) -> None:
        self.store = store

    def _call(self, method: str, **args: Any) -> Any:
        return self.store.action(f"pipeline.{method}", args)

    def start(self, events: int | None = None) -> None:
        self._call("start", events=events)

    def start_producer(self, events: int | None = None) -> None:
        self._call("start_producer", events=events)

    def stop_producer(self) -> None:
        self._call("stop_producer")

    def start_sink(self) -> None:
        self._call("start_sink")

    def stop_sink(self) -> None:
        self._call("stop_sink")

    def stop(self) -> None:
        self._call("stop")

    def close(self) -> None:
        self.stop()

    def set_rate(self, rate: float) -> None:
        self._call("set_rate", rate=float(rate))

    def set_scenario(self, name: str, on: bool = True) -> None:
        self._call("set_scenario", name=name, on=bool(on))

    @property
    def running(self) -> bool:
        stats = self.stats()
        return stats.get("producer") == "running" or stats.get("sink") == "running"

    def rows_inserted(self) -> int:
        return int(self.stats().get("rows_inserted") or 0)

    def stats(self) -> PipelineStats:
        return cast(PipelineStats, self._call("stats"))

    def state(self) -> PipelineState:
        return cast(PipelineState, self._call("state"))
