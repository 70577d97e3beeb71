"""`clickstream dashboard`."""

from __future__ import annotations

import argparse

from ..settings import Settings
from .generator_args import refresh_arg
from .output import err, out


class DashboardCommand:
    """`clickstream dashboard`."""

    name = "dashboard"

    @staticmethod
    def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
        p = sub.add_parser(
            "dashboard",
            help="serve the live dashboard with Voila on 127.0.0.1",
            description=(
                "Serve notebooks/dashboard.ipynb with Voila, bound to 127.0.0.1. Each browser tab gets its own kernel; "
                "closing the tab stops it.\n"
                "Embedded mode (default): with an owner running (`clickstream serve`), every tab is a client of it and "
                "`--live` shows and controls the owner's pipeline; without one, the tab's kernel opens the store "
                "itself (one viewer at a time) and `--live` runs the producer and sink inside it.\n"
                "Server mode (CLICKHOUSE_URL=http://...): many viewers, read-only."
            ),
            epilog=(
                "examples:\n"
                "  clickstream dashboard\n"
                "  clickstream dashboard --port 8870 --refresh 10\n"
                "  clickstream dashboard --live --rate 500"
            ),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        p.add_argument("--port", type=int, default=8866, help="port on 127.0.0.1 (default 8866; 0 picks a free one)")
        p.add_argument("--refresh", type=refresh_arg, default=5.0, help="seconds between refreshes (default 5)")
        p.add_argument("--live", action="store_true", help="show and control the live pipeline (see above)")
        p.add_argument("--rate", type=float, default=200.0, help="events/s of the live producer (default 200)")
        p.add_argument("--notebook", default="dashboard", help="notebook name or .ipynb path (default: dashboard)")
        p.set_defaults(handler=DashboardCommand.run)

    @staticmethod
    def run(args: argparse.Namespace, settings: Settings) -> int:
        from ..notebooks import VoilaServer

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
