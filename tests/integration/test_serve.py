"""`clickstream serve` in a child process, and clients of it in this process and in other commands.

The owner opens its data directory (chdb: one process per directory); this pytest process only ever reaches it
through the socket, so it never opens that directory itself. In-process reference results are computed by a
separate process while no owner runs.
"""

from __future__ import annotations

import base64
import json
import os
import pickle
import signal
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from pyarrow import flight

from clickstream_lib import queries, topics
from clickstream_lib.errors import QueryError, StoreError, StoreLocked
from clickstream_lib.settings import Settings
from clickstream_lib.store import MIGRATIONS, ServedStore, ServePaths, connect, find_owner
from tests.conftest import base_env
from tests.helpers import run_cli
from tests.integration.owner import ROOT, start_owner, stop_owner
from tests.integration.sink_worker import make_values, produce, worker_env
from tests.integration.test_queries import NOW, make_events, with_properties

pytestmark = [pytest.mark.integration]

SEED, SESSIONS = 5, 200
START = "2026-11-27T00:00:00+00:00"
# (key, query, arguments): every named query, some with a window, filters and options. The live queries take a
# fixed "now"; freshness is left out (its seconds_since_ingest is measured against the clock).
SPEC: list[tuple[str, str, dict[str, Any]]] = [
    *((name, name, {}) for name in queries.QUERIES if name not in ("freshness", "active_users", "events_per_second")),
    ("active_users", "active_users", {"now": NOW.isoformat(), "minutes": 10_080}),
    ("events_per_second", "events_per_second", {"now": NOW.isoformat(), "seconds": 86_400}),
    ("kpis_raw", "kpis", {"source": "raw"}),
    ("kpis_window", "kpis", {"start": START, "device": ["mobile", "tablet"]}),
    ("top_items_mobile", "top_items", {"limit": 3, "device": "mobile", "start": START}),
    ("funnel_window", "funnel", {"window_s": 900, "start": START}),
    ("timeseries_hour", "timeseries", {"bucket": "hour", "interaction_type": "view"}),
    ("breakdown_country", "breakdown", {"by": "country", "start": START}),
]

RUN_SPEC = """
import base64, pickle, sys
from clickstream_lib import queries
from clickstream_lib.settings import Settings
from clickstream_lib.store import connect
from tests.integration.test_serve import SPEC
store = connect(Settings.from_env())
out = {key: queries.run(store, name, **kwargs) for key, name, kwargs in SPEC}
out["_store"] = type(store).__name__
out["_chdb_imported"] = "chdb" in sys.modules
print(base64.b64encode(pickle.dumps(out)).decode())
"""


def python(env: dict[str, str], code: str, timeout: float = 300) -> str:
    proc = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout, check=False
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc.stdout.strip().splitlines()[-1]


def cli(env: dict[str, str], *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return run_cli(env, *args, timeout=timeout)


@pytest.fixture(scope="module")
def filled(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, str], dict[str, Any]]:
    """A data directory holding a seeded clickstream, and the SPEC's results computed in-process (no owner)."""
    env = base_env(CLICKSTREAM_DATA_DIR=str(tmp_path_factory.mktemp("served")))
    fill = (
        "from clickstream_lib.settings import Settings\n"
        "from clickstream_lib.store import connect\n"
        "from tests.integration.test_queries import insert_events, make_events\n"
        f"store = connect(Settings.from_env())\ninsert_events(store, make_events(n_sessions={SESSIONS}, seed={SEED}))\n"
        "store.close()\nprint('ok')\n"
    )
    python(env, fill)
    reference = pickle.loads(base64.b64decode(python(env, RUN_SPEC)))
    assert reference["_store"] == "Store"  # no owner yet: in-process
    return env, reference


@pytest.fixture(scope="module")
def served(
    filled: tuple[dict[str, str], dict[str, Any]], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[dict[str, str], Settings]]:
    """An owner serving the filled directory (no sink: nothing to consume), and the client settings."""
    env, _ = filled
    proc = start_owner(env, "--no-sink", log=tmp_path_factory.mktemp("owner-log") / "owner.log")
    try:
        yield env, Settings.from_env(env)
    finally:
        assert stop_owner(proc) == 0


