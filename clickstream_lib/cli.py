"""The ``clickstream`` command.

Exit codes: 0 success; 1 a runtime failure (service unreachable, store error); 2 a configuration or usage error
(one line naming the variable or option); 130 interrupted.

Each subcommand has an ``_add_<name>`` function that declares its arguments and a ``_cmd_<name>`` function that
runs it; both only call into the library.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from collections.abc import Callable, Sequence
from importlib.metadata import PackageNotFoundError, version

from .errors import ClickstreamError, ConfigError, QueryError
from .settings import Settings

logger = logging.getLogger("clickstream_lib.cli")

Handler = Callable[[argparse.Namespace, Settings], int]


def _version() -> str:
    try:
        return version("clickstream-workbench")
    except PackageNotFoundError:  # running from a source tree
        return "0+unknown"


def out(text: str = "") -> None:
    """Print a result line on stdout (the library itself never prints)."""
    print(text, flush=True)


def err(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# --- config ----------------------------------------------------------------------------------------------------


def _add_config(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "config",
        help="show the effective settings (secrets hidden)",
        description="Show the effective settings read from the environment, with passwords hidden.",
        epilog="example: KAFKA_TOPIC=clicks clickstream config",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.set_defaults(handler=_cmd_config)


def _cmd_config(args: argparse.Namespace, settings: Settings) -> int:
    for key, value in settings.describe().items():
        out(f"{key}={value}")
    return 0


# --- stack -----------------------------------------------------------------------------------------------------


def _add_stack(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "stack",
        help="start, stop or inspect the local Kafka broker",
        description=(
            "Manage a real Apache Kafka 4.x broker (KRaft) on 127.0.0.1. The first `up` resolves its jars from Maven "
            "Central into the cache directory; later ones download nothing. Data persists across down/up.\n"
            "Nothing is started when KAFKA_BROKER_URL names a broker that is not on loopback."
        ),
        epilog="examples:\n  clickstream stack up\n  clickstream stack status\n  clickstream stack down",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("action", choices=["up", "down", "status"], help="what to do")
    p.add_argument("--timeout", type=float, default=90.0, help="seconds to wait for readiness (default 90)")
    p.set_defaults(handler=_cmd_stack)


def _cmd_stack(args: argparse.Namespace, settings: Settings) -> int:
    from .stack import KafkaStack

    stack = KafkaStack(settings)
    if args.action == "status":
        st = stack.status()
        out(st.describe())
        return 0 if st.running else 3
    if args.action == "up":
        before = stack.status()
        if before.running:
            out(f"already up: {before.describe()}")
            return 0
        if not stack.jars_present() and stack.is_local:
            err(f"resolving Kafka {stack.version} jars from Maven Central (once) into {stack.libs} ...")
        st = stack.up(timeout_s=args.timeout)
        out(f"up: {st.describe()}")
        return 0
    st = stack.down()
    out(f"down: {st.describe()}")
    return 0


# --- store -----------------------------------------------------------------------------------------------------


def _add_store(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "store",
        help="inspect or migrate the ClickHouse store",
        description=(
            "Open the ClickHouse store (embedded chdb:// by default, or CLICKHOUSE_URL), apply pending schema "
            "migrations, and report its location, schema version and row counts."
        ),
        epilog=(
            "examples:\n  clickstream store status\n  CLICKHOUSE_URL=http://u:p@host:8123/db clickstream store migrate"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("action", choices=["status", "migrate"], help="what to do")
    p.set_defaults(handler=_cmd_store)


def _cmd_store(args: argparse.Namespace, settings: Settings) -> int:
    from .store import connect

    store = connect(settings)
    try:
        out(f"store {settings.store_url.redacted()} database {store.database} schema v{store.schema_version()}")
        if args.action == "status":
            for table in ("events", "dead_letters"):
                out(f"{table}: {store.scalar(f'SELECT count() FROM {store.table(table)}')} rows")
    finally:
        store.close()
    return 0


# --- parser and entry point -------------------------------------------------------------------------------------

_COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [_add_config, _add_stack, _add_store]


def register(add: Callable[[argparse._SubParsersAction], None]) -> None:
    """Add a subcommand (used by the modules that own it)."""
    _COMMANDS.append(add)


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
    _load_commands()
    for add in _COMMANDS:
        add(sub)
    return parser


def _load_commands() -> None:
    """Import the modules whose subcommands live in cli_commands (kept apart so this file stays small)."""
    from . import cli_commands  # noqa: F401  (registers on import)


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


if __name__ == "__main__":
    # Run through the package's module object: `python -m clickstream_lib.cli` would otherwise register the
    # subcommands of cli_commands on a second copy of this module.
    from clickstream_lib import cli as _cli

    sys.exit(_cli.main())
