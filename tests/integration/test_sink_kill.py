"""kill -9 of the sink process: nothing lost, nothing doubled.

Each worker runs in its own process with its own CLICKSTREAM_DATA_DIR (chdb: one process per directory); workers
of one test run one after another on the same directory, and the counts are read by yet another process after
the last one exited.
"""

from __future__ import annotations

import json
import random
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from clickstream_lib import topics
from clickstream_lib.settings import Settings
from tests.integration.sink_worker import count, make_values, produce, spawn, worker_env

pytestmark = [pytest.mark.integration, pytest.mark.slow]

POISON = [b"not json", b"\xff\xfe{", b"[1, 2]", b'{"user_id": "u"}', None]


def _stored_since(log: Path, mark: int, timeout_s: float) -> bool:
    """Wait until the worker log, past byte ``mark``, says a batch was stored; False on timeout."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if log.exists():
            with log.open("rb") as f:
                f.seek(mark)
                if b"stored batch" in f.read():
                    return True
        time.sleep(0.1)
    return False


def _final_run(env: dict[str, str], log: Path) -> dict[str, Any]:
    proc = spawn(env, "--instance-id", "w1", "--until-idle", "4", log=log)
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, log.read_text()[-3000:]
    return dict(json.loads(out.decode().strip().splitlines()[-1]))


def test_kill9_at_random_moments_while_producing(settings: Settings, tmp_path: Path) -> None:
    n = 200_000
    topics.ensure_topic(settings, settings.kafka_topic)
    env = worker_env(settings, tmp_path / "worker")
    log = tmp_path / "worker.log"
    values = make_values(n, seed=1)
    producing = threading.Thread(target=produce, args=(settings, values), kwargs={"rate": 6_000})
    producing.start()
    rng = random.Random(7)
    try:
        for _ in range(10):
            if not producing.is_alive():
                break
            mark = log.stat().st_size if log.exists() else 0
            proc = spawn(env, "--instance-id", "w1", log=log)
            # A random moment after the worker began to store (its start-up takes seconds on a loaded machine).
            _stored_since(log, mark, timeout_s=90)
            time.sleep(rng.uniform(0.0, 2.5))
            proc.send_signal(signal.SIGKILL)
            assert proc.wait(timeout=30) == -signal.SIGKILL
    finally:
        producing.join()
    final = _final_run(env, log)
    # The killed workers did part of the work: the last one only finished it.
    assert 0 < final["records_consumed"] < n
    c = count(env)
    assert c == {"rows": n, "uniq": n, "dead": 0, "dead_uniq": 0}


def test_kill9_between_insert_and_commit(settings: Settings, tmp_path: Path) -> None:
    n = 20_000
    values: list[bytes | None] = list(make_values(n, seed=2))
    for i, bad in enumerate(POISON):
        values.insert(1_000 + i * 3_000, bad)
    produce(settings, values)
    env = worker_env(settings, tmp_path / "worker")
    log = tmp_path / "worker.log"
    proc = spawn(env, "--instance-id", "w1", "--kill-at-batch", "3", "--batch-max-rows", "2000", log=log)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == -signal.SIGKILL, log.read_text()[-3000:]
    killed_after = json.loads(out.decode().strip().splitlines()[-1])["killed_after"]

    before = log.read_text()
    final = _final_run(env, log)
    after = log.read_text()[len(before) :]
    # The restarted member rebuilt exactly the insert that was stored but not committed (one partition's batch, or
    # the batches of several partitions that shared the insert), under the same token.
    assert "rebuilt recorded" in after and killed_after in after, after[-3000:]
    assert final["rows_inserted"] + final["dead_letters"] < n + len(POISON)
    c = count(env)
    assert c == {"rows": n, "uniq": n, "dead": len(POISON), "dead_uniq": len(POISON)}
