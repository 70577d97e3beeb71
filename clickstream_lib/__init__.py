"""clickstream_lib: a Jupyter-first workbench for real-time clickstream analytics (Kafka -> ClickHouse).

Notebooks import from here only::

    from clickstream_lib import Settings, connect, queries

Heavy names (the dashboard and the workbench, notebook runners, the Kafka clients) load on first use, so
``import clickstream_lib`` and the ``clickstream`` command stay fast.
"""

from __future__ import annotations

import importlib
import logging
from typing import TYPE_CHECKING, Any

from .errors import (
    BrokerUnavailable,
    ClickstreamError,
    ConfigError,
    InvalidEvent,
    KafkaSecurityError,
    NotebookError,
    QueryError,
    SinkError,
    StackError,
    StoreError,
    StoreLocked,
)
from .settings import Settings

if TYPE_CHECKING:
    from . import alerts, notebooks, queries
    from .dashboard import Dashboard
    from .generator import SCENARIOS, Generator
    from .producer import Producer, ProducerStats
    from .sink import Sink, SinkStats
    from .stack import KafkaStack
    from .store import Store, connect
    from .workbench import Workbench

logging.getLogger(__name__).addHandler(logging.NullHandler())

__all__ = [
    "SCENARIOS",
    "BrokerUnavailable",
    "ClickstreamError",
    "ConfigError",
    "Dashboard",
    "Generator",
    "InvalidEvent",
    "KafkaSecurityError",
    "KafkaStack",
    "NotebookError",
    "Producer",
    "ProducerStats",
    "QueryError",
    "Settings",
    "Sink",
    "SinkError",
    "SinkStats",
    "StackError",
    "Store",
    "StoreError",
    "StoreLocked",
    "Workbench",
    "alerts",
    "connect",
    "notebooks",
    "queries",
]

# name -> (module, attribute or None for the module itself)
_LAZY: dict[str, tuple[str, str | None]] = {
    "SCENARIOS": ("generator", "SCENARIOS"),
    "Dashboard": ("dashboard", "Dashboard"),
    "Generator": ("generator", "Generator"),
    "KafkaStack": ("stack", "KafkaStack"),
    "Producer": ("producer", "Producer"),
    "ProducerStats": ("producer", "ProducerStats"),
    "Sink": ("sink", "Sink"),
    "SinkStats": ("sink", "SinkStats"),
    "Store": ("store", "Store"),
    "Workbench": ("workbench", "Workbench"),
    "alerts": ("alerts", None),
    "connect": ("store", "connect"),
    "notebooks": ("notebooks", None),
    "queries": ("queries", None),
}


def __getattr__(name: str) -> Any:
    try:
        module, attr = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module 'clickstream_lib' has no attribute {name!r}") from None
    mod = importlib.import_module(f".{module}", __name__)
    value = mod if attr is None else getattr(mod, attr)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
