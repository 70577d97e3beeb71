"""Benchmark: the type of the events' ``properties`` column — ``Map(String, String)`` or the engine's ``JSON``.

``--rows`` events (1M by default) with a ``plan`` property (3 values), a ``page_title`` (977 values), an ``ab`` flag
and one of 20 rarer keys, in two tables that differ only in the properties type, each with a typed
``LowCardinality`` copy of ``plan`` as the baseline. Timed: a filter (``count()`` where plan = 'pro'), a breakdown
(``GROUP BY`` plan) and a filter on a key 1 in 20 rows have; median of ``--repeats`` runs, in one engine.

    .venv/bin/python bench/properties_type.py [--rows 1000000] [--repeats 7]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time

from chdb import session


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="bench-props-")
    try:
        s = session.Session(tmp)
        s.query("CREATE DATABASE d")
        for name, ptype in (("m", "Map(String, String)"), ("j", "JSON")):
            s.query(
                f"CREATE TABLE d.{name} (t DateTime64(3, 'UTC'), plan LowCardinality(String), properties {ptype}) "
                "ENGINE = MergeTree ORDER BY toStartOfHour(t)"
            )
        gen = (
            "SELECT toDateTime64('2026-11-22', 3, 'UTC') + toIntervalMillisecond(number * 600) AS t, "
            "['free', 'pro', 'team'][number % 3 + 1] AS plan, "
            "map('plan', plan, 'page_title', concat('title ', toString(number % 977)), 'ab', toString(number % 2), "
            "concat('k', toString(number % 20)), toString(number % 1000)) AS properties "
            f"FROM numbers({int(args.rows)})"
        )
        s.query(f"INSERT INTO d.m {gen}")
        s.query(f"INSERT INTO d.j SELECT t, plan, toJSONString(properties)::JSON FROM ({gen})")
        for t in ("m", "j"):
            s.query(f"OPTIMIZE TABLE d.{t} FINAL")
        sizes = s.query(
            "SELECT table, formatReadableSize(sum(data_compressed_bytes)) FROM system.parts "
            "WHERE database = 'd' AND active GROUP BY table ORDER BY table",
            "TSV",
        )
        print(f"on disk: {str(sizes).strip()}")
        cases = (
            ("filter, typed column", "SELECT count() FROM d.m WHERE plan = 'pro'"),
            ("filter, Map", "SELECT count() FROM d.m WHERE properties['plan'] = 'pro'"),
            ("filter, JSON", "SELECT count() FROM d.j WHERE properties.`plan`::String = 'pro'"),
            ("breakdown, typed column", "SELECT plan, count() FROM d.m GROUP BY plan"),
            ("breakdown, Map", "SELECT properties['plan'] AS v, count() FROM d.m GROUP BY v"),
            ("breakdown, JSON", "SELECT properties.`plan`::String AS v, count() FROM d.j GROUP BY v"),
            ("rare key filter, Map", "SELECT count() FROM d.m WHERE properties['k7'] = '7'"),
            ("rare key filter, JSON", "SELECT count() FROM d.j WHERE properties.`k7`::String = '7'"),
        )
        for label, sql in cases:
            times = []
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                s.query(sql, "CSV")
                times.append((time.perf_counter() - t0) * 1000)
            print(f"{label:28s} median {statistics.median(times):7.1f} ms   min {min(times):7.1f} ms")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
