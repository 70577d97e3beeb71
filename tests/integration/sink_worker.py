"""A sink run in its own process, for kill -9 tests (chdb: one process per data directory).

Settings come from the environment (tests.conftest.base_env plus KAFKA_*/CLICKHOUSE_*/CLICKSTREAM_DATA_DIR).

    python -m tests.integration.sink_worker run [--until-idle S] [--instance-id ID] [--kill-at-batch N]
        [--batch-max-rows N] [--batch-max-wait S] [--batch-max-bytes N]   # stdout: final stats + peak_rss_mb
    python -m tests.integration.sink_worker count        # JSON: rows, distinct event ids, dead letters
    python -m tests.integration.sink_worker rollups      # JSON: rows in events, events counted by each rollup
    python -m tests.integration.sink_worker insert       # one fixed batch, inserted as the sink inserts it

``--kill-at-batch N`` SIGKILLs this process from the ``on_batch_stored`` hook of the N-th batch: its rows are in
ClickHouse, its offsets are not committed — the worst moment for duplicates.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from kafka import KafkaProducer

from clickstream_lib import events, schema, topics
from clickstream_lib.settings import Settings
from clickstream_lib.sink import BatchInfo, Sink
from clickstream_lib.sink.batch import Batch, insert_batches
from clickstream_lib.store import Store, connect

ROOT = Path(__file__).resolve().parents[2]
PYTHON = str(ROOT / ".venv" / "bin" / "python")


# --- helpers for the tests (imported, not run) -------------------------------------------------------------------


def make_values(n: int, seed: int = 0, now_ms: int | None = None) -> list[bytes]:
    """``n`` valid events as wire bytes, each with a distinct event_id."""
    rng = random.Random(seed)
    now_ms = now_ms or int(time.time() * 1000)
    out = []
    for _ in range(n):
        out.append(
            events.encode(
                {
                    "event_id": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
                    "user_id": f"user_{rng.randrange(9999):04d}",
                    "session_id": f"s_{rng.randrange(100_000)}",
                    "item_id": f"item_{rng.randrange(50):04d}",
                    "interaction_type": rng.choice(events.INTERACTION_TYPES),
                    "timestamp_ms": now_ms - rng.randrange(60_000),
                    "page": "/",
                    "referrer": "search",
                    "device": "mobile",
                    "country": "DE",
                    "price": None,
                    "currency": None,
                    "schema_version": 1,
                }
            )
        )
    return out


def producer(settings: Settings) -> KafkaProducer:
    """A plain kafka-python producer, as any client of the workbench would use."""
    return KafkaProducer(**topics.client_config(settings), linger_ms=10, batch_size=256 * 1024)


def produce(settings: Settings, values: Iterable[bytes | None], rate: float | None = None) -> int:
    """Send ``values`` to the settings' topic (at about ``rate`` msgs/s if given); returns how many were sent."""
    topics.ensure_topic(settings, settings.kafka_topic)
    prod = producer(settings)
    n = 0
    t0 = time.monotonic()
    try:
        for v in values:
            # kafka-python refuses a record with neither key nor value: a tombstone gets a key.
            prod.send(settings.kafka_topic, v, key=b"tombstone" if v is None else None)
            n += 1
            if rate and n % 500 == 0:
                ahead = n / rate - (time.monotonic() - t0)
                if ahead > 0:
                    time.sleep(ahead)
        prod.flush(timeout=60)
    finally:
        prod.close(timeout=10)
    return n


def worker_env(settings: Settings, data_dir: Path) -> dict[str, str]:
    """Environment for a worker process: the test's topic/group/database, its own chdb directory."""
    from tests.conftest import base_env

    return base_env(
        KAFKA_BROKER_URL=settings.kafka_broker_url,
        KAFKA_TOPIC=settings.kafka_topic,
        KAFKA_GROUP_ID=settings.kafka_group_id,
        KAFKA_PARTITIONS=str(settings.kafka_partitions),
        CLICKHOUSE_DATABASE=settings.clickhouse_database,
        CLICKSTREAM_DATA_DIR=str(data_dir),
        CLICKSTREAM_CACHE_DIR=str(settings.cache_dir),
    )


def spawn(env: dict[str, str], *args: str, log: Path | None = None) -> subprocess.Popen[bytes]:
    """Start ``sink_worker run ...`` (stdout is the final stats JSON)."""
    err = open(log, "ab") if log else subprocess.DEVNULL  # noqa: SIM115 - handed to the child
    try:
        return subprocess.Popen(
            [PYTHON, "-m", "tests.integration.sink_worker", "run", *args],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=err,
        )
    finally:
        if log:
            err.close()  # type: ignore[union-attr]


