"""The plotly figures of the panels and the report (pure functions of a query's DataFrame; unit-testable).

The dashboard's and the workbench's charts are built empty and filled in place on each refresh (``set_bar``,
``set_timeseries``, ``set_funnel``); ``bar_figure``, ``timeseries_figure`` and ``funnel_figure`` are the same charts
built at once, for reports; the analytics panels draw paths (Sankey), funnel steps and retention. plotly loads when
the first figure is built, so a dashboard shows its KPIs first.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from ..analytics import FUNNEL_STEP_COLUMNS, PATH_END
from .base import _go

if TYPE_CHECKING:
    import plotly.graph_objects as go

PATH_START = "(start)"  # the Sankey's node for a session that began within a path that ends at the anchor
_FUNNEL_VALUE_COLUMNS = {*FUNNEL_STEP_COLUMNS, "entry_day"}


def label_value(df: pd.DataFrame, label: str | None = None, value: str | None = None) -> tuple[list[Any], list[Any]]:
    """Labels and values: the named columns, else the first non-numeric and the first numeric column."""
    if df is None or df.empty:
        return [], []
    numeric = [c for c in df.columns if pd.api.types.is_numeric_dtype(df[c])]
    labels = [c for c in df.columns if c not in numeric]
    value = value or (numeric[0] if numeric else None)
    label = label or (labels[0] if labels else df.columns[0])
    if value is None:
        return [], []
    return [str(v) for v in df[label]], [float(v) if pd.notna(v) else 0.0 for v in df[value]]


def _time_column(df: pd.DataFrame) -> str | None:
    for c in df.columns:
        if pd.api.types.is_datetime64_any_dtype(df[c]):
            return str(c)
    return None


def _layout(title: str, height: int = 300, **layout: Any) -> dict[str, Any]:
    return {
        "title": {"text": title, "font": {"size": 14}},
        "height": height,
        "margin": {"l": 40, "r": 10, "t": 40, "b": 30},
        "template": "plotly_white",
        **layout,
    }


def empty_figure(title: str, height: int = 300, traces: Sequence[Any] = (), **layout: Any) -> go.Figure:
    """A figure with ``traces`` (empty, to be filled in place) and the panels' layout."""
    return _go().Figure(data=list(traces), layout=_layout(title, height, **layout))


def empty_bar_figure(title: str, height: int = 300, horizontal: bool = False) -> go.Figure:
    """A bar chart without bars yet (:func:`set_bar` fills it)."""
    return empty_figure(title, height, [_go().Bar(x=[], y=[], orientation="h" if horizontal else "v")])


def set_bar(
    fig: go.Figure, df: pd.DataFrame, horizontal: bool = False, label: str | None = None, value: str | None = None
) -> None:
    """Fill ``fig`` in place with the bars of ``df`` (``label``/``value`` columns, default as :func:`label_value`)."""
    labels, values = label_value(df, label, value)
    if horizontal:
        labels, values = labels[::-1], values[::-1]
        xs, ys = values, labels
    else:
        xs, ys = labels, values
    if not fig.data:
        fig.add_trace(_go().Bar(x=[], y=[], orientation="h" if horizontal else "v"))
    fig.data[0].update(x=xs, y=ys)


def partial_bucket(df: pd.DataFrame, complete_through: Any, bucket_s: int) -> tuple[Any, Any] | None:
    """The last bucket of a time series when it is still filling — it ends after ``complete_through`` (the time up
    to which every partition's events are stored) — as ``(start, end)``; None when every bucket is complete."""
    tcol = _time_column(df) if df is not None and not df.empty else None
    if tcol is None or complete_through is None or pd.isna(complete_through):
        return None
    last = pd.Timestamp(df[tcol].max())
    last = last.tz_localize("UTC") if last.tzinfo is None else last
    end = last + pd.Timedelta(seconds=bucket_s)
    done = pd.Timestamp(complete_through)
    done = done.tz_localize("UTC") if done.tzinfo is None else done
    return (last, end) if end > done else None


def mark_partial(fig: go.Figure, span: tuple[Any, Any] | None) -> None:
    """Shade the still-filling last bucket ``span`` (from :func:`partial_bucket`) and label it "partial"."""
    if span is None:
        fig.layout.shapes = ()
        fig.layout.annotations = ()
        return
    x0, x1 = (pd.Timestamp(t).isoformat() for t in span)
    fig.update_layout(
        shapes=[
            {
                "type": "rect",
                "xref": "x",
                "yref": "paper",
                "x0": x0,
                "x1": x1,
                "y0": 0,
                "y1": 1,
                "fillcolor": "#999",
                "opacity": 0.18,
                "line": {"width": 1, "dash": "dash", "color": "#777"},
                "name": "partial",
            }
        ],
        annotations=[{"x": x0, "y": 1, "xref": "x", "yref": "paper", "text": "partial", "showarrow": False}],
    )


