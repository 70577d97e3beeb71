"""Running rules against the store: one evaluation, a schedule, and a backtest over history.

:class:`AlertRunner` measures each rule (:mod:`.measure`), feeds the :class:`~.engine.Engine`, stores every
firing and resolution in ``alert_events`` (:mod:`.history`) and hands the messages to a
:class:`~.delivery.Dispatcher`, which delivers in the background. The clock is injectable: tests and backtests
drive time instead of waiting for it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd

from ..errors import ClickstreamError, ConfigError
from ..queries import _as_utc
from ..store import Store
from . import history
from .delivery import Dispatcher
from .engine import FIRED, Engine, Firing, Transition
from .format import slack_body
from .measure import measure
from .rules import Rule, RuleSet, load_rules, utc_now

logger = logging.getLogger(__name__)

Clock = Callable[[], datetime]
Measure = Callable[[Store, Rule, datetime], Any]


@dataclass
class Evaluation:
    """The outcome of one evaluation: what changed, what is firing now, and the rules that could not be measured."""

    at: datetime
    transitions: list[Transition] = field(default_factory=list)
    firing: list[Firing] = field(default_factory=list)
    errors: dict[str, str] = field(default_factory=dict)
    #: (rule, key) -> since when its condition holds, for rules with `for` (firing keys included)
    pending: dict[tuple[str, str], datetime] = field(default_factory=dict)

    @property
    def fired(self) -> list[Transition]:
        return [t for t in self.transitions if t.kind == FIRED]

    @property
    def firing_unmuted(self) -> list[Firing]:
        return [f for f in self.firing if not f.rule.muted]


class AlertRunner:
    """Evaluates a rule set against a store.

    Args:
        store: an open store (its ``alert_events`` table holds the history).
        rules: the rules.
        dispatcher: where firings and resolutions go (None: nowhere); muted rules are stored, not delivered.
        clock: "now" for each evaluation (default: the wall clock, UTC).
        record: store transitions in ``alert_events`` and take up open firings from it (off for backtests).
        rules_path: the file ``rules`` came from; the schedule (:meth:`run`) re-reads it when it changes (the
            workbench's form adds and mutes rules in it), keeping the rules it has when the new file does not load.
    """

    def __init__(
        self,
        store: Store,
        rules: RuleSet | Sequence[Rule],
        *,
        dispatcher: Dispatcher | None = None,
        clock: Clock = utc_now,
        record: bool = True,
        measure_fn: Measure = measure,
        rules_path: str | Path | None = None,
    ) -> None:
        self.store = store
        self.rules = tuple(rules)
        self.rules_path = Path(rules_path) if rules_path else None
        self._rules_stamp = self._stamp()
        self.dispatcher = dispatcher
        self.clock = clock
        self.record = record
        self.engine = Engine()
        self._measure = measure_fn
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if record:
            still_open = history.restore(store, self.engine, [r.name for r in self.rules])
            if still_open:
                logger.info("%d alert(s) still firing from earlier evaluations", still_open)
            waiting = history.restore_pending(store, self.engine, [r.name for r in self.rules if r.for_])
            if waiting:
                logger.info("%d alert key(s) pending (waiting out `for`) from earlier evaluations", waiting)

    def _stamp(self) -> tuple[int, int] | None:
        try:
            st = self.rules_path.stat() if self.rules_path else None
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size) if st else None

    def reload(self) -> bool:
        """Re-read :attr:`rules_path` if it changed since it was last read; True when the rules were replaced.

        A file that no longer loads is logged and the current rules stay.
        """
        stamp = self._stamp()
        if self.rules_path is None or stamp is None or stamp == self._rules_stamp:
            return False
        self._rules_stamp = stamp
        try:
            rules = tuple(load_rules(self.rules_path))
        except ConfigError as exc:
            logger.error("alert rules not reloaded, keeping the %d loaded before: %s", len(self.rules), exc)
            return False
        added = [r.name for r in rules if r.name not in {old.name for old in self.rules}]
        self.rules = rules
        if self.record and added:
            history.restore(self.store, self.engine, added)
            history.restore_pending(self.store, self.engine, [r.name for r in rules if r.for_ and r.name in added])
        logger.info("alert rules reloaded from %s: %d rule(s)", self.rules_path, len(rules))
        return True

    def evaluate(self, now: datetime | None = None) -> Evaluation:
        """Evaluate every rule once at ``now`` (default: the clock).

        A rule whose query fails (the store is down) is skipped and named in :attr:`Evaluation.errors`; its state
        is kept. A rule naming a column its query does not return raises ConfigError.
        """
        now = self.clock() if now is None else now
        result = Evaluation(now)
        pending_changes: list[tuple[str, str, datetime | None]] = []
        for rule in self.rules:
            try:
                observations = self._measure(self.store, rule, now)
            except ConfigError:
                raise
            except ClickstreamError as exc:
                result.errors[rule.name] = str(exc)
                logger.error("alert rule %r not evaluated: %s", rule.name, exc)
                continue
            before = self.engine.pending(rule.name) if rule.for_ else {}
            result.transitions.extend(self.engine.observe(rule, now, observations))
            if rule.for_:
                after = self.engine.pending(rule.name)
                result.pending.update({(rule.name, k): since for k, since in after.items()})
                pending_changes += [(rule.name, k, s) for k, s in after.items() if before.get(k) != s]
                pending_changes += [(rule.name, k, None) for k in before if k not in after]
        if self.record and result.transitions:
            try:
                history.record(self.store, result.transitions)
            except ClickstreamError as exc:  # delivery goes on; the history has a gap, said here
                result.errors["alert_events"] = str(exc)
                logger.error("alert events not stored: %s", exc)
        if self.record and pending_changes:
            try:
                history.record_pending(self.store, pending_changes, now)
            except ClickstreamError as exc:
                result.errors["alert_pending"] = str(exc)
                logger.error("pending alert keys not stored: %s", exc)
        if self.dispatcher is not None:
            for t in result.transitions:
                if not t.rule.muted:
                    self.dispatcher.submit(slack_body(t))
        result.firing = self.engine.firing(self.rules)
        for t in result.transitions:
            logger.info("alert %s: %s", t.kind, slack_body(t)["text"])
        return result

    def run(self, interval_s: float, stop: threading.Event | None = None, keep_going: bool = False) -> None:
        """Evaluate every ``interval_s`` seconds until ``stop`` (or :meth:`stop`) is set.

        A rule naming a column its query does not return raises ConfigError (``alerts run`` exits 2), unless
        ``keep_going``: then it is logged and the schedule waits for the rules file to be fixed (it is re-read).
        """
        stop = stop or self._stop
        while not stop.is_set():
            started = self.clock()
            try:
                self.reload()
                self.evaluate()
            except ConfigError as exc:
                if not keep_going:
                    raise
                logger.error(
                    "alert rules not evaluated: %s; fix %s (it is re-read when it changes)", exc, self.rules_path
                )
            except Exception:  # one bad evaluation must not end the schedule
                logger.exception("alert evaluation failed")
            spent = (self.clock() - started).total_seconds()
            stop.wait(max(0.0, interval_s - spent))

    def start(self, interval_s: float) -> threading.Thread:
        """Run the schedule in a daemon thread (for the process that owns the pipeline); it keeps going through a
        rule that cannot be evaluated (see :meth:`run`)."""
        self._thread = threading.Thread(target=self.run, args=(interval_s, None, True), name="alerts", daemon=True)
        self._thread.start()
        return self._thread

    def stop(self, timeout_s: float = 5.0) -> bool:
        """End the schedule, waiting up to ``timeout_s`` for an evaluation under way; True when it has ended."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            return not self._thread.is_alive()
        return True


BACKTEST_COLUMNS = ("rule", "key", "severity", "fired_at", "resolved_at", "value", "baseline", "message")


def backtest(
    store: Store,
    rules: RuleSet | Sequence[Rule],
    start: Any,
    end: Any,
    step: timedelta = timedelta(minutes=1),
    measure_fn: Measure = measure,
) -> pd.DataFrame:
    """Replay ``rules`` over ``[start, end)``, evaluating every ``step``: when each would have fired and resolved.

    Nothing is stored or delivered. Columns: :data:`BACKTEST_COLUMNS`, one row per firing, in time order
    (``resolved_at`` is NaT for a firing still open at ``end``).

    Raises:
        ConfigError: bad window or step, or a rule naming a column its query does not return.
        StoreError: ClickHouse failed.
    """
    t0, t1 = _as_utc(start, "start"), _as_utc(end, "end")
    if t1 <= t0:
        raise ConfigError("end", f"{t1.isoformat()} is not after start {t0.isoformat()}")
    if step <= timedelta(0):
        raise ConfigError("step", "must be longer than 0")
    if (t1 - t0) / step > 100_000:
        raise ConfigError("step", f"{(t1 - t0) / step:.0f} evaluations is too many; use a longer step")
    runner = AlertRunner(store, rules, record=False, measure_fn=measure_fn)
    rows: dict[tuple[str, str, datetime], dict[str, Any]] = {}
    t = t0 + step
    while t <= t1:
        evaluation = runner.evaluate(t)
        if evaluation.errors:
            raise ClickstreamError(f"backtest at {t.isoformat()}: {next(iter(evaluation.errors.values()))}")
        for tr in evaluation.transitions:
            row = rows.setdefault(
                (tr.rule.name, tr.key, tr.fired_at),
                {"rule": tr.rule.name, "key": tr.key, "severity": tr.rule.severity, "fired_at": tr.fired_at},
            )
            if tr.kind == FIRED:
                row.update(value=tr.value, baseline=tr.baseline, message=slack_body(tr)["text"], resolved_at=None)
            else:
                row["resolved_at"] = tr.resolved_at
        t += step
    df = pd.DataFrame(list(rows.values()), columns=list(BACKTEST_COLUMNS))
    for col in ("fired_at", "resolved_at"):
        df[col] = pd.to_datetime(df[col], utc=True)
    return df.sort_values(["fired_at", "rule", "key"], ignore_index=True)
