"""Benchmark: the sink's drain rate against raw kafka-python and raw inserts, end-to-end latency, sustained rate.

All figures come from one run, against a throwaway local Kafka broker and the embedded ClickHouse engine:

- raw consume  = plain kafka-python (assigned partitions, no group, no validation) reading the backlog, with
  kafka-python's default fetch size and, for comparison, with the sink's (FETCH_MAX_PARTITION_BYTES);
- raw insert   = the same rows, already parsed, inserted with Store.insert in batches of the sink's default size,
  with the column types the sink sends (EVENT_INSERT_TYPES);
- sink drain   = Sink with default settings draining the same backlog (validate, insert with tokens, commit);
  measured from its first record to the last commit. Ratio = drain / raw consume with the default fetch size
  (target >= 0.6); the ratio to a raw consumer fetching as much as the sink does is printed too.
- latency      = a live producer at 5k and 20k events/s (a separate process) with the sink running; p50/p99 of
  Kafka timestamp -> insert acknowledged, and of event time -> insert (target p99 <= flush interval + 500 ms).
- sustained    = a producer process and the sink together, twice: at full speed (events/s from the first send to
  the last commit), and held at --sustained-rate (50 000 events/s) for --sustained-s seconds, where the sink keeps up
  when it commits at that rate while the producer sends and has committed everything about a flush interval after
  the producer ended. Both check rows == produced with no duplicate event id, and give the CPU seconds per event of
  the producer process, the sink's process (this one: consumer, insert thread, engine) and the broker.
- large values = with --large-values N: N values of 5 MB (a few KiB each as lz4, as a foreign producer may send
  them) and 1 000 events drained by `clickstream consume --batch-max-bytes` in its own process; its peak RSS
  (ru_maxrss), and the same for 1 000 events alone as the baseline. Only that part runs.

Medians over --repeats rounds for the backlog figures.

    .venv/bin/python bench/consume.py
    .venv/bin/python bench/consume.py --events 200000 --repeats 3 --latency-s 20
    .venv/bin/python bench/consume.py --sustained-only
    .venv/bin/python bench/consume.py --large-values 100 --batch-max-bytes 16777216
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import numpy as np
from kafka import KafkaConsumer, TopicPartition

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from clickstream_lib import events, schema, topics  # noqa: E402
from clickstream_lib.producer import Producer  # noqa: E402
from clickstream_lib.settings import Settings  # noqa: E402
from clickstream_lib.sink import (  # noqa: E402
    DEFAULT_BATCH_MAX_BYTES,
    DEFAULT_BATCH_MAX_ROWS,
    DEFAULT_BATCH_MAX_WAIT_S,
    EVENT_COLUMNS,
    EVENT_INSERT_TYPES,
    FETCH_MAX_PARTITION_BYTES,
    GROUP_MAX_BATCHES,
    Sink,
)
from clickstream_lib.stack import (  # noqa: E402
    KafkaStack,
    clean_env,
    free_port,
)
from clickstream_lib.store import Store, connect, decimal_text  # noqa: E402

PYTHON = str(ROOT / ".venv" / "bin" / "python")
SINK_OPTIONS: dict[str, int] = {}  # Sink keyword arguments from the command line (--group-max-batches)
PRICE_SCALE = int(re.findall(r"\d+", dict(schema.EVENTS.columns)["price"])[1])  # Decimal(12, 2): 2


def raw_consume(settings: Settings, n: int, **fetch: int) -> tuple[float, list[tuple[int, int, int, bytes]]]:
    """Records/s of a plain consumer reading ``n`` records from the beginning; also returns the records."""
    c = KafkaConsumer(
        **topics.client_config(settings), enable_auto_commit=False, max_poll_records=DEFAULT_BATCH_MAX_ROWS, **fetch
    )
    tps = [TopicPartition(settings.kafka_topic, p) for p in sorted(c.partitions_for_topic(settings.kafka_topic))]
    c.assign(tps)
    c.seek_to_beginning(*tps)
    got: list[tuple[int, int, int, bytes]] = []
    t0 = time.perf_counter()
    while len(got) < n:
        for recs in c.poll(timeout_ms=1000).values():
            got.extend((r.partition, r.offset, r.timestamp, r.value) for r in recs)
    dt = time.perf_counter() - t0
    c.close()
    return len(got) / dt, got


def raw_insert(store: Store, records: list[tuple[int, int, int, bytes]], topic: str) -> float:
    """Rows/s of Store.insert for the same rows, parsed beforehand, in batches of the sink's default size."""
    rows = []
    for p, o, ts, value in records:
        ev = events.parse(value, ts)
        assert isinstance(ev, dict)
        ev["event_id"] = ev["event_id"] or events.derived_event_id(topic, p, o)
        rows.append((ev, p, o, ts))
    t0 = time.perf_counter()
    for i in range(0, len(rows), DEFAULT_BATCH_MAX_ROWS):
        chunk = rows[i : i + DEFAULT_BATCH_MAX_ROWS]
        cols = [[r[0][f] for r in chunk] for f in events.FIELDS]
        cols += [[topic] * len(chunk), [r[1] for r in chunk], [r[2] for r in chunk], [r[3] for r in chunk]]
        price = EVENT_COLUMNS.index("price")
        cols[price] = decimal_text(cols[price], PRICE_SCALE)  # sent as the sink sends it (EVENT_INSERT_TYPES)
        store.insert(
            "events", cols, EVENT_COLUMNS, dedup_token=f"bench:{uuid.uuid4().hex}", column_types=EVENT_INSERT_TYPES
        )
    return len(rows) / (time.perf_counter() - t0)