def _read(env: dict[str, str], mode: str) -> dict[str, Any]:
    """What this module's ``mode`` prints (a JSON object), run in a separate process on the worker's store."""
    out = subprocess.run(
        [PYTHON, "-m", "tests.integration.sink_worker", mode],
        cwd=ROOT,
        env=env,
        capture_output=True,
        timeout=120,
        check=True,
    )
    return dict(json.loads(out.stdout.decode().strip().splitlines()[-1]))


def count(env: dict[str, str]) -> dict[str, Any]:
    """Rows, distinct event ids and dead letters in the worker's store, read by a separate process."""
    return _read(env, "count")


def rollups(env: dict[str, str]) -> dict[str, int]:
    """Rows in ``events`` and the events each rollup of ``schema.ROLLUPS`` counts, read by a separate process."""
    return {key: int(value) for key, value in _read(env, "rollups").items()}


def insert_fixed_batch(env: dict[str, str]) -> str:
    """Insert one fixed batch of 1 000 events in a process of its own, as the sink does (its token, its settings);
    returns the token."""
    out = subprocess.run(
        [PYTHON, "-m", "tests.integration.sink_worker", "insert"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        timeout=120,
        check=True,
    )
    return str(json.loads(out.stdout.decode().strip().splitlines()[-1])["token"])


def _rollup_totals(store: Store) -> dict[str, int]:
    totals = {"events": int(store.scalar(f"SELECT count() FROM {store.table('events')}"))}
    for table in schema.ROLLUPS:
        counted = "events" if "events" in table.column_names else " + ".join(schema.COUNT_COLUMNS)
        totals[table.name] = int(store.scalar(f"SELECT sum({counted}) FROM {store.table(table.name)}") or 0)
    return totals


def _fixed_batch(settings: Settings) -> Batch:
    batch = Batch(settings.kafka_topic, "epoch", 0, 0.0, database=settings.database, group=settings.kafka_group_id)
    now_ms = 1_765_000_000_000
    for offset, value in enumerate(make_values(1_000, seed=19, now_ms=now_ms)):
        batch.add(offset, now_ms, None, value)
    return batch


def peak_rss_mb() -> float:
    """This process's peak resident set size (VmHWM), in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


# --- the worker ------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["run", "count", "rollups", "insert"])
    parser.add_argument("--until-idle", type=float, default=None)
    parser.add_argument("--instance-id", default=None)
    parser.add_argument("--kill-at-batch", type=int, default=0)
    parser.add_argument("--batch-max-rows", type=int, default=5_000)
    parser.add_argument("--batch-max-wait", type=float, default=0.5)
    parser.add_argument("--batch-max-bytes", type=int, default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("kafka").setLevel(logging.ERROR)
    settings = Settings.from_env()
    store = connect(settings)
    if args.mode == "count":
        db = store.database
        rows, uniq = store.query_rows(f"SELECT count(), uniqExact(event_id) FROM {db}.events")[0]
        dead = store.scalar(f"SELECT count() FROM {db}.dead_letters")
        dead_uniq = store.scalar(f"SELECT uniqExact(kafka_partition, kafka_offset) FROM {db}.dead_letters")
        print(json.dumps({"rows": rows, "uniq": uniq, "dead": dead, "dead_uniq": dead_uniq}))
        return 0
    if args.mode == "rollups":
        print(json.dumps(_rollup_totals(store)))
        return 0
    if args.mode == "insert":
        batch = _fixed_batch(settings)
        insert_batches(store, [batch], batch.token)
        print(json.dumps({"token": batch.token}))
        return 0

    seen = 0

    def hook(info: BatchInfo) -> None:
        nonlocal seen
        seen += 1
        print(f"stored batch {info.token}", file=sys.stderr, flush=True)  # tests time their kills by it
        if args.kill_at_batch and seen >= args.kill_at_batch:
            print(json.dumps({"killed_after": info.token}), flush=True)
            os.kill(os.getpid(), signal.SIGKILL)

    sink = Sink(
        settings,
        store,
        batch_max_rows=args.batch_max_rows,
        **({"batch_max_bytes": args.batch_max_bytes} if args.batch_max_bytes else {}),
        batch_max_wait_s=args.batch_max_wait,
        instance_id=args.instance_id,
        consumer_config={"session_timeout_ms": 10_000, "heartbeat_interval_ms": 1_000},
        on_batch_stored=hook,
    )
    signal.signal(signal.SIGTERM, lambda *_: sink.request_stop())
    stats = sink.run(until_idle=args.until_idle)
    print(json.dumps({**stats.as_dict(), "peak_rss_mb": peak_rss_mb()}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
