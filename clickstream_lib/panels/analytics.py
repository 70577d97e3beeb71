"""The paths, funnel and retention panels: widgets where a user picks the start event, the funnel's steps and the
cohorts; the dashboard shows the common choices, the workbench (``full=True``) every parameter of the queries."""

from __future__ import annotations

import html
import logging
import time
from typing import Any

import ipywidgets as w

from .. import events
from ..errors import ConfigError
from ..store import Store
from .base import Chart, message_html, run_queries
from .format import format_table

logger = logging.getLogger(__name__)

_BREAKDOWN_OPTIONS = [("none", ""), ("device", "device"), ("country", "country"), ("referrer", "referrer")]
ITEM_SEPARATOR = "@"  # "purchase@item_0007": a step of one item ('@' is not a character of an interaction type)


def parse_steps(text: str) -> tuple[list[str], list[str]]:
    """``"view, click, purchase@item_0007"`` -> (types, items), ``''`` for any item.

    Raises:
        ConfigError: fewer than two steps (names ``steps``).
    """
    types, items = [], []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        kind, _, item = part.partition(ITEM_SEPARATOR)
        types.append(kind.strip())
        items.append(item.strip())
    if len(types) < 2:
        raise ConfigError(
            "steps", f"{text[:60]!r} has {len(types)} step(s); give two or more, e.g. view, click, purchase"
        )
    return types, items


def parse_ints(text: str, name: str) -> list[int]:
    """``"30, 60"`` -> [30, 60]. Raises ConfigError naming ``name`` for anything else."""
    try:
        return [int(p) for p in text.replace(" ", "").split(",") if p]
    except ValueError:
        raise ConfigError(name, f"{text[:60]!r} is not a comma-separated list of whole numbers, e.g. 30, 60") from None


