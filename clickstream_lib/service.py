"""The owner of an embedded store directory: ``clickstream serve``.

chdb lets one process use a data directory. :class:`StoreService` is that process for the directory of its settings:
it opens the engine once, runs the live pipeline (the sink, and on request the generator/producer: a
:class:`~clickstream_lib.pipeline.Pipeline`), and serves every other process of this machine with Arrow Flight over
a Unix socket. A client (:class:`~clickstream_lib.store.ServedStore`, returned by ``connect()`` when an owner runs)
asks for:

* ``do_get`` with a JSON ticket: ``{"query": name, "args": {...}}`` runs :func:`clickstream_lib.queries.run` here;
  ``{"sql": ..., "parameters": {...}}`` runs :func:`clickstream_lib.queries.read_only`. The answer is an Arrow
  table; the DataFrame's ``attrs`` (``query``, ``source``) travel in the schema metadata.
* ``do_action`` with a JSON body: ``info`` (pid, database, schema version), ``pipeline.<method>`` (start, stop,
  start_producer, stop_producer, start_sink, stop_sink, set_rate, set_scenario, stats, state);
  ``alerts.record`` (rows for ``alert_events`` or ``alert_pending`` only: an ``alerts check`` run by cron while the
  owner runs); ``queries`` with ``{"queries": [[name, {...}], ...]}`` runs several named queries in one call (a
  dashboard's refresh set) and answers one result per query, each an Arrow IPC stream of its table, in the order
  asked; with ``"consistent": true`` no insert lands while they run (:mod:`clickstream_lib.snapshot`).

Clients never send SQL that runs other than read-only. Only the same user is served: the socket and the token file
live in a 0700 directory, and every call must carry the token (``authorization: Bearer <token>``); a call without
it is refused by the server middleware before any handler runs. How clients find an owner, and how a dead owner's
files are cleaned up, is in :mod:`clickstream_lib.store` (:class:`~clickstream_lib.store.ServePaths`) and
docs/deployment.md.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import hmac
import json
import logging
import os
import queue
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pyarrow as pa
from pyarrow import flight

from . import queries
from .errors import ClickstreamError, ConfigError, StoreError, StoreLocked
from .pipeline import Pipeline
from .settings import Settings
from .store import (
    ATTRS_KEY,
    BATCH_ACTION,
    TOKEN_HEADER,
    OwnerInfo,
    ServePaths,
    Store,
    connect,
    private_dir,
    remove_owner_files,
    to_wire,
)

logger = logging.getLogger(__name__)

#: Engine clients for the clients' queries, apart from the sink's: two serve two viewers at once on two cores,
#: and the sink never waits behind a dashboard.
QUERY_CLIENTS = 2
#: Identical requests within this many seconds share one run (see StoreService.get): below any refresh period a
#: dashboard offers, so a page never shows an answer older than its own previous refresh.
SHARE_S = 1.0
PIPELINE_METHODS = (
    "start",
    "stop",
    "start_producer",
    "stop_producer",
    "start_sink",
    "stop_sink",
    "set_rate",
    "set_scenario",
    "stats",
    "state",
)


def _json(value: Any) -> bytes:
    return json.dumps(value, default=str).encode()


def to_arrow(df: Any) -> pa.Table:
    """A pandas DataFrame as an Arrow table, ``df.attrs`` in the schema metadata.

    Values Arrow has no type for (a UUID column of read-only SQL) are sent as their text.
    """
    try:
        table = pa.Table.from_pandas(df, preserve_index=False)
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
        df = df.copy()
        for col in df.columns:
            if df[col].dtype == object:
                try:
                    pa.array(df[col], from_pandas=True)
                except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
                    df[col] = df[col].map(lambda v: v if v is None else str(v))
        table = pa.Table.from_pandas(df, preserve_index=False)
    meta = dict(table.schema.metadata or {})
    meta[ATTRS_KEY] = json.dumps(to_wire(dict(df.attrs))).encode()
    return table.replace_schema_metadata(meta)


def ipc_stream(table: pa.Table) -> pa.Buffer:
    """``table`` as the bytes of one Arrow IPC stream (a result of the batch action)."""
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue()


def _error(exc: BaseException) -> flight.FlightError:
    """A handler's failure as a Flight error; library errors carry their class and text in ``extra_info``."""
    if isinstance(exc, ClickstreamError):
        extra = {"type": type(exc).__name__, "text": str(exc), "variable": getattr(exc, "variable", None)}
        return flight.FlightServerError(str(exc), extra_info=_json(extra))
    logger.exception("a served call failed")
    text = f"{type(exc).__name__}: {exc}"
    return flight.FlightServerError(text, extra_info=_json({"type": "StoreError", "text": text}))


