"""Benchmark the named queries at 1M and 10M generated events, raw events vs rollups, in the same run.

    .venv/bin/python bench/queries.py                      # 1M and 10M events, 7 runs per query
    .venv/bin/python bench/queries.py --sizes 1000000 5000000 --repeat 5 --json out.json
    .venv/bin/python bench/queries.py --data-dir /tmp/bq --reuse --memory-limit-mb 0    # again on the same data,
    .venv/bin/python bench/queries.py --data-dir /tmp/bq --reuse --memory-limit-mb 1024 # with another engine limit
    .venv/bin/python bench/queries.py --sizes 10000000 --data-dir /tmp/bq --reuse --only experiments,device --repeat 3
    .venv/bin/python bench/queries.py --sizes 10000000 --data-dir /tmp/bq --reuse --live-only   # refresh set only

For each size a child process generates events with the project's generator (``Generator.backfill`` over the last
7 days, so the live panels have data "now"; 1M events per call, ``size / 100`` users; two of three users in one of two
A/B experiments, every event with properties ``plan`` and ``device``) and loads them into a fresh
database of an embedded store (through a Parquet file and ``INSERT ... SELECT``, so the materialized views fill
the rollups as they would from the sink). The child exits (chdb: one process per data directory); then another
child per size runs every query ``--repeat`` times after one warm-up and reports the median, raw events vs the
rollup ``source="auto"`` picks, and the dashboard's refresh set (``queries.live_panels``). Ratios are against the
raw baseline measured in the same run. Peak RSS is sampled in the measuring process only; the measuring child runs
with the product's default embedded-engine memory limit (``CLICKSTREAM_MEMORY_LIMIT_MB``) unless
``--memory-limit-mb`` says otherwise (0 = the engine's own default, 90% of RAM).

"Raw" means the ``events`` table as the optimizer reads it, projections included: the per-user passes (funnel,
sessions, retention) have no rollup and read the ``by_user`` projection when their window has no time bound.
Timings on a shared machine swing by 2x between runs; compare the ratios within one run, and check a change with
alternating runs in one process (raw vs the new form, same data) before believing a single figure.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DAY_MS = 86_400_000
CHUNK = 1_000_000


def load_and_measure(
    script: str, size: int, data_dir: str | None, measure_args: list[str], memory_limit_mb: int | None = None
) -> dict[str, Any]:
    """Load ``size`` events as this script does into ``data_dir`` (a store loaded there before is reused; None: a
    temporary directory, removed after), then run ``script --measure MEASURE_ARGS`` in a child process on that store
    and return the JSON object its last line prints. A benchmark that measures a loaded store starts this way."""
    tmp = None if data_dir else tempfile.TemporaryDirectory(prefix="bench-store-")
    directory = str(Path(data_dir).resolve()) if data_dir else tmp.name  # type: ignore[union-attr]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CLICKHOUSE_", "CLICKSTREAM_"))}
    env["CLICKSTREAM_DATA_DIR"] = directory
    if memory_limit_mb is not None:
        env["CLICKSTREAM_MEMORY_LIMIT_MB"] = str(memory_limit_mb)
    db = f"bench_{size}"
    try:
        subprocess.run([sys.executable, __file__, "--load", str(size), db, "--reuse"], env=env, check=True)
        proc = subprocess.run(
            [sys.executable, script, "--measure", db, *measure_args],
            env=env,
            check=True,
            capture_output=True,
            text=True,
        )
        got: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
        return got
    finally:
        if tmp is not None:
            tmp.cleanup()


def load(size: int, database: str, seed: int, days: int, reuse: bool = False) -> None:
    """Child process: generate ``size`` events over the last ``days`` days and insert them (views fill rollups).

    With ``reuse``, a database that already holds ``size`` events (from an earlier run with the same ``--data-dir``)
    is kept as it is.
    """
    import numpy as np
    import pandas as pd

    from clickstream_lib.generator import Generator
    from clickstream_lib.settings import Settings
    from clickstream_lib.store import connect

    # The load is set-up, not a measurement: its 1M-row inserts (and the pandas frames beside them) get the engine's
    # own memory limit rather than the product's 1 GB default for a long-running process, which they pass.
    store = connect(Settings.from_env(clickhouse_database=database, memory_limit_mb=0))
    held = store.scalar(f"SELECT count() FROM {store.database}.events")
    if reuse and held >= size:  # more: a served_viewers run's sink added to it
        print(f"  reusing {held:,} events in {database}", file=sys.stderr, flush=True)
        store.close()
        return
    if held:
        store.close()
        what = "fewer than" if held < size else "already"
        raise SystemExit(
            f"{database} holds {held:,} events ({what} {size:,} asked): pass --reuse to measure them, or drop the "
            "database (or use another --data-dir) to load again"
        )
    # Users grow with the data (100 events per user over the span), as a busier site has more visitors.
    gen = Generator(seed=seed, n_users=max(1_000, size // 100))
    end = int(time.time() * 1000)
    start = end - days * DAY_MS
    chunks = max(1, -(-size // CHUNK))
    rng = np.random.default_rng(seed)
    offset = 0
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "chunk.parquet"
        for i in range(chunks):
            n = min(CHUNK, size - i * CHUNK)
            # Every chunk spans the whole range: the generator keeps a user's sessions 30 min apart within a call,
            # and a fraction of the span cannot hold 1M events of the same users.
            df = gen.backfill(start, end, n).to_frame()
            m = len(df)
            part = np.arange(offset, offset + m)
            offset += m
            out = pd.DataFrame(
                {
                    "event_id": df["event_id"].astype(str),
                    "user_id": df["user_id"].astype(str),
                    "session_id": df["session_id"].astype(str),
                    "item_id": df["item_id"].astype(str),
                    "interaction_type": df["interaction_type"].astype(str),
                    "t": df["timestamp_ms"],
                    "page": df["page"].astype(str),
                    "referrer": df["referrer"].astype(str),
                    "device": df["device"].astype(str),
                    "country": df["country"].astype(str),
                    "price": df["price"],
                    "currency": df["currency"].astype(str),
                    "schema_version": df["schema_version"],
                    "kafka_partition": (part % 6).astype("uint32"),
                    "kafka_offset": (part // 6).astype("uint64"),
                }
            )
            out["kt"] = out["t"] + rng.integers(0, 50, m)
            out["it"] = out["kt"] + rng.integers(5, 2_000, m)
            out.to_parquet(path)
            # The file is this process's own temporary file; its path is not user input.
            # Two of three users are in one of two A/B experiments (a variation per user), and every event has
            # properties: the user's plan and a copy of its device (for a property filter against the same filter on
            # the typed column).
            store.client.command(
                f"INSERT INTO {store.database}.events (event_id, user_id, session_id, item_id, interaction_type, "
                "event_time, page, referrer, device, country, price, currency, schema_version, experiment_name, "
                "experiment_variation, properties, kafka_topic, kafka_partition, kafka_offset, kafka_timestamp, "
                "ingest_time) "
                "SELECT toUUID(event_id), user_id, session_id, item_id, "
                "interaction_type, fromUnixTimestamp64Milli(t, 'UTC'), page, referrer, device, country, "
                "toDecimal64(price, 2), currency, schema_version, "
                "['', 'checkout_button', 'homepage_banner'][cityHash64(user_id) % 3 + 1], "
                "if(cityHash64(user_id) % 3 = 0, '', ['control', 'variant_a', 'variant_b'][intDiv(cityHash64(user_id), "
                "3) % 3 + 1]), "
                "toJSONString(map('plan', ['free', 'pro', 'team'][cityHash64(user_id, 'plan') % 3 + 1], "
                "'device', device))::JSON, "
                "'clickstream_topic', kafka_partition, kafka_offset, "
                "fromUnixTimestamp64Milli(kt, 'UTC'), fromUnixTimestamp64Milli(it, 'UTC') "
                f"FROM file('{path}', Parquet)"
            )
            print(f"  loaded {offset:,} events ({time.perf_counter() - t0:.0f} s)", file=sys.stderr, flush=True)
    # Let background merges settle (up to a minute), as they would between a dashboard's refreshes in steady state.
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and store.scalar(
        "SELECT count() FROM system.merges WHERE database = {db:String}", {"db": store.database}
    ):
        time.sleep(1)
    store.close()


class PeakRSS:
    """Samples this process's resident set size while running (ru_maxrss would include the import phase too)."""

    def __init__(self) -> None:
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            with open("/proc/self/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        self.peak = max(self.peak, int(line.split()[1]) * 1024)
            self._stop.wait(0.01)

    def __enter__(self) -> PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def median_ms(fn: Callable[[], Any], repeat: int) -> tuple[float, Any]:
    result = fn()  # warm-up: first-run costs (part loading, compilation) are not what a refreshing panel pays
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        result = fn()
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times), result


