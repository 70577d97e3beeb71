"""The ClickHouse store: embedded chdb (``chdb:///dir``) or a server URL, schema migrations, inserts.

Embedded mode runs the real ClickHouse engine in-process. chdb locks its data directory: one process per
directory and one directory per process. :func:`connect` detects a held lock (chdb only prints the cause to stderr)
and raises :class:`~clickstream_lib.errors.StoreLocked` saying who holds it and how to go multi-process.
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
            schema.table_ddl(schema.EVENTS, dedup_window=DEDUP_WINDOW, projections=False),
            schema.table_ddl(schema.DEAD_LETTERS, dedup_window=DEDUP_WINDOW, projections=False),
        ),
    ),
    Migration(2, "rollups (schema.ROLLUPS) and the views that keep them", schema.rollup_statements()),
    Migration(
        3,
        "projections: events by user (per-user passes), users_by_day totals per user (top users)",
        schema.projection_statements(),
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
    who = f"process {pid}" if pid else "another process"
    if pid and pid == os.getpid():
        who = "this process (through another data directory or client)"
    cmd = ""
    if pid:
        with contextlib.suppress(OSError):
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    return StoreLocked(
        f"the embedded ClickHouse store {directory} is held by {who}"
        + (f" ({cmd[:120]})" if cmd else "")
        + " — chdb allows one process per data directory. Stop that process, use another CLICKSTREAM_DATA_DIR, "
        "or go multi-process with a ClickHouse server: set CLICKHOUSE_URL=http://user:password@host:8123/db "
        "(docker compose up brings one)"
    )


_embedded_path: str | None = None
_embedded_lock = threading.Lock()


def open_client(url: StoreURL, database: str | None = None, settings: dict[str, Any] | None = None) -> Client:
    """A raw clickhouse-connect client for ``url`` (no migrations). Wraps connection failures in StoreError."""
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
            try:
                client = clickhouse_connect.get_client(dsn=f"chdb://{directory}", database=database, settings=settings)
            except Exception as exc:  # chdb raises ProgrammingError/RuntimeError with a generic text
                pid = _lock_holder(directory)
                if pid is not None:
                    raise _locked_error(directory, pid) from exc
                raise StoreError(f"cannot open the embedded ClickHouse store {directory}: {exc}") from exc
            _embedded_path = real
            return client
    try:
        return clickhouse_connect.get_client(**server_client_args(url, database, settings))
    except Exception as exc:
        raise server_error(url, exc) from None


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
    return text.replace(url.password, "***") if url.password else text


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

    @property
    def embedded(self) -> bool:
        return self.settings.store_url.embedded

    def fork(self) -> Store:
        """Another client on the same store, for use from another thread."""
        return Store(self.settings, open_client(self.settings.store_url, self.database), self.database)

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
            raise StoreError(f"insert into {self.table(table)} failed: {exc}") from exc
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

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.client.close()


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
    client = open_client(url)
    try:
        client.command(f"CREATE DATABASE IF NOT EXISTS {database}")
    except ClickHouseError as exc:
        raise StoreError(f"cannot create database {database} at {url.redacted()}: {_scrub(str(exc), url)}") from None
    # Reopen with the database as the session default, so read-only SQL (`clickstream query --sql`) can name
    # tables without the database prefix, on chdb as on a server.
    client.close()
    client = open_client(url, database)
    store = Store(settings, client, database)
    if migrate:
        store.migrate()
    return store
