"""The schema definitions and their two renderings (one machine, cluster), checked as text — no engine needed."""

from __future__ import annotations

import re

import pytest

from clickstream_lib import schema
from clickstream_lib.store import DEDUP_WINDOW, MIGRATIONS

# The columns the sink writes: migration 1 may be retuned (ORDER BY / PARTITION BY / TTL) but never renamed/retyped.
EVENTS_COLUMNS = {
    "event_id": "UUID",
    "user_id": "String",
    "session_id": "String",
    "item_id": "String",
    "interaction_type": "LowCardinality(String)",
    "event_time": "DateTime64(3, 'UTC')",
    "page": "String",
    "referrer": "LowCardinality(String)",
    "device": "LowCardinality(String)",
    "country": "LowCardinality(String)",
    "price": "Decimal(12, 2)",
    "currency": "LowCardinality(String)",
    "schema_version": "UInt8",
    "experiment_name": "LowCardinality(String)",
    "experiment_variation": "LowCardinality(String)",
    "properties": "JSON",
    "kafka_topic": "LowCardinality(String)",
    "kafka_partition": "UInt32",
    "kafka_offset": "UInt64",
    "kafka_timestamp": "DateTime64(3, 'UTC')",
    "ingest_time": "DateTime64(3, 'UTC') DEFAULT now64(3)",
}


def columns_of(ddl: str) -> dict[str, str]:
    body = ddl[ddl.index("(\n") + 2 : ddl.index("\n)\n")]
    lines = [line.strip().rstrip(",") for line in body.splitlines()]
    return dict(line.split(" ", 1) for line in lines if not line.startswith("PROJECTION "))


def projections_of(ddl: str) -> list[str]:
    return [line.strip().rstrip(",") for line in ddl.splitlines() if line.strip().startswith("PROJECTION ")]


def test_events_columns_are_the_sink_contract() -> None:
    assert dict(schema.EVENTS.columns) == EVENTS_COLUMNS
    first = MIGRATIONS[0]
    assert first.version == 1
    added = dict(schema.EVENTS.added)
    assert columns_of(first.statements[0]) == {k: v for k, v in EVENTS_COLUMNS.items() if k not in added}
    # The properties migration adds its columns in their place (AFTER): every store has the same column order.
    fifth = MIGRATIONS[schema.PROPERTIES_MIGRATION - 1].statements
    assert set(added.values()) == {schema.PROPERTIES_MIGRATION} and len(fifth) == len(added)
    for stmt, (name, _) in zip(fifth, schema.EVENTS.added, strict=True):
        assert stmt.startswith(
            f"ALTER TABLE {{db}}.events ADD COLUMN IF NOT EXISTS {name} {EVENTS_COLUMNS[name]} AFTER "
        )
    assert f"non_replicated_deduplication_window = {DEDUP_WINDOW}" in first.statements[0]
    assert f"non_replicated_deduplication_window = {DEDUP_WINDOW}" in first.statements[1]


def test_migrations_are_versioned_and_templated() -> None:
    assert [m.version for m in MIGRATIONS] == list(range(1, len(MIGRATIONS) + 1))
    for m in MIGRATIONS:
        for stmt in m.statements:
            # Store.migrate formats only {db}; any other brace would break it or be an injection point.
            assert set(re.findall(r"\{[^}]*\}", stmt)) <= {"{db}"}, stmt
            # Every statement may re-run (a half-applied migration): IF NOT EXISTS, a guarded backfill, or an ALTER
            # that sets the same setting / rebuilds the same projection again.
            assert (
                "IF NOT EXISTS" in stmt
                or stmt.startswith("INSERT INTO {db}.")
                or "IF EXISTS" in stmt
                or re.match(r"ALTER TABLE \{db\}\.\w+ (MODIFY SETTING|MATERIALIZE PROJECTION|MODIFY QUERY) ", stmt)
            ), stmt
    rollups = MIGRATIONS[1].statements
    # Backfills run before the views exist, so a re-run never counts a row twice.
    kinds = [s.split()[0] + (" VIEW" if "MATERIALIZED VIEW" in s else "") for s in rollups]
    n = len(schema.ROLLUPS)
    assert kinds == ["CREATE"] * n + ["INSERT"] * n + ["CREATE VIEW"] * n


