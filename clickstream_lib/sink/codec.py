"""What the sink writes into Kafka's commit log and into ClickHouse's dedup tokens, and how it reads it back.

A *recorded range* is one partition's batch ``[first, last]``. Before a batch is inserted, its range is recorded in
the consumer group's committed-offset metadata (:func:`encode_pending`; for a group insert, every range of the insert
on each of its partitions, :func:`encode_group_insert`), so whoever owns the partition next can rebuild the batch
exactly and insert it under the same token (:func:`batch_token`, :func:`group_insert_token`). The protocol is
described in docs/sink.md.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import NamedTuple

PENDING_PREFIX = "clickstream-sink/1"
GROUP_INSERT_PREFIX = "clickstream-sink/2"


class RecordedRange(NamedTuple):
    """One partition's batch ``[first, last]``, as the commit metadata records it."""

    partition: int
    first: int
    last: int


def batch_token(topic: str, epoch: str, partition: int, first: int, last: int, *, database: str, group: str) -> str:
    """The ``insert_deduplication_token`` of the batch ``[first, last]`` of ``topic``/``partition``, stored into
    ``database`` by the consumer group ``group``.

    Everything in it is stable across restarts of the consumer group (so a rebuilt range gets the same token), and
    another consumer group's batches get other tokens. The consumer group comes last: a topic has no ``/``, a
    database is an identifier, so any group id (which may hold any character) cannot make two tokens alike.
    """
    return f"{topic}@{epoch}:{partition}:{first}-{last}/{database}/{group}"


def encode_pending(epoch: str, first: int, last: int) -> str:
    """Commit metadata recording that the batch ``[first, last]`` may be in the store but is not committed."""
    return f"{PENDING_PREFIX} {epoch} {first}-{last}"


def _parse_range(text: str) -> tuple[int, int] | None:
    first_s, sep, last_s = text.partition("-")
    if not sep or not first_s.isdigit() or not last_s.isdigit():
        return None
    first, last = int(first_s), int(last_s)
    return (first, last) if first <= last else None


def decode_pending(metadata: str | None, epoch: str) -> tuple[int, int] | None:
    """The ``(first, last)`` range recorded by :func:`encode_pending`, or None (absent, foreign, other epoch)."""
    if not metadata:
        return None
    parts = metadata.split(" ")
    if len(parts) != 3 or parts[0] != PENDING_PREFIX or parts[1] != epoch:
        return None
    return _parse_range(parts[2])


def _ranges_text(ranges: Sequence[RecordedRange]) -> str:
    """``p:first-last,...`` sorted by partition: the canonical spelling of a group insert's ranges."""
    return ",".join(f"{r.partition}:{r.first}-{r.last}" for r in sorted(ranges))


def encode_group_insert(epoch: str, ranges: Sequence[RecordedRange]) -> str:
    """Commit metadata recording that the batches ``ranges`` went (or go) to the store in one insert.

    Every partition of the insert carries the whole list, so the owner of any one of them can rebuild the insert.
    """
    return f"{GROUP_INSERT_PREFIX} {epoch} {_ranges_text(ranges)}"


def decode_group_insert(metadata: str | None, epoch: str) -> tuple[RecordedRange, ...] | None:
    """The ranges recorded by :func:`encode_group_insert`, sorted by partition, or None (absent, other, malformed)."""
    if not metadata:
        return None
    parts = metadata.split(" ")
    if len(parts) != 3 or parts[0] != GROUP_INSERT_PREFIX or parts[1] != epoch:
        return None
    ranges: list[RecordedRange] = []
    for item in parts[2].split(","):
        p_s, sep, range_s = item.partition(":")
        rng = _parse_range(range_s)
        if not sep or not p_s.isdigit() or rng is None:
            return None
        ranges.append(RecordedRange(int(p_s), *rng))
    partitions = [r.partition for r in ranges]
    if len(ranges) < 2 or len(set(partitions)) != len(partitions):
        return None
    return tuple(sorted(ranges))


def group_insert_token(topic: str, epoch: str, ranges: Sequence[RecordedRange], *, database: str, group: str) -> str:
    """The ``insert_deduplication_token`` of one insert holding the batches ``ranges`` of ``topic``.

    A digest of the sorted ranges: the same batches always give the same token, and any other set (one batch
    more or less, one offset different) another one. Distinct from every :func:`batch_token`; names the database
    and the consumer group as :func:`batch_token` does.
    """
    digest = hashlib.sha256(_ranges_text(ranges).encode()).hexdigest()[:32]
    return f"{topic}@{epoch}:group:{len(ranges)}:{digest}/{database}/{group}"