def cases(now: datetime, item: str) -> list[tuple[str, str, dict[str, Any]]]:
    """(label, query name, kwargs) — all-time unless the label says otherwise; ``item``: a path's anchor item."""
    last_day = {"start": (now - timedelta(days=1)).replace(minute=0, second=0, microsecond=0)}
    return [
        ("kpis", "kpis", {}),
        ("kpis device=mobile", "kpis", {"device": "mobile"}),
        ("breakdown interaction_type", "breakdown", {"by": "interaction_type"}),
        ("breakdown country", "breakdown", {"by": "country"}),
        ("timeseries minute", "timeseries", {"bucket": "minute"}),
        ("timeseries hour", "timeseries", {"bucket": "hour"}),
        ("top_users", "top_users", {"limit": 10}),
        ("top_items", "top_items", {"limit": 10}),
        ("item_performance", "item_performance", {"limit": 20}),
        ("active_users 5 min", "active_users", {"minutes": 5}),
        ("events_per_second 10 s", "events_per_second", {"seconds": 10}),
        ("funnel", "funnel", {}),
        ("funnel last 24 h", "funnel", dict(last_day)),
        ("sessions", "sessions", {}),
        ("sessions last 24 h", "sessions", dict(last_day)),
        ("session_durations", "session_durations", {}),
        ("retention 7 days", "retention", {"days": 7}),
        ("paths after view", "paths", {"event": "view", "steps": 5}),
        ("paths after view last 24 h", "paths", {"event": "view", "steps": 5, **last_day}),
        ("paths before purchase", "paths", {"event": "purchase", "direction": "before", "steps": 4}),
        ("paths after view of an item", "paths", {"event": "view", "item": item, "steps": 5}),
        ("paths after view of an item last 24 h", "paths", {"event": "view", "item": item, "steps": 5, **last_day}),
        ("path_steps after view", "path_steps", {"event": "view", "steps": 5}),
        ("funnel_steps by device", "funnel_steps", {"steps": ["view", "click", "purchase"], "by": "device"}),
        (
            "funnel_steps by device last 24 h",
            "funnel_steps",
            {"steps": ["view", "click", "purchase"], "by": "device", **last_day},
        ),
        ("funnel_steps any order", "funnel_steps", {"steps": ["view", "click", "purchase"], "order": "any"}),
        ("cohorts day by country", "cohorts", {"periods": 7, "by": "country"}),
        ("cohorts week by", "cohorts", {"period": "week", "periods": 4, "mode": "by"}),
        ("experiments", "experiments", {}),
        ("experiments last 24 h", "experiments", dict(last_day)),
        ("experiment_daily", "experiment_daily", {}),
        ("kpis prop.device=mobile", "kpis", {"prop.device": "mobile"}),
        ("breakdown device", "breakdown", {"by": "device"}),
        ("breakdown prop.device", "breakdown", {"by": "prop.device"}),
        ("user_daily", "user_daily", {}),
        ("ingestion_latency", "ingestion_latency", {}),
        ("ingestion_partitions", "ingestion_partitions", {}),
        ("freshness", "freshness", {}),
    ]


