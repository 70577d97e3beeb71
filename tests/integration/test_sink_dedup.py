"""Deduplication that no session setting can switch off, tokens per group and database, and where a partition without
a committed offset starts — against the real Kafka broker and the real ClickHouse engine."""

from __future__ import annotations

import logging
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from kafka.admin import NewTopic

from clickstream_lib import topics
from clickstream_lib.settings import Settings
from clickstream_lib.sink import BatchInfo, Sink
from clickstream_lib.store import Store, open_client
from tests.integration.sink_worker import ROOT, count, make_values, produce, worker_env

pytestmark = pytest.mark.integration

# What a server profile (or a session) could set to switch insert deduplication off, each measured to do so on
# the engine without the sink's own insert settings (test_the_session_settings_do_switch_dedup_off below).
DEDUP_OFF = {
    "insert_deduplicate": 0,
    "deduplicate_insert": "disable",
    "async_insert": 1,
    "deduplicate_blocks_in_dependent_materialized_views": 0,
}


def _counts(store: Store) -> tuple[int, int]:
    rows, uniq = store.query_rows(f"SELECT count(), uniqExact(event_id) FROM {store.table('events')}")[0]
    return int(rows), int(uniq)


def _rollup_events(store: Store) -> int:
    return int(store.scalar(f"SELECT sum(events) FROM {store.table('events_by_minute')}") or 0)


def _dedup_off_store(settings: Settings, store: Store) -> Store:
    """A second client on the test's database whose session switches deduplication off, as a profile would."""
    return Store(settings, open_client(settings.store_url, store.database, settings=DEDUP_OFF), store.database)


def _crash_after_first_batch(infos: list[BatchInfo]) -> Callable[[BatchInfo], None]:
    def crash(info: BatchInfo) -> None:
        infos.append(info)
        raise RuntimeError("simulated crash between an insert and its commit")

    return crash


def test_the_session_settings_do_switch_dedup_off(settings: Settings, store: Store) -> None:
    """The premise: with these session settings an insert carrying a token is stored twice, and with only the view
    setting a replayed block is dropped from its table but counted twice by a materialized view."""
    off = _dedup_off_store(settings, store)
    try:
        db = store.database
        changed = dict(off.query_rows("SELECT name, value FROM system.settings WHERE changed"))
        assert {k: changed.get(k) for k in DEDUP_OFF} == {k: str(v) for k, v in DEDUP_OFF.items()}
        window = "SETTINGS non_replicated_deduplication_window = 100"
        off.client.command(f"CREATE TABLE {db}.probe (x UInt64) ENGINE = MergeTree ORDER BY x {window}")
        off.client.command(f"CREATE TABLE {db}.probe_n (n UInt64) ENGINE = SummingMergeTree ORDER BY () {window}")
        off.client.command(
            f"CREATE MATERIALIZED VIEW {db}.probe_mv TO {db}.probe_n AS SELECT count() AS n FROM {db}.probe"
        )

        def twice(**insert_settings: object) -> tuple[int, int]:
            off.client.command(f"TRUNCATE TABLE {db}.probe")
            off.client.command(f"TRUNCATE TABLE {db}.probe_n")
            for _ in range(2):
                off.client.insert(
                    f"{db}.probe", [[1, 2, 3]], column_names=["x"], column_oriented=True, settings=insert_settings
                )
            return int(off.scalar(f"SELECT count() FROM {db}.probe")), int(
                off.scalar(f"SELECT sum(n) FROM {db}.probe_n")
            )

        assert twice(insert_deduplication_token="t") == (6, 6)
        only_view_off = {
            k: v for k, v in store.dedup_settings().items() if k != "deduplicate_blocks_in_dependent_materialized_views"
        }
        assert twice(insert_deduplication_token="u", **only_view_off) == (3, 6)
        assert twice(insert_deduplication_token="v", **store.dedup_settings()) == (3, 3)
    finally:
        off.close()


