"""The alert state machine: pure logic, no store, no network, no clock of its own.

Per rule and key (e.g. one item of a ``key = "item_id"`` rule)::

    ok --holds--> pending --held for `for`, and `cooldown` passed since its last firing--> firing
    pending --stops holding--> ok (nothing sent)
    firing --stops holding--> ok: a resolution

A firing and a resolution are :class:`Transition` objects; the runner stores and delivers them. A key that is not
measured at all in an evaluation (no rows) counts as not holding.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from .rules import Rule

FIRED, RESOLVED = "fired", "resolved"


@dataclass(frozen=True)
class Observation:
    """One measured key of a rule at one evaluation: its value, baseline and (anomaly) z-score."""

    key: str
    value: float
    baseline: float | None = None
    score: float | None = None


@dataclass
class KeyState:
    """What the engine remembers about one rule and key."""

    pending_since: datetime | None = None
    fired_at: datetime | None = None  # set while firing
    last_fired: datetime | None = None  # the latest firing, for the cooldown
    fired_value: float = math.nan
    fired_baseline: float | None = None
    value: float = math.nan
    baseline: float | None = None
    score: float | None = None

    @property
    def firing(self) -> bool:
        return self.fired_at is not None


@dataclass(frozen=True)
class Transition:
    """A firing or a resolution of one rule and key."""

    kind: str  # FIRED or RESOLVED
    rule: Rule
    key: str
    value: float
    baseline: float | None
    fired_at: datetime
    resolved_at: datetime | None = None
    score: float | None = None
    # A resolution's value and baseline are those measured when it resolved; these are the ones that fired.
    fired_value: float | None = None
    fired_baseline: float | None = None

    @property
    def at(self) -> datetime:
        return self.resolved_at if self.resolved_at is not None else self.fired_at


@dataclass(frozen=True)
class Firing:
    """A rule and key firing now."""

    rule: Rule
    key: str
    value: float
    baseline: float | None
    fired_at: datetime
    score: float | None = None


@dataclass
class Engine:
    """Keeps :class:`KeyState` per (rule name, key) and turns observations into transitions."""

    states: dict[tuple[str, str], KeyState] = field(default_factory=dict)

    def observe(self, rule: Rule, now: datetime, observations: Iterable[Observation]) -> list[Transition]:
        """Apply one evaluation of ``rule`` at ``now``; returns the firings and resolutions it causes."""
        out: list[Transition] = []
        seen: set[str] = set()
        for obs in observations:
            seen.add(obs.key)
            st = self.states.setdefault((rule.name, obs.key), KeyState())
            st.value, st.baseline, st.score = obs.value, obs.baseline, obs.score
            if rule.holds(obs.value, obs.baseline, obs.score):
                t = self._holds(rule, obs.key, st, now)
                if t is not None:
                    out.append(t)
            else:
                t = self._stops(rule, obs.key, st, now)
                if t is not None:
                    out.append(t)
        for (name, key), st in list(self.states.items()):
            if name == rule.name and key not in seen:
                st.value, st.baseline, st.score = 0.0, st.baseline, None
                t = self._stops(rule, key, st, now)
                if t is not None:
                    out.append(t)
                if st.last_fired is None or now - st.last_fired >= rule.cooldown:
                    del self.states[(name, key)]  # nothing left to remember
        return out

    @staticmethod
    def _holds(rule: Rule, key: str, st: KeyState, now: datetime) -> Transition | None:
        if st.firing:
            return None
        if st.pending_since is None:
            st.pending_since = now
        if now - st.pending_since < rule.for_:
            return None
        if st.last_fired is not None and now - st.last_fired < rule.cooldown:
            return None  # still cooling down: stays pending, fires once the cooldown has passed
        st.fired_at = st.last_fired = now
        st.fired_value, st.fired_baseline = st.value, st.baseline
        return Transition(FIRED, rule, key, st.value, st.baseline, now, score=st.score)

    @staticmethod
    def _stops(rule: Rule, key: str, st: KeyState, now: datetime) -> Transition | None:
        st.pending_since = None
        if st.fired_at is None:
            return None
        fired_at, st.fired_at = st.fired_at, None
        return Transition(
            RESOLVED,
            rule,
            key,
            st.value,
            st.baseline,
            fired_at,
            resolved_at=now,
            score=st.score,
            fired_value=st.fired_value,
            fired_baseline=st.fired_baseline,
        )

    def firing(self, rules: Sequence[Rule]) -> list[Firing]:
        """Every rule and key firing now, in rule order."""
        by_name = {r.name: r for r in rules}
        out = []
        for (name, key), st in self.states.items():
            rule = by_name.get(name)
            if rule is not None and st.fired_at is not None:
                out.append(Firing(rule, key, st.value, st.baseline, st.fired_at, st.score))
        order = {r.name: i for i, r in enumerate(rules)}
        return sorted(out, key=lambda f: (order[f.rule.name], f.key))

    def restore(
        self,
        rule: str,
        key: str,
        fired_at: datetime,
        resolved_at: datetime | None,
        value: float,
        baseline: float | None,
    ) -> None:
        """Take up a firing recorded earlier (e.g. by a previous ``alerts check``): no repeat, same cooldown."""
        st = self.states.setdefault((rule, key), KeyState())
        if st.last_fired is None or fired_at > st.last_fired:
            st.last_fired = fired_at
            st.fired_at = fired_at if resolved_at is None else None
            st.value, st.baseline = value, baseline
            st.fired_value, st.fired_baseline = value, baseline

    def restore_pending(self, rule: str, key: str, since: datetime) -> None:
        """Take up a key that an earlier evaluation (another process) saw start to hold at ``since``."""
        st = self.states.setdefault((rule, key), KeyState())
        if st.pending_since is None or since < st.pending_since:
            st.pending_since = since

    def pending(self, rule: str) -> dict[str, datetime]:
        """The keys of ``rule`` whose condition holds, with the time it started to (firing ones included)."""
        return {k: st.pending_since for (n, k), st in self.states.items() if n == rule and st.pending_since}
