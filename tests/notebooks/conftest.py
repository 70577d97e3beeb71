"""Fixtures for notebook tests: headless Chromium (Debian's package, driven by Playwright), Voila servers, and
subprocess helpers that fill or read an embedded store in a data directory this pytest process never opens.

chdb allows one process per data directory: every kernel (Voila, papermill, nbval) gets its own
CLICKSTREAM_DATA_DIR, and results are read back through a separate short-lived process once the kernel is gone.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import BrowserContext

from clickstream_lib.settings import Settings
from clickstream_lib.stack.throwaway import CHROMIUM_ARGS, LOAD_EVENTS
from tests.conftest import base_env

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts"


def env_for(settings: Settings, **extra: str) -> dict[str, str]:
    """A subprocess environment that rebuilds ``settings`` (and nothing inherited)."""
    from clickstream_lib.notebooks import settings_env

    env = settings_env(settings, base_env())
    env.update(extra)
    return env


def run_python(settings: Settings, code: str, timeout: float = 180) -> Any:
    """Run ``code`` in a fresh interpreter with ``settings`` in its environment; it prints one JSON value last."""
    proc = subprocess.run(
        [sys.executable, "-c", code],
        env=env_for(settings),
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        check=False,
    )
    assert proc.returncode == 0, f"subprocess failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    return json.loads(proc.stdout.strip().splitlines()[-1])




def load_events(settings: Settings, n: int, seed: int = 7, rate: float = 5000.0, profile: str = "default") -> int:
    """Produce ``n`` events (of the generator ``profile``) to Kafka and sink them into the store of ``settings``
    (in a subprocess).

    Returns the number of stored events; fails with the producer's and sink's counts if they disagree.
    """
    got = run_python(settings, LOAD_EVENTS.format(n=n, seed=seed, rate=rate, profile=profile), timeout=700)
    assert got["acked"] == n and got["count"] == n, f"loading {n} events: {got}"
    return int(got["count"])


QUERY_JSON = """
import json
from clickstream_lib import queries
from clickstream_lib.settings import Settings
from clickstream_lib.store import connect
from clickstream_lib.panels.kpis import report_kpis
store = connect(Settings.from_env())
spec = json.loads({spec!r})
out = {{}}
for key, (name, kwargs) in spec.items():
    df = queries.run(store, name, **kwargs)
    out[key] = report_kpis(df) if name == "kpis" else json.loads(df.to_json(orient="records", date_format="iso",
                                                                             default_handler=str))
out["_count"] = int(store.scalar(f"SELECT count() FROM {{store.table('events')}}"))
print(json.dumps(out))
"""


def query_json(settings: Settings, spec: dict[str, tuple[str, dict[str, Any]]]) -> dict[str, Any]:
    """Run named queries against the store of ``settings`` in a subprocess; returns JSON-able results."""
    return dict(run_python(settings, QUERY_JSON.format(spec=json.dumps(spec))))


@pytest.fixture
def own_settings(settings: Settings, tmp_path: Path) -> Settings:
    """This test's topic/group/database with a data directory of its own, for kernels and subprocesses."""
    return settings.replace(data_dir=tmp_path / "kernel-data")


@pytest.fixture(scope="session")
def chromium_path() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if not path:
        pytest.fail(
            "Debian's chromium is not installed: apt-get install -y chromium (scripts/setup.sh with "
            "WITH_BROWSER=1 does it); never `playwright install`"
        )
    return path


@pytest.fixture(scope="session")
def browser(chromium_path: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrowserContext]:
    """A persistent headless Chromium context (one per session; each test opens its own pages)."""
    from playwright.sync_api import sync_playwright

    user_dir = tmp_path_factory.mktemp("chromium-profile")
    with sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            str(user_dir),
            executable_path=chromium_path,
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": 1400, "height": 1800},
        )
        try:
            yield context
        finally:
            context.close()


def page_status(page: Any) -> str:
    """The dashboard's status lines (updated at, live pipeline figures), for failure messages."""
    try:
        return " | ".join(page.locator("body").inner_text(timeout=5_000).splitlines()[:8])
    except Exception as exc:
        return f"(page text unavailable: {exc})"


def kpi(page: Any, key: str) -> int:
    """The raw value of ``<span data-kpi=key data-value=...>`` on the page."""
    raw = page.locator(f'[data-kpi="{key}"]').first.get_attribute("data-value")
    return int(float(raw))


def screenshot(page: Any, name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path
