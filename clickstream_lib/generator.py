"""A realistic synthetic clickstream, generated in numpy batches and deterministic under a seed.

The model, in the order a reader meets it in a dashboard:

* **Users** have a fixed device and country and a skewed activity level (a few users are much busier).
* **Sessions**: a user's visit is a run of events less than 30 minutes apart; the next visit of the same user starts
  at least 30 minutes after the previous one ended, so the "30 minutes of inactivity" rule recovers the sessions.
* **Funnel**: a session views a few items (Zipf-like popularity: a long tail), then may go on, in order, to
  ``click`` -> ``add_to_cart`` -> ``purchase`` of the last viewed item, with configurable step rates. The defaults
  (40% / 25% / 30%) make about 3% of sessions convert, near published e-commerce figures.
* **Time**: :meth:`Generator.backfill` stamps events with a simulated clock over a date range, session starts
  following a diurnal curve (peak in the evening, UTC). :meth:`Generator.batch` is the live mode (below): events
  are stamped with the wall clock when they are sent.
* **Mixes**: referrer per session, device and country per user, a price per item (in the user's currency).

Live mode: the caller sets the rate (``batch(n)`` at the moments it chooses, a producer's token bucket), the
generator keeps a schedule of running sessions in wall-clock time. Each call sends the events that are due
(earliest first, each session's think times as in backfill: 1 s to 20 min, 40 s on average); when fewer are due
than asked for, new sessions start, one per missing event, their first event now and the rest scheduled. So at a
steady rate ``R`` sessions start at ``R / L`` per second (``L`` = :attr:`Generator.mean_session_length`: their
first and later events together make ``R``) and by Little's law ``R / L * D`` run at once (``D`` =
:attr:`Generator.mean_session_duration_s`, about 100 s): at 200 events/s about 5,700 interleaved sessions.
``event_time`` is the moment of the call (never ahead of it), strictly increasing per user. The user pool bounds
this: a user has one session at a time, and the next one starts after the 30-minute timeout so that the
inactivity rule recovers the sessions; that takes ``R / L * (D + 30 min)`` users (:meth:`Generator.users_for_rate`,
about ``540 * R``). With fewer, new sessions go to the users idle longest, less than 30 minutes after their last
one (the rule then joins them; ``session_id`` still tells them apart), and when every user is in a session, events
go out ahead of their schedule (think times compressed so the rate holds). :meth:`Generator.live_stats` counts both.

Scenarios can be switched on and off between batches (:meth:`Generator.set_scenario`), and every event they
touch is labelled in :meth:`EventBatch.to_frame`'s ``scenario`` column so tests can check the pipeline's reaction:

=============  ==================================================================================================
flash_sale     a share of new sessions go straight to one item (referrer ``flash_sale``, page ``/sale/<item>``,
               boosted funnel, discounted price)
bot_burst      one user (default ``bot_0001``, device ``bot``) sends a share of all messages, views and clicks;
               with shards, one shard sends it (:func:`bot_shard`, :func:`shard_weights`)
late_events    a share of events carry an event time minutes to hours in the past
duplicates     a share of messages are re-sends of an earlier message of the batch (same ``event_id``)
malformed      a share of messages are invalid, cycling through every reason in :data:`events.REASONS`
=============  ==================================================================================================

Example:
    >>> gen = Generator(seed=42)
    >>> batch = gen.batch(10_000)
    >>> messages = batch.to_messages()        # [(key=user_id bytes, value=JSON bytes), ...]
    >>> frame = batch.to_frame()              # ground truth, columns events.FIELDS + scenario
"""

from __future__ import annotations

import logging
import math
import re
import threading
import time
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson

from . import events
from .errors import ConfigError

if TYPE_CHECKING:
    import pandas as pd

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
_DEVICE_WEIGHTS = (0.58, 0.36, 0.06)
REFERRERS: tuple[str, ...] = ("direct", "search", "social", "email", "ads", "flash_sale")
_REFERRER_WEIGHTS = (0.33, 0.32, 0.12, 0.08, 0.15)
# (country, share of users, currency, units of that currency per USD, decimals)
_COUNTRIES: tuple[tuple[str, float, str, float, int], ...] = (
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
COUNTRIES: tuple[str, ...] = tuple(c[0] for c in _COUNTRIES)
CURRENCIES: tuple[str, ...] = tuple(sorted({c[2] for c in _COUNTRIES}))

_VIEW, _CLICK, _CART, _PURCHASE = 0, 1, 2, 3
_NO_SCENARIO = 0
_SCENARIO_LABELS: tuple[str, ...] = ("", *SCENARIOS)
_FLASH, _BOT, _LATE, _DUP = (1 + SCENARIOS.index(s) for s in ("flash_sale", "bot_burst", "late_events", "duplicates"))
_HOUR_MS = 3_600_000
_HEX = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)
# byte value -> its two hex digits as one uint16 in memory order, so a (n, k) byte array becomes (n, 2k) digits
# with one table lookup and a view.
_HEX2 = np.stack([_HEX[np.arange(256) >> 4], _HEX[np.arange(256) & 0x0F]], axis=1).copy().view(np.uint16).ravel()
# Byte positions of the 32 hex digits inside a 36-character UUID string (the other 4 are dashes).
_MS_SUFFIX = np.array([f".{i:03d}Z" for i in range(1000)], dtype=object)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_SAFE_ID = re.compile(r"^[A-Za-z0-9_.:@+-]{1,256}$")
# The columns of generated events; device, country and currency follow from the user and are added when a batch
# is assembled (fewer columns to move through sorts and the live schedule).
_COLUMNS = ("user", "session", "item", "itype", "ts", "page", "referrer", "price", "scenario")


def _hex_digits(raw: np.ndarray) -> np.ndarray:
    """(n, k) bytes -> (n, 2k) ASCII hex digits."""
    return _HEX2[raw].view(np.uint8).reshape(raw.shape[0], 2 * raw.shape[1])


def _uuid4_strings(rng: np.random.Generator, n: int) -> np.ndarray:
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


def _session_ids(rng: np.random.Generator, m: int) -> np.ndarray:
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


def _groupwise_cummax(values: np.ndarray, group_start: np.ndarray) -> np.ndarray:
    """Running maximum of ``values`` restarting at each group (rows sorted by group; ``group_start`` marks firsts)."""
    if len(values) == 0:
        return values
    gid = np.cumsum(group_start) - 1
    low = values.min()
    span = int(values.max() - low) + 1
    lifted = (values - low) + gid.astype(np.int64) * span  # later groups always compare larger
    return np.maximum.accumulate(lifted) - gid.astype(np.int64) * span + low


