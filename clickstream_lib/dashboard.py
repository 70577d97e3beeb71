"""The live dashboard: KPIs, charts, tables and the analytics panels of the store, filtered and self-refreshing.

Panels only call :mod:`clickstream_lib.queries` and the pipeline; they hold no SQL of their own. Every number a test
or a user may want to read has a stable DOM hook: ``<span data-kpi="total">``, ``<span data-stat="rows_inserted">``,
``<div data-message="empty">``.

Refresh: :meth:`Dashboard.start` schedules an ``asyncio`` task on the kernel's event loop (a ``Play`` widget does
not tick in Voila while the notebook executes). :meth:`Dashboard.show` fills the KPI row before it returns, so the
page opens on current numbers; Voila shows a page only once its notebook has run, so the charts are built (plotly
loads here) and filled by that task afterwards, panel by panel — in a Voila kernel once the page has fetched the
widgets' state, so the page draws the KPI row before the charts.
"""

from __future__ import annotations

import asyncio
import html
import logging
import os
import time
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import ipywidgets as w
import pandas as pd

from .errors import ClickstreamError, StoreLocked
from .panels.base import (
    AutoRefresh,
    Chart,
    _go,
    first_row,
    message_html,
    refresh_seconds,
    run_queries,
    run_query,
    sized,
    table_html,
)
from .panels.figures import (
    empty_bar_figure,
    empty_figure,
    label_value,
    mark_partial,
    partial_bucket,
    set_bar,
    set_funnel,
    set_timeseries,
)
from .panels.filters import Filters
from .panels.kpis import kpi_estimates, kpi_html, pipeline_html, report_kpis, status_html
from .pipeline import Pipeline, PipelineControl
from .settings import Settings
from .store import ServedStore, Store, connect

if TYPE_CHECKING:
    import plotly.graph_objects as go

logger = logging.getLogger(__name__)

#: Seconds a dashboard in a Voila kernel waits for its page to fetch the widgets before it builds its charts.
PAGE_WAIT_S = 10.0
#: The dashboard's charts, in the order they are laid out.
CHARTS = ("breakdown", "timeseries", "top_users", "top_items", "funnel", "device", "country", "referrer")


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


