"""``clickstream alerts check | run | backtest``: the alert rules of docs/alerts.md from the command line.

``check`` exits 0 when nothing fires and 1 when something does (for cron and CI); 2 is a bad rule or setting.
"""

from __future__ import annotations

import argparse
from datetime import datetime, timedelta
from typing import Any

from ..errors import ConfigError
from ..settings import Settings
from .output import err, out


class AlertsCommand:
    """`clickstream alerts`."""

    name = "alerts"

    @staticmethod
    def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
        p = sub.add_parser(
            "alerts",
            help="evaluate alert rules once, on a schedule, or over history",
            description=(
                "Alert rules (TOML, see docs/alerts.md) over the named queries. Firings and resolutions are stored in "
                "the alert_events table and posted to CLICKSTREAM_ALERT_WEBHOOK_URL and/or Slack "
                "(SLACK_BOT_TOKEN + CLICKSTREAM_ALERT_SLACK_CHANNEL)."
            ),
            epilog=(
                "examples:\n"
                "  clickstream alerts check --rules alerts.toml        # exit 1 when something fires\n"
                "  clickstream alerts run --rules alerts.toml --interval 60\n"
                "  clickstream alerts backtest --rules alerts.toml --param start=2026-11-28 --param end=2026-11-29"
            ),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        actions = p.add_subparsers(dest="alerts_action", metavar="ACTION", required=True)

        def common(q: argparse.ArgumentParser) -> None:
            q.add_argument("--rules", help="the rules file (default: CLICKSTREAM_ALERT_RULES)")

        q = actions.add_parser(
            "check",
            help="evaluate once; exit 1 if any rule fires, 0 if none",
            description=(
                "Evaluate every rule once, as of now or --at: record what fires and resolves in alert_events, post "
                "it, and print it. Exit 1 if any rule fires (or an evaluation or a delivery failed), 0 if none."
            ),
        )
        common(q)
        q.add_argument("--at", help="evaluate as of this time (ISO-8601, UTC unless it has an offset); default now")
        q.add_argument(
            "--deliver-timeout",
            type=float,
            default=30.0,
            help="seconds to wait for messages to be delivered (default 30)",
        )
        q.add_argument("--no-deliver", action="store_true", help="store and print, post nothing")
        q.set_defaults(handler=AlertsCommand.check)

        q = actions.add_parser(
            "run",
            help="evaluate on a schedule until interrupted",
            description=(
                "Evaluate the rules every --interval until SIGTERM/Ctrl-C, recording and posting what fires and "
                "resolves."
            ),
        )
        common(q)
        _duration_option(q, "--interval", "time between evaluations")
        q.set_defaults(handler=AlertsCommand.run)

        q = actions.add_parser(
            "backtest",
            help="replay the rules over history: when each would have fired",
            description=(
                "Replay the rules over the stored events from start to end, evaluating every --step, and list when "
                "each rule would have fired and resolved. Nothing is recorded or posted."
            ),
        )
        common(q)
        q.add_argument(
            "--param",
            "-p",
            action="append",
            default=[],
            metavar="NAME=VALUE",
            help="start=TIME and end=TIME (required)",
        )
        _duration_option(q, "--step", "time between evaluations in the replay")
        q.add_argument("--format", "-f", choices=["table", "csv", "json"], default="table", help="output format")
        q.set_defaults(handler=AlertsCommand.backtest)

    @staticmethod
    def check(args: argparse.Namespace, settings: Settings) -> int:
        from ..alerts import AlertRunner, Dispatcher, notifiers_from_settings
        from ..queries import _as_utc
        from ..store import connect

        rules = _rules(args, settings)
        at: datetime | None = _as_utc(args.at, "--at") if args.at else None
        dispatcher = Dispatcher([] if args.no_deliver else notifiers_from_settings(settings))
        store = connect(settings)
        try:
            runner = AlertRunner(store, rules, dispatcher=dispatcher)
            ev = runner.evaluate(at)
        finally:
            left = dispatcher.close(args.deliver_timeout)
            store.close()
        new = {(t.rule.name, t.key) for t in ev.fired}
        for f in ev.firing:
            out(_line(f, (f.rule.name, f.key) in new))
        firing_keys = {(f.rule.name, f.key) for f in ev.firing}
        for (name, key), since in sorted(ev.pending.items()):
            rule = rules.get(name)
            if (name, key) not in firing_keys and rule is not None:
                held = ev.at - since
                out(
                    f"pending {name}{' ' + rule.key + '=' + key if rule.key else ''}: holds since {since.isoformat()} "
                    f"({held.total_seconds():.0f} s of its `for` {rule.for_.total_seconds():.0f} s)"
                )
        for t in ev.transitions:
            if t.kind != "fired":
                out(f"resolved {t.rule.name}{' ' + t.rule.key + '=' + t.key if t.rule.key else ''}")
        for name, problem in ev.errors.items():
            err(f"clickstream: alerts: {name}: {problem}")
        if left:
            err(f"clickstream: alerts: {left} message(s) not delivered within {args.deliver_timeout:g} s")
        if ev.errors or left:
            return 1
        if not ev.firing_unmuted:
            out(f"ok: {len(rules)} rule(s), nothing firing")
            return 0
        return 1

    @staticmethod
    def run(args: argparse.Namespace, settings: Settings) -> int:
        from ..alerts import AlertRunner, Dispatcher, notifiers_from_settings
        from ..store import connect

        rules = _rules(args, settings)
        dispatcher = Dispatcher(notifiers_from_settings(settings))
        store = connect(settings)
        err(
            f"evaluating {len(rules)} rule(s) every {args.interval.total_seconds():g} s; delivering to "
            f"{', '.join(dispatcher.labels) or 'nowhere (no receiver set)'}; Ctrl-C stops"
        )
        try:
            AlertRunner(store, rules, dispatcher=dispatcher).run(args.interval.total_seconds())
        finally:
            dispatcher.close(10.0)
            store.close()
        return 0

    @staticmethod
    def backtest(args: argparse.Namespace, settings: Settings) -> int:
        from ..alerts import backtest
        from ..store import connect

        window: dict[str, str] = {}
        for item in args.param:
            name, sep, value = item.partition("=")
            if not sep or name.strip() not in ("start", "end"):
                raise ConfigError("--param", f"{item!r} is not start=TIME or end=TIME")
            window[name.strip()] = value.strip()
        missing = [k for k in ("start", "end") if not window.get(k)]
        if missing:
            raise ConfigError("--param", f"{missing[0]}=TIME is required, e.g. --param start=2026-11-28T00:00Z")
        rules = _rules(args, settings)
        store = connect(settings)
        try:
            df = backtest(store, rules, window["start"], window["end"], args.step)
        finally:
            store.close()
        if args.format == "json":
            out(df.to_json(orient="records", date_format="iso"))
        elif args.format == "csv":
            out(df.to_csv(index=False).rstrip("\n"))
        elif df.empty:
            out(f"no rule would have fired from {window['start']} to {window['end']}")
        else:
            out(df.drop(columns=["message"]).to_string(index=False))
        return 0


def _duration_arg(text: str) -> timedelta:
    from ..alerts.rules import parse_duration

    try:
        value = parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if not value:
        raise argparse.ArgumentTypeError(f"{text!r} must be longer than 0")
    return value


def _duration_option(
    p: argparse.ArgumentParser, flag: str, what: str, default: timedelta | None = timedelta(minutes=1)
) -> None:
    """A duration option: seconds, or a number with ms/s/m/h/d; None as ``default`` leaves the choice (1m) to the
    caller's settings."""
    p.add_argument(
        flag,
        type=_duration_arg,
        default=default,
        metavar="DURATION",
        help=f"{what}: seconds, or e.g. 30s, 5m (default 1m)",
    )


def _rules(args: argparse.Namespace, settings: Settings) -> Any:
    from ..alerts import load_rules

    path = args.rules or settings.alert_rules
    if not path:
        raise ConfigError("--rules", "no rules file: pass --rules FILE or set CLICKSTREAM_ALERT_RULES")
    rules = load_rules(path)
    if not len(rules):
        raise ConfigError(str(path), "has no [[rule]] tables")
    return rules


def _line(f: Any, new: bool) -> str:
    from ..alerts.format import number

    key = f" {f.rule.key}={f.key}" if f.rule.key else ""
    base = f" baseline {number(f.baseline)}" if f.baseline is not None else ""
    mark = "new " if new else ""
    muted = " (muted)" if f.rule.muted else ""
    return (
        f"{mark}FIRING [{f.rule.severity}] {f.rule.name}{key}: {f.rule.value} {number(f.value)}{base} "
        f"since {f.fired_at.isoformat()}{muted}"
    )


def add_alert_args(p: argparse.ArgumentParser) -> None:
    """``--rules`` and ``--alert-interval`` of the commands that run the store's owner (serve, demo)."""
    p.add_argument(
        "--rules",
        default=None,
        help="alert rules (docs/alerts.md) the owner evaluates on a schedule (default: CLICKSTREAM_ALERT_RULES)",
    )
    _duration_option(p, "--alert-interval", "time between alert evaluations", default=None)
