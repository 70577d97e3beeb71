"""The embedded engine's memory limit (CLICKSTREAM_MEMORY_LIMIT_MB): in force, and a clear error when too small.

The limit is an engine start-up option, so the tests that change it run `clickstream query` in their own processes
and data directory (chdb: one directory per process, one engine per process).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from clickstream_lib.settings import Settings
from clickstream_lib.store import Store
from tests.conftest import base_env

ROOT = Path(__file__).resolve().parents[2]
CLI = str(ROOT / ".venv" / "bin" / "clickstream")
# ingestion_latency then takes exact quantiles of 6M latencies of one pass: arrays that, unlike a GROUP BY over many
# keys (which the engine spills to disk near the limit), must fit in memory.
N_EVENTS = 6_000_000
# Well above the ~125 MB the process holds once the engine is up (at 128 MB the store itself sometimes failed to
# open), well below what the queries below need.
SMALL_LIMIT_MB = 256

# Synthetic rows straight from numbers(): 1,000 users with 6,000 events each, one Kafka partition. The generator
# would take minutes for this many events; the memory a per-user pass needs depends on rows per user, not on realism.
FILL = f"""
from clickstream_lib.settings import Settings
from clickstream_lib.store import connect
store = connect(Settings.from_env())
t = "fromUnixTimestamp64Milli(toInt64(1764000000000 + number * 10), 'UTC')"
store.client.command(
    "INSERT INTO clickstream.events (event_id, user_id, session_id, item_id, interaction_type, event_time, "
    "kafka_topic, kafka_partition, kafka_offset, kafka_timestamp, ingest_time) "
    "SELECT generateUUIDv4(), concat('user_', toString(number % 1000)), 's', concat('item_', toString(number % 50)), "
    f"'view', {{t}}, 'clickstream_topic', 0, number, {{t}}, {{t}} FROM numbers({N_EVENTS})"
)
store.close()
"""


@pytest.fixture(scope="module")
def big_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A data directory holding N_EVENTS events, filled by a process that has exited (releasing the directory)."""
    env = base_env(CLICKSTREAM_DATA_DIR=str(tmp_path_factory.mktemp("memory-limit")))
    subprocess.run([sys.executable, "-c", FILL], env=env, cwd=ROOT, check=True, timeout=300)
    return env


def query(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([CLI, "query", *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_the_engine_runs_with_the_configured_limit(store: Store, settings: Settings) -> None:
    values = dict(
        store.query_rows(
            "SELECT name, value FROM system.server_settings "
            "WHERE name IN ('max_server_memory_usage', 'memory_worker_use_cgroup')"
        )
    )
    assert settings.memory_limit_mb == 1024
    assert int(values["max_server_memory_usage"]) == settings.memory_limit_mb * 2**20
    # The engine measures its own resident memory, not the whole cgroup's (the Python process, other kernels).
    assert values["memory_worker_use_cgroup"] == "0"
    # Queries keep their threads: the engine's default asks for 1 GiB free per thread, i.e. one thread under 1 GB.
    per_thread = store.scalar("SELECT getSetting('max_threads_min_free_memory_per_thread')")
    assert int(per_thread) == settings.memory_limit_mb * 2**20 // 4
    fork = store.fork()  # every client of the store gets the connection setting
    try:
        assert int(fork.scalar("SELECT getSetting('max_threads_min_free_memory_per_thread')")) == int(per_thread)
    finally:
        fork.close()


def test_a_query_over_the_limit_names_the_setting_to_raise(big_env: dict[str, str]) -> None:
    small = {**big_env, "CLICKSTREAM_MEMORY_LIMIT_MB": str(SMALL_LIMIT_MB)}
    for args in (
        ("ingestion_latency", "--format", "json"),
        ("--sql", "SELECT length(groupArray(toString(event_id))) AS n FROM events"),
    ):
        r = query(small, *args)
        assert r.returncode == 1, (args, r.stdout, r.stderr)
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1, r.stderr
        assert "ran out of memory" in lines[0]
        assert f"limit of {SMALL_LIMIT_MB} MB" in lines[0]
        assert "raise CLICKSTREAM_MEMORY_LIMIT_MB" in lines[0]
        assert "Traceback" not in r.stderr

    # The same query within the default limit: answered, every event counted.
    r = query(big_env, "ingestion_latency", "--format", "json")
    assert r.returncode == 0, r.stderr
    assert {row["events"] for row in json.loads(r.stdout)} == {N_EVENTS}


def test_duplicate_offsets_are_counted_in_little_memory(big_env: dict[str, str]) -> None:
    """ingestion_partitions counts 6M distinct offsets of one partition exactly under the small engine limit (a
    bitmap); the hash set of uniqExact, which it used before, does not fit."""
    env = {**big_env, "CLICKSTREAM_MEMORY_LIMIT_MB": str(SMALL_LIMIT_MB)}
    r = query(env, "ingestion_partitions", "--format", "json")
    assert r.returncode == 0, r.stderr
    (row,) = json.loads(r.stdout)
    assert (row["events"], row["min_offset"], row["max_offset"], row["duplicates"]) == (N_EVENTS, 0, N_EVENTS - 1, 0)
    hashed = "SELECT count() - uniqExact(kafka_offset) AS duplicates FROM events GROUP BY kafka_partition"
    assert query(env, "--sql", hashed).returncode == 1
