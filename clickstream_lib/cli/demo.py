"""`clickstream demo`."""

from __future__ import annotations

import argparse

from ..settings import Settings
from .alerts import add_alert_args
from .generator_args import refresh_arg
from .output import err, out


class DemoCommand:
    """`clickstream demo`."""

    name = "demo"

    @staticmethod
    def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
        p = sub.add_parser(
            "demo",
            help="the main job: local Kafka + live pipeline + dashboard in your browser",
            description=(
                "Start the local Kafka broker (resolving its jars once), the owner of the embedded store "
                "(`clickstream serve --produce`: the live pipeline generator -> Kafka -> sink -> embedded ClickHouse) "
                "and the dashboard with Voila on 127.0.0.1. Open the printed URL in as many tabs as you like: every "
                "page shows and controls the same pipeline, and `clickstream query`/`report` work meanwhile.\n"
                "Ctrl-C or SIGTERM stops the dashboard, the owner (the sink commits first) and the broker it started."
            ),
            epilog="examples:\n  clickstream demo\n  clickstream demo --port 8870 --rate 1000",
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        p.add_argument("--port", type=int, default=8866, help="port on 127.0.0.1 (default 8866; 0 picks a free one)")
        p.add_argument("--rate", type=float, default=200.0, help="events/s generated (default 200)")
        p.add_argument(
            "--refresh", type=refresh_arg, default=5.0, help="seconds between dashboard refreshes (default 5)"
        )
        p.add_argument("--keep-broker", action="store_true", help="leave the broker running on exit")
        add_alert_args(p)
        p.set_defaults(handler=DemoCommand.run)

    @staticmethod
    def run(args: argparse.Namespace, settings: Settings) -> int:
        from ..notebooks import run_demo

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
