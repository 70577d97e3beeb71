"""`clickstream generate`."""

from __future__ import annotations

import argparse

from ..settings import Settings
from .generator_args import add_generator_args, make_generator
from .output import out


class GenerateCommand:
    """`clickstream generate`."""

    name = "generate"

    @staticmethod
    def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
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
        add_generator_args(p)
        p.set_defaults(handler=GenerateCommand.run)

    @staticmethod
    def run(args: argparse.Namespace, settings: Settings) -> int:
        import sys
        import time

        from .. import events as ev
        from ..errors import ConfigError
        from ..generator import CaseStudyGenerator, Generator

        if args.events < 0:
            raise ConfigError("--events", f"{args.events} must be >= 0")
        gen = make_generator(args)
        assert isinstance(gen, (Generator, CaseStudyGenerator))
        start_ms = end_ms = None
        if args.start or args.end:
            if not args.start:
                raise ConfigError("--start", "is required with --end")
            start_ms = ev.parse_timestamp(args.start)
            end_ms = ev.parse_timestamp(args.end) if args.end else int(time.time() * 1000)
            if start_ms is None or end_ms is None or end_ms <= start_ms:
                raise ConfigError(
                    "--start/--end", "need two ISO-8601 times with start < end, e.g. 2026-11-22 2026-11-29"
                )
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