@dataclass
class EventBatch:
    """A batch of messages in columnar form: valid events (including re-sent duplicates) plus malformed messages.

    ``len(batch)`` is the number of messages, what :meth:`to_messages` returns and a producer sends. Valid events
    come back as wire dicts (:meth:`to_dicts`) or as a ground-truth frame (:meth:`to_frame`); malformed ones are
    in :attr:`malformed` with the reason :func:`events.parse` gives for each.
    """

    cols: dict[str, np.ndarray]
    event_id: np.ndarray  # S36, one per valid event
    tables: _Tables
    malformed: list[tuple[bytes, bytes, str]] = field(default_factory=list)  # (key, value, expected reason)
    malformed_pos: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int64))

    def __len__(self) -> int:
        return len(self.event_id) + len(self.malformed)

    @property
    def n_valid(self) -> int:
        """How many messages are valid events (duplicates included)."""
        return len(self.event_id)

    def scenario_counts(self) -> dict[str, int]:
        """Messages per scenario label (``""`` = ordinary events; ``"malformed"`` counts invalid messages)."""
        codes = np.bincount(self.cols["scenario"], minlength=len(_SCENARIO_LABELS))
        out = {label: int(c) for label, c in zip(_SCENARIO_LABELS, codes, strict=True) if c}
        if self.malformed:
            out["malformed"] = len(self.malformed)
        return out

    def _columns(self) -> dict[str, list[Any]]:
        t, c = self.tables, self.cols
        purchase = c["itype"] == _PURCHASE
        price = np.full(len(purchase), None, dtype=object)
        price[purchase] = c["price"][purchase].tolist()
        return {
            "event_id": self.event_id.astype("U36").tolist(),
            "user_id": t.users[c["user"]].tolist(),
            "session_id": c["session"].astype("U17").tolist(),
            "item_id": t.items[c["item"]].tolist(),
            "interaction_type": t.itypes[c["itype"]].tolist(),
            "timestamp": iso_timestamps(c["ts"]),
            "page": t.pages[c["page"]].tolist(),
            "referrer": t.referrers[c["referrer"]].tolist(),
            "device": t.devices[c["device"]].tolist(),
            "country": t.countries[c["country"]].tolist(),
            "price": price.tolist(),
            "currency": t.currencies[np.where(purchase, c["currency"] + 1, 0)].tolist(),
        }

    def to_dicts(self) -> list[dict[str, Any]]:
        """The valid events as wire-form dicts (ISO ``timestamp``; ``price``/``currency`` None unless purchase)."""
        cols = self._columns()
        names = list(cols)
        return [
            {**dict(zip(names, row, strict=True)), "schema_version": events.SCHEMA_VERSION}
            for row in zip(*cols.values(), strict=True)
        ]

    def keys_values(self) -> tuple[list[bytes], list[bytes]]:
        """Keys and values of every message as two lists (what a producer loop wants; no per-message tuple)."""
        t, c = self.tables, self.cols
        # Every string in a generated event comes from a fixed vocabulary or a checked pattern (ids, hex session
        # ids, ISO times; see Generator._bot_index), none needs JSON escaping: %-formatting a template is exact
        # and 2-3x faster than building a dict for orjson. test_generator checks it against orjson.loads.
        frag = t.fragments()
        kind = np.searchsorted(t.page_kind_edges, c["page"], side="right") - 1
        frag_idx = (c["item"].astype(np.int64) * 4 + c["itype"]) * 4 + kind
        purchase = np.flatnonzero(c["itype"] == _PURCHASE)
        money = np.full(len(frag_idx), _NO_PRICE, dtype=object)
        if len(purchase):
            cur = t.currencies[c["currency"][purchase] + 1].tolist()
            money[purchase] = [
                f'"price":{p!r},"currency":"{cu}"' for p, cu in zip(c["price"][purchase].tolist(), cur, strict=True)
            ]
        template = _TEMPLATE
        values = [
            (template % row).encode()
            for row in zip(
                self.event_id.astype("U36").tolist(),
                t.user_fragments[c["user"]].tolist(),
                c["session"].astype("U17").tolist(),
                frag[frag_idx].tolist(),
                iso_timestamps(c["ts"]),
                t.referrers[c["referrer"]].tolist(),
                t.devices[c["device"]].tolist(),
                t.countries[c["country"]].tolist(),
                money.tolist(),
                strict=True,
            )
        ]
        keys: list[bytes] = t.user_keys[c["user"]].tolist()
        if not self.malformed:
            return keys, values
        is_valid = np.ones(len(self), dtype=bool)
        is_valid[self.malformed_pos] = False
        all_keys: list[bytes] = [b""] * len(self)
        all_values: list[bytes] = [b""] * len(self)
        for pos, key, value in zip(np.flatnonzero(is_valid).tolist(), keys, values, strict=True):
            all_keys[pos] = key
            all_values[pos] = value
        for pos, (key, value, _) in zip(self.malformed_pos.tolist(), self.malformed, strict=True):
            all_keys[pos] = key
            all_values[pos] = value
        return all_keys, all_values

    def to_messages(self) -> list[tuple[bytes, bytes]]:
        """Every message as ``(key, value)``: key = user_id (UTF-8), value = JSON; malformed ones in place."""
        keys, values = self.keys_values()
        return list(zip(keys, values, strict=True))

    def to_frame(self) -> pd.DataFrame:
        """Ground truth for tests: one row per valid message, columns :data:`events.FIELDS` plus ``scenario``.

        Values are normalised as :func:`events.parse` returns them (``timestamp_ms``; ``price`` 0.0 and
        ``currency`` "" when not a purchase), so they compare directly with what the sink stored.
        """
        import pandas as pd

        t, c = self.tables, self.cols
        purchase = c["itype"] == _PURCHASE
        return pd.DataFrame(
            {
                "event_id": self.event_id.astype("U36").astype(object),
                "user_id": t.users[c["user"]],
                "session_id": c["session"].astype("U17").astype(object),
                "item_id": t.items[c["item"]],
                "interaction_type": t.itypes[c["itype"]],
                "timestamp_ms": c["ts"].astype(np.int64),
                "page": t.pages[c["page"]],
                "referrer": t.referrers[c["referrer"]],
                "device": t.devices[c["device"]],
                "country": t.countries[c["country"]],
                "price": np.where(purchase, c["price"], 0.0),
                "currency": np.where(purchase, t.currencies[c["currency"] + 1], ""),
                "schema_version": np.full(len(purchase), events.SCHEMA_VERSION, dtype=np.uint8),
                "experiment_name": np.full(len(purchase), "", dtype=object),
                "experiment_variation": np.full(len(purchase), "", dtype=object),
                "properties": np.full(len(purchase), "{}", dtype=object),
                "scenario": np.array(_SCENARIO_LABELS, dtype=object)[c["scenario"]],
            },
            columns=[*events.FIELDS, "scenario"],
        )

    def write_jsonl(self, stream: Any) -> int:
        """Write every message (malformed included) as one line each to a binary stream; returns bytes written.

        A message value never contains a raw newline (JSON escapes it), except deliberately malformed ones,
        which are written with ``\\n`` escaped so that each line stays one message.
        """
        written = 0
        for value in self.keys_values()[1]:
            line = value.replace(b"\n", b"\\n") + b"\n"
            stream.write(line)
            written += len(line)
        return written


@dataclass
class _Tables:
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
        self.user_fragments = np.append(self.user_fragments, np.array([_user_fragment(name)], dtype=object))
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
class _Shapes:
    """Sessions without a user or a start: per session ``length``/``first``/``duration``, per event the rest."""

    length: np.ndarray
    first: np.ndarray  # index of each session's first event
    duration: np.ndarray  # ms from a session's first event to its last
    sess: np.ndarray  # session number of each event
    offset: np.ndarray  # ms from the session's first event
    cols: dict[str, np.ndarray]  # session, item, itype, page, referrer, scenario, last (is the session's last event)
    discount: float  # flash-sale discount of the sessions marked flash_sale


class _IdleQueue:
    """Idle users in the order they became idle (longest idle first), with lazy removal.

    An entry is stale once its user started another session (``generation`` moved on); stale entries are skipped
    when popping and dropped when the arrays fill up, so the queue stays within a few times the number of users.
    """

    def __init__(self, users: np.ndarray, busy: np.ndarray, generation: np.ndarray) -> None:
        cap = max(64, 3 * len(users))
        self.users = np.empty(cap, dtype=np.int32)
        self.gens = np.zeros(cap, dtype=np.int64)
        self.since = np.full(cap, -_NEVER, dtype=np.int64)  # when each entry's user became idle: non-decreasing
        self.users[: len(users)] = users
        self.head, self.tail = 0, len(users)
        self._busy, self._generation = busy, generation

    def _valid(self, lo: int, hi: int) -> np.ndarray:
        u = self.users[lo:hi]
        return np.asarray(~self._busy[u] & (self._generation[u] == self.gens[lo:hi]))

    def push(self, users: np.ndarray, gens: np.ndarray, since: int) -> None:
        k = len(users)
        if self.tail + k > len(self.users):
            keep = self.head + np.flatnonzero(self._valid(self.head, self.tail))
            n = len(keep)
            if n + k > len(self.users):
                grown = max(2 * len(self.users), n + k)
                self.users = np.resize(self.users, grown).astype(np.int32, copy=False)
                self.gens = np.resize(self.gens, grown).astype(np.int64, copy=False)
                self.since = np.resize(self.since, grown).astype(np.int64, copy=False)
            self.users[:n], self.gens[:n], self.since[:n] = self.users[keep], self.gens[keep], self.since[keep]
            self.head, self.tail = 0, n
        self.users[self.tail : self.tail + k] = users
        self.gens[self.tail : self.tail + k] = gens
        self.since[self.tail : self.tail + k] = since
        self.tail += k

    def idle_before(self, t: int) -> int:
        """At most this many users have been idle since before ``t`` (stale entries are counted too)."""
        return int(np.searchsorted(self.since[self.head : self.tail], t))

    def pop(self, k: int) -> np.ndarray:
        """Up to ``k`` users, longest idle first."""
        out: list[np.ndarray] = []
        got = 0
        while got < k and self.head < self.tail:
            hi = min(self.tail, self.head + max(256, 2 * (k - got)))
            idx = np.flatnonzero(self._valid(self.head, hi))[: k - got]
            out.append(self.users[self.head + idx])
            got += len(idx)
            self.head = self.head + int(idx[-1]) + 1 if got == k else hi
        return np.concatenate(out) if out else np.empty(0, dtype=np.int32)


