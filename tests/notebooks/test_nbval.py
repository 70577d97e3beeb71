"""nbval (``--nbval-lax``) on every notebook with small parameters and real asserts on the figures.

Each notebook is parameterised with papermill (without executing), test cells with ``assert``s are appended, and
nbval runs it in a separate pytest process whose kernel gets this test's own data directory.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import nbformat
import papermill
import pytest
from nbformat.v4 import new_code_cell

from clickstream_lib.notebooks import notebook_path
from clickstream_lib.settings import Settings

from .conftest import env_for, load_events

pytestmark = [pytest.mark.integration, pytest.mark.notebooks]

WAIT_FOR_ROWS = """
import time
def wait_rows(pipeline, n, timeout=120):
    deadline = time.monotonic() + timeout
    while pipeline.rows_inserted() < n and time.monotonic() < deadline:
        time.sleep(0.25)
    return pipeline.rows_inserted()
"""

CHECKS: dict[str, tuple[dict[str, Any], list[str]]] = {
    "dashboard": (
        {"live_pipeline": True, "rate": 3000.0, "refresh_s": 1.0},
        [
            WAIT_FOR_ROWS,
            "assert wait_rows(dash.pipeline, 600) >= 600\n"
            "dash.pipeline.stop()\n"
            "dash.refresh()\n"
            "stored = dash.store.scalar(f\"SELECT count() FROM {dash.store.table('events')}\")\n"
            "assert f'data-value=\"{stored}\"' in dash.kpis.value\n"
            "assert sum(dash.figures['breakdown'].data[0].y) == stored\n"
            "assert sum(sum(t.y) for t in dash.figures['timeseries'].data) == stored\n"
            "assert list(dash.figures['funnel'].data[0].y) == ['view', 'click', 'add_to_cart', 'purchase']\n"
            "assert len(dash.figures['top_users'].data[0].y) == 10\n"
            "items_html = dash.tables['items'].value\n"
            "assert 'data-table=\"items\"' in items_html and '<td>item_' in items_html\n"
            "assert dash.header.value == ''  # no empty-store or error message",
            "dash.filters.device.value = dash.filters.device.options[1]\n"
            "filtered = sum(dash.figures['breakdown'].data[0].y)\n"
            "assert 0 < filtered < stored\n"
            "dash.stop()",
        ],
    ),
    "workbench": (
        {"autostart": True, "events": 800, "rate": 4000.0},
        [
            "assert wb.wait_for_rows(800, timeout_s=120) == 800\n"
            "wb.refresh()\n"
            "assert sum(wb.figures['breakdown'].data[0].y) == 800\n"
            "assert sum(sum(t.y) for t in wb.figures['events_per_second'].data) == 800\n"
            "assert wb.preview.value.count('<tr') == 11  # header + preview_rows\n"
            "assert 'data-stat=\"rows_inserted\">800<' in wb.health.value\n"
            "wb.stop()",
        ],
    ),
    "report": (
        {"top_n": 3},
        [
            "from clickstream_lib.notebooks import recorded\n"
            "total = store.scalar(f\"SELECT count() FROM {store.table('events')}\")\n"
            "assert kpis['total'] == total == 500\n"
            "assert funnel['users'].iloc[0] >= funnel['users'].iloc[-1]\n"
            "assert len(items) == 3\n"
            "assert retention['retention'].between(0, 1).all()",
        ],
    ),
}


@pytest.mark.parametrize("name", sorted(CHECKS))
def test_notebook_passes_nbval_lax_with_asserts(name: str, own_settings: Settings, tmp_path: Path) -> None:
    params, checks = CHECKS[name]
    if name == "report":
        assert load_events(own_settings, 500) == 500
    copy = tmp_path / f"{name}.ipynb"
    papermill.execute_notebook(
        str(notebook_path(name)), str(copy), parameters=params, prepare_only=True, progress_bar=False
    )
    nb = nbformat.read(copy, as_version=4)
    nb.cells.extend(new_code_cell(src) for src in checks)
    nbformat.write(nb, copy)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "--nbval-lax",
            "-p",
            "no:cacheprovider",
            "-q",
            "--nbval-cell-timeout=300",
            str(copy),
        ],
        env=env_for(own_settings),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-5000:]
    n_code = sum(c.cell_type == "code" for c in nb.cells)
    assert f"{n_code} passed" in proc.stdout
