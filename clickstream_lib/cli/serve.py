"""`clickstream serve`."""

from __future__ import annotations

import argparse

from ..settings import Settings
from .alerts import add_alert_args
from .output import err, out


class ServeCommand:
    """`clickstream serve`."""

    name = "serve"

    @staticmethod
    def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
        p = sub.add_parser(
            "serve",
            help="own the embedded store: run the sink and serve every other process of this machine",
            description=(
                "Open the embedded ClickHouse store (chdb, CLICKSTREAM_DATA_DIR) once, run the sink (and with "
                "--produce the generator/producer), and serve the store to every other process of this machine over a "
                "Unix socket in the data directory (Arrow Flight; same user only: a 0700 directory and a token file). "
                "While it runs, `clickstream query`, `clickstream report`, notebooks and every dashboard viewer reach "
                "the store through it, and the dashboard and the workbench show and control its pipeline.\n"
                "Prints `serving: <socket>` once ready; runs until SIGTERM/Ctrl-C (the sink stores and commits first)."
            ),
            epilog=(
                "examples:\n"
                "  clickstream serve\n"
                "  clickstream serve --produce --rate 500\n"
                "  clickstream serve --no-sink"
            ),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        p.add_argument(
            "--produce", action="store_true", help="also run the generator/producer (the demo's live pipeline)"
        )
        p.add_argument("--rate", type=float, default=200.0, help="events/s of the producer (default 200)")
        p.add_argument("--seed", type=int, default=None, help="the generator's seed (default: random)")
        p.add_argument("--no-sink", action="store_true", help="serve queries only; start the sink later from a client")
        add_alert_args(p)
        p.set_defaults(handler=ServeCommand.run)

    @staticmethod
    def run(args: argparse.Namespace, settings: Settings) -> int:
        from ..service import StoreService

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
