"""Benchmark: what an insert costs the engine by its size — why the sink inserts every partition's batch together.

Live-shaped events (the generator's, validated and laid out by the sink's own batch code) go into the full schema at
a held rate, ``--rate`` rows/s, in inserts of each of ``--sizes`` rows. The figure is this process's CPU from the
first insert until the engine has merged what they wrote (the inserts, the six rollup views, the parts' merges),
per row. The raw baseline, measured in the same run: the same inserts into ``events`` with the rollup views dropped.
At 50 000 events/s over 6 partitions, an insert per partition's batch is ~8 333 rows; the sink's group insert is
50 000 (docs/sink.md, "Group inserts").

    .venv/bin/python bench/insert_cost.py [--sizes 4000,8333,16000,50000] [--rate 50000] [--seconds 6] [--repeats 3]
"""

from __future__ import annotations

import argparse
import resource
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.consume import _quiesce  # noqa: E402
from clickstream_lib import schema  # noqa: E402
from clickstream_lib.generator import Generator  # noqa: E402
from clickstream_lib.settings import Settings  # noqa: E402
from clickstream_lib.sink import EVENT_COLUMNS, EVENT_INSERT_TYPES, Batch, Record  # noqa: E402
from clickstream_lib.stack import clean_env  # noqa: E402
from clickstream_lib.store import Store, connect  # noqa: E402

SETTLE_S = 6.0  # the engine picks merges every few seconds: wait that long before waiting for them to end


def _cpu_s() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def insert_columns(n_rows: int, size: int, seed: int = 1) -> list[list[list[Any]]]:
    """``n_rows`` generated events as the sink would insert them, in chunks of ``size`` rows (one partition each)."""
    now_ms = int(time.time() * 1000)
    _keys, values = Generator(seed=seed, n_users=100_000, n_items=10_000).batch(n_rows, now_ms=now_ms).keys_values()
    chunks = []
    for i in range(0, n_rows, size):
        b = Batch("bench", "e", i // size % 6, 0.0, database="bench", group="bench")
        b.add_records([Record(i + j, now_ms, None, v) for j, v in enumerate(values[i : i + size])])
        chunks.append(b.event_columns())
    return chunks


def cpu_per_row(base: Settings, chunks: list[list[list[Any]]], rate: float, views: bool) -> float:
    """CPU µs per row of inserting ``chunks`` at ``rate`` rows/s into a fresh database, merges included."""
    db = f"ic_{uuid.uuid4().hex[:8]}"
    store: Store = connect(base.replace(clickhouse_database=db))
    if not views:
        for v in schema.VIEWS:
            store.client.command(f"DROP VIEW {db}.{v.name}")
    _quiesce(store)
    rows = sum(len(c[0]) for c in chunks)
    cpu0, t0 = _cpu_s(), time.monotonic()
    sent = 0
    for cols in chunks:
        store.insert("events", cols, EVENT_COLUMNS, dedup_token=uuid.uuid4().hex, column_types=EVENT_INSERT_TYPES)
        sent += len(cols[0])
        time.sleep(max(0.0, t0 + sent / rate - time.monotonic()))
    time.sleep(SETTLE_S)
    _quiesce(store)
    cpu = _cpu_s() - cpu0
    store.client.command(f"DROP DATABASE {db} SYNC")
    return cpu / rows * 1e6


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="4000,8333,16000,50000", help="rows per insert, comma-separated")
    ap.add_argument("--rate", type=float, default=50_000, help="rows per second (default 50000)")
    ap.add_argument("--seconds", type=float, default=6.0, help="seconds of inserts per measurement (default 6)")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",") if s]
    tmp = Path(tempfile.mkdtemp(prefix="bench-insert-cost-"))
    base = Settings.from_env(clean_env(), data_dir=tmp / "data")
    n_rows = int(args.rate * args.seconds)
    data = {size: insert_columns(max(size, n_rows // size * size), size) for size in sizes}
    results: dict[tuple[int, bool], list[float]] = {(size, v): [] for size in sizes for v in (True, False)}
    try:
        cpu_per_row(base, data[sizes[0]][:2], args.rate, True)  # warm the engine up
        for r in range(args.repeats):
            for size in sizes:
                for views in (True, False):
                    us = cpu_per_row(base, data[size], args.rate, views)
                    results[(size, views)].append(us)
                    print(
                        f"round {r + 1}: {size:>6} rows/insert, views {'on ' if views else 'off'}: {us:5.1f} us/row",
                        file=sys.stderr,
                        flush=True,
                    )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(
        f"inserts of live-shaped events at {args.rate:,.0f} rows/s for {args.seconds:g} s, CPU per row incl. merges "
        f"(medians of {args.repeats})"
    )
    print(
        f"  {'rows/insert':>11}  {'schema':>8}  {'raw (no views)':>14}  {'ratio':>5}  {'views: CPU ms per insert':>24}"
    )
    for size in sizes:
        full = statistics.median(results[(size, True)])
        raw = statistics.median(results[(size, False)])
        print(
            f"  {size:>11,}  {full:>5.1f} us  {raw:>11.1f} us  {full / raw:>5.2f}  {(full - raw) * size / 1000:>24.0f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
