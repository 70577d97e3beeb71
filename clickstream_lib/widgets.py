"""ipywidgets + plotly panels for the notebooks: the live dashboard and the pipeline workbench.

Panels only call :mod:`clickstream_lib.queries`, the producer and the sink; they hold no SQL of their own except
the newest-events preview. Every number a test or a user may want to read has a stable DOM hook:
``<span data-kpi="total">``, ``<span data-stat="rows_inserted">``, ``<div data-message="empty">``.

Refresh: :meth:`Dashboard.start` schedules an ``asyncio`` task on the kernel's event loop (a ``Play`` widget does
not tick in Voila while the notebook executes). :meth:`Dashboard.show` fills the KPI row before it returns, so the
page opens on current numbers; Voila shows a page only once its notebook has run, so the charts are built (plotly
loads here) and filled by that task afterwards, panel by panel — in a Voila kernel once the page has fetched the
widgets' state, so the page draws the KPI row before the charts.
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import logging
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import ipywidgets as w
import pandas as pd

from .errors import ClickstreamError, ConfigError, StoreLocked
from .panels.base import (
    _CSS as _CSS,
    PLOTLY_MIME as PLOTLY_MIME,
    Chart as Chart,
    _go as _go,
    format_number as format_number,
    message_html as message_html,
    query_args as query_args,
    run_queries as run_queries,
    run_query as run_query,
    table_html as table_html,
)
from .pipeline import Pipeline, PipelineControl
from .settings import Settings
from .store import ServedStore, Store, connect

if TYPE_CHECKING:
    import plotly.graph_objects as go

logger = logging.getLogger(__name__)

ALL = "All"
TIME_WINDOWS: tuple[tuple[str, int], ...] = (
    ("All time", 0),
    ("Last 5 minutes", 300),
    ("Last 15 minutes", 900),
    ("Last hour", 3600),
    ("Last 24 hours", 86_400),
)
KPI_LABELS: dict[str, str] = {
    "total": "Total interactions",
    "users": "Unique users",
    "items": "Unique items",
    "active_users": "Active users (5 min)",
    "revenue": "Revenue",
}


# --- small HTML building blocks (pure functions, unit-testable) -------------------------------------------------


def kpi_html(
    values: Mapping[str, Any], labels: Mapping[str, str] = KPI_LABELS, estimates: Mapping[str, float] | None = None
) -> str:
    """KPI cards; each number sits in ``<span data-kpi="<key>" data-value="<raw>">`` for tests and scrapers.

    A key in ``estimates`` (its relative error bound, see :func:`kpi_estimates`) is an estimate: shown as
    "≈ 12,345 ±2.4%", with ``data-estimated="true"`` on its span. Every other number is exact.
    """
    cards = []
    for key, label in labels.items():
        if key not in values:
            continue
        value = values[key]
        shown = format_number(value)
        raw = "" if value is None else html.escape(str(value))
        marker = ""
        if estimates and key in estimates:
            shown = f"≈ {shown} <small>±{100 * estimates[key]:.1f}%</small>"
            marker = ' data-estimated="true"'
        cards.append(
            f'<div class="cs-kpi"><div class="cs-label">{html.escape(label)}</div>'
            f'<div class="cs-value"><span data-kpi="{html.escape(key)}" data-value="{raw}"{marker}>{shown}</span>'
            "</div></div>"
        )
    return _CSS + f'<div class="cs-kpis">{"".join(cards)}</div>'


def kpi_estimates(df: pd.DataFrame) -> dict[str, float]:
    """The KPI keys of a ``queries.kpis`` result that are estimates (``source="approx"``), with their error bound."""
    if not df.attrs.get("estimated"):
        return {}
    bound = float(df.attrs.get("error_bound") or 0.0)
    return {"users": bound, "items": bound}


def complete_html(df: pd.DataFrame) -> str:
    """ "complete up to T" from a ``queries.complete_through`` result, in ``<span data-status="complete">``."""
    value = _first_row(df).get("complete_through")
    if value is None or pd.isna(value):
        return 'complete up to <span data-status="complete">–</span> (no events stored)'
    text = pd.Timestamp(value).strftime("%Y-%m-%d %H:%M:%S")
    return f'data complete up to <span data-status="complete">{text}</span> UTC'


def stats_html(stats: Mapping[str, Any], title: str) -> str:
    """``key: value`` pairs with ``data-stat`` hooks (pipeline health)."""
    parts = []
    for key, value in stats.items():
        if isinstance(value, Mapping):
            value = ", ".join(f"{k}: {format_number(v)}" for k, v in value.items()) or "none"
            shown = html.escape(value)
        else:
            shown = format_number(value)
        parts.append(f'<span class="cs-stat">{html.escape(key)}: <b data-stat="{html.escape(key)}">{shown}</b></span>')
    return _CSS + f'<div class="cs-status"><b>{html.escape(title)}</b> · ' + " · ".join(parts) + "</div>"


def store_locked_html(exc: BaseException) -> str:
    """What a viewer sees instead of a traceback when another process holds the embedded store in-process."""
    return message_html(
        "<b>This dashboard is already open in another tab or process.</b><br>"
        "Another process opened the embedded ClickHouse store by itself, and chdb allows one process per data "
        "directory. Stop it and reload this page. For many viewers, let one owner serve the store: "
        "<code>clickstream serve</code> (<code>clickstream demo</code> starts one) — every viewer then reaches it "
        "— or, across machines, run a ClickHouse server (<code>docker compose up</code>) and set "
        "<code>CLICKHOUSE_URL=http://user:password@host:8123/db</code>.<br>"
        f'<span class="cs-status">{html.escape(str(exc))}</span>',
        kind="warn",
        hook="store-locked",
    )


EMPTY_HTML = message_html(
    "<b>No events yet.</b> Start the pipeline — <code>clickstream demo</code>, or the producer and sink "
    "(<code>clickstream produce</code> / <code>clickstream consume</code>) — and this page fills in on its next "
    "refresh.",
    hook="empty",
)


def report_kpis(df: pd.DataFrame) -> dict[str, Any]:
    """The one-row result of ``queries.kpis`` under the dashboard's keys: total, users, items, revenue."""
    k = _first_row(df)
    return {
        "total": int(k.get("total_interactions") or 0),
        "users": int(k.get("unique_users") or 0),
        "items": int(k.get("unique_items") or 0),
        "revenue": round(float(k.get("revenue") or 0.0), 2),
    }


