"""The sink against messages and errors that never clear: a huge compressed value, a dead-letter topic that refuses
what it is sent, a fenced static member, commit metadata over the broker's limit, and memory held in bytes."""

from __future__ import annotations

import subprocess
import time
import uuid
from pathlib import Path

import orjson
import pytest
from kafka import KafkaConsumer, KafkaProducer

from clickstream_lib import events, topics
from clickstream_lib.settings import Settings
from clickstream_lib.store import Store
from tests.integration.sink_worker import ROOT, count, make_values, produce, worker_env

pytestmark = pytest.mark.integration

CLI = str(ROOT / ".venv" / "bin" / "clickstream")
HUGE = 5 * 1024 * 1024


def huge_json(n: int = HUGE) -> bytes:
    """A valid-looking JSON event of ``n`` bytes that lz4 compresses to a few KiB."""
    head = b'{"user_id":"user_0001","item_id":"item_0001","interaction_type":"click","pad":"'
    return head + b"x" * (n - len(head) - 2) + b'"}'


def send_lz4(settings: Settings, values: list[bytes]) -> None:
    """What a foreign producer does: lz4-compressed records, a max_request_size that lets 5 MB through."""
    topics.ensure_topic(settings, settings.kafka_topic)
    prod = KafkaProducer(**topics.client_config(settings), compression_type="lz4", max_request_size=8 * 1024 * 1024)
    try:
        for v in values:
            prod.send(settings.kafka_topic, v, partition=0)
        prod.flush(timeout=60)
    finally:
        prod.close(timeout=10)


def dead_letter_topic_records(settings: Settings, n: int, timeout_s: float = 30) -> list[object]:
    dlq = KafkaConsumer(
        settings.dead_letter_topic,
        **topics.client_config(settings),
        auto_offset_reset="earliest",
        group_id=f"check_{uuid.uuid4().hex[:6]}",
        enable_auto_commit=False,
        max_partition_fetch_bytes=8 * 1024 * 1024,
    )
    seen: list[object] = []
    try:
        deadline = time.monotonic() + timeout_s
        while len(seen) < n and time.monotonic() < deadline:
            for recs in dlq.poll(timeout_ms=1_000).values():
                seen.extend(recs)
    finally:
        dlq.close()
    return seen


def test_acceptance_a_5_mb_lz4_value_then_1000_events_cli_until_idle(settings: Settings, tmp_path) -> None:  # type: ignore[no-untyped-def]
    send_lz4(settings, [huge_json()])
    produce(settings, make_values(1_000, seed=13))
    env = worker_env(settings, tmp_path / "cli")

    done = subprocess.run(
        [CLI, "consume", "--until-idle", "5", "--stats"], cwd=ROOT, env=env, capture_output=True, timeout=240
    )

    assert done.returncode == 0, done.stderr.decode()[-3000:]
    summary = orjson.loads(done.stdout.decode().strip().splitlines()[-1])
    assert summary["rows_inserted"] == 1_000
    assert summary["dead_letters_by_reason"] == {events.TOO_LARGE: 1}
    assert summary["dead_letters_unpublished"] == 0
    c = count(env)
    assert c == {"rows": 1_000, "uniq": 1_000, "dead": 1, "dead_uniq": 1}
    # The topic got what it can take: the start of the value, and headers saying it was cut and how large it was.
    (rec,) = dead_letter_topic_records(settings, 1)
    headers = dict(rec.headers)  # type: ignore[attr-defined]
    assert headers["reason"] == events.TOO_LARGE.encode()
    assert headers["truncated"] == b"1" and headers["original_size"] == str(HUGE).encode()
    assert huge_json().startswith(rec.value)  # type: ignore[attr-defined]
    assert 0 < len(rec.value) < HUGE  # type: ignore[attr-defined]


def _dead_letter_topic(settings: Settings, max_message_bytes: int) -> None:
    from kafka.admin import NewTopic

    with topics.admin(settings) as client:
        client.create_topics(
            [NewTopic(settings.dead_letter_topic, 1, 1, topic_configs={"max.message.bytes": str(max_message_bytes)})]
        )


