"""What tests share besides fixtures: waiting for a condition, running the ``clickstream`` command, a TLS server,
headless Chromium's flags, and a script that loads events through the real producer and sink.

Services come from the fixtures in conftest.py; this module starts nothing by itself.
"""

from __future__ import annotations

import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]


def wait_until(
    predicate: Callable[[], Any],
    timeout_s: float = 60.0,
    what: str = "condition",
    state: Callable[[], Any] | None = None,
    interval_s: float = 0.2,
) -> Any:
    """Poll ``predicate`` until it returns a truthy value, and return it; fail naming ``what`` (and ``state()``)
    after ``timeout_s``. A bound on how long a condition may take, not a speed check."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            seen = f"; state: {state()}" if state is not None else ""
            pytest.fail(f"timed out after {timeout_s:.0f} s waiting for {what}{seen}")
        time.sleep(interval_s)


def run_cli(env: dict[str, str], *args: str, timeout: float = 300.0) -> subprocess.CompletedProcess[str]:
    """``clickstream ARGS`` (as ``python -m clickstream_lib``) in ``env`` from the repository root; never raises on
    a non-zero exit (tests check ``returncode``)."""
    return subprocess.run(
        [sys.executable, "-m", "clickstream_lib", *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


class TlsServer:
    """Accepts TLS connections on 127.0.0.1 and closes them after the handshake."""

    def __init__(self, cert: Path, key: Path) -> None:
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(cert, key)
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        self.sock.settimeout(0.2)
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                with self.ctx.wrap_socket(conn, server_side=True):
                    pass
            except (ssl.SSLError, OSError):
                conn.close()

    def close(self) -> None:
        self._stop.set()
        self.thread.join(5)
        self.sock.close()


class RunManySpy:
    """``queries.run_many`` as it is, recording each call's ``(name, arguments)`` and results; installed with
    ``monkeypatch.setattr(queries, "run_many", spy)`` it sees every refresh set a dashboard asks for."""

    def __init__(self, real: Callable[..., list[pd.DataFrame]]) -> None:
        self.real = real
        self.calls: list[tuple[list[tuple[str, dict[str, Any]]], list[pd.DataFrame]]] = []
        self.consistent: list[bool] = []  # each call's ``consistent``

    def __call__(self, store: Any, asked: Any, consistent: bool = False) -> list[pd.DataFrame]:
        asked = list(asked)
        results = self.real(store, asked, consistent=True) if consistent else self.real(store, asked)
        self.calls.append((asked, results))
        self.consistent.append(consistent)
        return results

    def frames(self) -> dict[str, list[tuple[dict[str, Any], pd.DataFrame]]]:
        out: dict[str, list[tuple[dict[str, Any], pd.DataFrame]]] = {}
        for asked, results in self.calls:
            for (name, kwargs), df in zip(asked, results, strict=True):
                out.setdefault(name, []).append((kwargs, df))
        return out
