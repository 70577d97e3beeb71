"""Subcommands of ``clickstream`` beyond config/stack: generate, produce, consume, query, report, dashboard, demo.

Each block registers itself with :func:`clickstream_lib.cli.register`; handlers only call the library and present
its results (progress bars on a terminal, quiet when piped).
"""

from __future__ import annotations

import argparse

from .cli import err, out, register
from .settings import Settings

# --- generate / produce (events, generator, producer) -----------------------------------------------------------


def _scenario_arg(text: str) -> tuple[str, dict[str, object]]:
    """``NAME`` or ``NAME:key=value,key=value`` -> (name, params); numbers become numbers."""
    name, _, rest = text.partition(":")
    params: dict[str, object] = {}
    for part in filter(None, rest.split(",")):
        key, sep, raw = part.partition("=")
        if not sep or not key:
            raise argparse.ArgumentTypeError(f"{part!r} in {text!r} is not key=value (e.g. flash_sale:share=0.5)")
        value: object = raw
        for cast in (int, float):
            try:
                value = cast(raw)
                break
            except ValueError:
                pass
        params[key.strip()] = value
    return name.strip(), params


def _refresh_arg(text: str) -> float:
    """Seconds between refreshes: a number of at least 0.5 (0 or less would refresh in a busy loop)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not value >= 0.5 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text} is out of range; expected seconds >= 0.5 (e.g. --refresh 5)")
    return value


def _add_generator_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--seed", type=int, default=None, help="the same seed gives the same events (default: random)")
    p.add_argument(
        "--profile",
        choices=("default", "case-study"),
        default="default",
        help="default: sessions walking the view -> click -> add_to_cart -> purchase funnel; case-study: the original "
        "case study's six types (open_app 40%%, login 25%%, view, click, payment_initiated, purchase) with a nested "
        "metadata (experiment_name, experiment_variation, session_id, device_name), users and items uniform",
    )
    p.add_argument(
        "--users",
        type=int,
        default=None,
        help="number of users (default 10000; case-study 9999); live sessions 30 minutes apart need about 540 per "
        "event/s",
    )
    p.add_argument("--items", type=int, default=None, help="catalogue size (default 1000; case-study 50)")
    p.add_argument(
        "--scenario",
        action="append",
        type=_scenario_arg,
        default=[],
        metavar="NAME[:k=v,...]",
        help="switch a scenario on (repeatable): flash_sale, bot_burst, late_events, duplicates, malformed; "
        "e.g. --scenario malformed:share=0.05 --scenario flash_sale:item=item_0007",
    )


def _make_generator(args: argparse.Namespace) -> object:
    from .generator import CaseStudyGenerator, Generator

    if args.profile == "case-study":
        # The case study's own sizes (user_0000..user_9998, item_0000..item_0049) unless given.
        users = args.users if args.users is not None else 9_999
        items = args.items if args.items is not None else 50
        case = CaseStudyGenerator(seed=args.seed, n_users=users, n_items=items)
        for name, params in args.scenario:
            case.set_scenario(name, True, **params)
        return case
    gen = Generator(
        seed=args.seed,
        n_users=args.users if args.users is not None else 10_000,
        n_items=args.items if args.items is not None else 1_000,
    )
    for name, params in args.scenario:
        gen.set_scenario(name, True, **params)
    return gen


def _add_generate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "generate",
        help="write synthetic events to a JSON-lines file (no Kafka)",
        description=(
            "Write the events `clickstream produce` would send, one JSON message per line, without Kafka. Live "
            "mode stamps them now (written at once, so sessions barely start); --start/--end give a backfill with "
            "simulated event times and whole sessions over that range."
        ),
        epilog=(
            "examples:\n  clickstream generate --events 100000 --out events.jsonl --seed 42\n"
            "  clickstream generate --events 1000000 --out week.jsonl --start 2026-11-22 --end 2026-11-29\n"
            "  clickstream generate --events 1000 --out - --scenario malformed:share=0.1 | head"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--events", type=int, required=True, help="number of messages to write")
    p.add_argument("--out", required=True, help="output file (.jsonl), or - for stdout")
    p.add_argument("--start", help="backfill: first event time (ISO-8601, UTC unless it has an offset)")
    p.add_argument("--end", help="backfill: end of the range (exclusive); default now")
    _add_generator_args(p)
    p.set_defaults(handler=_cmd_generate)


def _cmd_generate(args: argparse.Namespace, settings: Settings) -> int:
    import sys
    import time

    from . import events as ev
    from .errors import ConfigError
    from .generator import CaseStudyGenerator, Generator

    if args.events < 0:
        raise ConfigError("--events", f"{args.events} must be >= 0")
    gen = _make_generator(args)
    assert isinstance(gen, (Generator, CaseStudyGenerator))
    start_ms = end_ms = None
    if args.start or args.end:
        if not args.start:
            raise ConfigError("--start", "is required with --end")
        start_ms = ev.parse_timestamp(args.start)
        end_ms = ev.parse_timestamp(args.end) if args.end else int(time.time() * 1000)
        if start_ms is None or end_ms is None or end_ms <= start_ms:
            raise ConfigError("--start/--end", "need two ISO-8601 times with start < end, e.g. 2026-11-22 2026-11-29")
    chunk = 100_000
    written = done = 0
    stream = sys.stdout.buffer if args.out == "-" else open(args.out, "wb")  # noqa: SIM115 (closed below)
    try:
        if start_ms is not None and end_ms is not None:
            written = gen.backfill(start_ms, end_ms, args.events).write_jsonl(stream)
            done = args.events
        while done < args.events:
            k = min(chunk, args.events - done)
            written += gen.batch(k).write_jsonl(stream)
            done += k
    finally:
        if stream is not sys.stdout.buffer:
            stream.close()
        else:
            stream.flush()
    if args.out != "-":
        out(f"wrote {done} messages ({written} bytes) to {args.out}")
    return 0


def _add_produce(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "produce",
        help="send synthetic events to Kafka at a controlled rate",
        description=(
            "Generate events and send them to KAFKA_TOPIC (created with KAFKA_PARTITIONS partitions if missing), "
            "keyed by user_id, acks=all, idempotent, lz4. Runs until --events or --duration, or Ctrl-C (which "
            "flushes and prints the summary). The case study's flags work as they did: a batch of --batch_size "
            "events every --time_interval seconds, at most --data_generation_speed events/s."
        ),
        epilog=(
            "examples:\n  clickstream produce --rate 5000 --duration 60\n"
            "  clickstream produce --events 1000000 --rate 0 --seed 7\n"
            "  clickstream produce --batch_size 1000 --time_interval 1 --data_generation_speed 10000\n"
            "  clickstream produce --duration 30 --scenario bot_burst --scenario late_events:share=0.1\n"
            "  clickstream produce --events 2000000 --rate 0 --workers 4 --seed 7   # one process per core\n"
            "exit codes: 0 all acknowledged, 1 some messages failed or Kafka unreachable, 130 interrupted"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--rate", type=float, default=None, help="events/s (default 10000; 0 = as fast as possible)")
    limit = p.add_mutually_exclusive_group()
    limit.add_argument("--events", type=int, default=None, help="stop after this many messages")
    limit.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    p.add_argument("--batch_size", "--batch-size", type=int, default=None, help="events per batch (case study)")
    p.add_argument(
        "--time_interval", "--time-interval", type=float, default=None, help="seconds between batches (case study)"
    )
    p.add_argument(
        "--data_generation_speed",
        "--data-generation-speed",
        type=float,
        default=None,
        help="events/s cap (case study)",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=1,
        help="producer processes, one shard of the users each; the rate and --events are split (default 1)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar even on a terminal")
    _add_generator_args(p)
    p.set_defaults(handler=_cmd_produce)


def _produce_rate(args: argparse.Namespace) -> tuple[float | None, int | None]:
    """(rate, batch_size) from --rate and the case study's flags; the smallest cap wins."""
    from .errors import ConfigError

    if args.batch_size is not None and args.batch_size < 1:
        raise ConfigError("--batch_size", f"{args.batch_size} must be at least 1")
    for flag, value in (
        ("--time_interval", args.time_interval),
        ("--data_generation_speed", args.data_generation_speed),
    ):
        if value is not None and value <= 0:
            raise ConfigError(flag, f"{value} must be > 0")
    if args.rate is not None and args.rate < 0:
        raise ConfigError("--rate", f"{args.rate} must be >= 0 (0 = as fast as possible)")
    caps: list[float] = []
    if args.rate:
        caps.append(args.rate)
    if args.time_interval is not None:
        caps.append((args.batch_size or 1000) / args.time_interval)
    if args.data_generation_speed is not None:
        caps.append(args.data_generation_speed)
    if caps:
        return min(caps), args.batch_size
    if args.rate == 0:
        return None, args.batch_size
    return 10_000.0, args.batch_size


