"""What the dashboard, the workbench and every panel module build on: the shared CSS, small HTML blocks, running a
panel's named queries, :class:`Chart` (a plotly figure in an ``ipywidgets.Output``) and :class:`AutoRefresh` (the
refresh loop of both apps). It imports no other part of the widgets, so the panels,
:mod:`clickstream_lib.dashboard` and :mod:`clickstream_lib.workbench` all import it, one way.
"""

from __future__ import annotations

import asyncio
import html
import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import ipywidgets as w
import pandas as pd

from ..errors import ConfigError

if TYPE_CHECKING:
    import plotly.graph_objects as go

    from ..store import Store

_CSS = """
<style>
.cs-kpis {display:flex; flex-wrap:wrap; gap:12px; margin:4px 0 8px 0}
.cs-kpi {border:1px solid #ddd; border-radius:6px; padding:8px 14px; min-width:130px; background:#fafafa}
.cs-kpi .cs-label {font-size:12px; color:#666}
.cs-kpi .cs-value {font-size:24px; font-weight:600}
.cs-msg {padding:10px 14px; border-radius:6px; margin:6px 0}
.cs-msg.info {background:#eef5ff; border:1px solid #b6d0f5}
.cs-msg.warn {background:#fff6e5; border:1px solid #f0c36d}
.cs-msg.error {background:#fdecea; border:1px solid #f5b7b1}
.cs-table table {border-collapse:collapse; font-size:12px}
.cs-table td, .cs-table th {padding:2px 8px; border-bottom:1px solid #eee; text-align:right}
.cs-status {font-size:12px; color:#555}
</style>
"""


def format_number(value: Any) -> str:
    """Thousands-separated integers, two decimals for fractions, a dash for missing values."""
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return "–"
    if isinstance(value, int | bool) or (isinstance(value, float) and value.is_integer() and abs(value) >= 1):
        return f"{int(value):,}"
    if isinstance(value, float):
        return f"{value:,.2f}"
    return html.escape(str(value))


def message_html(text: str, kind: str = "info", hook: str = "info") -> str:
    """A friendly boxed message (``kind`` info/warn/error) with a ``data-message`` hook."""
    return _CSS + f'<div class="cs-msg {kind}" data-message="{html.escape(hook)}">{text}</div>'


def table_html(df: pd.DataFrame, hook: str, max_rows: int = 20) -> str:
    """A compact HTML table of ``df`` (escaped) inside ``<div data-table="<hook>">``."""
    if df is None or df.empty:
        return f'<div class="cs-table" data-table="{html.escape(hook)}"><i>no rows</i></div>'
    body = df.head(max_rows).to_html(index=False, escape=True, border=0, float_format=lambda v: f"{v:,.2f}")
    return _CSS + f'<div class="cs-table" data-table="{html.escape(hook)}">{body}</div>'


def first_row(df: pd.DataFrame | None) -> dict[str, Any]:
    """The first row of ``df`` as plain Python values (numpy scalars unwrapped); empty for no rows."""
    if df is None or df.empty:
        return {}
    row = df.iloc[0].to_dict()
    return {k: (v.item() if hasattr(v, "item") else v) for k, v in row.items()}


def query_args(name: str, **kwargs: Any) -> tuple[str, dict[str, Any]]:
    """``(name, arguments)`` for ``queries.run`` with the arguments this query does not take dropped (the funnel
    spans every interaction type; live queries have their own window), so one set of filter values can drive every
    panel."""
    from .. import queries

    nq = queries.QUERIES[name]
    kept = {
        k: v
        for k, v in kwargs.items()
        if not (k in queries.FILTERS and k not in nq.filters) and not (k in ("start", "end") and not nq.windowed)
    }
    return name, kept


def run_query(store: Store, name: str, **kwargs: Any) -> pd.DataFrame:
    """``queries.run`` with the arguments this query does not take dropped (see :func:`query_args`)."""
    from .. import queries

    name, kept = query_args(name, **kwargs)
    return queries.run(store, name, **kept)


def run_queries(
    store: Store, asked: Sequence[tuple[str, dict[str, Any]]], consistent: bool = False
) -> list[pd.DataFrame]:
    """Several panels' queries (``(name, arguments)``, trimmed as :func:`run_query` does) in one call to a served
    store's owner (``queries.run_many``, ``consistent`` as it takes it), results in order."""
    from .. import queries

    return queries.run_many(store, [query_args(name, **kwargs) for name, kwargs in asked], consistent=consistent)


PLOTLY_MIME = "application/vnd.plotly.v1+json"


def _go() -> Any:
    """plotly's graph objects, imported when the first figure is built: a served dashboard shows its KPIs first."""
    import plotly.graph_objects

    return plotly.graph_objects


class Chart:
    """A plotly figure shown in an ``ipywidgets.Output`` whose ``outputs`` trait holds the figure's JSON.

    Why not ``FigureWidget``: plotly 7 sends its edits as transient messages; in Voila a page that connects after an
    edit never sees it, and ``batch_update()`` edits were not applied at all (measured with Voila 0.5.13). The
    Output's ``outputs`` trait is ordinary widget state, so every page — including one that connects late or
    reloads — shows the current figure, rendered by the jupyterlab-plotly mime renderer.
    """

    def __init__(self, fig: go.Figure, name: str, widget: w.Output | None = None) -> None:
        self.fig = fig
        self.widget = widget or w.Output()
        self.widget.add_class(f"cs-chart-{name}")
        self.render()

    def render(self) -> None:
        bundle = {PLOTLY_MIME: json.loads(self.fig.to_json()), "text/plain": f"<chart {self.fig.layout.title.text}>"}
        self.widget.outputs = ({"output_type": "display_data", "data": bundle, "metadata": {}},)


_WIDE = {"timeseries", "dead_letters"}
_THIRD = {"device", "country", "referrer"}


def sized(widget: w.Output, name: str) -> w.Output:
    """Charts share a row: full width for time series, a third for the small breakdowns, else half."""
    widget.layout.width = "100%" if name in _WIDE else "33%" if name in _THIRD else "50%"
    return widget


def refresh_seconds(value: float) -> float:
    """``value`` as seconds between refreshes; less than 0.5 s (or 0, or negative) would be a busy loop.

    Raises:
        ConfigError: naming ``refresh_s``.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.5 <= value < float("inf"):
        raise ConfigError("refresh_s", f"{value!r} is out of range; expected seconds >= 0.5 (e.g. 5)")
    return float(value)


class AutoRefresh:
    """Re-runs ``refresh()`` every ``refresh_s`` seconds with an asyncio task on the kernel's loop.

    A task on the kernel loop is what ticks in Voila (a Play widget started while the notebook executes never does).
    """

    refresh_s: float
    _task: asyncio.Task[None] | None = None

    def refresh(self) -> None:
        raise NotImplementedError

    def _start_refreshing(self) -> None:
        if self._task and not self._task.done():
            return
        self._task = asyncio.get_event_loop().create_task(self._loop())

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.refresh_s)
            self.refresh()

    def _stop_refreshing(self) -> None:
        if self._task:
            self._task.cancel()
            self._task = None
