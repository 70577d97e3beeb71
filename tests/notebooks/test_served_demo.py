"""`clickstream demo` with its store owner: many pages at once, one live pipeline, other commands meanwhile."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path
import functools
from typing import Any

import nbformat
import psutil
import pytest

from clickstream_lib.notebooks import recorded
from clickstream_lib.settings import Settings
from clickstream_lib.store import find_owner

from tests.helpers import wait_until

from .conftest import ROOT, env_for, kpi, page_status, screenshot

pytestmark = [pytest.mark.integration, pytest.mark.notebooks]

PAGES = 5


def _maps_chdb(pid: int) -> bool:
    """Whether process ``pid`` has chdb's engine library mapped (i.e. imported chdb)."""
    try:
        return any("_chdb" in m.path for m in psutil.Process(pid).memory_maps())
    except psutil.Error:
        return False


def _cli_total(settings: Settings) -> int:
    proc = subprocess.run(
        [sys.executable, "-m", "clickstream_lib", "query", "kpis", "--source", "raw", "--format", "json"],
        env=env_for(settings),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return int(json.loads(proc.stdout)[0]["total_interactions"])


def _stat(page: Any, key: str) -> str:
    return str(page.locator(f'[data-stat="{key}"]').first.inner_text(timeout=5_000))


def _sink_stopped(page: Any) -> bool:
    return _stat(page, "sink") == "stopped"


def test_five_pages_share_the_owners_live_pipeline(browser: Any, own_settings: Settings, tmp_path: Path) -> None:
    log = open(tmp_path / "demo.log", "w")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [sys.executable, "-m", "clickstream_lib", "demo", "--port", "0", "--rate", "300", "--refresh", "4"],
        env=env_for(own_settings),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=log,
        text=True,
    )
    pages: list[Any] = []
    children: list[int] = []
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # blocks until the dashboard listens
        assert line.startswith("dashboard: http://127.0.0.1:"), (tmp_path / "demo.log").read_text()[-3000:]
        url = line.split(" ", 1)[1].strip()
        owner = find_owner(own_settings)
        assert owner is not None, "the demo runs the store's owner"

        t0 = time.monotonic()
        pages = [browser.new_page() for _ in range(PAGES)]
        for page in pages:
            page.goto(url, wait_until="domcontentloaded", timeout=120_000)
        for page in pages:
            page.locator('[data-kpi="total"]').wait_for(timeout=180_000)
        status = lambda: " || ".join(page_status(p) for p in pages)  # noqa: E731
        first = [wait_until(functools.partial(kpi, p, "total"), 180, what="events on every page", state=status) for p in pages]
        kpis_s = time.monotonic() - t0
        wait_until(
            lambda: all(kpi(p, "total") > n for p, n in zip(pages, first, strict=True)),
            120,
            what="the totals to grow on all five pages",
            state=status,
        )
        print(f"five pages: KPIs on all after {kpis_s:.1f} s, grown on all after {time.monotonic() - t0:.1f} s")
        screenshot(pages[-1], "demo-served-page5")
        # Every page is a client: the owner alone has chdb loaded, no Voila kernel does.
        children = [c.pid for c in psutil.Process(proc.pid).children(recursive=True)]
        kernels = [pid for pid in children if "ipykernel" in " ".join(psutil.Process(pid).cmdline())]
        assert len(kernels) >= PAGES, kernels
        assert not any(_maps_chdb(pid) for pid in kernels)
        assert _maps_chdb(owner.pid)

        # Other processes query the store while the demo runs.
        assert _cli_total(own_settings) > 0

        # Pausing on one page pauses the owner's pipeline: every page shows it stopped. (The click is dispatched as a
        # DOM event: Playwright's click waits for animation frames, which a loaded machine's background tabs starve.)
        pages[0].bring_to_front()
        pages[0].locator(".cs-btn-pause").dispatch_event("click")
        for page in pages:
            wait_until(functools.partial(_sink_stopped, page), 60, what="the pipeline paused on every page")
        stable = _cli_total(own_settings)
        wait_until(
            lambda: all(kpi(p, "total") == stable for p in pages),
            30,
            what=f"every page to show the {stable} stored events",
            state=status,
        )
        assert _cli_total(own_settings) == stable
        # The papermill report, from another process too, counts the same.
        report = subprocess.run(
            [sys.executable, "-m", "clickstream_lib", "report", "--out", str(tmp_path / "report")],
            env=env_for(own_settings),
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        assert report.returncode == 0, report.stderr[-3000:]
        assert recorded(nbformat.read(tmp_path / "report" / "report.ipynb", as_version=4))["kpis"]["total"] == stable

        # Closing pages stops nothing but their kernels: resuming from a remaining page makes the totals grow again.
        for page in pages[1:]:
            page.close(run_before_unload=True)
        pages = pages[:1]
        pages[0].bring_to_front()
        assert pages[0].locator(".cs-btn-pause").inner_text().strip().startswith("Resume")
        pages[0].locator(".cs-btn-pause").dispatch_event("click")
        wait_until(lambda: kpi(pages[0], "total") > stable, 90, what="the totals to grow after resuming")

        proc.send_signal(signal.SIGINT)
        assert proc.wait(90) == 130
        wait_until(
            lambda: (
                not any(
                    psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE
                    for p in [*children, owner.pid]
                )
            ),
            30,
            what="voila, its kernels and the owner to exit",
        )
        assert find_owner(own_settings) is None
    finally:
        for page in pages:
            page.close()
        if proc.poll() is None:
            for child in psutil.Process(proc.pid).children(recursive=True):
                child.kill()
            proc.kill()
            proc.wait(10)
        log.close()
