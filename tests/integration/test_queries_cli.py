"""`clickstream query` in its own process and data directory (chdb: one directory per process)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import base_env
from tests.helpers import run_cli
from tests.integration.test_queries import make_events

ROOT = Path(__file__).resolve().parents[2]
CLI = str(ROOT / ".venv" / "bin" / "clickstream")
SEED, SESSIONS = 3, 250


@pytest.fixture(scope="module")
def data_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A data directory filled by a separate process, then released (that process exits)."""
    env = base_env(CLICKSTREAM_DATA_DIR=str(tmp_path_factory.mktemp("cli-data")))
    fill = (
        "from clickstream_lib.settings import Settings\n"
        "from clickstream_lib.store import connect\n"
        "from tests.integration.test_queries import insert_events, make_events\n"
        f"store = connect(Settings.from_env())\ninsert_events(store, make_events(n_sessions={SESSIONS}, seed={SEED}))\n"
        "store.close()\n"
    )
    subprocess.run([sys.executable, "-c", fill], env=env, cwd=ROOT, check=True, timeout=120)
    return env


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return run_cli(env, "query", *args, timeout=120)


def test_named_query_formats(data_env: dict[str, str]) -> None:
    events = make_events(n_sessions=SESSIONS, seed=SEED)
    r = cli(data_env, "kpis", "--format", "json", "--source", "raw")
    assert r.returncode == 0, r.stderr
    (row,) = json.loads(r.stdout)
    assert row["total_interactions"] == len(events)
    assert row["unique_users"] == events["user_id"].nunique()
    assert row["estimated"] is False and row["error_bound"] == 0
    # Estimates only when asked, and marked in every format.
    r = cli(data_env, "kpis", "--format", "json", "--source", "approx")
    assert r.returncode == 0, r.stderr
    (row,) = json.loads(r.stdout)
    assert row["estimated"] is True and 0 < row["error_bound"] < 0.1
    r = cli(data_env, "kpis", "--source", "approx")
    assert "≈ distinct counts are estimates" in r.stdout
    r = cli(data_env, "kpis")
    assert "≈" not in r.stdout

    mobile = events[events["device"].isin(["mobile", "tablet"])]
    r = cli(data_env, "top_items", "-p", "limit=3", "-p", "device=mobile", "-p", "device=tablet", "-f", "csv")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    assert lines[0] == "item_id,interactions,estimated,error_bound"
    counts = (
        mobile.groupby("item_id").size().reset_index(name="n").sort_values(["n", "item_id"], ascending=[False, True])
    )
    assert lines[1:] == [f"{i},{n},False,0.0" for i, n in zip(counts["item_id"][:3], counts["n"][:3], strict=True)]

    r = cli(data_env, "funnel", "-p", "window_s=900", "-p", "start=2026-11-26T00:00:00Z")
    assert r.returncode == 0, r.stderr
    assert "conversion_from_start" in r.stdout and "add_to_cart" in r.stdout