def _cmd_produce(args: argparse.Namespace, settings: Settings) -> int:
    import sys

    from .errors import ConfigError
    from .generator import CaseStudyGenerator, Generator
    from .producer import Producer, ProducerStats

    if args.events is not None and args.events < 0:
        raise ConfigError("--events", f"{args.events} must be >= 0")
    if args.duration is not None and args.duration < 0:
        raise ConfigError("--duration", f"{args.duration} must be >= 0")
    if args.workers < 1:
        raise ConfigError("--workers", f"{args.workers} must be at least 1")
    rate, batch_size = _produce_rate(args)
    if args.workers != 1 and args.profile != "default":
        raise ConfigError("--workers", f"the {args.profile} profile produces from one process; drop --workers")
    gen = _make_generator(args)
    assert isinstance(gen, (Generator, CaseStudyGenerator))
    bar = None
    if not args.no_progress and sys.stderr.isatty():
        from tqdm import tqdm

        bar = tqdm(total=args.events, unit="ev", unit_scale=True, dynamic_ncols=True, file=sys.stderr)
    shown = 0

    def progress(stats: ProducerStats) -> None:
        nonlocal shown
        if bar is None:
            return
        bar.update(stats.sent - shown)
        shown = stats.sent
        bar.set_postfix(acked=stats.acked, failed=stats.failed, rate=f"{stats.rate_now:.0f}/s", refresh=False)

    where = f"{settings.kafka_broker_url}/{settings.kafka_topic}"
    limit = f"{args.events} events" if args.events is not None else f"{args.duration} s" if args.duration else "Ctrl-C"
    procs = f" in {args.workers} processes" if args.workers > 1 else ""
    err(f"producing to {where}{procs} at {f'{rate:.0f} events/s' if rate else 'full speed'} until {limit}")
    if args.workers != 1:
        from .producer_pool import produce_in_processes

        stats, interrupted = produce_in_processes(
            settings,
            args.workers,
            rate=rate,
            events=args.events,
            duration=args.duration,
            generator={
                "seed": args.seed,
                "n_users": args.users if args.users is not None else 10_000,
                "n_items": args.items if args.items is not None else 1_000,
            },
            scenarios=args.scenario,
            batch_size=batch_size,
            progress=progress,
        )
        if bar is not None:
            bar.close()
        out(stats.summary() + (" (interrupted)" if interrupted else ""))
        return 130 if interrupted else 1 if stats.failed or stats.in_flight else 0
    producer = Producer(settings, rate=rate, generator=gen, batch_size=batch_size)
    try:
        stats = producer.run(events=args.events, duration=args.duration, progress=progress)
    except KeyboardInterrupt:
        stats = producer.stats()  # run() flushed before letting the interrupt through
        if bar is not None:
            bar.close()
        out(stats.summary() + " (interrupted)")
        producer.close()
        return 130
    if bar is not None:
        bar.close()
    producer.close()
    out(stats.summary())
    return 1 if stats.failed or stats.in_flight else 0


