"""The schema on the real engine: migrations, rollups kept by views, backfill, TTL, and the cluster DDL parsing."""

from __future__ import annotations

import pandas as pd

from clickstream_lib import queries, schema
from clickstream_lib.settings import Settings
from clickstream_lib.store import MIGRATIONS, Store, connect
from tests.integration.test_queries import EVENT_COLUMNS, insert_events, make_events, to_columns


def rollup_events(store: Store, db: str, table: schema.Table) -> int:
    """Events counted by a rollup: its ``events`` column, or the per-type columns of a wide one."""
    cols = "events" if "events" in table.column_names else " + ".join(schema.TYPE_COLUMNS.values())
    return int(store.scalar(f"SELECT sum({cols}) FROM {db}.{table.name}"))


def test_migrations_create_rollups_and_are_idempotent(store: Store) -> None:
    assert store.schema_version() == MIGRATIONS[-1].version
    tables = {r[0] for r in store.query_rows(f"SHOW TABLES FROM {store.database}")}
    assert {t.name for t in (schema.EVENTS, schema.DEAD_LETTERS, *schema.ROLLUPS)} <= tables
    assert {v.name for v in schema.VIEWS} <= tables
    assert store.migrate() == []
    assert store.dedup_window("events") > 0


def test_views_keep_rollups_equal_to_raw_across_inserts(store: Store) -> None:
    df = make_events(n_sessions=300, seed=11)
    half = len(df) // 2
    insert_events(store, df.iloc[:half])
    insert_events(store, df.iloc[half:])  # two blocks: rollup rows for the same key merge at query time
    for query in ("kpis", "breakdown", "top_items", "top_users"):
        raw = queries.run(store, query, source="raw")
        rolled = queries.run(store, query, source="rollup")
        assert rolled.attrs["source"] != "raw"
        count = [c for c in raw.columns if c in ("total_interactions", "events", "interactions")]
        pd.testing.assert_frame_equal(raw[count].astype(int), rolled[count].astype(int))
    for rollup in schema.ROLLUPS:
        assert rollup_events(store, store.database, rollup) == len(df)


def test_a_replayed_block_is_counted_once_in_every_rollup(store: Store) -> None:
    """The sink replays a batch with the same insert_deduplication_token after a crash: no table may count it twice."""
    df = make_events(n_sessions=80, seed=13)
    cols = to_columns(df)
    for _ in range(2):
        store.insert("events", cols, EVENT_COLUMNS, dedup_token="clicks:0:0-999")
    assert int(store.scalar(f"SELECT count() FROM {store.database}.events")) == len(df)
    for rollup in schema.ROLLUPS:
        assert store.dedup_window(rollup.name) > 0
        assert rollup_events(store, store.database, rollup) == len(df), rollup.name


def test_rollups_are_backfilled_when_added_to_a_database_with_events(base_settings: Settings) -> None:
    settings = base_settings.replace(clickhouse_database="test_backfill_q")
    store = connect(settings, migrate=False)
    try:
        db = store.database
        store.client.command(f"DROP DATABASE IF EXISTS {db}")
        store.client.command(f"CREATE DATABASE {db}")
        store.client.command(
            f"CREATE TABLE {db}.schema_migrations (version UInt32, name String, applied_at DateTime64(3, 'UTC') "
            "DEFAULT now64(3)) ENGINE = MergeTree ORDER BY version"
        )
        for stmt in MIGRATIONS[0].statements:  # a store as it was before the rollups existed
            store.client.command(stmt.format(db=db))
        store.client.insert(f"{db}.schema_migrations", [[1, MIGRATIONS[0].name]], column_names=["version", "name"])
        df = make_events(n_sessions=200, seed=5)
        insert_events(store, df)
        assert store.migrate() == [2]
        for rollup in schema.ROLLUPS:
            assert rollup_events(store, db, rollup) == len(df)
        # Re-running the migration's statements (a half-applied migration) does not double count.
        for stmt in MIGRATIONS[1].statements:
            store.client.command(stmt.format(db=db))
        assert int(store.scalar(f"SELECT sum(events) FROM {db}.events_by_minute")) == len(df)
        insert_events(store, df.iloc[:10])  # and the views keep them from now on
        assert int(store.scalar(f"SELECT sum(events) FROM {db}.events_by_minute")) == len(df) + 10
    finally:
        store.client.command("DROP DATABASE IF EXISTS test_backfill_q")
        store.close()


def test_local_ddl_builds_the_same_schema_as_the_migrations(store: Store) -> None:
    other = f"{store.database}_ddl"
    store.client.command(f"CREATE DATABASE {other}")
    try:
        for stmt in schema.local_ddl(other):
            store.client.command(stmt)
        for t in (schema.EVENTS, schema.DEAD_LETTERS, *schema.ROLLUPS):
            a = str(store.client.command(f"SHOW CREATE TABLE {store.database}.{t.name}"))
            b = str(store.client.command(f"SHOW CREATE TABLE {other}.{t.name}"))
            assert a.replace(store.database, "DB") == b.replace(other, "DB")
    finally:
        store.client.command(f"DROP DATABASE IF EXISTS {other}")


def test_cluster_ddl_parses_on_the_engine(store: Store) -> None:
    for stmt in schema.cluster_ddl("analytics", cluster="prod"):
        formatted = store.scalar("SELECT formatQuery({q:String})", {"q": stmt})
        assert "ON CLUSTER prod" in formatted
    ttl = schema.ttl_statement(store.database, 30)
    store.client.command(ttl)
    assert "TTL toDateTime(event_time) + toIntervalDay(30)" in str(
        store.client.command(f"SHOW CREATE TABLE {store.database}.events")
    )