def test_named_queries_over_the_socket_equal_in_process(
    served: tuple[dict[str, str], Settings], filled: tuple[dict[str, str], dict[str, Any]]
) -> None:
    env, settings = served
    _, reference = filled
    store = connect(settings)
    assert isinstance(store, ServedStore)
    assert store.schema_version() == MIGRATIONS[-1].version
    for key, name, kwargs in SPEC:
        got = queries.run(store, name, **kwargs)
        want = reference[key]
        pd.testing.assert_frame_equal(got, want, obj=key)
        assert got.attrs == want.attrs, key  # query and source (rollup or raw) as the owner ran it
    # The same answers through another process's client: that process never imports chdb.
    other = pickle.loads(base64.b64decode(python(env, RUN_SPEC)))
    assert other["_store"] == "ServedStore" and other["_chdb_imported"] is False
    for key, _, _ in SPEC:
        pd.testing.assert_frame_equal(other[key], reference[key], obj=key)
    # Validation errors arrive as the same errors, raised on the owner.
    with pytest.raises(QueryError, match="unknown query 'nope'"):
        queries.run(store, "nope")
    with pytest.raises(QueryError) as info:
        queries.run(store, "kpis", interaction_type="x' OR 1=1 --")
    assert info.value.variable == "interaction_type"
    n = len(make_events(n_sessions=SESSIONS, seed=SEED))
    assert store.scalar("SELECT count() FROM events") == n
    store.close()


def test_a_batch_of_queries_is_one_call_with_the_same_frames(
    served: tuple[dict[str, str], Settings], filled: tuple[dict[str, str], dict[str, Any]]
) -> None:
    _, settings = served
    _, reference = filled
    store = connect(settings)
    assert isinstance(store, ServedStore)
    before = store.calls
    got = queries.run_many(store, [(name, kwargs) for _, name, kwargs in SPEC])
    assert store.calls == before + 1  # every named query, one round trip
    for (key, _, _), frame in zip(SPEC, got, strict=True):
        pd.testing.assert_frame_equal(frame, reference[key], obj=key)
        assert frame.attrs == reference[key].attrs, key
    # The dashboard's refresh set is one call too, and answers what the queries answer one by one.
    before = store.calls
    live = queries.live_panels(store, start=START)
    assert store.calls == before + 1
    assert list(live) == list(queries.LIVE_PANELS)
    for name in ("kpis", "breakdown", "timeseries", "top_users", "top_items"):
        pd.testing.assert_frame_equal(live[name], queries.run(store, name, start=START), obj=name)
    assert int(live["kpis"]["total_interactions"].iloc[0]) > 0
    # One bad query fails the batch with the error it has on its own.
    with pytest.raises(QueryError) as info:
        queries.run_many(store, [("kpis", {}), ("kpis", {"interaction_type": "x' OR 1=1 --"})])
    assert info.value.variable == "interaction_type"
    store.close()


def test_read_only_sql_stays_read_only(served: tuple[dict[str, str], Settings]) -> None:
    env, settings = served
    store = connect(settings)
    n = len(make_events(n_sessions=SESSIONS, seed=SEED))
    df = queries.read_only(store, "SELECT count() AS n FROM clickstream.events")
    assert int(df["n"].iloc[0]) == n
    for sql in (
        "DROP TABLE clickstream.events",
        "INSERT INTO clickstream.events (user_id) VALUES ('x')",
        "SELECT 1 SETTINGS readonly = 0",
        "ALTER TABLE clickstream.events DELETE WHERE 1",
    ):
        with pytest.raises(QueryError, match=r"not allowed|read-only mode"):
            queries.read_only(store, sql)
    # Raw reads of a client run read-only on the owner too; writes are the owner's sink's.
    with pytest.raises(QueryError, match="TRUNCATE is not allowed"):
        store.query_df("TRUNCATE TABLE clickstream.events")
    with pytest.raises(StoreLocked, match="clickstream serve"):
        store.insert("events", [], [])
    assert int(queries.read_only(store, "SELECT count() AS n FROM events")["n"].iloc[0]) == n
    r = cli(env, "query", "--sql", "DROP TABLE clickstream.events")
    assert r.returncode == 2 and "DROP is not allowed" in r.stderr, r.stderr
    store.close()


