"""The built wheel is complete: installed without -e, its commands find the notebooks they run."""

from __future__ import annotations

import shutil
import site
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import base_env

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with the project's wheel installed (no -e); its dependencies come from this environment."""
    tmp = tmp_path_factory.mktemp("wheel")
    # Built from a copy, so the build leaves nothing in the checkout.
    source = tmp / "source"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(".git", ".venv", "*cache*", "build", "*.egg-info"))
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp / "dist"), str(source)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert build.returncode == 0, build.stderr
    (wheel,) = (tmp / "dist").glob("clickstream_workbench-*.whl")
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    (purelib,) = (venv / "lib").glob("python3*/site-packages")
    # Dependencies from this environment's site-packages; a path listed in a .pth is not scanned for .pth files,
    # so this environment's editable install of the project does not leak in.
    (purelib / "deps.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    install = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "--no-deps", "-q", str(wheel)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert install.returncode == 0, install.stderr
    return venv


def test_wheel_ships_the_notebooks_and_report_runs(installed: Path, tmp_path: Path) -> None:
    python = str(installed / "bin" / "python")
    where = subprocess.run(
        [python, "-c", "import clickstream_lib, sys; print(clickstream_lib.__file__)"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=60,
    )
    assert where.returncode == 0, where.stderr
    assert str(installed) in where.stdout, "the project must come from the wheel, not from the source tree"
    cli = str(installed / "bin" / "clickstream")
    # The dependencies' data files (nbconvert's templates, kernel specs) are under this environment's prefix.
    env = base_env(
        CLICKSTREAM_DATA_DIR=str(tmp_path / "data"),
        PATH=f"{installed / 'bin'}:/usr/bin:/bin",
        JUPYTER_PATH=str(Path(sys.prefix) / "share" / "jupyter"),
    )
    for command in (["dashboard", "--help"], ["demo", "--help"]):
        r = subprocess.run([cli, *command], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=60)
        assert r.returncode == 0, r.stderr
    r = subprocess.run(
        [cli, "report", "--out", str(tmp_path / "out")],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=600,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert (tmp_path / "out" / "report.html").stat().st_size > 10_000
    notebook = subprocess.run(
        [python, "-c", "from clickstream_lib.notebooks import notebook_path; print(notebook_path('report'))"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=60,
    )
    assert notebook.stdout.strip().startswith(str(installed)), notebook.stdout + notebook.stderr
