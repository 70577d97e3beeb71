"""The alerts form's TOML writing and editing (pure: no store)."""

from __future__ import annotations

import tomllib

import pytest

from clickstream_lib.alerts import parse_rules
from clickstream_lib.errors import ConfigError
from clickstream_lib.panels.alerts import field_of, rule_toml, set_muted, toml_value

RULES = """\
# alert rules of the shop
[[rule]]
name = "busy"   # a comment the form keeps
kind = "threshold"
query = "kpis"
value = "total_interactions"
threshold = 1000

[[rule]]
name = "slow"
kind = "threshold"
query = "events_per_second"
params = { seconds = 60 }
value = "events_per_second"
op = "<"
threshold = 5
muted = false
"""


@pytest.mark.parametrize(
    "value",
    ['quote " and \\ backslash', "tab\tand\nnewline", "ünïcødé ✓", "", 1, -2.5, 1e20, True, ["a", "b"], {"by": "x"}],
)
def test_toml_values_round_trip(value: object) -> None:
    assert tomllib.loads(f"v = {toml_value(value)}")["v"] == value


def test_a_rule_table_round_trips_through_the_loader() -> None:
    fields = {
        "name": 'item "spike"',
        "kind": "relative",
        "query": "breakdown",
        "params": {"by": "item_id"},
        "filters": {"interaction_type": ["purchase", "click"]},
        "value": "events",
        "key": "item_id",
        "window": "10m",
        "baseline": "24h",
        "factor": 1.5,
        "for": "2m",
    }
    (rule,) = parse_rules(rule_toml(fields))
    assert (rule.name, rule.params, rule.filters, rule.factor, rule.for_.total_seconds()) == (
        'item "spike"',
        {"by": "item_id"},
        {"interaction_type": ["purchase", "click"]},
        1.5,
        120.0,
    )


def test_muting_keeps_the_file_as_written() -> None:
    muted = set_muted(RULES, "alerts.toml", "busy", True)
    assert parse_rules(muted).get("busy").muted and not parse_rules(muted).get("slow").muted  # type: ignore[union-attr]
    assert "# alert rules of the shop" in muted and "# a comment the form keeps" in muted
    assert set_muted(muted, "alerts.toml", "busy", False).replace("muted = false\n", "", 1) == RULES
    both = set_muted(RULES, "alerts.toml", "slow", True)
    assert both.count("muted") == 1 and parse_rules(both).get("slow").muted  # type: ignore[union-attr]
    with pytest.raises(ConfigError, match="has no rule named 'nope'"):
        set_muted(RULES, "alerts.toml", "nope", True)


def test_loader_messages_name_the_form_field() -> None:
    for message, field in [
        ("alerts.toml:3: rule 'x': factor must be a number, got 'abc'", "factor"),
        ("alerts.toml:3: rule 'x': unknown parameter 'limit' of query breakdown; its parameters: by", "params"),
        ("alerts.toml:3: rule 'x': unknown filter 'colour'; filters: device", "filters"),
        ("alerts.toml:3: rule 'x': unknown query 'kpi'; known queries: active_users, breakdown", "query"),
        ("alerts.toml:3: a rule needs a name (a string of 1-200 characters)", "name"),
        ("alerts.toml:9: rule 'key': the name is already used by the rule at alerts.toml:1", "name"),
    ]:
        assert field_of(message) == field, message
    column = "alerts.toml:3: rule 'x': query breakdown has no column 'itm'; its columns: item_id, events"
    assert field_of(column) == "value" and field_of(column, {"key": "itm", "value": "events"}) == "key"
