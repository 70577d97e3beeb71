"""The pipeline workbench: widgets that drive the producer, its rate and scenarios, and the sink, with live health,
charts, the newest events, alerts, the reconcile check and the analytics panels.

With a served store the pipeline is the owner's; otherwise producer and sink threads run in this process.
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import ipywidgets as w
import pandas as pd

from .panels.base import AutoRefresh, Chart, _go, message_html, refresh_seconds, sized, table_html
from .panels.figures import empty_bar_figure, empty_figure, set_bar, set_timeseries
from .panels.kpis import stats_html
from .pipeline import Pipeline, PipelineControl
from .settings import Settings
from .store import ServedStore, Store, connect

logger = logging.getLogger(__name__)


class Workbench(AutoRefresh):
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
            "events_per_second": empty_figure("Events per second (by event time)", traces=lines),
            "breakdown": empty_bar_figure("Interactions by type"),
            "dead_letters": empty_bar_figure("Dead letters by reason"),
        }
        # The rules file the alerts form writes: the one `clickstream alerts` and `serve` read.
        rules = alert_rules or settings.alert_rules or Path(settings.data_dir) / "alerts.toml"
        self.alerts = AlertsPanel(self.store, rules)
        from .panels.reconcile import ReconcilePanel, producer_acks

        self.reconcile = ReconcilePanel(self.store, settings, produced=lambda: producer_acks(self.pipeline.stats()))
        self.buttons["reconcile"] = button("Reconcile", "reconcile", "info", self.reconcile.refresh)
        b = self.buttons
        self.charts = {name: Chart(fig, name) for name, fig in self.figures.items()}
        f = {name: sized(chart.widget, name) for name, chart in self.charts.items()}
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
            set_timeseries(
                self.figures["events_per_second"], queries.run(self.store, "timeseries", bucket="second", start=start)
            )
            set_bar(self.figures["breakdown"], queries.run(self.store, "breakdown", by="interaction_type"))
            set_bar(
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
