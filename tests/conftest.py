"""Session fixtures: a real Kafka broker and the real ClickHouse engine (embedded chdb), both started here.

Nothing is skipped for lack of a service: if Java/Maven are missing, the broker fixture fails with the library's
own error saying what to install.

Each test gets its own topic, consumer group and database (``settings`` fixture), so tests do not see each other's
data. chdb allows one data directory per process: the test process uses ``<session tmp>/data/chdb``; tests that
start other processes (CLI, killed consumers) give those processes their own ``CLICKSTREAM_DATA_DIR``.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from clickstream_lib.settings import Settings
from clickstream_lib.stack import KafkaStack, clean_env, free_port, throwaway_broker
from clickstream_lib.store import Store, connect


def free_port_pair() -> tuple[int, int]:
    """Two free ports (broker, controller)."""
    return free_port(), free_port()


# A clean environment for Settings.from_env / subprocesses: no inherited KAFKA_*/CLICKHOUSE_*/CLICKSTREAM_*.
base_env = clean_env


@pytest.fixture(scope="session")
def session_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("clickstream")


@pytest.fixture(scope="session")
def kafka(session_dir: Path) -> Iterator[KafkaStack]:
    """A real Kafka 4.x broker on free loopback ports, in a temporary directory; stopped at session end."""
    with throwaway_broker(session_dir / "kafka-home", timeout_s=120) as stack:
        yield stack


@pytest.fixture(scope="session")
def base_settings(kafka: KafkaStack, session_dir: Path) -> Settings:
    """Settings pointing at the session broker and this process's embedded store directory."""
    return Settings.from_env(
        base_env(),
        kafka_broker_url=kafka.url,
        kafka_controller_port=kafka.controller_port,
        data_dir=session_dir / "data",
    )


@pytest.fixture
def settings(base_settings: Settings) -> Settings:
    """Per-test topic, dead-letter topic, group and database on the session services."""
    tag = uuid.uuid4().hex[:10]
    return base_settings.replace(
        kafka_topic=f"test_{tag}",
        kafka_group_id=f"group_{tag}",
        clickhouse_database=f"test_{tag}",
        kafka_partitions=3,
    )


@pytest.fixture
def store(settings: Settings) -> Iterator[Store]:
    """The real ClickHouse engine with this test's database migrated; dropped afterwards."""
    st = connect(settings)
    try:
        yield st
    finally:
        try:
            st.client.command(f"DROP DATABASE IF EXISTS {st.database} SYNC")
        finally:
            st.close()
