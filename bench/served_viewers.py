"""Viewers refreshing against one owner of a large store while its sink keeps up with a steady stream.

Usage:  .venv/bin/python bench/served_viewers.py [--events 10000000] [--viewers 10] [--refresh-s 2] [--rate 5000]
                                                [--duration 60] [--data-dir DIR [--database DB]] [--full]

One `clickstream serve` (notebooks.OwnerProcess, sink on) owns an embedded store holding --events events (loaded
by bench/queries.py's loader: 7 days of generated history; with --data-dir a store loaded before is reused) and
consumes a Kafka topic that `clickstream produce --rate R` feeds from another process. Once the sink has caught up,
--viewers client processes refresh every --refresh-s seconds for --duration seconds, each on its own schedule
(starts spread over one period, the next refresh due a period after the previous one was due, as the dashboard's
asyncio loop does). A refresh is the dashboard's live refresh set (queries.live_panels: 7 queries, one call to the
owner, results as the same DataFrames as in-process); with --full it is a whole `Dashboard.refresh()` (KPIs, 13
queries in two calls, the 8 plotly figures rendered to JSON) in each viewer.

Why processes and not Chromium pages: a viewer's refresh is its kernel's work against the owner; ten headless
Chromium instances on the same 2-core machine would measure the browsers' rendering, which is not the owner's or
the kernel's cost (bench/dashboard_render.py measures a real page).

Reported: refresh times of all viewers together (median, p95, max) and per viewer; the sink's ingest over the
measured interval vs the producer's rate; the consumer lag (messages in Kafka not yet stored) at the start and the
end of the interval; the owner's CPU and RSS. A local Kafka broker on free ports in a temporary directory is started
and stopped by this script.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from clickstream_lib.notebooks import OwnerProcess, settings_env  # noqa: E402
from clickstream_lib.settings import Settings  # noqa: E402
from clickstream_lib.stack import KafkaStack, clean_env, free_port  # noqa: E402
from clickstream_lib.store import ServedStore, served_store  # noqa: E402

VIEWER = """
import json, sys, time
from clickstream_lib import Settings, connect, queries
from clickstream_lib.dashboard import Dashboard
offset, period, duration, full = float(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3]), sys.argv[4] == "1"
store = connect(Settings.from_env())
assert type(store).__name__ == "ServedStore", type(store)
dash = Dashboard(store.settings, store=store) if full else None
refresh = dash.refresh if dash else (lambda: queries.live_panels(store))
refresh()  # warm: imports, plotly's figures
print("ready", flush=True)
start = float(sys.stdin.readline())  # the same wall-clock start for every viewer
due = start + offset
times, late = [], 0
while due < start + duration:
    now = time.time()
    if now < due:
        time.sleep(due - now)
    t0 = time.perf_counter()
    refresh()
    times.append(time.perf_counter() - t0)
    if dash is not None and dash.header.value and "failed" in dash.header.value:
        raise SystemExit(dash.header.value)
    due += period
    if time.time() > due:  # the refresh took longer than the period: the next one starts at once, as in a kernel
        late += 1
        due = time.time()
