"""Alert rules: read from TOML, strictly validated, and the pure judgement of one measured value.

The file format and every field are described in ``docs/alerts.md``. A mistake — an unknown field, query, query
parameter or filter, a bad value — raises :class:`~clickstream_lib.errors.ConfigError` whose variable is
``<file>:<line>`` (the line of the rule's ``[[rule]]`` header) and whose message names the rule.
"""

from __future__ import annotations

import math
import operator
import re
import tomllib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from .. import queries
from ..errors import ConfigError, QueryError

KINDS: tuple[str, ...] = ("threshold", "relative", "anomaly")
SEVERITIES: tuple[str, ...] = ("info", "warning", "critical")
OPS: dict[str, Callable[[float, float], bool]] = {
    ">": operator.gt,
    ">=": operator.ge,
    "<": operator.lt,
    "<=": operator.le,
}
_COMMON = frozenset(
    {"name", "kind", "query", "params", "filters", "value", "key", "severity", "for", "cooldown", "op", "muted"}
    | {"min_value", "description"}
)
FIELDS: dict[str, frozenset[str]] = {
    "threshold": _COMMON | {"threshold", "window"},
    "relative": _COMMON | {"window", "baseline", "factor"},
    "anomaly": _COMMON | {"buckets", "z"},
}
# Options the engine sets itself, from the rule's window and the evaluation time.
_ENGINE_OPTIONS = frozenset({"start", "end", "now", "source"})
_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNIT_S = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, None: 1}
_HEADER_RE = re.compile(r"^\s*\[\[\s*rule\s*\]\]\s*(#.*)?$")
_MAX_RULES = 1000


def parse_duration(text: Any, what: str = "duration") -> timedelta:
    """``"90s"``, ``"10m"``, ``"24h"``, ``"1d"``, ``"250ms"`` or a number of seconds -> timedelta.

    Raises:
        ValueError: not a duration (the message shows the expected form).
    """
    if isinstance(text, bool):
        raise ValueError(f"{what} {text!r} is not a duration; expected e.g. 90s, 10m, 24h, 1d")
    if isinstance(text, (int, float)):
        seconds = float(text)
    else:
        m = _DURATION_RE.match(str(text))
        if not m:
            raise ValueError(f"{what} {str(text)[:40]!r} is not a duration; expected e.g. 90s, 10m, 24h, 1d")
        seconds = float(m.group(1)) * _UNIT_S[m.group(2)]
    if not 0 <= seconds <= 366 * 86400 or math.isnan(seconds):
        raise ValueError(f"{what} {text!r} is out of range; expected 0 to 366 days")
    return timedelta(seconds=seconds)


def format_duration(value: timedelta) -> str:
    s = value.total_seconds()
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if s and s % size == 0:
            return f"{int(s // size)}{unit}"
    return f"{s:g}s"


@dataclass(frozen=True)
class Rule:
    """One validated alert rule (see docs/alerts.md for the meaning of each field).

    ``origin`` is ``<file>:<line>`` of its ``[[rule]]`` header, used in error messages.
    """

    name: str
    kind: str
    query: str
    value: str
    params: Mapping[str, Any] = field(default_factory=dict)
    filters: Mapping[str, Any] = field(default_factory=dict)
    key: str | None = None
    severity: str = "warning"
    for_: timedelta = timedelta(0)
    cooldown: timedelta = timedelta(minutes=5)
    op: str = ">"
    muted: bool = False
    min_value: float = 0.0
    description: str = ""
    threshold: float | None = None
    window: timedelta | None = None
    baseline: timedelta | None = None
    factor: float | None = None
    buckets: int = 30
    z: float = 3.0
    origin: str = ""

    @property
    def windowed(self) -> bool:
        return queries.QUERIES[self.query].windowed

    @property
    def bucket(self) -> timedelta:
        """The time bucket of an anomaly rule's series (its query's ``bucket`` option)."""
        name = str(self.params.get("bucket") or queries.QUERIES[self.query].params[0].default)
        return timedelta(seconds=queries.BUCKET_SECONDS[name])

    def options(self) -> dict[str, Any]:
        """The query's keyword arguments: the rule's params and filters."""
        return {**self.params, **self.filters}

    def error(self, message: str) -> ConfigError:
        return ConfigError(self.origin or "rules", f"rule {self.name!r}: {message}")

    def describe(self) -> str:
        """One line saying what the rule fires on, e.g. ``events > 1.5 x baseline over 10m (per item_id)``."""
        per = f" per {self.key}" if self.key else ""
        if self.kind == "threshold":
            over = f" over {format_duration(self.window)}" if self.window else ""
            cond = f"{self.value} {self.op} {self.threshold:g}{over}"
        elif self.kind == "relative":
            assert self.window is not None and self.baseline is not None and self.factor is not None
            cond = (
                f"{self.value} over {format_duration(self.window)} {self.op} {self.factor:g} x its average per "
                f"{format_duration(self.window)} over the previous {format_duration(self.baseline)}"
            )
        else:
            sign = "" if self.op.startswith(">") else "-"
            cond = f"z-score of the last {format_duration(self.bucket)} of {self.value} {self.op} {sign}{self.z:g}"
            cond += f" (vs the {self.buckets} buckets before)"
        return f"{self.query}: {cond}{per}"

    def holds(self, value: float, baseline: float | None, score: float | None = None) -> bool:
        """Whether the rule's condition holds for one measured key (pure: no I/O)."""
        if math.isnan(value):
            return False
        if max(value, baseline or 0.0) < self.min_value:
            return False  # too few events on both sides to say anything
        compare = OPS[self.op]
        if self.kind == "threshold":
            assert self.threshold is not None
            return compare(value, self.threshold)
        if self.kind == "relative":
            assert self.factor is not None
            return compare(value, self.factor * (baseline or 0.0))
        if score is None or math.isnan(score):
            return False
        return compare(score, self.z if self.op.startswith(">") else -self.z)