register(_add_generate)
register(_add_produce)

# --- consume (the sink) -----------------------------------------------------------------------------------------


def _add_consume(sub: argparse._SubParsersAction) -> None:
    from .consumer import DEFAULT_BATCH_MAX_BYTES, DEFAULT_BATCH_MAX_ROWS, DEFAULT_BATCH_MAX_WAIT_S

    p = sub.add_parser(
        "consume",
        help="sink the events topic into ClickHouse (no loss, no duplicates, dead letters)",
        description=(
            "Join the consumer group and insert the topic's events into ClickHouse, effectively once: batches are "
            "offset ranges stored with a deduplication token and committed only after ClickHouse acknowledged them. "
            "Invalid messages go to the dead-letter topic and the dead_letters table.\n"
            "Runs until SIGTERM/Ctrl-C (finishes the batch, commits, exits 0), --until-idle or --max-events.\n"
            "Several `clickstream consume` processes in one group split the partitions; with the embedded store "
            "(chdb) only one process may open a data directory, so run several consumers against a ClickHouse server.\n"
            "A partition the group has no committed offset for (a new --group, or offsets expired after a week idle) "
            "starts after the highest offset already stored from it, so the retained log is not stored twice; "
            "--from-beginning replays it instead. Another group's batches have their own deduplication tokens: "
            "`--group replay --from-beginning` into the same database stores a second copy (use it with a fresh "
            "CLICKHOUSE_DATABASE to rebuild one)."
        ),
        epilog=(
            "examples:\n  clickstream consume --until-idle 5\n  clickstream consume --group replay --max-events 10000\n"
            "  CLICKHOUSE_DATABASE=rebuilt clickstream consume --group rebuild --from-beginning --until-idle 5\n"
            "  clickstream consume --stats"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--group", help="consumer group id (default: KAFKA_GROUP_ID)")
    p.add_argument(
        "--from-beginning",
        action="store_true",
        help="partitions without a committed offset for the group start at the log start (a replay), not after "
        "what the database already holds",
    )
    p.add_argument("--until-idle", type=float, metavar="SECONDS", help="exit once no message arrived for SECONDS")
    p.add_argument("--max-events", type=int, metavar="N", help="exit after N messages are stored and committed")
    p.add_argument("--stats", action="store_true", help="live figures every 2 s on stderr, a JSON summary at exit")
    p.add_argument(
        "--batch-max-rows",
        type=int,
        default=DEFAULT_BATCH_MAX_ROWS,
        metavar="N",
        help=f"rows per partition batch (default {DEFAULT_BATCH_MAX_ROWS})",
    )
    p.add_argument(
        "--batch-max-bytes",
        type=_byte_size,
        default=DEFAULT_BATCH_MAX_BYTES,
        metavar="SIZE",
        help=(
            "bytes of messages a partition batch, and one insert, may hold: bounds memory with large messages "
            f"(bytes, or with KiB/MiB/GiB; default {DEFAULT_BATCH_MAX_BYTES // (1024 * 1024)}MiB)"
        ),
    )
    p.add_argument(
        "--batch-max-wait",
        type=float,
        default=DEFAULT_BATCH_MAX_WAIT_S,
        metavar="SECONDS",
        help=f"longest wait before a batch is inserted (default {DEFAULT_BATCH_MAX_WAIT_S})",
    )
    p.add_argument("--instance-id", help="static group membership id: a restart takes its partitions back at once")
    p.add_argument(
        "--session-timeout",
        type=float,
        metavar="SECONDS",
        help="how long the group waits for a silent member (a stopped or cut-off process) before its partitions go "
        "to others; the broker accepts 6..1800 by default (default 45)",
    )
    p.set_defaults(handler=_cmd_consume)


_BYTE_UNITS = {"": 1, "B": 1, "KIB": 1024, "MIB": 1024**2, "GIB": 1024**3}


def _byte_size(text: str) -> int:
    """``65536``, ``512KiB``, ``64MiB``, ``1GiB`` -> bytes (argparse type)."""
    digits = text.strip().rstrip("BbIiKkMmGg")
    unit = text.strip()[len(digits) :].upper()
    if not digits.isdigit() or unit not in _BYTE_UNITS:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size: use bytes or a number with KiB, MiB or GiB")
    return int(digits) * _BYTE_UNITS[unit]


def _format_sink_stats(st: object) -> str:
    from .consumer import SinkStats

    assert isinstance(st, SinkStats)

    def ms(v: float | None) -> str:
        return "-" if v is None else f"{v:.0f}"

    reasons = ",".join(f"{k}={v}" for k, v in sorted(st.dead_letters_by_reason.items())) or "-"
    return (
        f"rows={st.rows_inserted} rows/s={st.rows_per_s:.0f} dead={st.dead_letters} ({reasons}) "
        + (f"dead-unpublished={st.dead_letters_unpublished} " if st.dead_letters_unpublished else "")
        + f"lag={st.total_lag} partitions={list(st.assigned_partitions)} "
        f"latency event p50/p99={ms(st.latency_event_p50_ms)}/{ms(st.latency_event_p99_ms)} ms "
        f"kafka p50/p99={ms(st.latency_kafka_p50_ms)}/{ms(st.latency_kafka_p99_ms)} ms"
        + (f" error={st.last_error}" if st.last_error else "")
    )


def _cmd_consume(args: argparse.Namespace, settings: Settings) -> int:
    import json
    import signal
    import threading

    from .consumer import Sink
    from .errors import ConfigError

    if args.group is not None:
        settings = settings.replace(kafka_group_id=args.group)
        if not args.group.strip():
            raise ConfigError("--group", "must not be empty")
    if args.max_events is not None and args.max_events < 1:
        raise ConfigError("--max-events", f"{args.max_events} must be at least 1")
    if args.until_idle is not None and args.until_idle <= 0:
        raise ConfigError("--until-idle", f"{args.until_idle} must be more than 0 seconds")
    if args.batch_max_rows < 1 or args.batch_max_wait <= 0 or args.batch_max_bytes < 1:
        raise ConfigError("--batch-max-rows/--batch-max-bytes/--batch-max-wait", "must be positive")
    consumer_config: dict[str, int] = {}
    if args.session_timeout is not None:
        if not 1 <= args.session_timeout <= 3600:
            raise ConfigError("--session-timeout", f"{args.session_timeout} is out of range; expected 1..3600 seconds")
        session_ms = int(args.session_timeout * 1000)
        # Heartbeats at a third of the session (kafka-python's 3 s default is too slow for a session under 9 s).
        consumer_config = {"session_timeout_ms": session_ms, "heartbeat_interval_ms": min(3000, session_ms // 3)}
    from .store import StoreLocked, find_owner

    owner = find_owner(settings)
    if owner is not None:
        raise StoreLocked(
            f"the embedded store {settings.store_url.path} is owned by `clickstream serve` (pid {owner.pid}), which "
            "runs the sink itself: stop it to run `clickstream consume`, or use another CLICKSTREAM_DATA_DIR"
        )
    sink = Sink(
        settings,
        batch_max_rows=args.batch_max_rows,
        batch_max_bytes=args.batch_max_bytes,
        batch_max_wait_s=args.batch_max_wait,
        instance_id=args.instance_id,
        from_beginning=args.from_beginning,
        consumer_config=consumer_config,
    )
    interrupted = {"n": 0}

    def on_signal(signum: int, _frame: object) -> None:
        # First signal: finish the batch, commit, exit 0. A second Ctrl-C aborts (nothing is lost: uncommitted
        # batches are rebuilt by the next run).
        interrupted["n"] += 1
        if interrupted["n"] > 1 and signum == signal.SIGINT:
            raise KeyboardInterrupt
        err("clickstream: stopping — finishing the current batch and committing")
        sink.request_stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    done = threading.Event()
    if args.stats:

        def report() -> None:
            while not done.wait(2.0):
                if sink.running:
                    err(_format_sink_stats(sink.stats()))

        threading.Thread(target=report, name="consume-stats", daemon=True).start()
    try:
        final = sink.run(until_idle=args.until_idle, max_events=args.max_events)
    finally:
        done.set()
    if args.stats:
        out(json.dumps(final.as_dict()))
    else:
        unpublished = (
            f" ({final.dead_letters_unpublished} not accepted by the dead-letter topic, see the log)"
            if final.dead_letters_unpublished
            else ""
        )
        out(
            f"consumed: {final.rows_inserted} rows, {final.dead_letters} dead letters{unpublished}, "
            f"{final.batches} batches"
        )
    return 0


register(_add_consume)

# --- serve (the owner of an embedded store) ----------------------------------------------------------------------


def _add_serve(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve",
        help="own the embedded store: run the sink and serve every other process of this machine",
        description=(
            "Open the embedded ClickHouse store (chdb, CLICKSTREAM_DATA_DIR) once, run the sink (and with --produce "
            "the generator/producer), and serve the store to every other process of this machine over a Unix socket "
            "in the data directory (Arrow Flight; same user only: a 0700 directory and a token file). While it runs, "
            "`clickstream query`, `clickstream report`, notebooks and every dashboard viewer reach the store through "
            "it, and the dashboard and the workbench show and control its pipeline.\n"
            "Prints `serving: <socket>` once ready; runs until SIGTERM/Ctrl-C (the sink stores and commits first)."
        ),
        epilog=(
            "examples:\n  clickstream serve\n  clickstream serve --produce --rate 500\n  clickstream serve --no-sink"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--produce", action="store_true", help="also run the generator/producer (the demo's live pipeline)")
    p.add_argument("--rate", type=float, default=200.0, help="events/s of the producer (default 200)")
    p.add_argument("--seed", type=int, default=None, help="the generator's seed (default: random)")
    p.add_argument("--no-sink", action="store_true", help="serve queries only; start the sink later from a client")
    _alert_args(p)
    p.set_defaults(handler=_cmd_serve)


def _alert_args(p: argparse.ArgumentParser) -> None:
    from .cli_alerts import _duration_arg

    p.add_argument(
        "--rules",
        default=None,
        help="alert rules (docs/alerts.md) the owner evaluates on a schedule (default: CLICKSTREAM_ALERT_RULES)",
    )
    p.add_argument(
        "--alert-interval", type=_duration_arg, default=None, help="seconds between alert evaluations (default 1m)"
    )


def _cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    from .service import StoreService

    service = StoreService(
        settings,
        sink=not args.no_sink,
        produce=args.produce,
        rate=args.rate,
        seed=args.seed,
        alert_rules=args.rules,
        alert_interval_s=args.alert_interval.total_seconds() if args.alert_interval else 60.0,
    )
    owner = service.start()
    try:
        out(f"serving: {owner.socket}")
        err(f"owner of {settings.store_url.path} (pid {owner.pid}) — Ctrl-C or SIGTERM stops it")
        service.wait()
    except KeyboardInterrupt:
        err("clickstream: stopping — the sink stores and commits what it has")
    finally:
        service.stop()
    return 0


register(_add_serve)

# --- query (named analytics queries, read-only SQL) --------------------------------------------------------------


def _add_query(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "query",
        help="run a named analytics query or read-only SQL against the store",
        description=(
            "Run a named query (see --list) with its window, filters and options as --param NAME=VALUE, or run "
            "one read-only statement with --sql (SELECT, SHOW, DESCRIBE, EXISTS; anything else exits 2). "
            "Filters: interaction_type, device, country, referrer, item_id; "
            "repeat a filter to match several values. Times are ISO-8601, UTC unless they carry an offset.\n"
            "In embedded mode a running owner (`clickstream serve`, `clickstream demo`) answers; without one this "
            "process opens the store itself."
        ),
        epilog=(
            "examples:\n  clickstream query --list\n  clickstream query kpis\n"
            "  clickstream query top_items --param limit=5 --param device=mobile --param start=2026-11-29T00:00Z\n"
            "  clickstream query funnel --param window_s=900 --format json\n"
            '  clickstream query --sql "SELECT count() FROM clickstream.events" --format csv\n'
            "  clickstream query --ddl cluster --cluster prod"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("name", nargs="?", help="the query name (see --list)")
    p.add_argument(
        "--param",
        "-p",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="start, end, a filter or a query option (repeatable)",
    )
    p.add_argument(
        "--source",
        choices=["auto", "raw", "rollup", "approx"],
        default="auto",
        help="read rollups where they answer (auto, default), always raw events, insist on rollups, or estimate "
        "distinct counts from the rollups' HLL states (approx; the output's `estimated` column says which rows are)",
    )
    p.add_argument("--sql", help="run this SQL read-only instead of a named query")
    p.add_argument("--format", "-f", choices=["table", "csv", "json"], default="table", help="output format")
    p.add_argument("--list", action="store_true", help="list the named queries and their options")
    p.add_argument("--ddl", choices=["local", "cluster"], help="print the schema DDL (no store is opened)")
    p.add_argument("--cluster", default="clickstream", help="cluster name for --ddl cluster")
    p.set_defaults(handler=_cmd_query)


def _cmd_query(args: argparse.Namespace, settings: Settings) -> int:
    from . import queries, schema
    from .errors import QueryError
    from .store import connect

    if args.list:
        for nq in queries.QUERIES.values():
            out(nq.describe())
        return 0
    if args.ddl:
        stmts = (
            schema.cluster_ddl(settings.database, args.cluster)
            if args.ddl == "cluster"
            else schema.local_ddl(settings.database)
        )
        for stmt in stmts:
            out(stmt + ";\n")
        return 0
    if bool(args.sql) == bool(args.name):
        raise QueryError("query", "give a query NAME or --sql (not both); see `clickstream query --list`")
    params: dict[str, object] = {}
    for item in args.param:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise QueryError("--param", f"{item!r} is not NAME=VALUE")
        key = key.strip()
        prev = params.get(key)
        params[key] = value if prev is None else [*(prev if isinstance(prev, list) else [prev]), value]
    store = connect(settings)
    try:
        if args.sql:
            if params:
                raise QueryError("--param", "does not apply to --sql")
            df = queries.read_only(store, args.sql)
        else:
            if args.name not in queries.QUERIES:
                queries.run(store, args.name)  # raises the QueryError listing the known names
            df = queries.run(store, args.name, source=args.source, **params)
    finally:
        store.close()
    estimated = bool(df.attrs.get("estimated"))
    if not args.sql:
        # Every named query's rows say whether their figures are estimates, and the relative error bound if so.
        bound = float(df.attrs.get("error_bound") or 0.0)
        df = df.assign(estimated=estimated, error_bound=bound)
    if args.format == "csv":
        out(df.to_csv(index=False).rstrip("\n"))
    elif args.format == "json":
        out(json_records(df))
    else:
        out(df.to_string(index=False) if len(df) else f"(no rows; columns: {', '.join(map(str, df.columns))})")
        if estimated:
            out(f"≈ distinct counts are estimates (error bound ±{100 * float(df.attrs.get('error_bound') or 0):.1f}%)")
    return 0


def _json_value(value: object) -> object:
    """A value orjson cannot write as it is: UUID as text, Decimal as an exact number, times in ISO-8601 (UTC)."""
    import datetime
    import decimal
    import uuid

    import pandas as pd

    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, decimal.Decimal):
        as_float = float(value)
        return as_float if decimal.Decimal(repr(as_float)) == value else str(value)  # text when a float would round
    if isinstance(value, pd.Timestamp | datetime.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=datetime.UTC)
        return value.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    if hasattr(value, "tolist"):  # numpy arrays and scalars
        return value.tolist()
    raise TypeError(f"cannot write {type(value).__name__} as JSON")


def json_records(df: object) -> str:
    """A DataFrame as a JSON array of row objects, for every column type ClickHouse returns (UUID, Decimal,
    DateTime64, Map, arrays, tuples); missing values are null."""
    import orjson
    import pandas as pd

    assert isinstance(df, pd.DataFrame)
    frame = df.astype(object).where(df.notna(), None)
    rows = frame.to_dict(orient="records")
    return orjson.dumps(rows, default=_json_value, option=orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS).decode()


register(_add_query)


# --- report / dashboard / demo (notebooks) ----------------------------------------------------------------------


def _add_report(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "report",
        help="run the papermill report; write the executed notebook and an HTML export",
        description=(
            "Execute notebooks/report.ipynb with papermill (parameters: start, end, interaction_type, device, country, "
            "referrer, top_n, alert_rules, alert_step) and write <out>/report.ipynb (widget state stripped) and "
            "<out>/report.html (no code).\n"
            "In embedded mode the report's kernel reaches the store through its owner (`clickstream serve`) when one "
            "runs, else opens it itself."
        ),
        epilog="example:\n  clickstream report --param start=2026-11-01 --param end=2026-12-01 --param device=mobile "
        "--out reports/nov",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--param",
        "-p",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a report parameter (repeatable); values are typed like papermill's -p",
    )
    p.add_argument("--out", default="reports", help="output directory (default: reports)")
    p.add_argument("--notebook", default="report", help="notebook name or .ipynb path (default: report)")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds allowed per cell (default 600)")
    p.set_defaults(handler=_cmd_report)


def _cmd_report(args: argparse.Namespace, settings: Settings) -> int:
    from .notebooks import parse_param, run_report

    params = dict(parse_param(p) for p in args.param)
    result = run_report(settings, args.out, params, notebook=args.notebook, timeout_s=args.timeout)
    out(f"notebook: {result.notebook}")
    out(f"html: {result.html}")
    return 0


def _add_dashboard(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "dashboard",
        help="serve the live dashboard with Voila on 127.0.0.1",
        description=(
            "Serve notebooks/dashboard.ipynb with Voila, bound to 127.0.0.1. Each browser tab gets its own kernel; "
            "closing the tab stops it.\nEmbedded mode (default): with an owner running (`clickstream serve`), every "
            "tab is a client of it and `--live` shows and controls the owner's pipeline; without one, the tab's "
            "kernel opens the store itself (one viewer at a time) and `--live` runs the producer and sink inside it. "
            "Server mode (CLICKHOUSE_URL=http://...): many viewers, read-only."
        ),
        epilog="examples:\n  clickstream dashboard\n  clickstream dashboard --port 8870 --refresh 10\n"
        "  clickstream dashboard --live --rate 500",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--port", type=int, default=8866, help="port on 127.0.0.1 (default 8866; 0 picks a free one)")
    p.add_argument("--refresh", type=_refresh_arg, default=5.0, help="seconds between refreshes (default 5)")
    p.add_argument("--live", action="store_true", help="run producer + sink in the dashboard's kernel")
    p.add_argument("--rate", type=float, default=200.0, help="events/s of the live producer (default 200)")
    p.add_argument("--notebook", default="dashboard", help="notebook name or .ipynb path (default: dashboard)")
    p.set_defaults(handler=_cmd_dashboard)


def _cmd_dashboard(args: argparse.Namespace, settings: Settings) -> int:
    from .notebooks import VoilaServer

    params: dict[str, object] = {"refresh_s": args.refresh}
    if args.notebook == "dashboard":
        params.update(live_pipeline=bool(args.live), rate=args.rate)
    server = VoilaServer(settings, args.notebook, port=args.port, params=params)
    try:
        url = server.start()
        out(f"dashboard: {url}")
        err(f"voila log: {server.log_file} — Ctrl-C stops it")
        return server.wait()
    finally:
        server.stop()


def _add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="the main job: local Kafka + live pipeline + dashboard in your browser",
        description=(
            "Start the local Kafka broker (resolving its jars once), the owner of the embedded store (`clickstream "
            "serve --produce`: the live pipeline generator -> Kafka -> sink -> embedded ClickHouse), and the dashboard "
            "with Voila on 127.0.0.1. Open the printed URL in as many tabs as you like: every page shows and controls "
            "the same pipeline, and `clickstream query`/`report` work meanwhile. Ctrl-C or SIGTERM stops the "
            "dashboard, the owner (the sink commits first) and the broker it started."
        ),
        epilog="examples:\n  clickstream demo\n  clickstream demo --port 8870 --rate 1000",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--port", type=int, default=8866, help="port on 127.0.0.1 (default 8866; 0 picks a free one)")
    p.add_argument("--rate", type=float, default=200.0, help="events/s generated (default 200)")
    p.add_argument("--refresh", type=_refresh_arg, default=5.0, help="seconds between dashboard refreshes (default 5)")
    p.add_argument("--keep-broker", action="store_true", help="leave the broker running on exit")
    _alert_args(p)
    p.set_defaults(handler=_cmd_demo)


def _cmd_demo(args: argparse.Namespace, settings: Settings) -> int:
    from .notebooks import run_demo

    err("starting the local Kafka broker (the first run resolves its jars from Maven Central) ...")

    def ready(url: str) -> None:
        out(f"dashboard: {url}")
        err("open it in a browser; Ctrl-C stops the dashboard, the store's owner with its pipeline, and the broker")

    run_demo(
        settings,
        port=args.port,
        rate=args.rate,
        refresh_s=args.refresh,
        on_ready=ready,
        stop_broker=not args.keep_broker,
        alert_rules=args.rules,
        alert_interval_s=args.alert_interval.total_seconds() if args.alert_interval else None,
    )
    return 0


register(_add_report)
register(_add_dashboard)
register(_add_demo)

from . import cli_alerts  # noqa: E402, F401  (registers `clickstream alerts`)
