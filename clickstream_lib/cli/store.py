"""`clickstream store`."""

from __future__ import annotations

import argparse

from ..settings import Settings
from .output import out


class StoreCommand:
    """`clickstream store`."""

    name = "store"

    @staticmethod
    def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
        p = sub.add_parser(
            "store",
            help="inspect or migrate the ClickHouse store",
            description=(
                "Open the ClickHouse store (embedded chdb:// by default, or CLICKHOUSE_URL), applying any pending "
                "schema migrations, and print its location and schema version; `status` also counts the rows of "
                "events and dead_letters."
            ),
            epilog=(
                "examples:\n"
                "  clickstream store status\n"
                "  CLICKHOUSE_URL=http://u:p@host:8123/db clickstream store migrate"
            ),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        p.add_argument("action", choices=["status", "migrate"], help="what to do")
        p.set_defaults(handler=StoreCommand.run)

    @staticmethod
    def run(args: argparse.Namespace, settings: Settings) -> int:
        from ..store import connect

        store = connect(settings)
        try:
            out(f"store {settings.store_url.redacted()} database {store.database} schema v{store.schema_version()}")
            if args.action == "status":
                for table in ("events", "dead_letters"):
                    out(f"{table}: {store.scalar(f'SELECT count() FROM {store.table(table)}')} rows")
        finally:
            store.close()
        return 0
