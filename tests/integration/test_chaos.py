"""The chaos campaign (bench/chaos.py, docs/chaos.md), short and seeded: every fault kind at least once, then the
oracle. The campaign starts its own broker (it kills it), its own producer and sink processes, and a tmpfs for the
store (disk_full, as root): nothing here shares the session fixtures.

A failure prints the campaign's log tail, which names the seed and the command that replays it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))

from chaos import FAULTS  # noqa: E402

SEED = 19


def test_short_campaign_every_fault_kind_nothing_lost_or_doubled(tmp_path: Path) -> None:
    report_file = tmp_path / "report.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KAFKA_", "CLICKHOUSE_", "CLICKSTREAM_"))}
    env["PYTHONPATH"] = os.pathsep.join(x for x in (str(ROOT), os.environ.get("PYTHONPATH", "")) if x)
    # Two minutes of faults, one round: every kind once, each lane's in a seeded order, with shorter holds than the
    # 10-minute campaign's so the machine's load does not decide the outcome.
    cmd = [
        sys.executable, str(ROOT / "bench" / "chaos.py"),
        "--minutes", "2", "--rounds", "1", "--seed", str(SEED), "--rate", "1000",
        "--stop-broker-s", "10-15", "--disk-full-s", "5-10", "--store-readonly-s", "5-10", "--rebalance-s", "5-10",
        "--recovery-timeout", "240", "--tmpfs-mb", "512",
        "--report", str(report_file), "--work-dir", str(tmp_path),
    ]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1500)
    log = proc.stderr[-6000:]
    print(log[-2500:])  # the campaign's table, shown with -s or on failure
    assert proc.returncode == 0, log
    report = json.loads(report_file.read_text())
    assert report["passed"] and report["failures"] == [], log
    assert set(report["faults_by_kind"]) == set(FAULTS), log
    assert all(s["injected"] == 1 and s["not_recovered"] == 0 for s in report["faults_by_kind"].values())
    assert report["unplanned_exits"] == {"sink-0": [], "producer": []}, log
    ev = report["events"]
    assert ev["lost"] == ev["duplicated"] == ev["never_sent"] == 0, ev
    # The producer kept going through the faults: most of what it sent was acknowledged, and all of that stored.
    assert ev["acknowledged"] > 60_000 and ev["stored_distinct"] >= ev["acknowledged"], ev
    assert ev["stored"] == ev["stored_distinct"] <= ev["sent"], ev
    dl = report["dead_letters"]
    assert dl["poison_acknowledged"] >= 3 and dl["stored"] >= dl["poison_acknowledged"], dl
    assert dl["missing"] == dl["doubled"] == dl["wrong_reason"] == dl["unexpected"] == 0, dl
    assert report["rollup"]["rollup_events"] == report["rollup"]["raw_events"] == ev["stored"]
    for part in report["offsets"].values():
        assert part["committed"] == part["end"] == part["distinct"] == part["stored"], report["offsets"]
    assert "replay: " not in proc.stderr and f"seed {SEED}" in proc.stderr