def test_a_dead_letter_the_topic_refuses_goes_without_its_value(settings: Settings, store: Store) -> None:
    """A dead-letter topic taking 8 KiB per record refuses a 100 KB too_large value (under the sink's own cut): the
    topic gets the record without its value, headers saying so; the table keeps it whole; the partition moves on."""
    _dead_letter_topic(settings, 8192)
    big = huge_json(100_000)
    send_lz4(settings, [big])
    produce(settings, make_values(300, seed=14))

    from clickstream_lib.sink import Sink

    stats = Sink(settings, store).run(until_idle=2)

    assert stats.rows_inserted == 300 and stats.dead_letters_by_reason == {events.TOO_LARGE: 1}
    assert stats.dead_letters_unpublished == 0
    raw, detail = store.query_rows(f"SELECT raw, detail FROM {store.database}.dead_letters")[0]
    assert len(raw) == 100_000 and "100000 bytes" in detail
    (rec,) = dead_letter_topic_records(settings, 1)
    headers = dict(rec.headers)  # type: ignore[attr-defined]
    assert rec.value == b"" and headers["truncated"] == b"1" and headers["original_size"] == b"100000"  # type: ignore[attr-defined]
    assert headers["source_offset"] == b"0" and headers["reason"] == events.TOO_LARGE.encode()


def test_a_dead_letter_the_topic_never_takes_is_counted_and_the_sink_moves_on(settings: Settings, store: Store) -> None:
    """A dead-letter topic taking 64 bytes per record refuses even the headers: the dead letters are in the table,
    counted as unpublished, and every valid event after them is stored."""
    _dead_letter_topic(settings, 64)
    produce(settings, [b"not json", *make_values(500, seed=15), b"[1]"])

    from clickstream_lib.sink import Sink

    stats = Sink(settings, store).run(until_idle=2)

    assert stats.rows_inserted == 500
    assert stats.dead_letters == 2 and stats.dead_letters_unpublished == 2
    assert int(store.scalar(f"SELECT count() FROM {store.database}.dead_letters")) == 2
    assert sum(topics.end_offsets(settings, settings.dead_letter_topic).values()) == 0
    assert stats.lag == {0: 0, 1: 0, 2: 0}


