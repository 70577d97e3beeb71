"""Culling of Voila kernels whose page is gone: :class:`PageCullingKernelManager`.

Voila starts a kernel for every GET of a notebook and, by default, never ends one: its shutdown beacon fires only on
a clean ``beforeunload``, so a killed browser, a crashed tab, a lost network or a GET without a browser (``curl``, a
probe) leaves the kernel running. jupyter_server's idle culling (``MappingKernelManager.cull_idle_timeout``) does not
help with a dashboard: a kernel's activity is its IOPub traffic, and a dashboard that refreshes itself is never idle.

:class:`PageCullingKernelManager` adds a second rule, checked every ``cull_interval`` seconds: a kernel without an
open page — no websocket on ``/api/kernels/<id>/channels`` — for ``page_timeout`` seconds is shut down, whatever its
activity. A kernel still executing its notebook for the GET that started it (before any page connected, for at
most ``render_timeout`` seconds) is not counted as without a page: the page opens its websocket only once the
render is done. Idle culling stays as jupyter_server does it, with defaults that suit a dashboard server.

Voila loads it by class name, which is all its launchers need (:class:`~clickstream_lib.notebooks.VoilaServer`,
docker-compose.yml)::

    voila dashboard.ipynb \\
        --VoilaConfiguration.multi_kernel_manager_class=clickstream_lib.culling.PageCullingKernelManager \\
        --PageCullingKernelManager.page_timeout=30

docs/notebooks.md ("Kernels") lists the knobs. This module is imported by the Voila server process: it imports
nothing heavy.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from jupyter_core.utils import ensure_async
from jupyter_server.services.kernels.kernelmanager import AsyncMappingKernelManager
from tornado.ioloop import PeriodicCallback
from traitlets import Bool, Float, Integer


def _now() -> float:
    return time.monotonic()


class PageCullingKernelManager(AsyncMappingKernelManager):
    """A kernel manager that shuts down kernels without an open page, plus jupyter_server's idle culling.

    Configured like any traitlets class (``--PageCullingKernelManager.page_timeout=30`` on Voila's command line or
    ``{"PageCullingKernelManager": {...}}`` in a ``voila.json``); ``MappingKernelManager.*`` settings apply too.
    """

    page_timeout = Float(
        30.0,
        config=True,
        help="""Seconds a kernel may have no open page (no websocket connection) before it is shut down, whatever
        its activity. 0 turns the rule off.""",
    )
    render_timeout = Float(
        300.0,
        config=True,
        help="""Seconds a kernel that no page has connected to yet may spend executing its notebook (the render of
        the GET that started it) before the page_timeout clock runs anyway.""",
    )
    # jupyter_server's defaults (every 300 s, idle culling off) never end a kernel in a dashboard's lifetime.
    cull_interval = Integer(
        5,
        config=True,
        help="Seconds between two checks of every kernel (both rules).",
    )
    cull_idle_timeout = Integer(
        3600,
        config=True,
        help="""Seconds without kernel activity (IOPub messages) after which a kernel is shut down, with
        cull_connected: an open page nobody used for that long. 0 turns idle culling off.""",
    )
    cull_connected = Bool(
        True,
        config=True,
        help="Whether idle culling also ends kernels with an open page (a forgotten tab of a static notebook).",
    )

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        # kernel id -> monotonic time a page was last seen (or the kernel started, or was last seen rendering)
        self._page_seen: dict[str, float] = {}
        self._started: dict[str, float] = {}
        self._had_page: set[str] = set()

    async def _async_start_kernel(self, **kwargs: Any) -> str:
        kernel_id = str(await super()._async_start_kernel(**kwargs))
        now = _now()
        self._started.setdefault(kernel_id, now)
        self._page_seen.setdefault(kernel_id, now)
        return kernel_id

    start_kernel = _async_start_kernel  # type: ignore[assignment]  # as jupyter_server does

    def notify_connect(self, kernel_id: str) -> None:
        super().notify_connect(kernel_id)
        self._had_page.add(kernel_id)
        self._page_seen[kernel_id] = _now()

    def notify_disconnect(self, kernel_id: str) -> None:
        super().notify_disconnect(kernel_id)
        self._page_seen[kernel_id] = _now()

    def initialize_culler(self) -> None:
        """Start the periodic check when either rule is on (jupyter_server starts it only for idle culling)."""
        if not self._initialized_culler and self._culler_callback is None and self.page_timeout > 0:
            if self.cull_interval <= 0:
                self.cull_interval = self.cull_interval_default
            self._culler_callback = PeriodicCallback(self.cull_kernels, 1000 * self.cull_interval)
            self.log.info(
                "Culling kernels without an open page for > %s s (and idle > %s s) every %s s",
                self.page_timeout,
                self.cull_idle_timeout or "never",
                self.cull_interval,
            )
            self._culler_callback.start()
        super().initialize_culler()

    async def cull_kernels(self) -> None:
        """Check every kernel; the ones to end shut down concurrently (jupyter_server ends them one after another,
        each taking up to ``shutdown_wait_time``, so twenty probes' kernels would outlive their timeout)."""
        for gone in set(self._page_seen) - set(self._kernels):
            self._page_seen.pop(gone, None)
            self._started.pop(gone, None)
            self._had_page.discard(gone)
        kernel_ids = list(self._kernels)
        results = await asyncio.gather(*(self.cull_kernel_if_idle(k) for k in kernel_ids), return_exceptions=True)
        for kernel_id, result in zip(kernel_ids, results, strict=True):
            if isinstance(result, Exception):
                self.log.error("checking kernel %s for culling failed: %s", kernel_id, result, exc_info=result)

    async def cull_kernel_if_idle(self, kernel_id: str) -> None:
        kernel = self._kernels[kernel_id]
        if getattr(kernel, "execution_state", None) == "dead":
            await super().cull_kernel_if_idle(kernel_id)  # jupyter_server ends dead kernels first thing
            return
        if self.page_timeout > 0 and self._without_page_for(kernel_id, kernel) > self.page_timeout:
            self.log.warning(
                "Culling kernel %s (%s): no open page for %.0f s",
                kernel_id,
                getattr(kernel, "execution_state", "?"),
                self._without_page_for(kernel_id, kernel),
            )
            await ensure_async(self.shutdown_kernel(kernel_id))
            return
        if self.cull_idle_timeout > 0:
            await super().cull_kernel_if_idle(kernel_id)

    def _without_page_for(self, kernel_id: str, kernel: Any) -> float:
        """Seconds since this kernel last had an open page (0 while it has one or is still rendering for its GET)."""
        now = _now()
        if self._kernel_connections.get(kernel_id, 0) > 0:
            self._page_seen[kernel_id] = now
            return 0.0
        started = self._started.setdefault(kernel_id, now)
        rendering = getattr(kernel, "execution_state", None) in ("starting", "busy")
        if kernel_id not in self._had_page and rendering and now - started < self.render_timeout:
            self._page_seen[kernel_id] = now
            return 0.0
        return now - self._page_seen.setdefault(kernel_id, now)
