"""The ClickHouse store: embedded chdb (``chdb:///dir``) or a server URL, schema migrations, inserts.

Embedded mode runs the real ClickHouse engine (chdb) in one process per data directory. That process is either the
directory's owner, ``clickstream serve`` (:mod:`clickstream_lib.service`), which serves every other process of the
machine over a Unix socket, or — when no owner runs — the one process that opened it in-process. :func:`connect`
finds an owner and returns a :class:`ServedStore` (same interface, no chdb in this process), and opens chdb itself
only when none serves the directory. It raises :class:`~clickstream_lib.errors.StoreLocked` only when another process
holds the directory in-process. The protocol and its files are described in docs/deployment.md ("Served store").
chdb is imported only when a process opens the directory in-process.

The embedded engine runs with a memory limit (``CLICKSTREAM_MEMORY_LIMIT_MB``, ClickHouse's
``max_server_memory_usage``). Besides refusing a query that would exceed it, the limit is what makes the engine hand
freed memory back: its memory worker purges jemalloc's dirty pages once they pass half of the limit (or resident
memory 90% of it), where with the engine's default (90% of RAM) they stayed resident for seconds after each heavy
query and piled up between queries (see :func:`_engine_options`). A query refused for memory raises
:class:`~clickstream_lib.errors.StoreError` naming the setting to raise.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import decimal
import errno
import fcntl
import hashlib
import json
import logging
import os
import re
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import clickhouse_connect
from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import ClickHouseError

from . import errors, schema
from .errors import ConfigError, StoreError, StoreLocked
from .settings import Settings, StoreURL
from .snapshot import ENGINE_GATE

if TYPE_CHECKING:
    import pandas as pd

    from .served_pipeline import ServedPipeline

logger = logging.getLogger(__name__)

# Inserts carrying the same insert_deduplication_token within this many recent blocks are dropped. The sink relies
# on it for effectively-once delivery; 0 (the engine default) silently ignores tokens.
DEDUP_WINDOW = 100_000

# Sent with every insert that carries a deduplication token, so no session, user profile or engine default can turn
# deduplication off for it (measured on chdb 26.9, tests/integration/test_sink_dedup.py): ``deduplicate_insert``
# (ClickHouse 26.x) supersedes ``insert_deduplicate``, which older servers use; ``async_insert = 0`` keeps the insert
# on the synchronous path the tokens were measured on (the engine's default is 1); without
# ``deduplicate_blocks_in_dependent_materialized_views`` a replayed block is dropped from ``events`` but counted
# again in every rollup; on a cluster, ``distributed_foreground_insert`` makes the Distributed ``events`` table
# insert into the shards before it returns, token included, instead of queueing the rows. A setting the server does
# not know is left out (see :meth:`Store.dedup_settings`).
DEDUP_INSERT_SETTINGS: dict[str, Any] = {
    "deduplicate_insert": "enable",
    "insert_deduplicate": 1,
    "async_insert": 0,
    "deduplicate_blocks_in_dependent_materialized_views": 1,
    "distributed_foreground_insert": 1,
    "insert_distributed_sync": 1,  # its name before ClickHouse 23.7
}
# What every server the sink supports knows: sent when the server's list of settings cannot be read.
_DEDUP_SETTINGS_EVERYWHERE = (
    "insert_deduplicate",
    "async_insert",
    "deduplicate_blocks_in_dependent_materialized_views",
)

# ClickHouse's MEMORY_LIMIT_EXCEEDED: a query (or the whole engine) would pass its memory limit.
MEMORY_LIMIT_EXCEEDED = 241


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    statements: tuple[str, ...]
    # Run after ``statements``, once per day that ``events`` holds, with that day as the query parameter ``day``
    # (``{{day:Date}}`` in the text, since ``{db}`` is formatted): a rebuild of rollups in bounded memory.
    per_day: tuple[str, ...] = ()

    @property
    def modified_views(self) -> tuple[str, ...]:
        """The materialized views whose query a statement of this migration changes (``MODIFY QUERY``)."""
        return tuple(m.group(1) for stmt in self.statements if (m := _MODIFY_QUERY_RE.match(stmt)))


_MODIFY_QUERY_RE = re.compile(r"ALTER TABLE \{db\}\.(\w+) MODIFY QUERY ")


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
        schema.ALERT_EVENTS_MIGRATION,
        "alert_events: every firing and resolution of an alert rule (clickstream_lib.alerts)",
        (
            # A resolution re-inserts its firing's row with resolved_at set and a newer updated_at; read with FINAL.
            "CREATE TABLE IF NOT EXISTS {db}.alert_events (rule String, key String, "
            "severity LowCardinality(String), kind LowCardinality(String), value Float64, "
            "baseline Nullable(Float64), fired_at DateTime64(3, 'UTC'), resolved_at Nullable(DateTime64(3, 'UTC')), "
            "message String, updated_at DateTime64(3, 'UTC')) "
            "ENGINE = ReplacingMergeTree(updated_at) ORDER BY (rule, key, fired_at)",
        ),
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
    Migration(
        schema.ALERT_PENDING_MIGRATION,
        "alert_pending: where a rule with `for` started to hold, so separate `alerts check` runs count the same `for`",
        (schema.table_ddl(schema.ALERT_PENDING),),
    ),
    Migration(
        schema.EXACT_DISTINCT_MIGRATION,
        "exact distinct users and items in the event rollups (uniqExact states), rebuilt from stored events",
        schema.exact_distinct_statements(),
        per_day=schema.exact_distinct_rebuild(),
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
        "or let one owner serve the directory to every process of this machine: `clickstream serve` (`clickstream "
        "demo` starts one); for many machines use a ClickHouse server: CLICKHOUSE_URL=http://user:password@host:8123/db"
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

    _property_columns: frozenset[str] | None = None  # read once, by property_columns()

    def __init__(self, settings: Settings, client: Client, database: str) -> None:
        self.settings = settings
        self.client = client
        self.database = database
        self._lock = threading.Lock()
        self._read_only: Client | None = None
        self._dedup_settings: dict[str, Any] | None = None

    @property
    def embedded(self) -> bool:
        return self.settings.store_url.embedded

    @property
    def consistent_reads(self) -> bool:
        """Every write to this store passes through this process's :data:`~clickstream_lib.snapshot.ENGINE_GATE`
        (an embedded store, owned here), so :meth:`snapshot` keeps inserts out of a set of queries."""
        return self.embedded

    @contextlib.contextmanager
    def snapshot(self) -> Iterator[None]:
        """Hold off this store's inserts while the block runs: its queries all read the same inserts.

        Raises:
            StoreError: the store has writers in other processes (a ClickHouse server); cut the queries at one
                ingest time instead (``as_of``).
        """
        if not self.consistent_reads:
            raise StoreError(
                f"{self.settings.store_url.redacted()} has writers in other processes: its queries cannot be held "
                "to one snapshot here; cut them at one ingest time (as_of) instead"
            )
        with ENGINE_GATE.reading():
            yield

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
            self.reload_views(m.modified_views)
            if m.per_day:
                self.run_per_day(m)
            self.client.insert(f"{db}.schema_migrations", [[m.version, m.name]], column_names=["version", "name"])
            applied.append(m.version)
            logger.info("applied schema migration %d (%s) to %s", m.version, m.name, db)
        return applied

    def reload_views(self, views: Sequence[str]) -> None:
        """Detach and attach again each of ``views``, so the engine runs them as it loads them from their metadata.

        Run by :meth:`migrate` for the views a migration changed with ``MODIFY QUERY``: in the engine that ran the
        ALTER such a view derives other deduplication block ids than after a restart, so a batch stored before a
        restart and rebuilt after it under the same token was counted twice in its rollup (docs/sink.md, "Rollups
        need their own deduplication window"). An insert into the view's source between the detach and the attach
        would not reach the view: stop the sinks of a server for a migration. A view left detached by a failed
        attach is attached again at the engine's next start.
        """
        for name in views:
            view = self.table(name)
            self.client.command(f"DETACH TABLE {view}")
            try:
                self.client.command(f"ATTACH TABLE {view}")
            except ClickHouseError as exc:
                raise StoreError(
                    f"cannot attach the materialized view {view} again after a migration changed its query "
                    f"({str(exc).splitlines()[0][:300]}); inserts do not reach it until it is attached: run "
                    f"ATTACH TABLE {view}, or restart the store's process"
                ) from None
        if views:
            logger.info("reloaded %d materialized views of %s from their metadata", len(views), self.database)

    def property_columns(self) -> frozenset[str]:
        """The property keys events has a property column for (:func:`schema.property_column_statements`).

        Read once per Store: a column added later by another process is missed until the next Store, which only
        means that queries read the JSON path instead (same values, slower). Columns are never dropped.
        """
        if self._property_columns is None:
            try:
                rows = self.query_rows(
                    "SELECT name FROM system.columns WHERE database = {db:String} AND table = {table:String} "
                    "AND default_kind = 'MATERIALIZED' AND startsWith(name, {prefix:String})",
                    {"db": self.database, "table": "events", "prefix": schema.PROPERTY_COLUMN_PREFIX},
                )
            except (ClickHouseError, StoreError) as exc:  # e.g. a server user without access to system.columns
                logger.info(
                    "property columns of %s.events unknown (%s); reading properties from JSON", self.database, exc
                )
                rows = []
            keys = (schema.property_key_of_column(str(r[0])) for r in rows)
            self._property_columns = frozenset(k for k in keys if k is not None)
        return self._property_columns

    def add_property_columns(self, keys: Sequence[str]) -> list[str]:
        """Give each property key in ``keys`` a property column, filled for the events stored so far; returns the
        keys added (empty when every one had its column). Safe to re-run: an interrupted fill is redone."""
        self._property_columns = None
        have = self.property_columns()
        added = []
        for key in keys:
            if key in have:
                continue
            t0 = time.monotonic()
            try:
                for stmt in schema.property_column_statements(key, self.database):
                    self.client.command(stmt)
            except ClickHouseError as exc:
                raise StoreError(
                    f"CLICKSTREAM_PROPERTY_COLUMNS: cannot add the property column for {key!r} to "
                    f"{self.database}.events ({str(exc).splitlines()[0][:300]}); on a cluster add it by hand "
                    "(docs/analytics.md, Property columns) and leave the variable unset"
                ) from None
            added.append(key)
            logger.info(
                "property column for %r added to %s.events in %.1f s", key, self.database, time.monotonic() - t0
            )
        self._property_columns = None
        return added

    def run_per_day(self, migration: Migration) -> None:
        """Run ``migration.per_day`` for every day ``events`` holds (UTC), oldest first (nothing when it has none)."""
        if not migration.per_day:
            return
        db = self.database
        days = [r[0] for r in self.query_rows(f"SELECT DISTINCT toDate(event_time) AS d FROM {db}.events ORDER BY d")]
        for day in days:
            for stmt in migration.per_day:
                self.client.command(stmt.format(db=db), parameters={"day": day})
        logger.info("migration %d: rebuilt %d days of rollups in %s", migration.version, len(days), db)

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

        With ``dedup_token`` the insert also carries :data:`DEDUP_INSERT_SETTINGS`, so a session or profile setting
        cannot switch its deduplication off.
        """
        settings: dict[str, Any] = {}
        if dedup_token:
            settings.update(self.dedup_settings())
            settings["insert_deduplication_token"] = dedup_token
        if column_types is not None:
            settings["input_format_native_allow_types_conversion"] = 1
        gate = ENGINE_GATE.writing() if self.embedded else contextlib.nullcontext()
        try:
            with gate, self._lock:
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

    def dedup_settings(self) -> dict[str, Any]:
        """:data:`DEDUP_INSERT_SETTINGS` that this server knows (``deduplicate_insert`` is new in ClickHouse 26)."""
        if self._dedup_settings is None:
            known = getattr(self.client, "server_settings", None) or {}
            # An unknown setting fails the insert: without the server's list, only what every server has.
            names = known or _DEDUP_SETTINGS_EVERYWHERE
            self._dedup_settings = {k: v for k, v in DEDUP_INSERT_SETTINGS.items() if k in names}
        return self._dedup_settings

    def stored_offsets(self, topic: str) -> dict[int, int]:
        """The highest Kafka offset stored per partition of ``topic``, in ``events`` and ``dead_letters`` together.

        ``events`` is not ordered by offset (its key serves the dashboards), so this reads its ``kafka_topic``,
        ``kafka_partition`` and ``kafka_offset`` columns whole (docs/sink.md gives the cost); ``dead_letters`` is
        ordered by them. The sink asks once per partition that has no committed offset.
        """
        rows = self.query_rows(
            f"SELECT kafka_partition, max(o) FROM ("
            f"SELECT kafka_partition, max(kafka_offset) AS o FROM {self.table('events')} "
            "WHERE kafka_topic = {t:String} GROUP BY kafka_partition "
            "UNION ALL "
            f"SELECT kafka_partition, max(kafka_offset) AS o FROM {self.table('dead_letters')} "
            "WHERE kafka_topic = {t:String} GROUP BY kafka_partition"
            ") GROUP BY kafka_partition",
            {"t": topic},
        )
        return {int(p): int(o) for p, o in rows}

    def stored_records(self, topic: str, partition: int, offset: int) -> set[tuple[str, int]]:
        """What is stored for one Kafka record position: ``(event_id, kafka ms)`` of each event and ``(raw as hex,
        kafka ms)`` of each dead letter there — several if a re-created topic's records share the offset. Lets the
        sink tell whether stored offsets came from the topic's current log."""
        params = {"t": topic, "p": partition, "o": offset}
        where = "WHERE kafka_topic = {t:String} AND kafka_partition = {p:UInt32} AND kafka_offset = {o:UInt64}"
        rows = self.query_rows(
            f"SELECT toString(event_id), toUnixTimestamp64Milli(kafka_timestamp) FROM {self.table('events')} "
            f"{where} UNION ALL "
            f"SELECT hex(raw), toUnixTimestamp64Milli(kafka_timestamp) FROM {self.table('dead_letters')} {where}",
            params,
        )
        return {(str(key).lower(), int(ms)) for key, ms in rows}

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


def decimal_text(values: Sequence[float], scale: int) -> list[str]:
    """Numbers as the text of the ``Decimal(P, scale)`` values clickhouse-connect would store for them.

    clickhouse-connect (1.13 on) stores ``int(Decimal(str(x)) * 10**scale)``, computed exactly and truncated toward
    zero, for each value; this computes that once per distinct value and writes it as exact decimal text, which the
    engine parses into the same Decimal. (Up to 1.12 it computed with P digits, which rounded
    9999999999.999 up to 10000000000.00, past a ``Decimal(12, 2)``.)
    """
    text: dict[float, str] = {}
    mult = 10**scale
    with decimal.localcontext() as ctx:
        ctx.prec = decimal.MAX_PREC
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
    store = Store(settings, open_client(url, database), database)
    if not set(settings.property_keys) <= store.property_columns():
        store.close()
        return None  # property columns to add: the DDL path
    return store


def connect(settings: Settings, migrate: bool = True, discover: bool = True) -> Store:
    """Open the store named by ``settings``, create its database, and apply schema migrations.

    For an embedded store (``chdb:///dir``) whose directory an owner (``clickstream serve``) serves, this returns a
    :class:`ServedStore` that reaches the owner over its socket; the owner has migrated the schema. Only when no
    owner serves the directory does this process open chdb itself.

    Args:
        settings: where the store is.
        migrate: apply pending schema migrations (in-process and server stores).
        discover: look for an owner first; the owner itself opens its directory with ``discover=False``.

    Raises:
        StoreLocked: another process holds the embedded data directory in-process (not as a serving owner).
        StoreError: ClickHouse is unreachable or refused.
    """
    url = settings.store_url
    database = settings.database
    if url.embedded and discover:
        served = served_store(settings)
        if served is not None:
            return served
    if not url.embedded:
        current = _current_server_store(settings, url, database)
        if current is not None:
            return current
    try:
        client = open_client(url, memory_limit_mb=settings.memory_limit_mb)
    except StoreLocked:
        # An owner may have started between the look above and the open: its lock is the one chdb reported.
        served = served_store(settings, wait_s=OWNER_START_S) if discover else None
        if served is None:
            raise
        return served
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
        store.add_property_columns(settings.property_keys)
    return store


# --- served: one owner process per embedded directory, reached over Arrow Flight on a Unix socket ---------------

#: How long a client waits for an owner that holds its lock but has not published its address yet (starting up).
OWNER_START_S = 60.0
#: gRPC's limit on a Unix socket path (sockaddr_un.sun_path, 108 bytes with the terminating NUL), with a margin.
_MAX_SOCKET_PATH = 100
TOKEN_HEADER = "authorization"


@dataclass(frozen=True)
class ServePaths:
    """The files by which an owner publishes itself, in a 0700 directory next to the chdb directory.

    * ``owner.lock`` — the owner holds an exclusive flock on it for its whole life; the kernel releases it when the
      process dies, even by SIGKILL, so a free lock means no owner.
    * ``owner.json`` — pid, socket path and start time, written once the socket accepts calls.
    * ``token`` (0600) — a random secret every call must carry; only the user who can read it gets served.
    """

    root: Path

    @classmethod
    def for_url(cls, url: StoreURL) -> ServePaths:
        return cls(Path(url.path + ".serve"))

    @property
    def lock(self) -> Path:
        return self.root / "owner.lock"

    @property
    def info(self) -> Path:
        return self.root / "owner.json"

    @property
    def token(self) -> Path:
        return self.root / "token"

    def socket(self) -> Path:
        """Where the owner listens: in this directory, or — when that path is too long for a Unix socket — in a
        0700 directory of this user under the system's temporary directory, named after this one."""
        inside = self.root / "socket"
        if len(str(inside)) <= _MAX_SOCKET_PATH:
            return inside
        digest = hashlib.sha256(str(self.root).encode()).hexdigest()[:20]
        return Path(tempfile.gettempdir()) / f"clickstream-{os.getuid()}" / f"{digest}.sock"


def private_dir(path: Path) -> Path:
    """Create ``path`` (mode 0700) or check an existing one is this user's and not open to others.

    Raises:
        StoreError: the directory belongs to another user or cannot be made private.
    """
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = path.lstat()
    if st.st_uid != os.getuid() or not path.is_dir() or path.is_symlink():
        raise StoreError(f"{path} is not a directory of this user — remove it, or use another CLICKSTREAM_DATA_DIR")
    if st.st_mode & 0o077:
        os.chmod(path, 0o700)
    return path


def owner_lock_held(paths: ServePaths) -> bool:
    """Whether a live process holds the owner lock of ``paths`` (probed with a non-blocking flock, released at once)."""
    try:
        fd = os.open(paths.lock, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError as exc:
        return exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES)
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


@dataclass(frozen=True)
class OwnerInfo:
    """A live owner of an embedded directory, as published in ``owner.json``."""

    pid: int
    socket: str
    started: float
    paths: ServePaths

    @property
    def location(self) -> str:
        return f"grpc+unix://{self.socket}"


def _read_info(paths: ServePaths) -> OwnerInfo | None:
    try:
        raw = json.loads(paths.info.read_text())
        return OwnerInfo(int(raw["pid"]), str(raw["socket"]), float(raw["started"]), paths)
    except (OSError, ValueError, KeyError, TypeError):
        return None


def remove_owner_files(paths: ServePaths, socket: str | None = None) -> None:
    """Remove what an owner published (address, token, socket); the lock file stays, unlocked."""
    for path in (paths.info, paths.token, Path(socket) if socket else paths.socket()):
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def find_owner(settings: Settings, wait_s: float = 0.0) -> OwnerInfo | None:
    """The live owner of the embedded directory of ``settings``, or None; cleans up after a dead owner.

    An owner is live while it holds ``owner.lock``. Files left by a dead one (killed with SIGKILL, its machine
    rebooted) are removed here, so the next owner or in-process open starts clean. An owner that holds the lock but
    has not published its address yet is starting: wait up to ``wait_s`` for it (at least :data:`OWNER_START_S`
    when the lock is held, since a starting owner also holds the chdb lock).
    """
    url = settings.store_url
    if not url.embedded:
        return None
    paths = ServePaths.for_url(url)
    deadline = time.monotonic() + wait_s
    while True:
        held = owner_lock_held(paths)
        info = _read_info(paths)
        if held and info is not None:
            return info
        if not held:
            if info is not None or paths.token.exists():
                logger.warning(
                    "the owner of %s (pid %s) is gone without cleaning up; removed its socket and token",
                    url.path,
                    info.pid if info else "?",
                )
                remove_owner_files(paths, info.socket if info else None)
            return None
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.1)


