"""The ClickHouse store: embedded chdb (``chdb:///dir``) or a server URL, schema migrations, inserts.

Embedded mode runs the real ClickHouse engine in-process. chdb locks its data directory: one process per
directory and one directory per process. :func:`connect` detects a held lock (chdb only prints the cause to stderr)
and raises :class:`~clickstream_lib.errors.StoreLocked` saying who holds it and how to go multi-process.

The embedded engine runs with a memory limit (``CLICKSTREAM_MEMORY_LIMIT_MB``, ClickHouse's
``max_server_memory_usage``). Besides refusing a query that would exceed it, the limit is what makes the engine hand
freed memory back: its memory worker purges jemalloc's dirty pages once they pass half of the limit (or resident
memory 90% of it), where with the engine's default (90% of RAM) they stayed resident for seconds after each heavy
query and piled up between queries (see :func:`_engine_options`). A query refused for memory raises
:class:`~clickstream_lib.errors.StoreError` naming the setting to raise.
"""

from __future__ import annotations

import contextlib
import decimal
import errno
import fcntl
import logging
import os
import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import clickhouse_connect
from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import ClickHouseError

from . import schema
from .errors import StoreError, StoreLocked
from .settings import Settings, StoreURL

logger = logging.getLogger(__name__)

# Inserts carrying the same insert_deduplication_token within this many recent blocks are dropped. The sink relies
# on it for effectively-once delivery; 0 (the engine default) silently ignores tokens.
DEDUP_WINDOW = 100_000

# ClickHouse's MEMORY_LIMIT_EXCEEDED: a query (or the whole engine) would pass its memory limit.
MEMORY_LIMIT_EXCEEDED = 241


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    statements: tuple[str, ...]


# Versioned, append-only. Each statement is idempotent (IF NOT EXISTS) so a half-applied migration can re-run.
# ``{db}`` is the database identifier (validated by Settings, so formatting it is safe); values are never formatted.
MIGRATIONS: tuple[Migration, ...] = (
    # The table definitions live in schema.py, which also renders the cluster (Replicated/Distributed) variant.
    Migration(
        1,
        "events and dead letters",
        (
            schema.table_ddl(schema.EVENTS, dedup_window=DEDUP_WINDOW, projections=False, at=1),
            schema.table_ddl(schema.DEAD_LETTERS, dedup_window=DEDUP_WINDOW, projections=False, at=1),
        ),
    ),
    Migration(2, "rollups (schema.ROLLUPS) and the views that keep them", schema.rollup_statements()),
    Migration(
        3,
        "projections: events by user (per-user passes), users_by_day totals per user (top users)",
        schema.projection_statements(),
    ),
    Migration(
        schema.OPEN_TYPES_MIGRATION,
        "open interaction types: the wide rollups count other types (items_by_hour, users_by_day, user_totals)",
        schema.open_types_statements(),
    ),
    Migration(
        schema.PROPERTIES_MIGRATION,
        "event properties: experiment_name, experiment_variation and properties (JSON) on events",
        schema.properties_statements(),
    ),
    Migration(
        schema.EXPERIMENTS_MIGRATION,
        "experiments rollup: experiment_users_by_day and its view, backfilled from stored events",
        schema.experiment_rollup_statements(),
    ),
)


