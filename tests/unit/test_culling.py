"""The page rule of PageCullingKernelManager on fake kernels and a fake clock (Voila itself: tests/notebooks)."""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from types import SimpleNamespace
from typing import Any

import pytest
from jupyter_server._tz import utcnow

from clickstream_lib import culling
from clickstream_lib.culling import PageCullingKernelManager
from clickstream_lib.notebooks import CULLING_MANAGER, KernelCulling


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    c = Clock()
    monkeypatch.setattr(culling, "_now", c)  # the culler's clock only: asyncio keeps the real one
    return c


def manager(shutdown_s: float = 0.0, **config: Any) -> tuple[PageCullingKernelManager, list[str]]:
    km = PageCullingKernelManager(**config)
    shut: list[str] = []

    async def shutdown_kernel(kernel_id: str, *args: Any, **kwargs: Any) -> None:
        await asyncio.sleep(shutdown_s)
        shut.append(kernel_id)
        km._kernels.pop(kernel_id, None)
        km._kernel_connections.pop(kernel_id, None)

    km.shutdown_kernel = shutdown_kernel  # type: ignore[method-assign]
    return km, shut


def add_kernel(km: PageCullingKernelManager, kernel_id: str, state: str = "idle") -> SimpleNamespace:
    """A kernel as jupyter_server's start_kernel leaves it (without a process), started now."""
    kernel = SimpleNamespace(
        execution_state=state, last_activity=utcnow(), kernel_spec=SimpleNamespace(metadata={}), kernel_name="python3"
    )
    km._kernels[kernel_id] = kernel
    km._kernel_connections[kernel_id] = 0
    km._started[kernel_id] = km._page_seen[kernel_id] = culling._now()
    return kernel


def cull(km: PageCullingKernelManager) -> None:
    # A thread of its own: a session that also drives Playwright's sync API has a loop running in this one.
    with ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, km.cull_kernels()).result()


def test_a_kernel_without_a_page_is_culled_after_the_page_timeout_whatever_its_activity(clock: Clock) -> None:
    km, shut = manager(page_timeout=30)
    kernel = add_kernel(km, "curl")
    clock.now += 29
    kernel.last_activity = utcnow()  # a dashboard refreshing itself is never idle
    cull(km)
    assert shut == []
    clock.now += 2
    cull(km)
    assert shut == ["curl"]


def test_a_kernel_with_an_open_page_stays_however_long(clock: Clock) -> None:
    km, shut = manager(page_timeout=30)
    add_kernel(km, "page")
    km.notify_connect("page")
    for _ in range(20):
        clock.now += 60
        km._kernels["page"].last_activity = utcnow()
        cull(km)
    assert shut == []
    # The page goes (its websocket closes): the clock starts then, not at the kernel's start.
    km.notify_disconnect("page")
    clock.now += 29
    cull(km)
    assert shut == []
    clock.now += 2
    cull(km)
    assert shut == ["page"]


def test_a_reconnecting_page_resets_the_clock(clock: Clock) -> None:
    km, shut = manager(page_timeout=30)
    add_kernel(km, "page")
    km.notify_connect("page")
    km.notify_disconnect("page")
    clock.now += 20
    km.notify_connect("page")
    km.notify_disconnect("page")
    clock.now += 20
    cull(km)
    assert shut == []


def test_a_kernel_rendering_its_get_is_left_alone_up_to_the_render_timeout(clock: Clock) -> None:
    km, shut = manager(page_timeout=30, render_timeout=120)
    kernel = add_kernel(km, "rendering", state="busy")
    for _ in range(10):  # 100 s of executing the notebook, checked every 10 s
        clock.now += 10
        cull(km)
    assert shut == []
    kernel.execution_state = "idle"  # the render is done; no page ever connects (a probe)
    clock.now += 25
    cull(km)
    assert shut == []
    clock.now += 10
    cull(km)
    assert shut == ["rendering"]

    # Past the render timeout, a kernel that still executes and never had a page is culled too.
    add_kernel(km, "stuck", state="busy")
    for _ in range(15):
        clock.now += 10
        cull(km)
    assert shut == ["rendering", "stuck"]


def test_busy_with_a_page_once_connected_does_not_count_as_rendering(clock: Clock) -> None:
    km, shut = manager(page_timeout=30)
    kernel = add_kernel(km, "k")
    km.notify_connect("k")
    km.notify_disconnect("k")
    kernel.execution_state = "busy"  # a long callback after the page went away
    clock.now += 31
    cull(km)
    assert shut == ["k"]


def test_idle_culling_is_jupyter_servers_and_off_at_zero(clock: Clock) -> None:
    km, shut = manager(page_timeout=0, cull_idle_timeout=0)
    kernel = add_kernel(km, "k")
    kernel.last_activity = utcnow() - timedelta(days=1)
    clock.now += 10_000
    cull(km)
    assert shut == []  # neither rule on: nothing is culled (jupyter_server's check alone would cull at 0)

    km, shut = manager(page_timeout=0, cull_idle_timeout=600)
    kernel = add_kernel(km, "k")
    km.notify_connect("k")  # cull_connected defaults to True here: a forgotten open tab is culled too
    kernel.last_activity = utcnow() - timedelta(seconds=601)
    cull(km)
    assert shut == ["k"]


def test_kernels_to_cull_shut_down_concurrently(clock: Clock) -> None:
    km, shut = manager(shutdown_s=0.5, page_timeout=30)
    for i in range(6):
        add_kernel(km, f"probe{i}")
    clock.now += 31
    t0 = time.perf_counter()
    cull(km)
    assert sorted(shut) == [f"probe{i}" for i in range(6)]
    assert time.perf_counter() - t0 < 2.0  # one after another would take 3 s


def test_kernel_culling_options_match_the_managers_defaults() -> None:
    defaults = KernelCulling()
    km = PageCullingKernelManager()
    assert f"{PageCullingKernelManager.__module__}.{PageCullingKernelManager.__name__}" == CULLING_MANAGER
    assert km.page_timeout == defaults.page_timeout_s
    assert km.render_timeout == defaults.render_timeout_s
    assert km.cull_idle_timeout == defaults.idle_timeout_s
    assert km.cull_interval == defaults.interval_s
    args = KernelCulling(page_timeout_s=8, interval_s=1).voila_args()
    assert f"--VoilaConfiguration.multi_kernel_manager_class={CULLING_MANAGER}" in args
    assert "--PageCullingKernelManager.page_timeout=8" in args
    assert "--PageCullingKernelManager.cull_interval=1" in args


def test_settings_reach_the_manager_through_traitlets_config() -> None:
    from traitlets.config import Config

    config = Config()
    config.MappingKernelManager.cull_interval = 7  # jupyter_server's own section applies
    config.PageCullingKernelManager.page_timeout = 12.5
    km = PageCullingKernelManager(config=config)
    assert (km.cull_interval, km.page_timeout) == (7, 12.5)
