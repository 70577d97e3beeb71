"""What bounds the sink's memory and CPU besides its batches: how many records a poll may return after large values,
and the garbage collector's threshold while a sink runs.
"""

from __future__ import annotations

import contextlib
import gc
import math
import threading
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

# A poll decompresses and keeps every record it returns, and a 5 MB value can arrive as a few KiB of lz4: after a value
# of L bytes a poll returns at most batch_max_bytes / L records, for this long after the largest such value was seen.
LARGE_VALUE_MEMORY_S = 60.0
# The first poll after a start knows no value yet: it returns at most this many records (16 x 5 MB = 80 MB), the next
# ones batch_max_rows at once when values are ordinary, else at most twice as many as the poll before.
FIRST_POLL_RECORDS = 16

# While a sink runs, the youngest GC generation collects every GC_YOUNG_THRESHOLD new objects instead of Python's 700:
# each record leaves a ConsumerRecord, its headers list and a row tuple alive for a while, and with the default the
# collector walks the records being validated (or the whole heap) many times per batch, on the consumer thread.
# Reference counting still frees everything without cycles at once; cyclic garbage waits for at most this many new
# objects. Restored when the last sink of the process stops, unless someone changed the thresholds meanwhile.
GC_YOUNG_THRESHOLD = 50_000
_gc_lock = threading.Lock()
_gc_users = 0
_gc_saved: tuple[int, ...] | None = None


@contextlib.contextmanager
def relaxed_gc() -> Iterator[None]:
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


class PollSizer:
    """How many records the next poll may return (``batch_max_rows`` once ordinary events are flowing).

    A poll decompresses and keeps every record it returns. The first after a start returns at most
    :data:`FIRST_POLL_RECORDS`. After a value of ``L`` bytes too large for ``batch_max_rows`` of them to fit in
    ``batch_max_bytes``, a poll returns at most ``batch_max_bytes / L`` records (at least one), and at most twice
    as many as the poll before, until :data:`LARGE_VALUE_MEMORY_S` passed without a value that large; with
    ordinary values the next poll returns ``batch_max_rows``.
    """

    def __init__(self, batch_max_rows: int, batch_max_bytes: int) -> None:
        self.batch_max_rows = batch_max_rows
        self.batch_max_bytes = batch_max_bytes
        self.records = min(batch_max_rows, FIRST_POLL_RECORDS)  # what the next poll may return
        self.large_value: tuple[int, float] = (0, -math.inf)  # the largest value seen lately (bytes) and when
        self._bytes_since_gc = 0  # bytes of values polled since the last collection for large values

    def note(self, records: Mapping[Any, Sequence[Any]], now: float) -> None:
        """Set the next poll's size from this poll's records (by partition)."""
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
            # GC_YOUNG_THRESHOLD new objects (figures in docs/sink.md).
            self._bytes_since_gc += total
            if self._bytes_since_gc >= self.batch_max_bytes:
                self._bytes_since_gc = 0
                gc.collect(1)
        size, seen = self.large_value
        if largest >= size or now - seen > LARGE_VALUE_MEMORY_S:
            size, seen = self.large_value = (largest, now)
        if size * self.batch_max_rows <= self.batch_max_bytes:
            self.records = self.batch_max_rows  # ordinary values: the start's small first poll costs nothing more
        else:
            self.records = max(1, min(self.batch_max_rows, 2 * self.records, self.batch_max_bytes // size))
