"""Alerts against the real ClickHouse engine, delivered to a real local HTTP receiver; time driven by the test.

The store holds 24 hours of the Generator's ordinary traffic, then a 10-minute ``flash_sale`` of item_0007 and
50 ordinary minutes (tests/integration/alert_helpers.py). The case study's rule (purchases of an item in the last
10 minutes > 1.5 x its average per 10 minutes over the 24 hours before) is evaluated every minute of the test's
clock.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest

from clickstream_lib.alerts import (
    AlertRunner,
    Dispatcher,
    SlackNotifier,
    WebhookNotifier,
    backtest,
    banner_html,
    events,
    parse_rules,
)
from clickstream_lib.settings import Settings
from clickstream_lib.stack import free_port
from clickstream_lib.store import Store, connect
from tests.conftest import base_env
from tests.integration.alert_helpers import CASE_STUDY_RULE, ITEM, MIN, SALE_END, T0, Receiver, load

pytestmark = pytest.mark.integration


@pytest.fixture
def alert_store(session_dir: Path) -> Iterator[Store]:
    """This test's database in the process's embedded store (no Kafka needed: events are inserted directly)."""
    settings = Settings.from_env(
        base_env(), data_dir=session_dir / "data", clickhouse_database=f"alerts_{uuid.uuid4().hex[:10]}"
    )
    store = connect(settings)
    try:
        yield store
    finally:
        try:
            store.client.command(f"DROP DATABASE IF EXISTS {store.database} SYNC")
        finally:
            store.close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver(free_port())
    try:
        yield r
    finally:
        r.stop()


MINUTES = [T0 + i * MIN for i in range(41)]  # every minute, through the sale and 30 minutes after it


def expected_transitions(df: pd.DataFrame, minutes: list[datetime] = MINUTES) -> tuple[datetime, datetime]:
    """When the case study's rule should first fire for ITEM and then resolve, recomputed in pandas."""
    t = df.loc[(df["item_id"] == ITEM) & (df["interaction_type"] == "purchase"), "event_time"]
    fired = resolved = None
    for now in minutes:
        value = int(((t >= now - 10 * MIN) & (t < now)).sum())
        baseline = int(((t >= now - 10 * MIN - timedelta(hours=24)) & (t < now - 10 * MIN)).sum()) / 144
        holds = value >= 5 and value > 1.5 * baseline
        if holds and fired is None:
            fired = now
        if fired is not None and not holds and resolved is None:
            resolved = now
    assert fired is not None and resolved is not None
    return fired, resolved


def test_flash_sale_fires_once_for_the_promoted_item_and_resolves(alert_store: Store, receiver: Receiver) -> None:
    df = load(alert_store)
    receiver.start()
    rules = parse_rules(CASE_STUDY_RULE, "alerts.toml")
    clock = [T0]
    dispatcher = Dispatcher([WebhookNotifier(receiver.url)])
    runner = AlertRunner(alert_store, rules, dispatcher=dispatcher, clock=lambda: clock[0])
    want_fired, want_resolved = expected_transitions(df)
    # The sale's first purchases come a minute or two in (sessions walk view -> click -> cart -> purchase).
    assert T0 < want_fired <= T0 + 3 * MIN and SALE_END < want_resolved <= SALE_END + 11 * MIN

    transitions = []
    keys = set()
    for now in MINUTES:
        clock[0] = now
        ev = runner.evaluate()
        transitions += ev.transitions
        keys |= {f.key for f in ev.firing}
        if now < want_fired:
            assert ev.firing == []
        if now == want_fired:  # the first evaluation at which the store holds the spike
            assert [(f.rule.name, f.key) for f in ev.firing] == [("item purchase spike", ITEM)]
            fired = ev.firing[0]
    assert keys == {ITEM}
    assert [(t.kind, t.at) for t in transitions] == [("fired", want_fired), ("resolved", want_resolved)], (
        "fired once in spite of evaluations every minute (cooldown 5m), resolved when the spike was over"
    )
    assert fired.value >= 5 and fired.value > 1.5 * (fired.baseline or 0)

    assert dispatcher.flush(10)
    dispatcher.close()
    assert len(receiver.bodies) == 2, receiver.bodies
    firing, resolved = receiver.bodies
    assert set(firing) == {"text", "blocks"} and isinstance(firing["blocks"], list)
    text = firing["text"]
    assert f"item_id={ITEM}" in text and "FIRING" in text and "[critical]" in text
    assert f"events {int(fired.value)}" in text and f"baseline {fired.baseline:.2f}" in text
    fields = [f["text"] for f in firing["blocks"][1]["fields"]]
    assert f"*item_id*\n{ITEM}" in fields and f"*events*\n{int(fired.value)}" in fields
    assert "RESOLVED" in resolved["text"] and ITEM in resolved["text"]

    stored = events(alert_store)
    assert len(stored) == 1
    row = stored.iloc[0]
    assert (row["rule"], row["key"], row["value"]) == ("item purchase spike", ITEM, fired.value)
    assert row["baseline"] == pytest.approx(fired.baseline)
    assert row["fired_at"] == want_fired and row["resolved_at"] == want_resolved
    assert banner_html(alert_store) == ""  # nothing firing any more