# --- DataFrame adapters: tolerate column names, fail soft -------------------------------------------------------


def _first_row(df: pd.DataFrame | None) -> dict[str, Any]:
    if df is None or df.empty:
        return {}
    row = df.iloc[0].to_dict()
    return {k: (v.item() if hasattr(v, "item") else v) for k, v in row.items()}


def _label_value(df: pd.DataFrame, label: str | None = None, value: str | None = None) -> tuple[list[Any], list[Any]]:
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


# --- figures ----------------------------------------------------------------------------------------------------


def _layout(title: str, height: int = 300, **layout: Any) -> dict[str, Any]:
    return {
        "title": {"text": title, "font": {"size": 14}},
        "height": height,
        "margin": {"l": 40, "r": 10, "t": 40, "b": 30},
        "template": "plotly_white",
        **layout,
    }


def _figure(title: str, height: int = 300, traces: Sequence[Any] = (), **layout: Any) -> go.Figure:
    return _go().Figure(data=list(traces), layout=_layout(title, height, **layout))


def _bar_figure(title: str, height: int = 300, horizontal: bool = False) -> go.Figure:
    return _figure(title, height, [_go().Bar(x=[], y=[], orientation="h" if horizontal else "v")])


#: Seconds a dashboard in a Voila kernel waits for its page to fetch the widgets before it builds its charts.
PAGE_WAIT_S = 10.0
#: The dashboard's charts, in the order they are laid out.
CHARTS = ("breakdown", "timeseries", "top_users", "top_items", "funnel", "device", "country", "referrer")
_WIDE = {"timeseries", "dead_letters"}
_THIRD = {"device", "country", "referrer"}


def _sized(widget: w.Output, name: str) -> w.Output:
    """Charts share a row: full width for time series, a third for the small breakdowns, else half."""
    widget.layout.width = "100%" if name in _WIDE else "33%" if name in _THIRD else "50%"
    return widget


def _set_bar(
    fig: go.Figure, df: pd.DataFrame, horizontal: bool = False, label: str | None = None, value: str | None = None
) -> None:
    labels, values = _label_value(df, label, value)
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


def _set_timeseries(fig: go.Figure, df: pd.DataFrame) -> None:
    """Lines per series: long form (time, category, value) or wide form (time, v1, v2 ...)."""
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


def _set_funnel(fig: go.Figure, df: pd.DataFrame) -> None:
    labels, values = _label_value(df, "interaction_type", "users")
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
    _set_bar(fig, df, horizontal=horizontal, label=label, value=value)
    return fig


def timeseries_figure(df: pd.DataFrame, title: str, height: int = 320) -> go.Figure:
    """A static line chart, one line per series (for reports)."""
    fig = _go().Figure(layout=_layout(title, height))
    _set_timeseries(fig, df)
    return fig