class Dashboard(AutoRefresh):
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
        f = {name: sized(w.Output(), name) for name in CHARTS}
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
            args = self.filters.values()
            if not self._consistent:  # a consistent refresh reads the KPIs with the panels, in one snapshot
                args = self._refresh_kpis(args)
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
            "breakdown": empty_bar_figure("Interactions by type"),
            "timeseries": empty_figure("Events over time", traces=lines, yaxis_title="events"),
            "top_users": empty_bar_figure("Top users", height=340, horizontal=True),
            "top_items": empty_bar_figure("Top items", height=340, horizontal=True),
            "funnel": empty_figure(
                "Funnel (ordered within sessions)", traces=[go.Funnel(x=[], y=[], textinfo="value+percent initial")]
            ),
            "device": empty_bar_figure("By device", height=260),
            "country": empty_bar_figure("By country", height=260),
            "referrer": empty_bar_figure("By referrer", height=260),
        }
        self.charts = {name: Chart(fig, name, self._outputs[name]) for name, fig in self.figures.items()}

    @property
    def _consistent(self) -> bool:
        """Every write to the store passes through its engine's gate here or in its owner, so a refresh set can be
        read in one snapshot, from the rollups (:mod:`clickstream_lib.snapshot`); else it is cut at one ingest time."""
        return bool(self.store is not None and self.store.consistent_reads)

    def _head(self, args: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
        """The status line's and the KPI row's queries."""
        source = "approx" if self.approx.value else "auto"
        return [
            ("freshness", {}),
            ("complete_through", {"topic": self.settings.kafka_topic}),
            ("kpis", {"source": source, **args}),
            ("active_users", {**args, "since": args.get("start")}),
        ]

    def _refresh_kpis(self, args: dict[str, Any]) -> dict[str, Any]:
        """The KPI row, the status line and the pipeline's figures; returns ``args`` with this refresh's cut.

        Every panel of one refresh reads the same events (docs/analytics.md, "Panels agree"): in one snapshot of the
        store where its writes pass through the engine's gate (an embedded store; :meth:`_refresh_panels` then reads
        the KPIs again with the panels), else cut at the newest ingest time seen first (``as_of``).
        """
        head = self._head(args)
        if self._consistent:
            self._show_head(args, *run_queries(self.store, head, consistent=True))
            return args
        fresh, complete = run_queries(self.store, head[:2])
        as_of = first_row(fresh).get("newest_ingest_time")
        if as_of is not None and pd.notna(as_of):
            args = {**args, "as_of": as_of}
        kpis, active = run_queries(self.store, self._head(args)[2:])
        self._show_head(args, fresh, complete, kpis, active)
        return args

    def _show_head(
        self,
        args: dict[str, Any],
        fresh: pd.DataFrame,
        complete: pd.DataFrame,
        kpis: pd.DataFrame,
        active: pd.DataFrame,
    ) -> None:
        self._args = args
        values = report_kpis(kpis)
        total = int(values["total"])
        values["active_users"] = int(first_row(active).get("active_users") or 0)
        self.kpis.value = kpi_html(values, estimates=kpi_estimates(kpis))
        self._complete = first_row(complete).get("complete_through")
        self.status.value = status_html(fresh, self._complete, self.refresh_s, self.refreshes + 1)
        if self.pipeline:
            stats = self.pipeline.stats()
            self.pipeline_status.value = pipeline_html(stats)
            self._show_paused(stats.get("producer") != "running" and stats.get("sink") != "running")
        self.header.value = EMPTY_HTML if total == 0 else ""
        self.header.layout.display = "" if total == 0 else "none"

    def _refresh_panels(self, args: dict[str, Any]) -> Iterator[None]:
        """Charts and tables (built on the first call): their queries in one call to a served store's owner (with
        the KPI row's, in one snapshot, where the store allows it: see :meth:`_refresh_kpis`), then one panel per
        step."""
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
        if self._consistent:
            head = self._head(args)
            *got, fresh, complete, kpis, active = run_queries(self.store, asked + head, consistent=True)
            self._show_head(args, fresh, complete, kpis, active)
            # A young store's per-second series below is read after the snapshot: it is cut at the snapshot's
            # newest ingest time, which a young store's raw events answer at once.
            cut = first_row(fresh).get("newest_ingest_time")
            series_args = args if cut is None or pd.isna(cut) else {**args, "as_of": cut}
        else:
            got = run_queries(self.store, asked)
            series_args = args
        breakdown, series, top_users, top_items, funnel, *by_dim, items, sessions, experiments = got
        yield
        self.alert_banner.refresh()  # after the KPIs: the first KPIs cost one call to a served store's owner
        f = self.figures
        set_bar(f["breakdown"], breakdown)
        self.filters.set_choices("interaction_type", label_value(breakdown)[0])  # events are open: the data's types
        if bucket == "minute" and (series.empty or series["time"].nunique() < 3):  # a young store: per second
            bucket = "second"
            series = self._q("timeseries", bucket=bucket, **series_args)
        set_timeseries(f["timeseries"], series)
        from .queries import BUCKET_SECONDS

        mark_partial(f["timeseries"], partial_bucket(series, self._complete, BUCKET_SECONDS[bucket]))
        set_bar(f["top_users"], top_users, horizontal=True)
        set_bar(f["top_items"], top_items, horizontal=True)
        # Views -> purchases conversion per item sits in the table below.
        set_funnel(f["funnel"], funnel)
        for dim, df in zip(dims, by_dim, strict=True):
            set_bar(f[dim], df)
            if dim in ("device", "country"):
                self.filters.set_choices(dim, label_value(df)[0])
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
