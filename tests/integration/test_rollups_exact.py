"""Rollups count every stored event once when a batch stored by one process is inserted again by the next one, under
the same token, as the sink's rebuild of a recorded range does (issue #19; docs/chaos.md).

Each worker runs in its own process on its own chdb directory (one process per directory), one after another; the
totals are read by yet another process. The first process of a directory is the one that creates it and applies the
schema migrations, some of which change a view's query (``ALTER TABLE ... MODIFY QUERY``).
"""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest

from clickstream_lib import schema
from clickstream_lib.settings import Settings
from tests.integration.sink_worker import insert_fixed_batch, make_values, produce, rollups, spawn, worker_env

pytestmark = pytest.mark.integration


def _every_rollup(n: int) -> dict[str, int]:
    return {"events": n, **{t.name: n for t in schema.ROLLUPS}}


def test_a_batch_inserted_again_after_a_restart_is_counted_once_in_every_rollup(
    settings: Settings, tmp_path: Path
) -> None:
    """The engine drops the repeated block from ``events`` by its token, and from each rollup by the block id it
    derives for that view: the id must not depend on whether the process migrated the view or loaded it."""
    env = worker_env(settings, tmp_path / "worker")
    token = insert_fixed_batch(env)  # this process creates the store and migrates it
    assert rollups(env) == _every_rollup(1_000)
    assert insert_fixed_batch(env) == token  # the next process: the same rows under the same token
    assert rollups(env) == _every_rollup(1_000)
    assert insert_fixed_batch(env) == token
    assert rollups(env) == _every_rollup(1_000)


def test_a_sink_killed_between_insert_and_commit_leaves_rollups_equal_to_raw(
    settings: Settings, tmp_path: Path
) -> None:
    """The chaos campaign's finding end to end: the sink that created the store is killed after a round was stored
    and before its commit; the next sink rebuilds the round under its token and stores nothing twice, in ``events``
    or in any rollup."""
    n = 6_000
    produce(settings, make_values(n, seed=19))
    env = worker_env(settings, tmp_path / "worker")
    log = tmp_path / "worker.log"
    proc = spawn(env, "--instance-id", "w1", "--kill-at-batch", "1", "--batch-max-rows", "2000", log=log)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == -signal.SIGKILL, log.read_text()[-3000:]
    killed_after = json.loads(out.decode().strip().splitlines()[-1])["killed_after"]

    before = log.read_text()
    final = spawn(env, "--instance-id", "w1", "--until-idle", "3", log=log)
    final.communicate(timeout=300)
    assert final.returncode == 0, log.read_text()[-3000:]
    after = log.read_text()[len(before) :]
    assert "rebuilt recorded" in after and killed_after in after, after[-3000:]
    assert rollups(env) == _every_rollup(n)
