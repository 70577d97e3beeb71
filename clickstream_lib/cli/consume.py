"""`clickstream consume`."""

from __future__ import annotations

import argparse

from ..settings import Settings
from .output import err, out


class ConsumeCommand:
    """`clickstream consume`."""

    name = "consume"

    @staticmethod
    def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
        from ..sink import DEFAULT_BATCH_MAX_BYTES, DEFAULT_BATCH_MAX_ROWS, DEFAULT_BATCH_MAX_WAIT_S

        p = sub.add_parser(
            "consume",
            help="sink the events topic into ClickHouse (no loss, no duplicates, dead letters)",
            description=(
                "Join the consumer group and insert the topic's events into ClickHouse, effectively once: batches are "
                "offset ranges stored with a deduplication token and committed only after ClickHouse acknowledged "
                "them. Invalid messages go to the dead-letter topic and the dead_letters table.\n"
                "Runs until SIGTERM/Ctrl-C (finishes the batch, commits, exits 0), --until-idle or --max-events.\n"
                "A broker that does not answer at start is waited for (a warning names it, retries back off up to "
                "15 s; --broker-wait bounds the wait); a wrong KAFKA_BROKER_URL or security setting fails at once.\n"
                "Several `clickstream consume` processes in one group split the partitions. The embedded store (chdb) "
                "lets only one process open a data directory, so run several consumers against a ClickHouse server.\n"
                "A partition the group has no committed offset for (a new --group, or offsets expired after a week "
                "idle) starts after the highest offset already stored from it, so the retained log is not stored "
                "twice; --from-beginning replays it instead. Another group's batches have their own deduplication "
                "tokens: `--group replay --from-beginning` into the same database stores a second copy (use it with a "
                "fresh CLICKHOUSE_DATABASE to rebuild one)."
            ),
            epilog=(
                "examples:\n"
                "  clickstream consume --until-idle 5\n"
                "  clickstream consume --group replay --max-events 10000\n"
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
        p.add_argument(
            "--broker-wait",
            type=float,
            metavar="SECONDS",
            help="give up (exit 1) if no broker answered within SECONDS of the start (default: wait until one does)",
        )
        p.add_argument("--instance-id", help="static group membership id: a restart takes its partitions back at once")
        p.add_argument(
            "--session-timeout",
            type=float,
            metavar="SECONDS",
            help="how long the group waits for a silent member (a stopped or cut-off process) before its partitions "
            "go to others; the broker accepts 6..1800 by default (default 45)",
        )
        p.set_defaults(handler=ConsumeCommand.run)

    @staticmethod
    def run(args: argparse.Namespace, settings: Settings) -> int:
        import json
        import signal
        import threading

        from ..errors import ConfigError
        from ..sink import Sink

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
        if args.broker_wait is not None and args.broker_wait < 0:
            raise ConfigError("--broker-wait", f"{args.broker_wait} must be 0 or more seconds")
        consumer_config: dict[str, int] = {}
        if args.session_timeout is not None:
            if not 1 <= args.session_timeout <= 3600:
                raise ConfigError(
                    "--session-timeout", f"{args.session_timeout} is out of range; expected 1..3600 seconds"
                )
            session_ms = int(args.session_timeout * 1000)
            # Heartbeats at a third of the session (kafka-python's 3 s default is too slow for a session under 9 s).
            consumer_config = {"session_timeout_ms": session_ms, "heartbeat_interval_ms": min(3000, session_ms // 3)}
        from ..errors import StoreLocked
        from ..store import find_owner

        owner = find_owner(settings)
        if owner is not None:
            raise StoreLocked(
                f"the embedded store {settings.store_url.path} is owned by `clickstream serve` (pid {owner.pid}), "
                "which runs the sink itself: stop it to run `clickstream consume`, or use another CLICKSTREAM_DATA_DIR"
            )
        sink = Sink(
            settings,
            batch_max_rows=args.batch_max_rows,
            batch_max_bytes=args.batch_max_bytes,
            batch_max_wait_s=args.batch_max_wait,
            instance_id=args.instance_id,
            from_beginning=args.from_beginning,
            consumer_config=consumer_config,
            broker_wait_s=args.broker_wait,
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
                        err(format_sink_stats(sink.stats()))

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


_BYTE_UNITS = {"": 1, "B": 1, "KIB": 1024, "MIB": 1024**2, "GIB": 1024**3}


def _byte_size(text: str) -> int:
    """``65536``, ``512KiB``, ``64MiB``, ``1GiB`` -> bytes (argparse type)."""
    digits = text.strip().rstrip("BbIiKkMmGg")
    unit = text.strip()[len(digits) :].upper()
    if not digits.isdigit() or unit not in _BYTE_UNITS:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size: use bytes or a number with KiB, MiB or GiB")
    return int(digits) * _BYTE_UNITS[unit]


def format_sink_stats(st: object) -> str:
    from ..sink import SinkStats

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
