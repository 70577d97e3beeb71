"""The public API is small and deliberate: __all__ is sorted, complete, and every name resolves."""

from __future__ import annotations

import subprocess
import sys

import clickstream_lib
from clickstream_lib import errors


def test_all_is_sorted_and_every_name_resolves() -> None:
    names = clickstream_lib.__all__
    # ruff's RUF022 keeps the isort-style order (constants, classes, functions/modules); here: no duplicates.
    assert len(set(names)) == len(names)
    assert [n for n in names if not n.isupper()] == sorted(n for n in names if not n.isupper())
    for name in names:
        assert getattr(clickstream_lib, name) is not None, name


def test_lazy_names_and_errors_are_all_exported() -> None:
    lazy = set(clickstream_lib._LAZY)
    public_errors = {n for n in dir(errors) if n[0].isupper() and isinstance(getattr(errors, n), type)}
    exported = set(clickstream_lib.__all__)
    assert lazy <= exported
    missing = {"ClickstreamError", "ConfigError", "BrokerUnavailable", "StoreError", "StoreLocked"} - exported
    assert not missing
    assert public_errors  # the error tree exists; subclasses beyond the common ones stay in errors


def test_import_stays_light() -> None:
    # The CLI imports the package on every call: widgets, plotly and Voila must not load with it.
    code = (
        "import sys, clickstream_lib; print(' '.join(m for m in ('plotly', 'ipywidgets', 'voila') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == ""