def test_rollup_columns_are_keys_or_aggregates() -> None:
    for table in schema.ROLLUPS:
        keys = set(re.findall(r"\w+", table.order_by))
        for name, ctype in table.columns:
            assert name in keys or ctype.startswith(("SimpleAggregateFunction", "AggregateFunction")), (table, name)
        assert table.engine == "AggregatingMergeTree"


def test_cluster_ddl_is_replicated_and_distributed_from_the_same_definitions() -> None:
    stmts = schema.cluster_ddl("analytics", cluster="prod")
    assert stmts[0] == "CREATE DATABASE IF NOT EXISTS analytics ON CLUSTER 'prod'"
    assert all(" ON CLUSTER 'prod'" in s for s in stmts)
    for table in (schema.EVENTS, schema.DEAD_LETTERS, *schema.ROLLUPS):
        local = next(s for s in stmts if s.startswith(f"CREATE TABLE IF NOT EXISTS analytics.{table.name}_local "))
        assert columns_of(local) == dict(table.columns)
        assert (
            f"ENGINE = Replicated{table.engine}('/clickhouse/tables/{{shard}}/analytics/{table.name}', "
            "'{replica}')" in local
        )
        assert f"ORDER BY {table.order_by}" in local
        dist = next(s for s in stmts if s.startswith(f"CREATE TABLE IF NOT EXISTS analytics.{table.name} "))
        assert f"AS analytics.{table.name}_local" in dist
        assert f"ENGINE = Distributed('prod', 'analytics', '{table.name}_local', {table.shard_key})" in dist
    events_local = next(s for s in stmts if "analytics.events_local " in s and s.startswith("CREATE TABLE"))
    assert "replicated_deduplication_window = 1000" in events_local
    assert "cityHash64(user_id)" in schema.EVENTS.shard_key
    views = [s for s in stmts if "MATERIALIZED VIEW" in s]
    assert len(views) == len(schema.VIEWS)
    for v in views:
        # Each shard's view reads its local events and writes its local rollup.
        assert "FROM analytics.events_local " in v
        assert re.search(r"TO analytics\.\w+_local AS SELECT", v)


def test_the_alert_tables_are_in_both_dialects() -> None:
    local = schema.local_ddl("analytics")
    cluster = schema.cluster_ddl("analytics", cluster="prod")
    for t in schema.ALERT_TABLES:
        mine = next(s for s in local if s.startswith(f"CREATE TABLE IF NOT EXISTS analytics.{t.name}\n"))
        assert columns_of(mine) == dict(t.columns) and "ENGINE = ReplacingMergeTree(updated_at)" in mine
        replicated = next(s for s in cluster if s.startswith(f"CREATE TABLE IF NOT EXISTS analytics.{t.name}_local "))
        assert columns_of(replicated) == dict(t.columns)
        assert (
            f"ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/{{shard}}/analytics/{t.name}', '{{replica}}', "
            "updated_at)" in replicated
        )
        dist = next(s for s in cluster if s.startswith(f"CREATE TABLE IF NOT EXISTS analytics.{t.name} "))
        # A rule's rows on one shard: FINAL over the Distributed table then sees every version of a row.
        assert f"ENGINE = Distributed('prod', 'analytics', '{t.name}_local', cityHash64(rule))" in dist
    assert MIGRATIONS[schema.ALERT_PENDING_MIGRATION - 1].statements == (schema.table_ddl(schema.ALERT_PENDING),)


def test_identifiers_are_validated() -> None:
    for bad in ("db; DROP TABLE x", "a-b", "", "1db", "x" * 65):
        with pytest.raises(ValueError, match="not a valid identifier"):
            schema.cluster_ddl(bad)
        with pytest.raises(ValueError, match="not a valid identifier"):
            schema.local_ddl(bad)
    with pytest.raises(ValueError, match="not a valid identifier"):
        schema.cluster_ddl("ok", cluster="x' OR 1")
    with pytest.raises(ValueError, match="out of range"):
        schema.ttl_statement("ok", 0)
    assert schema.ttl_statement("ok", 30).endswith("toDateTime(event_time) + INTERVAL 30 DAY")


