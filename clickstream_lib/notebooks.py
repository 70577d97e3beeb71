"""Running and serving the notebooks: papermill reports, the Voila dashboard, the demo.

- :func:`run_report` executes ``notebooks/report.ipynb`` with papermill, strips widget state from the executed copy
  (an executed plotly notebook carries a 5 MB bundle in ``metadata.widgets``) and exports HTML without code cells.
- :class:`VoilaServer` serves a notebook with Voila on 127.0.0.1 only. Its kernels are culled on the server side
  (:class:`KernelCulling`, :mod:`clickstream_lib.culling`): a kernel without an open page is shut down after
  ``page_timeout_s``, whatever its activity, so a killed browser or a ``curl`` of the page costs one short-lived
  kernel. It also passes ``--Voila.tornado_settings disable_check_xsrf=True`` because Voila 0.5.13's
  kernel-shutdown beacon fails the XSRF check (voila issue 1458); with it a closed tab ends its kernel at once
  rather than after the timeout. Turning the check off is only acceptable because the server is bound to loopback.
- :func:`run_demo` starts the local Kafka broker, the store's owner (:class:`OwnerProcess`, ``clickstream serve``)
  with a live pipeline, and the dashboard.

Notebook kernels are separate processes; they read :class:`~clickstream_lib.settings.Settings` from their
environment, so these helpers hand the settings over as environment variables (:func:`settings_env`) and pass
notebook parameters to served notebooks as JSON in ``NOTEBOOK_PARAMS`` (read back by :func:`served_parameters`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import ConfigError, NotebookError
from .settings import ENV_VARS, Settings

if TYPE_CHECKING:
    import nbformat

    from .store import Store

logger = logging.getLogger(__name__)

NOTEBOOKS = ("workbench", "dashboard", "report")
PARAMS_ENV = "NOTEBOOK_PARAMS"
WIDGET_VIEW_MIME = "application/vnd.jupyter.widget-view+json"
DEFAULT_PORT = 8866
# A static file of Voila's page: answers once the server serves HTTP, and starts no kernel (every GET of the notebook
# itself does). docker-compose.yml's healthcheck asks for the same path.
HEALTH_PATH = "voila/static/voila.js"
CULLING_MANAGER = "clickstream_lib.culling.PageCullingKernelManager"
# Cells whose JSON output carries machine-readable results (see record()).
RECORD_MIME = "application/json"

_env_lock = threading.Lock()


# --- locating notebooks and passing settings/parameters ------------------------------------------------------------


def notebook_path(name: str | Path) -> Path:
    """The path of a shipped notebook (``"dashboard"``) or of any existing ``.ipynb`` file.

    Raises:
        ConfigError: no such notebook.
    """
    candidate = Path(name)
    if candidate.suffix == ".ipynb" and candidate.is_file():
        return candidate.resolve()
    stem = candidate.stem if candidate.suffix == ".ipynb" else str(name)
    # A source checkout keeps notebooks/ next to the package; a wheel ships them as package data.
    repo = Path(__file__).resolve().parent.parent / "notebooks" / f"{stem}.ipynb"
    if repo.is_file():
        return repo
    packaged = resources.files("clickstream_lib").joinpath(f"notebook_files/{stem}.ipynb")
    if packaged.is_file():
        return Path(str(packaged))
    raise ConfigError("notebook", f"{name!r} not found; expected one of {', '.join(NOTEBOOKS)} or a path to .ipynb")


def settings_env(settings: Settings, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """An environment in which ``Settings.from_env()`` rebuilds ``settings`` (for kernels and servers).

    Variables of ``base`` (default ``os.environ``) that Settings reads are replaced, so nothing stale leaks in.
    """
    env = {k: v for k, v in (os.environ if base is None else base).items() if k not in ENV_VARS}
    for var, name in ENV_VARS.items():
        value = getattr(settings, name)
        if isinstance(value, bool):
            env[var] = "true" if value else "false"
        elif value not in ("", 0, None):
            env[var] = str(value)
    return env


def served_parameters(**defaults: Any) -> dict[str, Any]:
    """The notebook's parameters, overridden by the JSON object in ``NOTEBOOK_PARAMS`` when a server passed one.

    Voila cannot inject a papermill ``parameters`` cell, so :class:`VoilaServer` passes parameters through the
    kernel's environment. Only names present in ``defaults`` are accepted and values keep the defaults' types.

    Raises:
        ConfigError: ``NOTEBOOK_PARAMS`` is not a JSON object, names an unknown parameter or has a wrong type.
    """
    raw = os.environ.get(PARAMS_ENV, "")
    if not raw:
        return dict(defaults)
    try:
        given = json.loads(raw)
    except json.JSONDecodeError as exc:
        example = '{"refresh_s": 5}'
        raise ConfigError(PARAMS_ENV, f"is not valid JSON ({exc}); expected an object like {example}") from None
    if not isinstance(given, dict):
        raise ConfigError(PARAMS_ENV, "expected a JSON object of parameter names to values")
    out = dict(defaults)
    for key, value in given.items():
        if key not in defaults:
            known = ", ".join(defaults)
            raise ConfigError(PARAMS_ENV, f"{key!r} is not a parameter of this notebook; expected one of {known}")
        out[key] = _as_type_of(defaults[key], value, key)
    return out


def _as_type_of(default: Any, value: Any, key: str) -> Any:
    if default is None or value is None:
        return value
    kind = type(default)
    if kind is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(PARAMS_ENV, f"{key}={value!r} must be true or false")
    if kind is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if kind is int and isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, kind):
        return value
    raise ConfigError(PARAMS_ENV, f"{key}={value!r} must be a {kind.__name__}")


def parse_param(text: str) -> tuple[str, Any]:
    """Parse ``name=value`` as papermill's ``-p`` does: ints, floats, true/false/none, else a string.

    Raises:
        ConfigError: no ``=`` or an empty name.
    """
    name, sep, raw = text.partition("=")
    name = name.strip()
    if not sep or not name.isidentifier():
        raise ConfigError("--param", f"{text!r} is not name=value (e.g. --param start=2026-11-01)")
    low = raw.strip().lower()
    if low in ("true", "false"):
        return name, low == "true"
    if low in ("none", "null"):
        return name, None
    for conv in (int, float):
        with contextlib.suppress(ValueError):
            return name, conv(raw)
    return name, raw


@contextlib.contextmanager
def _environ(env: Mapping[str, str] | None) -> Iterator[None]:
    """Temporarily replace ``os.environ``: kernels started inside inherit it (nbclient offers no env argument)."""
    if env is None:
        yield
        return
    with _env_lock:
        saved = dict(os.environ)
        os.environ.clear()
        os.environ.update(env)
        try:
            yield
        finally:
            os.environ.clear()
            os.environ.update(saved)


# --- notebook hygiene -------------------------------------------------------------------------------------------


def strip_widget_state(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """Drop saved widget state (``metadata.widgets``) and widget-view outputs that cannot render without it."""
    nb.metadata.pop("widgets", None)
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        kept = []
        for output in cell.get("outputs", []):
            data = output.get("data")
            if data and WIDGET_VIEW_MIME in data:
                data.pop(WIDGET_VIEW_MIME)
                # A FigureWidget's text/plain fallback is just its repr; nothing worth keeping.
                if set(data) <= {"text/plain"}:
                    continue
            kept.append(output)
        cell["outputs"] = kept
    return nb


def strip_outputs(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """What goes into git: no outputs, no execution counts, no widget state (cell tags are kept)."""
    strip_widget_state(nb)
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell["outputs"] = []
            cell["execution_count"] = None
        cell.metadata.pop("execution", None)
        cell.metadata.pop("papermill", None)
    nb.metadata.pop("papermill", None)
    return nb


def has_outputs(nb: nbformat.NotebookNode) -> list[str]:
    """Reasons ``nb`` is not clean for git (empty when it is)."""
    problems: list[str] = []
    if "widgets" in nb.metadata:
        problems.append("metadata.widgets (saved widget state)")
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code" and cell.get("outputs"):
            problems.append(f"cell {i} has outputs")
        if cell.cell_type == "code" and cell.get("execution_count") is not None:
            problems.append(f"cell {i} has an execution count")
    return problems


def record(name: str, value: Any) -> None:
    """Display ``value`` as JSON tagged with ``name`` so that tools can read results out of an executed notebook.

    Renders as a collapsed JSON tree in JupyterLab and is read back by :func:`recorded`.
    """
    from IPython.display import display

    display({RECORD_MIME: {"name": name, "value": value}}, raw=True)


def record_frame(name: str, df: Any) -> None:
    """:func:`record` a pandas DataFrame as a list of row objects (timestamps as ISO strings)."""
    record(name, json.loads(df.to_json(orient="records", date_format="iso", default_handler=str)))


def report_arguments(start: str = "", end: str = "", **filters: str) -> dict[str, Any]:
    """Query keyword arguments from a report's string parameters: empty strings mean "no restriction".

    ``start``/``end`` are ISO dates or timestamps (UTC when no zone is given).

    Raises:
        ConfigError: a date does not parse.
    """
    from datetime import UTC, datetime

    out: dict[str, Any] = {}
    for key, raw in (("start", start), ("end", end)):
        if raw in ("", None):
            continue
        try:
            value = datetime.fromisoformat(str(raw).replace("Z", "+00:00"))
        except ValueError:
            example = "e.g. 2026-11-29 or 2026-11-29T10:00"
            raise ConfigError(key, f"{raw!r} is not an ISO date or timestamp ({example})") from None
        out[key] = value if value.tzinfo else value.replace(tzinfo=UTC)
    out.update({k: v for k, v in filters.items() if v not in ("", None)})
    return out


def report_cut(store: Store) -> dict[str, Any]:
    """``{"as_of": T}``, T the newest ingest time stored when a report starts (``{}`` while the store is empty).

    Every query given it reads the events stored by then (``as_of`` in :func:`clickstream_lib.query_engine.plan`),
    so a report's cells agree with each other while a pipeline stores more. Such a query reads raw events: rollups
    have no ingest time (estimates, ``source="approx"``, still come from them, uncut).
    """
    import pandas as pd

    from . import queries

    value = queries.freshness(store)["newest_ingest_time"].iloc[0]
    return {} if value is None or pd.isna(value) else {"as_of": value}


def recorded(nb: nbformat.NotebookNode) -> dict[str, Any]:
    """Everything :func:`record` displayed in an executed notebook: name -> value."""
    out: dict[str, Any] = {}
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            payload = output.get("data", {}).get(RECORD_MIME)
            if isinstance(payload, dict) and "name" in payload:
                out[payload["name"]] = payload.get("value")
    return out


# --- papermill --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReportResult:
    """Files written by :func:`run_report`."""

    notebook: Path
    html: Path
    parameters: dict[str, Any]


def run_report(
    settings: Settings,
    out_dir: str | Path,
    parameters: Mapping[str, Any] | None = None,
    notebook: str | Path = "report",
    timeout_s: float = 600.0,
) -> ReportResult:
    """Execute a report notebook with papermill; write ``<name>.ipynb`` (widget state stripped) and ``<name>.html``.

    The kernel is a separate process that reads ``settings`` from its environment. In embedded mode it reaches the
    store through its owner (``clickstream serve``) when one runs, else opens chdb itself — then the calling process
    must not hold the directory.

    Raises:
        NotebookError: a cell failed (the executed notebook with the traceback is still written for inspection).
    """
    # Here and not at the top: the dashboard's kernel imports this module, and nbformat's schema validation costs
    # ~2 s of import (jsonschema's format checkers) before the first KPI could show.
    import nbformat
    import papermill
    from papermill.exceptions import PapermillExecutionError

    src = notebook_path(notebook)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    executed_path = out / f"{src.stem}.ipynb"
    params = dict(parameters or {})
    logger.info("executing %s with %s into %s", src, params, out)
    failure: BaseException | None = None
    with _environ(settings_env(settings)):
        try:
            papermill.execute_notebook(
                str(src),
                str(executed_path),
                parameters=params,
                kernel_name="python3",
                progress_bar=False,
                request_save_on_cell_execute=False,
                cwd=str(src.parent),
                execution_timeout=int(timeout_s),
            )
        except PapermillExecutionError as exc:
            failure = exc
    nb = nbformat.read(executed_path, as_version=4)
    strip_widget_state(nb)
    nbformat.write(nb, executed_path)
    if failure is not None:
        raise NotebookError(
            f"{src.name} failed in cell {getattr(failure, 'exec_count', '?')}: "
            f"{getattr(failure, 'ename', '')}: {getattr(failure, 'evalue', failure)} — "
            f"see the executed notebook {executed_path}"
        )
    html_path = out / f"{src.stem}.html"
    html_path.write_text(export_html(nb), encoding="utf-8")
    return ReportResult(executed_path, html_path, params)


def export_html(nb: nbformat.NotebookNode) -> str:
    """HTML of an executed notebook without code cells or prompts (what a report reader wants)."""
    import copy

    from nbconvert import HTMLExporter

    nb = copy.deepcopy(nb)
    for cell in nb.cells:
        if cell.cell_type == "code":
            # Recorded values are for tools (recorded()); the reader sees their rendered form in other outputs.
            cell["outputs"] = [o for o in cell.get("outputs", []) if set(o.get("data", {})) != {RECORD_MIME}]
    exporter = HTMLExporter(exclude_input=True, exclude_input_prompt=True, exclude_output_prompt=True)
    body, _ = exporter.from_notebook_node(nb)
    return str(body)


# --- Voila ------------------------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _port_open(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
        return True
    return False


@dataclass(frozen=True)
class KernelCulling:
    """When Voila shuts kernels down; the knobs of :class:`~clickstream_lib.culling.PageCullingKernelManager`.

    Attributes:
        page_timeout_s: a kernel with no open page (websocket) for this long is shut down, whatever its activity;
            0 turns the rule off.
        idle_timeout_s: a kernel without activity for this long is shut down, even with a page open; 0 turns it off.
        interval_s: seconds between two checks; a kernel outlives its timeout by up to this much.
        render_timeout_s: how long a kernel may execute its notebook for the GET that started it before the page
            timeout runs anyway (the page connects only after the render).
    """

    page_timeout_s: float = 30.0
    idle_timeout_s: int = 3600
    interval_s: int = 5
    render_timeout_s: float = 300.0

    def voila_args(self) -> list[str]:
        """Voila command-line options selecting the culling kernel manager with these settings."""
        cls = CULLING_MANAGER.rsplit(".", 1)[1]
        return [
            f"--VoilaConfiguration.multi_kernel_manager_class={CULLING_MANAGER}",
            f"--{cls}.page_timeout={self.page_timeout_s:g}",
            f"--{cls}.render_timeout={self.render_timeout_s:g}",
            f"--{cls}.cull_idle_timeout={int(self.idle_timeout_s)}",
            f"--{cls}.cull_interval={max(1, int(self.interval_s))}",
        ]


class VoilaServer:
    """A Voila server for one notebook, bound to 127.0.0.1, as a child process.

    ``culling`` says when its kernels are shut down (:class:`KernelCulling`; ``None`` leaves Voila's default of
    never).

    Example:
        >>> with VoilaServer(settings, "dashboard", params={"refresh_s": 5}) as server:
        ...     print(server.url)
    """

    def __init__(
        self,
        settings: Settings,
        notebook: str | Path = "dashboard",
        port: int = DEFAULT_PORT,
        params: Mapping[str, Any] | None = None,
        log_file: str | Path | None = None,
        extra_env: Mapping[str, str] | None = None,
        culling: KernelCulling | None = KernelCulling(),
    ) -> None:
        self.settings = settings
        self.notebook = notebook_path(notebook)
        self.port = port or _free_port()
        self.params = dict(params or {})
        self.log_file = Path(log_file) if log_file else Path(settings.data_dir) / "logs" / f"voila-{self.port}.log"
        self.extra_env = dict(extra_env or {})
        self.culling = culling
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    @property
    def health_url(self) -> str:
        """A URL that answers 200 while the server serves HTTP and starts no kernel (for probes)."""
        return self.url + HEALTH_PATH

    def command(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "voila",
            str(self.notebook),
            "--no-browser",
            f"--port={self.port}",
            "--Voila.ip=127.0.0.1",
            "--Voila.port_retries=0",
            # Lets the page's shutdown beacon through so closing the tab ends the kernel (see module docstring).
            "--Voila.tornado_settings=disable_check_xsrf=True",
            "--show_tracebacks=False",
            "--theme=light",
            *(self.culling.voila_args() if self.culling else []),
        ]

    def environment(self) -> dict[str, str]:
        env = settings_env(self.settings)
        if self.params:
            env[PARAMS_ENV] = json.dumps(self.params)
        else:
            env.pop(PARAMS_ENV, None)
        env.update(self.extra_env)
        return env

    def start(self, timeout_s: float = 60.0) -> str:
        """Start Voila and wait until it answers :attr:`health_url` (which starts no kernel); returns the URL.

        Raises:
            NotebookError: the port is taken or Voila exited during start-up.
        """
        if _port_open(self.port):
            raise NotebookError(
                f"port {self.port} on 127.0.0.1 is already in use (another dashboard?) — stop it or pass --port"
            )
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_file, "ab") as log:
            self.proc = subprocess.Popen(
                self.command(),
                env=self.environment(),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=str(self.notebook.parent),
                start_new_session=True,
                preexec_fn=_terminate_with_parent,
            )
        logger.info(
            "voila (pid %d) serving %s at %s; log %s", self.proc.pid, self.notebook.name, self.url, self.log_file
        )
        deadline = time.monotonic() + timeout_s
        while not self.healthy():
            if self.proc.poll() is not None:
                raise NotebookError(
                    f"Voila exited with code {self.proc.returncode} while starting; see {self.log_file}"
                    + _tail(self.log_file)
                )
            if time.monotonic() > deadline:
                self.stop()
                raise NotebookError(
                    f"Voila did not answer {self.health_url} within {timeout_s:.0f} s; see {self.log_file}"
                )
            time.sleep(0.2)
        return self.url

    def healthy(self, timeout_s: float = 2.0) -> bool:
        """Whether the server answers HTTP, asked without starting a kernel (a HEAD of :attr:`health_url`)."""
        import urllib.error
        import urllib.request

        request = urllib.request.Request(self.health_url, method="HEAD")
        try:
            with urllib.request.urlopen(request, timeout=timeout_s) as response:
                return bool(response.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def pids(self) -> list[int]:
        """The server's pid followed by its kernels' pids (for memory measurements)."""
        if not self.proc:
            return []
        import psutil

        with contextlib.suppress(psutil.Error):
            return [self.proc.pid] + [c.pid for c in psutil.Process(self.proc.pid).children(recursive=True)]
        return [self.proc.pid]

    def kernel_pids(self) -> list[int]:
        """The pids of the server's kernels (its child processes) alive now."""
        if not self.proc:
            return []
        import psutil

        try:
            children = psutil.Process(self.proc.pid).children()
        except psutil.Error:
            return []
        alive = []
        for child in children:
            with contextlib.suppress(psutil.Error):
                if child.status() != psutil.STATUS_ZOMBIE:
                    alive.append(child.pid)
        return alive

    def wait(self) -> int:
        """Block until the server exits (Ctrl-C raises KeyboardInterrupt in the caller)."""
        if not self.proc:
            return 0
        return self.proc.wait()

    def stop(self, timeout_s: float = 15.0) -> None:
        """Stop the server and its kernels (SIGTERM to the process group, then SIGKILL)."""
        proc = self.proc
        if not proc or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
        # Kernels live in the server's session; make sure none outlives it (they hold the chdb lock).
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        logger.info("voila (pid %d) stopped", proc.pid)

    def __enter__(self) -> VoilaServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _terminate_with_parent() -> None:
    """In the Voila child before exec: get SIGTERM when the process that started it dies, even by SIGKILL.

    Voila runs in its own session (so Ctrl-C in a terminal reaches only the CLI, which stops it in order); without
    this, a killed ``clickstream demo`` would leave Voila and its kernel - which holds the chdb lock and runs the
    pipeline - behind. Linux only; elsewhere the CLI's own signal handling is what stops it.
    """
    if sys.platform.startswith("linux"):
        import ctypes

        with contextlib.suppress(Exception):
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG


