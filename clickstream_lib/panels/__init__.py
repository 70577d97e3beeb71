"""Dashboard and report panels for paths, funnels of chosen steps and cohort retention (issue #18).

* :mod:`.figures` — plotly figures from the queries' frames: the paths Sankey, the funnel by step (and breakdown),
  the cohort triangle heatmap.
* :mod:`.format` — the time bucket a range calls for, and tables formatted for people (percent, money, no index).
* :mod:`.analytics` — :class:`AnalyticsPanels`, the widgets that let a user pick the start event, the funnel's steps
  and the cohorts, used by the dashboard and (with every parameter) the workbench.
"""

from __future__ import annotations

from .analytics import AnalyticsPanels
from .figures import funnel_steps_figure, retention_heatmap, sankey_figure
from .format import auto_bucket, format_table, table_bucket

__all__ = [
    "AnalyticsPanels",
    "auto_bucket",
    "format_table",
    "funnel_steps_figure",
    "retention_heatmap",
    "sankey_figure",
    "table_bucket",
]