def test_cli_query_and_report_work_while_the_owner_runs(
    served: tuple[dict[str, str], Settings], tmp_path: Path
) -> None:
    env, _ = served
    n = len(make_events(n_sessions=SESSIONS, seed=SEED))
    r = cli(env, "query", "kpis", "--format", "json", "--source", "raw")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)[0]["total_interactions"] == n
    r = cli(env, "store", "status")
    assert r.returncode == 0 and f"events: {n} rows" in r.stdout, r.stderr
    r = cli(env, "query", "no_such_query")
    assert r.returncode == 2 and "unknown query 'no_such_query'" in r.stderr
    r = cli(env, "report", "--out", str(tmp_path / "report"), "--param", "top_n=3", timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    import nbformat

    from clickstream_lib.notebooks import recorded

    got = recorded(nbformat.read(tmp_path / "report" / "report.ipynb", as_version=4))
    assert got["kpis"]["total"] == n
    # A second owner of the same directory is the one true lock conflict: another `serve`, or a sink of its own.
    r = cli(env, "serve", "--no-sink", timeout=120)
    assert r.returncode == 1 and "already has an owner" in r.stderr, r.stderr
    r = cli(env, "consume", "--until-idle", "1", timeout=120)
    assert r.returncode == 1 and "owned by `clickstream serve`" in r.stderr, r.stderr


def test_a_client_without_the_token_is_refused(served: tuple[dict[str, str], Settings]) -> None:
    _, settings = served
    owner = find_owner(settings)
    assert owner is not None
    paths = owner.paths
    assert stat.S_IMODE(paths.root.stat().st_mode) == 0o700
    assert stat.S_IMODE(paths.token.stat().st_mode) == 0o600
    assert stat.S_ISSOCK(os.stat(owner.socket).st_mode)
    client = flight.FlightClient(owner.location)
    ticket = flight.Ticket(json.dumps({"query": "kpis", "args": {}}).encode())
    for headers in ([], [(b"authorization", b"Bearer " + b"0" * 64)], [(b"authorization", b"")]):
        options = flight.FlightCallOptions(headers=headers, timeout=10)
        with pytest.raises(flight.FlightUnauthenticatedError):
            client.do_get(ticket, options).read_all()
        with pytest.raises(flight.FlightUnauthenticatedError):
            list(client.do_action(flight.Action("pipeline.stop", b"{}"), options))
    # With the token read from the 0600 file, the same call is served.
    token = paths.token.read_bytes().strip()
    options = flight.FlightCallOptions(headers=[(b"authorization", b"Bearer " + token)], timeout=10)
    assert client.do_get(ticket, options).read_all().num_rows == 1
    client.close()


def test_a_dashboard_client_never_imports_chdb(served: tuple[dict[str, str], Settings]) -> None:
    """What the dashboard notebook imports, in a served kernel: no chdb, and none of the report's heavy imports
    (nbformat's schema validation alone took ~1.9 s before the first KPI)."""
    env, _ = served
    code = (
        "import json, sys\n"
        "from clickstream_lib import Dashboard, Settings, connect, notebooks, queries\n"
        "settings = Settings.from_env()\n"
        "dash = Dashboard(settings)\n"
        "dash.refresh()\n"
        "print(json.dumps({'store': type(dash.store).__name__, 'chdb': sorted(m for m in sys.modules "
        "if m.split('.')[0] in ('chdb', 'nbformat', 'jsonschema', 'papermill')), 'kpis': dash.kpis.value, "
        "'error': dash.header.value}))\n"
    )
    got = json.loads(python(env, code))
    n = len(make_events(n_sessions=SESSIONS, seed=SEED))
    assert got["store"] == "ServedStore"
    assert got["chdb"] == []
    assert f'data-kpi="total" data-value="{n}"' in got["kpis"], got


SHOW_DASHBOARD = """
import asyncio, json, sys, time
from clickstream_lib import Dashboard, Settings

async def main():
    dash = Dashboard(Settings.from_env())
    dash.show()
    first = {"kpis": dash.kpis.value, "charts": len(dash.charts), "plotly": "plotly" in sys.modules,
             "calls": dash.store.calls, "outputs": [len(o.outputs) for o in dash._outputs.values()]}
    deadline = time.monotonic() + 120
    while dash.refreshes < 1 and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    dash.stop()
    outputs = [len(o.outputs) for o in dash._outputs.values()]
    return {"first": first, "refreshes": dash.refreshes, "header": dash.header.value, "outputs": outputs,
            "breakdown": sum(dash.figures["breakdown"].data[0].y), "chdb": "chdb" in sys.modules}

print(json.dumps(asyncio.run(main())))
"""


def test_show_puts_the_kpis_up_before_plotly_loads_then_fills_the_charts(
    served: tuple[dict[str, str], Settings],
) -> None:
    env, _ = served
    got = json.loads(python(env, SHOW_DASHBOARD))
    n = len(make_events(n_sessions=SESSIONS, seed=SEED))
    first = got["first"]
    # When show() returns (Voila shows the page once the notebook has run) the KPIs are there: one call for them and
    # the status line (one snapshot of the owner's store), no chart built and plotly not even imported.
    assert f'data-kpi="total" data-value="{n}"' in first["kpis"], first
    assert first["charts"] == 0 and first["plotly"] is False and first["calls"] == 1, first
    assert first["outputs"] == [0] * 8
    # Then the kernel's loop builds and fills every chart.
    assert got["refreshes"] == 1 and got["header"] == "", got
    assert got["breakdown"] == n and got["outputs"] == [1] * 8 and got["chdb"] is False


def _count(store: ServedStore) -> tuple[int, int]:
    df = queries.read_only(store, "SELECT count() AS n, uniqExact(event_id) AS u FROM events")
    return int(df["n"].iloc[0]), int(df["u"].iloc[0])


def test_kill9_of_the_owner_is_noticed_and_the_sink_stays_exactly_once(settings: Settings, tmp_path: Path) -> None:
    n = 40_000
    topics.ensure_topic(settings, settings.kafka_topic)
    env = worker_env(settings, tmp_path / "data")
    client_settings = Settings.from_env(env)
    paths = ServePaths.for_url(client_settings.store_url)
    log = tmp_path / "owner.log"
    proc = start_owner(env, log=log)
    producing = threading.Thread(target=produce, args=(settings, make_values(n, seed=11)), kwargs={"rate": 5_000})
    producing.start()
    try:
        store = connect(client_settings)
        assert isinstance(store, ServedStore)
        deadline = time.monotonic() + 120
        while _count(store)[0] < 2_000:  # the owner's sink is storing
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.2)
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(30) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
        producing.join()
    assert paths.info.exists() and paths.token.exists()  # SIGKILL: nothing was cleaned up

    # The next connect notices (the owner lock is free), removes the dead owner's files and opens chdb in-process.
    r = cli(env, "query", "kpis", "--source", "raw", "--format", "json")
    assert r.returncode == 0, r.stderr
    assert "is gone without cleaning up" in r.stderr
    assert not paths.info.exists() and not paths.token.exists()
    assert 0 < json.loads(r.stdout)[0]["total_interactions"] <= n
    # A client of the dead owner says so while no owner runs ...
    with pytest.raises(StoreError, match="is gone"):
        _count(store)

    # ... and reaches the new owner once one runs, which takes over the directory and the group's partitions.
    proc = start_owner(env, log=log)
    try:
        deadline = time.monotonic() + 240
        while (got := _count(store))[0] < n:
            assert time.monotonic() < deadline, (got, log.read_text()[-3000:])
            time.sleep(0.5)
        time.sleep(3)  # a late duplicate would land within the next batches
        assert _count(store) == (n, n)  # rows = produced, no duplicate event ids
        stats = store.pipeline().stats()
        assert stats["sink"] == "running" and stats["dead_letters"] == 0
        store.close()
    finally:
        assert stop_owner(proc) == 0
    assert find_owner(client_settings) is None and not paths.info.exists()


