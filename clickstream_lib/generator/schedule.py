"""Live mode's schedule of concurrent sessions in wall-clock time (see "Live mode" in the package docstring)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

if TYPE_CHECKING:
    pass

from .model import COLUMNS, NEVER, START_AHEAD, SessionShapes, empty_cols

logger = logging.getLogger(__name__)


class _IdleQueue:
    """Idle users in the order they became idle (longest idle first), with lazy removal.

    An entry is stale once its user started another session (``generation`` moved on); stale entries are skipped
    when popping and dropped when the arrays fill up, so the queue stays within a few times the number of users.
    """

    def __init__(self, users: np.ndarray, busy: np.ndarray, generation: np.ndarray) -> None:
        cap = max(64, 3 * len(users))
        self.users = np.empty(cap, dtype=np.int32)
        self.gens = np.zeros(cap, dtype=np.int64)
        self.since = np.full(cap, -NEVER, dtype=np.int64)  # when each entry's user became idle: non-decreasing
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
    bank: SessionShapes | None = None  # pre-drawn sessions (no user or start yet), used in order
    bank_rec: np.ndarray | None = None  # their events as records
    bank_scen: Any = None
    bank_next: int = 0
    emitted: int = 0
    sessions: int = 0
    early_sessions: int = 0  # started less than the session timeout after the user's previous one
    ahead: int = 0  # events emitted before their scheduled time (compressed think times)
    warned: set[str] = field(default_factory=set)


class SessionModel(Protocol):
    """What the live schedule needs of the generator: its users and the sessions it draws."""

    n_users: int
    session_timeout_ms: int
    user_order: np.ndarray
    user_cdf: np.ndarray

    def session_shapes(
        self, rng: np.random.Generator, m: int, scen: Mapping[str, Mapping[str, Any]]
    ) -> SessionShapes: ...

    def prices(self, item: np.ndarray, user: np.ndarray, scenario: np.ndarray, discount: float) -> np.ndarray: ...

    def users_for_rate(self, rate: float) -> int: ...


class LiveSchedule:
    """The running sessions of live mode: which events are due, which users are idle, new sessions when short.

    Args:
        model: draws the sessions and prices, and holds the users (in activity order).
        rng: the schedule's own random stream, so that how many sessions a call starts (which follows the wall
            clock) does not shift the generator's other draws.
    """

    def __init__(self, model: SessionModel, rng: np.random.Generator) -> None:
        self._model = model
        self._rng = rng
        n_users = model.n_users
        busy = np.zeros(n_users, dtype=bool)
        generation = np.zeros(n_users, dtype=np.int64)
        self._state = _Live(
            busy=busy,
            n_idle=len(model.user_order),
            idle_since=np.full(n_users, -NEVER, dtype=np.int64),
            generation=generation,
            idle=_IdleQueue(model.user_order, busy, generation),
            schedule=_Schedule(),
        )
        self._last_ts = np.full(n_users, -NEVER, dtype=np.int64)  # per user: the last live timestamp given

    def stats(self) -> dict[str, int]:
        """See :meth:`Generator.live_stats`."""
        lv = self._state
        return {
            "active_sessions": len(self._model.user_order) - lv.n_idle,
            "scheduled": len(lv.schedule),
            "sessions": lv.sessions,
            "early_sessions": lv.early_sessions,
            "ahead": lv.ahead,
            "clock_lead_ms": max(0, lv.clock - lv.last_now),
        }

    def events(self, n: int, now: int, scen: Mapping[str, Mapping[str, Any]]) -> dict[str, np.ndarray]:
        """The next ``n`` events of the live schedule, in schedule order (see "Live mode" in the module docstring).

        1. Events of running sessions that are due (scheduled at or before the schedule's clock), earliest first.
        2. Short of ``n``: new sessions, one per missing event; each one's first event goes now, the rest are
           scheduled at the session's think times. Sessions for the next few calls start too, their first events
           scheduled over the next few call intervals. Users idle for longer than the session timeout come first.
        3. Still short (every user in a session, or fewer idle than missing events): the clock runs ahead to the
           next scheduled events, which go out ahead of their time (compressed think times).
        """
        lv = self._state
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
            ahead_n = START_AHEAD * need if lv.call_ms is not None else 0
            wait = lv.n_idle < need <= len(lv.schedule)
            users = self._pick_users(need + ahead_n, now) if not wait else np.empty(0, dtype=np.int32)
            if len(users):
                now_n = min(need, len(users))
                spread = max(1, int((START_AHEAD + 1) * (lv.call_ms or 0)))
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
            return empty_cols()
        lv.emitted += n
        ts, raw = parts[0] if len(parts) == 1 else (np.concatenate([p[i] for p in parts]) for i in (0, 1))
        rec = raw.view(_REC)
        return {**{k: rec[k] for k in COLUMNS if k != "ts"}, "ts": ts}

    def _pop_scheduled(self, k: int, now: int, clock: int) -> tuple[np.ndarray, np.ndarray]:
        """Take the ``k`` earliest scheduled events (those after ``clock`` go ahead of their time); the users whose
        session they end become idle."""
        lv = self._state
        ts, raw = lv.schedule.pop(k)
        lv.ahead += int(np.count_nonzero(ts > clock))
        self._release(raw, now)
        return ts, raw

    def _release(self, raw: np.ndarray, now: int) -> None:
        lv = self._state
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
        lv = self._state
        cutoff = now - self._model.session_timeout_ms
        cooled = lv.idle.idle_before(cutoff)
        chosen = np.empty(0, dtype=np.int32)
        if cooled:  # none: the longest idle come first anyway, no draws wasted on busy users
            draws = self._rng.random(min(2 * k, 2 * cooled) + 16)
            last = len(self._model.user_order) - 1
            cand = self._model.user_order[np.searchsorted(self._model.user_cdf, draws, side="right").clip(0, last)]
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
        lv = self._state
        m = len(users)
        if lv.bank is None or lv.bank_scen is not scen or lv.bank_next + m > len(lv.bank.length):
            lv.bank = self._model.session_shapes(self._rng, max(1024, m), scen)
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
        rec["price"] = self._model.prices(rec["item"], user, rec["scenario"], bank.discount)
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
        lv = self._state
        if what in lv.warned:
            return
        lv.warned.add(what)
        span_s = (now - (lv.first_now or now)) / 1000
        rate = lv.emitted / span_s if span_s >= 1 else None
        users = len(self._model.user_order)
        need = f"about {self._model.users_for_rate(rate):,} users" if rate else "more users"
        at = f" at {rate:,.0f} events/s" if rate else ""
        if what == "early":
            logger.warning(
                "live mode%s: %d users start their next session less than %d min after their last one, so the "
                "inactivity rule joins those sessions; %s keep them apart (Generator n_users, --users)",
                at,
                users,
                self._model.session_timeout_ms // 60_000,
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

    def timestamps(self, cols: Mapping[str, np.ndarray], now: int) -> np.ndarray:
        """``now``, made strictly increasing per human user across batches without going past ``now``.

        A user normally has one event in a batch (a session's events are at least a second apart): it gets ``now``.
        Several (compressed think times, or coarse batches) end at ``now`` a millisecond apart. Bots keep ``now``.
        """
        users = cols["user"]
        ts = np.full(len(users), now, dtype=np.int64)
        human = np.flatnonzero(users < self._model.n_users)
        if len(human) == 0:
            return ts
        u = users[human]
        # A stable sort of 16-bit keys is a radix sort in numpy: several times faster than on int32.
        order = np.argsort(u.astype(np.uint16) if self._model.n_users <= 65_536 else u, kind="stable")
        u_sorted = u[order]
        starts = np.ones(len(u_sorted), dtype=bool)
        starts[1:] = u_sorted[1:] != u_sorted[:-1]
        gfirst = np.maximum.accumulate(np.where(starts, np.arange(len(u_sorted)), 0))
        rank = np.arange(len(u_sorted)) - gfirst
        bounds = np.append(np.flatnonzero(starts), len(u_sorted))
        size = np.repeat(np.diff(bounds), np.diff(bounds))  # a bincount over all users would cost O(n_users)
        first = np.maximum(self._last_ts[u_sorted] + 1, now - (size - 1))
        stamped = np.minimum(first + rank, now)
        out = np.empty(len(u), dtype=np.int64)
        out[order] = stamped
        ts[human] = out
        np.maximum.at(self._last_ts, u_sorted, stamped)
        return ts