@dataclass(frozen=True)
class RuleSet:
    """The rules of one file, in file order; names are unique."""

    rules: tuple[Rule, ...]
    path: str = ""

    def __iter__(self) -> Iterator[Rule]:
        return iter(self.rules)

    def __len__(self) -> int:
        return len(self.rules)

    def get(self, name: str) -> Rule | None:
        return next((r for r in self.rules if r.name == name), None)


def load_rules(path: str | Path) -> RuleSet:
    """Read and validate a rules file.

    Raises:
        ConfigError: the file is missing or not TOML, or a rule is wrong (the variable is ``<file>:<line>``).
    """
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(
            str(p), f"cannot read the rules file ({type(exc).__name__}: {getattr(exc, 'strerror', None) or exc})"
        ) from None
    return parse_rules(text, str(p))


def parse_rules(text: str, source: str = "rules") -> RuleSet:
    """Validate the TOML ``text`` of a rules file; ``source`` names it in errors."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(source, f"not valid TOML: {exc}") from None
    unknown = sorted(set(doc) - {"rule"})
    if unknown:
        raise ConfigError(source, f"unknown top-level key {unknown[0]!r}; rules go in [[rule]] tables")
    raw = doc.get("rule", [])
    if not isinstance(raw, list) or not all(isinstance(r, dict) for r in raw):
        raise ConfigError(source, "'rule' must be an array of tables, written [[rule]]")
    if len(raw) > _MAX_RULES:
        raise ConfigError(source, f"{len(raw)} rules is too many; expected at most {_MAX_RULES}")
    # tomllib gives no positions for values: the n-th [[rule]] header is the n-th rule.
    lines = [i + 1 for i, line in enumerate(text.splitlines()) if _HEADER_RE.match(line)]
    rules: list[Rule] = []
    seen: dict[str, str] = {}
    for i, table in enumerate(raw):
        origin = f"{source}:{lines[i]}" if i < len(lines) else source
        rule = _rule(table, origin)
        if rule.name in seen:
            raise ConfigError(origin, f"rule {rule.name!r}: the name is already used by the rule at {seen[rule.name]}")
        seen[rule.name] = origin
        rules.append(rule)
    return RuleSet(tuple(rules), source)


def _rule(table: Mapping[str, Any], origin: str) -> Rule:
    name = table.get("name")
    if not isinstance(name, str) or not name.strip() or len(name) > 200:
        raise ConfigError(origin, "a rule needs a name (a string of 1-200 characters)")
    name = name.strip()

    def bad(message: str) -> ConfigError:
        return ConfigError(origin, f"rule {name!r}: {message}")

    kind = table.get("kind")
    if kind not in KINDS:
        raise bad(f"kind {kind!r} is not one of {', '.join(KINDS)}")
    extra = sorted(set(table) - FIELDS[kind])
    if extra:
        raise bad(f"unknown field {extra[0]!r} for a {kind} rule; fields: {', '.join(sorted(FIELDS[kind]))}")

    def text(key: str, required: bool = False) -> str | None:
        v = table.get(key)
        if v is None and not required:
            return None
        if not isinstance(v, str) or not v.strip():
            raise bad(f"{key} must be a non-empty string")
        return v.strip()

    def number(key: str, default: float | None = None, positive: bool = False) -> float | None:
        v = table.get(key, default)
        if v is None:
            return None
        if isinstance(v, bool) or not isinstance(v, (int, float)) or math.isnan(v) or math.isinf(v):
            raise bad(f"{key} must be a number, got {v!r}")
        if positive and v <= 0:
            raise bad(f"{key} must be greater than 0, got {v!r}")
        return float(v)

    def duration(key: str, default: timedelta | None = None) -> timedelta | None:
        if key not in table:
            return default
        try:
            return parse_duration(table[key], key)
        except ValueError as exc:
            raise bad(str(exc)) from None

    query = text("query", required=True)
    assert query is not None
    nq = queries.QUERIES.get(query)
    if nq is None:
        raise bad(f"unknown query {query!r}; known queries: {', '.join(sorted(queries.QUERIES))}")
    params = table.get("params", {})
    filters = table.get("filters", {})
    for label, value in (("params", params), ("filters", filters)):
        if not isinstance(value, dict):
            raise bad(f'{label} must be a table, e.g. {label} = {{ key = "value" }}')
    known = {p.name for p in nq.params}
    for key in params:
        if key in _ENGINE_OPTIONS:
            raise bad(f"params.{key} is set by the alert engine from the rule's window and the evaluation time")
        if key not in known:
            raise bad(f"unknown parameter {key!r} of query {query}; its parameters: {', '.join(known) or 'none'}")
    for key in filters:
        if key not in queries.FILTERS:
            raise bad(f"unknown filter {key!r}; filters: {', '.join(queries.FILTERS)}")
    try:  # the query's own validation of names and values, without running it
        queries.plan(query, "alerts", **params, **filters)
    except QueryError as exc:
        raise bad(f"query {query}: {exc}") from None

    severity = text("severity") or "warning"
    if severity not in SEVERITIES:
        raise bad(f"severity {severity!r} is not one of {', '.join(SEVERITIES)}")
    op = text("op") or ">"
    if op not in OPS:
        raise bad(f"op {op!r} is not one of {' '.join(OPS)}")
    muted = table.get("muted", False)
    if not isinstance(muted, bool):
        raise bad(f"muted must be true or false, got {muted!r}")
    value = text("value", required=True)
    assert value is not None
    fields: dict[str, Any] = {
        "name": name,
        "kind": kind,
        "query": query,
        "value": value,
        "params": dict(params),
        "filters": dict(filters),
        "key": text("key"),
        "severity": severity,
        "for_": duration("for", timedelta(0)),
        "cooldown": duration("cooldown", timedelta(minutes=5)),
        "op": op,
        "muted": muted,
        "min_value": number("min_value", 0.0),
        "description": text("description") or "",
        "origin": origin,
    }
    window = duration("window")
    if window is not None and not window:
        raise bad("window must be longer than 0")
    if kind == "threshold":
        fields["threshold"] = number("threshold")
        if fields["threshold"] is None:
            raise bad("a threshold rule needs threshold = <number>")
        if window is not None and not nq.windowed:
            raise bad(f"query {query} is live (it measures up to now itself): use its parameters instead of window")
        fields["window"] = window
    elif kind == "relative":
        if not nq.windowed:
            raise bad(f"query {query} takes no time window; a relative rule needs one (e.g. breakdown, kpis)")
        baseline = duration("baseline")
        if window is None or baseline is None:
            raise bad('a relative rule needs window (e.g. "10m") and baseline (e.g. "24h")')
        if baseline < window:
            raise bad(f"baseline {format_duration(baseline)} is shorter than window {format_duration(window)}")
        fields.update(window=window, baseline=baseline, factor=number("factor", positive=True))
        if fields["factor"] is None:
            raise bad("a relative rule needs factor = <number>, e.g. 1.5")
    else:
        bucket = next((p for p in nq.params if p.name == "bucket"), None)
        if bucket is None:
            raise bad(f"query {query} is not a time series; an anomaly rule needs one with a bucket (timeseries)")
        buckets = table.get("buckets", 30)
        if isinstance(buckets, bool) or not isinstance(buckets, int) or not 3 <= buckets <= 10_000:
            raise bad(f"buckets must be a whole number from 3 to 10000, got {buckets!r}")
        fields.update(buckets=buckets, z=number("z", 3.0, positive=True))
    return Rule(**fields)


def utc_now() -> datetime:
    """The wall clock, UTC: the default clock of the alert engine."""
    return datetime.now(UTC)