def test_backtest_lists_when_the_rule_would_have_fired(alert_store: Store) -> None:
    want_fired, want_resolved = expected_transitions(load(alert_store))
    rules = parse_rules(CASE_STUDY_RULE, "alerts.toml")
    df = backtest(alert_store, rules, T0 - 30 * MIN, SALE_END + 40 * MIN, step=MIN)
    assert df[["rule", "key"]].values.tolist() == [["item purchase spike", ITEM]]
    assert (df["fired_at"].iloc[0], df["resolved_at"].iloc[0]) == (want_fired, want_resolved)
    assert events(alert_store).empty  # a backtest stores nothing


def test_a_dead_webhook_never_blocks_evaluation_and_gets_the_alert_once_it_is_up(
    alert_store: Store, receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    want_fired, _ = expected_transitions(load(alert_store))
    rules = parse_rules(CASE_STUDY_RULE, "alerts.toml")
    clock = [want_fired]
    dispatcher = Dispatcher([WebhookNotifier(receiver.url)], backoff_s=0.2, max_backoff_s=1.0)
    runner = AlertRunner(alert_store, rules, dispatcher=dispatcher, clock=lambda: clock[0])
    caplog.set_level(logging.DEBUG, logger="clickstream_lib")

    durations = []
    for _ in range(5):  # the receiver refuses connections all along
        started = time.monotonic()
        ev = runner.evaluate()
        durations.append(time.monotonic() - started)
        clock[0] += MIN
        time.sleep(0.5)
    assert [f.key for f in ev.firing] == [ITEM]
    assert max(durations) < 2.0, durations  # evaluation did not wait for the receiver
    stats = dispatcher.stats()[f"webhook http://127.0.0.1:{receiver.port}"]
    assert stats["delivered"] == 0 and stats["pending"] == 1 and stats["failures"] >= 2
    assert len(events(alert_store)) == 1  # stored while the receiver was down
    # the store took writes meanwhile (what a sink in the same process does): the count is exact
    before = alert_store.scalar(f"SELECT count() FROM {alert_store.table('events')}")

    receiver.start()
    assert receiver.wait(1, timeout_s=10), "the alert arrives once the receiver is up"
    assert dispatcher.flush(5)
    dispatcher.close()
    assert len(receiver.bodies) == 1 and ITEM in receiver.bodies[0]["text"]
    assert alert_store.scalar(f"SELECT count() FROM {alert_store.table('events')}") == before
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "retrying" in logged and "secret-part" not in logged and "/services/" not in logged


def test_slack_bot_posts_through_slack_sdk(
    alert_store: Store, receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    """slack_sdk's WebClient against a local stand-in of the Slack Web API (chat.postMessage)."""
    from slack_sdk import WebClient

    caplog.set_level(logging.DEBUG)

    want_fired, _ = expected_transitions(load(alert_store))
    receiver.start()
    token = "xoxb-test-" + uuid.uuid4().hex
    client = WebClient(token=token, base_url=f"http://127.0.0.1:{receiver.port}/api/")
    dispatcher = Dispatcher([SlackNotifier(token, "#alerts", client=client)])
    runner = AlertRunner(alert_store, parse_rules(CASE_STUDY_RULE), dispatcher=dispatcher, clock=lambda: want_fired)
    assert len(runner.evaluate().fired) == 1
    assert dispatcher.flush(10)
    dispatcher.close()
    assert receiver.paths == ["/api/chat.postMessage"]
    (body,) = receiver.bodies
    assert body["channel"] == "#alerts" and ITEM in body["text"] and body["blocks"][0]["type"] == "section"
    assert caplog.records and token not in "\n".join(r.getMessage() for r in caplog.records)


def test_open_firings_are_taken_up_by_the_next_runner(alert_store: Store) -> None:
    want_fired, _ = expected_transitions(load(alert_store))
    rules = parse_rules(CASE_STUDY_RULE)
    first = AlertRunner(alert_store, rules, clock=lambda: want_fired)
    assert len(first.evaluate().fired) == 1
    second = AlertRunner(alert_store, rules)  # e.g. the next `alerts check` from cron
    ev = second.evaluate(want_fired + MIN)
    assert ev.fired == [] and [f.key for f in ev.firing] == [ITEM]
    assert "item purchase spike" in banner_html(alert_store)
    assert len(events(alert_store, start="2026-11-28T12:00Z", end=(SALE_END + MIN).isoformat())) == 1
    assert events(alert_store, start=SALE_END + MIN).empty and events(alert_store, end=T0).empty
    ev = second.evaluate(SALE_END + timedelta(minutes=20))
    assert [t.kind for t in ev.transitions] == ["resolved"]


def test_with_the_real_pipeline_a_dead_webhook_leaves_the_sink_alone_and_gets_the_alert_later(
    settings: Settings, store: Store
) -> None:
    """The sale's events go producer -> Kafka -> Sink while the webhook refuses connections for 30 s; the rule is
    evaluated all along in the same process. The sink stores every event, evaluation never waits, and the alert
    arrives once the webhook is up."""
    from clickstream_lib import topics
    from clickstream_lib.sink import Sink
    from tests.integration.alert_helpers import as_rows, history, timeline
    from tests.integration.sink_worker import produce
    from tests.integration.test_queries import insert_events

    ordinary, *live = timeline()
    insert_events(store, as_rows(ordinary.to_frame(), 0))  # the day before: history already in the store
    want_fired, _ = expected_transitions(history())
    values = [v for part in live for _, v in part.to_messages()]
    receiver = Receiver(free_port())
    dispatcher = Dispatcher([WebhookNotifier(receiver.url)], backoff_s=0.5, max_backoff_s=4.0)
    reader = store.fork()  # the evaluating thread's own client, as the sink has its own
    runner = AlertRunner(reader, parse_rules(CASE_STUDY_RULE), dispatcher=dispatcher, clock=lambda: want_fired)
    topics.ensure_topic(settings, settings.kafka_topic)
    sink = Sink(settings, store, batch_max_rows=500, batch_max_wait_s=0.3).start()
    producing = threading.Thread(target=produce, args=(settings, values), kwargs={"rate": 300})
    down_until = time.monotonic() + 30
    durations, fired_at = [], None
    try:
        producing.start()
        while time.monotonic() < down_until:
            started = time.monotonic()
            ev = runner.evaluate()
            durations.append(time.monotonic() - started)
            if ev.fired:
                fired_at = time.monotonic()
            time.sleep(0.5)
        producing.join(60)
        deadline = time.monotonic() + 120
        while sink.stats().rows_inserted < len(values) and time.monotonic() < deadline:
            time.sleep(0.2)
        stats = sink.stats()
        assert fired_at is not None, "the rule fired while the webhook was down"
        assert receiver.bodies == []
        assert max(durations) < 3.0, durations  # evaluation never waited for the dead webhook
        receiver.start()
        assert receiver.wait(1, timeout_s=15), "the alert arrives once the webhook is up"
    finally:
        sink.stop()
        dispatcher.close()
        receiver.stop()
        reader.close()
    # The sink's figures: every event stored once, nothing dead-lettered, no error.
    assert (stats.rows_inserted, stats.dead_letters, stats.last_error) == (len(values), 0, None)
    n = len(ordinary) + len(values)
    assert store.query_rows(f"SELECT count(), uniqExact(event_id) FROM {store.table('events')}")[0] == (n, n)
    assert len(receiver.bodies) == 1 and f"item_id={ITEM}" in receiver.bodies[0]["text"]


OTHER_KINDS = """\
[[rule]]
name = "busy ten minutes"
kind = "threshold"
query = "kpis"
value = "total_interactions"
window = "10m"
threshold = 1000

[[rule]]
name = "live rate"
kind = "threshold"
query = "events_per_second"
params = { seconds = 600 }
value = "events_per_second"
threshold = 2

[[rule]]
name = "traffic anomaly"
kind = "anomaly"
query = "timeseries"
params = { bucket = "minute" }
value = "events"
buckets = 30
z = 4
"""


def test_threshold_live_and_anomaly_rules_on_the_store(alert_store: Store) -> None:
    df = load(alert_store)
    rules = parse_rules(OTHER_KINDS)
    runner = AlertRunner(alert_store, rules, record=False)
    assert runner.evaluate(T0).firing == []
    per_minute = df.groupby(df["event_time"].dt.floor("min")).size()
    ev = runner.evaluate(T0 + 2 * MIN)  # the last complete minute is [T0 + 1m, T0 + 2m): four times the traffic
    anomaly = next(f for f in ev.firing if f.rule.name == "traffic anomaly")
    assert anomaly.value == per_minute[pd.Timestamp(T0 + MIN)]
    history = per_minute.reindex(pd.date_range(T0 - 30 * MIN + MIN, T0 + MIN, freq="min", inclusive="left"))
    assert anomaly.baseline == pytest.approx(history.fillna(0).mean())
    assert anomaly.score is not None and anomaly.score > 4
    ev = runner.evaluate(SALE_END)
    # By the sale's end its minutes are part of the anomaly's 30-minute history: no longer unusual.
    assert {f.rule.name for f in ev.firing} == {"busy ten minutes", "live rate"}
    sale = int(((df["event_time"] >= T0) & (df["event_time"] < SALE_END)).sum())
    busy = next(f for f in ev.firing if f.rule.name == "busy ten minutes")
    live = next(f for f in ev.firing if f.rule.name == "live rate")
    assert busy.value == sale and live.value == pytest.approx(sale / 600)
    ev = runner.evaluate(SALE_END + 30 * MIN)
    assert ev.firing == [] and {t.kind for t in ev.transitions} == {"resolved"}


def test_for_counts_across_separate_runs_through_the_store(alert_store: Store) -> None:
    """`for` with cron: each minute a new runner (a new process: nothing in memory) evaluates once; the pending
    state kept in the store makes them fire exactly when one long-lived runner does, `for` after it began to hold."""
    want_fired, _ = expected_transitions(load(alert_store))
    rules = parse_rules(CASE_STUDY_RULE + 'for = "5m"\n')
    one = AlertRunner(alert_store, rules, record=False)  # the reference: one process evaluating every minute
    reference = [(t.kind, t.at) for now in MINUTES for t in one.evaluate(now).transitions]
    assert reference[0] == ("fired", want_fired + 5 * MIN) and [k for k, _ in reference] == ["fired", "resolved"]

    cron = []
    for now in MINUTES:
        ev = AlertRunner(alert_store, rules).evaluate(now)
        cron += [(t.kind, t.at) for t in ev.transitions]
        if want_fired <= now < want_fired + 5 * MIN:
            assert ev.firing == [] and ev.pending[("item purchase spike", ITEM)] == want_fired
    assert cron == reference
    # Once resolved, nothing of the key is left pending for the next run.
    assert AlertRunner(alert_store, rules).evaluate(MINUTES[-1]).pending == {}
