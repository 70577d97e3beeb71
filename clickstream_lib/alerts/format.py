"""Alert messages: one line of text, and a Slack body (``{"text": ..., "blocks": [...]}``)."""

from __future__ import annotations

import math
from typing import Any

from .engine import FIRED, Transition

_ICON = {"info": ":information_source:", "warning": ":warning:", "critical": ":rotating_light:"}


def number(x: float | None) -> str:
    """A figure for a message: whole numbers without decimals, others with two; None/NaN as "-"."""
    if x is None or math.isnan(x):
        return "-"
    if math.isinf(x) or not float(x).is_integer():
        return f"{x:,.2f}"
    return f"{int(x):,}"


def _when(t: Any) -> str:
    return t.strftime("%Y-%m-%d %H:%M:%S UTC")


def subject(t: Transition) -> str:
    """``rule`` or ``rule [item_id=item_0042]``."""
    return f"{t.rule.name} [{t.rule.key}={t.key}]" if t.rule.key else t.rule.name


def text(t: Transition) -> str:
    """One line naming the rule, the key, the value and the baseline."""
    rule = t.rule
    head = "FIRING" if t.kind == FIRED else "RESOLVED"
    figures = f"{rule.value} {number(t.value)}"
    if rule.kind == "relative":
        figures += f" vs baseline {number(t.baseline)} (fires at {rule.op} {rule.factor:g} x baseline)"
    elif rule.kind == "anomaly":
        score = "-" if t.score is None else f"{t.score:.1f}"
        figures += f" vs mean {number(t.baseline)} (z-score {score}, fires at {rule.op} {rule.z:g})"
    else:
        figures += f" (fires at {rule.op} {number(rule.threshold)})"
    when = f"since {_when(t.fired_at)}" if t.kind == FIRED else f"{_when(t.fired_at)} to {_when(t.resolved_at)}"
    return f"[{rule.severity}] {head} {subject(t)}: {figures}, {when}"


def slack_body(t: Transition) -> dict[str, Any]:
    """A Slack message (``chat.postMessage`` arguments or an incoming webhook's JSON): text plus blocks."""
    rule = t.rule
    icon = _ICON[rule.severity] if t.kind == FIRED else ":white_check_mark:"
    head = "Firing" if t.kind == FIRED else "Resolved"
    fields = [
        {"type": "mrkdwn", "text": f"*{rule.value}*\n{number(t.value)}"},
        {"type": "mrkdwn", "text": f"*baseline*\n{number(t.baseline)}"},
    ]
    if rule.key:
        fields.insert(0, {"type": "mrkdwn", "text": f"*{rule.key}*\n{t.key}"})
    fields.append({"type": "mrkdwn", "text": f"*severity*\n{rule.severity}"})
    return {
        "text": text(t),
        "blocks": [
            {"type": "section", "text": {"type": "mrkdwn", "text": f"{icon} *{head}: {subject(t)}*"}},
            {"type": "section", "fields": fields},
            {"type": "context", "elements": [{"type": "mrkdwn", "text": f"{rule.describe()} · {_when(t.at)}"}]},
        ],
    }
