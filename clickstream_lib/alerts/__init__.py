"""Alerts: rules over the named queries, evaluated on a schedule, delivered to Slack, kept in ``alert_events``.

The rule file format, the CLI (``clickstream alerts check | run | backtest``) and the Slack set-up are described
in ``docs/alerts.md``. The parts:

* :mod:`.rules` — the TOML file, strictly validated (:func:`load_rules`), and a rule's condition;
* :mod:`.measure` — a rule's query over its windows, reduced to one value per key;
* :mod:`.engine` — the pure state machine (pending, ``for``, firing, cooldown, resolved);
* :mod:`.history` — the ``alert_events`` table;
* :mod:`.delivery` — Slack and incoming webhooks, with retries in background threads;
* :mod:`.runner` — evaluation, the schedule and the backtest; :mod:`.views` — what notebooks show.

Example::

    from clickstream_lib import Settings, alerts, connect
    store = connect(Settings.from_env())
    runner = alerts.AlertRunner(store, alerts.load_rules("alerts.toml"))
    runner.evaluate().firing            # [Firing(rule=..., key='item_0042', value=31.0, baseline=4.2, ...)]
"""

from __future__ import annotations

from .delivery import DeliveryFailed, Dispatcher, SlackNotifier, WebhookNotifier, notifiers_from_settings
from .engine import Engine, Firing, Observation, Transition
from .format import slack_body
from .history import events
from .rules import Rule, RuleSet, load_rules, parse_duration, parse_rules
from .runner import AlertRunner, Evaluation, backtest
from .views import banner_html, firing, report

__all__ = [
    "AlertRunner",
    "DeliveryFailed",
    "Dispatcher",
    "Engine",
    "Evaluation",
    "Firing",
    "Observation",
    "Rule",
    "RuleSet",
    "SlackNotifier",
    "Transition",
    "WebhookNotifier",
    "backtest",
    "banner_html",
    "events",
    "firing",
    "load_rules",
    "notifiers_from_settings",
    "parse_duration",
    "parse_rules",
    "report",
    "slack_body",
]
