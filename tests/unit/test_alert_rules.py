"""Alert rules: the TOML file is validated strictly, and errors name the rule and the line of its [[rule]] header."""

from __future__ import annotations

import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest

from clickstream_lib.alerts import parse_duration, parse_rules
from clickstream_lib.errors import ConfigError
from tests.conftest import base_env

ROOT = Path(__file__).resolve().parents[2]

CASE_STUDY = """\
# The case study's rule: an item's purchases in the last 10 minutes above 1.5 x its average per 10 minutes
# over the 24 hours before.
[[rule]]
name = "item purchase spike"
kind = "relative"
query = "breakdown"
params = { by = "item_id" }
filters = { interaction_type = "purchase" }
value = "events"
key = "item_id"
window = "10m"
baseline = "24h"
factor = 1.5
severity = "critical"
cooldown = "5m"

[[rule]]
name = "traffic too low"
kind = "threshold"
query = "events_per_second"
params = { seconds = 60 }
value = "events_per_second"
op = "<"
threshold = 50
for = "2m"

[[rule]]
name = "event spike"
kind = "anomaly"
query = "timeseries"
params = { bucket = "minute" }
value = "events"
buckets = 30
z = 4
"""


def test_the_case_study_rule_is_a_relative_rule() -> None:
    rules = parse_rules(CASE_STUDY, "alerts.toml")
    spike, low, anomaly = rules
    assert (spike.kind, spike.query, spike.key, spike.value) == ("relative", "breakdown", "item_id", "events")
    assert spike.window == timedelta(minutes=10) and spike.baseline == timedelta(hours=24) and spike.factor == 1.5
    assert spike.filters == {"interaction_type": "purchase"} and spike.params == {"by": "item_id"}
    assert spike.cooldown == timedelta(minutes=5) and spike.severity == "critical"
    assert spike.origin == "alerts.toml:3"
    assert low.origin == "alerts.toml:17" and low.for_ == timedelta(minutes=2) and low.op == "<"
    assert anomaly.origin == "alerts.toml:27" and anomaly.bucket == timedelta(minutes=1)
    # the condition itself, pure
    assert spike.holds(16, 10) and not spike.holds(15, 10) and spike.holds(1, 0)
    assert low.holds(49.9, None) and not low.holds(50, None)
    assert anomaly.holds(10, 2, 4.5) and not anomaly.holds(10, 2, 3.9)


def rule(body: str, header: str = "[[rule]]") -> str:
    ok = '[[rule]]\nname = "ok"\nkind = "threshold"\nquery = "kpis"\nvalue = "revenue"\nthreshold = 1\n\n'
    return f'{ok}# a comment\n{header}\nname = "bad one"\n{body}\n'