WORKBENCH = """
import json, sys
from clickstream_lib import Settings, Workbench
wb = Workbench(Settings.from_env(), rate=2000, seed=3)
wb.pipeline.set_rate(1500)
wb.pipeline.set_scenario("flash_sale", True)
wb.pipeline.start(events=600)
rows = wb.wait_for_rows(600, timeout_s=120)
wb.refresh()
print(json.dumps({"store": type(wb.store).__name__, "rows": rows, "state": wb.pipeline.state(),
                  "message": wb.message.value, "preview": wb.preview.value, "chdb": "chdb" in sys.modules}))
"""


def test_the_workbench_drives_the_owners_pipeline(settings: Settings, tmp_path: Path) -> None:
    env = worker_env(settings, tmp_path / "data")
    proc = start_owner(env, "--no-sink", log=tmp_path / "owner.log")
    try:
        store = connect(Settings.from_env(env))
        assert isinstance(store, ServedStore)
        assert store.pipeline().stats()["sink"] == "stopped"  # nothing started before a client asks
        got = json.loads(python(env, WORKBENCH))
        assert got["store"] == "ServedStore" and got["chdb"] is False
        assert got["rows"] == 600 and got["message"] == ""
        assert got["state"] == {"rate": 1500.0, "scenarios": {"flash_sale": True}}
        assert 'data-table="preview"' in got["preview"]
        # The workbench's process is gone; the owner's pipeline and its rows are not.
        assert _count(store) == (600, 600)
        stats = store.pipeline().stats()
        assert stats["sink"] == "running" and stats["acked"] == 600
        store.close()
    finally:
        assert stop_owner(proc) == 0


