"""The sink: Kafka -> ClickHouse with no loss, no duplicates, and dead letters (docs/sink.md describes the protocol).

:class:`Sink` is the front; its parts, each with a public constructor:

- :mod:`.batch`: a batch (one partition's offset range, validated) and how batches are inserted;
- :mod:`.codec`: the recorded ranges in the commit metadata, and the dedup tokens;
- :mod:`.batcher`: polled records into each partition's batches;
- :mod:`.delivery`: rounds of inserts between a pre- and a post-commit, retried with backoff;
- :mod:`.dead_letters`: rejected records to the dead-letter topic;
- :mod:`.recovery`: where an assigned partition resumes, recorded ranges rebuilt;
- :mod:`.commits`, :mod:`.retry`: offset commits and their errors; backoff;
- :mod:`.startup`: checks before joining the consumer group; :mod:`.memory`: poll sizes and the GC threshold;
- :mod:`.stats`: the live figures.
"""

from __future__ import annotations

from .batch import DEAD_LETTER_COLUMNS, EVENT_COLUMNS, EVENT_INSERT_TYPES, Batch, BatchInfo, Record
from .delivery import GROUP_MAX_BATCHES
from .front import (
    DEFAULT_BATCH_MAX_BYTES,
    DEFAULT_BATCH_MAX_ROWS,
    DEFAULT_BATCH_MAX_WAIT_S,
    DEFAULT_STOP_TIMEOUT_S,
    Sink,
)
from .memory import GC_YOUNG_THRESHOLD
from .startup import FETCH_MAX_PARTITION_BYTES
from .stats import SinkStats

__all__ = [
    "DEAD_LETTER_COLUMNS",
    "DEFAULT_BATCH_MAX_BYTES",
    "DEFAULT_BATCH_MAX_ROWS",
    "DEFAULT_BATCH_MAX_WAIT_S",
    "DEFAULT_STOP_TIMEOUT_S",
    "EVENT_COLUMNS",
    "EVENT_INSERT_TYPES",
    "FETCH_MAX_PARTITION_BYTES",
    "GC_YOUNG_THRESHOLD",
    "GROUP_MAX_BATCHES",
    "Batch",
    "BatchInfo",
    "Record",
    "Sink",
    "SinkStats",
]
