"""`clickstream produce`."""

from __future__ import annotations

import argparse

from ..settings import Settings
from .generator_args import add_generator_args, make_generator
from .output import err, out


class ProduceCommand:
    """`clickstream produce`."""

    name = "produce"

    @staticmethod
    def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
        p = sub.add_parser(
            "produce",
            help="send synthetic events to Kafka at a controlled rate",
            description=(
                "Generate events and send them to KAFKA_TOPIC (created with KAFKA_PARTITIONS partitions if missing), "
                "keyed by user_id, acks=all, idempotent, lz4. Runs until --events or --duration, or Ctrl-C (which "
                "flushes and prints the summary). The case study's flags work too: a batch of --batch_size events "
                "every --time_interval seconds, at most --data_generation_speed events/s."
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
        add_generator_args(p)
        p.set_defaults(handler=ProduceCommand.run)

    @staticmethod
    def run(args: argparse.Namespace, settings: Settings) -> int:
        import sys

        from ..errors import ConfigError
        from ..generator import CaseStudyGenerator, Generator
        from ..producer import Producer, ProducerStats

        if args.events is not None and args.events < 0:
            raise ConfigError("--events", f"{args.events} must be >= 0")
        if args.duration is not None and args.duration < 0:
            raise ConfigError("--duration", f"{args.duration} must be >= 0")
        if args.workers < 1:
            raise ConfigError("--workers", f"{args.workers} must be at least 1")
        rate, batch_size = _produce_rate(args)
        if args.workers != 1 and args.profile != "default":
            raise ConfigError("--workers", f"the {args.profile} profile produces from one process; drop --workers")
        gen = make_generator(args)
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
        limit = (
            f"{args.events} events" if args.events is not None else f"{args.duration} s" if args.duration else "Ctrl-C"
        )
        procs = f" in {args.workers} processes" if args.workers > 1 else ""
        err(f"producing to {where}{procs} at {f'{rate:.0f} events/s' if rate else 'full speed'} until {limit}")
        if args.workers != 1:
            from ..producer_pool import produce_in_processes

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


def _produce_rate(args: argparse.Namespace) -> tuple[float | None, int | None]:
    """(rate, batch_size) from --rate and the case study's flags; the smallest cap wins."""
    from ..errors import ConfigError

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
