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
    # Every error the library raises on purpose can be caught by its name from the package.
    assert public_errors - exported == set(), f"errors not exported: {sorted(public_errors - exported)}"


def test_every_public_class_or_function_of_the_package_namespace_is_in_all() -> None:
    # As httpx's tests/test_exported_members.py: what the package namespace offers of its own is exported.
    offered = {
        name
        for name, value in vars(clickstream_lib).items()
        if not name.startswith("_")
        and (isinstance(value, type) or callable(value))
        and getattr(value, "__module__", "").startswith("clickstream_lib")
    }
    assert offered - set(clickstream_lib.__all__) == set()


def test_import_stays_light() -> None:
    # The CLI imports the package on every call: widgets, plotly and Voila must not load with it.
    code = (
        "import sys, clickstream_lib; print(' '.join(m for m in ('plotly', 'ipywidgets', 'voila') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == ""


def test_the_wheel_lists_every_subpackage() -> None:
    # pyproject.toml names the packages one by one (notebooks/ is mapped in): a new subpackage must be listed too.
    import tomllib
    from pathlib import Path

    root = Path(clickstream_lib.__file__).resolve().parent
    listed = set(tomllib.loads((root.parent / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    on_disk = {
        "clickstream_lib." + ".".join(p.parent.relative_to(root).parts)
        for p in root.rglob("__init__.py")
        if p.parent != root
    }
    assert on_disk <= listed, f"not in pyproject.toml's packages: {sorted(on_disk - listed)}"
