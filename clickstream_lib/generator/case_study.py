"""The case study's profile: its six interaction types, experiments and devices, uniform users and items."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson

from .. import events
from ..errors import ConfigError

if TYPE_CHECKING:
    import pandas as pd

from .model import iso_timestamps

logger = logging.getLogger(__name__)

# --- the case study's profile ------------------------------------------------------------------------------------

PROFILES: tuple[str, ...] = ("default", "case-study")
# The case study's final generator: six interaction types and these weights (open_app and login as it published
# them; view, click, payment_initiated and purchase share the other 35%).
CASE_STUDY_TYPES: dict[str, float] = {
    "open_app": 0.40,
    "login": 0.25,
    "view": 0.15,
    "click": 0.10,
    "payment_initiated": 0.06,
    "purchase": 0.04,
}
# Each user is in one experiment and one of its variations (assigned by user number, so the split is stable).
CASE_STUDY_EXPERIMENTS: dict[str, tuple[str, ...]] = {
    "checkout_button": ("control", "variant_b"),
    "homepage_banner": ("control", "variant_a", "variant_b"),
}
CASE_STUDY_DEVICES: tuple[str, ...] = ("iPhone 15", "Pixel 8", "Galaxy S24", "MacBook Pro", "Windows PC", "iPad Air")


@dataclass
class CaseStudyBatch:
    """A batch of the case study's messages: what :class:`EventBatch` offers a producer, a file and a test."""

    users: np.ndarray
    items: np.ndarray
    itypes: np.ndarray
    ts_ms: np.ndarray
    sessions: list[str]
    devices: np.ndarray
    n_items: int

    def __len__(self) -> int:
        return len(self.users)

    @property
    def n_valid(self) -> int:
        return len(self.users)

    def _fields(self) -> tuple[list[str], list[str], list[str], list[str], list[str], list[str], list[str]]:
        names = sorted(CASE_STUDY_EXPERIMENTS)
        exp = [names[u % len(names)] for u in self.users.tolist()]
        var = [
            CASE_STUDY_EXPERIMENTS[e][(u // len(names)) % len(CASE_STUDY_EXPERIMENTS[e])]
            for e, u in zip(exp, self.users.tolist(), strict=True)
        ]
        types = list(CASE_STUDY_TYPES)
        return (
            [f"user_{u:04d}" for u in self.users.tolist()],
            [f"item_{i:04d}" for i in self.items.tolist()],
            [types[t] for t in self.itypes.tolist()],
            [
                # the case study's naive "YYYY-MM-DD HH:MM:SS" (UTC)
                ts[:19].replace("T", " ")
                for ts in iso_timestamps(self.ts_ms)
            ],
            exp,
            var,
            np.array(CASE_STUDY_DEVICES, dtype=object)[self.devices].tolist(),
        )

    def to_dicts(self) -> list[dict[str, Any]]:
        """The messages as the case study sends them (no event_id: the sink derives one from the Kafka offset)."""
        users, items, types, times, exp, var, devices = self._fields()
        return [
            {
                "user_id": u,
                "item_id": i,
                "interaction_type": t,
                "timestamp": ts,
                "metadata": {"experiment_name": e, "experiment_variation": v, "session_id": s, "device_name": d},
            }
            for u, i, t, ts, e, v, s, d in zip(
                users, items, types, times, exp, var, self.sessions, devices, strict=True
            )
        ]

    def keys_values(self) -> tuple[list[bytes], list[bytes]]:
        dicts = self.to_dicts()
        return [d["user_id"].encode() for d in dicts], [orjson.dumps(d) for d in dicts]

    def to_messages(self) -> list[tuple[bytes, bytes]]:
        keys, values = self.keys_values()
        return list(zip(keys, values, strict=True))

    def to_frame(self) -> pd.DataFrame:
        """Ground truth: one row per message, columns :data:`events.FIELDS` as :func:`events.parse` returns them
        (``event_id`` None: derived by the sink; times to the second, as sent)."""
        import pandas as pd

        users, items, types, _, exp, var, devices = self._fields()
        n = len(users)
        return pd.DataFrame(
            {
                "event_id": [None] * n,
                "user_id": users,
                "session_id": self.sessions,
                "item_id": items,
                "interaction_type": types,
                "timestamp_ms": (self.ts_ms // 1000 * 1000).astype(np.int64),
                "page": [""] * n,
                "referrer": [""] * n,
                "device": devices,
                "country": [""] * n,
                "price": np.zeros(n),
                "currency": [""] * n,
                "schema_version": np.full(n, events.SCHEMA_VERSION, dtype=np.uint8),
                "experiment_name": exp,
                "experiment_variation": var,
                "properties": ["{}"] * n,
            },
            columns=list(events.FIELDS),
        )

    def write_jsonl(self, stream: Any) -> int:
        written = 0
        for value in self.keys_values()[1]:
            stream.write(value + b"\n")
            written += len(value) + 1
        return written


class CaseStudyGenerator:
    """The original case study's final event shape (``--profile case-study``): uniform users ``user_0000..`` and
    items ``item_0000..item_0049``, the six :data:`CASE_STUDY_TYPES` at their weights, and a nested ``metadata``
    with experiment_name, experiment_variation (a fixed assignment per user, :data:`CASE_STUDY_EXPERIMENTS`),
    session_id and device_name. Deterministic under a seed; ``batch(n)`` stamps now, ``backfill`` spreads times."""

    def __init__(self, seed: int | None = None, n_users: int = 9_999, n_items: int = 50) -> None:
        if n_users < 1 or n_items < 1:
            raise ConfigError("n_users/n_items", "need at least one user and one item")
        self.n_users, self.n_items = int(n_users), int(n_items)
        self._rng = np.random.default_rng(seed)
        self._weights = np.array(list(CASE_STUDY_TYPES.values()))
        self._weights = self._weights / self._weights.sum()
        self._lock = threading.Lock()

    def set_scenario(self, name: str, on: bool = True, **params: Any) -> None:
        raise ConfigError("scenario", "the case-study profile has no scenarios; use the default profile")

    def scenarios(self) -> dict[str, dict[str, Any]]:
        return {}

    def _batch(self, ts_ms: np.ndarray) -> CaseStudyBatch:
        n = len(ts_ms)
        rng = self._rng
        sessions = [f"{x:016x}" for x in rng.integers(0, 2**63, n, dtype=np.int64).tolist()]
        return CaseStudyBatch(
            users=rng.integers(0, self.n_users, n),
            items=rng.integers(0, self.n_items, n),
            itypes=rng.choice(len(self._weights), n, p=self._weights),
            ts_ms=ts_ms.astype(np.int64),
            sessions=sessions,
            devices=rng.integers(0, len(CASE_STUDY_DEVICES), n),
            n_items=self.n_items,
        )

    def batch(self, n: int, now_ms: int | None = None) -> CaseStudyBatch:
        """The next ``n`` messages, stamped ``now_ms`` (default: the wall clock)."""
        now = int(time.time() * 1000) if now_ms is None else int(now_ms)
        with self._lock:
            return self._batch(np.full(int(n), now, dtype=np.int64))

    def backfill(self, start_ms: int, end_ms: int, n: int) -> CaseStudyBatch:
        """``n`` messages with times uniform in ``[start_ms, end_ms)``, in time order."""
        with self._lock:
            return self._batch(np.sort(self._rng.integers(int(start_ms), int(end_ms), int(n))))