def served_store(settings: Settings, wait_s: float = 0.0) -> ServedStore | None:
    """A :class:`ServedStore` on the owner of the directory of ``settings``, or None when nothing serves it.

    A starting owner (lock held, address not yet published) is waited for up to :data:`OWNER_START_S`.
    """
    paths = ServePaths.for_url(settings.store_url)
    if owner_lock_held(paths):
        wait_s = max(wait_s, OWNER_START_S)
    owner = find_owner(settings, wait_s=wait_s)
    if owner is None:
        return None
    return ServedStore(settings, owner)


def to_wire(value: Any) -> Any:
    """A query argument as JSON: times as ISO-8601 with their zone, numpy scalars as Python numbers."""
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    if isinstance(value, list | tuple | set | frozenset):
        return [to_wire(v) for v in value]
    if isinstance(value, dict):
        return {str(k): to_wire(v) for k, v in value.items()}
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    if hasattr(value, "isoformat"):
        return value.isoformat()
    raise StoreError(f"cannot send a {type(value).__name__} to the store's owner; pass strings, numbers or datetimes")


ATTRS_KEY = b"clickstream.attrs"
#: The owner's action that runs several named queries in one call (service.StoreService.get_many).
BATCH_ACTION = "queries"
#: Errors an owner sends back by name; anything else arrives as a StoreError with the owner's text.
WIRE_ERRORS: dict[str, type[errors.ClickstreamError]] = {
    cls.__name__: cls
    for cls in (errors.QueryError, errors.ConfigError, errors.StoreError, errors.StoreLocked, errors.BrokerUnavailable)
}


