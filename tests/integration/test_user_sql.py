"""SQL a user types runs read-only on the store's own engine, and a refused statement changes nothing.

The CLI's refusals (exit 2, one line) are in test_queries_cli.py; this file checks the same store object that a
running sink writes through, in one process.
"""

from __future__ import annotations

import pytest

from clickstream_lib import queries
from clickstream_lib.errors import QueryError
from clickstream_lib.settings import Settings
from clickstream_lib.sink import Sink
from clickstream_lib.store import Store
from tests.integration.sink_worker import make_values, produce

pytestmark = pytest.mark.integration

REFUSED = (
    "INSERT INTO events (user_id) VALUES ('x')",
    "DROP TABLE events",
    "SELECT 1; DROP TABLE events",
    "SELECT 1 SETTINGS readonly = 0",
    "SET readonly = 0",
    "CREATE TABLE default.leak ENGINE = Memory AS SELECT 1",
    "SELECT * FROM file('/etc/hostname', 'LineAsString')",
    "SYSTEM STOP MERGES",
)


def _stored(store: Store) -> tuple[int, int]:
    rows, uniq = store.query_rows(f"SELECT count(), uniqExact(event_id) FROM {store.database}.events")[0]
    return int(rows), int(uniq)


def test_sink_keeps_inserting_after_refused_statements(settings: Settings, store: Store) -> None:
    produce(settings, make_values(300, seed=1))
    Sink(settings, store, batch_max_rows=100).run(until_idle=2)
    assert _stored(store) == (300, 300)
    for sql in REFUSED:
        with pytest.raises(QueryError):
            queries.read_only(store, sql)
    # The sink writes through the same Store: nothing the refused statements tried stuck to its client.
    produce(settings, make_values(200, seed=2))
    stats = Sink(settings, store, batch_max_rows=100).run(until_idle=2)
    assert stats.rows_inserted == 200
    assert _stored(store) == (500, 500)
    assert queries.read_only(store, "SELECT count() AS n FROM events")["n"].tolist() == [500]
    assert store.scalar("SELECT count() FROM system.tables WHERE database = 'default' AND name = 'leak'") == 0


def test_read_only_results(store: Store) -> None:
    df = queries.read_only(store, "SELECT number AS n FROM numbers(3) WHERE n >= {lo:UInt8}", {"lo": 1})
    assert df["n"].tolist() == [1, 2]
    empty = queries.read_only(store, "SELECT user_id, event_time FROM events WHERE 0")
    assert list(empty.columns) == ["user_id", "event_time"] and empty.empty
    with pytest.raises(QueryError, match="empty"):
        queries.read_only(store, "  ")
    with pytest.raises(QueryError, match="cannot parse"):
        queries.read_only(store, "SELEC 1")
