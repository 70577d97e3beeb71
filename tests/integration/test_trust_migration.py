"""The exact-distinct migration (schema.EXACT_DISTINCT_MIGRATION) on a store at the version before it, with data."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pandas as pd

from clickstream_lib import queries, schema
from clickstream_lib.settings import Settings
from clickstream_lib.store import MIGRATIONS
from tests.integration.test_queries import BASE, insert_events, make_events, select
from tests.integration.test_queries_schema import _store_at_version, rollup_events

EXACT = schema.EXACT_DISTINCT_MIGRATION
# A window each event rollup answers: whole days, whole hours (segments by hour), whole minutes (events by minute).
WINDOWS: tuple[tuple[dict[str, Any], dict[str, Any]], ...] = (
    ({}, {}),
    ({"start": BASE + timedelta(days=1), "end": BASE + timedelta(days=2)}, {}),
    ({"start": BASE + timedelta(days=1), "end": BASE + timedelta(days=2)}, {"device": "mobile"}),
    ({"start": BASE + timedelta(hours=5)}, {"country": "DE", "interaction_type": "view"}),
    ({"start": BASE + timedelta(hours=5, minutes=7), "end": BASE + timedelta(days=2, minutes=3)}, {}),
)


def exact_from_rollups(store: object, df: pd.DataFrame) -> None:
    """Every event rollup gives exact distinct users and items, equal to pandas on the rows inserted."""
    used = set()
    for window, filters in WINDOWS:
        k = queries.kpis(store, source="rollup", **window, **filters)  # type: ignore[arg-type]
        used.add(k.attrs["source"])
        assert not k.attrs["estimated"]
        sel = select(df, **window, **filters)
        assert int(k["total_interactions"][0]) == len(sel)
        assert int(k["unique_users"][0]) == sel["user_id"].nunique(), (window, filters)
        assert int(k["unique_items"][0]) == sel["item_id"].nunique(), (window, filters)
    assert used == {t.name for t in schema.EVENT_ROLLUPS}


def test_exact_distinct_migration_rebuilds_the_rollups_of_a_store_with_data(base_settings: Settings) -> None:
    store = _store_at_version(base_settings, "test_exact_migration", EXACT - 1)
    try:
        db = store.database
        df = make_events(n_sessions=1_500, seed=16, n_users=900)
        insert_events(store, df)
        assert store.migrate() == [m.version for m in MIGRATIONS[EXACT - 1 :]]
        exact_from_rollups(store, df)
        for rollup in schema.ROLLUPS:
            assert rollup_events(store, db, rollup) == len(df), rollup.name  # rebuilt, not doubled

        # A half-applied migration re-runs from its first statement: the rebuild is neither lost to insert
        # deduplication (same blocks as the first attempt) nor counted twice.
        for stmt in MIGRATIONS[EXACT - 1].statements:
            store.client.command(stmt.format(db=db))
        store.run_per_day(MIGRATIONS[EXACT - 1])
        exact_from_rollups(store, df)
        for rollup in schema.EVENT_ROLLUPS:
            assert rollup_events(store, db, rollup) == len(df), rollup.name

        # From now on the views keep the exact states.
        more = make_events(n_sessions=200, seed=17, n_users=1_200)
        insert_events(store, more)
        exact_from_rollups(store, pd.concat([df, more], ignore_index=True))

        # The estimates stay available, marked as such.
        approx = queries.kpis(store, source="approx")
        assert approx.attrs["estimated"] and 0 < approx.attrs["error_bound"] < 0.1
        users = pd.concat([df, more])["user_id"].nunique()
        assert abs(int(approx["unique_users"][0]) - users) <= max(1, approx.attrs["error_bound"] * users)
    finally:
        store.client.command("DROP DATABASE IF EXISTS test_exact_migration SYNC")
        store.close()
