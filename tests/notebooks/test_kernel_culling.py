"""Voila's kernels never pile up: real Voila serving the dashboard, headless Chromium, short culling timeouts.

The dashboard kernel opens the embedded store itself and holds its lock while alive, so a kernel left behind by a
probe or a killed browser locks every later viewer out: these tests check that such kernels end, and that a page
that stays open keeps its kernel. The timeouts are the knobs users have (KernelCulling), made short.
No Kafka broker: the store is seeded directly and the dashboard runs without its live pipeline.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psutil
import pytest
from playwright.sync_api import BrowserContext

from clickstream_lib.notebooks import KernelCulling, VoilaServer
from clickstream_lib.settings import Settings
from tests.conftest import base_env

from clickstream_lib.stack.throwaway import CHROMIUM_ARGS
from tests.helpers import wait_until

from .conftest import kpi, page_status, run_python, screenshot

pytestmark = [pytest.mark.notebooks]

PAGE_TIMEOUT_S = 6.0
CULLING = KernelCulling(page_timeout_s=PAGE_TIMEOUT_S, interval_s=1)
# A kernel without a page ends within the page timeout plus one check; a little slack for a loaded machine.
CULL_WITHIN_S = PAGE_TIMEOUT_S + CULLING.interval_s + 10

SEED = """
import json
from clickstream_lib.settings import Settings
from clickstream_lib.store import connect
from tests.integration.test_queries import insert_events, make_events
store = connect(Settings.from_env())
n = insert_events(store, make_events(n_sessions=150, seed=5))
store.close()
print(json.dumps(n))
"""


@pytest.fixture
def seeded(tmp_path: Path) -> tuple[Settings, int]:
    """Settings of an embedded store of this test's own (no broker needed) holding a known number of events."""
    settings = Settings.from_env(base_env(), data_dir=tmp_path / "data")
    return settings, int(run_python(settings, SEED))


def kernels(server: VoilaServer) -> dict[str, dict[str, Any]]:
    """Voila's kernels by id with their model (``connections`` = open pages), read from its kernel API."""
    out = {}
    for pid in server.kernel_pids():
        try:
            cmdline = " ".join(psutil.Process(pid).cmdline())
        except psutil.Error:
            continue
        found = re.search(r"kernel-([0-9a-f-]{36})\.json", cmdline)
        if not found:
            continue
        try:
            with urllib.request.urlopen(f"{server.url}api/kernels/{found[1]}", timeout=5) as response:
                out[found[1]] = json.load(response) | {"pid": pid}
        except OSError:
            continue  # culled between the two looks
    return out


def get(url: str) -> int:
    """A GET without a browser, as ``curl`` or a probe does: read the whole page, run nothing of it."""
    with urllib.request.urlopen(url, timeout=180) as response:
        response.read()
        return int(response.status)


def culled_in_log(server: VoilaServer) -> int:
    """How many kernels the culler shut down (either rule), from Voila's log."""
    return len(re.findall(r"Culling (kernel [0-9a-f-]{36}|'\w+' kernel)", server.log_file.read_text(errors="replace")))


def test_twenty_gets_without_a_browser_leave_no_kernel_behind(seeded: tuple[Settings, int], tmp_path: Path) -> None:
    settings, _ = seeded
    with VoilaServer(settings, "dashboard", port=0, culling=CULLING, log_file=tmp_path / "voila.log") as server:
        peak = 0

        def probe(_: int) -> int:
            nonlocal peak
            status = get(server.url)
            peak = max(peak, len(server.kernel_pids()))
            return status

        # Four at a time: twenty dashboard kernels at once would take ~9 GB and every core of a shared machine.
        with ThreadPoolExecutor(4) as pool:
            assert list(pool.map(probe, range(20))) == [200] * 20
        log = server.log_file.read_text(errors="replace")
        assert log.count("Kernel started") == 20
        # No page ever connects: each kernel ends page_timeout after its render, so they never pile up (how many
        # overlap depends on how fast this machine renders and shuts kernels down; without culling all 20 would).
        assert peak < 20, f"{peak} kernels alive at once for 4 concurrent GETs"
        last_get = time.monotonic()
        wait_until(
            lambda: not server.kernel_pids(),
            CULL_WITHIN_S,
            what="every probe's kernel to be culled",
            state=lambda: kernels(server),
        )
        print(f"20 GETs: peak {peak} kernels alive, none {time.monotonic() - last_get:.1f} s after the last GET")
        assert culled_in_log(server) == 20
        # The health URL (what docker-compose.yml probes) starts no kernel.
        assert all(server.healthy() for _ in range(5))
        time.sleep(1)
        assert not server.kernel_pids()
        assert server.log_file.read_text(errors="replace").count("Kernel started") == 20


