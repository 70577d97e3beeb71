"""The schema on the real engine: migrations, rollups kept by views, backfill, TTL, and the cluster DDL parsing."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pandas as pd

from clickstream_lib import queries, schema
from clickstream_lib.settings import Settings
from clickstream_lib.store import MIGRATIONS, Store, connect
from tests.integration.test_queries import (
    BASE,
    EVENT_COLUMNS,
    insert_events,
    make_events,
    to_columns,
    with_open_types,
    with_properties,
)


def rollup_events(store: Store, db: str, table: schema.Table) -> int:
    """Events counted by a rollup: its ``events`` column, or the per-type columns of a wide one."""
    cols = "events" if "events" in table.column_names else " + ".join(schema.COUNT_COLUMNS)
    return int(store.scalar(f"SELECT sum({cols}) FROM {db}.{table.name}"))


def normalized(create: str) -> tuple[str, frozenset[str]]:
    """SHOW CREATE TABLE text with its SETTINGS as a set: a setting added by ALTER is listed after the defaults."""
    head, _, settings = create.replace("\\n", "\n").partition("\nSETTINGS ")
    return head, frozenset(settings.split(", "))


def plan_reads(store: Store, name: str, **kwargs: Any) -> str:
    """The EXPLAIN text of a named query as run() would send it (with its query-level settings)."""
    _, q, sql = queries.plan(name, store.database, **kwargs)
    return "\n".join(str(r[0]) for r in store.query_rows(f"EXPLAIN {sql}", q.params))


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


def _store_at_version(base_settings: Settings, database: str, version: int) -> Store:
    """A fresh database holding the schema as migrations 1..``version`` left it (an older store to upgrade)."""
    store = connect(base_settings.replace(clickhouse_database=database), migrate=False)
    db = store.database
    store.client.command(f"DROP DATABASE IF EXISTS {db} SYNC")
    store.client.command(f"CREATE DATABASE {db}")
    store.client.command(
        f"CREATE TABLE {db}.schema_migrations (version UInt32, name String, applied_at DateTime64(3, 'UTC') "
        "DEFAULT now64(3)) ENGINE = MergeTree ORDER BY version"
    )
    for m in MIGRATIONS[:version]:
        for stmt in m.statements:
            store.client.command(stmt.format(db=db))
        store.run_per_day(m)
        store.client.insert(f"{db}.schema_migrations", [[m.version, m.name]], column_names=["version", "name"])
    return store


def test_rollups_are_backfilled_when_added_to_a_database_with_events(base_settings: Settings) -> None:
    store = _store_at_version(base_settings, "test_backfill_q", 1)  # as it was before the rollups existed
    try:
        db = store.database
        df = make_events(n_sessions=200, seed=5)
        insert_events(store, df)
        # Migration 2 applied twice (a half-applied migration re-runs before the later ones): no double count.
        for _ in range(2):
            for stmt in MIGRATIONS[1].statements:
                store.client.command(stmt.format(db=db))
        assert int(store.scalar(f"SELECT sum(events) FROM {db}.events_by_minute")) == len(df)
        m2 = MIGRATIONS[1]
        store.client.insert(f"{db}.schema_migrations", [[m2.version, m2.name]], column_names=["version", "name"])
        assert store.migrate() == [m.version for m in MIGRATIONS[2:]]
        for rollup in schema.ROLLUPS:
            assert rollup_events(store, db, rollup) == len(df)
        insert_events(store, df.iloc[:10])  # and the views keep them from now on
        assert int(store.scalar(f"SELECT sum(events) FROM {db}.events_by_minute")) == len(df) + 10
    finally:
        store.client.command("DROP DATABASE IF EXISTS test_backfill_q SYNC")
        store.close()


def test_local_ddl_builds_the_same_schema_as_the_migrations(store: Store) -> None:
    other = f"{store.database}_ddl"
    store.client.command(f"CREATE DATABASE {other}")
    try:
        for stmt in schema.local_ddl(other):
            store.client.command(stmt)
        # alert_events: migration 4 spells its table out; the definition in schema.py must make the same one.
        for t in (schema.EVENTS, schema.DEAD_LETTERS, *schema.ROLLUPS, *schema.ALERT_TABLES):
            a = str(store.client.command(f"SHOW CREATE TABLE {store.database}.{t.name}"))
            b = str(store.client.command(f"SHOW CREATE TABLE {other}.{t.name}"))
            assert normalized(a.replace(store.database, "DB")) == normalized(b.replace(other, "DB"))
    finally:
        store.client.command(f"DROP DATABASE IF EXISTS {other} SYNC")


def test_cluster_ddl_parses_on_the_engine(store: Store) -> None:
    for stmt in schema.cluster_ddl("analytics", cluster="prod"):
        formatted = store.scalar("SELECT formatQuery({q:String})", {"q": stmt})
        assert "ON CLUSTER prod" in formatted
    ttl = schema.ttl_statement(store.database, 30)
    store.client.command(ttl)
    assert "TTL toDateTime(event_time) + toIntervalDay(30)" in str(
        store.client.command(f"SHOW CREATE TABLE {store.database}.events")
    )


def test_projections_serve_the_long_passes_with_the_same_results(store: Store) -> None:
    """The by_user and user_totals projections are what the optimizer reads, and give the table's own answers."""
    df = make_events(n_sessions=300, seed=17)
    half = len(df) // 2
    insert_events(store, df.iloc[:half])
    insert_events(store, df.iloc[half:])
    assert "ReadFromMergeTree (by_user)" in plan_reads(store, "funnel")
    assert "ReadFromMergeTree (by_user)" in plan_reads(store, "sessions", device="mobile")
    assert "ReadFromMergeTree (user_totals)" in plan_reads(store, "top_users")
    assert "ReadFromMergeTree (user_totals)" in plan_reads(store, "top_users", interaction_type=["view", "click"])
    # With a time bound the hour-first table skips granules; a day filter on users_by_day cannot use the totals.
    start = BASE + timedelta(days=1)
    assert "(by_user)" not in plan_reads(store, "funnel", start=start)
    assert "(user_totals)" not in plan_reads(store, "top_users", start=start)
    off = {"optimize_use_projections": 0}
    for name, kwargs in (
        ("funnel", {}),
        ("funnel", {"country": ["DE", "US"], "window_s": 60}),
        ("sessions", {}),
        ("session_durations", {"gap_s": 300}),
        ("retention", {"days": 2}),
        ("top_users", {"limit": 50}),
        ("top_users", {"limit": 50, "interaction_type": ["add_to_cart", "purchase"]}),
    ):
        got = queries.run(store, name, **kwargs)
        nq, q, _ = queries.plan(name, store.database, **kwargs)
        with store._lock:
            plain = store.client.query_df(q.plain_sql, parameters=q.params, settings=off)
        want = nq.post(plain, q) if nq.post else plain
        pd.testing.assert_frame_equal(got.reset_index(drop=True), want.reset_index(drop=True), check_dtype=False)