def sink_drain(settings: Settings, store: Store, n: int) -> float:
    """Records/s of the sink draining ``n`` records: first record taken -> last commit."""
    sink = Sink(settings, store, **SINK_OPTIONS)
    sink.start()
    t_first = None
    while True:
        st = sink.stats()
        if t_first is None and st.records_consumed > 0:
            t_first = time.perf_counter()
        if st.rows_inserted + st.dead_letters >= n:
            t_done = time.perf_counter()
            break
        if not st.running and st.last_error:
            raise RuntimeError(st.last_error)
        time.sleep(0.005)
    sink.stop()
    assert t_first is not None
    return n / (t_done - t_first)


def produce_process(settings: Settings, rate: float | None, n: int) -> subprocess.Popen[bytes]:
    code = (
        "import sys; from clickstream_lib.settings import Settings; from clickstream_lib.producer import Producer;"
        f"s = Settings.from_env(); st = Producer(s, rate={rate!r}).run(events={n});"
        "print(st.acked, st.failed, st.elapsed_s)"
    )
    env = clean_env(
        KAFKA_BROKER_URL=settings.kafka_broker_url,
        KAFKA_TOPIC=settings.kafka_topic,
        KAFKA_PARTITIONS=str(settings.kafka_partitions),
        CLICKSTREAM_DATA_DIR=str(settings.data_dir) + "-p",
    )
    return subprocess.Popen([PYTHON, "-c", code], cwd=ROOT, env=env, stdout=subprocess.PIPE)


def _wait_rows(sink: Sink, n: int, poll_s: float = 0.1, timeout_s: float = 600) -> None:
    deadline = time.monotonic() + timeout_s
    while sink.stats().rows_inserted < n:
        st = sink.stats()
        if time.monotonic() > deadline or (not st.running and st.last_error):
            raise RuntimeError(f"the sink stored {st.rows_inserted} of {n} rows: {st.last_error}")
        time.sleep(poll_s)


def fresh(base: Settings, tag: str) -> Settings:
    t = f"{tag}_{uuid.uuid4().hex[:8]}"
    return base.replace(kafka_topic=t, kafka_group_id=f"g_{t}", clickhouse_database=t)