def test_projections_come_in_their_own_migration() -> None:
    # Migrations 1 and 2 keep the text they were applied with; migration 3 adds the projections to existing stores.
    for m in MIGRATIONS[:2]:
        assert not any("PROJECTION" in stmt or "deduplicate_merge_projection_mode" in stmt for stmt in m.statements)
    third = MIGRATIONS[2].statements
    tables = [t for t in (schema.EVENTS, schema.DEAD_LETTERS, *schema.ROLLUPS) if t.projections]
    assert {t.name for t in tables} == {"events", "users_by_day"}
    fourth = MIGRATIONS[schema.OPEN_TYPES_MIGRATION - 1].statements  # user_totals again, counting other types
    for t in tables:
        for p in t.projections:
            add = f"ALTER TABLE {{db}}.{t.name} ADD PROJECTION IF NOT EXISTS {p.name} ({p.select})"
            build = f"ALTER TABLE {{db}}.{t.name} MATERIALIZE PROJECTION {p.name}"
            stmts = fourth if t is schema.USERS_BY_DAY else third
            assert stmts.index(add) < stmts.index(build)
            assert any(f"ADD PROJECTION IF NOT EXISTS {p.name} " in x for x in third)
        for k, v in t.settings:
            setting = f"ALTER TABLE {{db}}.{t.name} MODIFY SETTING {k} = {v}"
            # An AggregatingMergeTree accepts a projection only once the merge mode is set.
            assert all(third.index(setting) < third.index(s) for s in third if f"{{db}}.{t.name} ADD PROJECTION" in s)


def test_projections_are_rendered_in_both_dialects() -> None:
    local = {s.split()[5].split(".")[1]: s for s in schema.local_ddl("analytics") if s.startswith("CREATE TABLE")}
    cluster = schema.cluster_ddl("analytics", cluster="prod")
    for t in (schema.EVENTS, schema.DEAD_LETTERS, *schema.ROLLUPS):
        want = [f"PROJECTION {p.name} ({p.select})" for p in t.projections]
        assert projections_of(local[t.name]) == want
        replicated = next(s for s in cluster if s.startswith(f"CREATE TABLE IF NOT EXISTS analytics.{t.name}_local "))
        assert projections_of(replicated) == want
        for k, v in t.settings:
            assert f"{k} = {v}" in local[t.name] and f"{k} = {v}" in replicated
    # The events projection keeps every column the per-user queries read or filter on.
    (by_user,) = schema.EVENTS.projections
    for col in ("user_id", "event_time", "interaction_type", "device", "country", "referrer", "item_id"):
        assert col in by_user.select
    assert by_user.select.endswith("ORDER BY user_id, event_time")
    # top_users' all-types sum is spelled as in the user_totals projection, so the optimizer can match it.
    (totals,) = schema.USERS_BY_DAY.projections
    assert f"sum({schema.USER_TOTAL_SQL})" in totals.select


def test_open_types_migration_leaves_earlier_migrations_as_applied() -> None:
    """Migrations 1-3 render the tables, views and projection without other_types; OPEN_TYPES_MIGRATION adds them."""
    col = schema.OTHER_TYPES_COLUMN
    for m in MIGRATIONS[:3]:
        assert not any(col in stmt for stmt in m.statements), m.version
    fourth = MIGRATIONS[schema.OPEN_TYPES_MIGRATION - 1].statements
    for t in (schema.ITEMS_BY_HOUR, schema.USERS_BY_DAY):
        assert any(x.startswith(f"ALTER TABLE {{db}}.{t.name} ADD COLUMN IF NOT EXISTS {col} ") for x in fourth)
    for v in schema.VIEWS:
        if v.target in ("items_by_hour", "users_by_day"):
            assert f"ALTER TABLE {{db}}.{v.name} MODIFY QUERY {v.select.replace('{src}', '{db}.events')}" in fourth
    # Every total of a wide rollup counts every column, the other types included.
    assert schema.USER_TOTAL_SQL.split(" + ") == list(schema.COUNT_COLUMNS)


def test_a_migration_names_every_view_whose_query_it_changes() -> None:
    """Store.migrate attaches these views again after the migration (Store.reload_views): each MODIFY QUERY counts."""
    views = {v.name for v in schema.VIEWS}
    for m in MIGRATIONS:
        changed = [stmt for stmt in m.statements if " MODIFY QUERY " in stmt]
        assert len(m.modified_views) == len(changed), m.version
        assert set(m.modified_views) <= views, m.version
    assert MIGRATIONS[schema.OPEN_TYPES_MIGRATION - 1].modified_views == ("items_by_hour_mv", "users_by_day_mv")
    assert set(MIGRATIONS[schema.EXACT_DISTINCT_MIGRATION - 1].modified_views) == {
        f"{t.name}_mv" for t in schema.EVENT_ROLLUPS
    }