class AnalyticsPanels:
    """Paths (Sankey + drop-offs), a funnel of chosen steps and cohort retention (heatmap), with their controls.

    Args:
        full: show every parameter (workbench); else the common ones (dashboard).
        min_interval_s: on periodic refreshes with unchanged filters, re-query at most this often (these queries
            read every event of the window; a control change or new filters re-query at once).
    """

    def __init__(self, full: bool = False, min_interval_s: float = 60.0) -> None:
        self.full = full
        self.min_interval_s = min_interval_s
        self.refreshes = 0
        self._store: Store | None = None
        self._args: dict[str, Any] | None = None
        self._last = 0.0
        lay, style = w.Layout(width="220px"), {"description_width": "90px"}
        types = list(events.INTERACTION_TYPES)
        self.event = w.Dropdown(options=types, value="view", description="Start event", layout=lay, style=style)
        self.direction = w.Dropdown(
            options=[("after it", "after"), ("before it", "before")], value="after", description="Paths", layout=lay,
            style=style,
        )  # fmt: skip
        self.steps = w.IntSlider(value=4, min=3, max=7, description="Steps", layout=lay, style=style)
        self.item = w.Text(value="", description="Item", placeholder="any", layout=lay, style=style)
        self.gap_min = w.BoundedIntText(
            value=30, min=1, max=1440, description="Session gap (min)", layout=lay, style=style
        )
        self.limit = w.BoundedIntText(value=15, min=1, max=200, description="Top paths", layout=lay, style=style)
        self.funnel = w.Text(
            value="view, click, add_to_cart, purchase", description="Funnel steps", layout=w.Layout(width="440px"),
            style=style,
        )  # fmt: skip
        self.order = w.Dropdown(options=["strict", "any"], value="strict", description="Order", layout=lay, style=style)
        self.windows = w.Text(value="30", description="Window (min)", layout=lay, style=style)
        self.by = w.Dropdown(
            options=_BREAKDOWN_OPTIONS, value="", description="Breakdown", layout=lay,
            style=style,
        )  # fmt: skip
        self.period = w.Dropdown(options=["day", "week"], value="day", description="Cohorts", layout=lay, style=style)
        self.mode = w.Dropdown(
            options=[("on period N", "on"), ("by period N", "by")], value="on", description="Returned", layout=lay,
            style=style,
        )  # fmt: skip
        self.periods = w.BoundedIntText(value=7, min=1, max=52, description="Periods", layout=lay, style=style)
        self.cohort_by = w.Dropdown(
            options=_BREAKDOWN_OPTIONS, value="", description="Cohort by", layout=lay,
            style=style,
        )  # fmt: skip
        for name, control in self.controls().items():
            control.add_class(f"cs-an-{name}")
            control.observe(lambda _change: self.refresh(force=True), names="value")
        self.message = w.HTML("")
        # The charts are built by the first refresh: plotly loads then, after the dashboard's KPIs are up.
        self._outputs = {name: w.Output() for name in ("sankey", "funnel_steps", "retention")}
        self.charts: dict[str, Chart] = {}
        self.drops = w.HTML("")
        self.funnel_table = w.HTML("")
        c = self.controls()
        paths_row = [c["event"], c["direction"], c["steps"], *([c["item"], c["gap_min"], c["limit"]] if full else [])]
        funnel_row = [c["funnel"], c["order"], c["windows"], c["by"]]
        cohort_row = [c["period"], c["mode"], *([c["periods"], c["cohort_by"]] if full else [])]
        self.widget = w.VBox(
            [
                w.HTML("<b>Paths</b>"),
                w.HBox(paths_row),
                self.message,
                self._outputs["sankey"],
                self.drops,
                w.HTML("<b>Funnel</b>"),
                w.HBox(funnel_row),
                self._outputs["funnel_steps"],
                self.funnel_table,
                w.HTML("<b>Retention</b>"),
                w.HBox(cohort_row),
                self._outputs["retention"],
            ]
        )
        self.widget.add_class("cs-analytics")

    def controls(self) -> dict[str, w.Widget]:
        return {
            "event": self.event,
            "direction": self.direction,
            "steps": self.steps,
            "item": self.item,
            "gap_min": self.gap_min,
            "limit": self.limit,
            "funnel": self.funnel,
            "order": self.order,
            "windows": self.windows,
            "by": self.by,
            "period": self.period,
            "mode": self.mode,
            "periods": self.periods,
            "cohort_by": self.cohort_by,
        }

    def query_arguments(self) -> dict[str, dict[str, Any]]:
        """The three queries' options from the controls (validated by the queries themselves)."""
        types, items = parse_steps(self.funnel.value)
        windows = [m * 60 for m in parse_ints(self.windows.value, "windows")]
        path = {"event": self.event.value, "direction": self.direction.value, "steps": int(self.steps.value)}
        path.update(item=self.item.value.strip(), gap_s=int(self.gap_min.value) * 60)
        return {
            "paths": {**path, "limit": int(self.limit.value)},
            "path_steps": path,
            "funnel_steps": {
                "steps": types,
                "items": items,
                "windows_s": windows,
                "order": self.order.value,
                "by": self.by.value,
            },
            "cohorts": {
                "period": self.period.value,
                "mode": self.mode.value,
                "periods": int(self.periods.value),
                "by": self.cohort_by.value,
            },
        }

    def refresh(self, store: Store | None = None, args: dict[str, Any] | None = None, force: bool = False) -> None:
        """Re-run the three panels' queries with ``args`` (window and filters); never raises.

        Without ``force``, an unchanged ``args`` re-queries only after ``min_interval_s``.
        """
        store = store or self._store
        if store is None:
            return
        args = dict(self._args or {}) if args is None else dict(args)
        changed = args != self._args or store is not self._store
        if not (force or changed or time.monotonic() - self._last >= self.min_interval_s):
            return
        self._store, self._args, self._last = store, args, time.monotonic()
        try:
            opts = self.query_arguments()
            paths, drops, funnel, cohorts = run_queries(  # one call to a served store's owner
                store, [(name, {**opts[name], **args}) for name in ("paths", "path_steps", "funnel_steps", "cohorts")]
            )
        except ConfigError as exc:  # a bad choice: say which and how to fix it, keep the last charts
            self.message.value = message_html(html.escape(str(exc)), kind="warn", hook="analytics-input")
            return
        except Exception as exc:
            logger.exception("analytics panels refresh failed")
            self.message.value = message_html(f"Refresh failed: {html.escape(str(exc))}", kind="error", hook="error")
            return
        self.message.value = ""
        steps, direction = opts["paths"]["steps"], opts["paths"]["direction"]
        title = f"Paths {direction} {opts['paths']['event']} (top {len(paths)}, sessions)"
        from .figures import funnel_steps_figure, retention_heatmap, sankey_figure

        label = "on" if opts["cohorts"]["mode"] == "on" else "by"
        figures = {
            "sankey": sankey_figure(paths, steps, title, direction=direction),
            "funnel_steps": funnel_steps_figure(funnel, "Funnel (users by entry)"),
            "retention": retention_heatmap(
                cohorts, f"Retention: returned {label} {opts['cohorts']['period']} N, % of cohort"
            ),
        }
        for name, fig in figures.items():
            if name in self.charts:
                self.charts[name].fig = fig
                self.charts[name].render()
            else:
                self.charts[name] = Chart(fig, name, self._outputs[name])
        self.drops.value = format_table(drops, "path-steps")
        self.funnel_table.value = format_table(funnel, "funnel-steps")
        self.refreshes += 1
