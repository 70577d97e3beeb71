"""The dashboard's filters: time window, device, country and interaction type, as query keyword arguments."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import ipywidgets as w

from ..errors import ConfigError

ALL = "All"
TIME_WINDOWS: tuple[tuple[str, int], ...] = (
    ("All time", 0),
    ("Last 5 minutes", 300),
    ("Last 15 minutes", 900),
    ("Last hour", 3600),
    ("Last 24 hours", 86_400),
)


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
