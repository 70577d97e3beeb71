"""`clickstream consume` started before its broker: it waits for it (saying so, with backoff) instead of exiting, then
stores what is produced exactly once. ``--broker-wait`` bounds the wait."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest
from kafka import KafkaConsumer, TopicPartition

from clickstream_lib import events, topics
from clickstream_lib.settings import Settings
from clickstream_lib.stack import KafkaStack, free_port
from tests.helpers import run_cli, wait_until
from tests.integration.sink_worker import ROOT, make_values, produce, worker_env

pytestmark = pytest.mark.integration

WAITING = "waiting for Kafka at"


def committed_total(settings: Settings) -> int:
    c = KafkaConsumer(**topics.client_config(settings), group_id=settings.kafka_group_id, enable_auto_commit=False)
    try:
        tps = [TopicPartition(settings.kafka_topic, p) for p in range(settings.kafka_partitions)]
        return sum(c.committed(tp) or 0 for tp in tps)
    finally:
        c.close()


def consume(env: dict[str, str], log: Path, *args: str) -> subprocess.Popen[bytes]:
    with log.open("ab") as err:
        return subprocess.Popen(
            [sys.executable, "-m", "clickstream_lib", "consume", *args],
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=err,
            stderr=err,
        )


def test_consume_started_before_the_broker_waits_for_it_and_stores_everything_once(
    base_settings: Settings, tmp_path: Path
) -> None:
    port = free_port()
    settings = base_settings.replace(
        kafka_broker_url=f"127.0.0.1:{port}",
        kafka_controller_port=free_port(),
        data_dir=tmp_path / "data",
        kafka_topic="late_broker",
        kafka_group_id="late_broker_sink",
        clickhouse_database="late_broker",
        kafka_partitions=3,
    )
    stack = KafkaStack(settings, home=tmp_path / "kafka")
    log = tmp_path / "consume.log"
    proc = consume(worker_env(settings, tmp_path / "data"), log, "--batch-max-wait", "0.2")
    values = make_values(3_000, seed=19)
    try:
        # Two warnings at least: it retries (with backoff) rather than giving up after one bootstrap timeout.
        wait_until(
            lambda: log.read_text().count(WAITING) >= 2 or proc.poll() is not None,
            timeout_s=120,
            what="two 'waiting for Kafka' warnings",
            state=lambda: log.read_text()[-2000:],
        )
        assert proc.poll() is None, log.read_text()[-3000:]
        text = log.read_text()
        line = next(x for x in text.splitlines() if WAITING in x)
        assert f"127.0.0.1:{port} (KAFKA_BROKER_URL)" in line and "late_broker" in line and "next try in" in line
        assert "Traceback" not in text

        stack.up(timeout_s=180)
        produce(settings, values)
        wait_until(
            lambda: committed_total(settings) == len(values) or proc.poll() is not None,
            timeout_s=180,
            what="the sink to commit every produced event",
            state=lambda: log.read_text()[-2000:],
        )
        assert proc.poll() is None, log.read_text()[-3000:]
        assert "answered after" in log.read_text()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=90) == 0, log.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        stack.down()
    # The sink's store, read by another process: this one may already hold the session's (one chdb directory each).
    got = run_cli(
        worker_env(settings, tmp_path / "data"),
        "query", "--sql", "SELECT toString(event_id) AS id FROM events ORDER BY id", "--format", "csv",
    )  # fmt: skip
    assert got.returncode == 0, got.stderr[-3000:]
    ids = got.stdout.split()[1:]  # after the header
    assert len(ids) == len(set(ids)) == len(values)
    stored = set(ids)
    parsed = [events.parse(v) for v in values]
    sent = {e["event_id"] for e in parsed if isinstance(e, dict)}
    assert len(sent) == len(values)
    assert stored == sent


def test_consume_with_broker_wait_gives_up_naming_the_broker_and_the_variable(
    base_settings: Settings, tmp_path: Path
) -> None:
    settings = base_settings.replace(
        kafka_broker_url=f"127.0.0.1:{free_port()}", data_dir=tmp_path / "data", kafka_topic="no_broker"
    )
    log = tmp_path / "consume.log"
    proc = consume(worker_env(settings, tmp_path / "data"), log, "--broker-wait", "12")
    assert proc.wait(timeout=120) == 1, log.read_text()[-3000:]
    text = log.read_text()
    assert WAITING in text
    last = text.strip().splitlines()[-1]
    assert last.startswith(f"clickstream: Kafka not reachable at {settings.kafka_broker_url}"), last
    assert "KAFKA_BROKER_URL" in last and "Traceback" not in text
