"""Start and stop `clickstream serve` (the owner of an embedded store directory) as a child process, for tests."""

from __future__ import annotations

import contextlib
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def start_owner(env: dict[str, str], *args: str, log: Path, timeout_s: float = 120.0) -> subprocess.Popen[str]:
    """``clickstream serve ARGS`` in ``env``; returns once it printed ``serving: <socket>`` (its stderr goes to log)."""
    with open(log, "ab") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "clickstream_lib", "-v", "serve", *args],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
        )
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout_s
    # poll(), not select(): a test process may hold more than 1024 descriptors, which select() cannot watch.
    poller = select.poll()
    poller.register(proc.stdout, select.POLLIN | select.POLLHUP)
    while time.monotonic() < deadline:
        if poller.poll(500):
            line = proc.stdout.readline()
            if line.startswith("serving: "):
                return proc
            if not line and proc.poll() is not None:
                break
    proc.kill()
    proc.wait(10)
    raise AssertionError(
        f"`clickstream serve` did not become ready (exit {proc.returncode}):\n{log.read_text()[-3000:]}"
    )


def stop_owner(proc: subprocess.Popen[str], sig: int = signal.SIGTERM, timeout_s: float = 60.0) -> int:
    """Stop the owner with ``sig`` and wait; returns its exit code (SIGKILL as a last resort)."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    if proc.stdout:
        proc.stdout.close()
    return int(proc.returncode)
