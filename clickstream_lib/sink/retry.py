"""Backoff, and calls retried while Kafka or ClickHouse fail."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TypeVar

from kafka.errors import KafkaError

from .. import topics
from ..settings import Settings

logger = logging.getLogger(__name__)
_T = TypeVar("_T")

DEFAULT_RETRY_BASE_S = 0.25
DEFAULT_RETRY_MAX_S = 5.0
RETRY_ATTEMPTS = 12  # with the default cap, about a minute


def backoff_s(attempt: int, base_s: float = DEFAULT_RETRY_BASE_S, cap_s: float = DEFAULT_RETRY_MAX_S) -> float:
    """Capped exponential backoff: ``base * 2**(attempt-1)``, at most ``cap`` (attempt counts from 1)."""
    return float(min(cap_s, base_s * (2 ** max(0, attempt - 1))))


def retrying(
    what: str,
    fn: Callable[[], _T],
    *,
    settings: Settings,
    stop: threading.Event,
    retry_max_s: float,
    errors: tuple[type[BaseException], ...] = (Exception,),
) -> _T:
    """``fn()``, retried with backoff on ``errors`` for :data:`RETRY_ATTEMPTS` attempts, or until ``stop`` is set.

    Then the error is raised, a Kafka error as the "Kafka not reachable" error of :func:`topics.unreachable`.
    """
    attempt = 0
    while True:
        attempt += 1
        try:
            return fn()
        except errors as exc:
            if attempt >= RETRY_ATTEMPTS or stop.is_set():
                if isinstance(exc, KafkaError):
                    raise topics.unreachable(settings, exc) from exc
                raise
            logger.warning("%s failed (%s: %s); retrying", what, type(exc).__name__, exc)
            time.sleep(backoff_s(attempt, cap_s=retry_max_s))