BASE = 'kind = "threshold"\nquery = "kpis"\nvalue = "total_interactions"\nthreshold = 5'


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ('kind = "threshold"\nquery = "no_such"\nvalue = "x"\nthreshold = 1', "unknown query 'no_such'"),
        (BASE + "\nparams = { limit = 5 }", "unknown parameter 'limit' of query kpis"),
        (BASE + "\nfilters = { colour = 'red' }", "unknown filter 'colour'"),
        (BASE + "\nfilters = { interaction_type = 'buy!!' }", "'buy!!' is not a name of letters"),
        (BASE + "\nthreshhold = 5", "unknown field 'threshhold'"),
        (BASE + "\nparams = { start = '2026-01-01' }", "params.start is set by the alert engine"),
        (BASE + '\nseverity = "loud"', "severity 'loud' is not one of info, warning, critical"),
        (BASE + '\nop = "=="', "op '==' is not one of"),
        (BASE + '\nfor = "ten minutes"', "for 'ten minutes' is not a duration"),
        (BASE.replace("threshold = 5", ""), "a threshold rule needs threshold"),
        ('kind = "relative"\nquery = "breakdown"\nvalue = "events"\nwindow = "10m"\nfactor = 2', "needs window"),
        (
            'kind = "relative"\nquery = "active_users"\nvalue = "x"\nwindow = "1m"\nbaseline = "1h"\nfactor = 2',
            "takes no time window",
        ),
        (
            'kind = "relative"\nquery = "kpis"\nvalue = "x"\nwindow = "1h"\nbaseline = "10m"\nfactor = 2',
            "baseline 10m is shorter than window 1h",
        ),
        ('kind = "anomaly"\nquery = "kpis"\nvalue = "x"', "not a time series"),
        ('kind = "sometimes"\nquery = "kpis"\nvalue = "x"', "kind 'sometimes' is not one of"),
        (BASE + '\nparams = { bucket = "week" }', "unknown parameter 'bucket'"),
    ],
)
def test_a_mistake_names_the_rule_and_its_line(body: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_rules(rule(body), "alerts.toml")
    assert info.value.variable == "alerts.toml:9"
    assert "rule 'bad one'" in str(info.value)
    assert expected in str(info.value)


def test_file_level_mistakes() -> None:
    with pytest.raises(ConfigError, match=r"not valid TOML.*line 2"):
        parse_rules("[[rule]]\nname = \n", "a.toml")
    with pytest.raises(ConfigError, match="unknown top-level key 'rules'"):
        parse_rules('[[rules]]\nname = "x"\n', "a.toml")
    with pytest.raises(ConfigError, match=r"already used by the rule at a\.toml:1") as info:
        parse_rules(rule(BASE).replace("bad one", "ok"), "a.toml")
    assert info.value.variable == "a.toml:9"
    # a header written with spaces and a trailing comment still counts for the line
    with pytest.raises(ConfigError) as info:
        parse_rules(rule(BASE + "\nextra = 1", header="  [[ rule ]]  # the second"), "a.toml")
    assert info.value.variable == "a.toml:9"


def test_durations() -> None:
    assert parse_duration("90s") == timedelta(seconds=90)
    assert parse_duration("10m") == timedelta(minutes=10)
    assert parse_duration("1.5h") == timedelta(minutes=90)
    assert parse_duration(30) == timedelta(seconds=30)
    for bad in ("-1m", "1w", "", True, "400d"):
        with pytest.raises(ValueError):
            parse_duration(bad)


def test_cli_bad_rule_exits_2_with_one_line(tmp_path: Path) -> None:
    path = tmp_path / "alerts.toml"
    path.write_text(rule(BASE + "\nparams = { limit = 5 }"))
    env = base_env(CLICKSTREAM_DATA_DIR=str(tmp_path / "data"), PYTHONPATH=str(ROOT))
    proc = subprocess.run(
        [sys.executable, "-m", "clickstream_lib.cli", "alerts", "check", "--rules", str(path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert f"{path}:9: rule 'bad one': unknown parameter 'limit'" in lines[0]
    assert not (tmp_path / "data").exists()  # refused before the store was opened


def test_docs_reference_every_field_and_their_examples_load() -> None:
    """docs/alerts.md: a row per rule field, every TOML example valid for the loader, and both Slack set-ups."""
    import re

    from clickstream_lib.alerts.rules import FIELDS

    doc = (Path(__file__).resolve().parents[2] / "docs" / "alerts.md").read_text()
    documented = set(re.findall(r"^\| `(\w+)` \|", doc, flags=re.MULTILINE))
    assert set().union(*FIELDS.values()) <= documented, sorted(set().union(*FIELDS.values()) - documented)
    examples = re.findall(r"```toml\n(.*?)```", doc, flags=re.DOTALL)
    assert len(examples) >= 2
    names = [r.name for text in examples for r in parse_rules(text, "docs/alerts.md")]
    assert "item purchase spike" in names
    for heading in ("### Slack incoming webhook", "### Slack bot (`chat.postMessage`)", "### Secrets"):
        assert heading in doc
