"""The dashboard's experiments (A/B) panel: per experiment and variation, users, conversion and the difference to
the control variation with its 95% confidence interval and two-proportion z-test p-value.

It shows the ``experiments`` named query (:func:`clickstream_lib.queries.experiments`), the frame the report's
experiments section shows, and stays hidden while the data under the current filters has no experiment.
"""

from __future__ import annotations

import html
import math
from typing import Any

import ipywidgets as w
import pandas as pd

TITLE = (
    "<b>Experiments (A/B)</b> <span class='cs-status'>conversion = users who purchased / users; difference to the "
    "control variation in percentage points, its 95% confidence interval and the two-proportion z-test p-value</span>"
)
# (column of queries.experiments, header)
COLUMNS: tuple[tuple[str, str], ...] = (
    ("experiment_name", "Experiment"),
    ("experiment_variation", "Variation"),
    ("users", "Users"),
    ("purchasers", "Purchasers"),
    ("conversion_rate", "Conversion"),
    ("diff_vs_control", "Difference to control"),
    ("ci", "95% CI"),
    ("p_value", "p-value"),
)


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _percent(value: Any) -> str:
    return "–" if _missing(value) else f"{100 * float(value):.2f}%"


def _points(value: Any) -> str:
    return "–" if _missing(value) else f"{100 * float(value):+.2f} pp"


def _p_value(value: Any) -> str:
    if _missing(value):
        return "–"
    return "< 0.001" if float(value) < 0.001 else f"{float(value):.3f}"


def _cell(column: str, shown: str, raw: Any) -> str:
    value = "" if _missing(raw) else html.escape(str(raw))
    return f'<td data-col="{column}" data-value="{value}">{html.escape(shown)}</td>'


def experiments_html(df: pd.DataFrame) -> str:
    """The experiments frame as a table inside ``<div data-table="experiments">``; every row carries
    ``data-experiment`` / ``data-variation`` and every cell ``data-col`` and its unrounded ``data-value``."""
    head = "".join(f"<th>{html.escape(label)}</th>" for _, label in COLUMNS)
    rows = []
    for r in df.to_dict("records"):
        control = r["experiment_variation"] == r["control"]
        cells = [
            _cell("experiment_name", str(r["experiment_name"]), r["experiment_name"]),
            _cell("experiment_variation", str(r["experiment_variation"]), r["experiment_variation"]),
            _cell("users", f"{int(r['users']):,}", int(r["users"])),
            _cell("purchasers", f"{int(r['purchasers']):,}", int(r["purchasers"])),
            _cell("conversion_rate", _percent(r["conversion_rate"]), r["conversion_rate"]),
        ]
        if control:
            cells += [_cell("diff_vs_control", "control", None), _cell("ci", "", None), _cell("p_value", "", None)]
        else:
            ci = "–" if _missing(r["ci_low"]) else f"{_points(r['ci_low'])} to {_points(r['ci_high'])}"
            cells += [
                _cell("diff_vs_control", _points(r["diff_vs_control"]), r["diff_vs_control"]),
                _cell("ci", ci, None),
                _cell("p_value", _p_value(r["p_value"]), r["p_value"]),
            ]
        name, variation = html.escape(str(r["experiment_name"])), html.escape(str(r["experiment_variation"]))
        rows.append(f'<tr data-experiment="{name}" data-variation="{variation}">{"".join(cells)}</tr>')
    return (
        '<div class="cs-table" data-table="experiments"><table>'
        f"<thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table></div>"
    )


class ExperimentsPanel:
    """A title and the experiments table in ``widget`` (class ``cs-experiments``), hidden while there is none."""

    def __init__(self) -> None:
        self.table = w.HTML("")
        self.widget = w.VBox([w.HTML(TITLE), self.table])
        self.widget.add_class("cs-experiments")
        self.widget.layout.display = "none"

    @property
    def visible(self) -> bool:
        return bool(self.widget.layout.display != "none")

    def update(self, df: pd.DataFrame) -> None:
        """Show ``df`` (the ``experiments`` query's frame), or hide the panel when it has no rows."""
        if df is None or df.empty:
            self.widget.layout.display = "none"
            self.table.value = ""
            return
        self.table.value = experiments_html(df)
        self.widget.layout.display = ""