def _lock_holder(directory: Path) -> int | None:
    """The pid holding chdb's lock on ``directory``, 0 if held by an unknown pid, None if it is free.

    ClickHouse takes an exclusive flock on ``<dir>/status`` and writes ``PID: n`` into it. Probing with a
    non-blocking flock (released at once) tells whether another process holds it.
    """
    status = directory / "status"
    try:
        fd = os.open(status, os.O_RDONLY)
    except FileNotFoundError:
        return None
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                return None
            text = os.pread(fd, 4096, 0).decode(errors="replace")
            m = re.search(r"PID:\s*(\d+)", text)
            return int(m.group(1)) if m else 0
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def _locked_error(directory: Path, pid: int | None) -> StoreLocked:
    # The holder's program name only: its command line may carry another user's arguments or secrets.
    who = f"process {pid}" if pid else "another process"
    if pid and pid == os.getpid():
        who = "this process (through another data directory or client)"
    elif pid:
        with contextlib.suppress(OSError):
            who += f" ({Path(f'/proc/{pid}/comm').read_text().strip()[:32]})"
    return StoreLocked(
        f"the embedded ClickHouse store {directory} is held by {who}"
        " — chdb allows one process per data directory. Stop that process, use another CLICKSTREAM_DATA_DIR, "
        "or go multi-process with a ClickHouse server: set CLICKHOUSE_URL=http://user:password@host:8123/db "
        "(docker compose up brings one)"
    )


_embedded_path: str | None = None
_embedded_lock = threading.Lock()


def open_client(
    url: StoreURL,
    database: str | None = None,
    settings: dict[str, Any] | None = None,
    memory_limit_mb: int = 0,
) -> Client:
    """A raw clickhouse-connect client for ``url`` (no migrations). Wraps connection failures in StoreError.

    ``memory_limit_mb`` (embedded only; 0 = the engine's default) is the engine's ``max_server_memory_usage``. It is
    an engine start-up option: it takes effect when this client starts the engine, i.e. when no other client of the
    process has it open; otherwise the running engine keeps its limit and a warning says so.
    """
    global _embedded_path
    if url.embedded:
        directory = Path(url.path)
        with _embedded_lock:
            real = os.path.realpath(directory)
            if _embedded_path and _embedded_path != real:
                raise StoreError(
                    f"this process already uses the embedded store {_embedded_path}; chdb allows one data directory "
                    f"per process, so {directory} cannot be opened here — use one CLICKSTREAM_DATA_DIR per process"
                )
            pid = _lock_holder(directory)
            if pid is not None and pid != os.getpid():
                raise _locked_error(directory, pid)
            directory.mkdir(parents=True, exist_ok=True)
            options = _engine_options(memory_limit_mb)
            try:
                client = clickhouse_connect.get_client(
                    dsn=f"chdb://{directory}", database=database, settings=settings, chdb_options=options
                )
            except Exception as exc:  # chdb raises ProgrammingError/RuntimeError with a generic text
                pid = _lock_holder(directory)
                if pid is not None:
                    raise _locked_error(directory, pid) from exc
                raise StoreError(f"cannot open the embedded ClickHouse store {directory}: {exc}") from exc
            _embedded_path = real
            if memory_limit_mb:
                _check_memory_limit(client, memory_limit_mb)
            return client
    try:
        return clickhouse_connect.get_client(**server_client_args(url, database, settings))
    except Exception as exc:
        raise server_error(url, exc) from None


def _engine_options(memory_limit_mb: int) -> dict[str, float] | None:
    """chdb start-up options for a memory limit (None: the engine's defaults).

    * ``max_server_memory_usage``: the limit.
    * ``memory_worker_use_cgroup = 0``: the engine checks its limit against resident memory too, which its memory
      worker reads from the cgroup when there is one. The cgroup holds more than this engine — the Python process
      around it, and in a container the Jupyter server and other kernels — so the worker would charge their memory
      to the engine (here, on cgroup v1, it read 6 MB for a 1 GB process). With 0 it reads jemalloc's resident
      bytes: this engine's own memory, which is what the limit is about.
    * ``memory_worker_purge_dirty_pages_threshold_ratio = 0.5``: the worker purges freed pages past this share of
      the limit (and whenever resident memory passes 90% of it). At the default 0.2 it purged between runs of the
      per-user passes, which then faulted their pages in again: sessions and funnel 15% slower at 10M events. At
      0.5 they ran as fast as without a limit, and the peak stayed far below the 1.5 GB target.
    * ``max_threads_min_free_memory_per_thread`` (and its insert twin), a connection setting: the engine lowers a
      query's threads until each has this much of the limit free, 1 GiB by default — so under a 1 GB limit every
      query ran on one thread (measured at 10M events: kpis 650 ms instead of 350 ms on 2 cores). A quarter of the
      limit keeps the intent (fewer threads when memory is short) at this scale.
    """
    if not memory_limit_mb:
        return None
    limit = memory_limit_mb * 2**20
    return {
        "max_server_memory_usage": limit,
        "memory_worker_use_cgroup": 0,
        "memory_worker_purge_dirty_pages_threshold_ratio": 0.5,
        "max_threads_min_free_memory_per_thread": limit // 4,
        "max_insert_threads_min_free_memory_per_thread": limit // 4,
    }


