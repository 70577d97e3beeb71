"""`clickstream report`."""

from __future__ import annotations

import argparse

from ..settings import Settings
from .output import out


class ReportCommand:
    """`clickstream report`."""

    name = "report"

    @staticmethod
    def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
        p = sub.add_parser(
            "report",
            help="run the papermill report; write the executed notebook and an HTML export",
            description=(
                "Execute notebooks/report.ipynb with papermill (parameters: start, end, interaction_type, device, "
                "country, referrer, top_n, alert_rules, alert_step) and write <out>/report.ipynb (widget state "
                "stripped) and <out>/report.html (no code).\n"
                "In embedded mode the report's kernel reaches the store through its owner (`clickstream serve`) "
                "when one runs, else opens it itself."
            ),
            epilog=(
                "example:\n  clickstream report --param start=2026-11-01 --param end=2026-12-01 "
                "--param device=mobile --out reports/nov"
            ),
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
        p.set_defaults(handler=ReportCommand.run)

    @staticmethod
    def run(args: argparse.Namespace, settings: Settings) -> int:
        from ..notebooks import parse_param, run_report

        params = dict(parse_param(p) for p in args.param)
        result = run_report(settings, args.out, params, notebook=args.notebook, timeout_s=args.timeout)
        out(f"notebook: {result.notebook}")
        out(f"html: {result.html}")
        return 0
