"""The generator's model: scenarios and their labels, devices, referrers, countries and currencies, the string
tables the integer columns index into, session shapes, and the column helpers."""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import numpy as np

from .. import events

if TYPE_CHECKING:
    pass

logger = logging.getLogger(__name__)

SCENARIOS: tuple[str, ...] = ("flash_sale", "bot_burst", "late_events", "duplicates", "malformed")

#: Default parameters of each scenario; ``set_scenario(name, **params)`` overrides them.
SCENARIO_DEFAULTS: dict[str, dict[str, Any]] = {
    "flash_sale": {"item": None, "share": 0.3, "boost": 3.0, "discount": 0.3},
    "bot_burst": {"user": "bot_0001", "share": 0.2},
    "late_events": {"share": 0.05, "min_delay_s": 120.0, "max_delay_s": 6 * 3600.0},
    "duplicates": {"share": 0.02},
    "malformed": {"share": 0.01},
}

DEVICES: tuple[str, ...] = ("mobile", "desktop", "tablet", "bot")
DEVICE_WEIGHTS = (0.58, 0.36, 0.06)
REFERRERS: tuple[str, ...] = ("direct", "search", "social", "email", "ads", "flash_sale")
REFERRER_WEIGHTS = (0.33, 0.32, 0.12, 0.08, 0.15)
# (country, share of users, currency, units of that currency per USD, decimals)
COUNTRY_TABLE: tuple[tuple[str, float, str, float, int], ...] = (
    ("US", 0.30, "USD", 1.0, 2),
    ("GB", 0.09, "GBP", 0.79, 2),
    ("DE", 0.10, "EUR", 0.92, 2),
    ("FR", 0.07, "EUR", 0.92, 2),
    ("ES", 0.05, "EUR", 0.92, 2),
    ("IT", 0.05, "EUR", 0.92, 2),
    ("NL", 0.03, "EUR", 0.92, 2),
    ("PL", 0.03, "PLN", 3.95, 2),
    ("BR", 0.06, "BRL", 5.0, 2),
    ("IN", 0.08, "INR", 83.0, 2),
    ("JP", 0.05, "JPY", 150.0, 0),
    ("CA", 0.05, "CAD", 1.36, 2),
    ("AU", 0.04, "AUD", 1.52, 2),
)
COUNTRIES: tuple[str, ...] = tuple(c[0] for c in COUNTRY_TABLE)
CURRENCIES: tuple[str, ...] = tuple(sorted({c[2] for c in COUNTRY_TABLE}))

VIEW, CLICK, CART, PURCHASE = 0, 1, 2, 3
NO_SCENARIO = 0
SCENARIO_LABELS: tuple[str, ...] = ("", *SCENARIOS)
FLASH, BOT, LATE, DUP = (1 + SCENARIOS.index(s) for s in ("flash_sale", "bot_burst", "late_events", "duplicates"))
HOUR_MS = 3_600_000
_HEX = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)
# byte value -> its two hex digits as one uint16 in memory order, so a (n, k) byte array becomes (n, 2k) digits
# with one table lookup and a view.
_HEX2 = np.stack([_HEX[np.arange(256) >> 4], _HEX[np.arange(256) & 0x0F]], axis=1).copy().view(np.uint16).ravel()
# Byte positions of the 32 hex digits inside a 36-character UUID string (the other 4 are dashes).
_MS_SUFFIX = np.array([f".{i:03d}Z" for i in range(1000)], dtype=object)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
SAFE_ID = re.compile(r"^[A-Za-z0-9_.:@+-]{1,256}$")
# The columns of generated events; device, country and currency follow from the user and are added when a batch
# is assembled (fewer columns to move through sorts and the live schedule).
COLUMNS = ("user", "session", "item", "itype", "ts", "page", "referrer", "price", "scenario")


def _hex_digits(raw: np.ndarray) -> np.ndarray:
    """(n, k) bytes -> (n, 2k) ASCII hex digits."""
    digits: np.ndarray = _HEX2[raw].view(np.uint8).reshape(raw.shape[0], 2 * raw.shape[1])
    return digits


def uuid4_strings(rng: np.random.Generator, n: int) -> np.ndarray:
    """``n`` random (version 4) UUIDs as a fixed-width ``S36`` array, without a Python loop."""
    raw = np.frombuffer(rng.bytes(16 * n), dtype=np.uint8).reshape(n, 16).copy()
    raw[:, 6] = (raw[:, 6] & 0x0F) | 0x40  # version 4
    raw[:, 8] = (raw[:, 8] & 0x3F) | 0x80  # RFC 4122 variant
    digits = _hex_digits(raw)
    out = np.full((n, 36), ord("-"), dtype=np.uint8)
    for dst, src in ((0, 0), (9, 8), (14, 12), (19, 16), (24, 20)):  # 8-4-4-4-12
        width = 12 if dst == 24 else (8 if dst == 0 else 4)
        out[:, dst : dst + width] = digits[:, src : src + width]
    return out.view("S36").reshape(n)


def session_ids(rng: np.random.Generator, m: int) -> np.ndarray:
    """``m`` random session ids ``s`` + 16 hex digits, as a fixed-width ``S17`` (ASCII) array."""
    raw = np.frombuffer(rng.bytes(8 * m), dtype=np.uint8).reshape(m, 8)
    out = np.full((m, 17), ord("s"), dtype=np.uint8)
    out[:, 1:] = _hex_digits(raw)
    return out.view("S17").reshape(m)