def _tail(path: Path, lines: int = 5) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return (" — " + " | ".join(text[-lines:])) if text else ""


# --- the store's owner as a child process, and the demo ----------------------------------------------------------


class OwnerProcess:
    """``clickstream serve`` as a child process: the owner of the embedded store (see :mod:`clickstream_lib.service`).

    Like :class:`VoilaServer` it runs in its own session (Ctrl-C in a terminal reaches only the CLI, which stops the
    children in order) and gets SIGTERM when its parent dies, even by SIGKILL.
    """

    def __init__(
        self,
        settings: Settings,
        produce: bool = True,
        rate: float = 200.0,
        log_file: str | Path | None = None,
        sink: bool = True,
        alert_rules: str | None = None,
        alert_interval_s: float | None = None,
        args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.settings = settings
        self.alert_rules = alert_rules
        self.alert_interval_s = alert_interval_s
        self.produce = produce
        self.sink = sink
        self.args = tuple(args)  # more arguments of `clickstream serve`
        self.env = env  # the environment settings_env starts from (default: this process's)
        self.rate = float(rate)
        self.log_file = Path(log_file) if log_file else Path(settings.data_dir) / "logs" / "serve.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.socket = ""

    def command(self) -> list[str]:
        cmd = [sys.executable, "-m", "clickstream_lib", "serve", "--rate", str(self.rate)]
        cmd += (["--produce"] if self.produce else []) + ([] if self.sink else ["--no-sink"])
        if self.alert_rules:
            cmd += ["--rules", str(self.alert_rules)]
        if self.alert_interval_s:
            cmd += ["--alert-interval", f"{self.alert_interval_s:g}"]
        return cmd + list(self.args)

    def start(self, timeout_s: float = 120.0) -> str:
        """Start the owner and wait until it serves; returns its socket path.

        Raises:
            NotebookError: it exited during start-up (e.g. another owner serves the directory) or did not get ready.
        """
        import select

        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_file, "ab") as log:
            self.proc = subprocess.Popen(
                self.command(),
                env=settings_env(self.settings, self.env),
                stdout=subprocess.PIPE,
                stderr=log,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                preexec_fn=_terminate_with_parent,
            )
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout_s
        # poll(), not select(): the calling process may hold more than 1024 descriptors, which select() cannot watch.
        poller = select.poll()
        poller.register(self.proc.stdout, select.POLLIN | select.POLLHUP)
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline().decode() if poller.poll(500) else ""
            if line.startswith("serving: "):
                self.socket = line.split(" ", 1)[1].strip()
                logger.info("store owner (pid %d) serving on %s; log %s", self.proc.pid, self.socket, self.log_file)
                return self.socket
            if self.proc.poll() is not None:
                raise NotebookError(
                    f"`clickstream serve` exited with code {self.proc.returncode} while starting; see {self.log_file}"
                    + _tail(self.log_file)
                )
        self.stop()
        raise NotebookError(f"`clickstream serve` was not ready within {timeout_s:.0f} s; see {self.log_file}")

    def stop(self, timeout_s: float = 60.0) -> None:
        """SIGTERM (the sink stores and commits what it has), then SIGKILL after ``timeout_s``."""
        proc = self.proc
        if not proc or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        if proc.stdout:
            proc.stdout.close()
        logger.info("store owner (pid %d) stopped", proc.pid)


