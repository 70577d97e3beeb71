"""Alert panels: the dashboard's banner, and the workbench's table of alerts with a form to add, mute and try rules.

Both read ``alert_events`` through the store they are given — in-process, or through the owner of a served store
(``clickstream serve``), whose clients read only. The form writes the rules file that ``clickstream alerts``, the
owner (``serve --rules``) and cron read, after validating the whole file with the same loader
(:func:`clickstream_lib.alerts.parse_rules`); a rule it cannot load is not written, and the message names the field.
"Try" measures a rule once against the store and shows each key's value and baseline; it stores and posts nothing.
"""

from __future__ import annotations

import html
import json
import logging
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import ipywidgets as w
import pandas as pd

from .. import queries
from ..alerts import banner_html, events, parse_rules
from ..alerts.measure import measure
from ..alerts.rules import FIELDS, KINDS, OPS, SEVERITIES, Rule
from ..errors import ClickstreamError, ConfigError
from ..store import Store

logger = logging.getLogger(__name__)

#: Form fields in the order shown; each maps to the rule field of the same name (``for`` is ``for``).
TEXT_FIELDS = ("name", "value", "key", "params", "filters", "window", "baseline", "for", "cooldown", "description")
NUMBER_FIELDS = ("threshold", "factor", "min_value", "buckets", "z")
#: Words of the loader's messages that name a form field other than by its own name.
_ALIASES = {"parameter": "params", "filter": "filters", "column": "value"}
_FIELD_RE = re.compile(
    r"\b("
    + "|".join(sorted({*TEXT_FIELDS, *NUMBER_FIELDS, "kind", "query", "op", "severity", *_ALIASES}, key=len)[::-1])
    + r")\b"
)