def _check_memory_limit(client: Client, memory_limit_mb: int) -> None:
    """Warn when the running engine's limit is not the one asked for (another client started it without it)."""
    try:
        value = client.query(
            "SELECT value FROM system.server_settings WHERE name = 'max_server_memory_usage'"
        ).result_rows[0][0]
    except Exception:  # a probe: an engine without the table keeps working, unverified
        logger.debug("cannot read the embedded engine's memory limit", exc_info=True)
        return
    if int(value) != memory_limit_mb * 2**20:
        logger.warning(
            "the embedded ClickHouse engine of this process was started with a memory limit of %d MB, not "
            "CLICKSTREAM_MEMORY_LIMIT_MB=%d: the limit applies when the engine starts, so it takes effect once every "
            "client of the store is closed (or in a new process)",
            int(value) // 2**20,
            memory_limit_mb,
        )


def store_error(exc: BaseException, what: str, settings: Settings) -> StoreError:
    """A ClickHouse failure as a StoreError; a query refused for memory names the limit to raise.

    Args:
        exc: the error clickhouse-connect raised.
        what: the failed action, e.g. ``"query sessions on clickstream"``.
        settings: the settings the store was opened with (embedded or server, and the limit in force).
    """
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if getattr(exc, "code", None) == MEMORY_LIMIT_EXCEEDED or "MEMORY_LIMIT_EXCEEDED" in text:
        url = settings.store_url
        if not url.embedded:
            hint = (
                f"the ClickHouse server at {url.redacted()} refused it for memory — ask its operator to raise "
                "max_memory_usage in the user's profile (or the server's max_server_memory_usage), or query a "
                "shorter time window"
            )
        elif settings.memory_limit_mb:
            hint = (
                f"it needs more memory than the embedded engine's limit of {settings.memory_limit_mb} MB — raise "
                f"CLICKSTREAM_MEMORY_LIMIT_MB (e.g. to {2 * settings.memory_limit_mb}), or query a shorter time window"
            )
        else:
            hint = (
                "it needs more memory than this machine can give the embedded engine (CLICKSTREAM_MEMORY_LIMIT_MB=0: "
                "90% of RAM) — query a shorter time window, or use a ClickHouse server (CLICKHOUSE_URL)"
            )
        return StoreError(f"{what} ran out of memory: {hint}. ClickHouse said: {_scrub(text, settings.store_url)}")
    return StoreError(f"{what} failed: {_scrub(str(exc), settings.store_url)}")


