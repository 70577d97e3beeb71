"""The ``clickstream`` command.

Exit codes: 0 success; 1 a runtime failure (service unreachable, store error); 2 a configuration or usage error
(one line naming the variable or option); 130 interrupted.

Each subcommand is a class in a module of its own (``clickstream_lib/cli/<name>.py``) whose ``add_parser`` declares
its arguments and names the handler that runs it; handlers only call into the library and present its results.
:data:`COMMANDS` collects them, in the order ``clickstream --help`` lists them. Imports go one way: this module
imports the commands, the commands import :mod:`.output` and the library.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version

from ..errors import ClickstreamError, ConfigError, QueryError
from ..settings import Settings
from .alerts import AlertsCommand
from .config import ConfigCommand
from .consume import ConsumeCommand
from .dashboard import DashboardCommand
from .demo import DemoCommand
from .generate import GenerateCommand
from .output import Command, Handler, err, out
from .produce import ProduceCommand
from .query import QueryCommand
from .report import ReportCommand
from .serve import ServeCommand
from .stack import StackCommand
from .store import StoreCommand

logger = logging.getLogger("clickstream_lib.cli")

__all__ = ["COMMANDS", "build_parser", "err", "main", "out"]


def _version() -> str:
    try:
        return version("clickstream-workbench")
    except PackageNotFoundError:  # running from a source tree
        return "0+unknown"


# --- parser and entry point -------------------------------------------------------------------------------------

COMMANDS: tuple[Command, ...] = (
    ConfigCommand(),
    StackCommand(),
    StoreCommand(),
    GenerateCommand(),
    ProduceCommand(),
    ConsumeCommand(),
    ServeCommand(),
    QueryCommand(),
    ReportCommand(),
    DashboardCommand(),
    DemoCommand(),
    AlertsCommand(),
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="clickstream",
        description="Real-time clickstream analytics: Kafka -> ClickHouse -> notebooks and a Voila dashboard.",
        epilog=(
            "Settings come from the environment (KAFKA_BROKER_URL, KAFKA_TOPIC, CLICKHOUSE_URL, ...); "
            "see `clickstream config` and the README.\nExit codes: 0 ok, 1 runtime failure, 2 bad setting or usage, "
            "3 not running (stack status), 130 interrupted."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for command in COMMANDS:
        command.add_parser(sub)
    return parser


def _interrupt(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        return 2
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    if args.verbose < 2:
        logging.getLogger("kafka").setLevel(logging.CRITICAL)  # its connection chatter is not for users
    # SIGTERM (a service manager, `kill`) ends a command the way Ctrl-C does, so `finally` blocks stop the child
    # processes and threads it started. Commands with their own shutdown (consume) install their own handler.
    signal.signal(signal.SIGTERM, _interrupt)
    # Ctrl-C and SIGTERM reach the command however it was started: a blocked signal mask is inherited across exec,
    # and a shell's background job starts with SIGINT ignored.
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        settings = Settings.from_env()
        handler: Handler = args.handler
        return handler(args, settings)
    except QueryError as exc:
        err(f"clickstream: {exc}")
        return 2
    except ConfigError as exc:
        err(f"clickstream: configuration error: {exc}")
        return 2
    except ClickstreamError as exc:
        err(f"clickstream: {exc}")
        return 1
    except KeyboardInterrupt:
        err("clickstream: interrupted")
        return 130
