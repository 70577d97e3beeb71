"""Time to first KPIs of the Voila dashboard in headless Chromium, and the memory of the dashboard process.

Usage:  .venv/bin/python bench/dashboard_render.py [--repeats 5] [--events 20000]

dashboard = open the dashboard (embedded store holding --events events, read-only) in a new tab: time until the KPI
            numbers are shown (first KPIs: the number on the page, visible) and until all eight plotly charts are
            too (all charts); close the tab and wait for its kernel to exit (it holds the chdb lock) before the next
            run;
raw       = the baseline measured in the same run: Voila rendering a one-cell notebook that prints a word, same
            server flags, same browser, until the word is on the page.
served    = the same dashboard while `clickstream serve --no-sink` owns the store (notebooks.OwnerProcess): each
            kernel is a client over the owner's Unix socket and never loads chdb.
Medians of --repeats runs; the ratio is against the raw baseline. Memory: resident set size (RSS) of the Voila
server and of the dashboard kernel while a tab is open, then the same with the live pipeline (--rate events/s
generated -> Kafka -> sink inside the kernel) after it ran for 20 s.

Served figures, in the same run:
* RPC overhead: the dashboard's live refresh set (queries.live_panels: 7 queries; over the socket one call, the
  owner's batch action) in-process on one of the owner's engine clients vs over the socket from a client process,
  on the same data and the same engine, alternating in --rounds rounds of --refreshes each (this script is the
  owner here, service.StoreService, with its sharing of identical requests off, so every request runs).
* Memory per extra viewer: --viewers pages open at once on the served dashboard; RSS and USS (memory unique to the
  process) of each kernel; then the pages close without their unload handlers (no shutdown beacon, as for a killed
  browser) and the time until the culler (PageCullingKernelManager, default settings) has ended every kernel.
A local Kafka broker on free ports in a temporary directory is started and stopped by this script.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nbformat
import psutil
from nbformat.v4 import new_code_cell, new_notebook
from playwright.sync_api import sync_playwright

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.rpc_overhead import alternate  # noqa: E402
from clickstream_lib.notebooks import KernelCulling, OwnerProcess, VoilaServer, settings_env  # noqa: E402
from clickstream_lib.service import StoreService  # noqa: E402
from clickstream_lib.settings import Settings  # noqa: E402
from clickstream_lib.stack import (  # noqa: E402
    KafkaStack,
    clean_env,
    free_port,
)
from clickstream_lib.stack.throwaway import CHROMIUM_ARGS, LOAD_EVENTS  # noqa: E402


def rss_mb(pids: list[int]) -> list[float]:
    out = []
    for pid in pids:
        try:
            out.append(psutil.Process(pid).memory_info().rss / 2**20)
        except psutil.NoSuchProcess:
            out.append(0.0)
    return out


def wait_gone(pids: list[int], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not any(psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE for p in pids):
            return
        time.sleep(0.1)
    raise RuntimeError(f"kernels {pids} did not exit after their tab closed")


KPIS = '.cs-dashboard [data-kpi="total"]'
CHARTS = ".cs-dashboard .jp-RenderedPlotly"


def render(context, server: VoilaServer, selectors: list[tuple[str, int]]) -> tuple[list[float], list[float]]:
    """Seconds from opening a page until each ``(selector, count)`` shows its ``count``-th element, in order; and
    the RSS of the Voila server and the page's kernels once the last one did."""
    page = context.new_page()
    t0 = time.perf_counter()
    page.goto(server.url, wait_until="domcontentloaded", timeout=300_000)
    elapsed = []
    for selector, count in selectors:
        page.locator(selector).nth(count - 1).wait_for(timeout=300_000)
        elapsed.append(time.perf_counter() - t0)
    kernels = server.kernel_pids()
    mem = rss_mb([server.proc.pid, *kernels]) if server.proc else []
    page.close(run_before_unload=True)  # fires Voila's shutdown beacon, as closing a tab does
    wait_gone(kernels)
    return elapsed, mem


