"""Consistent reads of the embedded store: a readers-writer gate between its inserts and a set of queries.

ClickHouse gives each SELECT its own snapshot of a table's parts, and an insert into ``events`` writes the rollups
through materialized views after it; so the queries of one dashboard refresh, run one after the other while the sink
inserts, can each see a different set of inserts (a breakdown that does not sum to the total beside it).

With the embedded engine every write to a store comes from one process (chdb allows one per data directory): the
owner, or the process that opened it. :data:`ENGINE_GATE` is that process's gate: :meth:`Store.insert
<clickstream_lib.store.Store.insert>` holds it exclusively, and a refresh set run with ``consistent=True``
(:func:`clickstream_lib.queries.run_many`) shares it, so no insert lands between its queries and every panel reads the
same inserts — from the rollups, at their speed. A server store has writers in other processes and reads at one
ingest time instead (``as_of``).

The gate prefers writers: once an insert waits, new readers wait behind it, so a stream of overlapping refreshes cannot
starve the sink; an insert waits at most for the refresh sets already running.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager


class ReadWriteGate:
    """Many readers or one writer; a waiting writer goes before readers that arrive after it.

    Not owned by a thread: a reader may hand its queries to other threads while it holds the gate.

    Example:
        >>> gate = ReadWriteGate()
        >>> with gate.reading():
        ...     pass  # queries that must see the same inserts
        >>> with gate.writing():
        ...     pass  # one insert
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._writing = False
        self._writers_waiting = 0

    @contextmanager
    def reading(self) -> Iterator[None]:
        with self._cond:
            while self._writing or self._writers_waiting:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                if not self._readers:
                    self._cond.notify_all()

    @contextmanager
    def writing(self) -> Iterator[None]:
        with self._cond:
            self._writers_waiting += 1
            try:
                while self._writing or self._readers:
                    self._cond.wait()
            finally:
                self._writers_waiting -= 1
            self._writing = True
        try:
            yield
        finally:
            with self._cond:
                self._writing = False
                self._cond.notify_all()

    @property
    def readers(self) -> int:
        """Readers holding the gate now."""
        with self._cond:
            return self._readers


#: The gate of this process's embedded engine (one data directory per process).
ENGINE_GATE = ReadWriteGate()
