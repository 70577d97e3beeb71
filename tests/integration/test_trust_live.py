"""Numbers users can trust (issue #16) while events flow: the dashboard's panels agree with each other at every
refresh, and the producer's acknowledgements balance against the store per partition.

The real pipeline (the project's producer and sink, threads in this process) writes into the real engine through
the session broker; the dashboard refreshes as it does in Voila, and what it asked the store (its ``run_many``
calls) and what it got back are recorded by wrapping ``queries.run_many``.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from clickstream_lib import queries
from clickstream_lib.dashboard import Dashboard
from clickstream_lib.panels import reconcile as reconcile_panel
from clickstream_lib.pipeline import Pipeline
from clickstream_lib.service import SHARE_S
from clickstream_lib.settings import Settings
from clickstream_lib.store import ServedStore, Store, connect
from tests.helpers import RunManySpy, wait_until
from tests.integration.owner import start_owner, stop_owner
from tests.integration.sink_worker import worker_env

pytestmark = pytest.mark.integration

RATE = 1_500.0  # events/s: the sink stores a batch every few hundred ms, so inserts land between a refresh's queries
MOMENTS = 3  # refreshes checked per window and filter choice, each after more events were stored


@pytest.fixture
def spy(monkeypatch: pytest.MonkeyPatch) -> RunManySpy:
    recorder = RunManySpy(queries.run_many)
    monkeypatch.setattr(queries, "run_many", recorder)
    return recorder


@pytest.fixture
def live(settings: Settings, store: Store) -> Iterator[Pipeline]:
    pipeline = Pipeline(settings, store, rate=RATE, seed=16)
    try:
        yield pipeline
    finally:
        pipeline.close()


def shown_kpi(dash: Dashboard, key: str) -> int:
    found = re.search(rf'data-kpi="{key}" data-value="([^"]*)"', dash.kpis.value)
    assert found, dash.kpis.value
    return int(found.group(1))


def check_refresh(dash: Dashboard, spy: RunManySpy, label: str, cut: bool = False) -> dict[str, int]:
    """One refresh of ``dash``: the invariants over what its queries returned, and the KPIs on the page. ``cut``:
    the store is read as a server store is, every panel at one ingest time; else in one snapshot."""
    spy.calls.clear()
    spy.consistent.clear()
    dash.refresh()
    assert dash.error is None and "Refresh failed" not in dash.header.value, dash.header.value
    got = spy.frames()
    kpi_args, kpis = got["kpis"][0]
    if cut:
        assert not any(spy.consistent) and all("as_of" in kw for kw, _ in got["breakdown"]), (label, kpi_args)
        assert "as_of" in kpi_args and kpis.attrs["source"] == "raw", (label, kpi_args, kpis.attrs)
    else:
        # The KPIs and the panels checked below in one snapshot of the embedded store, so they read the rollups,
        # not raw events cut at an ingest time.
        (snapshot,) = [i for i, (asked, _) in enumerate(spy.calls) if any(name == "kpis" for name, _ in asked)]
        names = {name for name, _ in spy.calls[snapshot][0]}
        assert spy.consistent[snapshot], f"{label}: the KPIs' call was not consistent ({spy.consistent})"
        assert {"active_users", "breakdown", "timeseries", "funnel", "sessions"} <= names, (label, names)
        assert "as_of" not in kpi_args, (label, kpi_args)
        if "all time" in label:
            assert kpis.attrs["source"] != "raw", (label, kpis.attrs)  # a rollup answers
    total, users = int(kpis["total_interactions"][0]), int(kpis["unique_users"][0])
    where = f"{label}, {kpi_args}"
    assert (shown_kpi(dash, "total"), shown_kpi(dash, "users")) == (total, users), where
    active = int(got["active_users"][0][1]["active_users"][0])
    assert active <= users, f"active users {active} > unique users {users} ({where})"
    assert shown_kpi(dash, "active_users") == active
    for kwargs, df in got["breakdown"]:
        assert int(df["events"].sum()) == total, (
            f"breakdown by {kwargs['by']}: {df['events'].sum()} != {total} ({where})"
        )
    (_, series), *_ = got["timeseries"]
    assert int(series["events"].sum()) == total, f"time series {series['events'].sum()} != {total} ({where})"
    (_, funnel), *_ = got["funnel"]
    steps = [int(n) for n in funnel["users"]]
    assert steps == sorted(steps, reverse=True), (steps, where)
    assert steps[0] <= users, (steps, users, where)
    (_, sessions), *_ = got["sessions"]
    session_users = int(sessions["users"][0])
    assert session_users <= users, f"session users {session_users} > unique users {users} ({where})"
    return {"total": total, "users": users, "active": active, "funnel_first": steps[0], "session_users": session_users}


@pytest.mark.parametrize("reads", ["snapshot", "cut"])
def test_the_dashboards_panels_agree_while_events_flow(
    settings: Settings, store: Store, live: Pipeline, spy: RunManySpy, monkeypatch: pytest.MonkeyPatch, reads: str
) -> None:
    cut = reads == "cut"
    if cut:  # read as a ClickHouse server is, whose writers in other processes no gate here holds off
        monkeypatch.setattr(Store, "consistent_reads", property(lambda self: False))
    # All time, the last 5 minutes, and all time on mobile devices: a dashboard each, so no filter change refreshes.
    dashboards = {
        "all time": Dashboard(settings, store=store),
        "last 5 minutes": Dashboard(settings, store=store, window_s=300),
    }
    mobile = Dashboard(settings, store=store)
    live.start()
    all_time: list[int] = []
    on_mobile = 0
    step = int(RATE)  # at least a second of events stored between two checks
    for moment in range(1, MOMENTS + 1):
        target = moment * step

        def stored_enough(t: int = target) -> bool:
            return live.rows_inserted() >= t

        wait_until(stored_enough, 120, what=f"{target} events stored", state=live.stats)
        for label, dash in dashboards.items():
            seen = check_refresh(dash, spy, f"moment {moment}, {label}", cut)
            if label == "all time":
                all_time.append(seen["total"])
        if mobile.filters.device.value != "mobile" and "mobile" in mobile.filters.device.options:
            mobile.filters.device.value = "mobile"  # offered once a refresh has seen it
        if mobile.filters.device.value == "mobile":
            on_mobile += check_refresh(mobile, spy, f"moment {moment}, mobile", cut)["total"] > 0
        else:
            mobile.refresh()
    stats = live.stats()
    assert stats["producer"] == "running" and stats["sink"] == "running", stats  # checked while events flowed
    # Every check saw more events stored than the one before, and the device filter was exercised.
    assert all_time == sorted(all_time) and all_time[-1] > all_time[0] > 0 and on_mobile >= MOMENTS - 1, all_time


def test_a_served_dashboards_panels_agree_while_the_owner_stores_events(
    settings: Settings, spy: RunManySpy, tmp_path: Path
) -> None:
    """The same checks against `clickstream serve` running the live pipeline: the owner holds its sink's inserts off
    while it runs a dashboard's consistent batch (``queries.run_many(..., consistent=True)``)."""
    env = worker_env(settings, tmp_path / "data")
    client_settings = Settings.from_env(env)
    log = tmp_path / "owner.log"
    proc = start_owner(env, "--produce", "--rate", str(int(RATE)), "--seed", "16", log=log)
    try:
        served = connect(client_settings)
        assert isinstance(served, ServedStore)
        dash = Dashboard(client_settings, store=served)
        seen: list[int] = [0]
        for moment in range(1, MOMENTS + 1):
            # The owner shares an identical batch's answer for SHARE_S, and its answers to the wait's query too:
            # past that, a second of events more than the last refresh saw.
            time.sleep(SHARE_S)
            target = seen[-1] + int(RATE)

            def stored(t: int = target) -> bool:
                return int(queries.run(served, "kpis", source="raw")["total_interactions"][0]) >= t

            wait_until(stored, 120, what=f"{target} events stored", state=lambda: log.read_text()[-2000:])
            seen.append(check_refresh(dash, spy, f"served, moment {moment}, all time")["total"])
        assert seen == sorted(seen) and seen[-1] > seen[1] > 0, seen
        assert served.pipeline().stats()["sink"] == "running"
    finally:
        assert stop_owner(proc) == 0, log.read_text()[-3000:]