def server_client_args(
    url: StoreURL, database: str | None = None, settings: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Keyword arguments for ``clickhouse_connect.get_client`` for a server URL, TLS options included.

    On ``https://`` the server certificate and host name are verified against ``CLICKHOUSE_CA_FILE`` (or the system
    trust store); ``CLICKHOUSE_VERIFY=false`` turns that off, with a warning, for test servers only.
    """
    args: dict[str, Any] = {
        "host": url.host,
        "port": url.port,
        "username": url.username,
        "password": url.password,
        "database": database or "default",
        "secure": url.scheme == "https",
        "settings": settings,
        "connect_timeout": 5,
    }
    if url.scheme == "https":
        args["verify"] = url.verify
        if url.ca_file:
            args["ca_cert"] = url.ca_file
        if not url.verify:
            logger.warning(
                "TLS certificate verification is OFF for %s (CLICKHOUSE_VERIFY=false): anyone on the path can read "
                "and change the traffic; use CLICKHOUSE_CA_FILE instead outside tests",
                url.redacted(),
            )
    return args


def server_error(url: StoreURL, exc: BaseException) -> StoreError:
    """Turn a connection failure into a StoreError naming the setting to fix; never includes the password."""
    text = _scrub(str(exc), url)
    low = text.lower()
    where = url.redacted()
    if "certificate_verify_failed" in low or "certificate verify failed" in low:
        if "hostname" in low or "ip address mismatch" in low or "doesn't match" in low:
            return StoreError(
                f"the TLS certificate of ClickHouse at {where} does not name host {url.host!r} — connect by a name "
                "the certificate lists (CLICKHOUSE_URL / CLICKHOUSE_HOST), or reissue the certificate"
            )
        return StoreError(
            f"the TLS certificate of ClickHouse at {where} is not signed by a trusted CA — set CLICKHOUSE_CA_FILE "
            "to the PEM file of the CA that issued it (CLICKHOUSE_VERIFY=false skips the check; test servers only)"
        )
    if "wrong_version_number" in low or "wrong version number" in low or "record layer failure" in low:
        return StoreError(
            f"ClickHouse at {where} did not answer with TLS — it is probably a plain HTTP port: use http:// (port "
            "8123), or the server's HTTPS port (8443) with https:// (CLICKHOUSE_URL / CLICKHOUSE_SECURE)"
        )
    if "authentication failed" in low or "code: 516" in low or "code: 192" in low:
        return StoreError(
            f"ClickHouse at {where} refused user {url.username!r} — check CLICKHOUSE_USER and CLICKHOUSE_PASSWORD"
        )
    return StoreError(
        f"ClickHouse not reachable at {where} ({type(exc).__name__}: {text}) — "
        "check CLICKHOUSE_URL / CLICKHOUSE_HOST, CLICKHOUSE_USER and CLICKHOUSE_PASSWORD"
    )


def _scrub(text: str, url: StoreURL) -> str:
    """``text`` without the URL's password, as typed or percent-encoded."""
    if not url.password:
        return text
    for form in {url.password, quote(url.password, safe=""), quote(url.password)}:
        text = text.replace(form, "***")
    return text