def live(base: Settings, rate: float, seconds: float) -> dict[str, float | None]:
    """Latency with a producer process at ``rate`` events/s and the sink running with default settings."""
    s = fresh(base, f"lat{int(rate)}")
    topics.ensure_topic(s, s.kafka_topic)
    store = connect(s)
    sink = Sink(s, store, **SINK_OPTIONS).start()
    while not sink.stats().assigned_partitions:
        time.sleep(0.1)
    proc = produce_process(s, rate, int(rate * seconds))
    out, _ = proc.communicate()
    acked = int(out.split()[0])
    _wait_rows(sink, acked)
    st = sink.stats()
    sink.stop()
    return {
        "kafka_p50": st.latency_kafka_p50_ms,
        "kafka_p99": st.latency_kafka_p99_ms,
        "event_p50": st.latency_event_p50_ms,
        "event_p99": st.latency_event_p99_ms,
    }


def _proc_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a live process (``/proc/<pid>/stat``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _self_cpu_s() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def _children_cpu_s() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def sustained(
    base: Settings, n: int, broker_pid: int | None, rate: float | None = None, warmup_s: float = 2.0
) -> dict[str, float]:
    """A producer process (``rate`` events/s, None = full speed) and the sink together, ``n`` events.

    Returns events/s end to end (first send -> last commit), the sink's commit rate while the producer was sending
    (after ``warmup_s``), the events not yet committed when the producer ended and how long the sink then took to
    commit them (about one flush interval when it keeps up), rows and distinct ids stored, the producer's own rate,
    and the CPU seconds per event of the producer, the sink's process and the broker.
    """
    s = fresh(base, "sus")
    topics.ensure_topic(s, s.kafka_topic)
    store = connect(s)
    _quiesce(store)
    sink = Sink(s, store, **SINK_OPTIONS).start()
    while not sink.stats().assigned_partitions:
        time.sleep(0.1)
    cpu0 = (_children_cpu_s(), _self_cpu_s(), _proc_cpu_s(broker_pid) if broker_pid else float("nan"))
    t0 = time.perf_counter()
    proc = produce_process(s, rate, n)
    samples: list[tuple[float, int]] = []
    while proc.poll() is None:
        samples.append((time.perf_counter(), sink.stats().rows_inserted))
        time.sleep(0.05)
    t_prod = time.perf_counter() - t0
    rows_at_end = sink.stats().rows_inserted
    assert proc.stdout is not None
    out = proc.stdout.read().split()
    acked, sending_s = int(out[0]), float(out[2])
    _wait_rows(sink, acked, poll_s=0.01)
    dt = time.perf_counter() - t0
    cpu1 = (_children_cpu_s(), _self_cpu_s(), _proc_cpu_s(broker_pid) if broker_pid else float("nan"))
    sink.stop()
    rows, uniq = store.query_rows(f"SELECT count(), uniqExact(event_id) FROM {s.clickhouse_database}.events")[0]
    store.client.command(f"DROP DATABASE {s.clickhouse_database} SYNC")  # its merges would run into the next part
    producer_cpu, sink_cpu, broker_cpu = (b - a for a, b in zip(cpu0, cpu1, strict=True))
    window = [(t, r) for t, r in samples if t - t0 >= warmup_s]
    steady = float("nan")
    if len(window) >= 2 and window[-1][0] > window[0][0]:
        # The slope of a least-squares line through rows committed vs time: commits come as a step per insert round
        # (~1 s), so the rows between two chosen instants would be off by up to a round's worth.
        steady = float(np.polyfit([t for t, _ in window], [r for _, r in window], 1)[0])
    return {
        "rate": acked / dt,
        "steady": steady,
        "lag_at_end": acked - rows_at_end,
        "tail_s": dt - t_prod,
        "rows": int(rows),
        "distinct": int(uniq),
        "acked": acked,
        "producer_rate": acked / sending_s,  # its own rate: first send -> flushed, without its start-up
        "producer_us": producer_cpu / acked * 1e6,
        "sink_us": sink_cpu / acked * 1e6,
        "broker_us": broker_cpu / acked * 1e6,
    }


def _quiesce(store: Store, timeout_s: float = 120.0) -> None:
    """Wait until the engine runs no merge: the earlier parts' merges would take CPU from the run measured next."""
    deadline = time.monotonic() + timeout_s
    while store.query_rows("SELECT count() FROM system.merges")[0][0] and time.monotonic() < deadline:
        time.sleep(0.5)


def _cpu_line(sus: dict[str, float], rate: float) -> str:
    per_event = sus["producer_us"] + sus["sink_us"] + sus["broker_us"]
    return (
        f"    CPU per event: producer {sus['producer_us']:.1f} us, sink process {sus['sink_us']:.1f} us, broker "
        f"{sus['broker_us']:.1f} us = {per_event:.1f} us -> {rate:,.0f} events/s needs "
        f"{per_event * rate / 1e6:.2f} cores ({os.cpu_count()} here)"
    )


def start_stack(prefix: str) -> tuple[Settings, KafkaStack]:
    """A throwaway broker on free loopback ports and settings (6 partitions, an embedded store) in a new temp dir."""
    tmp = Path(tempfile.mkdtemp(prefix=prefix))
    port, cport = free_port(), free_port()
    base = Settings.from_env(
        clean_env(),
        kafka_broker_url=f"127.0.0.1:{port}",
        kafka_controller_port=cport,
        data_dir=tmp / "data",
        kafka_partitions=6,
    )
    stack = KafkaStack(base.replace(data_dir=tmp / "kafka-home"))
    stack.up(timeout_s=120)
    return base, stack


def large_values(base: Settings, n: int, batch_max_bytes: int) -> None:
    """Peak RSS of a sink process (``clickstream consume``) draining ``n`` 5 MiB lz4 values and 1 000 events, against
    1 000 events alone."""
    import json

    from kafka import KafkaProducer

    from clickstream_lib.notebooks import settings_env

    def peak(settings: Settings) -> dict[str, float]:
        """The final stats of ``clickstream consume --stats`` in its own process, with its peak RSS (MiB)."""
        settings = settings.replace(data_dir=base.data_dir.parent / f"consume-{uuid.uuid4().hex[:6]}")
        cmd = [PYTHON, "-m", "clickstream_lib", "consume", "--until-idle", "3", "--stats"]
        cmd += ["--batch-max-rows", "20000", "--batch-max-bytes", str(batch_max_bytes)]
        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
            proc = subprocess.Popen(cmd, cwd=ROOT, env=settings_env(settings, clean_env()), stdout=out, stderr=err)
            _, status, usage = os.wait4(proc.pid, 0)  # the child's own rusage: its peak RSS (ru_maxrss, KiB)
            proc.returncode = os.waitstatus_to_exitcode(status)
            out.seek(0)
            err.seek(0)
            if proc.returncode != 0:
                raise RuntimeError(err.read().decode()[-2000:])
            stats = json.loads(out.read().decode().strip().splitlines()[-1])
        return {**stats, "peak_rss_mb": usage.ru_maxrss / 1024}

    alone = fresh(base, "small")
    Producer(alone, rate=None).run(events=1_000)
    base_rss = peak(alone)["peak_rss_mb"]
    big = fresh(base, "large")
    topics.ensure_topic(big, big.kafka_topic)
    prod = KafkaProducer(**topics.client_config(big), compression_type="lz4", max_request_size=8 * 1024 * 1024)
    # What a foreign producer may send: an event-shaped JSON value of 5 MiB that lz4 compresses to a few KiB.
    head = b'{"user_id":"user_0001","item_id":"item_0001","interaction_type":"click","pad":"'
    value = head + b"x" * (5 * 2**20 - len(head) - 2) + b'"}'
    for i in range(n):
        prod.send(big.kafka_topic, value, partition=i % big.kafka_partitions)
    prod.flush(timeout=300)
    prod.close()
    Producer(big, rate=None).run(events=1_000)
    t0 = time.perf_counter()
    st = peak(big)
    print(
        f"  large values: {n} x {len(value) / 2**20:.0f} MiB (lz4) + 1 000 events, batch_max_bytes "
        f"{batch_max_bytes / 2**20:.0f} MiB: sink process peak RSS {st['peak_rss_mb']:,.0f} MiB (1 000 events alone: "
        f"{base_rss:,.0f} MiB); {st['dead_letters']:.0f} dead letters, {st['rows_inserted']:.0f} rows, "
        f"{st['batches']:.0f} batches, {time.perf_counter() - t0:.1f} s"
    )


def backlog_and_latency(base: Settings, args: argparse.Namespace) -> None:
    """The backlog figures (raw consume, raw insert, sink drain; medians) and the live latency at 5k and 20k ev/s."""
    backlog = fresh(base, "backlog")
    print(f"producing a backlog of {args.events} events ...", file=sys.stderr, flush=True)
    Producer(backlog, rate=None).run(events=args.events)
    consume_r, consume_big_r, insert_r, drain_r = [], [], [], []
    for i in range(args.repeats):
        rate, records = raw_consume(backlog, args.events)
        consume_r.append(rate)
        consume_big_r.append(raw_consume(backlog, args.events, max_partition_fetch_bytes=FETCH_MAX_PARTITION_BYTES)[0])
        st = connect(backlog.replace(clickhouse_database=f"raw{i}_{uuid.uuid4().hex[:6]}"))
        insert_r.append(raw_insert(st, records, backlog.kafka_topic))
        run = backlog.replace(
            kafka_group_id=f"drain{i}_{uuid.uuid4().hex[:6]}",
            clickhouse_database=f"drain{i}_{uuid.uuid4().hex[:6]}",
        )
        drain_r.append(sink_drain(run, connect(run), args.events))
        print(
            f"round {i + 1}: raw consume {rate:,.0f}/s (sink's fetch size {consume_big_r[-1]:,.0f}/s), "
            f"raw insert {insert_r[-1]:,.0f}/s, "
            f"sink drain {drain_r[-1]:,.0f}/s",
            file=sys.stderr,
            flush=True,
        )
    c, ins, d = statistics.median(consume_r), statistics.median(insert_r), statistics.median(drain_r)
    cb = statistics.median(consume_big_r)
    print(
        f"backlog {args.events} events, 6 partitions, batch {DEFAULT_BATCH_MAX_ROWS} rows / "
        f"{DEFAULT_BATCH_MAX_WAIT_S} s (medians of {args.repeats})"
    )
    print(f"  raw kafka-python consume : {c:>10,.0f} records/s")
    print(
        f"  ... with the sink's fetch: {cb:>10,.0f} records/s   ({FETCH_MAX_PARTITION_BYTES >> 20} MiB per partition)"
    )
    print(f"  raw insert (same rows)   : {ins:>10,.0f} rows/s")
    print(
        f"  sink drain               : {d:>10,.0f} records/s   ratio to raw consume {d / c:.2f} (target >= 0.60); "
        f"to raw consume with the sink's fetch size {d / cb:.2f}"
    )
    budget = DEFAULT_BATCH_MAX_WAIT_S * 1000 + 500
    for rate in (5_000, 20_000):
        lat = live(base, rate, args.latency_s)
        print(
            f"  latency at {rate:>6,} ev/s   : kafka->insert p50 {lat['kafka_p50']:.0f} ms p99 "
            f"{lat['kafka_p99']:.0f} ms; event->insert p50 {lat['event_p50']:.0f} ms "
            f"p99 {lat['event_p99']:.0f} ms (target p99 <= {budget:.0f} ms)"
        )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=200_000, help="backlog size (default 200000)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--latency-s", type=float, default=20.0, help="seconds of live traffic per latency rate")
    ap.add_argument(
        "--sustained-events",
        type=int,
        default=1_000_000,
        help="events of the full-speed producer + sink run (default 1000000)",
    )
    ap.add_argument("--sustained-rate", type=float, default=50_000, help="the held rate (events/s, default 50000)")
    ap.add_argument("--sustained-s", type=float, default=20, help="seconds of the held rate (default 20)")
    ap.add_argument("--sustained-only", action="store_true", help="skip the backlog and latency parts")
    ap.add_argument(
        "--group-max-batches",
        type=int,
        default=GROUP_MAX_BATCHES,
        help=f"partitions' batches per insert (default {GROUP_MAX_BATCHES}; 1 = an insert per batch, as before)",
    )
    ap.add_argument(
        "--batch-max-bytes",
        type=int,
        default=DEFAULT_BATCH_MAX_BYTES,
        help=f"the sink's batch_max_bytes (default {DEFAULT_BATCH_MAX_BYTES})",
    )
    ap.add_argument("--large-values", type=int, metavar="N", help="only the large-values part, with N 5 MB values")
    args = ap.parse_args()
    SINK_OPTIONS["group_max_batches"] = args.group_max_batches
    SINK_OPTIONS["batch_max_bytes"] = args.batch_max_bytes
    if args.large_values:
        base, stack = start_stack("bench-consume-")
        try:
            large_values(base, args.large_values, args.batch_max_bytes)
        finally:
            stack.down()
            shutil.rmtree(base.data_dir.parent, ignore_errors=True)
        return 0

    base, stack = start_stack("bench-consume-")
    try:
        if not args.sustained_only:
            backlog_and_latency(base, args)
        broker_pid = stack.status().pid
        full = sustained(base, args.sustained_events, broker_pid)
        ok = full["rows"] == full["distinct"] == full["acked"] == args.sustained_events
        lost = "nothing lost" if ok else "MISMATCH"
        print(
            f"  producer at full speed + sink: {full['rate']:>8,.0f} events/s end to end, first send -> last commit "
            f"({args.sustained_events:,} events; the producer alone {full['producer_rate']:,.0f}/s); rows "
            f"{full['rows']:,}, distinct ids {full['distinct']:,} -> {lost}"
        )
        print(_cpu_line(full, 50_000))
        target = args.sustained_rate
        n = int(target * args.sustained_s)
        held = sustained(base, n, broker_pid, rate=target)
        lost = "nothing lost" if held["rows"] == held["distinct"] == held["acked"] == n else "MISMATCH"
        keeps_up = held["steady"] >= 0.97 * held["producer_rate"] and held["tail_s"] <= DEFAULT_BATCH_MAX_WAIT_S + 2
        print(
            f"  producer at {target:,.0f}/s + sink : the producer sent {held['producer_rate']:,.0f} events/s, the sink "
            f"committed {held['steady']:,.0f} events/s meanwhile (a line fitted over the run after its first 2 s); "
            f"{held['lag_at_end']:,} events "
            f"uncommitted when it ended, committed {held['tail_s']:.1f} s later -> "
            f"{'keeps up' if keeps_up else 'FALLS BEHIND'}; rows {held['rows']:,}, distinct ids "
            f"{held['distinct']:,} -> {lost} (target: 50,000/s sustained)"
        )
        print(_cpu_line(held, target))
    finally:
        stack.down()
        shutil.rmtree(base.data_dir.parent, ignore_errors=True)  # the broker's log and the stores: ~200 MB a run
    return 0


if __name__ == "__main__":
    threading.current_thread().name = "bench"
    sys.exit(main())
