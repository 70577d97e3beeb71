"""Alert settings: the webhook URL must be http(s), Slack needs its token, and secrets never show."""

from __future__ import annotations

import pytest

from clickstream_lib.errors import ConfigError
from clickstream_lib.settings import Settings
from tests.conftest import base_env

HOOK = "https://hooks.slack.com/services/T0/B0/very-secret-path"


def test_secrets_are_hidden_in_describe_and_repr() -> None:
    s = Settings.from_env(
        base_env(
            CLICKSTREAM_ALERT_WEBHOOK_URL=HOOK,
            SLACK_BOT_TOKEN="xoxb-secret-token",
            CLICKSTREAM_ALERT_SLACK_CHANNEL="#alerts",
        )
    )
    assert s.alert_webhook_url == HOOK and s.slack_bot_token == "xoxb-secret-token"
    shown = s.describe()
    assert shown["CLICKSTREAM_ALERT_WEBHOOK_URL"] == "***" and shown["SLACK_BOT_TOKEN"] == "***"
    assert shown["CLICKSTREAM_ALERT_SLACK_CHANNEL"] == "#alerts"
    for text in (repr(s), str(shown)):
        assert "very-secret-path" not in text and "xoxb-secret-token" not in text


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"CLICKSTREAM_ALERT_WEBHOOK_URL": "ftp://hooks.example/x"}, "CLICKSTREAM_ALERT_WEBHOOK_URL"),
        ({"CLICKSTREAM_ALERT_WEBHOOK_URL": "hooks.slack.com/services/x"}, "CLICKSTREAM_ALERT_WEBHOOK_URL"),
        ({"CLICKSTREAM_ALERT_WEBHOOK_URL": "https://"}, "CLICKSTREAM_ALERT_WEBHOOK_URL"),
        ({"CLICKSTREAM_ALERT_SLACK_CHANNEL": "#alerts"}, "SLACK_BOT_TOKEN"),
        ({"CLICKSTREAM_ALERT_RULES": "/no/such/rules.toml"}, "CLICKSTREAM_ALERT_RULES"),
    ],
)
def test_bad_alert_settings_name_their_variable(env: dict[str, str], variable: str) -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_env(base_env(**env))
    assert info.value.variable == variable
    assert "secret" not in str(info.value)


def test_demo_hands_its_rules_to_the_owner(tmp_path: object) -> None:
    """`clickstream demo --rules F --alert-interval 30s` starts `clickstream serve --rules F --alert-interval 30`;
    without --rules the owner's environment carries CLICKSTREAM_ALERT_RULES."""
    from pathlib import Path

    from clickstream_lib.cli import build_parser
    from clickstream_lib.notebooks import OwnerProcess, settings_env

    rules = Path(str(tmp_path)) / "alerts.toml"
    rules.write_text("")
    args = build_parser().parse_args(["demo", "--rules", str(rules), "--alert-interval", "30s"])
    assert (args.rules, args.alert_interval.total_seconds()) == (str(rules), 30.0)
    settings = Settings.from_env(base_env(CLICKSTREAM_ALERT_RULES=str(rules)))
    cmd = OwnerProcess(settings, alert_rules=args.rules, alert_interval_s=30.0).command()
    assert cmd[cmd.index("serve") :][-4:] == ["--rules", str(rules), "--alert-interval", "30"]
    assert "--rules" not in OwnerProcess(settings).command()
    assert settings_env(settings)["CLICKSTREAM_ALERT_RULES"] == str(rules)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--alert-interval", "0s"])
