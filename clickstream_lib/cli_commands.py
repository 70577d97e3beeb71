"""Subcommands of ``clickstream`` beyond config/stack: generate, produce, consume, query, report, dashboard, demo.

Each block registers itself with :func:`clickstream_lib.cli.register`; handlers only call the library and present
its results (progress bars on a terminal, quiet when piped).
"""

from __future__ import annotations

import argparse

from .cli import err, out, register
from .settings import Settings

# --- generate / produce (events, generator, producer) -----------------------------------------------------------

# --- consume (the sink) -----------------------------------------------------------------------------------------


def _add_consume(sub: argparse._SubParsersAction) -> None:
    from .consumer import DEFAULT_BATCH_MAX_ROWS, DEFAULT_BATCH_MAX_WAIT_S

    p = sub.add_parser(
        "consume",
        help="sink the events topic into ClickHouse (no loss, no duplicates, dead letters)",
        description=(
            "Join the consumer group and insert the topic's events into ClickHouse, effectively once: batches are "
            "offset ranges stored with a deduplication token and committed only after ClickHouse acknowledged them. "
            "Invalid messages go to the dead-letter topic and the dead_letters table.\n"
            "Runs until SIGTERM/Ctrl-C (finishes the batch, commits, exits 0), --until-idle or --max-events.\n"
            "Several `clickstream consume` processes in one group split the partitions; with the embedded store "
            "(chdb) only one process may open a data directory, so run several consumers against a ClickHouse server."
        ),
        epilog=(
            "examples:\n  clickstream consume --until-idle 5\n  clickstream consume --group replay --max-events 10000\n"
            "  clickstream consume --stats"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--group", help="consumer group id (default: KAFKA_GROUP_ID)")
    p.add_argument("--until-idle", type=float, metavar="SECONDS", help="exit once no message arrived for SECONDS")
    p.add_argument("--max-events", type=int, metavar="N", help="exit after N messages are stored and committed")
    p.add_argument("--stats", action="store_true", help="live figures every 2 s on stderr, a JSON summary at exit")
    p.add_argument("--batch-max-rows", type=int, default=DEFAULT_BATCH_MAX_ROWS, metavar="N",
                   help=f"rows per partition batch (default {DEFAULT_BATCH_MAX_ROWS})")
    p.add_argument("--batch-max-wait", type=float, default=DEFAULT_BATCH_MAX_WAIT_S, metavar="SECONDS",
                   help=f"longest wait before a batch is inserted (default {DEFAULT_BATCH_MAX_WAIT_S})")
    p.add_argument("--instance-id", help="static group membership id: a restart takes its partitions back at once")
    p.set_defaults(handler=_cmd_consume)


def _format_sink_stats(st: object) -> str:
    from .consumer import SinkStats

    assert isinstance(st, SinkStats)

    def ms(v: float | None) -> str:
        return "-" if v is None else f"{v:.0f}"

    reasons = ",".join(f"{k}={v}" for k, v in sorted(st.dead_letters_by_reason.items())) or "-"
    return (
        f"rows={st.rows_inserted} rows/s={st.rows_per_s:.0f} dead={st.dead_letters} ({reasons}) "
        f"lag={st.total_lag} partitions={list(st.assigned_partitions)} "
        f"latency event p50/p99={ms(st.latency_event_p50_ms)}/{ms(st.latency_event_p99_ms)} ms "
        f"kafka p50/p99={ms(st.latency_kafka_p50_ms)}/{ms(st.latency_kafka_p99_ms)} ms"
        + (f" error={st.last_error}" if st.last_error else "")
    )


def _cmd_consume(args: argparse.Namespace, settings: Settings) -> int:
    import json
    import signal
    import threading

    from .consumer import Sink
    from .errors import ConfigError

    if args.group is not None:
        settings = settings.replace(kafka_group_id=args.group)
        if not args.group.strip():
            raise ConfigError("--group", "must not be empty")
    if args.max_events is not None and args.max_events < 1:
        raise ConfigError("--max-events", f"{args.max_events} must be at least 1")
    if args.until_idle is not None and args.until_idle <= 0:
        raise ConfigError("--until-idle", f"{args.until_idle} must be more than 0 seconds")
    if args.batch_max_rows < 1 or args.batch_max_wait <= 0:
        raise ConfigError("--batch-max-rows/--batch-max-wait", "must be positive")
    sink = Sink(settings, batch_max_rows=args.batch_max_rows, batch_max_wait_s=args.batch_max_wait,
                instance_id=args.instance_id)
    interrupted = {"n": 0}

    def on_signal(signum: int, _frame: object) -> None:
        # First signal: finish the batch, commit, exit 0. A second Ctrl-C aborts (nothing is lost: uncommitted
        # batches are rebuilt by the next run).
        interrupted["n"] += 1
        if interrupted["n"] > 1 and signum == signal.SIGINT:
            raise KeyboardInterrupt
        err("clickstream: stopping — finishing the current batch and committing")
        sink.request_stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    done = threading.Event()
    if args.stats:
        def report() -> None:
            while not done.wait(2.0):
                if sink.running:
                    err(_format_sink_stats(sink.stats()))

        threading.Thread(target=report, name="consume-stats", daemon=True).start()
    try:
        final = sink.run(until_idle=args.until_idle, max_events=args.max_events)
    finally:
        done.set()
    if args.stats:
        out(json.dumps(final.as_dict()))
    else:
        out(f"consumed: {final.rows_inserted} rows, {final.dead_letters} dead letters, {final.batches} batches")
    return 0


register(_add_consume)

# --- query (named analytics queries, read-only SQL) --------------------------------------------------------------


def _add_query(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "query",
        help="run a named analytics query or read-only SQL against the store",
        description=(
            "Run a named query (see --list) with its window, filters and options as --param NAME=VALUE, or run "
            "SQL with --sql (read-only: readonly=1). Filters: interaction_type, device, country, referrer, item_id; "
            "repeat a filter to match several values. Times are ISO-8601, UTC unless they carry an offset.\n"
            "In embedded mode this process opens the store: stop other processes using CLICKSTREAM_DATA_DIR."
        ),
        epilog=(
            "examples:\n  clickstream query --list\n  clickstream query kpis\n"
            "  clickstream query top_items --param limit=5 --param device=mobile --param start=2026-11-29T00:00Z\n"
            "  clickstream query funnel --param window_s=900 --format json\n"
            "  clickstream query --sql \"SELECT count() FROM clickstream.events\" --format csv\n"
            "  clickstream query --ddl cluster --cluster prod"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("name", nargs="?", help="the query name (see --list)")
    p.add_argument("--param", "-p", action="append", default=[], metavar="NAME=VALUE",
                   help="start, end, a filter or a query option (repeatable)")
    p.add_argument("--source", choices=["auto", "raw", "rollup"], default="auto",
                   help="read rollups when exact (auto, default), always raw events, or insist on rollups")
    p.add_argument("--sql", help="run this SQL read-only instead of a named query")
    p.add_argument("--format", "-f", choices=["table", "csv", "json"], default="table", help="output format")
    p.add_argument("--list", action="store_true", help="list the named queries and their options")
    p.add_argument("--ddl", choices=["local", "cluster"], help="print the schema DDL (no store is opened)")
    p.add_argument("--cluster", default="clickstream", help="cluster name for --ddl cluster")
    p.set_defaults(handler=_cmd_query)


def _cmd_query(args: argparse.Namespace, settings: Settings) -> int:
    from . import queries, schema
    from .errors import QueryError
    from .store import connect

    if args.list:
        for nq in queries.QUERIES.values():
            out(nq.describe())
        return 0
    if args.ddl:
        stmts = (schema.cluster_ddl(settings.database, args.cluster) if args.ddl == "cluster"
                 else schema.local_ddl(settings.database))
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
    if args.format == "csv":
        out(df.to_csv(index=False).rstrip("\n"))
    elif args.format == "json":
        out(df.to_json(orient="records", date_format="iso", date_unit="ms"))
    else:
        out(df.to_string(index=False) if len(df) else f"(no rows; columns: {', '.join(map(str, df.columns))})")
    return 0


register(_add_query)


# --- report / dashboard / demo (notebooks) ----------------------------------------------------------------------


def _add_report(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "report",
        help="run the papermill report; write the executed notebook and an HTML export",
        description=(
            "Execute notebooks/report.ipynb with papermill (parameters: start, end, interaction_type, device, country, "
            "referrer, top_n) and write <out>/report.ipynb (widget state stripped) and <out>/report.html (no code).\n"
            "In embedded mode the report's kernel opens the store: stop other processes using CLICKSTREAM_DATA_DIR."
        ),
        epilog="example:\n  clickstream report --param start=2026-11-01 --param end=2026-12-01 --param device=mobile "
        "--out reports/nov",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--param", "-p", action="append", default=[], metavar="NAME=VALUE",
                   help="a report parameter (repeatable); values are typed like papermill's -p")
    p.add_argument("--out", default="reports", help="output directory (default: reports)")
    p.add_argument("--notebook", default="report", help="notebook name or .ipynb path (default: report)")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds allowed per cell (default 600)")
    p.set_defaults(handler=_cmd_report)


def _cmd_report(args: argparse.Namespace, settings: Settings) -> int:
    from .notebooks import parse_param, run_report

    params = dict(parse_param(p) for p in args.param)
    result = run_report(settings, args.out, params, notebook=args.notebook, timeout_s=args.timeout)
    out(f"notebook: {result.notebook}")
    out(f"html: {result.html}")
    return 0


def _add_dashboard(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "dashboard",
        help="serve the live dashboard with Voila on 127.0.0.1",
        description=(
            "Serve notebooks/dashboard.ipynb with Voila, bound to 127.0.0.1. Each browser tab gets its own kernel; "
            "closing the tab stops it.\nEmbedded mode (default): the tab's kernel owns the store, so one viewer at a "
            "time — use `--live` to run the producer and sink inside it. Server mode (CLICKHOUSE_URL=http://...): "
            "many viewers, read-only."
        ),
        epilog="examples:\n  clickstream dashboard\n  clickstream dashboard --port 8870 --refresh 10\n"
        "  clickstream dashboard --live --rate 500",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--port", type=int, default=8866, help="port on 127.0.0.1 (default 8866; 0 picks a free one)")
    p.add_argument("--refresh", type=float, default=5.0, help="seconds between refreshes (default 5)")
    p.add_argument("--live", action="store_true", help="run producer + sink in the dashboard's kernel")
    p.add_argument("--rate", type=float, default=200.0, help="events/s of the live producer (default 200)")
    p.add_argument("--notebook", default="dashboard", help="notebook name or .ipynb path (default: dashboard)")
    p.set_defaults(handler=_cmd_dashboard)


def _cmd_dashboard(args: argparse.Namespace, settings: Settings) -> int:
    from .notebooks import VoilaServer

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


def _add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="the main job: local Kafka + live pipeline + dashboard in your browser",
        description=(
            "Start the local Kafka broker (resolving its jars once), then serve the dashboard with Voila on "
            "127.0.0.1 with a live pipeline (generator -> Kafka -> sink -> embedded ClickHouse) running in its "
            "kernel. Open the printed URL. Ctrl-C stops the dashboard, the pipeline and the broker it started."
        ),
        epilog="examples:\n  clickstream demo\n  clickstream demo --port 8870 --rate 1000",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--port", type=int, default=8866, help="port on 127.0.0.1 (default 8866; 0 picks a free one)")
    p.add_argument("--rate", type=float, default=200.0, help="events/s generated (default 200)")
    p.add_argument("--refresh", type=float, default=5.0, help="seconds between dashboard refreshes (default 5)")
    p.add_argument("--keep-broker", action="store_true", help="leave the broker running on exit")
    p.set_defaults(handler=_cmd_demo)


def _cmd_demo(args: argparse.Namespace, settings: Settings) -> int:
    from .notebooks import run_demo

    err("starting the local Kafka broker (the first run resolves its jars from Maven Central) ...")

    def ready(url: str) -> None:
        out(f"dashboard: {url}")
        err("open it in a browser; Ctrl-C stops the dashboard, the pipeline and the broker")

    run_demo(settings, port=args.port, rate=args.rate, refresh_s=args.refresh, on_ready=ready,
             stop_broker=not args.keep_broker)
    return 0


register(_add_report)
register(_add_dashboard)
register(_add_demo)