def toml_value(value: Any) -> str:
    """A TOML literal for a string, number, boolean, list or table (strings as JSON strings: valid TOML)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, Mapping):
        items = ", ".join(f"{_toml_key(k)} = {toml_value(v)}" for k, v in value.items())
        return "{ " + items + " }" if items else "{}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    raise TypeError(f"no TOML literal for {type(value).__name__}")


def _toml_key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else json.dumps(key)


def rule_toml(fields: Mapping[str, Any]) -> str:
    """One ``[[rule]]`` table with ``fields`` in the given order."""
    return "[[rule]]\n" + "".join(f"{_toml_key(k)} = {toml_value(v)}\n" for k, v in fields.items())


def field_of(message: str, fields: Mapping[str, Any] | None = None) -> str | None:
    """The form field a loader message is about: the first field named after the rule's name, or for a column the
    query does not return, the field (``value`` or ``key``, in ``fields``) that names it."""
    text = message.split("': ", 1)[1] if "': " in message else message
    column = re.search(r"has no column '([^']*)'", text)
    if column:
        return "key" if fields is not None and fields.get("key") == column.group(1) else "value"
    m = _FIELD_RE.search(text)
    return None if m is None else _ALIASES.get(m.group(1), m.group(1))


def set_muted(text: str, source: str, name: str, muted: bool) -> str:
    """The rules file ``text`` with rule ``name``'s ``muted`` set, comments and layout kept.

    Raises:
        ConfigError: no rule of that name, or the file does not load.
    """
    rule = parse_rules(text, source).get(name)
    if rule is None:
        raise ConfigError(source, f"has no rule named {name!r}")
    lines = text.splitlines()
    header = int(rule.origin.rsplit(":", 1)[1]) - 1
    end = next((i for i in range(header + 1, len(lines)) if re.match(r"^\s*\[", lines[i])), len(lines))
    new = f"muted = {toml_value(muted)}"
    at = next((i for i in range(header + 1, end) if re.match(r"^\s*muted\s*=", lines[i])), None)
    if at is None:
        lines.insert(header + 1, new)
    else:
        lines[at] = new
    out = "\n".join(lines) + "\n"
    parse_rules(out, source)
    return out


def write_rules(path: Path, text: str) -> None:
    """Replace the rules file atomically (a reader never sees half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


class AlertBanner:
    """The dashboard's banner: the alerts firing now (from ``alert_events``), hidden while none fires."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.widget = w.HTML("")
        self.widget.add_class("cs-alerts-banner")
        self.widget.layout.display = "none"

    def refresh(self) -> None:
        """Re-read what fires; a store without the table (or without access to it) shows no banner."""
        try:
            value = banner_html(self.store)
        except ClickstreamError as exc:
            logger.warning("alert banner not updated: %s", exc)
            return
        self.widget.value = value
        self.widget.layout.display = "" if value else "none"


class AlertsPanel:
    """The workbench's alerts: firing and recent alerts, and a form to add, mute and try rules.

    Args:
        store: where ``alert_events`` is and rules are tried.
        rules_path: the rules file the form writes (created by the first rule added).
        recent: how far back the table lists firings.
        clock: "now" for trying a rule (tests pass a fixed one).
    """

    def __init__(
        self,
        store: Store,
        rules_path: str | Path,
        recent: timedelta = timedelta(hours=24),
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.store = store
        self.path = Path(rules_path)
        self.recent = recent
        self.clock = clock
        self.error_field: str | None = None
        self.error = ""  # the last error's text, as shown in the form
        self.tried: pd.DataFrame = pd.DataFrame()
        self.table = w.HTML("")
        self.message = w.HTML("")
        self.result = w.HTML("")
        self.fields: dict[str, w.Widget] = {
            "kind": w.Dropdown(options=list(KINDS), value="threshold", description="kind"),
            "query": w.Dropdown(options=list(queries.QUERIES), value="kpis", description="query"),
            "op": w.Dropdown(options=list(OPS), value=">", description="op"),
            "severity": w.Dropdown(options=list(SEVERITIES), value="warning", description="severity"),
            **{f: w.Text(description=f, continuous_update=False) for f in (*TEXT_FIELDS, *NUMBER_FIELDS)},
            "muted": w.Checkbox(value=False, description="muted"),
        }
        self.fields["params"].placeholder = '{ by = "item_id" }'
        self.fields["filters"].placeholder = '{ interaction_type = "purchase" }'
        for name, widget in self.fields.items():
            widget.add_class(f"cs-alert-field-{name}")
        self.fields["kind"].observe(lambda _ch: self._show_fields(), names="value")
        self.rule_names = w.Dropdown(options=[], description="rule")
        self.buttons = {
            "add": w.Button(description="Add rule", button_style="success"),
            "try": w.Button(description="Try rule"),
            "mute": w.Button(description="Mute", button_style="warning"),
            "unmute": w.Button(description="Unmute"),
        }
        for name, b in self.buttons.items():
            b.add_class(f"cs-btn-alert-{name}")
        self.buttons["add"].on_click(lambda _b: self.add())
        self.buttons["try"].on_click(lambda _b: self.try_rule())
        self.buttons["mute"].on_click(lambda _b: self.mute(str(self.rule_names.value or ""), True))
        self.buttons["unmute"].on_click(lambda _b: self.mute(str(self.rule_names.value or ""), False))
        self._show_fields()
        self._load_names()
        self.widget = w.VBox(
            [
                w.HTML(f"<b>Alerts</b> · rules in <code>{html.escape(str(self.path))}</code>"),
                self.table,
                w.HBox([self.rule_names, self.buttons["mute"], self.buttons["unmute"]]),
                w.HTML("<b>New rule</b> (docs/alerts.md)"),
                w.GridBox(list(self.fields.values()), layout=w.Layout(grid_template_columns="repeat(3, 330px)")),
                w.HBox([self.buttons["try"], self.buttons["add"]]),
                self.message,
                self.result,
            ]
        )
        self.widget.add_class("cs-alerts")

    # --- the form -----------------------------------------------------------------------------------------------

    def _show_fields(self) -> None:
        allowed = FIELDS[str(self.fields["kind"].value)]
        for name, widget in self.fields.items():
            widget.layout.display = "" if name == "kind" or name in allowed else "none"

    def form_fields(self) -> dict[str, Any]:
        """The rule the form describes, as the fields of a ``[[rule]]`` table (empty fields left out)."""
        kind = str(self.fields["kind"].value)
        allowed = FIELDS[kind]
        out: dict[str, Any] = {"kind": kind}
        for name, widget in self.fields.items():
            if name == "kind" or name not in allowed:
                continue
            value = widget.value
            if name == "muted":
                if value:
                    out[name] = True
                continue
            if isinstance(value, str):
                value = value.strip()
                if not value:
                    continue
                if name in NUMBER_FIELDS or name in ("params", "filters"):
                    value = _literal(value)  # a number or an inline table; anything else goes to the loader as text
            out[name] = value
        # name first, as people write it
        return {"name": out.pop("name", ""), **out} if "name" in out else out

    def form_rule(self) -> Rule:
        """The form's rule, validated by the rules loader.

        Raises:
            ConfigError: the message names the rule and the field.
        """
        return parse_rules(rule_toml(self.form_fields()), "form").rules[0]

    def _fail(self, exc: ClickstreamError) -> None:
        text = self.error = str(exc)
        self.error_field = field_of(text, {n: getattr(f, "value", None) for n, f in self.fields.items()})
        for name, widget in self.fields.items():
            if name == self.error_field:
                widget.add_class("cs-field-error")
            else:
                widget.remove_class("cs-field-error")
        field = f" (field <b>{html.escape(self.error_field)}</b>)" if self.error_field else ""
        self.message.value = f'<div class="cs-msg error" data-message="alert-error">{html.escape(text)}{field}</div>'

    def _ok(self, text: str) -> None:
        self.error_field, self.error = None, ""
        for widget in self.fields.values():
            widget.remove_class("cs-field-error")
        self.message.value = f'<div class="cs-msg info" data-message="alert-ok">{html.escape(text)}</div>'

    def _read(self) -> str:
        try:
            return self.path.read_text(encoding="utf-8") if self.path.exists() else ""
        except OSError as exc:
            raise ConfigError(str(self.path), f"cannot read the rules file ({exc.strerror})") from None

    def _load_names(self) -> None:
        try:
            names = [r.name for r in parse_rules(self._read(), str(self.path))]
        except ConfigError as exc:
            self._fail(exc)
            names = []
        self.rule_names.options = names

    def add(self) -> bool:
        """Validate the form's rule with the rest of the file and append it; True when written."""
        try:
            existing = self._read()
            new = rule_toml(self.form_fields())
            text = (existing.rstrip("\n") + "\n\n" + new) if existing.strip() else new
            rules = parse_rules(text, str(self.path))
            write_rules(self.path, text)
        except ConfigError as exc:
            self._fail(exc)
            return False
        self._ok(f"added rule {rules.rules[-1].name!r} to {self.path} ({len(rules)} rule(s))")
        self._load_names()
        self.rule_names.value = rules.rules[-1].name
        return True

    def mute(self, name: str, muted: bool = True) -> bool:
        """Set ``muted`` of rule ``name`` in the file; True when written."""
        try:
            write_rules(self.path, set_muted(self._read(), str(self.path), name, muted))
        except ConfigError as exc:
            self._fail(exc)
            return False
        self._ok(f"{'muted' if muted else 'unmuted'} rule {name!r} in {self.path}")
        return True

    def try_rule(self) -> pd.DataFrame:
        """Measure the form's rule once at the clock's time: each key's value, baseline and whether it holds.

        Nothing is stored or posted. Returns (and shows) the measurements, holding keys first.
        """
        columns = ["key", "value", "baseline", "score", "holds"]
        try:
            rule = self.form_rule()
            observations = measure(self.store, rule, self.clock())
        except ClickstreamError as exc:
            self._fail(exc)
            self.tried = pd.DataFrame(columns=columns)
            return self.tried
        rows = [(o.key, o.value, o.baseline, o.score, rule.holds(o.value, o.baseline, o.score)) for o in observations]
        df = pd.DataFrame(rows, columns=columns).sort_values(["holds", "value"], ascending=False, ignore_index=True)
        self.tried = df
        n = int(df["holds"].sum())
        self._ok(f"{rule.name!r}: {rule.describe()} — holds for {n} of {len(df)} key(s) now (nothing posted)")
        from .base import table_html

        self.result.value = table_html(df, "alert-try")
        return df

    # --- the table ----------------------------------------------------------------------------------------------

    def recent_alerts(self) -> pd.DataFrame:
        """Alerts fired within :attr:`recent` or still firing, newest first, with a ``state`` column."""
        df = events(self.store, start=self.clock() - self.recent)
        still = events(self.store, open_only=True)
        df = pd.concat([still, df], ignore_index=True) if not still.empty else df
        df = df.drop_duplicates(subset=["rule", "key", "fired_at"], ignore_index=True)
        df.insert(0, "state", ["firing" if pd.isna(t) else "resolved" for t in df["resolved_at"]])
        return df[["state", "rule", "key", "severity", "value", "baseline", "fired_at", "resolved_at"]]

    def refresh(self) -> None:
        from .base import table_html

        try:
            self.table.value = table_html(self.recent_alerts(), "alerts")
        except ClickstreamError as exc:
            logger.warning("alerts table not updated: %s", exc)


def _literal(text: str) -> Any:
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text