def test_commit_metadata_over_the_brokers_limit_falls_back_to_smaller_group_inserts(
    base_settings: Settings,
    store: Store,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A broker with offset.metadata.max.bytes = 44 refuses the pre-commit of any group insert (its metadata names
    every range; one range takes <= 39 bytes): the sink inserts smaller groups, says why, stores everything once."""
    from clickstream_lib.sink import Sink
    from clickstream_lib.stack import KafkaStack, free_port

    small = base_settings.replace(
        kafka_broker_url=f"127.0.0.1:{free_port()}",
        kafka_controller_port=free_port(),
        data_dir=tmp_path,
        kafka_topic="meta_topic",
        kafka_group_id="meta_group",
        clickhouse_database=store.database,
        kafka_partitions=6,
    )
    stack = KafkaStack(small, properties={"offset.metadata.max.bytes": "44"})
    stack.up(timeout_s=120)
    try:
        topics.ensure_topic(small, small.kafka_topic)
        prod = KafkaProducer(**topics.client_config(small))
        for i, v in enumerate(make_values(6_000, seed=16)):
            prod.send(small.kafka_topic, v, partition=i % 6)  # every partition in every group insert
        prod.flush(timeout=60)
        prod.close()
        # Batches close by time, not by rows (1 000 records a partition < batch_max_rows), so each round seals the
        # open batches of several partitions at once: a group insert, whose record names every range.
        sink = Sink(small, store, batch_max_rows=5_000, batch_max_wait_s=1.0)
        with caplog.at_level("WARNING", logger="clickstream_lib.sink"):
            stats = sink.run(until_idle=2)
    finally:
        stack.down()
    assert stats.rows_inserted == 6_000
    rows, uniq = store.query_rows(f"SELECT count(), uniqExact(event_id) FROM {store.database}.events")[0]
    assert rows == uniq == 6_000
    assert sink.group_max_batches < 6
    assert any("offset.metadata.max.bytes" in r.getMessage() and "at most" in r.getMessage() for r in caplog.records)


def test_cli_consume_stops_with_exit_1_when_another_member_takes_its_instance_id(
    settings: Settings,
    store: Store,
    tmp_path: Path,
) -> None:
    """Two processes with one --instance-id: the group fences the older one for good. It stops with exit 1 and one
    line saying why, instead of retrying its refused commits forever."""
    import threading

    from clickstream_lib.sink import Sink

    produce(settings, make_values(200, seed=17))
    env = worker_env(settings, tmp_path / "cli")
    proc = subprocess.Popen(
        [CLI, "consume", "--instance-id", "sink-a", "--batch-max-wait", "0.2"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    stop = threading.Event()

    def keep_producing() -> None:
        seed = 100
        while not stop.is_set():
            produce(settings, make_values(50, seed=seed))
            seed += 1
            stop.wait(0.2)

    feeder = threading.Thread(target=keep_producing, daemon=True)
    twin: Sink | None = None
    try:
        deadline = time.monotonic() + 120
        while not _committed_any(settings) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]  # type: ignore[union-attr]
        feeder.start()
        twin = Sink(settings, store, instance_id="sink-a", batch_max_wait_s=0.2).start()
        _out, errs = proc.communicate(timeout=120)
    finally:
        stop.set()
        if twin is not None:
            twin.stop()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 1, errs.decode()[-2000:]
    last = errs.decode().strip().splitlines()[-1]
    assert last.startswith("clickstream: another consumer joined group") and "sink-a" in last, last
    assert "Traceback" not in errs.decode()


def _committed_any(settings: Settings) -> bool:
    from kafka import TopicPartition

    c = KafkaConsumer(**topics.client_config(settings), group_id=settings.kafka_group_id, enable_auto_commit=False)
    try:
        tps = [TopicPartition(settings.kafka_topic, p) for p in range(settings.kafka_partitions)]
        return any((c.committed(tp) or 0) > 0 for tp in tps)
    finally:
        c.close()


def _send_huge_lz4(settings: Settings, n: int, size: int = HUGE) -> None:
    topics.ensure_topic(settings, settings.kafka_topic)
    prod = KafkaProducer(**topics.client_config(settings), compression_type="lz4", max_request_size=8 * 1024 * 1024)
    try:
        for i in range(n):
            prod.send(settings.kafka_topic, huge_json(size), partition=i % settings.kafka_partitions)
        prod.flush(timeout=120)
    finally:
        prod.close(timeout=10)


# The sink process's peak RSS draining a backlog of 300 values of 5 MB and 1 000 events, present at start, at the
# default batch_max_bytes (64 MiB): the bound docs/sink.md states ("Memory"), with its figures.
RSS_BOUND_MB = 1_500


def test_a_stream_of_5_mb_messages_keeps_the_sinks_memory_bounded(settings: Settings, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A backlog of 300 values of 5 MB (1.5 GB, a few KiB each as lz4) and 1 000 events, waiting when a sink process
    starts with the default batch_max_bytes: everything stored once, and the process's peak RSS under RSS_BOUND_MB."""
    from tests.integration.sink_worker import PYTHON

    n = 300
    _send_huge_lz4(settings, n)
    produce(settings, make_values(1_000, seed=18))
    env = worker_env(settings, tmp_path / "worker")
    done = subprocess.run(
        [PYTHON, "-m", "tests.integration.sink_worker", "run", "--until-idle", "3", "--batch-max-rows", "20000"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    stats = orjson.loads(done.stdout.decode().strip().splitlines()[-1])
    assert stats["rows_inserted"] == 1_000 and stats["dead_letters_by_reason"] == {events.TOO_LARGE: n}
    assert count(env) == {"rows": 1_000, "uniq": 1_000, "dead": n, "dead_uniq": n}
    print(f"peak RSS {stats['peak_rss_mb']:.0f} MiB, {stats['batches']} batches")
    assert stats["peak_rss_mb"] < RSS_BOUND_MB
