"""The producer against the real Kafka broker started by the session fixtures (plus its pure token bucket)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import jsonschema
import orjson
import pytest
from kafka import KafkaConsumer, TopicPartition
from kafka.admin import NewTopic
from kafka.partitioner.default import murmur2

from clickstream_lib import events
from clickstream_lib.errors import BrokerUnavailable, ConfigError
from clickstream_lib.generator import Generator
from clickstream_lib.producer import Producer, TokenBucket, send_raw
from clickstream_lib.settings import Settings
from clickstream_lib.stack import free_port
from clickstream_lib.topics import admin, client_config, end_offsets
from tests.conftest import base_env
from tests.helpers import wait_until

CLI = str(Path(sys.executable).with_name("clickstream"))


def _total(settings: Settings, topic: str | None = None) -> int:
    return sum(end_offsets(settings, topic or settings.kafka_topic).values())


def _consume_all(settings: Settings, topic: str | None = None) -> list[tuple[int, bytes | None, bytes]]:
    """Every message of the topic, as (partition, key, value), read back from the broker."""
    topic = topic or settings.kafka_topic
    ends = end_offsets(settings, topic)
    consumer = KafkaConsumer(**client_config(settings, enable_auto_commit=False, consumer_timeout_ms=10_000))
    try:
        tps = [TopicPartition(topic, p) for p in ends]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        out: list[tuple[int, bytes | None, bytes]] = []
        for record in consumer:
            out.append((record.partition, record.key, record.value))
            if len(out) >= sum(ends.values()):
                break
        return out
    finally:
        consumer.close()


# --- rate control: pure logic on a fake clock (timed assertions belong in bench/produce.py) -------------------------


@pytest.mark.parametrize("rate", [1_000.0, 5_000.0, 20_000.0, 50_000.0])
@pytest.mark.parametrize("work_s_per_event", [0.0, 5e-6])
def test_token_bucket_holds_the_rate(rate: float, work_s_per_event: float) -> None:
    clock = 100.0
    bucket = TokenBucket(rate, now=clock)
    sent = 0
    while clock < 110.0:  # ten simulated seconds
        k, wait = bucket.take(clock)
        if k:
            sent += k
            clock += 1e-4 + k * work_s_per_event  # loop overhead + per-event sending work
        else:
            assert wait > 0
            clock += wait + 2e-4  # a sleep overshoots a little, as real ones do
    assert sent / 10.0 == pytest.approx(rate, rel=0.05)


def test_token_bucket_catches_up_after_stalls() -> None:
    clock, sent, next_stall = 0.0, 0, 0.5
    bucket = TokenBucket(10_000.0, now=clock)
    while clock < 10.0:
        k, wait = bucket.take(clock)
        sent += k
        clock += wait if not k else 1e-4
        if clock >= next_stall:  # the loop loses the CPU for 200 ms twice a second
            clock += 0.2
            next_stall += 0.5
    assert sent / 10.0 == pytest.approx(10_000.0, rel=0.05)


def test_token_bucket_batches_like_the_case_study() -> None:
    # --batch_size 1000 --time_interval 1: a batch of exactly 1000 each second.
    bucket = TokenBucket(1000.0, batch_size=1000, now=0.0)
    clock, batches = 0.0, []
    while clock < 5.0:
        k, wait = bucket.take(clock)
        if k:
            batches.append((round(clock, 3), k))
        clock += wait if not k else 0.001
    assert [k for _, k in batches] == [1000] * 4
    assert [t for t, _ in batches] == pytest.approx([1.0, 2.001, 3.002, 4.003], abs=0.01)
    assert TokenBucket(1000.0, now=0.0).take(10.0, limit=3) == (3, 0.0)
    assert TokenBucket(None).take(0.0, limit=5) == (5, 0.0)


# --- the real broker ----------------------------------------------------------------------------------------------


def test_n_produced_is_n_in_topic_keyed_by_user_and_schema_valid(settings: Settings) -> None:
    gen = Generator(seed=21)
    gen.set_scenario("malformed", share=0.02)
    with Producer(settings, rate=None, generator=gen) as producer:
        stats = producer.run(events=12_000)
    assert (stats.sent, stats.acked, stats.failed, stats.in_flight) == (12_000, 12_000, 0, 0)
    assert not stats.errors and not stats.running
    assert _total(settings) == 12_000
    assert len(end_offsets(settings, settings.kafka_topic)) == settings.kafka_partitions

    messages = _consume_all(settings)
    assert len(messages) == 12_000
    validator = jsonschema.Draft202012Validator(events.json_schema())
    partition_of: dict[bytes, int] = {}
    reasons: Counter[str] = Counter()
    for partition, key, value in messages:
        assert key is not None
        assert partition_of.setdefault(key, partition) == partition  # one user, one partition ...
        assert partition == (murmur2(key) & 0x7FFFFFFF) % settings.kafka_partitions  # ... the default partitioner's
        parsed = events.parse(value)
        if isinstance(parsed, events.Rejection):
            reasons[parsed.reason] += 1
            continue
        obj = orjson.loads(value)
        validator.validate(obj)
        assert key == obj["user_id"].encode()
    assert set(reasons) == set(events.REASONS)  # malformed bytes arrive as they were made
    assert 100 < sum(reasons.values()) < 400


def test_same_seed_same_messages_on_the_topic(settings: Settings) -> None:
    # Backfill messages carry no wall-clock time: two producers with one seed write identical topics.
    topics = [settings.kafka_topic, settings.kafka_topic + "_again"]
    for topic in topics:
        batch = Generator(seed=3).backfill(1_795_000_000_000, 1_795_946_400_000, 2_000)
        keys, values = batch.keys_values()
        assert send_raw(settings, values, keys, topic=topic) == 2_000
    a, b = (_consume_all(settings, t) for t in topics)
    assert sorted(a) == sorted(b) and len(a) == 2_000


def test_background_thread_start_change_rate_scenario_stop(settings: Settings) -> None:
    producer = Producer(settings, rate=2_000, seed=5)
    try:
        producer.start()
        assert producer.stats().running
        wait_until(lambda: producer.stats().acked >= 1_000)
        producer.set_rate(None)
        producer.set_scenario("bot_burst", share=0.5, user="bot_live")
        seen_before = producer.stats().sent
        wait_until(lambda: producer.stats().sent >= seen_before + 5_000)
        live = producer.stats()
        assert live.running and live.target_rate is None and live.sent >= seen_before + 5_000
        final = producer.stop()
    finally:
        producer.close()
    assert not final.running and final.failed == 0 and final.acked == final.sent == _total(settings)
    users = Counter(key for _, key, _ in _consume_all(settings))
    assert users.most_common(1)[0][0] == b"bot_live"  # the scenario switched on mid-run reached the topic
    assert users[b"bot_live"] > 1_000


def test_duration_limit_and_counts_match(settings: Settings) -> None:
    with Producer(settings, rate=3_000, seed=8) as producer:
        stats = producer.run(duration=1.0)
    assert stats.sent > 0 and stats.acked == stats.sent == _total(settings)
    assert stats.sent <= 3_000 * 1.0 + 1  # a token bucket never runs ahead of its rate


def test_broker_rejection_is_counted_with_its_reason(settings: Settings) -> None:
    # A topic whose batches may not exceed 200 bytes: the broker refuses every record batch we send.
    with admin(settings) as client:
        client.create_topics([NewTopic(settings.kafka_topic, 1, 1, topic_configs={"max.message.bytes": "200"})])
    with Producer(settings, rate=None, seed=1) as producer:
        assert producer.bulk_send
        stats = producer.run(events=50)
    assert stats.sent == 50 and stats.acked == 0 and stats.failed == 50 and stats.elapsed_s < 45
    assert sum(stats.errors.values()) == 50
    assert all("TooLarge" in name for name in stats.errors), stats.errors
    assert _total(settings) == 0
    assert "failed 50" in stats.summary() and "errors:" in stats.summary()


def test_batches_the_broker_makes_us_split_are_delivered_once(settings: Settings) -> None:
    """A topic with a small max.message.bytes makes the broker refuse our batches as too large; kafka-python splits
    them and sends again. Its flush() then failed with "Future not done" (kafka-python 3.0.12) and send_raw raised;
    every record must arrive, exactly once."""
    with admin(settings) as client:
        client.create_topics([NewTopic(settings.kafka_topic, 2, 1, topic_configs={"max.message.bytes": "16384"})])
    values = [os.urandom(1_000) for _ in range(3_000)]  # incompressible: batches of 128 KiB stay large
    assert send_raw(settings, values) == 3_000
    assert _total(settings) == 3_000
    with Producer(settings, rate=None, seed=3) as producer:
        assert producer.bulk_send  # the bulk path's batches are split too, and their halves counted
        stats = producer.run(events=20_000)
    assert stats.acked == stats.sent == 20_000 and stats.failed == 0, stats.summary()
    assert stats.elapsed_s < 45, stats.summary()  # the final flush did not wait out its 90 s timeout
    assert _total(settings) == 23_000


def test_bad_kafka_override_is_a_config_error(settings: Settings) -> None:
    with pytest.raises(ConfigError, match="retries"):
        Producer(settings, retries=0)  # idempotence needs retries


@pytest.mark.timeout(30)  # kafka-python alone would hang 30 s per client
def test_unreachable_broker_is_a_clear_error(settings: Settings) -> None:
    nowhere = settings.replace(kafka_broker_url=f"127.0.0.1:{free_port()}")
    with pytest.raises(BrokerUnavailable, match="KAFKA_BROKER_URL") as info:
        Producer(nowhere)
    assert info.value.retriable
    with pytest.raises(BrokerUnavailable, match="clickstream stack up"):
        send_raw(nowhere, [b"{}"])


def _env(settings: Settings, tmp_path: Path) -> dict[str, str]:
    return base_env(
        KAFKA_BROKER_URL=settings.kafka_broker_url,
        KAFKA_TOPIC=settings.kafka_topic,
        KAFKA_PARTITIONS=str(settings.kafka_partitions),
        CLICKSTREAM_DATA_DIR=str(tmp_path / "cli-data"),
    )


def test_cli_produce_with_the_case_study_flags(settings: Settings, tmp_path: Path) -> None:
    proc = subprocess.run(
        [
            *(CLI, "produce", "--events", "2500", "--seed", "4"),
            *("--batch_size", "500", "--time_interval", "0.2", "--data_generation_speed", "100000"),
            *("--scenario", "duplicates:share=0.1"),
        ],
        env=_env(settings, tmp_path),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("sent 2500, acked 2500, failed 0")
    assert "\r" not in proc.stderr  # no progress bar when not on a terminal
    assert _total(settings) == 2_500
    ids = [orjson.loads(v)["event_id"] for _, _, v in _consume_all(settings)]
    assert 100 < len(ids) - len(set(ids)) < 450  # duplicate sends reached the topic


def test_cli_produce_in_worker_processes(settings: Settings, tmp_path: Path) -> None:
    """--workers: N processes, one shard of the users each; every event once, each user's events from one process."""

    def produce(topic: str) -> list[dict[str, object]]:
        proc = subprocess.run(
            [CLI, "produce", "--events", "9001", "--rate", "0", "--workers", "3", "--seed", "6", "--users", "900"],
            env={**_env(settings, tmp_path), "KAFKA_TOPIC": topic},
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.startswith("sent 9001, acked 9001, failed 0"), proc.stdout
        assert "in 3 processes" in proc.stderr
        messages = _consume_all(settings, topic)
        assert len(messages) == _total(settings, topic) == 9_001
        decoded = [orjson.loads(v) for _, _, v in messages]
        assert all(key == m["user_id"].encode() for (_, key, _), m in zip(messages, decoded, strict=True))
        return decoded

    first = produce(settings.kafka_topic)
    assert len({m["event_id"] for m in first}) == 9_001
    # Worker i generated the users whose number is i modulo 3, and its share of the events.
    numbers = {u: i for i, u in enumerate(Generator(seed=6, n_users=900).users)}
    per_shard = Counter(numbers[str(m["user_id"])] % 3 for m in first)
    assert per_shard == {0: 3_001, 1: 3_000, 2: 3_000}
    # The same seed and workers give the same events again.
    again = produce(f"{settings.kafka_topic}_again")
    assert {m["event_id"] for m in again} == {m["event_id"] for m in first}


def test_cli_bot_burst_in_worker_processes_is_one_bot(settings: Settings, tmp_path: Path) -> None:
    """bot_burst with --workers: one worker sends the bot, so the totals are those of one process."""
    numbers = {u: i for i, u in enumerate(Generator(seed=6, n_users=900).users)}
    for workers in (1, 3):
        topic = f"{settings.kafka_topic}_w{workers}"
        proc = subprocess.run(
            [
                *(CLI, "produce", "--events", "6000", "--rate", "0", "--workers", str(workers), "--seed", "6"),
                *("--users", "900", "--scenario", "bot_burst:share=0.25"),
            ],
            env={**_env(settings, tmp_path), "KAFKA_TOPIC": topic},
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert proc.returncode == 0, proc.stderr
        decoded = [orjson.loads(v) for _, _, v in _consume_all(settings, topic)]
        assert len(decoded) == _total(settings, topic) == 6_000
        bot = [m for m in decoded if m["user_id"] == "bot_0001"]
        assert len(bot) == 1_500 and len({m["session_id"] for m in bot}) == 1  # one bot, a quarter of all
        humans = Counter(numbers[str(m["user_id"])] % workers for m in decoded if m["user_id"] != "bot_0001")
        assert humans == {i: 4_500 // workers for i in range(workers)}  # every worker's users as busy as before


@pytest.mark.parametrize("workers", ["1", "2"])
def test_cli_ctrl_c_flushes_and_prints_the_summary(settings: Settings, tmp_path: Path, workers: str) -> None:
    proc = subprocess.Popen(
        [CLI, "produce", "--rate", "3000", "--seed", "2", "--workers", workers],
        env=_env(settings, tmp_path),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_until(lambda: _topic_has(settings, 2_000) or proc.poll() is not None, timeout_s=60)
        assert proc.poll() is None, proc.communicate()
        os.kill(proc.pid, signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err
    summary = out.strip().splitlines()[-1]
    assert summary.endswith("(interrupted)") and "failed 0" in summary
    sent = int(summary.split(",")[0].removeprefix("sent "))
    acked = int(summary.split(",")[1].strip().removeprefix("acked "))
    assert sent == acked == _total(settings)  # everything handed to Kafka before Ctrl-C was flushed


def test_cli_generate_writes_the_same_events_without_kafka(tmp_path: Path) -> None:
    env = base_env(KAFKA_BROKER_URL=f"127.0.0.1:{free_port()}", CLICKSTREAM_DATA_DIR=str(tmp_path / "d"))
    files = [tmp_path / "a.jsonl", tmp_path / "b.jsonl"]
    for f in files:
        proc = subprocess.run(
            [
                *(CLI, "generate", "--events", "3000", "--out", str(f), "--seed", "9"),
                *("--start", "2026-11-22", "--end", "2026-11-29", "--scenario", "malformed:share=0.01"),
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.startswith(f"wrote 3000 messages ({f.stat().st_size} bytes)")
    lines = files[0].read_bytes().splitlines()
    assert files[0].read_bytes() == files[1].read_bytes() and len(lines) == 3_000
    ref = events.parse_timestamp("2026-11-29")
    parsed = [events.parse(line, reference_ms=ref) for line in lines]
    valid = [p for p in parsed if not isinstance(p, events.Rejection)]
    assert 2_940 < len(valid) < 3_000
    assert all(events.parse_timestamp("2026-11-22") <= p["timestamp_ms"] < ref for p in valid)


def _topic_has(settings: Settings, n: int) -> bool:
    try:
        return _total(settings) >= n
    except Exception:  # the topic may not exist yet
        return False
