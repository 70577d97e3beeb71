"""The alert state machine and the measuring arithmetic, with fakes: no store, no network, time driven by the test."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from typing import Any

import pandas as pd
import pytest

from clickstream_lib.alerts import AlertRunner, Dispatcher, Engine, Observation, parse_rules, slack_body
from clickstream_lib.alerts.engine import FIRED, RESOLVED
from clickstream_lib.alerts.measure import anomaly_values, bucket_floor, relative_values, threshold_values
from clickstream_lib.errors import ConfigError, StoreError

T0 = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
MIN = timedelta(minutes=1)


def one(kind: str = "relative", **fields: Any) -> Any:
    base = {
        "relative": 'query = "breakdown"\nparams = { by = "item_id" }\nvalue = "events"\nkey = "item_id"\n'
        'window = "10m"\nbaseline = "24h"\nfactor = 1.5',
        "threshold": 'query = "kpis"\nvalue = "total_interactions"\nthreshold = 100',
        "anomaly": 'query = "timeseries"\nvalue = "events"\nbuckets = 5\nz = 3',
    }[kind]
    extra = "\n".join(f"{k} = {v!r}".replace("'", '"') for k, v in fields.items())
    (rule,) = parse_rules(f'[[rule]]\nname = "r"\nkind = "{kind}"\n{base}\n{extra}\n')
    return rule


def test_fires_once_while_it_holds_and_resolves_when_it_stops() -> None:
    rule, engine = one(cooldown="5m"), Engine()
    spike = [Observation("item_7", 30, 4.0), Observation("item_1", 5, 4.0)]
    (t,) = engine.observe(rule, T0, spike)
    assert (t.kind, t.key, t.value, t.baseline, t.fired_at) == (FIRED, "item_7", 30, 4.0, T0)
    for i in range(1, 6):
        assert engine.observe(rule, T0 + i * MIN, spike) == []
    assert [f.key for f in engine.firing([rule])] == ["item_7"]
    (t,) = engine.observe(rule, T0 + 6 * MIN, [Observation("item_7", 5, 4.0)])
    assert (t.kind, t.fired_at, t.resolved_at) == (RESOLVED, T0, T0 + 6 * MIN)
    assert engine.firing([rule]) == []


def test_cooldown_holds_back_a_flap_then_fires_if_it_still_holds() -> None:
    rule, engine = one(cooldown="5m"), Engine()
    hi, lo = [Observation("a", 30, 4.0)], [Observation("a", 1, 4.0)]
    assert [t.kind for t in engine.observe(rule, T0, hi)] == [FIRED]
    assert [t.kind for t in engine.observe(rule, T0 + MIN, lo)] == [RESOLVED]
    assert engine.observe(rule, T0 + 2 * MIN, hi) == []  # within 5 minutes of the firing: held back
    assert engine.observe(rule, T0 + 4 * MIN, hi) == []
    (t,) = engine.observe(rule, T0 + 5 * MIN, hi)
    assert (t.kind, t.fired_at) == (FIRED, T0 + 5 * MIN)


def test_for_needs_the_condition_to_hold_that_long_without_a_break() -> None:
    rule, engine = one("threshold", **{"for": "3m"}), Engine()
    hi, lo = [Observation("", 500)], [Observation("", 5)]
    assert engine.observe(rule, T0, hi) == []
    assert engine.observe(rule, T0 + 2 * MIN, hi) == []
    assert engine.observe(rule, T0 + 2 * MIN + timedelta(seconds=30), lo) == []  # a break: starts again
    assert engine.observe(rule, T0 + 4 * MIN, hi) == []
    (t,) = engine.observe(rule, T0 + 7 * MIN, hi)
    assert t.fired_at == T0 + 7 * MIN


def test_a_key_that_disappears_resolves() -> None:
    rule, engine = one(), Engine()
    assert len(engine.observe(rule, T0, [Observation("a", 9, 1.0)])) == 1
    (t,) = engine.observe(rule, T0 + MIN, [])
    assert (t.kind, t.key, t.value) == (RESOLVED, "a", 0.0)


def test_restored_firing_is_not_repeated_and_keeps_its_cooldown() -> None:
    rule, engine = one(), Engine()
    engine.restore("r", "a", T0, None, 9.0, 1.0)
    assert engine.observe(rule, T0 + MIN, [Observation("a", 9, 1.0)]) == []
    engine2 = Engine()
    engine2.restore("r", "a", T0, T0 + MIN, 9.0, 1.0)
    assert engine2.observe(rule, T0 + 2 * MIN, [Observation("a", 9, 1.0)]) == []  # cooling down
    assert len(engine2.observe(rule, T0 + 5 * MIN, [Observation("a", 9, 1.0)])) == 1


def test_min_value_ignores_tiny_counts() -> None:
    rule = one(min_value=5)
    assert not rule.holds(3, 0.1) and rule.holds(6, 0.1) and not rule.holds(6, 4.5)


def test_relative_values_average_the_baseline_per_window() -> None:
    rule = one()
    current = pd.DataFrame({"item_id": ["a", "b"], "events": [30, 2], "share": [0.9, 0.1]})
    before = pd.DataFrame({"item_id": ["a", "c"], "events": [144 * 4, 288], "share": [0.5, 0.5]})
    got = {o.key: (o.value, o.baseline) for o in relative_values(rule, current, before)}
    assert got == {"a": (30.0, 4.0), "b": (2.0, 0.0), "c": (0.0, 2.0)}
    with pytest.raises(ConfigError, match="has no column 'events'; its columns: item_id, n") as info:
        relative_values(rule, pd.DataFrame({"item_id": ["a"], "n": [1]}), before)
    assert "rule 'r'" in str(info.value)


def test_threshold_values_without_key_take_the_first_row_or_zero() -> None:
    rule = one("threshold")
    assert threshold_values(rule, pd.DataFrame({"total_interactions": [7]})) == [Observation("", 7.0)]
    assert threshold_values(rule, pd.DataFrame({"total_interactions": []})) == [Observation("", 0.0)]


def test_anomaly_zscore_fills_missing_buckets_with_zero() -> None:
    rule = one("anomaly")
    end = bucket_floor(T0 + timedelta(seconds=42), MIN)
    assert end == T0
    times = [T0 - MIN * k for k in (6, 5, 4, 3, 1)]  # the bucket 2 minutes back has no row
    df = pd.DataFrame(
        {"time": times * 2, "interaction_type": ["view"] * 5 + ["click"] * 5, "events": [5, 5, 5, 5, 30] * 2}
    )
    (obs,) = anomaly_values(rule, df, end)
    history = [10, 10, 10, 0, 10]
    mean = sum(history) / 5
    std = math.sqrt(sum((h - mean) ** 2 for h in history) / 5)
    assert obs.value == 60 and obs.baseline == mean
    assert obs.score == pytest.approx((60 - mean) / std)


class FakeNotifier:
    label = "fake"

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []

    def send(self, body: dict[str, Any]) -> None:
        self.bodies.append(body)


def test_runner_with_a_fake_measure_and_clock() -> None:
    rule = one(cooldown="5m")
    now = [T0]
    values = {"a": 30.0}
    calls: list[datetime] = []

    def fake_measure(store: Any, r: Any, at: datetime) -> list[Observation]:
        calls.append(at)
        if values.get("down"):
            raise StoreError("store down")
        return [Observation(k, v, 4.0) for k, v in values.items()]

    notifier = FakeNotifier()
    dispatcher = Dispatcher([notifier])
    runner = AlertRunner(
        None,  # type: ignore[arg-type]  # no store: measure_fn is a fake and nothing is recorded
        [rule],
        dispatcher=dispatcher,
        clock=lambda: now[0],
        record=False,
        measure_fn=fake_measure,
    )
    ev = runner.evaluate()
    assert [f.key for f in ev.firing] == ["a"] and len(ev.fired) == 1 and calls == [T0]
    values["down"] = 1.0
    now[0] = T0 + MIN
    ev = runner.evaluate()
    assert ev.errors == {"r": "store down"} and [f.key for f in ev.firing] == ["a"]  # state kept
    del values["down"]
    values["a"] = 1.0
    now[0] = T0 + 2 * MIN
    assert [t.kind for t in runner.evaluate().transitions] == [RESOLVED]
    assert dispatcher.flush(5)
    assert [b["text"].split(" ")[1] for b in notifier.bodies] == ["FIRING", "RESOLVED"]
    dispatcher.close()


def test_slack_body_names_the_key_value_and_baseline() -> None:
    rule = one()
    (t,) = Engine().observe(rule, T0, [Observation("item_0042", 31, 4.25)])
    body = slack_body(t)
    assert "item_id=item_0042" in body["text"] and "events 31" in body["text"] and "baseline 4.25" in body["text"]
    assert body["blocks"][0]["type"] == "section"
    fields = [f["text"] for f in body["blocks"][1]["fields"]]
    assert fields[:3] == ["*item_id*\nitem_0042", "*events*\n31", "*baseline*\n4.25"]


def test_the_schedule_rereads_a_changed_rules_file_and_keeps_its_rules_when_it_breaks(tmp_path: Any) -> None:
    from clickstream_lib.alerts import load_rules
    from clickstream_lib.panels.alerts import set_muted

    path = tmp_path / "alerts.toml"
    text = '[[rule]]\nname = "r"\nkind = "threshold"\nquery = "kpis"\nvalue = "total_interactions"\nthreshold = 1\n'
    path.write_text(text)
    runner = AlertRunner(None, load_rules(path), record=False, rules_path=path)  # type: ignore[arg-type]
    assert not runner.reload()  # unchanged
    path.write_text(set_muted(text, str(path), "r", True))  # what the workbench's form does
    assert runner.reload() and runner.rules[0].muted
    path.write_text(text + "bogus = 1\n")
    assert not runner.reload() and runner.rules[0].muted and len(runner.rules) == 1
    path.write_text(text + text.replace('"r"', '"s"'))
    assert runner.reload() and [r.name for r in runner.rules] == ["r", "s"]


def test_an_owner_writes_only_the_alert_tables_for_its_clients() -> None:
    """The owner's ``alerts.record`` action (history.write_rows) refuses any other table or other columns before
    it touches the store."""
    from clickstream_lib.alerts.history import PENDING_COLUMNS, write_rows

    for table, columns in [
        ("events", ["event_id"]),
        ("alert_pending", ["rule", "key"]),
        ("alert_pending", [*PENDING_COLUMNS[:-1], "ingest_time"]),
    ]:
        with pytest.raises(StoreError, match="writes the columns of alert_events or alert_pending only"):
            write_rows(None, table, columns, [[] for _ in columns])  # type: ignore[arg-type]
    with pytest.raises(StoreError, match="different lengths"):
        write_rows(None, "alert_pending", list(PENDING_COLUMNS), [["r"], ["k"], [None], []])  # type: ignore[arg-type]


def test_the_owners_schedule_keeps_going_through_a_rule_it_cannot_evaluate() -> None:
    import threading

    rule = one(cooldown="5m")
    calls: list[int] = []
    third = threading.Event()

    def fake_measure(store: Any, r: Any, at: datetime) -> list[Observation]:
        calls.append(1)
        if len(calls) >= 3:
            third.set()
        if len(calls) == 1:
            raise r.error("query breakdown has no column 'evnts'")
        return [Observation("a", 1.0, 4.0)]

    runner = AlertRunner(None, [rule], record=False, measure_fn=fake_measure)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="has no column"):  # `alerts run`: exit 2
        runner.run(0.01)
    runner = AlertRunner(None, [rule], record=False, measure_fn=fake_measure)  # type: ignore[arg-type]
    calls.clear()
    runner.start(0.01)  # the owner's thread
    assert third.wait(10), "the schedule went on after the bad evaluation"
    assert runner.stop(5)