def test_the_owner_adds_property_columns_and_serves_filters_on_them(tmp_path: Path) -> None:
    env = base_env(CLICKSTREAM_DATA_DIR=str(tmp_path / "data"))
    fill = (
        "from clickstream_lib.settings import Settings\n"
        "from clickstream_lib.store import connect\n"
        "from tests.integration.test_queries import insert_events, make_events, with_properties\n"
        "store = connect(Settings.from_env())\n"
        f"insert_events(store, with_properties(make_events(n_sessions={SESSIONS}, seed={SEED})))\n"
        "store.close()\nprint('ok')\n"
    )
    python(env, fill)
    events = with_properties(make_events(n_sessions=SESSIONS, seed=SEED))
    proc = start_owner({**env, "CLICKSTREAM_PROPERTY_COLUMNS": "plan"}, "--no-sink", log=tmp_path / "owner.log")
    try:
        store = connect(Settings.from_env(env))
        assert isinstance(store, ServedStore)
        assert store.property_columns() == frozenset({"plan"})
        for plan in ("pro", ""):
            got = queries.kpis(store, **{"prop.plan": plan})
            assert int(got["total_interactions"][0]) == int((events["prop.plan"] == plan).sum())
        b = queries.breakdown(store, by="prop.plan")
        want = events.groupby("prop.plan").size().rename(index={"": queries.NONE_LABEL})  # an empty value: (none)
        assert b.set_index("prop.plan")["events"].astype(int).to_dict() == want.to_dict()
        # A client cannot add columns to a directory the owner holds; the error says how.
        with pytest.raises(StoreError, match="CLICKSTREAM_PROPERTY_COLUMNS for `clickstream serve` and restart it"):
            store.add_property_columns(["seats"])
        store.close()
    finally:
        assert stop_owner(proc) == 0