def set_timeseries(fig: go.Figure, df: pd.DataFrame) -> None:
    """Fill ``fig`` in place: lines per series: long form (time, category, value) or wide form (time, v1, v2 ...)."""
    series: dict[str, tuple[list[Any], list[float]]] = {}
    tcol = _time_column(df) if df is not None and not df.empty else None
    if tcol:
        others = [c for c in df.columns if c != tcol]
        numeric = [c for c in others if pd.api.types.is_numeric_dtype(df[c])]
        cats = [c for c in others if c not in numeric]
        if cats and numeric:
            for key, part in df.groupby(cats[0], sort=True):
                series[str(key)] = (list(part[tcol]), [float(v) for v in part[numeric[0]]])
        else:
            for c in numeric:
                series[str(c)] = (list(df[tcol]), [float(v) for v in df[c]])
    names = [t.name for t in fig.data]
    for name in series:
        if name not in names:
            fig.add_trace(_go().Scatter(x=[], y=[], mode="lines+markers", name=name))
            names.append(name)
    for trace in fig.data:
        xs, ys = series.get(trace.name, ([], []))
        trace.update(x=xs, y=ys)


def set_funnel(fig: go.Figure, df: pd.DataFrame) -> None:
    """Fill ``fig`` in place with the ``funnel`` query's users per interaction type."""
    labels, values = label_value(df, "interaction_type", "users")
    if not fig.data:
        fig.add_trace(_go().Funnel(x=[], y=[], textinfo="value+percent initial"))
    fig.data[0].update(x=values, y=labels)


def bar_figure(
    df: pd.DataFrame,
    title: str,
    horizontal: bool = False,
    height: int = 320,
    label: str | None = None,
    value: str | None = None,
) -> go.Figure:
    """A static bar chart of ``df`` (``label``/``value`` columns, default the first text and numeric ones)."""
    fig = _go().Figure(layout=_layout(title, height))
    set_bar(fig, df, horizontal=horizontal, label=label, value=value)
    return fig


def timeseries_figure(df: pd.DataFrame, title: str, height: int = 320) -> go.Figure:
    """A static line chart, one line per series (for reports)."""
    fig = _go().Figure(layout=_layout(title, height))
    set_timeseries(fig, df)
    return fig


def funnel_figure(df: pd.DataFrame, title: str, height: int = 320) -> go.Figure:
    """A static funnel chart (for reports)."""
    fig = _go().Figure(layout=_layout(title, height))
    set_funnel(fig, df)
    return fig


def sankey_links(
    paths: pd.DataFrame, steps: int, direction: str = "after"
) -> tuple[list[str], dict[tuple[int, int], int]]:
    """Nodes (``"k. label"``, one per step position and label) and sessions per link from the ``paths`` frame.

    A path shorter than ``steps`` gets an :data:`PATH_END` node after its last step ("after": the session ended) or
    a :data:`PATH_START` node before its first ("before": the session began there), so drop-offs show.
    """
    nodes: dict[tuple[int, str], int] = {}
    links: dict[tuple[int, int], int] = {}

    def node(pos: int, label: str) -> int:
        return nodes.setdefault((pos, label), len(nodes))

    cols = [f"step_{k + 1}" for k in range(steps)]
    for rec, n in zip(paths[cols].itertuples(index=False, name=None), paths["sessions"], strict=True):
        labels = [str(x) for x in rec if x is not None and not (isinstance(x, float) and np.isnan(x))]
        if direction == "after":
            seq = list(enumerate(labels))
            if len(labels) < steps:
                seq.append((len(labels), PATH_END))
        else:
            offset = steps - len(labels)
            seq = [(offset + i, lab) for i, lab in enumerate(labels)]
            if offset:
                seq.insert(0, (offset - 1, PATH_START))
        for (p1, a), (p2, b) in pairwise(seq):
            key = (node(p1, a), node(p2, b))
            links[key] = links.get(key, 0) + int(n)
    names = [""] * len(nodes)
    for (pos, label), i in nodes.items():
        names[i] = f"{pos + 1}. {label}"
    return names, links


