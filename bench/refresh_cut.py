"""What the dashboard's refresh costs read in one snapshot (an embedded store) against cut at one ingest time (how
it reads a ClickHouse server, whose writers it cannot hold off), on the same data in the same process.

    .venv/bin/python bench/refresh_cut.py                                  # 1M events, 5 runs each
    .venv/bin/python bench/refresh_cut.py --size 10000000 --data-dir /tmp/bq --repeat 3 --memory-limit-mb 0

Events are loaded as bench/queries.py loads them (the generator over the last 7 days, through the materialized
views; a database that bench/queries.py or an earlier run loaded into ``--data-dir`` is reused). Then one
child process builds a ``Dashboard`` on the store, records every ``queries.run_many`` call of one refresh (KPIs,
charts, tables, the analytics panels) for "all time" and for "last hour", and times the recorded calls: as the
dashboard asks them on the embedded store (its KPIs and panels in one snapshot, ``consistent=True``: rollups and
the ``by_user`` projection where they answer) and with every query but the status line's cut at the newest ingest
time (``as_of``: raw ``events``, no projection), as it asks a server store. Runs alternate between the two forms;
the figure is the median per form and their ratio. On a store nobody writes to, the two forms return equal frames;
the script checks that.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.queries import load_and_measure  # noqa: E402


def measure(database: str, repeat: int) -> dict[str, Any]:
    """Child process: record one dashboard refresh per window, then time it cut and uncut (alternating)."""
    import pandas as pd

    from clickstream_lib import queries
    from clickstream_lib.dashboard import Dashboard
    from clickstream_lib.settings import Settings
    from clickstream_lib.store import connect

    settings = Settings.from_env(clickhouse_database=database)
    store = connect(settings)
    real = queries.run_many
    out: dict[str, Any] = {"events": int(store.scalar(f"SELECT count() FROM {store.database}.events"))}
    for label, window_s in (("all time", 0), ("last hour", 3600)):
        recorded: list[tuple[list[tuple[str, dict[str, Any]]], bool]] = []

        def spy(st: Any, asked: Any, consistent: bool = False, recorded: list[Any] = recorded) -> Any:
            asked = list(asked)
            recorded.append((asked, consistent))
            return real(st, asked, consistent=consistent)

        queries.run_many = spy  # type: ignore[assignment]
        try:
            dash = Dashboard(settings, store=store, window_s=window_s)
            dash.refresh()
            assert "Refresh failed" not in dash.header.value, dash.header.value
        finally:
            queries.run_many = real
        as_of = queries.freshness(store)["newest_ingest_time"][0]
        status = {"freshness", "complete_through"}  # the cut itself is read from these
        snapshot = recorded
        cut = [
            ([(n, kw if n in status else {**kw, "as_of": as_of}) for n, kw in asked], False) for asked, _ in snapshot
        ]
        # Same numbers both ways on a store nobody writes to (the live queries and freshness read the clock).
        clocked = {"freshness", "active_users", "events_per_second"}
        for (a, ca), (b, cb) in zip(snapshot, cut, strict=True):
            for (name, _), fa, fb in zip(a, real(store, a, consistent=ca), real(store, b, consistent=cb), strict=True):
                if name not in clocked:
                    pd.testing.assert_frame_equal(
                        fa.reset_index(drop=True), fb.reset_index(drop=True), check_dtype=False, obj=name
                    )
        times: dict[str, list[float]] = {"snapshot": [], "cut": []}
        for _ in range(repeat + 1):  # the first round warms up
            for form, calls in (("snapshot", snapshot), ("cut", cut)):
                t = time.perf_counter()
                for asked, consistent in calls:
                    real(store, asked, consistent=consistent)
                times[form].append((time.perf_counter() - t) * 1000)
        med = {form: statistics.median(ts[1:]) for form, ts in times.items()}
        out[label] = {
            "queries": sum(len(asked) for asked, _ in snapshot),
            "snapshot_ms": med["snapshot"],
            "cut_ms": med["cut"],
            "ratio": med["cut"] / med["snapshot"],
        }
    store.close()
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=5, help="timed rounds per form after one warm-up (default 5)")
    parser.add_argument("--data-dir", help="keep the store here (default: a temporary directory)")
    parser.add_argument(
        "--memory-limit-mb", type=int, help="the embedded engine's memory limit (default: the product's; 0: none)"
    )
    parser.add_argument("--measure", nargs=2, metavar=("DATABASE", "REPEAT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure[0], int(args.measure[1]))))
        return 0
    got = load_and_measure(__file__, args.size, args.data_dir, [str(args.repeat)], args.memory_limit_mb)
    load_avg = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"{got['events']:,} events; load average at the end {load_avg}; medians of {args.repeat}")
    print(f"{'window':<11}{'queries':>8}{'snapshot ms':>13}{'cut (as_of) ms':>16}{'cut / snapshot':>16}")
    for label in ("all time", "last hour"):
        r = got[label]
        print(f"{label:<11}{r['queries']:>8}{r['snapshot_ms']:>13.0f}{r['cut_ms']:>16.0f}{r['ratio']:>16.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