def iso_timestamps(ts_ms: np.ndarray) -> list[str]:
    """Epoch milliseconds to wire-form strings (``2026-11-29T10:00:00.123Z``), formatting each second once."""
    if len(ts_ms) == 0:
        return []
    secs, ms = np.divmod(ts_ms.astype(np.int64), 1000)
    low = int(secs.min())
    span = int(secs.max()) - low + 1
    if span <= 4 * len(secs):  # live batches span a second or two: index a dense table, no sort needed
        uniq, inverse = np.arange(low, low + span), secs - low
    else:
        uniq, inverse = np.unique(secs, return_inverse=True)
    prefixes = np.array(
        [(_EPOCH + timedelta(seconds=int(s))).strftime("%Y-%m-%dT%H:%M:%S") for s in uniq.tolist()], dtype=object
    )
    out: list[str] = (prefixes[inverse] + _MS_SUFFIX[ms]).tolist()
    return out


def groupwise_cummax(values: np.ndarray, group_start: np.ndarray) -> np.ndarray:
    """Running maximum of ``values`` restarting at each group (rows sorted by group; ``group_start`` marks firsts)."""
    if len(values) == 0:
        return values
    gid = np.cumsum(group_start) - 1
    low = values.min()
    span = int(values.max() - low) + 1
    lifted = (values - low) + gid.astype(np.int64) * span  # later groups always compare larger
    out: np.ndarray = np.maximum.accumulate(lifted) - gid.astype(np.int64) * span + low
    return out


@dataclass
class Tables:
    """String tables that the integer columns index into (shared by every batch of one generator)."""

    users: np.ndarray  # object: user_id per user index (humans, then bots)
    user_keys: np.ndarray  # object: user_id as UTF-8 bytes (the Kafka key)
    items: np.ndarray
    pages: np.ndarray
    itypes: np.ndarray = field(default_factory=lambda: np.array(events.INTERACTION_TYPES, dtype=object))
    referrers: np.ndarray = field(default_factory=lambda: np.array(REFERRERS, dtype=object))
    devices: np.ndarray = field(default_factory=lambda: np.array(DEVICES, dtype=object))
    countries: np.ndarray = field(default_factory=lambda: np.array(COUNTRIES, dtype=object))
    currencies: np.ndarray = field(default_factory=lambda: np.array([None, *CURRENCIES], dtype=object))
    user_fragments: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=object))
    page_kind_edges: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int64))
    _fragments: np.ndarray | None = None

    def add_user(self, name: str) -> int:
        self.users = np.append(self.users, np.array([name], dtype=object))
        self.user_keys = np.append(self.user_keys, np.array([name.encode()], dtype=object))
        self.user_fragments = np.append(self.user_fragments, np.array([user_fragment(name)], dtype=object))
        return len(self.users) - 1

    def fragments(self) -> np.ndarray:
        """JSON of (item, interaction, page) for every item x 4 interactions x 4 page kinds, built once."""
        if self._fragments is None:
            n_items = len(self.items)
            out: list[str] = []
            for i, item in enumerate(self.items.tolist()):
                pages = (self.pages[i], self.pages[n_items], self.pages[n_items + 1], self.pages[n_items + 2 + i])
                for itype in events.INTERACTION_TYPES:
                    out.extend(f'"item_id":"{item}","interaction_type":"{itype}","page":"{pg}"' for pg in pages)
            self._fragments = np.array(out, dtype=object)
        return self._fragments


@dataclass
class SessionShapes:
    """Sessions without a user or a start: per session ``length``/``first``/``duration``, per event the rest."""

    length: np.ndarray
    first: np.ndarray  # index of each session's first event
    duration: np.ndarray  # ms from a session's first event to its last
    sess: np.ndarray  # session number of each event
    offset: np.ndarray  # ms from the session's first event
    cols: dict[str, np.ndarray]  # session, item, itype, page, referrer, scenario, last (is the session's last event)
    discount: float  # flash-sale discount of the sessions marked flash_sale


def user_fragment(name: str) -> str:
    return f'"user_id":"{name}"'


NO_PRICE = '"price":null,"currency":null'
TEMPLATE = (
    '{"event_id":"%s",%s,"session_id":"%s",%s,"timestamp":"%s","referrer":"%s","device":"%s","country":"%s",%s,'
    f'"schema_version":{events.SCHEMA_VERSION}}}'
)


NEVER = np.iinfo(np.int64).max // 4
START_AHEAD = 7  # live mode: on a shortfall of k events, start 7k more sessions for the next calls


def empty_cols() -> dict[str, np.ndarray]:
    dtypes: dict[str, Any] = {"session": "S17", "ts": np.int64, "price": np.float64}
    return {name: np.empty(0, dtype=dtypes.get(name, np.int32)) for name in COLUMNS}


def take_rows(cols: Mapping[str, np.ndarray], index: np.ndarray | slice) -> dict[str, np.ndarray]:
    return {k: v[index] for k, v in cols.items()}


def concat_cols(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return {k: np.concatenate([p[k] for p in parts]) for k in COLUMNS}
