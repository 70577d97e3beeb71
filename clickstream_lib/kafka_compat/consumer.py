"""Workarounds for kafka-python's consumer: a join left unapplied, records parked for a resumed partition, the CRC
extension.

Each reaches into kafka-python internals; tests/unit/test_kafka_compat.py checks that they are still where these
functions look for them.
"""

from __future__ import annotations

import logging

from kafka import KafkaConsumer
from kafka.record import util as _record_util

logger = logging.getLogger(__name__)

# How long one poll() may wait while this member is (re)joining its group: a join round trip seldom outlives it.
JOIN_POLL_MS = 1_000


def join_in_progress(consumer: KafkaConsumer) -> bool:
    """True while the consumer's group join is under way; un-wedges a join kafka-python 3.0 would never complete.

    kafka-python 3.0.12 completes a JoinGroup/SyncGroup round trip only from a ``poll()`` that still finds a rejoin
    "needed". A rebalance started by a metadata change (e.g. new partitions) stops being needed as soon as the
    leader has computed the assignment, so when the round trip finishes between two polls (a busy or loaded
    process) its result is never applied: the member keeps no partitions, its heartbeats stay off, and the group
    drops it after the session timeout while it waits forever. Asking for a rejoin makes the next poll join again.
    """
    coordinator = getattr(consumer, "_coordinator", None)
    task = getattr(coordinator, "_join_task", None)
    if coordinator is None or task is None:
        return False
    if task.is_done and not coordinator.need_rejoin():
        logger.warning(
            "group %s: a finished group join was left unapplied by kafka-python; joining again", coordinator.group_id
        )
        coordinator.request_rejoin()
    return True


def unpark_resumed_records(consumer: KafkaConsumer) -> bool:
    """Let kafka-python 3.0.12 hand back the parsed records it parked for a partition that is resumed.

    When a partition is paused while part of its fetched records are already parsed (a poll stopped at
    ``max_records``), the fetcher parks them and restores them only into an *empty* in-line slot; but a drained slot
    keeps its exhausted ``PartitionRecords`` instead of becoming empty, and a partition with parked records is never
    fetched again. The resumed partition then stalls until it is reassigned (seen after the store-outage pause).
    Emptying a drained slot lets the next poll restore the parked records. True when it did.
    """
    fetcher = getattr(consumer, "_fetcher", None)
    parked = getattr(fetcher, "_paused_partition_records", None)
    if not parked:
        return False
    current = getattr(fetcher, "_next_partition_records", None)
    if current is None or current:
        return False  # empty already, or still holding records: they are returned first
    paused = consumer.paused()
    if all(tp in paused for tp in parked):
        return False
    fetcher._next_partition_records = None  # type: ignore[union-attr]
    return True


def crc32c_accelerated() -> bool:
    """True when kafka-python verifies record CRCs with the C ``crc32c`` extension (not its pure-Python fallback)."""
    return getattr(_record_util, "crc32c_c", None) is not None