def measure(database: str, repeat: int, only: str = "", live_only: bool = False) -> dict[str, Any]:
    from clickstream_lib import queries, schema
    from clickstream_lib.settings import Settings
    from clickstream_lib.store import connect

    store = connect(Settings.from_env(clickhouse_database=database))
    limit = int(store.scalar("SELECT value FROM system.server_settings WHERE name = 'max_server_memory_usage'"))
    rows: dict[str, dict[str, Any]] = {}
    now = datetime.now(UTC)
    hour_ago = (now - timedelta(hours=1)).replace(second=0, microsecond=0)
    with PeakRSS() as rss:
        count = int(store.scalar(f"SELECT count() FROM {database}.events"))
        # The most viewed item: the anchor of the item paths (the generator's catalogue is skewed).
        item = str(
            store.scalar(
                f"SELECT item_id FROM {database}.events WHERE interaction_type = 'view'"
                " GROUP BY item_id ORDER BY count() DESC, item_id LIMIT 1"
            )
        )
        for label, name, kwargs in cases(now, item):
            if live_only or (only and not any(part and part in label for part in only.split(","))):
                continue
            raw_ms, _ = median_ms(lambda n=name, k=kwargs: queries.run(store, n, source="raw", **k), repeat)
            row: dict[str, Any] = {"raw_ms": raw_ms}
            auto_ms, df = median_ms(lambda n=name, k=kwargs: queries.run(store, n, **k), repeat)
            if df.attrs["source"] != "raw":
                row.update(rollup_ms=auto_ms, rollup=df.attrs["source"], speedup=raw_ms / auto_ms)
            rows[label] = row
        panels = {}
        for label, window in (("all time", {}), ("last hour", {"start": hour_ago})) if not only or live_only else ():
            raw_ms, _ = median_ms(lambda w=window: queries.live_panels(store, source="raw", **w), repeat)
            auto_ms, _ = median_ms(lambda w=window: queries.live_panels(store, **w), repeat)
            # The same set with estimated distinct counts (source="approx": the rollups' HLL states), for the ratio.
            approx_ms, _ = median_ms(lambda w=window: queries.live_panels(store, source="approx", **w), repeat)
            panels[label] = {
                "raw_ms": raw_ms,
                "rollup_ms": auto_ms,
                "speedup": raw_ms / auto_ms,
                "approx_ms": approx_ms,
                "exact_vs_approx": auto_ms / approx_ms,
            }
        parts = dict(
            store.query_rows(
                "SELECT table, count() FROM system.parts WHERE database = {db:String} AND active GROUP BY table",
                {"db": database},
            )
        )
        rollup_rows = {t.name: int(store.scalar(f"SELECT count() FROM {database}.{t.name}")) for t in schema.ROLLUPS}
    store.close()
    return {
        "events": count,
        "queries": rows,
        "live_panels": panels,
        "peak_rss_mb": rss.peak / 2**20,
        "engine_memory_limit_mb": limit / 2**20,
        "ru_maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "parts": parts,
        "rollup_rows": rollup_rows,
    }


