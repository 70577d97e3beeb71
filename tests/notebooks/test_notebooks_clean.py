"""Notebooks in git are clean and thin: no outputs, no widget state, a `parameters` cell first."""

from __future__ import annotations

import ast
from pathlib import Path

import nbformat
import pytest

from clickstream_lib.notebooks import NOTEBOOKS, has_outputs, notebook_path

from .conftest import ROOT

COMMITTED = sorted((ROOT / "notebooks").glob("*.ipynb"))


def test_every_shipped_notebook_is_in_the_repository() -> None:
    assert sorted(p.stem for p in COMMITTED) == sorted(NOTEBOOKS)


@pytest.mark.parametrize("path", COMMITTED, ids=lambda p: p.name)
def test_notebook_has_no_outputs_or_widget_state(path: Path) -> None:
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    assert has_outputs(nb) == [], f"{path.name} is not clean: {has_outputs(nb)} — strip it (nbstripout)"


@pytest.mark.parametrize("path", COMMITTED, ids=lambda p: p.name)
def test_first_code_cell_is_the_parameters_cell_of_literals(path: Path) -> None:
    nb = nbformat.read(path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert "parameters" in code[0].metadata.get("tags", []), f"{path.name}: first code cell is not tagged parameters"
    assert sum("parameters" in c.metadata.get("tags", []) for c in code) == 1
    tree = ast.parse(code[0].source)
    for node in tree.body:
        assert isinstance(node, ast.Assign), f"{path.name}: parameters cell holds only assignments"
        ast.literal_eval(node.value)  # literals only, so papermill/Voila overrides are plain values


@pytest.mark.parametrize("path", COMMITTED, ids=lambda p: p.name)
def test_notebook_cells_are_thin(path: Path) -> None:
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        # The parameters cell holds only literal assignments (checked above): its length is the number of knobs.
        if cell.cell_type == "code" and "parameters" not in cell.metadata.get("tags", []):
            lines = [ln for ln in cell.source.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
            assert len(lines) <= 10, f"{path.name}: a cell of {len(lines)} lines belongs in the library"
            assert "def " not in cell.source and "class " not in cell.source


def test_notebook_path_finds_shipped_notebooks_and_rejects_unknown_ones() -> None:
    assert notebook_path("dashboard") == ROOT / "notebooks" / "dashboard.ipynb"
    with pytest.raises(ValueError, match="not found"):
        notebook_path("nope")


@pytest.mark.parametrize("path", COMMITTED, ids=lambda p: p.name)
def test_papermill_sees_every_parameter(path: Path) -> None:
    import papermill

    nb = nbformat.read(path, as_version=4)
    code = next(c for c in nb.cells if c.cell_type == "code")
    names = [n.targets[0].id for n in ast.parse(code.source).body]
    assert list(papermill.inspect_notebook(str(path))) == names
