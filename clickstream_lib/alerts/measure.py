"""Measuring a rule at a moment: its named query over the right windows, reduced to one value per key.

:func:`measure` runs the queries (I/O); :func:`threshold_values`, :func:`relative_values` and
:func:`anomaly_values` turn their DataFrames into :class:`~.engine.Observation` objects and are pure.

* threshold: the query over ``[now - window, now)`` (no window: everything up to ``now``; a live query gets
  ``now=``), its ``value`` column per ``key`` (or its first row).
* relative: the ``value`` per key over ``[now - window, now)``, and its average per window over the ``baseline``
  before that: the query over ``[now - window - baseline, now - window)``, divided by ``baseline / window``.
* anomaly: the series of the last ``buckets + 1`` complete buckets (missing buckets count 0); the value is the last
  bucket, the baseline the mean of the ones before, the score ``(value - mean) / std``.
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta

import numpy as np
import pandas as pd

from .. import queries
from ..store import Store
from .engine import Observation
from .rules import Rule


def measure(store: Store, rule: Rule, now: datetime) -> list[Observation]:
    """The observations of ``rule`` at ``now`` from the store.

    Raises:
        ConfigError: the rule's value or key column is not in its query's result.
        StoreError: ClickHouse failed.
    """
    options = rule.options()
    if rule.kind == "threshold":
        if rule.windowed:
            start = now - rule.window if rule.window else None
            df = queries.run(store, rule.query, start=start, end=now, **options)
        else:
            df = queries.run(store, rule.query, now=now, **options)
        return threshold_values(rule, df)
    if rule.kind == "relative":
        assert rule.window is not None and rule.baseline is not None
        split = now - rule.window
        current = queries.run(store, rule.query, start=split, end=now, **options)
        before = queries.run(store, rule.query, start=split - rule.baseline, end=split, **options)
        return relative_values(rule, current, before)
    bucket = rule.bucket
    end = bucket_floor(now, bucket)
    df = queries.run(store, rule.query, start=end - bucket * (rule.buckets + 1), end=end, **options)
    return anomaly_values(rule, df, end)


def bucket_floor(t: datetime, bucket: timedelta) -> datetime:
    """The start of ``t``'s bucket (buckets aligned to the Unix epoch, as the store's toStartOf* functions)."""
    epoch = datetime(1970, 1, 1, tzinfo=t.tzinfo)
    return epoch + ((t - epoch) // bucket) * bucket


def _columns(rule: Rule, df: pd.DataFrame, *extra: str) -> None:
    wanted = [rule.value, *([rule.key] if rule.key else []), *extra]
    missing = [c for c in wanted if c not in df.columns]
    if missing:
        raise rule.error(
            f"query {rule.query} has no column {missing[0]!r}; its columns: {', '.join(map(str, df.columns))}"
        )


def _per_key(rule: Rule, df: pd.DataFrame) -> dict[str, float]:
    _columns(rule, df)
    values = pd.to_numeric(df[rule.value], errors="coerce").astype(float)
    if not rule.key:
        return {"": float(values.iloc[0]) if len(values) else 0.0}
    keys = df[rule.key].astype(str)
    return {str(k): float(v) for k, v in values.groupby(keys).sum().items()}


def threshold_values(rule: Rule, df: pd.DataFrame) -> list[Observation]:
    """A threshold rule's observations from its query's result (no rows and no key: the value is 0)."""
    return [Observation(k, v) for k, v in _per_key(rule, df).items() if not math.isnan(v)]


def relative_values(rule: Rule, current: pd.DataFrame, before: pd.DataFrame) -> list[Observation]:
    """A relative rule's observations: the current window's value and the baseline's average per window."""
    assert rule.window is not None and rule.baseline is not None
    now, base = _per_key(rule, current), _per_key(rule, before)
    windows = rule.baseline / rule.window
    keys = sorted(set(now) | set(base))
    return [Observation(k, now.get(k, 0.0), base.get(k, 0.0) / windows) for k in keys]


def anomaly_values(rule: Rule, df: pd.DataFrame, end: datetime) -> list[Observation]:
    """An anomaly rule's observations from a time series ending (exclusive) at ``end``."""
    _columns(rule, df, "time")
    bucket = rule.bucket
    slots = [end - bucket * i for i in range(rule.buckets + 1, 0, -1)]
    index = pd.DatetimeIndex(slots)
    frame = df.assign(
        _t=pd.to_datetime(df["time"], utc=True), _v=pd.to_numeric(df[rule.value], errors="coerce").astype(float)
    )
    frame["_k"] = frame[rule.key].astype(str) if rule.key else ""
    out = []
    for key, part in frame.groupby("_k"):
        series = part.groupby("_t")["_v"].sum().reindex(index.tz_convert("UTC"), fill_value=0.0).to_numpy()
        out.append(_zscore(str(key), series))
    if not out and not rule.key:
        out.append(_zscore("", np.zeros(rule.buckets + 1)))
    return out


def _zscore(key: str, series: np.ndarray) -> Observation:
    last, history = float(series[-1]), series[:-1]
    mean, std = float(history.mean()), float(history.std())
    if std > 0:
        return Observation(key, last, mean, (last - mean) / std)
    score = 0.0 if last == mean else math.copysign(math.inf, last - mean)  # a flat history: any change is news
    return Observation(key, last, mean, score)