def test_read_only_sql(data_env: dict[str, str], tmp_path: Path) -> None:
    n = len(make_events(n_sessions=SESSIONS, seed=SEED))
    r = cli(data_env, "--sql", "SELECT count() AS n FROM clickstream.events", "--format", "csv")
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["n", str(n)]
    secret = tmp_path / "secret.txt"
    secret.write_text("top-secret-value\n")
    outfile = tmp_path / "out.txt"
    outfile.write_text("keep me\n")
    refused = {
        "DROP TABLE clickstream.events; SELECT 1": "more than one statement",
        "SELECT 1; DROP TABLE clickstream.events": "more than one statement",
        "SELECT 1 /* ; */; DROP TABLE clickstream.events -- ;": "more than one statement",
        "SELECT 1 -- a comment\n; DROP TABLE clickstream.events": "more than one statement",
        f"CREATE TABLE default.leak ENGINE=Memory AS SELECT * FROM file('{secret}','LineAsString'); "
        "SELECT * FROM default.leak": "more than one statement",
        f"SELECT * FROM file('{secret}','LineAsString')": "table function file()",
        f"SELECT file('{secret}')": "function file()",
        "SELECT * FROM url('http://127.0.0.1:9/x', 'CSV', 'a String')": "table function url()",
        "SELECT * FROM executable('id', 'TSV', 'a String')": "table function executable()",
        "SELECT count() FROM events WHERE user_id IN (SELECT * FROM s3('http://127.0.0.1:9/b/k', 'CSV', 'a String'))": (
            "table function s3()"
        ),
        f"SELECT 'x' INTO OUTFILE '{outfile}' TRUNCATE": "INTO OUTFILE",
        "DROP TABLE clickstream.events": "DROP",
        "INSERT INTO clickstream.events (user_id) VALUES ('x')": "INSERT",
        "SYSTEM FLUSH LOGS": "SYSTEM",
        "SET max_threads = 1": "SET",
        "ATTACH TABLE clickstream.x": "ATTACH",
        "OPTIMIZE TABLE clickstream.events FINAL": "OPTIMIZE",
        "KILL QUERY WHERE 1": "KILL",
        "EXPLAIN SYNTAX SELECT file('/etc/hostname')": "function file()",
        "SELECT 1 FORMAT JSON": "FORMAT",
        "SELECT 1 SETTINGS readonly = 0": "read-only mode",
    }
    for sql, what in refused.items():
        r = cli(data_env, "--sql", sql)
        assert r.returncode == 2, (sql, r.stdout, r.stderr)
        assert what in r.stderr, (sql, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert "top-secret-value" not in r.stdout + r.stderr
    assert outfile.read_text() == "keep me\n"
    r = cli(data_env, "--sql", "SELECT count() FROM clickstream.events", "-f", "csv")
    assert r.stdout.split()[-1] == str(n)
    # The store's database is the session default: tables can be named without the prefix.
    r = cli(data_env, "--sql", "SELECT count() FROM events", "-f", "csv")
    assert r.returncode == 0, r.stderr
    assert r.stdout.split()[-1] == str(n)
    for sql in ("SHOW TABLES", "DESCRIBE TABLE events", "EXISTS TABLE events", "SELECT sum(number) FROM numbers(4)"):
        r = cli(data_env, "--sql", sql, "-f", "csv")
        assert r.returncode == 0, (sql, r.stderr)
    r = cli(data_env, "--sql", "SELECT user_id FROM events WHERE 0", "-f", "csv")
    assert r.returncode == 0 and r.stdout.strip() == "user_id", r.stderr


def test_usage_errors_exit_2(data_env: dict[str, str]) -> None:
    r = cli(data_env, "no_such_query")
    assert r.returncode == 2
    assert "unknown query 'no_such_query'; known queries: active_users, breakdown, cohorts" in r.stderr
    r = cli(data_env, "kpis", "-p", "interaction_type=x' OR 1=1 --")
    assert r.returncode == 2
    assert "interaction_type" in r.stderr
    r = cli(data_env, "kpis", "-p", "nonsense")
    assert r.returncode == 2
    r = cli(data_env, "--list")
    assert r.returncode == 0 and "retention(days=7)" in r.stdout
    r = cli(data_env, "--ddl", "cluster", "--cluster", "prod")
    assert r.returncode == 0 and "ReplicatedAggregatingMergeTree" in r.stdout


def test_json_output_writes_every_column_type(data_env: dict[str, str]) -> None:
    r = cli(data_env, "--sql", "SELECT * FROM events ORDER BY event_time LIMIT 3", "--format", "json")
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)
    assert len(rows) == 3 and rows[0]["event_id"].count("-") == 4 and rows[0]["event_time"].endswith("Z")
    sql = (
        "SELECT map('a', 1) AS m, [1, 2] AS arr, (1, 'x') AS t, toDecimal64(1.1, 4) AS d, "
        "toDecimal128('123456789012345678.123', 3) AS big, NULL AS n, "
        "toUUID('00000000-0000-4000-8000-000000000001') AS u"
    )
    r = cli(data_env, "--sql", sql, "--format", "json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == [
        {
            "m": {"a": 1},
            "arr": [1, 2],
            "t": [1, "x"],
            "d": 1.1,
            "big": "123456789012345678.123",
            "n": None,
            "u": "00000000-0000-4000-8000-000000000001",
        }
    ]