class _TokenCheck(flight.ServerMiddlewareFactory):
    """Refuses every call that does not carry the owner's token."""

    def __init__(self, token: str) -> None:
        super().__init__()
        self._expected = f"Bearer {token}".encode()

    def start_call(self, info: Any, headers: dict[str, list[Any]]) -> None:
        values = headers.get(TOKEN_HEADER) or [""]
        given = values[0].encode() if isinstance(values[0], str) else bytes(values[0])
        if not hmac.compare_digest(given, self._expected):
            raise flight.FlightUnauthenticatedError("this store is served to its owner's user only (token missing)")
        return None


class _FlightServer(flight.FlightServerBase):
    def __init__(self, service: StoreService, location: str, token: str) -> None:
        super().__init__(location, middleware={"token": _TokenCheck(token)})
        self.service = service

    def do_get(self, context: Any, ticket: flight.Ticket) -> flight.RecordBatchStream:
        try:
            return flight.RecordBatchStream(self.service.get(json.loads(ticket.ticket)))
        except Exception as exc:
            raise _error(exc) from None

    def do_action(self, context: Any, action: flight.Action) -> list[flight.Result]:
        try:
            body = action.body.to_pybytes() if action.body is not None else b""
            request = json.loads(body or b"{}")
            if action.type == BATCH_ACTION:
                return [flight.Result(ipc_stream(table)) for table in self.service.get_many(request)]
            answer = self.service.act(action.type, request)
        except Exception as exc:
            raise _error(exc) from None
        return [flight.Result(pa.py_buffer(_json(answer)))]

    def list_actions(self, context: Any) -> list[tuple[str, str]]:
        return [
            ("info", "owner pid, database, schema version"),
            ("alerts.record", "store alert firings, resolutions and pending keys (alert_events, alert_pending)"),
            (BATCH_ACTION, "several named queries in one call; one Arrow IPC stream per query"),
        ] + [(f"pipeline.{m}", f"Pipeline.{m} on the owner's live pipeline") for m in PIPELINE_METHODS]


