"""Edge values a notebook or `clickstream dashboard` passes to the widgets: they work or fail naming the input."""

from __future__ import annotations

import pytest

from clickstream_lib.errors import ConfigError
from clickstream_lib.panels.base import refresh_seconds
from clickstream_lib.panels.filters import TIME_WINDOWS, Filters, window_options


def test_a_window_outside_the_list_is_offered_in_its_place() -> None:
    f = Filters(window_s=30 * 60)
    assert f.window.value == 1800
    assert ("Last 30 minutes", 1800) in f.window.options
    assert [v for _, v in f.window.options] == sorted(v for _, v in f.window.options)
    assert window_options(7200)[-2] == ("Last 2 hours", 7200)
    assert window_options(300) == list(TIME_WINDOWS)
    assert Filters(window_s=60 * 2.5).window.value == 150


@pytest.mark.parametrize("bad", [-60, "5", True, float("nan")])
def test_a_bad_window_names_window_minutes(bad: object) -> None:
    with pytest.raises(ConfigError, match=r"^window_minutes: "):
        window_options(bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", [0, -1, 0.1, float("inf"), float("nan"), "5"])
def test_a_refresh_that_would_busy_loop_names_refresh_s(bad: object) -> None:
    with pytest.raises(ConfigError, match=r"^refresh_s: "):
        refresh_seconds(bad)  # type: ignore[arg-type]
    assert refresh_seconds(2) == 2.0