class Store:
    """A connection to the clickstream database with its schema applied.

    One ``Store`` wraps one clickhouse-connect client; it is not meant to be shared between threads that query at
    the same time — call :meth:`fork` to get a sibling client for another thread.
    """

    def __init__(self, settings: Settings, client: Client, database: str) -> None:
        self.settings = settings
        self.client = client
        self.database = database
        self._lock = threading.Lock()
        self._read_only: Client | None = None

    @property
    def embedded(self) -> bool:
        return self.settings.store_url.embedded

    def fork(self) -> Store:
        """Another client on the same store, for use from another thread."""
        client = open_client(self.settings.store_url, self.database, memory_limit_mb=self.settings.memory_limit_mb)
        return Store(self.settings, client, database=self.database)

    def table(self, name: str) -> str:
        return f"{self.database}.{name}"

    # --- schema -------------------------------------------------------------------------------------------------

    def schema_version(self) -> int:
        rows = self.client.query(f"SELECT max(version) FROM {self.database}.schema_migrations").result_rows
        return int(rows[0][0] or 0) if rows else 0

    def migrate(self) -> list[int]:
        """Apply pending migrations in order; returns the versions applied (empty when up to date)."""
        db = self.database
        self.client.command(
            f"CREATE TABLE IF NOT EXISTS {db}.schema_migrations "
            "(version UInt32, name String, applied_at DateTime64(3, 'UTC') DEFAULT now64(3)) "
            "ENGINE = MergeTree ORDER BY version"
        )
        current = self.schema_version()
        applied: list[int] = []
        for m in MIGRATIONS:
            if m.version <= current:
                continue
            for stmt in m.statements:
                self.client.command(stmt.format(db=db))
            self.client.insert(f"{db}.schema_migrations", [[m.version, m.name]], column_names=["version", "name"])
            applied.append(m.version)
            logger.info("applied schema migration %d (%s) to %s", m.version, m.name, db)
        return applied

    def dedup_window(self, table: str = "events") -> int:
        """The table's ``non_replicated_deduplication_window`` (0 means dedup tokens are ignored)."""
        ddl = str(self.client.command(f"SHOW CREATE TABLE {self.table(table)}"))
        m = re.search(r"non_replicated_deduplication_window\s*=\s*(\d+)", ddl)
        return int(m.group(1)) if m else 0

    # --- data ---------------------------------------------------------------------------------------------------

    def insert(
        self,
        table: str,
        columns: Sequence[Sequence[Any]],
        column_names: Sequence[str],
        dedup_token: str | None = None,
        column_types: Sequence[str] | None = None,
    ) -> int:
        """Columnar insert; ``dedup_token`` makes a retry of the same rows a no-op. Returns rows written.

        ``column_types`` names the ClickHouse type each column is *sent* as. It spares clickhouse-connect the
        ``DESCRIBE TABLE`` it otherwise runs before every insert, and it may differ from the table's type: the
        engine converts on insert (``input_format_native_allow_types_conversion``). Sending a ``LowCardinality``,
        ``UUID`` or ``Decimal`` column as ``String`` lets clickhouse-connect write it in one C call instead of
        converting it value by value in Python (see :func:`decimal_text` for what a Decimal column must hold then).
        """
        settings: dict[str, Any] = {"insert_deduplication_token": dedup_token} if dedup_token else {}
        if column_types is not None:
            settings["input_format_native_allow_types_conversion"] = 1
        try:
            with self._lock:
                summary = self.client.insert(
                    self.table(table),
                    list(columns),
                    column_names=list(column_names),
                    column_type_names=list(column_types) if column_types is not None else None,
                    column_oriented=True,
                    settings=settings or None,
                )
        except ClickHouseError as exc:
            raise store_error(exc, f"insert into {self.table(table)}", self.settings) from exc
        return int(summary.written_rows)

    def query_df(self, sql: str, parameters: dict[str, Any] | None = None) -> Any:
        """Run a parameter-bound query (``{name:Type}`` placeholders) and return a pandas DataFrame."""
        with self._lock:
            return self.client.query_df(sql, parameters=parameters or {})

    def query_rows(self, sql: str, parameters: dict[str, Any] | None = None) -> list[tuple[Any, ...]]:
        with self._lock:
            return [tuple(r) for r in self.client.query(sql, parameters=parameters or {}).result_rows]

    def scalar(self, sql: str, parameters: dict[str, Any] | None = None) -> Any:
        rows = self.query_rows(sql, parameters)
        return rows[0][0] if rows else None

    def read_only_df(self, sql: str, parameters: dict[str, Any] | None = None) -> Any:
        """Run SQL a user typed, read-only as the engine enforces it (see :mod:`clickstream_lib.user_sql`).

        Raises:
            QueryError: the text is not one read-only statement, or the engine refused it as a write.
            ClickHouseError: the statement failed for another reason.
        """
        from . import user_sql

        with self._lock:
            if self._read_only is None:
                # A session of its own: readonly = 1 cannot be undone in it, and nothing else ever runs on it.
                self._read_only = open_client(
                    self.settings.store_url,
                    self.database,
                    settings={"readonly": 1 if self.embedded else 2},
                    memory_limit_mb=self.settings.memory_limit_mb,
                )
            client = self._read_only
            formatted = user_sql.checked(client, sql, parameters)
            try:
                df = client.query_df(formatted, parameters=parameters or {})
                if df.columns.empty:
                    df = empty_frame(client.query(f"DESCRIBE ({formatted})", parameters=parameters or {}).result_rows)
            except ClickHouseError as exc:
                refused = user_sql.refused_by_engine(exc)
                if refused is not None:
                    raise refused from None
                raise
        return df

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.client.close()
        if self._read_only is not None:
            with contextlib.suppress(Exception):
                self._read_only.close()