def uss_mb(pids: list[int]) -> list[float]:
    out = []
    for pid in pids:
        try:
            out.append(psutil.Process(pid).memory_full_info().uss / 2**20)
        except psutil.NoSuchProcess:
            out.append(0.0)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--events", type=int, default=20_000)
    ap.add_argument("--rate", type=float, default=1000.0)
    ap.add_argument("--rounds", type=int, default=5, help="alternating rounds of the RPC overhead figure")
    ap.add_argument("--refreshes", type=int, default=10, help="live refreshes per round")
    ap.add_argument("--viewers", type=int, default=4, help="pages open at once on the served dashboard")
    args = ap.parse_args()
    chromium = shutil.which("chromium")
    if not chromium:
        print("chromium is not installed (apt-get install -y chromium)", file=sys.stderr)
        return 2
    tmp = Path(tempfile.mkdtemp(prefix="bench-dashboard-"))
    port, cport = free_port(), free_port()
    settings = Settings.from_env(
        clean_env(),
        kafka_broker_url=f"127.0.0.1:{port}",
        kafka_controller_port=cport,
        data_dir=tmp / "data",
        kafka_topic="bench_render",
        kafka_partitions=3,
    )
    stack = KafkaStack(settings.replace(data_dir=tmp / "kafka"))
    stack.up(timeout_s=120)
    try:
        proc = subprocess.run(
            [sys.executable, "-c", LOAD_EVENTS.format(n=args.events, seed=1, rate=20_000.0, profile="default")],
            env=settings_env(settings, clean_env()),
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode != 0:
            print(proc.stderr[-3000:], file=sys.stderr)
            return 1
        stored = json.loads(proc.stdout.strip().splitlines()[-1])["count"]
        raw_nb = tmp / "raw.ipynb"
        nbformat.write(
            new_notebook(
                cells=[new_code_cell("print('rendered-baseline')")],
                metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}},
            ),
            raw_nb,
        )
        with sync_playwright() as pw:
            context = pw.chromium.launch_persistent_context(
                str(tmp / "profile"),
                executable_path=chromium,
                headless=True,
                args=CHROMIUM_ARGS,
                viewport={"width": 1400, "height": 1800},
            )
            try:
                raw_t: list[float] = []
                with VoilaServer(settings, raw_nb, port=0, log_file=tmp / "raw.log") as server:
                    for _ in range(args.repeats):
                        raw_t.append(render(context, server, [("text=rendered-baseline", 1)])[0][0])
                dash_t: list[list[float]] = []
                mems: list[list[float]] = []
                with VoilaServer(settings, "dashboard", port=0, log_file=tmp / "dash.log") as server:
                    for _ in range(args.repeats):
                        t, mem = render(context, server, [(KPIS, 1), (CHARTS, 8)])
                        dash_t.append(t)
                        mems.append(mem)
                service = StoreService(settings, sink=False, share_s=0)
                service.start()
                try:
                    inproc_t, served_rpc_t = alternate(service, args.rounds, args.refreshes)
                finally:
                    service.stop()
                owner = OwnerProcess(settings, produce=False, sink=False, log_file=tmp / "serve.log")
                owner.start()
                try:
                    served_t: list[list[float]] = []
                    served_mems: list[list[float]] = []
                    with VoilaServer(settings, "dashboard", port=0, log_file=tmp / "served.log") as server:
                        for _ in range(args.repeats):
                            t, mem = render(context, server, [(KPIS, 1), (CHARTS, 8)])
                            served_t.append(t)
                            served_mems.append(mem)
                        pages = [context.new_page() for _ in range(args.viewers)]
                        for page in pages:
                            page.goto(server.url, wait_until="domcontentloaded", timeout=300_000)
                        for page in pages:
                            page.locator(".cs-dashboard .jp-RenderedPlotly").nth(7).wait_for(timeout=180_000)
                        viewer_kernels = server.kernel_pids()
                        viewer_rss, viewer_uss = rss_mb(viewer_kernels), uss_mb(viewer_kernels)
                        # No beacon, as for a killed browser: only the server-side culler ends these kernels.
                        closed = time.perf_counter()
                        for page in pages:
                            page.close(run_before_unload=False)
                        culling = server.culling or KernelCulling()
                        wait_gone(viewer_kernels, timeout=culling.page_timeout_s + culling.interval_s + 60)
                        culled_s = time.perf_counter() - closed
                finally:
                    owner.stop()
                live = settings.replace(kafka_topic="bench_render_live", clickhouse_database="live")
                params = {"live_pipeline": True, "rate": args.rate, "refresh_s": 5.0}
                with VoilaServer(live, "dashboard", port=0, params=params, log_file=tmp / "live.log") as server:
                    page = context.new_page()
                    page.goto(server.url, wait_until="domcontentloaded", timeout=300_000)
                    page.locator(".cs-dashboard .jp-RenderedPlotly").nth(7).wait_for(timeout=300_000)
                    time.sleep(20)
                    live_mem = rss_mb([server.proc.pid, *server.kernel_pids()]) if server.proc else []
                    live_total = page.locator('[data-kpi="total"]').get_attribute("data-value")
                    page.close()
            finally:
                context.close()
    finally:
        stack.down()
        shutil.rmtree(tmp, ignore_errors=True)

    raw_med = statistics.median(raw_t)
    server_mb = statistics.median(m[0] for m in mems)
    kernel_mb = statistics.median(sum(m[1:]) for m in mems)
    print(f"events in the store: {stored}; repeats: {args.repeats}; load average {os.getloadavg()[0]:.1f}")
    print(f"raw voila notebook   first render median {raw_med:6.2f} s  {[round(x, 2) for x in raw_t]}")
    for label, runs in (("dashboard, in-process", dash_t), ("dashboard, served", served_t)):
        for i, what in enumerate(("first KPIs", "all 8 charts")):
            med = statistics.median(r[i] for r in runs)
            print(
                f"{label + ', ' + what:36} median {med:6.2f} s ({med / raw_med:.2f}x raw)  "
                f"{[round(r[i], 2) for r in runs]}"
            )
    print(f"memory (read-only)   voila server {server_mb:.0f} MB RSS, dashboard kernel {kernel_mb:.0f} MB RSS")
    print(
        f"memory (live, {args.rate:.0f} ev/s, 20 s, total {live_total}): voila server {live_mem[0]:.0f} MB, "
        f"kernel {sum(live_mem[1:]):.0f} MB RSS"
    )
    in_med, rpc_med = statistics.median(inproc_t), statistics.median(served_rpc_t)
    print(
        f"served kernel        {statistics.median(sum(m[1:]) for m in served_mems):.0f} MB RSS (one tab open; "
        f"in-process dashboard kernel {kernel_mb:.0f} MB)"
    )
    print(
        f"live refresh set     in-process median {in_med * 1000:.1f} ms, over the socket {rpc_med * 1000:.1f} ms "
        f"({args.rounds} rounds x {args.refreshes}); overhead {100 * (rpc_med / in_med - 1):+.1f}%"
    )
    print(
        f"{len(viewer_kernels)} viewers at once   kernel RSS {[round(x) for x in viewer_rss]} MB, "
        f"USS {[round(x) for x in viewer_uss]} MB; median USS per extra viewer {statistics.median(viewer_uss):.0f} MB"
    )
    defaults = KernelCulling()
    print(
        f"pages closed without beacon: every kernel culled after {culled_s:.1f} s "
        f"(page_timeout {defaults.page_timeout_s:g} s, checks every {defaults.interval_s} s)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