def test_a_store_upgraded_to_the_projections_answers_as_before(base_settings: Settings) -> None:
    """Migration 3 on a store that already holds events: projections are built for the old parts, answers unchanged."""
    store = _store_at_version(base_settings, "test_projection_upgrade_q", 2)  # as it was before the projections
    try:
        db = store.database
        df = make_events(n_sessions=200, seed=23)
        insert_events(store, df)
        # Read as the code of that version could: today's rollup queries expect today's columns.
        before = {n: queries.run(store, n, source="raw") for n in ("funnel", "sessions", "retention", "top_users")}
        assert store.migrate() == [m.version for m in MIGRATIONS[2:]]
        assert store.migrate() == []
        for n, frame in before.items():
            pd.testing.assert_frame_equal(queries.run(store, n), frame, check_dtype=False)
        create = str(store.client.command(f"SHOW CREATE TABLE {db}.events"))
        assert "PROJECTION by_user" in create
        assert "PROJECTION user_totals" in str(store.client.command(f"SHOW CREATE TABLE {db}.users_by_day"))
        # Re-running the migration's statements (a half-applied migration) changes nothing.
        for stmt in MIGRATIONS[2].statements:
            store.client.command(stmt.format(db=db))
        for n, frame in before.items():
            pd.testing.assert_frame_equal(queries.run(store, n), frame, check_dtype=False)
    finally:
        store.client.command("DROP DATABASE IF EXISTS test_projection_upgrade_q SYNC")
        store.close()


