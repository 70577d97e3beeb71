"""The :class:`Generator` front: the model's draws (catalogue, users, sessions, prices, backfill) and the mixing of
scenarios into batches; the live schedule and the batches are its parts."""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from .. import events
from ..errors import ConfigError

if TYPE_CHECKING:
    pass

from .batch import EventBatch
from .model import (
    BOT,
    CART,
    CLICK,
    COLUMNS,
    COUNTRIES,
    COUNTRY_TABLE,
    CURRENCIES,
    DEVICE_WEIGHTS,
    DEVICES,
    DUP,
    FLASH,
    HOUR_MS,
    LATE,
    NO_SCENARIO,
    PURCHASE,
    REFERRER_WEIGHTS,
    REFERRERS,
    SAFE_ID,
    SCENARIO_DEFAULTS,
    SCENARIOS,
    VIEW,
    SessionShapes,
    Tables,
    concat_cols,
    empty_cols,
    groupwise_cummax,
    session_ids,
    take_rows,
    user_fragment,
    uuid4_strings,
)
from .scenarios import bot_shard, malformed_value
from .schedule import LiveSchedule

logger = logging.getLogger(__name__)


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

    Over 400 lines for a reason: it holds the model's draws (catalogue, users, sessions, prices, scenarios), which
    share one seeded random stream whose order of draws is what makes a seed reproduce its events; splitting them
    over objects would hide that order. The live schedule (:class:`~.schedule.LiveSchedule`), the batches and the
    scenarios' helpers are its parts.
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
        self._tables = Tables(
            users=np.array(users, dtype=object),
            user_keys=np.array([u.encode() for u in users], dtype=object),
            items=np.array(items, dtype=object),
            pages=np.array(pages, dtype=object),
            user_fragments=np.array([user_fragment(u) for u in users], dtype=object),
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
        self.user_order = rng.permutation(n_users).astype(np.int32)
        self.user_cdf = np.cumsum(activity / activity.sum())
        self._user_device = rng.choice(3, size=n_users, p=DEVICE_WEIGHTS).astype(np.int32)
        cshare = np.array([c[1] for c in COUNTRY_TABLE])
        self._user_country = rng.choice(len(COUNTRY_TABLE), size=n_users, p=cshare / cshare.sum()).astype(np.int32)
        self._country_currency = np.array([CURRENCIES.index(c[2]) for c in COUNTRY_TABLE], dtype=np.int32)
        self._country_fx = np.array([c[3] for c in COUNTRY_TABLE])
        self._country_decimals = np.array([c[4] for c in COUNTRY_TABLE])
        # Prices: log-normal around 35 USD, a few items in the hundreds.
        self._item_price_usd = np.round(np.exp(rng.normal(np.log(35.0), 0.9, n_items)), 2) + 0.99
        self._referrer_p = np.array(REFERRER_WEIGHTS) / sum(REFERRER_WEIGHTS)
        self._price_tables: dict[float, np.ndarray] = {}
        if shard_count > 1:
            # Everything above is drawn alike in every shard; from here on each shard has its own stream.
            keep = self.user_order % shard_count == shard_index  # by activity rank: is that user in this shard
            self.user_order = self.user_order[keep]
            self.user_cdf = np.cumsum(activity[keep] / activity[keep].sum())
            self._rng = np.random.default_rng(None if seed is None else [seed, shard_index, shard_count])

        # Live state: the schedule of running sessions and each user's history. Its own random stream, so that how
        # many sessions a batch starts (which follows the wall clock) does not shift the event ids and scenario draws.
        self._live = LiveSchedule(
            self, np.random.default_rng(None if seed is None else [seed, shard_index, shard_count, 1])
        )
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
        with self._lock:
            return self._live.stats()

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
            base = self._live.events(counts["base"], now, scen)
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
        if not SAFE_ID.match(name):
            # Also what keeps EventBatch's JSON template exact: no quote, backslash or control character.
            raise ConfigError("bot_burst.user", f"{name!r} is not a user id; expected 1-256 of [A-Za-z0-9_.:@+-]")
        if name not in self._bots:
            self._bots[name] = self._tables.add_user(name)
        return self._bots[name]

    def _diurnal(self, t_ms: np.ndarray) -> np.ndarray:
        hour = (t_ms % (24 * HOUR_MS)) / HOUR_MS
        return 1.0 + self.diurnal_amplitude * np.cos(2 * np.pi * (hour - self.peak_hour_utc) / 24.0)

    def _start_times(self, m: int, t0: int, t1: int) -> np.ndarray:
        """``m`` session start times in ``[t0, t1)`` following the diurnal curve (inverse CDF over hour bins)."""
        edges = np.arange((t0 // HOUR_MS) * HOUR_MS, t1 + HOUR_MS, HOUR_MS, dtype=np.int64)
        edges = np.unique(np.clip(edges, t0, t1))
        lo, hi = edges[:-1], edges[1:]
        weight = (hi - lo) * self._diurnal((lo + hi) // 2)
        cdf = np.cumsum(weight)
        rng = self._rng
        b = np.minimum(np.searchsorted(cdf, rng.random(m) * cdf[-1], side="right"), len(lo) - 1)
        starts: np.ndarray = lo[b] + (rng.random(m) * (hi[b] - lo[b])).astype(np.int64)
        return starts

    def session_shapes(self, rng: np.random.Generator, m: int, scen: Mapping[str, Mapping[str, Any]]) -> SessionShapes:
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

        itype = np.where(pos < views[sess], VIEW, pos - views[sess] + 1).astype(np.int32)
        item = self._rank_to_item[
            np.searchsorted(self._item_cdf, rng.random(total), side="right").clip(0, self.n_items - 1)
        ]
        last_view = first + views - 1
        if flash.any():
            item[last_view[flash]] = int(scen["flash_sale"]["item_index"])
        funnel = itype != VIEW
        item[funnel] = item[last_view][sess[funnel]]
        page = item.copy()
        page[itype == CART] = self._page_cart
        page[itype == PURCHASE] = self._page_checkout
        flash_e = flash[sess]
        if flash.any():
            on_sale = flash_e & (itype <= CLICK) & (item == int(scen["flash_sale"]["item_index"]))
            page[on_sale] = self._page_sale0 + item[on_sale]
        referrer = rng.choice(len(self._referrer_p), size=m, p=self._referrer_p).astype(np.int32)
        referrer[flash] = REFERRERS.index("flash_sale")
        last = np.zeros(total, dtype=bool)
        last[first + length - 1] = True
        return SessionShapes(
            length=length,
            first=first,
            duration=offset[first + length - 1],
            sess=sess,
            offset=offset,
            cols={
                "session": session_ids(rng, m)[sess],
                "item": item.astype(np.int32),
                "itype": itype,
                "page": page.astype(np.int32),
                "referrer": referrer[sess],
                "scenario": np.where(flash_e, FLASH, NO_SCENARIO).astype(np.int32),
                "last": last,
            },
            discount=float(scen["flash_sale"]["discount"]) if flash.any() else 0.0,
        )

    def prices(self, item: np.ndarray, user: np.ndarray, scenario: np.ndarray, discount: float) -> np.ndarray:
        """Each item's price in the currency of the user's country (flash-sale items discounted)."""
        at = self._user_country[user] * self.n_items + item
        price = self._price_table(0.0)[at]
        if discount:
            flash = scenario == FLASH
            price[flash] = self._price_table(discount)[at[flash]]
        out: np.ndarray = price
        return out

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
        last = len(self.user_order) - 1
        users = self.user_order[np.searchsorted(self.user_cdf, rng.random(m), side="right").clip(0, last)]
        starts = self._start_times(m, t0, t1)
        shapes = self.session_shapes(rng, m, scen)
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
        floor = np.maximum(groupwise_cummax(s_s - c, group_start), last_end[u_s] + timeout + 1)
        shifted = np.empty(m, dtype=np.int64)
        shifted[order] = c + floor
        np.maximum.at(last_end, users, shifted + duration)

        u_e = users[sess]
        cols = shapes.cols
        cols.pop("last")
        cols["user"] = u_e.astype(np.int32)
        cols["ts"] = (shifted[sess] + shapes.offset).astype(np.int64)
        cols["price"] = self.prices(cols["item"], u_e, cols["scenario"], shapes.discount)
        return {k: cols[k] for k in COLUMNS}, sess

    def _backfill_events(
        self, n: int, start: int, end: int, scen: Mapping[str, Mapping[str, Any]]
    ) -> dict[str, np.ndarray]:
        """Exactly ``n`` events of whole sessions (the last one cut short) inside ``[start, end)``, time order."""
        if n == 0:
            return empty_cols()
        last_end = np.full(self.n_users, np.iinfo(np.int64).min // 4, dtype=np.int64)
        parts: list[dict[str, np.ndarray]] = []
        have = 0
        for _ in range(50):  # each round normally suffices; more only when most sessions fall past the end
            need = n - have
            m = max(16, math.ceil(need / self.mean_session_length * 1.3))
            cols, sess = self._sessions(m, start, end, last_end, scen)
            inside = cols["ts"] < end  # a session pushed past the end is cut; its prefix keeps the funnel order
            cols, sess = take_rows(cols, inside), sess[inside]
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
            part = take_rows(cols, keep)
            parts.append(part)
            have += len(part["ts"])
            if have >= n:
                break
        else:
            raise ValueError(f"could not fit {n} events into the range; widen it or lower n")
        merged = concat_cols(parts)
        merged = take_rows(merged, slice(0, n))
        return take_rows(merged, np.argsort(merged["ts"], kind="stable"))

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
        sid = self._bot_session.setdefault(name, session_ids(rng, 1)[0])
        item = rng.integers(0, self.n_items, size=k).astype(np.int32)
        if span is not None:
            ts = np.sort(rng.integers(span[0], span[1], size=k)).astype(np.int64)
        else:
            ts = np.full(k, live_now, dtype=np.int64)
        return {
            "user": np.full(k, user, dtype=np.int32),
            "session": np.full(k, sid, dtype="S17"),
            "item": item,
            "itype": np.where(rng.random(k) < 0.7, VIEW, CLICK).astype(np.int32),
            "ts": ts,
            "page": item.copy(),
            "referrer": np.full(k, REFERRERS.index("direct"), dtype=np.int32),
            "price": np.zeros(k),
            "scenario": np.full(k, BOT, dtype=np.int32),
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
            cols = take_rows(concat_cols([base, bots]), np.argsort(keys, kind="stable"))
        nv = len(cols["ts"])
        if live_now is not None:
            cols["ts"] = self._live.timestamps(cols, live_now)
        if "late_events" in scen and nv:
            p = scen["late_events"]
            late = (rng.random(nv) < float(p["share"])) & (cols["scenario"] == NO_SCENARIO)
            lo, hi = np.log(float(p["min_delay_s"]) * 1000), np.log(float(p["max_delay_s"]) * 1000)
            if live_now is None:
                delay = np.exp(rng.uniform(lo, hi, int(late.sum()))).astype(np.int64)
            else:  # a draw per message: how many are flash-sale events follows the clock, the later draws must not
                delay = np.exp(rng.uniform(lo, hi, nv)[late]).astype(np.int64)
            cols["ts"][late] -= delay
            cols["scenario"][late] = LATE
        event_id = uuid4_strings(rng, nv)
        k_dup = counts["duplicates"]
        if k_dup and nv:
            src = rng.integers(0, nv, size=k_dup)
            # A re-send comes after its original: place it at a random later position.
            keys = np.concatenate([np.arange(nv, dtype=np.float64), src + 0.5 + rng.random(k_dup) * (nv - src)])
            order = np.argsort(keys, kind="stable")
            idx = np.concatenate([np.arange(nv), src])[order]
            cols = take_rows(cols, idx)
            cols["scenario"] = cols["scenario"].copy()
            cols["scenario"][order >= nv] = DUP
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

    def _malformed_message(self, ref_ms: int) -> tuple[bytes, bytes, str]:
        """One invalid message, cycling through every reason in :data:`events.REASONS`."""
        reason = events.REASONS[self._malformed_next % len(events.REASONS)]
        self._malformed_next += 1
        rng = self._rng
        pick = int(rng.integers(0, len(self.user_order)))
        user = str(self._tables.users[self.user_order[pick] if self.shard[1] > 1 else pick])
        item = str(self._tables.items[int(rng.integers(0, self.n_items))])
        good = {
            "user_id": user,
            "item_id": item,
            "interaction_type": "view",
            "timestamp": events.format_timestamp(ref_ms),
            "schema_version": events.SCHEMA_VERSION,
        }
        return user.encode(), malformed_value(reason, good), reason
