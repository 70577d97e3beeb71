"""`clickstream demo`, the main job: a live dashboard in a browser; Ctrl-C stops everything it started."""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

import psutil
import pytest
from playwright.sync_api import BrowserContext

from clickstream_lib.settings import Settings

from tests.helpers import wait_until

from .conftest import ROOT, env_for, kpi, page_status, screenshot

pytestmark = [pytest.mark.integration, pytest.mark.notebooks]


def test_demo_serves_a_live_dashboard_and_ctrl_c_stops_it(browser: BrowserContext, own_settings: Settings, tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [str(ROOT / ".venv" / "bin" / "clickstream"), "demo", "--port", "0", "--rate", "300", "--refresh", "2"],
        env=env_for(own_settings),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # blocks until the dashboard listens
        assert line.startswith("dashboard: http://127.0.0.1:"), line + (proc.stderr.read() if proc.stderr and proc.poll() else "")
        url = line.split(" ", 1)[1].strip()
        page = browser.new_page()
        page.goto(url, wait_until="domcontentloaded", timeout=120_000)
        page.locator('[data-kpi="total"]').wait_for(timeout=120_000)
        # Generous: on a loaded 2-core machine the kernel's producer and sink take a while to join; the page's
        # pipeline status is in the failure message.
        status = lambda: page_status(page)  # noqa: E731
        first = wait_until(lambda: kpi(page, "total"), 180, what="events from the demo pipeline", state=status)
        wait_until(lambda: kpi(page, "total") > first, 90, what="the demo's totals to grow", state=status)
        screenshot(page, "demo")
        children = [c.pid for c in psutil.Process(proc.pid).children(recursive=True)]
        assert children, "voila and its kernel run under the demo"
        page.close()
        proc.send_signal(signal.SIGINT)
        assert proc.wait(60) == 130
        assert "interrupted" in (proc.stderr.read() if proc.stderr else "")
        wait_until(
            lambda: (
                not any(psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE for p in children)
            ),
            30,
            what="voila and the kernel to exit",
        )
    finally:
        # Whatever happened, leave no Voila or kernel behind (they would hold CPU and the chdb lock).
        if proc.poll() is None:
            for child in psutil.Process(proc.pid).children(recursive=True):
                child.kill()
            proc.kill()
            proc.wait(10)
    # The broker is the session's (already running), so the demo left it alone.
    from clickstream_lib.stack import KafkaStack

    assert KafkaStack(own_settings).status().running


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_a_killed_dashboard_command_leaves_no_voila_behind(own_settings: Settings, sig: signal.Signals) -> None:
    # Voila runs in its own session; SIGTERM must stop it through the CLI's cleanup, and even SIGKILL of the CLI
    # must take it down (it gets SIGTERM when its parent dies), or it would keep the chdb lock and its CPU.
    proc = subprocess.Popen(
        [str(ROOT / ".venv" / "bin" / "clickstream"), "dashboard", "--port", "0"],
        env=env_for(own_settings),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    children: list[int] = []
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().startswith("dashboard: http://127.0.0.1:")
        children = [c.pid for c in psutil.Process(proc.pid).children(recursive=True)]
        assert children
        proc.send_signal(sig)
        proc.wait(30)
        wait_until(
            lambda: (
                not any(psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE for p in children)
            ),
            30,
            what=f"voila to exit after {sig.name} of its parent",
        )
    finally:
        for pid in children:
            if psutil.pid_exists(pid):
                psutil.Process(pid).kill()
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
