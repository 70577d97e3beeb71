"""The workbench's alerts panel driven from Python (its ipywidgets), against the real store: the form writes the
rules file the CLI reads, mutes rules in it, and tries a rule on the store without storing or posting anything."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from clickstream_lib.alerts import AlertRunner, events, load_rules, parse_rules
from clickstream_lib.alerts.measure import measure
from clickstream_lib.panels.alerts import AlertBanner, AlertsPanel
from clickstream_lib.store import Store
from tests.integration.alert_helpers import CASE_STUDY_RULE, ITEM, load
from tests.integration.test_alerts import alert_store, expected_transitions  # noqa: F401  (a fixture)

CASE_STUDY_FORM = {
    "name": "item purchase spike",
    "kind": "relative",
    "query": "breakdown",
    "params": '{ by = "item_id" }',
    "filters": '{ interaction_type = "purchase" }',
    "value": "events",
    "key": "item_id",
    "window": "10m",
    "baseline": "24h",
    "factor": "1.5",
    "min_value": "5",
    "severity": "critical",
    "cooldown": "5m",
}


def fill(panel: AlertsPanel, values: dict[str, str]) -> None:
    """Type into the form as a user would: the kind first (it decides which fields show), then the rest."""
    panel.fields["kind"].value = values["kind"]
    for name, value in values.items():
        panel.fields[name].value = value


def test_the_form_writes_the_rule_the_cli_reads_and_errors_name_the_field(
    alert_store: Store,  # noqa: F811
    tmp_path: Path,
) -> None:
    path = tmp_path / "rules" / "alerts.toml"
    panel = AlertsPanel(alert_store, path)
    fill(panel, CASE_STUDY_FORM)
    assert panel.add(), panel.message.value
    (written,) = load_rules(path)  # the loader of `clickstream alerts check --rules`
    (want,) = parse_rules(CASE_STUDY_RULE)
    assert dataclasses.replace(written, origin="") == dataclasses.replace(want, origin="")
    assert panel.rule_names.options == ("item purchase spike",)
    before = path.read_text()

    for field, bad, words in [
        ("factor", "abc", "factor must be a number, got 'abc'"),
        ("params", "{ limit = 3 }", "unknown parameter 'limit' of query breakdown"),
        ("window", "soon", "window 'soon' is not a duration"),
        ("value", "evnts", "query breakdown has no column 'evnts'"),  # found when measured: by "try"
    ]:
        fill(panel, {**CASE_STUDY_FORM, "name": "second", field: bad})
        if field == "value":
            panel.try_rule()
            assert panel.error_field == "value" and words in panel.error
            continue
        assert not panel.add()
        assert panel.error_field == field and words in panel.error, panel.message.value
        assert "cs-field-error" in panel.fields[field]._dom_classes
        assert path.read_text() == before  # nothing written
    fill(panel, CASE_STUDY_FORM)  # the same name again
    assert not panel.add() and panel.error_field == "name" and "already used" in panel.error

    # A threshold rule: only its fields count (the relative fields typed before are hidden and left out).
    fill(panel, {"kind": "threshold", "name": "busy", "query": "kpis", "value": "total_interactions"})
    for name in ("params", "filters", "key", "min_value"):
        panel.fields[name].value = ""
    panel.fields["threshold"].value = "1000"
    panel.fields["window"].value = "10m"
    assert panel.add(), panel.message.value
    assert [r.name for r in load_rules(path)] == ["item purchase spike", "busy"]
    assert panel.fields["factor"].layout.display == "none" and panel.fields["threshold"].layout.display == ""

    assert panel.mute("item purchase spike")
    assert load_rules(path).get("item purchase spike").muted  # type: ignore[union-attr]
    assert not load_rules(path).get("busy").muted  # type: ignore[union-attr]
    panel.buttons["unmute"].click()  # the dropdown holds the rule added last: "busy"
    assert panel.rule_names.value == "busy" and not load_rules(path).get("busy").muted  # type: ignore[union-attr]
    panel.rule_names.value = "item purchase spike"
    panel.buttons["unmute"].click()
    assert not load_rules(path).get("item purchase spike").muted  # type: ignore[union-attr]


def test_try_measures_once_and_stores_and_posts_nothing(alert_store: Store, tmp_path: Path) -> None:  # noqa: F811
    want_fired, _ = expected_transitions(load(alert_store))
    panel = AlertsPanel(alert_store, tmp_path / "alerts.toml", clock=lambda: want_fired)
    fill(panel, CASE_STUDY_FORM)
    panel.buttons["try"].click()
    df = panel.tried
    (rule,) = parse_rules(CASE_STUDY_RULE)
    measured = {o.key: o for o in measure(alert_store, rule, want_fired)}
    assert df.iloc[0]["key"] == ITEM and bool(df.iloc[0]["holds"]) and int(df["holds"].sum()) == 1
    assert df.iloc[0]["value"] == measured[ITEM].value and df.iloc[0]["baseline"] == measured[ITEM].baseline
    assert len(df) == len(measured)
    assert 'data-table="alert-try"' in panel.result.value and ITEM in panel.result.value
    assert "holds for 1 of" in panel.message.value and panel.error == ""
    assert events(alert_store).empty and not (tmp_path / "alerts.toml").exists()  # nothing stored, nothing written

    # The table and the banner show what a runner recorded.
    banner = AlertBanner(alert_store)
    banner.refresh()
    assert banner.widget.value == "" and banner.widget.layout.display == "none"
    AlertRunner(alert_store, [rule]).evaluate(want_fired)
    panel.refresh()
    banner.refresh()
    assert 'data-table="alerts"' in panel.table.value and ITEM in panel.table.value and "firing" in panel.table.value
    assert "1 alert(s) firing" in banner.widget.value and banner.widget.layout.display == ""