def run_demo(
    settings: Settings,
    port: int = DEFAULT_PORT,
    rate: float = 200.0,
    refresh_s: float = 5.0,
    on_ready: Callable[[str], None] | None = None,
    stop_broker: bool = True,
    alert_rules: str | None = None,
    alert_interval_s: float | None = None,
) -> None:
    """Start the local broker, the store's owner with the live pipeline, and the dashboard; block until interrupted.

    With ``alert_rules`` (or CLICKSTREAM_ALERT_RULES) the owner also evaluates those rules every
    ``alert_interval_s`` seconds (default 60) and the dashboard shows a banner while one fires.

    The owner (``clickstream serve --produce``) holds the embedded store and runs the producer and the sink; every
    dashboard page is a client of it, shows its pipeline and can pause it. This process never opens chdb. On return
    (Ctrl-C, SIGTERM) it stops Voila, then the owner (the sink commits first) and, when it started the broker, the
    broker.
    """
    from .stack import KafkaStack

    stack = KafkaStack(settings)
    started_broker = not stack.status().running
    stack.up()
    owner = OwnerProcess(settings, produce=True, rate=rate, alert_rules=alert_rules, alert_interval_s=alert_interval_s)
    server = VoilaServer(
        settings,
        "dashboard",
        port=port,
        params={"live_pipeline": True, "rate": float(rate), "refresh_s": float(refresh_s)},
    )
    try:
        owner.start()
        url = server.start()
        if on_ready:
            on_ready(url)
        code = server.wait()
        if code not in (0, None):
            raise NotebookError(f"Voila exited with code {code}; see {server.log_file}" + _tail(server.log_file))
    finally:
        server.stop()
        owner.stop()
        if started_broker and stop_broker:
            stack.down()