#: A scheduled event (its due time is kept apart, in a contiguous array that searchsorted can use as it is): one
#: record per event, so that merging and taking move one array, not one per column.
_REC = np.dtype(
    [
        *[("price", np.float64), ("user", np.int32), ("item", np.int32), ("itype", np.int32), ("page", np.int32)],
        *[("referrer", np.int32), ("scenario", np.int32), ("session", "S17"), ("last", np.bool_)],
    ]
)
#: The same bytes without fields: numpy takes and scatters these ~10x faster than structured records.
_RAW = np.dtype(("V", _REC.itemsize))


def _merge_sorted(a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Two (times, records) sorted by time as one (``b``'s after ``a``'s equal ones), in linear time."""
    (ta, ra), (tb, rb) = a, b
    if len(tb) == 0:
        return a
    if len(ta) == 0:
        return b
    at = np.searchsorted(ta, tb, side="right") + np.arange(len(tb))
    keep = np.ones(len(ta) + len(tb), dtype=bool)
    keep[at] = False
    ts, rec = np.empty(len(keep), dtype=np.int64), np.empty(len(keep), dtype=_RAW)
    ts[at], ts[keep] = tb, ta
    rec[at], rec[keep] = rb, ra
    return ts, rec


class _Schedule:
    """Scheduled events (times, :data:`_RAW` records) in a few runs sorted by due time, each larger than the next
    one: new events form a run that swallows the last run while that is no larger (or small), so that an event is
    moved O(log n) times, each time into a run at least twice as large (adding a few events to one sorted array
    would rewrite all of it)."""

    def __init__(self) -> None:
        self.runs: list[tuple[np.ndarray, np.ndarray]] = []

    def __len__(self) -> int:
        return sum(len(ts) for ts, _ in self.runs)

    def add(self, ts: np.ndarray, raw: np.ndarray) -> None:
        order = np.argsort(ts, kind="stable")
        run = ts[order], raw[order]
        while self.runs and len(self.runs[-1][0]) <= max(len(run[0]), 256):
            run = _merge_sorted(self.runs.pop(), run)
        self.runs.append(run)

    def count_until(self, t: int) -> int:
        """Events due at or before ``t``."""
        return sum(int(np.searchsorted(ts, t, side="right")) for ts, _ in self.runs)

    def kth_time(self, k: int) -> int:
        """Due time of the ``k``-th earliest event (1-based; ``k <= len(self)``)."""
        ts = np.concatenate([ts[:k] for ts, _ in self.runs])
        return int(np.partition(ts, k - 1)[k - 1])

    def pop(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` earliest events (times, records), in due order."""
        if len(self.runs) == 1:
            ts, raw = self.runs[0]
            self.runs = [(ts[k:], raw[k:])] if len(ts) > k else []
            return ts[:k], raw[:k]
        heads = [ts[:k] for ts, _ in self.runs]
        order = np.argsort(np.concatenate(heads), kind="stable")[:k]
        run_of = np.repeat(np.arange(len(heads)), [len(h) for h in heads])[order]
        taken = np.bincount(run_of, minlength=len(heads)).tolist()
        out_ts = np.concatenate(heads)[order]
        out_raw = np.concatenate([raw[:k] for _, raw in self.runs])[order]
        self.runs = [(ts[j:], raw[j:]) for (ts, raw), j in zip(self.runs, taken, strict=True) if len(ts) > j]
        return out_ts, out_raw


@dataclass
class _Live:
    """State of the live schedule (see "Live mode" in the module docstring)."""

    busy: np.ndarray  # per user: in a session (its last event not emitted yet)
    n_idle: int  # users not in a session
    idle_since: np.ndarray  # per user: wall-clock ms when its last session ended
    generation: np.ndarray  # per user: sessions started (marks stale idle-queue entries)
    idle: _IdleQueue
    schedule: _Schedule  # events of running sessions not sent yet, by due time
    clock: int = 0  # the schedule's clock: the wall clock, or ahead of it while think times are compressed
    first_now: int | None = None
    last_now: int = 0
    call_ms: float | None = None  # typical time between two calls (moving average)
    bank: _Shapes | None = None  # pre-drawn sessions (no user or start yet), used in order
    bank_rec: np.ndarray | None = None  # their events as records
    bank_scen: Any = None
    bank_next: int = 0
    emitted: int = 0
    sessions: int = 0
    early_sessions: int = 0  # started less than the session timeout after the user's previous one
    ahead: int = 0  # events emitted before their scheduled time (compressed think times)
    warned: set[str] = field(default_factory=set)


def _user_fragment(name: str) -> str:
    return f'"user_id":"{name}"'


_NO_PRICE = '"price":null,"currency":null'
_TEMPLATE = (
    '{"event_id":"%s",%s,"session_id":"%s",%s,"timestamp":"%s","referrer":"%s","device":"%s","country":"%s",%s,'
    f'"schema_version":{events.SCHEMA_VERSION}}}'
)


_NEVER = np.iinfo(np.int64).max // 4
_START_AHEAD = 7  # live mode: on a shortfall of k events, start 7k more sessions for the next calls


def bot_shard(user: str, count: int) -> int:
    """The shard (of ``count``) that sends the ``bot_burst`` messages of bot ``user``: only one, so the bot is one
    session from one process, whatever the number of producer processes."""
    return zlib.crc32(user.encode()) % count


def shard_weights(count: int, scenarios: Sequence[tuple[str, Mapping[str, Any]]] = ()) -> list[float]:
    """Each shard's part of a rate or an event count split over ``count`` shards (they add up to ``count``).

    Even, except with ``bot_burst``: the bot's shard also carries the bot's share of *all* messages, so the bot's
    total and every shard's human traffic stay what one process would send.
    """
    weights = [1.0] * count
    bots = [{**SCENARIO_DEFAULTS["bot_burst"], **params} for name, params in scenarios if name == "bot_burst"]
    if bots:  # switched on twice: the last one holds, as with set_scenario
        share = float(bots[-1]["share"])
        weights = [1.0 - share] * count
        weights[bot_shard(str(bots[-1]["user"]), count)] += share * count
    return weights


def _empty_cols() -> dict[str, np.ndarray]:
    dtypes: dict[str, Any] = {"session": "S17", "ts": np.int64, "price": np.float64}
    return {name: np.empty(0, dtype=dtypes.get(name, np.int32)) for name in _COLUMNS}


def _take(cols: Mapping[str, np.ndarray], index: np.ndarray | slice) -> dict[str, np.ndarray]:
    return {k: v[index] for k, v in cols.items()}


def _concat(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return {k: np.concatenate([p[k] for p in parts]) for k in _COLUMNS}


class Generator:
    """Synthetic clickstream with sessions, a Zipf-like catalogue, an ordered funnel and a diurnal curve.

    Args:
        seed: the same seed and the same sequence of calls give the same events (``None``: random).
        n_users: human users ``user_0000`` ...; bots come on top.
        n_items: catalogue size ``item_0000`` ...
        zipf_s: exponent of item popularity (rank ``k`` is viewed in proportion to ``k**-zipf_s``).
        user_skew: exponent of user activity (0 = all users equally active).
        click_rate: share of sessions that click the last viewed item.
        cart_rate: share of clicking sessions that add it to the cart.
        purchase_rate: share of carting sessions that buy.
        views_per_session: mean number of item views in a session (geometric, at least 1).
        gap_mean_s: mean time between two events of a session (exponential, 1 s to 20 min), in both modes.
        session_timeout_s: inactivity that ends a session (30 min): a user's sessions are further apart.
        diurnal_amplitude: 0 = flat traffic; 0.6 = evening peak 4x the morning trough (backfill; live traffic
            follows the caller's rate).
        peak_hour_utc: hour of the daily traffic peak.
        shard: ``(index, count)``: generate only for the users whose number is ``index`` modulo ``count``, with
            the same catalogue, prices and user attributes as the unsharded generator of the same seed. Several
            producer processes use one shard each, so no user's sessions are split between processes.
    """

    def __init__(
        self,
        seed: int | None = None,
        n_users: int = 10_000,
        n_items: int = 1_000,
        *,
        zipf_s: float = 1.1,
        user_skew: float = 0.5,
        click_rate: float = 0.40,
        cart_rate: float = 0.25,
        purchase_rate: float = 0.30,
        views_per_session: float = 3.0,
        gap_mean_s: float = 40.0,
        session_timeout_s: float = 1800.0,
        diurnal_amplitude: float = 0.6,
        peak_hour_utc: float = 20.0,
        shard: tuple[int, int] = (0, 1),
    ) -> None:
        if n_users < 1 or n_items < 1:
            raise ConfigError("n_users/n_items", f"need at least one user and one item, got {n_users}/{n_items}")
        for name, rate in (("click_rate", click_rate), ("cart_rate", cart_rate), ("purchase_rate", purchase_rate)):
            if not 0.0 <= rate <= 1.0:
                raise ConfigError(name, f"{rate} is not a probability; expected 0..1")
        if views_per_session < 1 or gap_mean_s <= 0 or session_timeout_s <= 60:
            raise ConfigError("generator", "views_per_session >= 1, gap_mean_s > 0 and session_timeout_s > 60 needed")
        if not 0 <= diurnal_amplitude < 1:
            raise ConfigError("diurnal_amplitude", f"{diurnal_amplitude} out of range; expected 0 <= a < 1")
        shard_index, shard_count = shard
        if not 1 <= shard_count <= n_users or not 0 <= shard_index < shard_count:
            raise ConfigError("shard", f"{shard} is not (index, count) with 0 <= index < count <= n_users")
        self.shard = (shard_index, shard_count)
        self.seed = seed
        self.n_users = n_users
        self.n_items = n_items
        self.funnel_rates = (click_rate, cart_rate, purchase_rate)
        self.views_per_session = views_per_session
        self.session_timeout_ms = int(session_timeout_s * 1000)
        # Gaps stay well under the timeout so that a session is never split by the inactivity rule.
        self._gap_mean_ms = gap_mean_s * 1000
        self._gap_max_ms = min(20 * 60_000, self.session_timeout_ms * 2 // 3)
        self.diurnal_amplitude = diurnal_amplitude
        self.peak_hour_utc = peak_hour_utc
        self._rng = np.random.default_rng(seed)
        rng = self._rng
        self._lock = threading.Lock()  # batch() may run in a producer thread while a notebook reads state

        uw = max(4, len(str(n_users - 1)))
        iw = max(4, len(str(n_items - 1)))
        users = [f"user_{i:0{uw}d}" for i in range(n_users)]
        items = [f"item_{i:0{iw}d}" for i in range(n_items)]
        pages = [f"/product/{it}" for it in items] + ["/cart", "/checkout/complete"] + [f"/sale/{it}" for it in items]
        self._page_cart, self._page_checkout, self._page_sale0 = n_items, n_items + 1, n_items + 2
        self._tables = _Tables(
            users=np.array(users, dtype=object),
            user_keys=np.array([u.encode() for u in users], dtype=object),
            items=np.array(items, dtype=object),
            pages=np.array(pages, dtype=object),
            user_fragments=np.array([_user_fragment(u) for u in users], dtype=object),
            # page code -> kind: [0, n) product, n cart, n+1 checkout, [n+2, 2n+2) sale
            page_kind_edges=np.array([0, n_items, n_items + 1, n_items + 2]),
        )
        self._bots: dict[str, int] = {}

        # Item popularity: Zipf over ranks, ranks shuffled so the bestseller is not simply item_0000.
        ranks = np.arange(1, n_items + 1, dtype=np.float64)
        pop = ranks**-zipf_s
        self._rank_to_item = rng.permutation(n_items).astype(np.int32)
        self.item_popularity = np.empty(n_items)
        self.item_popularity[self._rank_to_item] = pop / pop.sum()
        self._item_cdf = np.cumsum(pop / pop.sum())
        activity = np.arange(1, n_users + 1, dtype=np.float64) ** -user_skew
        activity = np.minimum(activity / activity.mean(), 10.0)  # nobody is a human bot
        self._user_order = rng.permutation(n_users).astype(np.int32)
        self._user_cdf = np.cumsum(activity / activity.sum())
        self._user_device = rng.choice(3, size=n_users, p=_DEVICE_WEIGHTS).astype(np.int32)
        cshare = np.array([c[1] for c in _COUNTRIES])
        self._user_country = rng.choice(len(_COUNTRIES), size=n_users, p=cshare / cshare.sum()).astype(np.int32)
        self._country_currency = np.array([CURRENCIES.index(c[2]) for c in _COUNTRIES], dtype=np.int32)
        self._country_fx = np.array([c[3] for c in _COUNTRIES])
        self._country_decimals = np.array([c[4] for c in _COUNTRIES])
        # Prices: log-normal around 35 USD, a few items in the hundreds.
        self._item_price_usd = np.round(np.exp(rng.normal(np.log(35.0), 0.9, n_items)), 2) + 0.99
        self._referrer_p = np.array(_REFERRER_WEIGHTS) / sum(_REFERRER_WEIGHTS)
        self._price_tables: dict[float, np.ndarray] = {}
        if shard_count > 1:
            # Everything above is drawn alike in every shard; from here on each shard has its own stream.
            keep = self._user_order % shard_count == shard_index  # by activity rank: is that user in this shard
            self._user_order = self._user_order[keep]
            self._user_cdf = np.cumsum(activity[keep] / activity[keep].sum())
            self._rng = np.random.default_rng(None if seed is None else [seed, shard_index, shard_count])

        # Live state: the schedule of running sessions and each user's history. Its own random stream, so that how
        # many sessions a batch starts (which follows the wall clock) does not shift the event ids and scenario draws.
        self._live_rng = np.random.default_rng(None if seed is None else [seed, shard_index, shard_count, 1])
        busy = np.zeros(n_users, dtype=bool)
        generation = np.zeros(n_users, dtype=np.int64)
        self._live = _Live(
            busy=busy,
            n_idle=len(self._user_order),
            idle_since=np.full(n_users, -_NEVER, dtype=np.int64),
            generation=generation,
            idle=_IdleQueue(self._user_order, busy, generation),
            schedule=_Schedule(),
        )
        self._last_live_ts = np.full(n_users, -_NEVER, dtype=np.int64)
        self._scenarios: dict[str, dict[str, Any]] = {}
        self._bot_session: dict[str, str] = {}
        self._malformed_next = 0
        self._bot_carry = 0.0
        self.emitted = 0

    # --- public API ---------------------------------------------------------------------------------------------

    @property
    def users(self) -> list[str]:
        """Human user ids, index = user number."""
        out: list[str] = self._tables.users[: self.n_users].tolist()
        return out

    @property
    def items(self) -> list[str]:
        out: list[str] = self._tables.items.tolist()
        return out

    @property
    def mean_session_length(self) -> float:
        """Expected events per (non-scenario) session."""
        c, a, p = self.funnel_rates
        return self.views_per_session + c + c * a + c * a * p

    @property
    def mean_session_duration_s(self) -> float:
        """Expected time from a session's first event to its last (its think times: gaps clipped to 1 s..max)."""
        mu, lo, hi = self._gap_mean_ms, 1000.0, float(self._gap_max_ms)
        gap = lo + mu * (math.exp(-lo / mu) - math.exp(-hi / mu))  # E[clip(Exp(mu), lo, hi)]
        return (self.mean_session_length - 1) * gap / 1000

    def live_sessions_for_rate(self, rate: float) -> float:
        """Sessions running at once in live mode at ``rate`` events/s (Little's law: start rate x duration)."""
        return rate / self.mean_session_length * self.mean_session_duration_s

    def users_for_rate(self, rate: float) -> int:
        """Users live mode needs at ``rate`` events/s (this shard's share) for sessions with realistic think times
        that the inactivity rule keeps apart: each one is busy for a session, then idle for the timeout."""
        busy_s = self.mean_session_duration_s + self.session_timeout_ms / 1000
        return math.ceil(rate / self.mean_session_length * busy_s)

    def live_stats(self) -> dict[str, int]:
        """Live mode so far: ``active_sessions`` now, ``scheduled`` events, ``sessions`` started, ``early_sessions``
        (started before the user's timeout ran out: too few users), ``ahead`` events (sent before their time:
        every user busy), ``clock_lead_ms`` (how far the schedule's clock runs ahead of the last call's)."""
        lv = self._live
        with self._lock:
            return {
                "active_sessions": len(self._user_order) - lv.n_idle,
                "scheduled": len(lv.schedule),
                "sessions": lv.sessions,
                "early_sessions": lv.early_sessions,
                "ahead": lv.ahead,
                "clock_lead_ms": max(0, lv.clock - lv.last_now),
            }

    @property
    def conversion_rate(self) -> float:
        """Expected share of sessions that purchase."""
        c, a, p = self.funnel_rates
        return c * a * p

    def scenarios(self) -> dict[str, dict[str, Any]]:
        """The scenarios switched on, with their parameters."""
        return {k: dict(v) for k, v in self._scenarios.items()}

    def set_scenario(self, name: str, on: bool = True, **params: Any) -> None:
        """Switch a scenario on (with ``params`` overriding :data:`SCENARIO_DEFAULTS`) or off; safe while running.

        Raises:
            ConfigError: unknown scenario or parameter, or a share outside 0..0.9.
        """
        if name not in SCENARIOS:
            raise ConfigError("scenario", f"{name!r} is not a scenario; expected one of {', '.join(SCENARIOS)}")
        new = dict(self._scenarios)
        if not on:
            new.pop(name, None)
            self._scenarios = new
            return
        defaults = SCENARIO_DEFAULTS[name]
        bad = sorted(set(params) - set(defaults))
        if bad:
            raise ConfigError(f"{name}.{bad[0]}", f"is not a parameter of {name}; expected {', '.join(defaults)}")
        merged = {**defaults, **params}
        if not 0.0 <= float(merged["share"]) <= 0.9:
            raise ConfigError(f"{name}.share", f"{merged['share']} out of range; expected 0..0.9")
        if name == "flash_sale":
            merged["item_index"] = self._item_index(merged["item"])
            merged["item"] = self._tables.items[merged["item_index"]]
        if name == "bot_burst":
            with self._lock:  # grows the user tables; wait for a batch() running in a producer thread
                merged["user_index"] = self._bot_index(str(merged["user"]))
            # With shards, one shard sends the bot: a share of *all* messages, so a larger share of its own.
            index, count = self.shard
            s = float(merged["share"])
            owner = bot_shard(str(merged["user"]), count)
            merged["shard_share"] = s if count == 1 else s * count / (s * count + 1 - s) if index == owner else 0.0
        if name == "late_events" and not 0 < float(merged["min_delay_s"]) <= float(merged["max_delay_s"]):
            raise ConfigError("late_events.min_delay_s", "need 0 < min_delay_s <= max_delay_s")
        new[name] = merged
        total = sum(float(v.get("shard_share", v["share"])) for k, v in new.items() if k != "flash_sale")
        if total > 0.9:
            more = ""
            if "bot_burst" in new and self.shard[1] > 1:
                more = f" (the bot's shard of {self.shard[1]} sends its share of all messages; fewer workers help)"
            raise ConfigError(f"{name}.share", f"scenario shares add up to {total:.2f}; keep them at most 0.9{more}")
        self._scenarios = new  # one assignment: a concurrent batch() sees the old or the new set, never half

    def batch(self, n: int, now_ms: int | None = None) -> EventBatch:
        """The next ``n`` live messages, stamped ``now_ms`` (default: the wall clock).

        The events due on the live schedule, topped up with new sessions (see "Live mode" in the module
        docstring); call it at the pace events should go out. Timestamps are ``now_ms``, strictly increasing per
        user without passing ``now_ms`` (a user with several events in one call gets them a millisecond apart,
        ending at ``now_ms``), so an ordered funnel stays ordered. The same seed and the same ``n``/``now_ms``
        sequence give the same events; the event ids and scenario draws depend only on the ``n`` sequence.
        """
        if n < 0:
            raise ValueError("n must be >= 0")
        now = int(time.time() * 1000) if now_ms is None else int(now_ms)
        with self._lock:
            scen = self._scenarios
            counts = self._scenario_counts(n, scen)
            base = self._live_events(counts["base"], now, scen)
            out = self._assemble(base, counts, scen, live_now=now)
            self.emitted += len(out)
            return out

    def backfill(self, start_ms: int, end_ms: int, n: int) -> EventBatch:
        """``n`` messages with simulated event times in ``[start_ms, end_ms)``, in time order.

        Sessions, gaps, the diurnal curve and the 30-minute rule hold in event time, so a backfill is what the
        sessionisation and funnel queries are checked against. Independent of the live stream's state.
        """
        if end_ms <= start_ms:
            raise ValueError("end_ms must be after start_ms")
        if n < 0:
            raise ValueError("n must be >= 0")
        with self._lock:
            scen = self._scenarios
            counts = self._scenario_counts(n, scen)
            base = self._backfill_events(counts["base"], int(start_ms), int(end_ms), scen)
            out = self._assemble(base, counts, scen, live_now=None, span=(int(start_ms), int(end_ms)))
            self.emitted += len(out)
            return out

    # --- sessions -----------------------------------------------------------------------------------------------

    def _item_index(self, item: Any) -> int:
        if item is None:  # a mid-tail item, so that its spike stands out
            return int(self._rank_to_item[min(99, self.n_items - 1)])
        if isinstance(item, (int, np.integer)) and 0 <= int(item) < self.n_items:
            return int(item)
        try:
            return self.items.index(str(item))
        except ValueError:
            raise ConfigError("flash_sale.item", f"{item!r} is not in the catalogue (ids like item_0007)") from None

    def _bot_index(self, name: str) -> int:
        if not _SAFE_ID.match(name):
            # Also what keeps EventBatch's JSON template exact: no quote, backslash or control character.
            raise ConfigError("bot_burst.user", f"{name!r} is not a user id; expected 1-256 of [A-Za-z0-9_.:@+-]")
        if name not in self._bots:
            self._bots[name] = self._tables.add_user(name)
        return self._bots[name]

    def _diurnal(self, t_ms: np.ndarray) -> np.ndarray:
        hour = (t_ms % (24 * _HOUR_MS)) / _HOUR_MS
        return 1.0 + self.diurnal_amplitude * np.cos(2 * np.pi * (hour - self.peak_hour_utc) / 24.0)

    def _start_times(self, m: int, t0: int, t1: int) -> np.ndarray:
        """``m`` session start times in ``[t0, t1)`` following the diurnal curve (inverse CDF over hour bins)."""
        edges = np.arange((t0 // _HOUR_MS) * _HOUR_MS, t1 + _HOUR_MS, _HOUR_MS, dtype=np.int64)
        edges = np.unique(np.clip(edges, t0, t1))
        lo, hi = edges[:-1], edges[1:]
        weight = (hi - lo) * self._diurnal((lo + hi) // 2)
        cdf = np.cumsum(weight)
        rng = self._rng
        b = np.minimum(np.searchsorted(cdf, rng.random(m) * cdf[-1], side="right"), len(lo) - 1)
        return lo[b] + (rng.random(m) * (hi[b] - lo[b])).astype(np.int64)

    def _session_shapes(self, rng: np.random.Generator, m: int, scen: Mapping[str, Mapping[str, Any]]) -> _Shapes:
        """``m`` sessions without a user or a start time: funnel, items, pages, referrer, gaps (offsets), ids."""
        flash = np.zeros(m, dtype=bool)
        rates = np.tile(np.array(self.funnel_rates), (m, 1))
        if "flash_sale" in scen:
            fs = scen["flash_sale"]
            flash = rng.random(m) < float(fs["share"])
            rates[flash] = np.minimum(rates[flash] * float(fs["boost"]), 0.95)
        views = np.minimum(rng.geometric(1.0 / self.views_per_session, m), 30)
        steps = rng.random((m, 3)) < rates
        depth = steps[:, 0].astype(np.int64) + (steps[:, 0] & steps[:, 1]) + (steps[:, 0] & steps[:, 1] & steps[:, 2])
        length = views + depth
        total = int(length.sum())
        first = np.cumsum(length) - length
        sess = np.repeat(np.arange(m), length)
        pos = np.arange(total) - first[sess]

        gaps = np.clip(rng.exponential(self._gap_mean_ms, total), 1000, self._gap_max_ms).astype(np.int64)
        gaps[first] = 0
        csum = np.cumsum(gaps)
        offset = csum - csum[first][sess]

        itype = np.where(pos < views[sess], _VIEW, pos - views[sess] + 1).astype(np.int32)
        item = self._rank_to_item[
            np.searchsorted(self._item_cdf, rng.random(total), side="right").clip(0, self.n_items - 1)
        ]
        last_view = first + views - 1
        if flash.any():
            item[last_view[flash]] = int(scen["flash_sale"]["item_index"])
        funnel = itype != _VIEW
        item[funnel] = item[last_view][sess[funnel]]
        page = item.copy()
        page[itype == _CART] = self._page_cart
        page[itype == _PURCHASE] = self._page_checkout
        flash_e = flash[sess]
        if flash.any():
            on_sale = flash_e & (itype <= _CLICK) & (item == int(scen["flash_sale"]["item_index"]))
            page[on_sale] = self._page_sale0 + item[on_sale]
        referrer = rng.choice(len(self._referrer_p), size=m, p=self._referrer_p).astype(np.int32)
        referrer[flash] = REFERRERS.index("flash_sale")
        last = np.zeros(total, dtype=bool)
        last[first + length - 1] = True
        return _Shapes(
            length=length,
            first=first,
            duration=offset[first + length - 1],
            sess=sess,
            offset=offset,
            cols={
                "session": _session_ids(rng, m)[sess],
                "item": item.astype(np.int32),
                "itype": itype,
                "page": page.astype(np.int32),
                "referrer": referrer[sess],
                "scenario": np.where(flash_e, _FLASH, _NO_SCENARIO).astype(np.int32),
                "last": last,
            },
            discount=float(scen["flash_sale"]["discount"]) if flash.any() else 0.0,
        )

    def _prices(self, item: np.ndarray, user: np.ndarray, scenario: np.ndarray, discount: float) -> np.ndarray:
        """Each item's price in the currency of the user's country (flash-sale items discounted)."""
        at = self._user_country[user] * self.n_items + item
        price = self._price_table(0.0)[at]
        if discount:
            flash = scenario == _FLASH
            price[flash] = self._price_table(discount)[at[flash]]
        return price

    def _price_table(self, discount: float) -> np.ndarray:
        """Price of every (country, item), flattened, rounded to the currency's decimals; built once per discount."""
        table = self._price_tables.get(discount)
        if table is None:
            price = self._country_fx[:, None] * self._item_price_usd[None, :]
            if discount:
                price *= 1.0 - discount
            scale = 10.0 ** self._country_decimals[:, None]
            table = self._price_tables[discount] = (np.round(price * scale) / scale).ravel()
        return table

    def _sessions(
        self, m: int, t0: int, t1: int, last_end: np.ndarray, scen: Mapping[str, Mapping[str, Any]]
    ) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """Generate ``m`` whole sessions starting in ``[t0, t1)``; returns (columns, session index per event).

        Updates ``last_end`` (per user) so that a user's next session starts after the inactivity timeout.
        """
        rng = self._rng
        last = len(self._user_order) - 1
        users = self._user_order[np.searchsorted(self._user_cdf, rng.random(m), side="right").clip(0, last)]
        starts = self._start_times(m, t0, t1)
        shapes = self._session_shapes(rng, m, scen)
        duration, sess = shapes.duration, shapes.sess

        # A user's sessions must not overlap and must sit >= timeout apart. Sorted by (user, start), the earliest
        # feasible start is s'_k = c_k + max(last_end + G, cummax_j<=k(s_j - c_j)), c_k = sum_{j<k}(d_j + G).
        timeout = self.session_timeout_ms
        order = np.lexsort((starts, users))
        u_s, s_s, d_s = users[order], starts[order], duration[order]
        group_start = np.ones(m, dtype=bool)
        group_start[1:] = u_s[1:] != u_s[:-1]
        step = d_s + timeout + 1
        incl = np.cumsum(step)
        gfirst = np.maximum.accumulate(np.where(group_start, np.arange(m), 0))
        c = incl - step - (incl[gfirst] - step[gfirst])
        floor = np.maximum(_groupwise_cummax(s_s - c, group_start), last_end[u_s] + timeout + 1)
        shifted = np.empty(m, dtype=np.int64)
        shifted[order] = c + floor
        np.maximum.at(last_end, users, shifted + duration)

        u_e = users[sess]
        cols = shapes.cols
        cols.pop("last")
        cols["user"] = u_e.astype(np.int32)
        cols["ts"] = (shifted[sess] + shapes.offset).astype(np.int64)
        cols["price"] = self._prices(cols["item"], u_e, cols["scenario"], shapes.discount)
        return {k: cols[k] for k in _COLUMNS}, sess

    # --- live mode: a schedule of concurrent sessions in wall-clock time -------------------------------------------

    def _live_events(self, n: int, now: int, scen: Mapping[str, Mapping[str, Any]]) -> dict[str, np.ndarray]:
        """The next ``n`` events of the live schedule, in schedule order (see "Live mode" in the module docstring).

        1. Events of running sessions that are due (scheduled at or before the schedule's clock), earliest first.
        2. Short of ``n``: new sessions, one per missing event; each one's first event goes now, the rest are
           scheduled at the session's think times. Sessions for the next few calls start too, their first events
           scheduled over the next few call intervals. Users idle for longer than the session timeout come first.
        3. Still short (every user in a session, or fewer idle than missing events): the clock runs ahead to the
           next scheduled events, which go out ahead of their time (compressed think times).
        """
        lv = self._live
        if lv.first_now is None:
            lv.first_now = now
        # The schedule's clock moves with the wall clock, keeping the lead it took while think times were
        # compressed (events stay scheduled relative to each other).
        clock = now
        if lv.last_now:
            dt = max(0, now - lv.last_now)
            clock = max(now, lv.clock + dt)
            if dt:
                lv.call_ms = dt if lv.call_ms is None else 0.8 * lv.call_ms + 0.2 * dt
        lv.last_now = now
        start = clock
        parts: list[tuple[np.ndarray, np.ndarray]] = []
        need = n
        while need > 0:
            due = lv.schedule.count_until(clock)
            if due:
                k = min(due, need)
                parts.append(self._pop_scheduled(k, now, start))
                need -= k
                if need == 0:
                    break
            # Sessions for a few calls ahead start now too (their first events scheduled over the next calls):
            # starting a handful of sessions at every call would cost more than all the rest of a small call.
            # When most users are in a session, wait until enough are idle (the clock runs ahead meanwhile, below)
            # rather than start a few sessions per call.
            ahead_n = _START_AHEAD * need if lv.call_ms is not None else 0
            wait = lv.n_idle < need <= len(lv.schedule)
            users = self._pick_users(need + ahead_n, now) if not wait else np.empty(0, dtype=np.int32)
            if len(users):
                now_n = min(need, len(users))
                spread = max(1, int((_START_AHEAD + 1) * (lv.call_ms or 0)))
                parts.append(self._start_sessions(users, now_n, clock, spread, now, scen))
                need -= now_n
                if need == 0:
                    break
            ahead = min(need, len(lv.schedule))
            if ahead == 0:  # cannot happen: a user who is not idle has events scheduled
                raise AssertionError("live schedule is empty while every user is in a session")
            clock = max(clock, lv.schedule.kth_time(ahead))
            self._warn_once("compressed", now)
        lv.clock = clock
        if not parts:
            return _empty_cols()
        lv.emitted += n
        ts, raw = parts[0] if len(parts) == 1 else (np.concatenate([p[i] for p in parts]) for i in (0, 1))
        rec = raw.view(_REC)
        return {**{k: rec[k] for k in _COLUMNS if k != "ts"}, "ts": ts}

    def _pop_scheduled(self, k: int, now: int, clock: int) -> tuple[np.ndarray, np.ndarray]:
        """Take the ``k`` earliest scheduled events (those after ``clock`` go ahead of their time); the users whose
        session they end become idle."""
        lv = self._live
        ts, raw = lv.schedule.pop(k)
        lv.ahead += int(np.count_nonzero(ts > clock))
        self._release(raw, now)
        return ts, raw

    def _release(self, raw: np.ndarray, now: int) -> None:
        lv = self._live
        rec = raw.view(_REC)
        done = rec["user"][rec["last"]]
        if len(done):
            lv.n_idle += len(done)
            lv.busy[done] = False
            lv.idle_since[done] = now
            lv.idle.push(done, lv.generation[done], now)

    def _pick_users(self, k: int, now: int) -> np.ndarray:
        """Up to ``k`` distinct idle users for new sessions: by activity among those idle for longer than the
        session timeout, then (too few of them) the ones idle longest."""
        lv = self._live
        cutoff = now - self.session_timeout_ms
        cooled = lv.idle.idle_before(cutoff)
        chosen = np.empty(0, dtype=np.int32)
        if cooled:  # none: the longest idle come first anyway, no draws wasted on busy users
            draws = self._live_rng.random(min(2 * k, 2 * cooled) + 16)
            last = len(self._user_order) - 1
            cand = self._user_order[np.searchsorted(self._user_cdf, draws, side="right").clip(0, last)]
            cand = cand[~lv.busy[cand] & (lv.idle_since[cand] < cutoff)]
            if len(cand) > 1:
                _, idx = np.unique(cand, return_index=True)
                cand = cand[np.sort(idx)]
            chosen = cand[:k]
            lv.busy[chosen] = True
        if len(chosen) < k:
            longest = lv.idle.pop(k - len(chosen))
            early = int(np.count_nonzero(lv.idle_since[longest] >= cutoff))
            if early:
                lv.early_sessions += early
                self._warn_once("early", now)
            chosen = np.concatenate([chosen, longest])
        return chosen

    def _start_sessions(
        self, users: np.ndarray, now_n: int, clock: int, spread: int, now: int, scen: Mapping[str, Mapping[str, Any]]
    ) -> tuple[np.ndarray, np.ndarray]:
        """Start one session per user: the first ``now_n`` at ``clock`` (their first events are returned), the
        others evenly over the next ``spread`` ms; every other event is scheduled."""
        lv = self._live
        m = len(users)
        if lv.bank is None or lv.bank_scen is not scen or lv.bank_next + m > len(lv.bank.length):
            lv.bank = self._session_shapes(self._live_rng, max(1024, m), scen)
            lv.bank_rec = np.empty(len(lv.bank.offset), dtype=_REC)
            for k, v in lv.bank.cols.items():
                lv.bank_rec[k] = v
            lv.bank_scen, lv.bank_next = scen, 0
        bank, b = lv.bank, lv.bank_next
        assert lv.bank_rec is not None
        lv.bank_next = b + m
        e0 = int(bank.first[b])
        e1 = int(bank.first[b + m - 1] + bank.length[b + m - 1])
        user = np.repeat(users.astype(np.int32), bank.length[b : b + m])
        rec = lv.bank_rec[e0:e1].copy()
        rec["user"] = user
        rec["price"] = self._prices(rec["item"], user, rec["scenario"], bank.discount)
        starts = np.full(m, clock, dtype=np.int64)
        if m > now_n:
            starts[now_n:] += 1 + np.arange(m - now_n) * spread // (m - now_n)
        ts = np.repeat(starts, bank.length[b : b + m]) + bank.offset[e0:e1]
        lv.busy[users] = True
        lv.generation[users] += 1
        lv.sessions += m
        lv.n_idle -= m
        first = bank.first[b : b + now_n] - e0
        later = np.ones(e1 - e0, dtype=bool)
        later[first] = False
        raw = rec.view(_RAW)
        if later.any():
            lv.schedule.add(ts[later], raw[later])
        firsts = ts[first], raw[first]
        self._release(firsts[1], now)  # one-event sessions (bounces) end at once
        return firsts

    def _warn_once(self, what: str, now: int) -> None:
        lv = self._live
        if what in lv.warned:
            return
        lv.warned.add(what)
        span_s = (now - (lv.first_now or now)) / 1000
        rate = lv.emitted / span_s if span_s >= 1 else None
        users = len(self._user_order)
        need = f"about {self.users_for_rate(rate):,} users" if rate else "more users"
        at = f" at {rate:,.0f} events/s" if rate else ""
        if what == "early":
            logger.warning(
                "live mode%s: %d users start their next session less than %d min after their last one, so the "
                "inactivity rule joins those sessions; %s keep them apart (Generator n_users, --users)",
                at,
                users,
                self.session_timeout_ms // 60_000,
                need,
            )
        else:
            logger.warning(
                "live mode%s: all %d users are in a session, so think times are compressed to keep the rate; %s "
                "keep them realistic (Generator n_users, --users)",
                at,
                users,
                need,
            )

    def _backfill_events(
        self, n: int, start: int, end: int, scen: Mapping[str, Mapping[str, Any]]
    ) -> dict[str, np.ndarray]:
        """Exactly ``n`` events of whole sessions (the last one cut short) inside ``[start, end)``, time order."""
        if n == 0:
            return _empty_cols()
        last_end = np.full(self.n_users, np.iinfo(np.int64).min // 4, dtype=np.int64)
        parts: list[dict[str, np.ndarray]] = []
        have = 0
        for _ in range(50):  # each round normally suffices; more only when most sessions fall past the end
            need = n - have
            m = max(16, math.ceil(need / self.mean_session_length * 1.3))
            cols, sess = self._sessions(m, start, end, last_end, scen)
            inside = cols["ts"] < end  # a session pushed past the end is cut; its prefix keeps the funnel order
            cols, sess = _take(cols, inside), sess[inside]
            # Take whole sessions in a random order until ``need`` events, cutting the last one short.
            lengths = np.bincount(sess, minlength=m)
            chosen = self._rng.permutation(m)
            chosen = chosen[lengths[chosen] > 0]
            cum = np.cumsum(lengths[chosen])
            k = int(np.searchsorted(cum, need))
            rank = np.full(m, -1)
            taken = chosen[: k + 1]
            rank[taken] = np.arange(len(taken))
            keep = rank[sess] >= 0
            if k < len(chosen) and int(cum[k]) > need:
                in_last = np.flatnonzero(sess == taken[-1])  # session-major order: positions ascend
                keep[in_last[len(in_last) - (int(cum[k]) - need) :]] = False
            part = _take(cols, keep)
            parts.append(part)
            have += len(part["ts"])
            if have >= n:
                break
        else:
            raise ValueError(f"could not fit {n} events into the range; widen it or lower n")
        merged = _concat(parts)
        merged = _take(merged, slice(0, n))
        return _take(merged, np.argsort(merged["ts"], kind="stable"))

    # --- scenarios and assembly ---------------------------------------------------------------------------------

    def _scenario_counts(self, n: int, scen: Mapping[str, Mapping[str, Any]]) -> dict[str, int]:
        rng = self._rng
        counts = {}
        for name in ("duplicates", "malformed"):
            share = float(scen[name]["share"]) if name in scen else 0.0
            counts[name] = int(rng.binomial(n, share)) if share > 0 and n > 0 else 0
        # The bot sends its share exactly (a running remainder carries over between batches), so that its total
        # is the same however the messages are cut into batches or split between shards.
        want = self._bot_carry + n * float(scen["bot_burst"]["shard_share"]) if "bot_burst" in scen else 0.0
        bots = min(int(want + 1e-9), n - counts["malformed"])
        self._bot_carry = want - bots if bots < n - counts["malformed"] else 0.0
        counts["bot_burst"] = bots
        if counts["duplicates"] and n - counts["malformed"] - counts["duplicates"] <= 0:
            counts["duplicates"] = 0  # nothing to re-send
        counts["duplicates"] = min(counts["duplicates"], n - counts["malformed"] - bots)
        counts["base"] = n - counts["bot_burst"] - counts["duplicates"] - counts["malformed"]
        return counts

    def _bot_events(
        self, k: int, params: Mapping[str, Any], live_now: int | None, span: tuple[int, int] | None
    ) -> dict[str, np.ndarray]:
        rng = self._rng
        name = str(params["user"])
        user = int(params["user_index"])
        sid = self._bot_session.setdefault(name, _session_ids(rng, 1)[0])
        item = rng.integers(0, self.n_items, size=k).astype(np.int32)
        if span is not None:
            ts = np.sort(rng.integers(span[0], span[1], size=k)).astype(np.int64)
        else:
            ts = np.full(k, live_now, dtype=np.int64)
        return {
            "user": np.full(k, user, dtype=np.int32),
            "session": np.full(k, sid, dtype="S17"),
            "item": item,
            "itype": np.where(rng.random(k) < 0.7, _VIEW, _CLICK).astype(np.int32),
            "ts": ts,
            "page": item.copy(),
            "referrer": np.full(k, REFERRERS.index("direct"), dtype=np.int32),
            "price": np.zeros(k),
            "scenario": np.full(k, _BOT, dtype=np.int32),
        }

    def _assemble(
        self,
        base: dict[str, np.ndarray],
        counts: Mapping[str, int],
        scen: Mapping[str, Mapping[str, Any]],
        live_now: int | None,
        span: tuple[int, int] | None = None,
    ) -> EventBatch:
        """Mix bots, live timestamps, late events, duplicates and malformed messages into one batch."""
        rng = self._rng
        nb = len(base["ts"])
        cols = base
        k_bot = counts["bot_burst"]
        if k_bot:
            bots = self._bot_events(k_bot, scen["bot_burst"], live_now, span)
            # Bots interleave at random positions; base events keep their order (stable sort on position keys).
            keys = np.concatenate([np.arange(nb, dtype=np.float64), rng.random(k_bot) * max(nb, 1)])
            cols = _take(_concat([base, bots]), np.argsort(keys, kind="stable"))
        nv = len(cols["ts"])
        if live_now is not None:
            cols["ts"] = self._live_timestamps(cols, live_now)
        if "late_events" in scen and nv:
            p = scen["late_events"]
            late = (rng.random(nv) < float(p["share"])) & (cols["scenario"] == _NO_SCENARIO)
            lo, hi = np.log(float(p["min_delay_s"]) * 1000), np.log(float(p["max_delay_s"]) * 1000)
            if live_now is None:
                delay = np.exp(rng.uniform(lo, hi, int(late.sum()))).astype(np.int64)
            else:  # a draw per message: how many are flash-sale events follows the clock, the later draws must not
                delay = np.exp(rng.uniform(lo, hi, nv)[late]).astype(np.int64)
            cols["ts"][late] -= delay
            cols["scenario"][late] = _LATE
        event_id = _uuid4_strings(rng, nv)
        k_dup = counts["duplicates"]
        if k_dup and nv:
            src = rng.integers(0, nv, size=k_dup)
            # A re-send comes after its original: place it at a random later position.
            keys = np.concatenate([np.arange(nv, dtype=np.float64), src + 0.5 + rng.random(k_dup) * (nv - src)])
            order = np.argsort(keys, kind="stable")
            idx = np.concatenate([np.arange(nv), src])[order]
            cols = _take(cols, idx)
            cols["scenario"] = cols["scenario"].copy()
            cols["scenario"][order >= nv] = _DUP
            event_id = event_id[idx]
        users = cols["user"]
        human = users < self.n_users
        known = np.minimum(users, self.n_users - 1)
        cols["device"] = np.where(human, self._user_device[known], DEVICES.index("bot")).astype(np.int32)
        cols["country"] = np.where(human, self._user_country[known], COUNTRIES.index("US")).astype(np.int32)
        cols["currency"] = self._country_currency[cols["country"]]
        batch = EventBatch(cols=cols, event_id=event_id, tables=self._tables)
        k_bad = counts["malformed"]
        if k_bad:
            total = len(event_id) + k_bad
            batch.malformed_pos = np.sort(rng.choice(total, size=k_bad, replace=False))
            ref = live_now if live_now is not None else (span[1] if span else int(time.time() * 1000))
            batch.malformed = [self._malformed_message(ref) for _ in range(k_bad)]
        return batch

    def _live_timestamps(self, cols: Mapping[str, np.ndarray], now: int) -> np.ndarray:
        """``now``, made strictly increasing per human user across batches without going past ``now``.

        A user normally has one event in a batch (a session's events are at least a second apart): it gets ``now``.
        Several (compressed think times, or coarse batches) end at ``now`` a millisecond apart. Bots keep ``now``.
        """
        users = cols["user"]
        ts = np.full(len(users), now, dtype=np.int64)
        human = np.flatnonzero(users < self.n_users)
        if len(human) == 0:
            return ts
        u = users[human]
        # A stable sort of 16-bit keys is a radix sort in numpy: several times faster than on int32.
        order = np.argsort(u.astype(np.uint16) if self.n_users <= 65_536 else u, kind="stable")
        u_sorted = u[order]
        starts = np.ones(len(u_sorted), dtype=bool)
        starts[1:] = u_sorted[1:] != u_sorted[:-1]
        gfirst = np.maximum.accumulate(np.where(starts, np.arange(len(u_sorted)), 0))
        rank = np.arange(len(u_sorted)) - gfirst
        bounds = np.append(np.flatnonzero(starts), len(u_sorted))
        size = np.repeat(np.diff(bounds), np.diff(bounds))  # a bincount over all users would cost O(n_users)
        first = np.maximum(self._last_live_ts[u_sorted] + 1, now - (size - 1))
        stamped = np.minimum(first + rank, now)
        out = np.empty(len(u), dtype=np.int64)
        out[order] = stamped
        ts[human] = out
        np.maximum.at(self._last_live_ts, u_sorted, stamped)
        return ts

    def _malformed_message(self, ref_ms: int) -> tuple[bytes, bytes, str]:
        """One invalid message, cycling through every reason in :data:`events.REASONS`."""
        reason = events.REASONS[self._malformed_next % len(events.REASONS)]
        self._malformed_next += 1
        rng = self._rng
        pick = int(rng.integers(0, len(self._user_order)))
        user = str(self._tables.users[self._user_order[pick] if self.shard[1] > 1 else pick])
        item = str(self._tables.items[int(rng.integers(0, self.n_items))])
        good = {
            "user_id": user,
            "item_id": item,
            "interaction_type": "view",
            "timestamp": events.format_timestamp(ref_ms),
            "schema_version": events.SCHEMA_VERSION,
        }
        value: bytes
        if reason == events.NOT_JSON:
            value = orjson.dumps(good)[:-7]  # cut mid-value, as a crashed writer would leave it
        elif reason == events.INVALID_UTF8:
            value = orjson.dumps({**good, "page": "/product/XX"}).replace(b"XX", b"\xff\xfe")
        elif reason == events.NOT_OBJECT:
            value = orjson.dumps([good])
        elif reason == events.MISSING_FIELD:
            value = orjson.dumps({k: v for k, v in good.items() if k != "user_id"})
        elif reason == events.WRONG_TYPE:
            value = orjson.dumps({**good, "item_id": 7})
        elif reason == events.INVALID_INTERACTION_TYPE:
            value = orjson.dumps({**good, "interaction_type": "view\n"})
        elif reason == events.TIMESTAMP_UNPARSABLE:
            value = orjson.dumps({**good, "timestamp": "yesterday at noon"})
        elif reason == events.TIMESTAMP_OUT_OF_RANGE:
            value = orjson.dumps({**good, "timestamp": "1999-12-31T23:59:59.000Z"})
        elif reason == events.TOO_LARGE:
            value = orjson.dumps({**good, "page": "/" + "x" * events.MAX_MESSAGE_BYTES})
        else:  # a new reason without a sample here is a bug in this module
            raise AssertionError(f"no malformed sample for reason {reason!r}")
        return user.encode(), value, reason


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
