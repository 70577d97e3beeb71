"""Start and stop `clickstream serve` (the owner of an embedded store directory) as a child process, for tests.

Started with :class:`clickstream_lib.notebooks.OwnerProcess`, as `clickstream demo` starts it.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
from pathlib import Path

from clickstream_lib.notebooks import OwnerProcess
from clickstream_lib.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


def start_owner(env: dict[str, str], *args: str, log: Path, timeout_s: float = 120.0) -> subprocess.Popen[bytes]:
    """``clickstream serve ARGS`` in ``env``; returns once it serves (its stderr goes to ``log``)."""
    owner = OwnerProcess(
        Settings.from_env(env),
        produce="--produce" in args,
        sink="--no-sink" not in args,
        log_file=log,
        args=[a for a in args if a not in ("--produce", "--no-sink")],
        env=env,
    )
    owner.start(timeout_s)
    assert owner.proc is not None
    return owner.proc


def stop_owner(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout_s: float = 60.0) -> int:
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