def report(results: dict[int, dict[str, Any]]) -> None:
    sizes = sorted(results)
    for size in sizes:
        r = results[size]
        print(
            f"\n== {r['events']:,} events (peak RSS of the query process {r['peak_rss_mb']:.0f} MB; "
            f"engine memory limit {r['engine_memory_limit_mb']:.0f} MB) =="
        )
        print("rollup rows: " + ", ".join(f"{t} {n:,}" for t, n in r["rollup_rows"].items()))
        print(f"{'query':28} {'raw ms':>9} {'rollup ms':>10} {'speedup':>8}  rollup  (live panels: approx ms, ratio)")
        for label, row in r["queries"].items():
            rol = f"{row['rollup_ms']:10.1f} {row['speedup']:7.1f}x  {row['rollup']}" if "rollup_ms" in row else ""
            print(f"{label:28} {row['raw_ms']:9.1f} {rol}")
        for label, p in r["live_panels"].items():
            print(
                f"{'live panels ' + label:28} {p['raw_ms']:9.1f} {p['rollup_ms']:10.1f} {p['speedup']:7.1f}x  "
                f"exact; approx {p['approx_ms']:.1f} ms, exact/approx {p['exact_vs_approx']:.2f}x"
            )
    if len(sizes) > 1:
        lo, hi = results[sizes[0]], results[sizes[-1]]
        factor = hi["events"] / lo["events"]
        print(f"\n== growth {lo['events']:,} -> {hi['events']:,} events ({factor:.0f}x data), median time ratio ==")
        for label in lo["queries"]:
            a, b = lo["queries"][label], hi["queries"][label]
            line = f"{label:28} raw {b['raw_ms'] / a['raw_ms']:5.1f}x"
            if "rollup_ms" in a and "rollup_ms" in b:
                line += f"   rollup {b['rollup_ms'] / a['rollup_ms']:5.1f}x"
            print(line)
        for label in lo["live_panels"]:
            a, b = lo["live_panels"][label], hi["live_panels"][label]
            print(
                f"{'live panels ' + label:28} raw {b['raw_ms'] / a['raw_ms']:5.1f}x   "
                f"rollup {b['rollup_ms'] / a['rollup_ms']:5.1f}x"
            )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 10_000_000])
    parser.add_argument("--repeat", type=int, default=7, help="timed runs per query after one warm-up (default 7)")
    parser.add_argument("--days", type=int, default=7, help="days of history the events span (default 7)")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--data-dir", help="keep the store here (default: a temporary directory)")
    parser.add_argument("--json", help="also write the figures to this JSON file")
    parser.add_argument("--reuse", action="store_true", help="keep data a previous run loaded into --data-dir")
    parser.add_argument(
        "--memory-limit-mb",
        type=int,
        help="CLICKSTREAM_MEMORY_LIMIT_MB of the measuring process (default: the product's default; 0 = none)",
    )
    parser.add_argument(
        "--only",
        default="",
        help="measure only the queries whose label contains one of these comma-separated parts (e.g. experiments,prop)",
    )
    parser.add_argument(
        "--live-only",
        action="store_true",
        help="measure only the dashboard's refresh set (queries.live_panels): raw, exact (auto) and estimated (approx)",
    )
    parser.add_argument("--load", nargs=2, metavar=("SIZE", "DATABASE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.load:
        load(int(args.load[0]), args.load[1], args.seed, args.days, args.reuse)
        return 0
    if args.reuse and not args.data_dir:
        parser.error("--reuse needs --data-dir")
    tmp = None if args.data_dir else tempfile.TemporaryDirectory(prefix="bench-queries-")
    data_dir = str(Path(args.data_dir).resolve()) if args.data_dir else tmp.name  # type: ignore[union-attr]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CLICKHOUSE_", "CLICKSTREAM_"))}
    env["CLICKSTREAM_DATA_DIR"] = data_dir
    results: dict[int, dict[str, Any]] = {}
    try:
        for size in args.sizes:
            db = f"bench_{size}"
            print(f"loading {size:,} events into {db} (child process) ...", file=sys.stderr, flush=True)
            t = time.perf_counter()
            subprocess.run(
                [sys.executable, __file__, "--load", str(size), db, "--seed", str(args.seed), "--days", str(args.days)]
                + (["--reuse"] if args.reuse else []),
                env=env,
                check=True,
            )
            print(f"  load took {time.perf_counter() - t:.0f} s", file=sys.stderr, flush=True)
        # Measure each size in its own child, so one size's memory does not count against the next.
        out = Path(data_dir) / "results.json"
        measure_env = dict(env)
        if args.memory_limit_mb is not None:
            measure_env["CLICKSTREAM_MEMORY_LIMIT_MB"] = str(args.memory_limit_mb)
        code = (
            "import json, sys; sys.path.insert(0, sys.argv[1]); from bench.queries import measure; "
            "print(json.dumps(measure(sys.argv[3], int(sys.argv[2]), sys.argv[4], sys.argv[5] == '1')))"
        )
        live_only = "1" if args.live_only else "0"
        for size in args.sizes:
            print(f"measuring {size:,} ...", file=sys.stderr, flush=True)
            proc = subprocess.run(
                [sys.executable, "-c", code, str(ROOT), str(args.repeat), f"bench_{size}", args.only, live_only],
                env=measure_env,
                check=True,
                capture_output=True,
                text=True,
            )
            results[size] = json.loads(proc.stdout.strip().splitlines()[-1])
        out.write_text(json.dumps(results, indent=1))
    finally:
        if tmp is not None:
            tmp.cleanup()
    report(results)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
