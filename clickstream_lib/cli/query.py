"""`clickstream query`."""

from __future__ import annotations

import argparse

from ..settings import Settings
from .output import out


class QueryCommand:
    """`clickstream query`."""

    name = "query"

    @staticmethod
    def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
        p = sub.add_parser(
            "query",
            help="run a named analytics query or read-only SQL against the store",
            description=(
                "Run a named query (see --list) with its window, filters and options as --param NAME=VALUE, or run "
                "one read-only statement with --sql (SELECT, SHOW, DESCRIBE, EXISTS; anything else exits 2). "
                "Filters: interaction_type, device, country, referrer, item_id; "
                "repeat a filter to match several values. Times are ISO-8601, UTC unless they carry an offset.\n"
                "In embedded mode a running owner (`clickstream serve`, `clickstream demo`) answers; without one this "
                "process opens the store itself."
            ),
            epilog=(
                "examples:\n  clickstream query --list\n  clickstream query kpis\n"
                "  clickstream query top_items --param limit=5 --param device=mobile --param start=2026-11-29T00:00Z\n"
                "  clickstream query funnel --param window_s=900 --format json\n"
                '  clickstream query --sql "SELECT count() FROM clickstream.events" --format csv\n'
                "  clickstream query --ddl cluster --cluster prod"
            ),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        p.add_argument("name", nargs="?", help="the query name (see --list)")
        p.add_argument(
            "--param",
            "-p",
            action="append",
            default=[],
            metavar="NAME=VALUE",
            help="start, end, a filter or a query option (repeatable)",
        )
        p.add_argument(
            "--source",
            choices=["auto", "raw", "rollup", "approx"],
            default="auto",
            help=(
                "auto (default): read rollups where they answer; raw: always the raw events; rollup: insist on "
                "rollups; approx: estimate distinct counts from the rollups' HLL states (the output's `estimated` "
                "column marks those rows)"
            ),
        )
        p.add_argument("--sql", help="run this SQL read-only instead of a named query")
        p.add_argument("--format", "-f", choices=["table", "csv", "json"], default="table", help="output format")
        p.add_argument("--list", action="store_true", help="list the named queries and their options")
        p.add_argument("--ddl", choices=["local", "cluster"], help="print the schema DDL (no store is opened)")
        p.add_argument("--cluster", default="clickstream", help="cluster name for --ddl cluster")
        p.set_defaults(handler=QueryCommand.run)

    @staticmethod
    def run(args: argparse.Namespace, settings: Settings) -> int:
        from .. import queries, schema
        from ..errors import QueryError
        from ..store import connect

        if args.list:
            for nq in queries.QUERIES.values():
                out(nq.describe())
            return 0
        if args.ddl:
            stmts = (
                schema.cluster_ddl(settings.database, args.cluster)
                if args.ddl == "cluster"
                else schema.local_ddl(settings.database)
            )
            for stmt in stmts:
                out(stmt + ";\n")
            return 0
        if bool(args.sql) == bool(args.name):
            raise QueryError("query", "give a query NAME or --sql (not both); see `clickstream query --list`")
        params: dict[str, object] = {}
        for item in args.param:
            key, sep, value = item.partition("=")
            if not sep or not key.strip():
                raise QueryError("--param", f"{item!r} is not NAME=VALUE")
            key = key.strip()
            prev = params.get(key)
            params[key] = value if prev is None else [*(prev if isinstance(prev, list) else [prev]), value]
        store = connect(settings)
        try:
            if args.sql:
                if params:
                    raise QueryError("--param", "does not apply to --sql")
                df = queries.read_only(store, args.sql)
            else:
                if args.name not in queries.QUERIES:
                    queries.run(store, args.name)  # raises the QueryError listing the known names
                df = queries.run(store, args.name, source=args.source, **params)
        finally:
            store.close()
        estimated = bool(df.attrs.get("estimated"))
        if not args.sql:
            # Every named query's rows say whether their figures are estimates, and the relative error bound if so.
            bound = float(df.attrs.get("error_bound") or 0.0)
            df = df.assign(estimated=estimated, error_bound=bound)
        if args.format == "csv":
            out(df.to_csv(index=False).rstrip("\n"))
        elif args.format == "json":
            out(json_records(df))
        else:
            out(df.to_string(index=False) if len(df) else f"(no rows; columns: {', '.join(map(str, df.columns))})")
            if estimated:
                bound_pct = 100 * float(df.attrs.get("error_bound") or 0)
                out(f"≈ distinct counts are estimates (error bound ±{bound_pct:.1f}%)")
        return 0


def _json_value(value: object) -> object:
    """A value orjson cannot write as it is: UUID as text, Decimal as an exact number, times in ISO-8601 (UTC)."""
    import datetime
    import decimal
    import uuid

    import pandas as pd

    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, decimal.Decimal):
        as_float = float(value)
        return as_float if decimal.Decimal(repr(as_float)) == value else str(value)  # text when a float would round
    if isinstance(value, pd.Timestamp | datetime.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=datetime.UTC)
        return value.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    if hasattr(value, "tolist"):  # numpy arrays and scalars
        return value.tolist()
    raise TypeError(f"cannot write {type(value).__name__} as JSON")


def json_records(df: object) -> str:
    """A DataFrame as a JSON array of row objects, for every column type ClickHouse returns (UUID, Decimal,
    DateTime64, Map, arrays, tuples); missing values are null."""
    import orjson
    import pandas as pd

    assert isinstance(df, pd.DataFrame)
    frame = df.astype(object).where(df.notna(), None)
    rows = frame.to_dict(orient="records")
    return orjson.dumps(rows, default=_json_value, option=orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS).decode()