def test_producer_acks_per_partition_equal_the_rows_stored_there(
    settings: Settings, store: Store, live: Pipeline
) -> None:
    n = 6_000
    live.start(events=n)
    wait_until(lambda: live.stats()["acked"] == n, 120, what="every event acknowledged", state=live.stats)
    wait_until(lambda: live.rows_inserted() == n, 120, what="every event stored", state=live.stats)
    live.stop()  # the sink commits what it stored
    acked = live.stats()["acked_by_partition"]
    assert sum(acked.values()) == n and len(acked) == settings.kafka_partitions, acked

    df = reconcile_panel.reconcile(store, settings, acked=acked)
    assert list(df.columns[:4]) == ["partition", "log_start", "high_watermark", "producer_acked"]
    for row in df.itertuples():
        assert row.producer_acked == acked[row.partition] == row.rows_stored, row
        assert row.producer_acked == row.high_watermark - row.log_start == row.committed, row
        assert row.balanced, row
    summary = reconcile_panel.totals(df)
    assert (summary["producer_acked"], summary["acked_not_in_kafka"], summary["balanced"]) == (n, 0, True)

    # The panel takes them from the pipeline's stats, as the dashboard and the workbench give them.
    panel = reconcile_panel.ReconcilePanel(
        store, settings, produced=lambda: reconcile_panel.producer_acks(live.stats())
    )
    panel.refresh()
    assert panel.frame is not None and list(panel.frame["producer_acked"]) == [acked[p] for p in sorted(acked)]
    assert (
        'data-reconcile="verdict">balanced<' in panel.widget.value and "<th>producer_acked</th>" in panel.widget.value
    )
