"""Benchmark: a property filter against the same filter on a typed column, paired in one process.

Runs on a store that ``bench/queries.py --data-dir DIR`` loaded (its events carry ``properties.device``, a copy of
the ``device`` column). Each round runs, from the raw events table, the named query with ``device=mobile`` and
then with ``prop.device=mobile``, alternating, so both see the same machine; prints the medians and their ratio.

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
    for name, extra in (("kpis", {}), ("top_items", {"limit": 10}), ("breakdown", {"by": "country"})):
        times: dict[str, list[float]] = {"device": [], "prop.device": []}
        for _ in range(args.rounds + 1):  # the first round warms up
            for key in times:
                t0 = time.perf_counter()
                queries.run(store, name, source="raw", **extra, **{key: "mobile"})
                times[key].append((time.perf_counter() - t0) * 1000)
        typed, prop = (statistics.median(v[1:]) for v in times.values())
        print(
            f"{name:10s} device=mobile {typed:7.1f} ms   prop.device=mobile {prop:7.1f} ms   ratio {prop / typed:4.2f}"
        )
    store.close()


if __name__ == "__main__":
    main()