def empty_frame(describe_rows: Sequence[Sequence[Any]]) -> Any:
    """An empty DataFrame with the columns ``DESCRIBE`` lists: the embedded engine returns no header for zero rows."""
    import pandas as pd

    columns = {}
    for name, ctype, *_ in describe_rows:
        base = ctype.removeprefix("Nullable(").removeprefix("LowCardinality(")
        if base.startswith(("DateTime", "Date")):
            columns[name] = pd.Series(dtype="datetime64[ns, UTC]" if base.startswith("DateTime") else "datetime64[ns]")
        elif base.startswith(("UInt", "Int")):
            columns[name] = pd.Series(dtype="int64")
        elif base.startswith(("Float", "Decimal")):
            columns[name] = pd.Series(dtype="float64")
        else:
            columns[name] = pd.Series(dtype="object")
    return pd.DataFrame(columns)


def decimal_text(values: Sequence[float], precision: int, scale: int) -> list[str]:
    """Numbers as the text of the ``Decimal(precision, scale)`` values clickhouse-connect would store for them.

    clickhouse-connect stores ``int(Decimal(str(x)) * 10**scale)`` (truncated; ``precision`` digits of context)
    for each value; this computes that once per distinct value and writes it as exact decimal text, which the
    engine parses into the same Decimal.
    """
    text: dict[float, str] = {}
    mult = 10**scale
    with decimal.localcontext() as ctx:
        ctx.prec = precision
        for x in set(values):
            q = int(decimal.Decimal(str(x)) * mult)
            sign, q = ("-", -q) if q < 0 else ("", q)
            text[x] = f"{sign}{q // mult}.{q % mult:0{scale}d}" if scale else f"{sign}{q}"
    return [text[x] for x in values]


def _current_server_store(settings: Settings, url: StoreURL, database: str) -> Store | None:
    """A Store without any DDL when the server's schema is already current, else None.

    Least-privilege server users (docker-compose's INSERT-only ``ingest`` and read-only ``dashboard``) may not run
    ``CREATE DATABASE`` or migrations; once an admin has migrated, reading the version is all they need to do.
    """
    client = open_client(url)  # unreachable: StoreError, as the DDL path would raise
    try:
        version = client.query(f"SELECT max(version) FROM {database}.schema_migrations").result_rows[0][0]
    except Exception:  # no database or table yet, or no SELECT on it: take the DDL path, which reports its own error
        return None
    finally:
        client.close()
    if int(version or 0) < MIGRATIONS[-1].version:
        return None
    return Store(settings, open_client(url, database), database)


def connect(settings: Settings, migrate: bool = True) -> Store:
    """Open the store named by ``settings``, create its database, and apply schema migrations.

    Raises:
        StoreLocked: the embedded data directory is held by another process.
        StoreError: ClickHouse is unreachable or refused.
    """
    url = settings.store_url
    database = settings.database
    if not url.embedded:
        current = _current_server_store(settings, url, database)
        if current is not None:
            return current
    client = open_client(url, memory_limit_mb=settings.memory_limit_mb)
    try:
        client.command(f"CREATE DATABASE IF NOT EXISTS {database}")
    except ClickHouseError as exc:
        raise StoreError(f"cannot create database {database} at {url.redacted()}: {_scrub(str(exc), url)}") from None
    # Reopen with the database as the session default, so read-only SQL (`clickstream query --sql`) can name
    # tables without the database prefix, on chdb as on a server.
    client.close()
    client = open_client(url, database, memory_limit_mb=settings.memory_limit_mb)
    store = Store(settings, client, database)
    if migrate:
        store.migrate()
    return store