class StoreService:
    """Own one embedded store directory and serve it (see the module docstring).

    Args:
        settings: the store (must be embedded, ``chdb://``), Kafka and the topic/group the sink uses.
        sink: start the sink at once.
        produce: start the generator/producer at once (the demo's live pipeline).
        rate: events/s of the producer.
        seed: the generator's seed (None: random).
        query_clients: engine clients that run the clients' queries.
        share_s: identical requests within this many seconds share one run (0: every request runs).
        alert_rules: a rules file (docs/alerts.md) to evaluate every ``alert_interval_s`` seconds in this process,
            delivering to the receivers the settings name; None: ``settings.alert_rules`` (CLICKSTREAM_ALERT_RULES),
            "" for none. Read and validated here, so a bad file fails before anything starts.
        alert_interval_s: seconds between evaluations of the rules.

    Example:
        >>> service = StoreService(Settings.from_env(), produce=True, rate=500)
        >>> owner = service.start()     # returns once the socket accepts calls
        >>> service.stop()              # the sink stores and commits what it has; the files are removed
    """

    def __init__(
        self,
        settings: Settings,
        *,
        sink: bool = True,
        produce: bool = False,
        rate: float = 200.0,
        seed: int | None = None,
        query_clients: int = QUERY_CLIENTS,
        share_s: float = SHARE_S,
        alert_rules: str | None = None,
        alert_interval_s: float = 60.0,
    ) -> None:
        url = settings.store_url
        if not url.embedded:
            raise ConfigError(
                "CLICKHOUSE_URL",
                f"{url.redacted()} is a ClickHouse server; `clickstream serve` owns an embedded store (chdb:///dir). "
                "With a server, run `clickstream consume` and `clickstream produce` instead",
            )
        self.settings = settings
        self.paths = ServePaths.for_url(url)
        self.start_sink = sink
        self.start_producer = produce
        self.rate = float(rate)
        self.seed = seed
        self.query_clients = max(1, int(query_clients))
        self.store: Store | None = None
        self.pipeline: Pipeline | None = None
        self.owner: OwnerInfo | None = None
        self._pool: queue.Queue[Store] = queue.Queue()
        self._forks: list[Store] = []
        self._server: _FlightServer | None = None
        self._lock_fd: int | None = None
        self._pipeline_lock = threading.Lock()
        self._stopped = threading.Event()
        self.share_s = float(share_s)
        self._shared: dict[str, tuple[float, Any]] = {}
        self._gates: dict[str, threading.Lock] = {}
        self._shared_lock = threading.Lock()
        self.alert_rules = settings.alert_rules if alert_rules is None else alert_rules
        if alert_interval_s <= 0:
            raise ConfigError("--alert-interval", f"{alert_interval_s:g} s must be longer than 0")
        self.alert_interval_s = float(alert_interval_s)
        self._rules: Any = None
        if self.alert_rules:
            from .alerts import load_rules

            self._rules = load_rules(self.alert_rules)
            if not len(self._rules):
                raise ConfigError(self.alert_rules, "has no [[rule]] tables")
        self.alerts: Any = None  # the AlertRunner while it runs
        self._alert_dispatcher: Any = None

    # --- life cycle --------------------------------------------------------------------------------------------

    def start(self) -> OwnerInfo:
        """Take the directory, open the engine, start the pipeline as asked and serve; returns the published owner.

        Raises:
            StoreLocked: another owner serves the directory, or another process holds it in-process.
            StoreError: the engine or the socket cannot be opened.
        """
        private_dir(self.paths.root)
        self._take_owner_lock()
        try:
            self.store = connect(self.settings, discover=False)
            for _ in range(self.query_clients):
                fork = self.store.fork()
                self._forks.append(fork)
                self._pool.put(fork)
            sock = self.paths.socket()
            private_dir(sock.parent)
            with contextlib.suppress(FileNotFoundError):
                sock.unlink()  # left by a dead owner; the owner lock says none is alive
            token = secrets.token_hex(32)
            fd = os.open(self.paths.token, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                os.fchmod(f.fileno(), 0o600)
                f.write(token)
            self._server = _FlightServer(self, f"grpc+unix://{sock}", token)
            os.chmod(sock, 0o600)
            if self.start_sink or self.start_producer:
                pipeline = self._pipeline()
                if self.start_sink:
                    pipeline.start_sink()
                if self.start_producer:
                    pipeline.start_producer()
            if self._rules is not None:
                self._start_alerts()
            self.owner = OwnerInfo(os.getpid(), str(sock), time.time(), self.paths)
            tmp = self.paths.info.with_suffix(".tmp")
            published = {"pid": self.owner.pid, "socket": self.owner.socket, "started": self.owner.started}
            tmp.write_text(json.dumps(published))
            tmp.replace(self.paths.info)
        except BaseException:
            self.stop()
            raise
        logger.info("serving %s on %s (pid %d)", self.settings.store_url.path, self.owner.socket, self.owner.pid)
        return self.owner

    def _start_alerts(self) -> None:
        from .alerts import AlertRunner, Dispatcher, notifiers_from_settings

        assert self.store is not None
        # Delivery runs in the dispatcher's own threads: a dead receiver never holds up evaluation, the sink or a
        # client's query. The evaluating thread has an engine client of its own, as the sink does.
        self._alert_dispatcher = Dispatcher(notifiers_from_settings(self.settings))
        self.alerts = AlertRunner(
            self.store.fork(), self._rules, dispatcher=self._alert_dispatcher, rules_path=self.alert_rules
        )
        self.alerts.start(self.alert_interval_s)
        logger.info(
            "evaluating %d alert rule(s) of %s every %g s; delivering to %s",
            len(self._rules),
            self.alert_rules,
            self.alert_interval_s,
            ", ".join(self._alert_dispatcher.labels) or "nowhere (no receiver set)",
        )

    def _stop_alerts(self) -> None:
        if self.alerts is not None:
            if self.alerts.stop(30.0):  # an evaluation under way finishes its queries first
                self.alerts.store.close()
            self.alerts = None
        if self._alert_dispatcher is not None:
            self._alert_dispatcher.close(2.0)  # messages a dead receiver still holds are logged, not waited for
            self._alert_dispatcher = None

    def _take_owner_lock(self) -> None:
        fd = os.open(self.paths.lock, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            pid = ""
            with contextlib.suppress(OSError, ValueError, KeyError):
                pid = f" (pid {json.loads(self.paths.info.read_text())['pid']})"
            raise StoreLocked(
                f"the embedded store {self.settings.store_url.path} already has an owner{pid}: one `clickstream serve` "
                "per data directory. Use that one — every process of this machine reaches the store through it — or "
                "stop it first"
            ) from None
        self._lock_fd = fd

    def wait(self, timeout_s: float | None = None) -> bool:
        """Block until :meth:`stop` ran (True) or ``timeout_s`` passed (False)."""
        return self._stopped.wait(timeout_s)

    def stop(self) -> None:
        """Stop serving, stop the pipeline (the sink stores and commits what it has), close the engine, clean up."""
        with contextlib.suppress(FileNotFoundError):
            self.paths.info.unlink()  # new clients look elsewhere from now on
        try:
            self._stop_alerts()
        except Exception:
            logger.exception("stopping the alert evaluation failed")
        if self.pipeline is not None:
            try:
                self.pipeline.close()
            except Exception:
                logger.exception("stopping the pipeline failed")
            self.pipeline = None
        if self._server is not None:
            with contextlib.suppress(Exception):
                self._server.shutdown()
            self._server = None
        for fork in self._forks:
            fork.close()
        self._forks.clear()
        if self.store is not None:
            self.store.close()
            self.store = None
        if self._lock_fd is not None:
            remove_owner_files(self.paths, self.owner.socket if self.owner else None)
            os.close(self._lock_fd)  # releases the owner lock
            self._lock_fd = None
        self._stopped.set()

    def __enter__(self) -> StoreService:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- handlers ----------------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _client(self) -> Iterator[Store]:
        store = self._pool.get()
        try:
            yield store
        finally:
            self._pool.put(store)

    def get(self, request: dict[str, Any]) -> pa.Table:
        """Run a client's query (named, or read-only SQL) and return its result as Arrow.

        Identical requests within :attr:`share_s` seconds share one run: viewers of the same dashboard ask the same
        questions on every refresh, so N viewers cost the engine about what one does. A request that arrives while
        the same one runs waits for its answer.
        """
        self._check_database(request)
        table: pa.Table = self._shared_run(request, lambda: self._run(request))
        return table

    def get_many(self, request: dict[str, Any]) -> list[pa.Table]:
        """Run the named queries of a batch (``{"queries": [[name, args], ...]}``) as :meth:`get` runs each.

        One call for a dashboard's whole refresh set: a client pays the round trip once, not once per panel. With
        ``"consistent": true`` the batch holds the engine's inserts off while it runs (:mod:`clickstream_lib.snapshot`),
        so its queries all read the same inserts; such a batch is shared whole, never mixed with another's answers.
        """
        asked = request.get("queries")
        if not isinstance(asked, list) or not all(isinstance(q, list) and len(q) == 2 for q in asked):
            raise StoreError('a batch of queries is {"queries": [[name, {arguments}], ...]}')
        self._check_database(request)
        database = request.get("database")
        requests = [{"database": database, "query": name, "args": args} for name, args in asked]
        if request.get("consistent"):

            def snapshot() -> list[pa.Table]:
                assert self.store is not None
                with self.store.snapshot():
                    return self._run_all(requests, self._run)

            tables: list[pa.Table] = self._shared_run(request, snapshot)
            return tables
        return self._run_all(requests, self.get)

    def _run_all(self, requests: list[dict[str, Any]], run: Callable[[dict[str, Any]], pa.Table]) -> list[pa.Table]:
        if len(requests) < 2 or self.query_clients < 2:
            return [run(r) for r in requests]
        # The batch's queries share the engine clients, so a refresh set takes about half its serial time on two.
        with ThreadPoolExecutor(min(self.query_clients, len(requests)), thread_name_prefix="batch") as pool:
            return list(pool.map(run, requests))

    def _check_database(self, request: dict[str, Any]) -> None:
        database = request.get("database")
        if database not in (None, self.settings.database):
            raise StoreError(f"this owner serves database {self.settings.database}, not {database}")

    def _shared_run(self, request: dict[str, Any], run: Callable[[], Any]) -> Any:
        """``run()``, or the answer of an identical ``request`` run within :attr:`share_s` seconds (see :meth:`get`)."""
        if self.share_s <= 0:
            return run()
        key = json.dumps(request, sort_keys=True)
        with self._shared_lock:
            gate = self._gates.setdefault(key, threading.Lock())
        with gate:
            hit = self._shared.get(key)
            if hit is not None and time.monotonic() - hit[0] < self.share_s:
                return hit[1]
            answer = run()
            with self._shared_lock:
                now = time.monotonic()
                self._shared[key] = (now, answer)
                for old in [k for k, (t, _) in self._shared.items() if now - t >= self.share_s]:
                    del self._shared[old]
                    self._gates.pop(old, None)
            return answer

    def _run(self, request: dict[str, Any]) -> pa.Table:
        with self._client() as store:
            if "query" in request:
                args = dict(request.get("args") or {})
                df = queries.run(store, str(request["query"]), **args)
            elif "sql" in request:
                df = queries.read_only(store, str(request["sql"]), dict(request.get("parameters") or {}))
            else:
                raise StoreError("a served call names a query or read-only SQL")
        return to_arrow(df)

    def act(self, name: str, args: dict[str, Any]) -> Any:
        """Run a client's action (``info`` or ``pipeline.<method>``) and return its JSON-able answer."""
        if name == "info":
            assert self.store is not None
            return {
                "pid": os.getpid(),
                "database": self.settings.database,
                "schema_version": self.store.schema_version(),
                "store": self.settings.store_url.path,
                "pipeline": self.pipeline is not None,
            }
        if name == "alerts.record":
            from .alerts.history import write_rows

            with self._client() as store:
                table, columns = str(args.get("table")), list(args.get("columns") or [])
                rows = write_rows(store, table, columns, list(args.get("rows") or []))
            return {"rows": rows}
        method = name.removeprefix("pipeline.")
        if not name.startswith("pipeline.") or method not in PIPELINE_METHODS:
            known = ", ".join(["info", "alerts.record", *(f"pipeline.{m}" for m in PIPELINE_METHODS)])
            raise ConfigError("action", f"{name!r} is not an action of the store's owner; expected one of {known}")
        with self._pipeline_lock:
            if self.pipeline is None and method in ("stats", "state", "stop", "stop_producer", "stop_sink"):
                # Nothing started yet: answer without creating the pipeline (its producer connects to Kafka).
                if method == "state":
                    return {"rate": self.rate, "scenarios": {}}
                return {"producer": "stopped", "sent": 0, "acked": 0, "sink": "stopped", "rows_inserted": 0}
            pipeline = self._pipeline()
            if method == "stats":
                return pipeline.stats()
            if method == "state":
                return pipeline.state()
            if method == "set_rate":
                pipeline.set_rate(float(args["rate"]))
            elif method == "set_scenario":
                pipeline.set_scenario(str(args["name"]), bool(args.get("on", True)))
            elif method in ("start", "start_producer"):
                events = args.get("events")
                getattr(pipeline, method)(int(events) if events else None)
            else:
                getattr(pipeline, method)()
            return pipeline.stats()

    def _pipeline(self) -> Pipeline:
        if self.pipeline is None:
            assert self.store is not None
            self.pipeline = Pipeline(
                self.settings,
                self.store,
                rate=self.rate,
                seed=self.seed,
                sink_options={"instance_id": instance_id(self.settings)},
            )
        return self.pipeline


def instance_id(settings: Settings) -> str:
    """The sink's static group-membership id: the same for every owner of one directory on one host, so an owner
    started after a crash takes the partitions back at once instead of waiting out the dead one's session."""
    digest = hashlib.sha256(str(Path(settings.store_url.path).resolve()).encode()).hexdigest()[:10]
    return f"serve-{socket.gethostname()}-{digest}"