def sankey_figure(
    paths: pd.DataFrame, steps: int, title: str = "Paths", direction: str = "after", height: int = 420
) -> go.Figure:
    """A Sankey of the most common paths (the ``paths`` query's frame): node ``k. label`` is step k's event."""
    names, links = sankey_links(paths, steps, direction) if len(paths) else ([], {})
    # Columns by step position (plotly would push every sink, e.g. an early "(end)", to the right edge), and within a
    # column by sessions, largest on top.
    pos = [int(n.split(".", 1)[0]) - 1 for n in names]
    flow = [0] * len(names)
    for (s, t), v in links.items():
        flow[s] += v
        flow[t] += v
    xs, ys = [0.0] * len(names), [0.0] * len(names)
    for p in set(pos):
        col = sorted((i for i in range(len(names)) if pos[i] == p), key=lambda i: -flow[i])
        total = sum(flow[i] for i in col) or 1
        top = 0.0
        for i in col:
            share = flow[i] / total
            xs[i], ys[i] = 0.001 + 0.998 * p / max(1, steps - 1), min(0.999, max(0.001, top + share / 2))
            top += share
    fig = _go().Figure(layout=_layout(title, height))
    if not links:  # plotly.js fails on a Sankey without nodes ("Invalid array length"): say so instead
        fig.add_annotation(
            text="no sessions with this event", showarrow=False, x=0.5, y=0.5, xref="paper", yref="paper"
        )
        fig.update_xaxes(visible=False)
        fig.update_yaxes(visible=False)
        return fig
    fig.add_trace(
        _go().Sankey(
            arrangement="snap",
            node={"label": names, "pad": 12, "thickness": 14, "x": xs, "y": ys},
            link={
                "source": [s for s, _ in links],
                "target": [t for _, t in links],
                "value": list(links.values()),
            },
        )
    )
    return fig


def funnel_steps_figure(df: pd.DataFrame, title: str = "Funnel", height: int = 340) -> go.Figure:
    """The ``funnel_steps`` frame as a funnel (one per breakdown value, when the frame has a breakdown column)."""
    fig = _go().Figure(layout=_layout(title, height))
    by = [c for c in df.columns if c not in _FUNNEL_VALUE_COLUMNS]
    if "entry_day" in df.columns:  # by entry day: the total per step over the days
        df = df.groupby([*by, "step", "step_label"], as_index=False, sort=True)["users"].sum()
    if by:
        for value, part in df.groupby(by[0], sort=True):
            fig.add_trace(
                _go().Funnel(
                    name=str(value), y=list(part["step_label"]), x=list(part["users"]), textinfo="value+percent initial"
                )
            )
    else:
        fig.add_trace(_go().Funnel(y=list(df["step_label"]), x=list(df["users"]), textinfo="value+percent initial"))
    return fig


def retention_heatmap(df: pd.DataFrame, title: str = "Retention by cohort", height: int | None = None) -> go.Figure:
    """The ``cohorts`` frame as a triangle heatmap: a row per cohort (its size beside it), a column per period,
    cells in percent of the cohort; periods not yet observable stay blank."""
    by = [c for c in df.columns if c not in ("cohort", "period_n", "users", "cohort_size", "retention")]
    if len(df):
        df = df.assign(
            row=[
                " · ".join([str(c), *(str(r[b]) for b in by)])
                for c, (_, r) in zip(df["cohort"], df.iterrows(), strict=True)
            ]
        )
        grid = df.pivot_table(index="row", columns="period_n", values="retention", aggfunc="first", sort=True)
        sizes = df.groupby("row", sort=True)["cohort_size"].first()
        rows = [f"{r}  (n={int(sizes[r]):,})" for r in grid.index]
        z = (grid.to_numpy(dtype=float) * 100).round(1)
        text = [[("" if np.isnan(v) else f"{v:.1f}%") for v in row] for row in z]
        cols = [str(int(c)) for c in grid.columns]
    else:
        rows, z, text, cols = [], np.zeros((0, 0)), [], []
    fig = _go().Figure(layout=_layout(title, height or max(260, 60 + 26 * len(rows))))
    fig.add_trace(
        _go().Heatmap(
            z=z.tolist(),
            x=cols,
            y=rows,
            text=text,
            texttemplate="%{text}",
            colorscale="Blues",
            zmin=0,
            zmax=100,
            hoverongaps=False,
            colorbar={"title": "%", "ticksuffix": "%"},
        )
    )
    fig.update_yaxes(autorange="reversed", type="category")
    fig.update_xaxes(title_text="period", type="category")
    return fig
