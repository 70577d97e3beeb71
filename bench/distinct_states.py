"""Exact mergeable distinct states against HLL states and raw events, on a store the query benchmark loaded.

    .venv/bin/python bench/queries.py --sizes 10000000 --data-dir /tmp/bq --live-only   # loads bench_10000000
    CLICKSTREAM_DATA_DIR=/tmp/bq .venv/bin/python bench/distinct_states.py bench_10000000

Builds one-off tables from ``events`` — per minute, per day and per hour x device x country x referrer — with
``uniqExact(String)``, ``groupBitmap(cityHash64(id))`` and ``uniqCombined(14)`` states, then times (median of 5) the
distinct users of all time and of the last hour from each, and from raw events. A state whose build the engine
refuses (e.g. for memory) is reported and skipped. The tables are dropped at the end.
"""

from __future__ import annotations

import statistics
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from clickstream_lib.settings import Settings
from clickstream_lib.store import connect

GRAINS = {
    "minute": ("toStartOfMinute(event_time)", False),
    "day": ("toDateTime(toStartOfDay(event_time), 'UTC')", False),
    "seghour": ("toStartOfHour(event_time)", True),
}
STATES = {
    "uniqExact": ("AggregateFunction(uniqExact, String)", "uniqExactState(user_id)", "uniqExactMerge"),
    "groupBitmap": (
        "AggregateFunction(groupBitmap, UInt64)",
        "groupBitmapState(cityHash64(user_id))",
        "groupBitmapMerge",
    ),
    "uniqCombined14": (
        "AggregateFunction(uniqCombined(14), String)",
        "uniqCombinedState(14)(user_id)",
        "uniqCombinedMerge(14)",
    ),
}


def main(db: str) -> None:
    client = connect(Settings.from_env(clickhouse_database=db), migrate=False).client

    def median_ms(sql: str) -> tuple[float, int]:
        client.query(sql)
        times = []
        for _ in range(5):
            t = time.perf_counter()
            value = client.query(sql).result_rows[0][0]
            times.append((time.perf_counter() - t) * 1000)
        return statistics.median(times), int(value)

    built = []
    for grain, (expr, segments) in GRAINS.items():
        keys = "t, interaction_type" + (", device, country, referrer" if segments else "")
        dims = "device LowCardinality(String), country LowCardinality(String), referrer LowCardinality(String), "
        for kind, (ctype, state, _) in STATES.items():
            name = f"{db}.bench_state_{grain}_{kind}"
            client.command(f"DROP TABLE IF EXISTS {name}")
            client.command(
                f"CREATE TABLE {name} (t DateTime('UTC'), interaction_type LowCardinality(String), "
                f"{dims if segments else ''}users {ctype}) ENGINE = AggregatingMergeTree ORDER BY ({keys})"
            )
            t = time.perf_counter()
            try:
                client.command(
                    f"INSERT INTO {name} SELECT {expr} AS t, {keys.removeprefix('t, ')}, {state} "
                    f"FROM {db}.events GROUP BY {keys}"
                )
                client.command(f"OPTIMIZE TABLE {name} FINAL")
            except Exception as exc:  # a state the engine cannot build within its limits: reported, skipped
                print(f"build {grain} {kind}: refused ({str(exc).splitlines()[0][:160]})", flush=True)
                client.command(f"DROP TABLE IF EXISTS {name}")
                continue
            size = client.query(
                "SELECT sum(bytes_on_disk) FROM system.parts WHERE database = {d:String} AND table = {t:String} "
                "AND active",
                parameters={"d": db, "t": name.split(".")[1]},
            ).result_rows[0][0]
            print(f"build {grain} {kind}: {time.perf_counter() - t:.1f} s, {int(size) / 2**20:.1f} MiB", flush=True)
            built.append((grain, kind, name))
    hour = int((datetime.now(UTC) - timedelta(hours=1)).replace(second=0, microsecond=0).timestamp())
    for label, where, raw_where in (
        ("all time", "", ""),
        (
            "last hour",
            f"WHERE t >= toDateTime({hour}, 'UTC')",
            f"WHERE event_time >= fromUnixTimestamp64Milli({hour}000, 'UTC') "
            f"AND toStartOfHour(event_time) >= toStartOfHour(fromUnixTimestamp64Milli({hour}000, 'UTC'))",
        ),
    ):
        ms, n = median_ms(f"SELECT uniqExact(user_id) FROM {db}.events {raw_where}")
        print(f"{label:10} raw uniqExact        {ms:8.1f} ms  {n}")
        for grain, kind, name in built:
            ms, n = median_ms(f"SELECT {STATES[kind][2]}(users) FROM {name} {where}")
            print(f"{label:10} {grain:7} {kind:14} {ms:8.1f} ms  {n}")
    for _, _, name in built:
        client.command(f"DROP TABLE IF EXISTS {name}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "bench_10000000")
