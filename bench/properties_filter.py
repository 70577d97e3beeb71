"""Benchmark: a property filter against the same filter on a typed column, paired in one process.

Runs on a store that ``bench/queries.py --data-dir DIR`` loaded (its events carry ``properties.device``, a copy of
the ``device`` column). Each round runs, from the raw events table, the named query with ``device=mobile``, then
``prop.device=mobile`` read from the JSON column's path, then ``prop.device=mobile`` read from the property's
LowCardinality column (``CLICKSTREAM_PROPERTY_COLUMNS=device``; added and filled first if the store lacks it, timed),
alternating, so all three see the same machine; prints the medians and the ratios to the typed filter.

    .venv/bin/python bench/properties_filter.py --data-dir /tmp/bq [--size 10000000] [--rounds 9]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", required=True)
    ap.add_argument("--size", type=int, default=10_000_000)
    ap.add_argument("--rounds", type=int, default=9)
    args = ap.parse_args()
    os.environ["CLICKSTREAM_DATA_DIR"] = str(Path(args.data_dir).resolve())
    from clickstream_lib import queries
    from clickstream_lib.settings import Settings
    from clickstream_lib.store import connect

    store = connect(Settings.from_env(clickhouse_database=f"bench_{args.size}"))
    t0 = time.perf_counter()
    if store.add_property_columns(["device"]):
        print(f"added and filled the property column for 'device' in {time.perf_counter() - t0:.1f} s")
    forms = {  # label: (filter, property columns the plan may read)
        "device": ("device", frozenset[str]()),
        "prop JSON": ("prop.device", frozenset[str]()),
        "prop column": ("prop.device", frozenset({"device"})),
    }
    for name, extra in (("kpis", {}), ("top_items", {"limit": 10}), ("breakdown", {"by": "country"})):
        times: dict[str, list[float]] = {label: [] for label in forms}
        for _ in range(args.rounds + 1):  # the first round warms up
            for label, (key, columns) in forms.items():
                _, q, sql = queries.plan(
                    name, store.database, source="raw", property_columns=columns, **extra, **{key: "mobile"}
                )
                t0 = time.perf_counter()
                store.query_df(sql, q.params)
                times[label].append((time.perf_counter() - t0) * 1000)
        med = {label: statistics.median(v[1:]) for label, v in times.items()}
        typed = med["device"]
        print(
            f"{name:10s} device=mobile {typed:7.1f} ms   "
            + "   ".join(f"{label} {ms:7.1f} ms ({ms / typed:4.2f}x)" for label, ms in med.items() if label != "device")
        )
    store.close()


if __name__ == "__main__":
    main()