print(json.dumps({"times": times, "late": late, "chdb": "chdb" in sys.modules, "calls": store.calls}))
"""


def end_offsets(settings: Settings) -> int:
    """Messages in the topic (sum of its partitions' end offsets)."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=settings.kafka_broker_url)
    try:
        parts = consumer.partitions_for_topic(settings.kafka_topic) or set()
        ends = consumer.end_offsets([TopicPartition(settings.kafka_topic, p) for p in parts])
        return int(sum(ends.values()))
    finally:
        consumer.close()


def stored(store: ServedStore) -> int:
    """Events the sink has stored from the bench's topic (the loaded history has no topic)."""
    sql = f"SELECT count() FROM {store.table('events')} WHERE kafka_topic = {{t:String}}"
    return int(store.scalar(sql, {"t": store.settings.kafka_topic}))


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=10_000_000, help="events in the store (loaded unless present)")
    ap.add_argument("--viewers", type=int, default=10)
    ap.add_argument("--refresh-s", type=float, default=2.0)
    ap.add_argument("--rate", type=float, default=5000.0, help="events/s the producer sends meanwhile")
    ap.add_argument("--duration", type=float, default=60.0, help="seconds of measured refreshes")
    ap.add_argument("--data-dir", help="the store's directory (kept; a store loaded there before is reused)")
    ap.add_argument("--database", help="the store's database (default bench_<events>)")
    ap.add_argument("--full", action="store_true", help="each refresh is a whole Dashboard.refresh()")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-viewers-"))
    data_dir = Path(args.data_dir).resolve() if args.data_dir else tmp / "data"
    database = args.database or f"bench_{args.events}"
    env = clean_env(CLICKSTREAM_DATA_DIR=str(data_dir))
    t = time.perf_counter()
    subprocess.run(
        [sys.executable, str(ROOT / "bench" / "queries.py"), "--load", str(args.events), database, "--reuse"],
        env=env,
        check=True,
    )
    print(f"store ready: {args.events:,} events ({time.perf_counter() - t:.0f} s)", file=sys.stderr, flush=True)
    port, cport = free_port(), free_port()
    settings = Settings.from_env(
        env,
        kafka_broker_url=f"127.0.0.1:{port}",
        kafka_controller_port=cport,
        clickhouse_database=database,
        kafka_topic="bench_viewers",
        kafka_partitions=3,
    )
    stack = KafkaStack(settings.replace(data_dir=tmp / "kafka"))
    stack.up(timeout_s=120)
    child_env = settings_env(settings, clean_env())
    producer: subprocess.Popen[bytes] | None = None
    owner = OwnerProcess(settings, produce=False, sink=True, log_file=tmp / "serve.log")
    viewers: list[subprocess.Popen[str]] = []
    try:
        owner.start()
        store = served_store(settings, wait_s=10)
        assert store is not None
        base = stored(store)  # rows an earlier run's sink stored from its (since deleted) topic of the same name
        run_s = 30 + 2 * args.duration + 120
        producer = subprocess.Popen(
            [sys.executable, "-m", "clickstream_lib", "produce", "--rate", str(args.rate), "--duration", str(run_s)],
            env=child_env,
            stdout=subprocess.DEVNULL,
            stderr=open(tmp / "produce.log", "wb"),  # noqa: SIM115 - closed with the process
        )
        # Warm-up: the sink has caught up with the producer's stream (lag below one second of events).
        deadline = time.monotonic() + 180
        while True:
            time.sleep(2)
            produced, done = end_offsets(settings), stored(store) - base
            if produced > args.rate * 10 and produced - done < args.rate:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"the sink did not catch up with the producer: {done} of {produced}")
        full = "1" if args.full else "0"
        for i in range(args.viewers):
            offset = i * args.refresh_s / args.viewers
            viewers.append(
                subprocess.Popen(
                    [sys.executable, "-c", VIEWER, str(offset), str(args.refresh_s), str(args.duration), full],
                    env=child_env,
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    text=True,
                )
            )
        for v in viewers:
            assert v.stdout is not None and v.stdout.readline().strip() == "ready"
        start = time.time() + 1
        lag0 = end_offsets(settings) - (stored(store) - base)
        for v in viewers:
            assert v.stdin is not None
            v.stdin.write(f"{start}\n")
            v.stdin.flush()
        time.sleep(max(0.0, start - time.time()))
        proc = psutil.Process(owner.proc.pid if owner.proc else os.getpid())
        proc.cpu_percent()
        rows0, t0 = stored(store) - base, time.monotonic()
        rss: list[float] = []
        while time.time() < start + args.duration:
            rss.append(proc.memory_info().rss / 2**20)
            time.sleep(1)
        rows1, t1 = stored(store) - base, time.monotonic()
        cpu = proc.cpu_percent()
        lag1 = end_offsets(settings) - rows1
        results = []
        for v in viewers:
            out, _ = v.communicate(timeout=120)
            if v.returncode != 0:
                raise RuntimeError(f"a viewer failed (exit {v.returncode})")
            results.append(json.loads(out.strip().splitlines()[-1]))
        store.close()
    finally:
        for v in viewers:
            if v.poll() is None:
                v.kill()
        if producer is not None:
            producer.terminate()
            producer.wait(30)
        owner.stop()
        stack.down()
        shutil.rmtree(tmp, ignore_errors=True)

    everything = [x for r in results for x in r["times"]]
    mode = "Dashboard.refresh()" if args.full else "live refresh set (queries.live_panels)"
    print(
        f"store: {args.events:,} events; {args.viewers} viewers, {mode} every {args.refresh_s:g} s "
        f"for {args.duration:g} s"
    )
    print(
        f"refresh: {len(everything)} refreshes, median {statistics.median(everything) * 1000:.0f} ms, "
        f"p95 {pct(everything, 0.95) * 1000:.0f} ms, max {max(everything) * 1000:.0f} ms; "
        f"late (longer than the period) {sum(r['late'] for r in results)}"
    )
    print(
        "per viewer p95 (ms): "
        + str([round(pct(r["times"], 0.95) * 1000) for r in results])
        + f"; chdb imported by a viewer: {any(r['chdb'] for r in results)}"
    )
    print(
        f"sink: {(rows1 - rows0) / (t1 - t0):,.0f} events/s stored while the producer sent {args.rate:,.0f}/s; "
        f"lag {lag0:,} messages at the start, {lag1:,} at the end"
    )
    print(f"owner: CPU {cpu:.0f}% (100% = one core), RSS median {statistics.median(rss):.0f} MB, max {max(rss):.0f} MB")
    print(f"load average at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    return 0


if __name__ == "__main__":
    sys.exit(main())
