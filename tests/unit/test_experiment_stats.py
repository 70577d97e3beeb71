"""The A/B statistics of the experiments query, against figures worked by hand."""

from __future__ import annotations

import math

import pytest

from clickstream_lib.queries import compare_proportions


def test_difference_interval_and_p_value_as_worked_by_hand() -> None:
    # 120 of 1000 against 100 of 1000. Unpooled se = sqrt(.12*.88/1000 + .1*.9/1000) = 0.0139857;
    # pooled p = .11, se = sqrt(.11*.89*2/1000) = 0.0139929, z = 1.42930, two-sided p = 0.152924.
    diff, lo, hi, p = compare_proportions(120, 1000, 100, 1000)
    assert diff == pytest.approx(0.02)
    assert lo == pytest.approx(0.02 - 1.959964 * 0.0139857, abs=1e-6)
    assert hi == pytest.approx(0.02 + 1.959964 * 0.0139857, abs=1e-6)
    assert p == pytest.approx(0.152924, abs=1e-5)
    # Symmetric, and a clear effect is significant.
    assert compare_proportions(100, 1000, 120, 1000)[3] == pytest.approx(p)
    assert compare_proportions(300, 1000, 200, 1000)[3] < 1e-6


def test_degenerate_inputs_give_nan_not_errors() -> None:
    assert all(math.isnan(v) for v in compare_proportions(0, 0, 5, 10))
    diff, _, _, p = compare_proportions(0, 10, 0, 10)  # nobody converted anywhere: no variance to test
    assert diff == 0 and math.isnan(p)
    assert compare_proportions(5, 10, 5, 10)[3] == pytest.approx(1.0)