def test_a_store_at_version_3_upgrades_with_its_data_and_counts_every_type(base_settings: Settings) -> None:
    """A store as released before open types (migrations 1-3) with events: migrate, answers unchanged, then other
    types count in every rollup."""
    store = _store_at_version(base_settings, "test_open_types_upgrade_q", 3)
    try:
        db = store.database
        df = make_events(n_sessions=200, seed=29)
        insert_events(store, df)
        names = ("kpis", "breakdown", "top_users", "top_items", "item_performance", "funnel", "sessions")
        # Read from the raw table: today's rollup queries expect the columns schema.OPEN_TYPES_MIGRATION adds.
        before = {n: queries.run(store, n, source="raw") for n in names}
        assert store.migrate() == [m.version for m in MIGRATIONS[3:]]
        assert store.migrate() == []
        for n, frame in before.items():
            for s in ("raw", "auto"):
                got = queries.run(store, n, source=s)
                pd.testing.assert_frame_equal(got, frame, check_dtype=False, obj=f"{n} {s}")
        # Old rows have no experiment and no properties, which is what the sink stored of them.
        blank = f"SELECT count() FROM {db}.events WHERE experiment_name = '' AND toString(properties) = '{{}}'"
        assert int(store.scalar(blank)) == len(df)
        # Re-running the migrations' statements (a half-applied migration) changes nothing.
        for m in MIGRATIONS[3:]:
            for stmt in m.statements:
                store.client.command(stmt.format(db=db))
            store.run_per_day(m)
        # Events of other types from now on: every rollup total counts them, as the raw table does.
        more = with_open_types(make_events(n_sessions=200, seed=31), share=0.5)
        insert_events(store, more)
        for rollup in schema.ROLLUPS:
            assert rollup_events(store, db, rollup) == len(df) + len(more), rollup.name
        for n in ("kpis", "top_users", "top_items", "breakdown"):
            raw = queries.run(store, n, source="raw", limit=1000) if n.startswith("top") else queries.run(store, n)
            rolled = (
                queries.run(store, n, source="rollup", limit=1000) if n.startswith("top") else queries.run(store, n)
            )
            count = [c for c in raw.columns if c in ("total_interactions", "events", "interactions")]
            pd.testing.assert_frame_equal(raw[count].astype(int), rolled[count].astype(int), obj=n)
        assert "ReadFromMergeTree (user_totals)" in plan_reads(store, "top_users")
    finally:
        store.client.command("DROP DATABASE IF EXISTS test_open_types_upgrade_q SYNC")
        store.close()


def test_the_experiments_rollup_is_backfilled_from_stored_events(base_settings: Settings) -> None:
    """The experiments migration on a store holding events with experiments: the rollup answers as raw events do."""
    version = schema.EXPERIMENTS_MIGRATION
    store = _store_at_version(base_settings, "test_experiment_rollup_q", version - 1)
    try:
        insert_events(store, with_properties(make_events(n_sessions=300, seed=61)))
        raw = queries.run(store, "experiments", source="raw")
        assert len(raw) == 4
        assert store.migrate() == [m.version for m in MIGRATIONS[version - 1 :]]
        for stmt in MIGRATIONS[version - 1].statements:  # a re-run (half-applied migration) does not count twice
            store.client.command(stmt.format(db=store.database))
        for name in ("experiments", "experiment_daily"):
            rolled = queries.run(store, name, source="rollup")
            pd.testing.assert_frame_equal(rolled, queries.run(store, name, source="raw"), check_dtype=False, obj=name)
    finally:
        store.client.command("DROP DATABASE IF EXISTS test_experiment_rollup_q SYNC")
        store.close()
