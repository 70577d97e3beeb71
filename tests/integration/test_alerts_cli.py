"""`clickstream alerts check | backtest` as a user runs them: their own process and data directory, a real receiver."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from clickstream_lib.stack import free_port
from tests.conftest import base_env
from tests.integration.alert_helpers import CASE_STUDY_RULE, ITEM, SALE_END, T0, Receiver

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
AT = (T0 + (SALE_END - T0) / 2).isoformat()  # mid-sale


def filled(tmp_path_factory: pytest.TempPathFactory, kind: str) -> dict[str, str]:
    """An environment whose CLICKSTREAM_DATA_DIR a separate process filled and released."""
    env = base_env(CLICKSTREAM_DATA_DIR=str(tmp_path_factory.mktemp(f"alerts-{kind}")), PYTHONPATH=str(ROOT))
    fill = [sys.executable, "-m", "tests.integration.alert_helpers", "fill", kind]
    subprocess.run(fill, env=env, cwd=ROOT, check=True, timeout=300)
    return env


@pytest.fixture(scope="module")
def spike_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return filled(tmp_path_factory, "spike")


@pytest.fixture(scope="module")
def quiet_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return filled(tmp_path_factory, "quiet")


@pytest.fixture(scope="module")
def for_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return filled(tmp_path_factory, "spike")


@pytest.fixture(scope="module")
def rules_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("rules") / "alerts.toml"
    path.write_text(CASE_STUDY_RULE)
    return path


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver(free_port()).start()
    try:
        yield r
    finally:
        r.stop()


def alerts(env: dict[str, str], *args: str, **extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "clickstream_lib.cli", "alerts", *args],
        env={**env, **extra},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


def test_check_on_a_spike_exits_1_and_posts_once(
    spike_env: dict[str, str], rules_file: Path, receiver: Receiver
) -> None:
    hook = {"CLICKSTREAM_ALERT_WEBHOOK_URL": receiver.url}
    r = alerts(spike_env, "check", "--rules", str(rules_file), "--at", AT, **hook)
    assert r.returncode == 1, r.stderr
    assert f"new FIRING [critical] item purchase spike item_id={ITEM}: events " in r.stdout
    assert len(receiver.bodies) == 1
    assert f"item_id={ITEM}" in receiver.bodies[0]["text"] and "baseline" in receiver.bodies[0]["text"]
    assert "secret-part" not in r.stdout + r.stderr

    # The next run (cron) sees it still firing: exit 1 again, nothing posted twice.
    r = alerts(spike_env, "check", "--rules", str(rules_file), "--at", AT, **hook)
    assert r.returncode == 1, r.stderr
    assert f"FIRING [critical] item purchase spike item_id={ITEM}" in r.stdout and "new FIRING" not in r.stdout
    assert len(receiver.bodies) == 1

    r = alerts(
        spike_env,
        "backtest",
        "--rules",
        str(rules_file),
        "--param",
        f"start={T0.isoformat()}",
        "--param",
        f"end={(SALE_END + (SALE_END - T0) * 3).isoformat()}",
        "--format",
        "json",
    )
    assert r.returncode == 0, r.stderr
    (row,) = json.loads(r.stdout)
    assert row["key"] == ITEM and row["resolved_at"] is not None


def test_check_on_a_quiet_store_exits_0_and_posts_nothing(
    quiet_env: dict[str, str], rules_file: Path, receiver: Receiver
) -> None:
    r = alerts(
        quiet_env,
        "check",
        "--rules",
        str(rules_file),
        "--at",
        T0.isoformat(),
        CLICKSTREAM_ALERT_WEBHOOK_URL=receiver.url,
    )
    assert r.returncode == 0, r.stderr
    assert "ok: 1 rule(s), nothing firing" in r.stdout
    assert receiver.bodies == []


def test_settings_errors_exit_2_naming_the_variable(quiet_env: dict[str, str], rules_file: Path) -> None:
    r = alerts(quiet_env, "check", "--rules", str(rules_file), CLICKSTREAM_ALERT_WEBHOOK_URL="file:///etc/passwd")
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        "clickstream: configuration error: CLICKSTREAM_ALERT_WEBHOOK_URL: scheme 'file' is not supported; expected "
        "an http(s) URL with a host, e.g. https://hooks.slack.com/services/..."
    ]
    r = alerts(quiet_env, "check", "--rules", str(rules_file), CLICKSTREAM_ALERT_SLACK_CHANNEL="#alerts")
    assert r.returncode == 2 and "SLACK_BOT_TOKEN: is required" in r.stderr
    r = alerts(quiet_env, "check", CLICKSTREAM_ALERT_RULES=str(rules_file) + ".missing")
    assert r.returncode == 2 and "CLICKSTREAM_ALERT_RULES" in r.stderr


def test_report_has_an_alerts_section(spike_env: dict[str, str], rules_file: Path, tmp_path: Path) -> None:
    """`clickstream report` lists the firings `alerts check` recorded and the rules' backtest over its window."""
    import nbformat

    from clickstream_lib.notebooks import recorded

    alerts(spike_env, "check", "--rules", str(rules_file), "--at", AT, "--no-deliver")  # (again) recorded
    start, end = T0.isoformat(), (SALE_END + (SALE_END - T0) * 3).isoformat()
    params = [f"start={start}", f"end={end}", f"alert_rules={rules_file}", "alert_step=1m"]
    proc = subprocess.run(
        [sys.executable, "-m", "clickstream_lib.cli", "report", "--out", str(tmp_path / "out")]
        + [a for p in params for a in ("--param", p)],
        env=spike_env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = recorded(nbformat.read(tmp_path / "out" / "report.ipynb", as_version=4))
    assert [(a["rule"], a["key"]) for a in got["alerts"]] == [("item purchase spike", ITEM)]
    assert got["alerts"][0]["resolved_at"] is None  # `check` ran mid-sale only: still open in the store
    (would,) = got["alerts_backtest"]
    assert would["key"] == ITEM and would["resolved_at"] is not None


def test_for_holds_across_check_runs_from_cron(for_env: dict[str, str], tmp_path: Path, receiver: Receiver) -> None:
    """`alerts check` once a minute (each its own process, `--at` as the clock): a rule with `for = "3m"` fires at
    the run 3 minutes after the one that first saw it hold, and posts once."""
    from tests.integration.alert_helpers import MIN, history
    from tests.integration.test_alerts import expected_transitions

    rules = tmp_path / "alerts.toml"
    rules.write_text(CASE_STUDY_RULE + 'for = "3m"\n')
    holds_from, _ = expected_transitions(history())
    hook = {"CLICKSTREAM_ALERT_WEBHOOK_URL": receiver.url}
    for minute in range(3):
        at = (holds_from + minute * MIN).isoformat()
        r = alerts(for_env, "check", "--rules", str(rules), "--at", at, **hook)
        assert r.returncode == 0, r.stdout + r.stderr
        assert (
            f"pending item purchase spike item_id={ITEM}: holds since {holds_from.isoformat()} ({minute * 60} s of "
            in (r.stdout)
        )
    assert receiver.bodies == []
    r = alerts(for_env, "check", "--rules", str(rules), "--at", (holds_from + 3 * MIN).isoformat(), **hook)
    assert r.returncode == 1, r.stderr
    assert f"new FIRING [critical] item purchase spike item_id={ITEM}" in r.stdout
    assert len(receiver.bodies) == 1