def test_a_retried_insert_is_dropped_even_when_the_session_switches_dedup_off(
    settings: Settings, store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    """The sink's own insert settings win over the session's: a batch stored, then rebuilt after a crash before its
    commit, is dropped from events and from the rollups."""
    caplog.set_level(logging.INFO, logger="clickstream_lib.sink")
    n = 2_000
    produce(settings, make_values(n, seed=21))
    off = _dedup_off_store(settings, store)
    try:
        crashed: list[BatchInfo] = []
        victim = Sink(settings, off, batch_max_rows=500, on_batch_stored=_crash_after_first_batch(crashed))
        with pytest.raises(RuntimeError, match="simulated crash"):
            victim.run(until_idle=2)
        stored_first = _counts(store)[0]
        assert stored_first > 0 and crashed
        Sink(settings, off, batch_max_rows=500).run(until_idle=2)
    finally:
        off.close()
    rebuilt = [r.getMessage() for r in caplog.records if "rebuilt recorded" in r.getMessage()]
    assert rebuilt and crashed[0].token in " ".join(rebuilt), rebuilt  # the same token
    assert _counts(store) == (n, n)
    assert _rollup_events(store) == n


def test_a_replay_group_has_its_own_tokens_and_keeps_them_across_a_crash(
    settings: Settings, store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    """A second group replaying the topic into the same database (--from-beginning) is an explicit replay: its
    batches are not dropped as the first group's retries, so it stores a second copy — exactly one, even when it
    crashes between an insert and its commit (its tokens depend only on topic, epoch, ranges, database, group)."""
    caplog.set_level(logging.INFO, logger="clickstream_lib.sink")
    n = 3_000
    produce(settings, make_values(n, seed=22))
    main: list[BatchInfo] = []
    Sink(settings, store, batch_max_rows=500, on_batch_stored=main.append).run(until_idle=2)
    assert _counts(store) == (n, n)

    replay = settings.replace(kafka_group_id=f"{settings.kafka_group_id}_replay")
    crashed: list[BatchInfo] = []
    with pytest.raises(RuntimeError, match="simulated crash"):
        Sink(
            replay, store, batch_max_rows=500, from_beginning=True, on_batch_stored=_crash_after_first_batch(crashed)
        ).run(until_idle=2)
    assert crashed and crashed[0].token.endswith(f"/{store.database}/{replay.kafka_group_id}")
    assert crashed[0].token not in {i.token for i in main}
    Sink(replay, store, batch_max_rows=500, from_beginning=True).run(until_idle=2)

    rebuilt = [r.getMessage() for r in caplog.records if "rebuilt recorded" in r.getMessage()]
    assert rebuilt and crashed[0].token in " ".join(rebuilt), rebuilt
    assert _counts(store) == (2 * n, n)  # two copies, each event exactly twice
    assert (
        int(store.scalar(f"SELECT max(c) FROM (SELECT count() AS c FROM {store.table('events')} GROUP BY event_id)"))
        == 2
    )


def _poison_tail(settings: Settings) -> None:
    """One invalid message per partition, last: the highest stored offset of a partition may be a dead letter."""
    from kafka import KafkaProducer

    prod = KafkaProducer(**topics.client_config(settings))
    for p in range(settings.kafka_partitions):
        prod.send(settings.kafka_topic, b"{not json", partition=p)
    prod.flush()
    prod.close()


def test_a_new_group_starts_after_what_the_database_holds(
    settings: Settings, store: Store, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    """Group A stores the topic; a new group B (or A after its offsets expired) starts each partition after the
    highest offset stored from it and says so; with --from-beginning into a fresh database everything is stored."""
    caplog.set_level(logging.INFO, logger="clickstream_lib.sink")
    n = 3_000
    produce(settings, make_values(n, seed=23))
    _poison_tail(settings)
    Sink(settings, store, batch_max_rows=700).run(until_idle=2)
    assert _counts(store) == (n, n)
    ends = topics.end_offsets(settings, settings.kafka_topic)
    stored = store.stored_offsets(settings.kafka_topic)
    assert stored == {p: end - 1 for p, end in ends.items()}  # the last offset of each partition is a dead letter

    group_b = settings.replace(kafka_group_id=f"{settings.kafka_group_id}_b")
    stats = Sink(group_b, store).run(until_idle=2)
    assert stats.rows_inserted == 0 and stats.dead_letters == 0
    assert _counts(store) == (n, n)
    assert int(store.scalar(f"SELECT count() FROM {store.table('dead_letters')}")) == settings.kafka_partitions
    starts = [r.getMessage() for r in caplog.records if "already holds offsets up to" in r.getMessage()]
    assert len(set(starts)) == settings.kafka_partitions, starts  # once per assignment (a rejoin repeats it)
    for p, end in ends.items():
        assert any(f"partition {p}:" in m and f"up to {end - 1}: starting at {end}" in m for m in starts), starts

    more = make_values(1_000, seed=24)
    produce(settings, more)
    stats = Sink(group_b, store).run(until_idle=2)  # B now has committed offsets: it resumes from them
    assert stats.rows_inserted == len(more)
    assert _counts(store) == (n + len(more), n + len(more))

    # --from-beginning into a fresh database, through the CLI (its own process and data directory).
    fresh = settings.replace(clickhouse_database=f"{settings.clickhouse_database}_fresh")
    env = worker_env(fresh, tmp_path / "data")
    env["KAFKA_GROUP_ID"] = f"{settings.kafka_group_id}_rebuild"
    done = subprocess.run(
        [sys.executable, "-m", "clickstream_lib", "-v", "consume", "--from-beginning", "--until-idle", "3"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "replaying from the log start" in done.stderr, done.stderr[-3000:]
    got = count(env)
    assert (got["rows"], got["uniq"], got["dead"]) == (n + len(more), n + len(more), settings.kafka_partitions)


def _recreate_topic(settings: Settings) -> None:
    with topics.admin(settings) as client:
        client.delete_topics([settings.kafka_topic])
    deadline = time.monotonic() + 60
    while True:
        try:
            with topics.admin(settings) as client:
                client.create_topics([NewTopic(settings.kafka_topic, settings.kafka_partitions, 1)])
            return
        except Exception:  # TopicAlreadyExists while the deletion completes
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def test_stored_offsets_of_a_recreated_topic_are_not_trusted(
    settings: Settings, store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    """A topic deleted and re-created under the same name restarts its offsets, and the stored rows do not name the
    epoch: a stored offset at or past the partition's end, or whose record differs from the one Kafka holds there,
    came from the old topic — the partition starts at the log start, and nothing of the new topic is skipped."""
    caplog.set_level(logging.INFO, logger="clickstream_lib.sink")
    settings = settings.replace(kafka_partitions=1)
    produce(settings, make_values(100, seed=25))
    Sink(settings, store).run(until_idle=2)
    assert _counts(store) == (100, 100)

    _recreate_topic(settings)
    produce(settings, make_values(50, seed=26))  # ends below the stored offsets
    group_b = settings.replace(kafka_group_id=f"{settings.kafka_group_id}_b")
    Sink(group_b, store).run(until_idle=2)
    assert _counts(store) == (150, 150)
    # Up to the old topic's highest offset: two stored records at offset 99 now, one of them this topic's.
    produce(settings, make_values(50, seed=28))
    Sink(group_b, store).run(until_idle=2)
    assert _counts(store) == (200, 200)
    stats = Sink(settings.replace(kafka_group_id=f"{settings.kafka_group_id}_d"), store).run(until_idle=2)
    assert stats.rows_inserted == 0 and _counts(store) == (200, 200)
    assert any("already holds offsets up to 99: starting at 100" in r.getMessage() for r in caplog.records)

    _recreate_topic(settings)
    produce(settings, make_values(150, seed=27))  # past the stored offsets, other records at them
    Sink(settings.replace(kafka_group_id=f"{settings.kafka_group_id}_c"), store).run(until_idle=2)
    assert _counts(store) == (350, 350)
    warned = sorted({r.getMessage() for r in caplog.records if "not from this topic's log" in r.getMessage()})
    assert len(warned) == 2, warned  # once per assignment (a rejoin repeats it)
    assert [("it ends at 50)" in m, "holds another record at 99" in m) for m in warned] == [
        (True, False),
        (False, True),
    ]
