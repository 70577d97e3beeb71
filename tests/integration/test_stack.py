"""The local Kafka broker (real Kafka 4.x) and the embedded ClickHouse store, as the fixtures start them."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaConsumer, KafkaProducer

from clickstream_lib.errors import BrokerUnavailable
from clickstream_lib.settings import Settings
from clickstream_lib.stack import KafkaStack, free_port
from clickstream_lib.store import Store, connect
from clickstream_lib.topics import end_offsets, ensure_topic, ping
from tests.conftest import base_env

pytestmark = pytest.mark.integration


def _produce(settings: Settings, n: int) -> None:
    producer = KafkaProducer(**settings.kafka_client_config(), linger_ms=5)
    try:
        for i in range(n):
            producer.send(settings.kafka_topic, key=f"user_{i % 97}".encode(), value=str(i).encode())
        producer.flush(timeout=60)
    finally:
        producer.close()


def _consume_all(settings: Settings, idle_s: float = 3.0) -> list[int]:
    """Read with a group and manual commits until nothing arrives for idle_s; commit what was read."""
    consumer = KafkaConsumer(
        settings.kafka_topic,
        **settings.kafka_client_config(),
        group_id=settings.kafka_group_id,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    seen: list[int] = []
    try:
        last = time.monotonic()
        while time.monotonic() - last < idle_s:
            batch = consumer.poll(timeout_ms=500)
            for records in batch.values():
                seen.extend(int(r.value) for r in records)
                last = time.monotonic()
            if batch:
                consumer.commit()
    finally:
        consumer.close()
    return seen


def test_broker_answers_metadata(kafka: KafkaStack, base_settings: Settings) -> None:
    info = ping(base_settings)
    assert [b["port"] for b in info["brokers"]] == [kafka.port]
    assert kafka.status().state == "running"


def test_10k_messages_with_group_and_manual_commits(settings: Settings) -> None:
    ensure_topic(settings, settings.kafka_topic, partitions=3)
    _produce(settings, 10_000)
    assert sum(end_offsets(settings, settings.kafka_topic).values()) == 10_000
    first = _consume_all(settings)
    assert len(first) == 10_000
    assert sorted(first) == list(range(10_000))
    # A restarted member of the same group resumes from the committed offsets: it re-reads nothing.
    assert _consume_all(settings, idle_s=4.0) == []
    # ... and sees exactly what is produced after the restart.
    _produce(settings, 5)
    assert sorted(_consume_all(settings)) == [0, 1, 2, 3, 4]


def test_broker_restart_keeps_messages_and_downloads_nothing(tmp_path: Path, base_settings: Settings) -> None:
    settings = base_settings.replace(
        kafka_broker_url=f"127.0.0.1:{free_port()}",
        kafka_controller_port=free_port(),
        data_dir=tmp_path,
        kafka_topic="restart_topic",
        kafka_group_id="restart_group",
    )
    stack = KafkaStack(settings)
    try:
        first = stack.up()
        assert stack.jars.ensure() is False  # the session already cached them
        again = stack.up()
        assert again.pid == first.pid  # `up` when up changes nothing
        _produce(settings, 1_000)
        stack.down()
        assert stack.status().state == "stopped"
        with pytest.raises(BrokerUnavailable, match="clickstream stack up"):
            ping(settings, timeout_s=1)
        second = stack.up()
        assert second.pid != first.pid
        assert sorted(_consume_all(settings)) == list(range(1_000))
    finally:
        stack.down()
    assert (tmp_path / "kafka" / "logs" / "server.log").stat().st_size > 0


def test_down_stops_exactly_the_recorded_process(tmp_path: Path, base_settings: Settings) -> None:
    settings = base_settings.replace(
        kafka_broker_url=f"127.0.0.1:{free_port()}", kafka_controller_port=free_port(), data_dir=tmp_path
    )
    stack = KafkaStack(settings)
    st = stack.up()
    assert st.pid
    # A stale pid file pointing at an unrelated live process must not make `down` kill it.
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        stack.down()
        stack.pid_file.write_text(str(sleeper.pid))
        assert stack.status().state == "crashed"  # the recorded broker is gone; that pid is not a broker
        stack.down()
        assert sleeper.poll() is None
    finally:
        sleeper.kill()
        sleeper.wait()


def test_a_remote_broker_url_starts_nothing(tmp_path: Path, base_settings: Settings) -> None:
    # Two loopback ports nobody listens on: "another cluster", reached only on this machine.
    settings = base_settings.replace(
        kafka_broker_url=f"localhost:{free_port()},localhost:{free_port()}", data_dir=tmp_path
    )
    stack = KafkaStack(settings)
    assert not stack.is_local
    with pytest.raises(BrokerUnavailable, match="KAFKA_BROKER_URL"):
        stack.up()
    assert not (tmp_path / "kafka").exists()


def test_cli_stack_status_sees_the_session_broker(kafka: KafkaStack) -> None:
    env = base_env(
        KAFKA_BROKER_URL=kafka.url,
        CLICKSTREAM_KAFKA_CONTROLLER_PORT=str(kafka.controller_port),
        CLICKSTREAM_DATA_DIR=str(kafka.home.parent),
    )
    proc = subprocess.run(
        [sys.executable, "-m", "clickstream_lib.cli", "stack", "status"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert f"kafka running at {kafka.url}" in proc.stdout
    proc = subprocess.run(
        [sys.executable, "-m", "clickstream_lib.cli", "stack", "up"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0 and proc.stdout.startswith("already up"), proc.stdout + proc.stderr


def test_migrations_are_idempotent_and_enable_dedup(store: Store, settings: Settings) -> None:
    assert store.schema_version() >= 1
    again = connect(settings)
    try:
        assert again.migrate() == []
    finally:
        again.close()
    assert store.dedup_window("events") > 0
    assert store.dedup_window("dead_letters") > 0


def test_dedup_token_drops_a_replayed_batch(store: Store) -> None:
    cols = ["user_id", "item_id", "interaction_type", "event_time"]
    import datetime as dt

    now = dt.datetime.now(dt.UTC)
    data: list[list[Any]] = [["u1", "u2"], ["i1", "i2"], ["view", "click"], [now, now]]
    assert store.insert("events", data, cols, dedup_token="t:0:0-1") == 2
    store.insert("events", data, cols, dedup_token="t:0:0-1")
    assert store.scalar(f"SELECT count() FROM {store.table('events')}") == 2


def test_second_process_gets_a_clear_lock_error(store: Store, settings: Settings) -> None:
    # The pytest process holds the embedded store; another process must be told who holds it and what to do.
    env = base_env(CLICKSTREAM_DATA_DIR=str(settings.data_dir))
    code = (
        "from clickstream_lib.settings import Settings; from clickstream_lib.store import connect; "
        "connect(Settings.from_env())"
    )
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "StoreLocked" in proc.stderr
    assert f"{settings.data_dir / 'chdb'} is held by process {os.getpid()}" in proc.stderr
    assert "CLICKHOUSE_URL" in proc.stderr
    # Through the CLI it is one line and exit 1.
    proc = subprocess.run(
        [sys.executable, "-m", "clickstream_lib.cli", "store", "status"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "is held by process" in proc.stderr and "Traceback" not in proc.stderr
    # The holder is named by its program, never by its command line (which may carry another user's arguments).
    holder_args = Path(f"/proc/{os.getpid()}/cmdline").read_bytes().split(b"\0")[1:]
    assert not any(len(a) > 8 and a.decode(errors="replace") in proc.stderr for a in holder_args)