def error_from_wire(extra: bytes, fallback: str) -> errors.ClickstreamError:
    """Rebuild the library error an owner described in a Flight error's ``extra_info``."""
    try:
        raw = json.loads(extra.decode())
        cls = WIRE_ERRORS.get(str(raw["type"]), StoreError)
        text = str(raw["text"])
    except (ValueError, KeyError, TypeError, AttributeError):
        return StoreError(fallback)
    if issubclass(cls, ConfigError):
        variable = str(raw.get("variable") or "")
        return cls(variable, text.removeprefix(f"{variable}: "))
    return cls(text)


class ServedStore(Store):
    """A client of the owner of an embedded store (``clickstream serve``), over Arrow Flight on its Unix socket.

    It has the interface the library uses on a :class:`Store` — :func:`~clickstream_lib.queries.run` and
    :func:`~clickstream_lib.queries.read_only` hand their work to the owner, and raw reads (``query_df``,
    ``scalar``) run on the owner as read-only SQL — but it cannot write: inserts belong to the owner's sink. The
    owner runs each call on its own engine; chdb is never imported here. Safe to share between threads (each call
    is one RPC).

    When the owner goes away and another one starts, the next call reconnects to the new one; while none runs,
    calls raise :class:`~clickstream_lib.errors.StoreError` saying so.
    """

    served = True

    def __init__(self, settings: Settings, owner: OwnerInfo) -> None:
        self.settings = settings
        self.database = settings.database
        #: Calls made to the owner (one per query, or one per batch of queries).
        self.calls = 0
        self._lock = threading.Lock()
        self._attach(owner)
        info = self.action("info", timeout_s=10.0)
        if info.get("database") != self.database:
            raise StoreError(
                f"the owner of {settings.store_url.path} (pid {owner.pid}) serves database {info.get('database')}, not "
                f"{self.database} — set CLICKHOUSE_DATABASE={info.get('database')}, or use another CLICKSTREAM_DATA_DIR"
            )
        self._schema_version = int(info.get("schema_version") or 0)

    def _attach(self, owner: OwnerInfo) -> None:
        from pyarrow import flight

        try:
            token = owner.paths.token.read_bytes().strip()
        except OSError as exc:
            raise StoreError(
                f"cannot read the token of the store's owner ({owner.paths.token}: {exc.strerror}) — only the user "
                "who runs `clickstream serve` can use its store"
            ) from None
        self.owner = owner
        self._flight = flight.FlightClient(owner.location)
        self._headers = [(TOKEN_HEADER.encode(), b"Bearer " + token)]

    @property
    def client(self) -> Any:
        raise StoreError(
            "this store is served by another process (clickstream serve, pid "
            f"{self.owner.pid}); there is no ClickHouse client here — use queries.run or queries.read_only"
        )

    @client.setter
    def client(self, value: Any) -> None:
        raise AttributeError("a ServedStore has no client")

    def _options(self, timeout_s: float | None) -> Any:
        from pyarrow import flight

        return flight.FlightCallOptions(headers=self._headers, timeout=timeout_s)

    @contextlib.contextmanager
    def _rpc(self, what: str) -> Iterator[None]:
        from pyarrow import flight

        try:
            yield
        except flight.FlightError as exc:
            extra = getattr(exc, "extra_info", b"") or b""
            if extra:
                raise error_from_wire(extra, str(exc)) from None
            if isinstance(exc, flight.FlightUnauthenticatedError):
                raise _TokenRefused(str(exc)) from None  # a new owner (new token) on the same socket, or a wrong one
            if isinstance(exc, flight.FlightUnavailableError):
                raise _OwnerGone(str(exc)) from None
            raise StoreError(f"{what} on the store's owner (pid {self.owner.pid}) failed: {exc}") from None

    def _call(self, what: str, fn: Any) -> Any:
        """Run ``fn()`` (one RPC); if the owner is gone and another one serves the directory now, retry on it."""
        try:
            with self._rpc(what):
                return fn()
        except _OwnerGone as gone:
            refused = isinstance(gone, _TokenRefused)
        owner = find_owner(self.settings, wait_s=2.0)
        same = owner is not None and owner.started == self.owner.started and owner.pid == self.owner.pid
        if refused and (owner is None or same):
            raise StoreError(
                f"the owner of {self.settings.store_url.path} refused {what}: wrong token — only the user who runs "
                "`clickstream serve` can use its store"
            ) from None
        if owner is None or same:
            raise StoreError(
                f"the owner of the embedded store {self.settings.store_url.path} (pid {self.owner.pid}) is gone — "
                "start it again (`clickstream serve`, or `clickstream demo`), then retry"
            ) from None
        logger.info("the store's owner changed (pid %d -> %d); reconnecting", self.owner.pid, owner.pid)
        self._attach(owner)
        with self._rpc(what):
            return fn()

    # --- calls -------------------------------------------------------------------------------------------------

    def action(self, name: str, args: dict[str, Any] | None = None, timeout_s: float | None = 60.0) -> Any:
        """Run the owner's action ``name`` with JSON ``args`` and return its JSON answer."""
        from pyarrow import flight

        body = json.dumps(to_wire(args or {})).encode()

        def call() -> Any:
            results = list(self._flight.do_action(flight.Action(name, body), self._options(timeout_s)))
            return json.loads(results[0].body.to_pybytes()) if results else None

        return self._call(f"action {name}", call)

    def _get(self, request: dict[str, Any], what: str) -> pd.DataFrame:
        from pyarrow import flight

        ticket = flight.Ticket(json.dumps(to_wire(request)).encode())

        def call() -> pd.DataFrame:
            self.calls += 1
            return _frame(self._flight.do_get(ticket, self._options(None)).read_all())

        return self._call(what, call)

    def run_query(self, name: str, **kwargs: Any) -> pd.DataFrame:
        """The named query ``name`` run by the owner with :func:`clickstream_lib.queries.run` (same arguments)."""
        return self._get({"database": self.database, "query": name, "args": kwargs}, f"query {name}")

    def run_queries(self, asked: Sequence[tuple[str, dict[str, Any]]], consistent: bool = False) -> list[pd.DataFrame]:
        """Several named queries (``(name, arguments)`` pairs) run by the owner in one call, results in order.

        A dashboard's refresh set costs one round trip instead of one per panel. ``consistent``: the owner holds its
        inserts off while they run, so they all read the same inserts (:mod:`clickstream_lib.snapshot`).
        """
        import pyarrow as pa
        from pyarrow import flight

        request: dict[str, Any] = {"database": self.database, "queries": [[name, kwargs] for name, kwargs in asked]}
        if consistent:
            request["consistent"] = True
        action = flight.Action(BATCH_ACTION, json.dumps(to_wire(request)).encode())

        def call() -> list[pd.DataFrame]:
            self.calls += 1
            results = self._flight.do_action(action, self._options(None))
            return [_frame(pa.ipc.open_stream(result.body).read_all()) for result in results]

        frames: list[pd.DataFrame] = self._call(f"queries {', '.join(name for name, _ in asked)}", call)
        return frames

    def read_only(self, sql: str, parameters: dict[str, Any] | None = None) -> pd.DataFrame:
        """SQL run by the owner with :func:`clickstream_lib.queries.read_only` (writes, DDL and SET refused)."""
        return self._get({"database": self.database, "sql": sql, "parameters": parameters or {}}, "read-only query")

    def pipeline(self) -> ServedPipeline:
        """The owner's live pipeline (producer and sink), controllable from here."""
        from .served_pipeline import ServedPipeline

        return ServedPipeline(self)

    # --- the Store interface -----------------------------------------------------------------------------------

    @property
    def consistent_reads(self) -> bool:
        return True  # the owner's inserts and its queries share its engine's gate

    @contextlib.contextmanager
    def snapshot(self) -> Iterator[None]:
        raise StoreError(
            "a served store's snapshot is held by its owner for one call: run the queries together with "
            "queries.run_many(store, asked, consistent=True)"
        )
        yield  # pragma: no cover - a generator, for contextmanager

    def fork(self) -> ServedStore:
        return ServedStore(self.settings, self.owner)

    def schema_version(self) -> int:
        return self._schema_version

    def migrate(self) -> list[int]:
        return []  # the owner migrated when it opened the store

    def add_property_columns(self, keys: Sequence[str]) -> list[str]:
        missing = [k for k in keys if k not in self.property_columns()]
        if missing:
            raise StoreError(
                f"property columns for {', '.join(map(repr, missing))} are added by the owner of "
                f"{self.settings.store_url.path} when it starts: set CLICKSTREAM_PROPERTY_COLUMNS for "
                "`clickstream serve` and restart it"
            )
        return []

    def dedup_window(self, table: str = "events") -> int:
        ddl = str(self.scalar(f"SHOW CREATE TABLE {self.table(table)}"))
        m = re.search(r"non_replicated_deduplication_window\s*=\s*(\d+)", ddl)
        return int(m.group(1)) if m else 0

    def insert(self, table: str, *args: Any, **kwargs: Any) -> int:
        raise StoreLocked(
            f"the embedded store {self.settings.store_url.path} is served by `clickstream serve` (pid "
            f"{self.owner.pid}), which runs the sink: clients of an owner read only. Control its pipeline "
            "(ServedStore.pipeline(), the workbench) or stop the owner to write from this process"
        )

    def query_df(self, sql: str, parameters: dict[str, Any] | None = None) -> Any:
        return self.read_only(sql, parameters)

    def query_rows(self, sql: str, parameters: dict[str, Any] | None = None) -> list[tuple[Any, ...]]:
        df = self.read_only(sql, parameters)
        return [tuple(row) for row in df.itertuples(index=False, name=None)]

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._flight.close()


def _frame(table: Any) -> pd.DataFrame:
    """A served result as the DataFrame the owner made: its ``attrs`` travel in the schema metadata."""
    df = table.to_pandas()
    meta = table.schema.metadata or {}
    if ATTRS_KEY in meta:
        df.attrs.update(json.loads(meta[ATTRS_KEY]))
    return df


class _OwnerGone(Exception):
    """The owner's socket refused the connection (internal: ServedStore reconnects or raises StoreError)."""


class _TokenRefused(_OwnerGone):
    """The socket's owner refused the token (internal: the owner was replaced, or the token is wrong)."""
