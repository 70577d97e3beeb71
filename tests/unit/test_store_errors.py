"""store_error: what a user reads when ClickHouse refuses a query, per store kind (no services needed).

The embedded engine's refusal is also checked end to end in tests/integration/test_memory_limit.py; a server's
cannot be here (no server on these machines), so its message is checked on the error clickhouse-connect raises.
"""

from __future__ import annotations

from clickhouse_connect.driver.exceptions import DatabaseError

from clickstream_lib.errors import StoreError
from clickstream_lib.settings import Settings
from clickstream_lib.store import MEMORY_LIMIT_EXCEEDED, store_error

HOME_ENV = {"HOME": "/home/someone"}
ENGINE_TEXT = (
    "Code: 241. DB::Exception: (total) memory limit exceeded: would use 1.52 GiB (attempt to allocate chunk of "
    "1.00 GiB), maximum: 1.00 GiB: While executing AggregatingTransform. (MEMORY_LIMIT_EXCEEDED)"
)


def memory_error() -> DatabaseError:
    return DatabaseError(ENGINE_TEXT, code=MEMORY_LIMIT_EXCEEDED, name="MEMORY_LIMIT_EXCEEDED")


def test_embedded_refusal_names_the_limit_and_the_variable() -> None:
    exc = store_error(memory_error(), "query sessions on clickstream", Settings.from_env(HOME_ENV))
    assert isinstance(exc, StoreError)
    text = str(exc)
    assert text.startswith("query sessions on clickstream ran out of memory: ")
    assert "limit of 1024 MB" in text and "raise CLICKSTREAM_MEMORY_LIMIT_MB (e.g. to 2048)" in text
    assert "would use 1.52 GiB" in text  # what the engine needed stays visible
    assert "\n" not in text


def test_embedded_without_a_limit_points_elsewhere() -> None:
    settings = Settings.from_env({**HOME_ENV, "CLICKSTREAM_MEMORY_LIMIT_MB": "0"})
    text = str(store_error(memory_error(), "read-only query", settings))
    assert "90% of RAM" in text and "CLICKHOUSE_URL" in text


def test_server_refusal_names_the_server_settings_not_ours_and_hides_the_password() -> None:
    settings = Settings.from_env({**HOME_ENV, "CLICKHOUSE_URL": "http://dash:s3cret@ch.example:8123/clickstream"})
    error = DatabaseError(ENGINE_TEXT.replace("(total) memory", "query memory") + " user dash:s3cret", code=241)
    text = str(store_error(error, "query funnel on clickstream", settings))
    assert "max_memory_usage" in text and "ch.example" in text
    assert "CLICKSTREAM_MEMORY_LIMIT_MB" not in text  # a server's limits are its own configuration
    assert "s3cret" not in text


def test_other_failures_keep_their_text() -> None:
    error = DatabaseError("Code: 60. DB::Exception: Unknown table expression identifier 'x'. (UNKNOWN_TABLE)", code=60)
    text = str(store_error(error, "read-only query", Settings.from_env(HOME_ENV)))
    assert text == f"read-only query failed: {error}"
    assert "memory" not in text
