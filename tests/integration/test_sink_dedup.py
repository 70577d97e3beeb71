"""Deduplication that no session setting can switch off, and tokens per group and database — against the real Kafka
broker and the real ClickHouse engine."""

from __future__ import annotations

import logging

import pytest

from clickstream_lib.consumer import BatchInfo, Sink
from clickstream_lib.settings import Settings
from clickstream_lib.store import Store, open_client
from tests.integration.sink_worker import make_values, produce

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


def _crash_after_first_batch(infos: list[BatchInfo]) -> object:
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
    caplog.set_level(logging.INFO, logger="clickstream_lib.consumer")
    n = 2_000
    produce(settings, make_values(n, seed=21))
    off = _dedup_off_store(settings, store)
    try:
        crashed: list[BatchInfo] = []
        victim = Sink(settings, off, batch_max_rows=500, on_batch_stored=_crash_after_first_batch(crashed))  # type: ignore[arg-type]
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
    """A second group replaying the topic into the same database (from the log start) is an explicit replay: its
    batches are not dropped as the first group's retries, so it stores a second copy — exactly one, even when it
    crashes between an insert and its commit (its tokens depend only on topic, epoch, ranges, database, group)."""
    caplog.set_level(logging.INFO, logger="clickstream_lib.consumer")
    n = 3_000
    produce(settings, make_values(n, seed=22))
    main: list[BatchInfo] = []
    Sink(settings, store, batch_max_rows=500, on_batch_stored=main.append).run(until_idle=2)
    assert _counts(store) == (n, n)

    replay = settings.replace(kafka_group_id=f"{settings.kafka_group_id}_replay")
    crashed: list[BatchInfo] = []
    with pytest.raises(RuntimeError, match="simulated crash"):
        Sink(replay, store, batch_max_rows=500, on_batch_stored=_crash_after_first_batch(crashed)).run(until_idle=2)
    assert crashed and crashed[0].token.endswith(f"/{store.database}/{replay.kafka_group_id}")
    assert crashed[0].token not in {i.token for i in main}
    Sink(replay, store, batch_max_rows=500).run(until_idle=2)

    rebuilt = [r.getMessage() for r in caplog.records if "rebuilt recorded" in r.getMessage()]
    assert rebuilt and crashed[0].token in " ".join(rebuilt), rebuilt
    assert _counts(store) == (2 * n, n)  # two copies, each event exactly twice
    assert (
        int(store.scalar(f"SELECT max(c) FROM (SELECT count() AS c FROM {store.table('events')} GROUP BY event_id)"))
        == 2
    )
