"""Benchmark: what the sink's start-position lookup costs on a large ``events`` table.

A partition without a committed offset for the sink's group starts after the highest offset already stored from it
(``Store.stored_offsets``: ``max(kafka_offset)`` per partition of ``events`` and ``dead_letters``, one query), after
checking the record stored at that offset (``Store.stored_records``). ``events`` is ordered for the dashboards, not by
offset, so the first query reads three narrow columns of the whole table; this measures it at ``--rows`` events
spread over ``--partitions`` partitions (plus a second topic's rows, which the query skips), cold and warm.

    .venv/bin/python bench/stored_offsets.py [--rows 1000000] [--partitions 6] [--repeats 5]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from clickstream_lib.settings import Settings  # noqa: E402
from clickstream_lib.stack import clean_env  # noqa: E402
from clickstream_lib.store import connect  # noqa: E402

TOPIC = "clickstream_events"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1_000_000, help="events in the table (default 1000000)")
    ap.add_argument("--partitions", type=int, default=6)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-stored-offsets-"))
    try:
        store = connect(Settings.from_env(clean_env(), data_dir=tmp / "data", clickhouse_database="bench"))
        db, p = store.database, args.partitions
        t0 = time.monotonic()
        # Inserted in blocks of 100 000 (several parts, as the engine's background merges leave them), a tenth of the
        # rows from another topic, 600 ms of event time apart (1M rows: a week).
        block = 100_000
        for start in range(0, args.rows, block):
            n = min(block, args.rows - start)
            store.client.command(
                f"INSERT INTO {db}.events (event_id, user_id, session_id, item_id, interaction_type, event_time, "
                "kafka_topic, kafka_partition, kafka_offset, kafka_timestamp) "
                f"SELECT generateUUIDv4(number), concat('user_', toString(number % 100000)), '', "
                f"concat('item_', toString(number % 10000)), 'view', "
                f"toDateTime64('2026-11-01 00:00:00', 3, 'UTC') + toIntervalMillisecond(number * 600), "
                f"if(number % 10 = 9, 'other_topic', '{TOPIC}'), number % {p}, intDiv(number, {p}), "
                f"toDateTime64('2026-11-01 00:00:00', 3, 'UTC') + toIntervalMillisecond(number * 600) "
                f"FROM numbers({start}, {n})"
            )
        parts = store.scalar(
            f"SELECT count() FROM system.parts WHERE database = '{db}' AND table = 'events' AND active"
        )
        on_disk = store.scalar(
            f"SELECT sum(data_compressed_bytes) FROM system.columns WHERE database = '{db}' AND table = 'events' "
            "AND name IN ('kafka_topic', 'kafka_partition', 'kafka_offset')"
        )
        print(f"filled {args.rows:,} rows in {time.monotonic() - t0:.1f} s; {parts} active parts; "
              f"the three columns read: {on_disk / 1e6:.1f} MB compressed")  # fmt: skip
        times, lookups = [], []
        for _ in range(args.repeats):
            t = time.perf_counter()
            stored = store.stored_offsets(TOPIC)
            times.append(time.perf_counter() - t)
            t = time.perf_counter()
            record = store.stored_records(TOPIC, 0, stored[0])
            lookups.append(time.perf_counter() - t)
        assert len(stored) == p and len(record) == 1
        print(f"stored_offsets ({p} partitions): first {times[0] * 1000:.0f} ms, median of the rest "
              f"{statistics.median(times[1:]) * 1000:.0f} ms")  # fmt: skip
        print(f"stored_records (one offset): first {lookups[0] * 1000:.0f} ms, median of the rest "
              f"{statistics.median(lookups[1:]) * 1000:.0f} ms")  # fmt: skip
        store.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
