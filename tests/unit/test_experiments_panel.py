"""The dashboard's experiments panel as HTML: numbers as the experiments query gives them, names escaped, hidden
without experiments (the browser test shows it on a real store)."""

from __future__ import annotations

import math

import pandas as pd

from clickstream_lib.panels.experiments import ExperimentsPanel, experiments_html
from clickstream_lib.queries import compare_proportions


def frame() -> pd.DataFrame:
    rows = []
    for name, variation, users, purchasers in (
        ("checkout", "control", 400, 40),
        ("checkout", "b", 410, 62),
        ("<i>onboarding</i>", "control", 10, 0),
        ("<i>onboarding</i>", "x&y", 0, 0),
    ):
        control = {"checkout": (40, 400), "<i>onboarding</i>": (0, 10)}[name]
        diff, lo, hi, p = compare_proportions(purchasers, users, control[0], control[1])
        rows.append(
            {
                "experiment_name": name,
                "experiment_variation": variation,
                "users": users,
                "purchasers": purchasers,
                "conversion_rate": purchasers / users if users else math.nan,
                "control": "control",
                "diff_vs_control": diff,
                "ci_low": lo,
                "ci_high": hi,
                "p_value": p,
            }
        )
    return pd.DataFrame(rows)


def test_rows_show_conversion_difference_ci_and_p_value() -> None:
    df = frame()
    out = experiments_html(df)
    diff, lo, hi, p = df.loc[1, ["diff_vs_control", "ci_low", "ci_high", "p_value"]]
    assert '<tr data-experiment="checkout" data-variation="b">' in out
    assert f'<td data-col="conversion_rate" data-value="{62 / 410}">15.12%</td>' in out
    assert f'<td data-col="diff_vs_control" data-value="{diff}">{100 * diff:+.2f} pp</td>' in out
    assert f"{100 * lo:+.2f} pp to {100 * hi:+.2f} pp" in out
    assert f'<td data-col="p_value" data-value="{p}">{p:.3f}</td>' in out
    assert '<td data-col="diff_vs_control" data-value="">control</td>' in out  # the control row
    # Names are data: escaped, never markup; a variation without users shows dashes, not NaN.
    assert "<i>" not in out and 'data-experiment="&lt;i&gt;onboarding&lt;/i&gt;"' in out
    assert 'data-variation="x&amp;y"' in out and "nan" not in out.lower()


def test_the_panel_is_hidden_without_experiments() -> None:
    panel = ExperimentsPanel()
    assert not panel.visible
    panel.update(frame())
    assert panel.visible and 'data-table="experiments"' in panel.table.value
    panel.update(frame().iloc[0:0])
    assert not panel.visible and panel.table.value == ""
