"""Benchmark: generator, serialisation, validation and the producer against raw kafka-python, in one run.

Every figure is a median over ``--repeats`` rounds; the rounds interleave the measurements so that background load
hits them alike. Baselines are measured in the same run: a per-event-dict generator (the case study's shape) for
the vectorised generator, and raw kafka-python sending pre-serialised bytes with the same producer settings for
the Producer. The Producer runs both ways, the bulk path (the default) and send() per message (``bulk=False``),
alternating which goes first, and the process CPU per event of each is reported. Rate control is checked at a few
target rates (achieved rate over a fixed duration).

    .venv/bin/python bench/produce.py                         # starts a throwaway local broker
    .venv/bin/python bench/produce.py --events 200000 --repeats 3 --rates 1000,5000,20000,50000
    .venv/bin/python bench/produce.py --workers 4 --rates ''      # N producer processes vs one, no rate checks
    .venv/bin/python bench/produce.py --generator-only --repeats 5   # generator, serialisation, parse; no broker
    KAFKA_BROKER_URL=host:9092 .venv/bin/python bench/produce.py --broker-from-env
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from kafka import KafkaProducer

from clickstream_lib import events
from clickstream_lib.generator import Generator
from clickstream_lib.producer import PRODUCER_CONFIG, Producer
from clickstream_lib.producer_pool import produce_in_processes
from clickstream_lib.settings import Settings
from clickstream_lib.stack import KafkaStack, free_port
from clickstream_lib.topics import client_config, end_offsets, ensure_topic

CASE_STUDY_RATE = 6_000.0  # events/s the original per-record-sleep producer topped out at
CHUNK = 10_000  # events per generator call in the generator-only measurements
TICK_EVENTS = 100  # events per call in the paced generator measurement (10 ms at 10k events/s)
SWEEP = ((16, 0), (64, 5), (128, 20), (512, 50))  # kafka-python's default first
PRODUCER_BULK = "Producer end to end (acked)"
PRODUCER_SEND = "Producer, send() per message (acked)"


def per_dict_generator(n: int, rng: random.Random) -> list[dict[str, object]]:
    """The baseline shape: one dict at a time, random choices per field (as the case study and most tutorials)."""
    out = []
    types = events.INTERACTION_TYPES
    for _ in range(n):
        itype = rng.choice(types)
        out.append(
            {
                "event_id": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
                "user_id": f"user_{rng.randrange(10_000):04d}",
                "session_id": f"s{rng.getrandbits(64):016x}",
                "item_id": f"item_{rng.randrange(1_000):04d}",
                "interaction_type": itype,
                "timestamp": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
                "page": "/product",
                "referrer": rng.choice(("direct", "search", "social")),
                "device": rng.choice(("mobile", "desktop", "tablet")),
                "country": rng.choice(("US", "DE", "GB")),
                "price": round(rng.uniform(1, 100), 2) if itype == "purchase" else None,
                "currency": "USD" if itype == "purchase" else None,
                "schema_version": 1,
            }
        )
    return out


def timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def raw_kafka(settings: Settings, topic: str, keys: list[bytes], values: list[bytes], **overrides: object) -> float:
    """Raw kafka-python: send pre-serialised bytes with the Producer's settings, flush; returns acked events/s."""
    ensure_topic(settings, topic, settings.kafka_partitions)
    producer = KafkaProducer(**client_config(settings, **{**PRODUCER_CONFIG, **overrides}))
    try:
        t0 = time.perf_counter()
        send = producer.send
        futures = [send(topic, v, key=k) for k, v in zip(keys, values, strict=True)]
        producer.flush(timeout=300)
        elapsed = time.perf_counter() - t0
        acked = sum(1 for f in futures if f.succeeded())
    finally:
        producer.close(timeout=10)
    return acked / elapsed


