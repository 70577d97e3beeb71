"""Plotly figures of the analytics queries' frames (pure functions of a DataFrame; unit-testable)."""

from __future__ import annotations

from itertools import pairwise
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from ..analytics import FUNNEL_STEP_COLUMNS, PATH_END

PATH_START = "(start)"  # the Sankey's node for a session that began within a path that ends at the anchor
_FUNNEL_VALUE_COLUMNS = {*FUNNEL_STEP_COLUMNS, "entry_day"}


def _layout(title: str, height: int) -> dict[str, Any]:
    return {
        "title": {"text": title, "font": {"size": 14}},
        "height": height,
        "margin": {"l": 40, "r": 10, "t": 40, "b": 30},
        "template": "plotly_white",
    }


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
    fig = go.Figure(layout=_layout(title, height))
    if not links:  # plotly.js fails on a Sankey without nodes ("Invalid array length"): say so instead
        fig.add_annotation(
            text="no sessions with this event", showarrow=False, x=0.5, y=0.5, xref="paper", yref="paper"
        )
        fig.update_xaxes(visible=False)
        fig.update_yaxes(visible=False)
        return fig
    fig.add_trace(
        go.Sankey(
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
    fig = go.Figure(layout=_layout(title, height))
    by = [c for c in df.columns if c not in _FUNNEL_VALUE_COLUMNS]
    if "entry_day" in df.columns:  # by entry day: the total per step over the days
        df = df.groupby([*by, "step", "step_label"], as_index=False, sort=True)["users"].sum()
    if by:
        for value, part in df.groupby(by[0], sort=True):
            fig.add_trace(
                go.Funnel(
                    name=str(value), y=list(part["step_label"]), x=list(part["users"]), textinfo="value+percent initial"
                )
            )
    else:
        fig.add_trace(go.Funnel(y=list(df["step_label"]), x=list(df["users"]), textinfo="value+percent initial"))
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
    fig = go.Figure(layout=_layout(title, height or max(260, 60 + 26 * len(rows))))
    fig.add_trace(
        go.Heatmap(
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