def test_a_killed_browser_is_culled_and_the_next_page_shows_kpis(
    browser: BrowserContext, chromium_path: str, seeded: tuple[Settings, int], tmp_path: Path
) -> None:
    settings, n_events = seeded
    with VoilaServer(settings, "dashboard", port=0, culling=CULLING, log_file=tmp_path / "voila.log") as server:
        # A browser of its own, so that it can be killed: no unload handler, no shutdown beacon runs.
        profile = tmp_path / "killed-browser"
        chromium = subprocess.Popen(
            [chromium_path, *CHROMIUM_ARGS, f"--user-data-dir={profile}", server.url],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            # The page is up once its widgets connected to the kernel (one websocket); it owns the store's lock.
            opened = wait_until(
                lambda: [k for k in kernels(server).values() if k["connections"] == 1],
                120,
                what="the page to connect to its kernel",
                state=lambda: kernels(server),
            )
            old = opened[0]
        finally:
            os.killpg(chromium.pid, signal.SIGKILL)  # the whole browser: no unload handler runs
            killed_at = time.monotonic()
            chromium.wait(30)
        assert chromium.returncode == -signal.SIGKILL

        wait_until(
            lambda: old["id"] not in kernels(server),
            CULL_WITHIN_S,
            what="the killed page's kernel to be culled",
            state=lambda: kernels(server),
        )
        culled_after = time.monotonic() - killed_at
        assert culled_in_log(server) == 1

        page = browser.new_page()
        try:
            page.goto(server.url, wait_until="domcontentloaded", timeout=60_000)
            page.locator('[data-kpi="total"]').wait_for(timeout=40_000)
            shown_after = time.monotonic() - killed_at
            assert kpi(page, "total") == n_events, page_status(page)
            assert 'data-message="store-locked"' not in page.content()
            screenshot(page, "dashboard-after-killed-browser")
        finally:
            page.close(run_before_unload=True)
        print(f"killed browser: kernel culled after {culled_after:.1f} s, new page's KPIs after {shown_after:.1f} s")
        assert shown_after <= 40, f"KPIs on a new page {shown_after:.1f} s after the browser was killed"


def test_an_open_page_keeps_its_kernel_past_the_page_timeout(
    browser: BrowserContext, seeded: tuple[Settings, int], tmp_path: Path
) -> None:
    settings, n_events = seeded
    params = {"refresh_s": 1.0}
    culling = KernelCulling(page_timeout_s=PAGE_TIMEOUT_S, interval_s=1, idle_timeout_s=int(PAGE_TIMEOUT_S))
    with VoilaServer(
        settings, "dashboard", port=0, params=params, culling=culling, log_file=tmp_path / "voila.log"
    ) as server:
        page = browser.new_page()
        try:
            page.goto(server.url, wait_until="domcontentloaded", timeout=90_000)
            page.locator('[data-kpi="total"]').wait_for(timeout=120_000)
            (kernel,) = kernels(server).values()
            first = int(page.locator('[data-status="refreshes"]').inner_text())
            # Three page timeouts (and idle timeouts, open pages included) while the page refreshes every second.
            time.sleep(3 * (PAGE_TIMEOUT_S + culling.interval_s))
            assert list(kernels(server)) == [kernel["id"]], "the open page's kernel was replaced or culled"
            assert kernels(server)[kernel["id"]]["connections"] == 1
            later = int(page.locator('[data-status="refreshes"]').inner_text())
            assert later >= first + 10, f"{later - first} refreshes in {3 * (PAGE_TIMEOUT_S + 1):.0f} s"
            assert kpi(page, "total") == n_events
            assert culled_in_log(server) == 0
        finally:
            page.close(run_before_unload=True)
        # Closing the tab (beacon) ends it at once; the culler would within the page timeout anyway.
        wait_until(lambda: not server.kernel_pids(), CULL_WITHIN_S, what="the closed page's kernel to end")