def generator_round(n: int, r: int, record: Callable[[str, float], None]) -> list[tuple[list[bytes], list[bytes]]]:
    """The measurements that need no broker: generator (with its per-dict baseline), serialisation, validation."""
    rng = random.Random(r)
    record("per-dict generator", n / timed(lambda: per_dict_generator(n, rng)))

    gen = Generator(seed=r)
    gen.batch(1_000)  # warm the buffers
    record("vectorised generator", n / timed(lambda: [gen.batch(CHUNK) for _ in range(n // CHUNK)]))

    # The producer's shape: a 10 ms chunk per call, here 100 events at a simulated 10k events/s.
    gen = Generator(seed=r)
    t0 = int(time.time() * 1000)
    ticks = range(n // TICK_EVENTS)
    record("generator, 10 ms chunks", n / timed(lambda: [gen.batch(TICK_EVENTS, now_ms=t0 + 10 * i) for i in ticks]))

    gen = Generator(seed=r)
    messages: list[tuple[list[bytes], list[bytes]]] = []
    record(
        "generator + serialisation",
        n / timed(lambda: messages.extend(gen.batch(CHUNK).keys_values() for _ in range(n // CHUNK))),
    )
    values = [v for _, vs in messages for v in vs]
    m = min(len(values), 200_000)
    record("validation (events.parse)", m / timed(lambda: [events.parse(v) for v in values[:m]]))
    return messages


def one_round(
    settings: Settings,
    n: int,
    r: int,
    record: Callable[[str, float], None],
    workers: int = 0,
    record_cpu: Callable[[str, float], None] = lambda name, us: None,
) -> None:
    """One measurement of everything, in the order data flows."""
    messages = generator_round(n, r, record)
    keys = [k for ks, _ in messages for k in ks]
    values = [v for _, vs in messages for v in vs]
    tag = uuid.uuid4().hex[:8]
    record("raw kafka-python (pre-serialised)", raw_kafka(settings, f"bench_raw_{tag}", keys, values))

    # The bulk path and send() per message, in alternating order from round to round. CPU = this process's user +
    # system time over the run: generator, sends and kafka-python's sender thread (what a producer process costs).
    for bulk in (True, False) if r % 2 == 0 else (False, True):
        topic = f"bench_producer_{'bulk' if bulk else 'send'}_{tag}"
        with Producer(settings.replace(kafka_topic=topic), rate=None, seed=r, bulk=bulk) as producer:
            assert producer.bulk_send is bulk
            cpu0 = time.process_time()
            stats = producer.run(events=n)
            cpu = time.process_time() - cpu0
        assert stats.acked == n and sum(end_offsets(settings, topic).values()) == n, stats.summary()
        name = PRODUCER_BULK if bulk else PRODUCER_SEND
        record(name, stats.acked / stats.elapsed_s)
        record_cpu(name, cpu / n * 1e6)

    if workers > 1:  # several processes, one shard of the users each (clickstream produce --workers)
        topic = f"bench_workers_{tag}"
        total, _ = produce_in_processes(
            settings.replace(kafka_topic=topic), workers, rate=None, events=n, generator={"seed": r}
        )
        assert total.acked == n and sum(end_offsets(settings, topic).values()) == n, total.summary()
        # As for one Producer: from the first worker's first send to the last worker's last acknowledgement;
        # starting the processes (about a second: imports, a connection each) comes before and is not counted.
        record(f"{workers} Producer processes (acked)", total.acked / total.elapsed_s)


def generator_only(n: int, repeats: int) -> int:
    results: dict[str, list[float]] = {}
    for r in range(repeats):
        print(f"round {r + 1}/{repeats}", file=sys.stderr)
        generator_round(n, r, lambda name, value: results.setdefault(name, []).append(value))
    print(f"\ngenerator benchmark: {n} events x {repeats} rounds (medians)")
    print(f"{'measurement':<38}{'events/s':>14}")
    for name, values in results.items():
        print(f"{name:<38}{statistics.median(values):>14,.0f}")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=200_000, help="events per measurement (default 200000)")
    ap.add_argument("--repeats", type=int, default=3, help="rounds; figures are medians (default 3)")
    ap.add_argument("--rates", default="1000,5000,20000,50000", help="target rates to check, events/s ('' = skip)")
    ap.add_argument("--rate-seconds", type=float, default=4.0, help="duration of each rate check (default 4)")
    ap.add_argument("--partitions", type=int, default=3)
    ap.add_argument("--broker-from-env", action="store_true", help="use KAFKA_BROKER_URL instead of a local broker")
    ap.add_argument("--sweep", action="store_true", help="also sweep kafka-python batch_size/linger_ms (raw sends)")
    ap.add_argument("--workers", type=int, default=2, help="also measure N producer processes (0 = skip; default 2)")
    ap.add_argument("--rate-workers", type=int, default=1, help="producer processes for the rate checks (default 1)")
    ap.add_argument("--generator-only", action="store_true", help="only what needs no broker (generator, parse)")
    args = ap.parse_args(argv)
    n = args.events
    if args.generator_only:
        return generator_only(n, args.repeats)

    stack: KafkaStack | None = None
    tmp = tempfile.TemporaryDirectory(prefix="bench-produce-")
    if args.broker_from_env:
        settings = Settings.from_env(kafka_partitions=args.partitions)
    else:
        port, cport = free_port(), free_port()
        settings = Settings.from_env(
            {},
            kafka_broker_url=f"127.0.0.1:{port}",
            kafka_controller_port=cport,
            data_dir=Path(tmp.name),
            kafka_partitions=args.partitions,
        )
        stack = KafkaStack(settings)
        print(f"starting a local broker at {settings.kafka_broker_url} ...", file=sys.stderr)
        stack.up(timeout_s=180)
    results: dict[str, list[float]] = {}
    cpu_us: dict[str, list[float]] = {}

    def record(name: str, value: float) -> None:
        results.setdefault(name, []).append(value)

    def record_cpu(name: str, us: float) -> None:
        cpu_us.setdefault(name, []).append(us)

    try:
        for r in range(args.repeats):
            print(f"round {r + 1}/{args.repeats}", file=sys.stderr)
            one_round(settings, n, r, record, args.workers, record_cpu)

        sweep: dict[tuple[int, int], list[float]] = {}
        if args.sweep:
            keys, values = Generator(seed=0).batch(n).keys_values()
            for _ in range(args.repeats):
                for batch_kib, linger in SWEEP:
                    topic = f"bench_sweep_{uuid.uuid4().hex[:8]}"
                    rate = raw_kafka(settings, topic, keys, values, batch_size=batch_kib * 1024, linger_ms=linger)
                    sweep.setdefault((batch_kib, linger), []).append(rate)
            del keys, values

        rate_rows: list[tuple[float, float, float]] = []
        for target in [float(x) for x in args.rates.split(",") if x.strip()]:
            topic = f"bench_rate_{int(target)}_{uuid.uuid4().hex[:6]}"
            if args.rate_workers > 1:
                stats, _ = produce_in_processes(
                    settings.replace(kafka_topic=topic),
                    args.rate_workers,
                    rate=target,
                    duration=args.rate_seconds,
                    generator={"seed": 1},
                )
            else:
                with Producer(settings.replace(kafka_topic=topic), rate=target, seed=1) as producer:
                    stats = producer.run(duration=args.rate_seconds)
            rate_rows.append((target, stats.sent / args.rate_seconds, stats.acked / stats.elapsed_s))
    finally:
        if stack is not None:
            stack.down()
        tmp.cleanup()

    med = {k: statistics.median(v) for k, v in results.items()}
    print(f"\nproduce benchmark: {n} events x {args.repeats} rounds (medians), {args.partitions} partitions")
    print(f"{'measurement':<38}{'events/s':>14}   ratio")
    ratios = {
        "vectorised generator": ("per-dict generator", "x per-dict"),
        "generator + serialisation": ("per-dict generator", "x per-dict"),
        PRODUCER_BULK: ("raw kafka-python (pre-serialised)", "of raw"),
        PRODUCER_SEND: ("raw kafka-python (pre-serialised)", "of raw"),
        f"{args.workers} Producer processes (acked)": ("raw kafka-python (pre-serialised)", "of raw"),
    }
    for name, value in med.items():
        ratio = ""
        if name in ratios:
            base, label = ratios[name]
            ratio = f"{value / med[base]:.2f} {label}" if label != "of raw" else f"{value / med[base]:.0%} {label}"
        if name == "validation (events.parse)":
            ratio = f"{1e6 / value:.2f} s per million"
        print(f"{name:<38}{value:>14,.0f}   {ratio}")
    prod = med[PRODUCER_BULK]
    print(f"{'Producer vs case study (~6k/s)':<38}{'':>14}   {prod / CASE_STUDY_RATE:.1f}x")
    bulk_us, send_us = (statistics.median(cpu_us[name]) for name in (PRODUCER_BULK, PRODUCER_SEND))
    print(
        f"\nproducer CPU per event (process: generator + sends + sender thread; medians of {args.repeats}, "
        f"alternating order)\n  bulk path {bulk_us:6.1f} us   send() per message {send_us:6.1f} us   "
        f"-> {bulk_us / send_us:.2f} of send()\n"
        f"  per round: bulk {', '.join(f'{v:.1f}' for v in cpu_us[PRODUCER_BULK])}; "
        f"send() {', '.join(f'{v:.1f}' for v in cpu_us[PRODUCER_SEND])}"
    )
    if args.workers > 1:
        multi = med[f"{args.workers} Producer processes (acked)"]
        print(f"{f'{args.workers} processes vs case study (~6k/s)':<38}{'':>14}   {multi / CASE_STUDY_RATE:.1f}x")
    if sweep:
        print(f"\nkafka-python settings sweep (raw sends, lz4, acks=all){'':>4}events/s")
        for (batch_kib, linger), rates in sweep.items():
            print(f"  batch_size {batch_kib:>4} KiB, linger_ms {linger:>3}{'':>16}{statistics.median(rates):>10,.0f}")
    if rate_rows:
        print(
            f"\nrate control ({args.rate_seconds:.0f} s each, {max(1, args.rate_workers)} process(es)): "
            "sent = handed to kafka-python during the run, "
            f"acked = acknowledged / (run + final flush)\n{'target':>10}{'sent/s':>12}{'error':>9}{'acked/s':>12}"
        )
        for target, sent, acked in rate_rows:
            print(f"{target:>10,.0f}{sent:>12,.0f}{(sent - target) / target:>+9.1%}{acked:>12,.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