def funnel_figure(df: pd.DataFrame, title: str, height: int = 320) -> go.Figure:
    """A static funnel chart (for reports)."""
    fig = _go().Figure(layout=_layout(title, height))
    _set_funnel(fig, df)
    return fig


# --- filters ----------------------------------------------------------------------------------------------------


def refresh_seconds(value: float) -> float:
    """``value`` as seconds between refreshes; less than 0.5 s (or 0, or negative) would be a busy loop.

    Raises:
        ConfigError: naming ``refresh_s``.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.5 <= value < float("inf"):
        raise ConfigError("refresh_s", f"{value!r} is out of range; expected seconds >= 0.5 (e.g. 5)")
    return float(value)


def window_options(window_s: float) -> list[tuple[str, int]]:
    """The window picker's choices: :data:`TIME_WINDOWS`, plus ``window_s`` in its place when it is another one.

    Raises:
        ConfigError: ``window_s`` is negative or not a number.
    """
    if isinstance(window_s, bool) or not isinstance(window_s, (int, float)) or not 0 <= window_s < 10**9:
        raise ConfigError(
            "window_minutes", f"a window of {window_s!r} seconds is not valid; expected minutes >= 0 (0 = all time)"
        )
    window_s = round(window_s)
    if window_s in dict(TIME_WINDOWS).values():
        return list(TIME_WINDOWS)
    if window_s % 3600 == 0:
        label = f"Last {window_s // 3600} hours"
    elif window_s % 60 == 0:
        label = f"Last {window_s // 60} minutes"
    else:
        label = f"Last {window_s} seconds"
    return sorted([*TIME_WINDOWS, (label, window_s)], key=lambda option: (option[1] != 0, option[1]))


class Filters:
    """Time window, device, country and interaction-type pickers; ``values()`` gives query keyword arguments."""

    def __init__(self, window_s: float = 0, interaction_types: Sequence[str] = ()) -> None:
        layout = w.Layout(width="200px")
        style = {"description_width": "80px"}
        self.window = w.Dropdown(
            options=window_options(window_s),
            value=round(window_s),
            description="Window",
            layout=layout,
            style=style,
        )
        self.interaction_type = w.Dropdown(
            options=[ALL, *interaction_types], value=ALL, description="Interaction", layout=layout, style=style
        )
        self.device = w.Dropdown(options=[ALL], value=ALL, description="Device", layout=layout, style=style)
        self.country = w.Dropdown(options=[ALL], value=ALL, description="Country", layout=layout, style=style)
        for name, dd in self.dropdowns().items():
            dd.add_class(f"cs-filter-{name}")
        self.box = w.HBox(list(self.dropdowns().values()))

    def dropdowns(self) -> dict[str, w.Dropdown]:
        return {
            "window": self.window,
            "interaction_type": self.interaction_type,
            "device": self.device,
            "country": self.country,
        }

    def on_change(self, callback: Callable[[], None]) -> None:
        for dd in self.dropdowns().values():
            dd.observe(lambda _change: callback(), names="value")

    def set_choices(self, name: str, choices: Sequence[str]) -> None:
        """Offer the values seen in the data, keeping the current selection.

        Choices only accumulate: a filtered refresh sees fewer values, and dropping the options it does not see would
        make the selection jump back to "All".
        """
        dd = self.dropdowns()[name]
        seen = {str(c) for c in choices if c not in (None, "")} | (set(dd.options) - {ALL})
        options = [ALL, *sorted(seen)]
        if list(dd.options) != options:
            current = dd.value
            with dd.hold_trait_notifications():
                dd.options = options
                dd.value = current

    def values(self, now: datetime | None = None) -> dict[str, Any]:
        """Keyword arguments for :func:`clickstream_lib.queries.run`: ``start`` plus the chosen filters."""
        out: dict[str, Any] = {}
        if self.window.value:
            # Whole seconds: viewers of a served store that refresh within the same second ask the same question,
            # which the owner answers once (service.StoreService.get).
            now = (now or datetime.now(UTC)).replace(microsecond=0)
            out["start"] = now - timedelta(seconds=int(self.window.value))
        for name in ("interaction_type", "device", "country"):
            value = self.dropdowns()[name].value
            if value != ALL:
                out[name] = value
        return out


# --- the dashboard ----------------------------------------------------------------------------------------------


class _AutoRefresh:
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


class Dashboard(_AutoRefresh):
    """The case study's panels and more, filtered, self-refreshing.

    Args:
        settings: where the store (and, for a live pipeline, Kafka) is.
        refresh_s: seconds between refreshes once :meth:`start` was called.
        window_s: the initial time window in seconds (0 = all time).
        live_pipeline: show and control the live pipeline — the owner's when the store is served (every viewer
            sees the same one; opening or closing a page starts or stops nothing), else producer and sink threads
            started in this process.
        rate: events per second for the live producer.
        top_n: rows in the top users/items panels.
        store: an open store to use instead of connecting.
    """

    def __init__(
        self,
        settings: Settings,
        refresh_s: float = 5.0,
        window_s: int = 0,
        live_pipeline: bool = False,
        rate: float = 200.0,
        top_n: int = 10,
        store: Store | None = None,
    ) -> None:
        from . import events
        from .panels.experiments import ExperimentsPanel

        self.settings = settings
        self.refresh_s = refresh_seconds(refresh_s)
        self.top_n = int(top_n)
        self.refreshes = 0
        self.error: BaseException | None = None
        self.pipeline: PipelineControl | None = None
        self._task: asyncio.Task[None] | None = None
        self._busy = False
        self._syncing = False
        self._complete: Any = None  # the store is complete up to this event time (complete_through)
        self._args: dict[str, Any] = {}  # the latest KPIs' query arguments, with their cut (as_of)

        self.header = w.HTML(message_html("Loading…", hook="loading"))
        self.status = w.HTML("")
        self.pipeline_status = w.HTML("")
        self.kpis = w.HTML("")
        self.filters = Filters(window_s=window_s, interaction_types=events.INTERACTION_TYPES)
        # Filled by _build_charts (the first full refresh): plotly and the figures cost more than the KPIs' query.
        self.figures: dict[str, go.Figure] = {}
        self.charts: dict[str, Chart] = {}
        self.tables: dict[str, w.HTML] = {"items": w.HTML(""), "sessions": w.HTML("")}
        self.experiments = ExperimentsPanel()
        try:
            self.store = store or connect(settings)
        except StoreLocked as exc:
            self.error = exc
            self.store = None  # type: ignore[assignment]
            self.header.value = store_locked_html(exc)
            self.widget: w.Widget = w.VBox([self.header])
            return
        except ClickstreamError as exc:
            self.error = exc
            self.store = None  # type: ignore[assignment]
            self.header.value = message_html(html.escape(str(exc)), kind="error", hook="error")
            self.widget = w.VBox([self.header])
            return
        # Distinct counts are exact; this asks for the rollups' estimates instead (shown with "≈" and their bound).
        self.approx = w.Checkbox(value=False, description="Estimate distinct counts (≈)", indent=False)
        self.approx.add_class("cs-toggle-approx")
        self.approx.observe(lambda _change: self._on_filter(), names="value")
        controls: list[w.Widget] = [self.filters.box, self.approx]
        if live_pipeline:
            if isinstance(self.store, ServedStore):
                self.pipeline = self.store.pipeline()  # the owner's: it runs whether or not a page is open
            else:
                self.pipeline = Pipeline(settings, self.store, rate=rate)
                self.pipeline.start()
            self.pause = w.ToggleButton(
                value=False, description="Pause pipeline", icon="pause", layout=w.Layout(width="160px")
            )
            self.pause.add_class("cs-btn-pause")
            self.pause.observe(self._on_pause, names="value")
            controls.append(self.pause)
        self.filters.on_change(self._on_filter)
        from .panels.reconcile import ReconcilePanel

        self.reconcile = ReconcilePanel(self.store, settings, produced=self._produced)
        self.reconcile_button = w.Button(description="Reconcile", layout=w.Layout(width="120px"))
        self.reconcile_button.add_class("cs-btn-reconcile")
        self.reconcile_button.on_click(lambda _b: self.reconcile.refresh())
        from .panels.alerts import AlertBanner

        self.alert_banner = AlertBanner(self.store)  # shown while an alert fires
        f = {name: _sized(w.Output(), name) for name in CHARTS}
        self._outputs = f
        from .panels.analytics import AnalyticsPanels

        self.analytics = AnalyticsPanels()  # paths, funnel of chosen steps, retention heatmap (refreshed below)
        self.widget = w.VBox(
            [
                self.header,
                self.alert_banner.widget,
                w.HBox(controls),
                self.status,
                self.pipeline_status,
                self.kpis,
                w.HBox([f["breakdown"], f["funnel"]]),
                f["timeseries"],
                w.HBox([f["top_users"], f["top_items"]]),
                w.HTML("<b>Top items with conversion</b>"),
                self.tables["items"],
                w.HTML("<b>Sessions</b>"),
                self.tables["sessions"],
                self.experiments.widget,
                w.HBox([f["device"], f["country"], f["referrer"]]),
                w.HBox([w.HTML("<b>Kafka against the store</b>&nbsp;"), self.reconcile_button]),
                self.reconcile.widget,
                self.analytics.widget,
            ]
        )
        self.widget.add_class("cs-dashboard")

    # --- data ---------------------------------------------------------------------------------------------------

    def _q(self, name: str, **kwargs: Any) -> pd.DataFrame:
        return run_query(self.store, name, **kwargs)

    def refresh(self) -> None:
        """Re-run every query with the current filters and update the panels in place; never raises."""
        if self.store is None or self._busy:
            return
        self._busy = True
        try:
            args = self._refresh_kpis(self.filters.values())
            for _ in self._refresh_panels(args):
                pass
            self.refreshes += 1
        except Exception as exc:  # a panel must not turn into a traceback on a dashboard
            self._failed(exc)
        finally:
            self._busy = False

    def _produced(self) -> Mapping[Any, int] | int | None:
        """What the live pipeline's producer had acknowledged, by partition (None when the generator is not ours)."""
        from .panels.reconcile import producer_acks

        return producer_acks(self.pipeline.stats()) if self.pipeline else None

    def _failed(self, exc: BaseException) -> None:
        logger.exception("dashboard refresh failed")
        self.header.value = message_html(
            f"Refresh failed: {html.escape(str(exc))}. The next refresh tries again.", kind="error", hook="error"
        )
        self.header.layout.display = ""

    async def _first_panels(self) -> None:
        """The first full refresh after :meth:`show` put the KPIs up: charts built and filled one step per turn of
        the kernel's loop, so the page's requests for the widgets' state are answered in between; then the usual
        refresh loop.

        In a Voila kernel the charts wait (up to :data:`PAGE_WAIT_S`) for the page to have fetched the widgets'
        state: the page then draws the KPI row at once, and the charts arrive as updates after it, instead of the
        page drawing everything together once plotly has drawn eight charts.
        """
        if os.environ.get("VOILA_REQUEST_URL"):
            deadline = time.monotonic() + PAGE_WAIT_S
            while w.Widget._control_comm is None and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.25)  # the page's request for the states follows the opening of its control comm
        if not self._busy:
            self._busy = True
            try:
                for _ in self._refresh_panels(self._args or self.filters.values()):
                    await asyncio.sleep(0)
                self.refreshes += 1
            except Exception as exc:
                self._failed(exc)
            finally:
                self._busy = False
        await self._loop()

    def _build_charts(self) -> None:
        from . import events

        go = _go()
        lines = [go.Scatter(x=[], y=[], mode="lines+markers", name=t) for t in events.INTERACTION_TYPES]
        self.figures = {
            "breakdown": _bar_figure("Interactions by type"),
            "timeseries": _figure("Events over time", traces=lines, yaxis_title="events"),
            "top_users": _bar_figure("Top users", height=340, horizontal=True),
            "top_items": _bar_figure("Top items", height=340, horizontal=True),
            "funnel": _figure(
                "Funnel (ordered within sessions)", traces=[go.Funnel(x=[], y=[], textinfo="value+percent initial")]
            ),
            "device": _bar_figure("By device", height=260),
            "country": _bar_figure("By country", height=260),
            "referrer": _bar_figure("By referrer", height=260),
        }
        self.charts = {name: Chart(fig, name, self._outputs[name]) for name, fig in self.figures.items()}

    def _refresh_kpis(self, args: dict[str, Any]) -> dict[str, Any]:
        """The KPI row, the status line and the pipeline's figures; returns ``args`` with this refresh's cut.

        Every panel of one refresh reads the events stored by the newest ingest time seen first (``as_of``), so the
        panels agree with each other while events are being stored (docs/analytics.md, "Panels agree").
        """
        source = "approx" if self.approx.value else "auto"
        fresh, complete = run_queries(
            self.store, [("freshness", {}), ("complete_through", {"topic": self.settings.kafka_topic})]
        )
        as_of = _first_row(fresh).get("newest_ingest_time")
        if as_of is not None and pd.notna(as_of):
            args = {**args, "as_of": as_of}
        kpis, active = run_queries(
            self.store,
            [("kpis", {"source": source, **args}), ("active_users", {**args, "since": args.get("start")})],
        )
        self._args = args
        values = report_kpis(kpis)
        total = int(values["total"])
        values["active_users"] = int(_first_row(active).get("active_users") or 0)
        self.kpis.value = kpi_html(values, estimates=kpi_estimates(kpis))
        self._complete = _first_row(complete).get("complete_through")
        self._update_status(fresh)
        if self.pipeline:
            stats = self.pipeline.stats()
            self.pipeline_status.value = stats_html(
                {
                    key: v
                    for key, v in stats.items()
                    if key in ("producer", "produced_per_s", "sink", "rows_inserted", "ingested_per_s", "dead_letters")
                },
                "Live pipeline",
            )
            self._show_paused(stats.get("producer") != "running" and stats.get("sink") != "running")
        self.header.value = EMPTY_HTML if total == 0 else ""
        self.header.layout.display = "" if total == 0 else "none"
        return args

    def _refresh_panels(self, args: dict[str, Any]) -> Iterator[None]:
        """Charts and tables (built on the first call): their queries in one call to a served store's owner, then
        one panel per step."""
        if not self.charts:
            self._build_charts()
            yield
        dims = ("device", "country", "referrer")
        bucket = self._bucket(args)
        asked = [
            ("breakdown", {"by": "interaction_type", **args}),
            ("timeseries", {"bucket": bucket, **args}),
            ("top_users", {"limit": self.top_n, **args}),
            ("top_items", {"limit": self.top_n, **args}),
            ("funnel", args),
            *(("breakdown", {"by": dim, **args}) for dim in dims),
            ("item_performance", {"limit": self.top_n, **args}),
            ("sessions", args),
            ("experiments", args),
        ]
        breakdown, series, top_users, top_items, funnel, *by_dim, items, sessions, experiments = run_queries(
            self.store, asked
        )
        yield
        self.alert_banner.refresh()  # after the KPIs: the first KPIs cost one call to a served store's owner
        f = self.figures
        _set_bar(f["breakdown"], breakdown)
        self.filters.set_choices("interaction_type", _label_value(breakdown)[0])  # events are open: the data's types
        if bucket == "minute" and (series.empty or series["time"].nunique() < 3):  # a young store: per second
            bucket = "second"
            series = self._q("timeseries", bucket=bucket, **args)
        _set_timeseries(f["timeseries"], series)
        from .queries import BUCKET_SECONDS

        mark_partial(f["timeseries"], partial_bucket(series, self._complete, BUCKET_SECONDS[bucket]))
        _set_bar(f["top_users"], top_users, horizontal=True)
        _set_bar(f["top_items"], top_items, horizontal=True)
        # Views -> purchases conversion per item sits in the table below.
        _set_funnel(f["funnel"], funnel)
        for dim, df in zip(dims, by_dim, strict=True):
            _set_bar(f[dim], df)
            if dim in ("device", "country"):
                self.filters.set_choices(dim, _label_value(df)[0])
        self.tables["items"].value = table_html(items, "items")
        self.tables["sessions"].value = table_html(sessions, "sessions")
        self.experiments.update(experiments)
        for chart in self.charts.values():
            yield
            chart.render()
        try:
            loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        if self.refreshes or loop is None:
            self.analytics.refresh(self.store, args)
        else:  # the first refresh shows the page; the analytics panels fill in right after it, on the kernel's loop
            loop.call_soon(self.analytics.refresh, self.store, args)

    def _bucket(self, args: Mapping[str, Any]) -> str:
        """The time series' bucket for the window shown (all time: the span of the data, from the day rollup)."""
        from .panels.format import table_bucket

        if "start" in args:
            return table_bucket(pd.DataFrame(), args["start"], datetime.now(UTC))
        return table_bucket(self._q("timeseries", bucket="day", **args), None, None)

    def _update_status(self, fresh_df: pd.DataFrame) -> None:
        fresh = _first_row(fresh_df)
        lag_s = fresh.get("seconds_since_ingest")
        newest = fresh.get("newest_event_time")
        now = datetime.now(UTC).strftime("%H:%M:%S")
        parts = [f'updated at <span data-status="updated">{now}</span> UTC']
        parts.append(complete_html(pd.DataFrame({"complete_through": [self._complete]})))
        if lag_s is not None and pd.notna(lag_s):
            parts.append(f'last ingest <span data-status="freshness">{float(lag_s):.1f}</span> s ago')
        if newest is not None and pd.notna(newest):
            parts.append(f'newest event <span data-status="newest">{html.escape(str(newest))[:19]}</span>')
        parts.append(f'refresh every {self.refresh_s:g} s · <span data-status="refreshes">{self.refreshes + 1}</span>')
        self.status.value = '<div class="cs-status">' + " · ".join(parts) + "</div>"

    def _on_filter(self) -> None:
        self.refresh()

    def _show_paused(self, paused: bool) -> None:
        """Set the pause button to the pipeline's state (another viewer of a served store may have changed it)."""
        if self.pause.value == paused:
            return
        self._syncing = True
        try:
            self.pause.value = paused
            label = ("Resume pipeline", "play") if paused else ("Pause pipeline", "pause")
            self.pause.description, self.pause.icon = label
        finally:
            self._syncing = False

    def _on_pause(self, change: Mapping[str, Any]) -> None:
        if not self.pipeline or self._syncing:
            return
        try:
            if change["new"]:
                self.pipeline.stop()
                self.pause.description, self.pause.icon = "Resume pipeline", "play"
            else:
                self.pipeline.start()
                self.pause.description, self.pause.icon = "Pause pipeline", "pause"
        except Exception as exc:  # shown on the page, not as a traceback in the kernel log only
            logger.exception("pausing/resuming the pipeline failed")
            self.header.value = message_html(html.escape(str(exc)), kind="error", hook="error")
            self.header.layout.display = ""
            return
        self.refresh()

    # --- lifecycle ----------------------------------------------------------------------------------------------

    def start(self) -> None:
        """Refresh every ``refresh_s`` seconds with an asyncio task on the kernel's loop (idempotent)."""
        if self.store is not None:
            self._start_refreshing()

    def stop(self) -> None:
        """Stop refreshing and, if this dashboard runs the pipeline in its process, stop it (the sink flushes and
        commits). A served store's pipeline belongs to its owner and keeps running."""
        self._stop_refreshing()
        if isinstance(self.pipeline, Pipeline):
            self.pipeline.stop()

    def show(self) -> w.Widget:
        """Fill the KPI row, start the task that builds and fills the charts then refreshes every ``refresh_s``, and
        return the widget to display (the notebook's one call)."""
        if self.store is None:
            return self.widget
        try:
            self._refresh_kpis(self.filters.values())
        except Exception as exc:
            self._failed(exc)
        if not (self._task and not self._task.done()):
            self._task = asyncio.get_event_loop().create_task(self._first_panels())
        return self.widget


