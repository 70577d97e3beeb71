"""Scale-out: three sink members of one consumer group share a 6-partition topic; a member that leaves hands its
partitions to the others, and every event is stored exactly once.

Embedded mode allows one process per chdb directory, so the members are threads of this process, each with its own
client on the store (``Store.fork``) — the same Sink code that runs as separate processes against a ClickHouse
server (``docker compose up --scale sink=3``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from clickstream_lib.producer import Producer
from clickstream_lib.settings import Settings
from clickstream_lib.sink import Sink
from clickstream_lib.store import Store
from clickstream_lib.topics import ensure_topic
from tests.helpers import wait_until

pytestmark = pytest.mark.integration

PARTITIONS = 6


def wait_for(what: str, condition: Callable[[], bool], limit_s: float = 90.0) -> None:
    """Poll ``condition`` until true; fail naming ``what`` if it never becomes true (a bound, not a speed check)."""
    wait_until(condition, limit_s, what)


def assignments(sinks: list[Sink]) -> list[set[int]]:
    return [set(s.stats().assigned_partitions) for s in sinks]


def balanced(sinks: list[Sink]) -> bool:
    """Every partition owned by exactly one member, and the members' shares differ by at most one."""
    parts = assignments(sinks)
    owned = [p for share in parts for p in share]
    sizes = [len(share) for share in parts]
    return sorted(owned) == list(range(PARTITIONS)) and max(sizes) - min(sizes) <= 1


def stored(store: Store) -> int:
    return int(store.scalar(f"SELECT count() FROM {store.table('events')}"))


@pytest.fixture
def group(settings: Settings, store: Store) -> Iterator[tuple[Settings, list[Sink]]]:
    scaled = settings.replace(kafka_partitions=PARTITIONS)
    ensure_topic(scaled, scaled.kafka_topic, PARTITIONS)
    forks = [store.fork() for _ in range(3)]
    sinks = [Sink(scaled, fork, batch_max_wait_s=0.5, instance_id=None) for fork in forks]
    try:
        yield scaled, sinks
    finally:
        for sink in sinks:
            sink.stop(timeout=20)
        for fork in forks:
            fork.close()


def test_three_members_share_partitions_and_a_leaver_hands_over(
    group: tuple[Settings, list[Sink]], store: Store
) -> None:
    settings, sinks = group
    for sink in sinks:
        sink.start()
    wait_for("three members to split 6 partitions 2/2/2", lambda: balanced(sinks))
    assert sorted(len(share) for share in assignments(sinks)) == [2, 2, 2]

    first = 6_000
    assert Producer(settings, rate=None, seed=11).run(events=first).acked == first
    wait_for(f"{first} rows", lambda: stored(store) == first)
    # Members count a batch once its offsets are committed, which follows the insert.
    wait_for("every batch committed", lambda: sum(s.stats().rows_inserted for s in sinks) >= first)
    per_member = [s.stats().rows_inserted for s in sinks]
    assert sum(per_member) == first
    assert all(n > 0 for n in per_member), f"a member stored nothing: {per_member}"

    leaver, stayers = sinks[2], sinks[:2]
    handed_over = set(leaver.stats().assigned_partitions)
    final = leaver.stop(timeout=20)
    assert not final.running and final.last_error is None
    wait_for("the two stayers to take over all 6 partitions", lambda: balanced(stayers))
    after = assignments(stayers)
    assert sorted(len(share) for share in after) == [3, 3]
    assert handed_over <= after[0] | after[1]

    second = 3_000
    assert Producer(settings, rate=None, seed=12).run(events=second).acked == second
    wait_for(f"{first + second} rows", lambda: stored(store) == first + second)
    wait_for("every batch committed", lambda: sum(s.stats().rows_inserted for s in sinks) >= first + second)
    for sink in stayers:
        sink.stop(timeout=20)
    assert leaver.stats().rows_inserted == per_member[2]  # the leaver stored nothing after leaving
    assert sum(s.stats().rows_inserted for s in sinks) == first + second
    assert store.scalar(f"SELECT count() - uniqExact(event_id) FROM {store.table('events')}") == 0
    assert store.scalar(f"SELECT uniqExact(kafka_partition) FROM {store.table('events')}") == PARTITIONS