# --- the workbench ----------------------------------------------------------------------------------------------


class Workbench(_AutoRefresh):
    """Widgets that drive the pipeline: producer, rate, scenarios, sink; live health and charts.

    With a served store the pipeline is the owner's (every workbench and dashboard drives the same one, and ``rate``
    and ``seed`` are the owner's); otherwise producer and sink threads run in this process.
    """

    def __init__(
        self,
        settings: Settings,
        rate: float = 500.0,
        refresh_s: float = 2.0,
        preview_rows: int = 10,
        store: Store | None = None,
        seed: int | None = None,
        alert_rules: str | Path | None = None,
    ) -> None:
        from . import events, generator
        from .panels.alerts import AlertsPanel

        self.settings = settings
        self.refresh_s = refresh_seconds(refresh_s)
        self.preview_rows = int(preview_rows)
        self.store = store or connect(settings)
        self.pipeline: PipelineControl
        scenarios_on: dict[str, bool] = {}
        if isinstance(self.store, ServedStore):
            self.pipeline = self.store.pipeline()
            state = self.pipeline.state()
            rate, scenarios_on = float(state.get("rate") or rate), dict(state.get("scenarios") or {})
        else:
            self.pipeline = Pipeline(settings, self.store, rate=rate, seed=seed)
        self._task: asyncio.Task[None] | None = None
        self.refreshes = 0

        def button(label: str, hook: str, style: str, action: Callable[[], None]) -> w.Button:
            b = w.Button(description=label, button_style=style, layout=w.Layout(width="150px"))
            b.add_class(f"cs-btn-{hook}")
            b.on_click(lambda _b: self._act(action))
            return b

        self.buttons = {
            "start-producer": button("Start producer", "start-producer", "success", self.pipeline.start_producer),
            "stop-producer": button("Stop producer", "stop-producer", "warning", self.pipeline.stop_producer),
            "start-sink": button("Start consumer", "start-sink", "success", self.pipeline.start_sink),
            "stop-sink": button("Stop consumer", "stop-sink", "warning", self.pipeline.stop_sink),
        }
        self.rate = w.FloatLogSlider(
            value=rate,
            base=10,
            min=0,
            max=5,
            step=0.05,
            description="events/s",
            continuous_update=False,
            layout=w.Layout(width="420px"),
        )
        self.rate.add_class("cs-rate")
        self.rate.observe(lambda ch: self._act(lambda: self.pipeline.set_rate(float(ch["new"]))), names="value")
        self.scenarios: dict[str, w.ToggleButton] = {}
        for name in generator.SCENARIOS:
            t = w.ToggleButton(
                value=bool(scenarios_on.get(name)), description=name.replace("_", " "), layout=w.Layout(width="120px")
            )
            t.add_class(f"cs-scenario-{name}")
            t.observe(
                lambda ch, n=name: self._act(lambda: self.pipeline.set_scenario(n, bool(ch["new"]))), names="value"
            )
            self.scenarios[name] = t
        self.health = w.HTML(stats_html(self.pipeline.stats(), "Pipeline"))
        from .panels.analytics import AnalyticsPanels

        self.analytics = AnalyticsPanels(full=True)  # every parameter of paths, funnel_steps and cohorts
        self.message = w.HTML("")
        self.preview = w.HTML("")
        go = _go()
        lines = [go.Scatter(x=[], y=[], mode="lines+markers", name=t) for t in events.INTERACTION_TYPES]
        self.figures = {
            "events_per_second": _figure("Events per second (by event time)", traces=lines),
            "breakdown": _bar_figure("Interactions by type"),
            "dead_letters": _bar_figure("Dead letters by reason"),
        }
        # The rules file the alerts form writes: the one `clickstream alerts` and `serve` read.
        rules = alert_rules or settings.alert_rules or Path(settings.data_dir) / "alerts.toml"
        self.alerts = AlertsPanel(self.store, rules)
        from .panels.reconcile import ReconcilePanel, producer_acks

        self.reconcile = ReconcilePanel(self.store, settings, produced=lambda: producer_acks(self.pipeline.stats()))
        self.buttons["reconcile"] = button("Reconcile", "reconcile", "info", self.reconcile.refresh)
        b = self.buttons
        self.charts = {name: Chart(fig, name) for name, fig in self.figures.items()}
        f = {name: _sized(chart.widget, name) for name, chart in self.charts.items()}
        self.widget = w.VBox(
            [
                w.HBox([b["start-producer"], b["stop-producer"], self.rate]),
                w.HBox([w.HTML("<b>Scenarios</b>&nbsp;"), *self.scenarios.values()]),
                w.HBox([b["start-sink"], b["stop-sink"]]),
                self.message,
                self.health,
                w.HBox([f["events_per_second"], f["breakdown"]]),
                f["dead_letters"],
                w.HTML("<b>Newest events</b>"),
                self.preview,
                self.alerts.widget,
                w.HBox([w.HTML("<b>Kafka against the store</b>&nbsp;"), b["reconcile"]]),
                self.reconcile.widget,
                self.analytics.widget,
            ]
        )
        self.widget.add_class("cs-workbench")

    def _act(self, action: Callable[[], None]) -> None:
        try:
            action()
            self.message.value = ""
        except Exception as exc:  # a button must answer with a message, not a traceback in the log
            logger.exception("workbench action failed")
            self.message.value = message_html(html.escape(str(exc)), kind="error", hook="error")
        self.refresh()

    def newest_events(self) -> pd.DataFrame:
        """The newest stored events (by ingest time)."""
        return self.store.query_df(
            f"SELECT event_time, user_id, item_id, interaction_type, device, country, kafka_partition, kafka_offset "
            f"FROM {self.store.table('events')} ORDER BY ingest_time DESC, kafka_offset DESC LIMIT {{n:UInt32}}",
            {"n": self.preview_rows},
        )

    def refresh(self) -> None:
        """Update health, charts and preview; never raises."""
        from . import queries

        try:
            stats = self.pipeline.stats()
            self.health.value = stats_html(stats, "Pipeline")
            start = datetime.now(UTC) - timedelta(minutes=5)
            _set_timeseries(
                self.figures["events_per_second"], queries.run(self.store, "timeseries", bucket="second", start=start)
            )
            _set_bar(self.figures["breakdown"], queries.run(self.store, "breakdown", by="interaction_type"))
            _set_bar(
                self.figures["dead_letters"], queries.run(self.store, "dead_letters"), label="reason", value="messages"
            )
            for chart in self.charts.values():
                chart.render()
            self.preview.value = table_html(self.newest_events(), "preview")
            self.alerts.refresh()
            self.analytics.refresh(self.store, {})
            self.refreshes += 1
        except Exception as exc:
            logger.exception("workbench refresh failed")
            self.message.value = message_html(f"Refresh failed: {html.escape(str(exc))}", kind="error", hook="error")

    def start(self) -> None:
        """Refresh every ``refresh_s`` seconds (idempotent)."""
        self._start_refreshing()

    def stop(self) -> None:
        """Stop refreshing and stop the pipeline (a served store's: the owner's producer and sink)."""
        self._stop_refreshing()
        with contextlib.suppress(Exception):
            self.pipeline.close()

    def show(self) -> w.Widget:
        self.refresh()
        self.start()
        return self.widget

    def wait_for_rows(self, rows: int, timeout_s: float = 60.0) -> int:
        """Block until the sink inserted at least ``rows`` rows (or the timeout passes); returns rows inserted."""
        deadline = time.monotonic() + timeout_s
        while True:
            done = self.pipeline.rows_inserted()
            if done >= rows or time.monotonic() > deadline:
                return done
            time.sleep(0.2)
