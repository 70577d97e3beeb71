"""A generated batch of messages in columnar form, and its conversions (wire dicts, Kafka messages, frame, JSONL)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from .. import events

if TYPE_CHECKING:
    import pandas as pd

from .model import NO_PRICE, PURCHASE, SCENARIO_LABELS, TEMPLATE, Tables, iso_timestamps

logger = logging.getLogger(__name__)


@dataclass
class EventBatch:
    """A batch of messages in columnar form: valid events (including re-sent duplicates) plus malformed messages.

    ``len(batch)`` is the number of messages, what :meth:`to_messages` returns and a producer sends. Valid events
    come back as wire dicts (:meth:`to_dicts`) or as a ground-truth frame (:meth:`to_frame`); malformed ones are
    in :attr:`malformed` with the reason :func:`events.parse` gives for each.
    """

    cols: dict[str, np.ndarray]
    event_id: np.ndarray  # S36, one per valid event
    tables: Tables
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
        codes = np.bincount(self.cols["scenario"], minlength=len(SCENARIO_LABELS))
        out = {label: int(c) for label, c in zip(SCENARIO_LABELS, codes, strict=True) if c}
        if self.malformed:
            out["malformed"] = len(self.malformed)
        return out

    def _columns(self) -> dict[str, list[Any]]:
        t, c = self.tables, self.cols
        purchase = c["itype"] == PURCHASE
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
        purchase = np.flatnonzero(c["itype"] == PURCHASE)
        money = np.full(len(frag_idx), NO_PRICE, dtype=object)
        if len(purchase):
            cur = t.currencies[c["currency"][purchase] + 1].tolist()
            money[purchase] = [
                f'"price":{p!r},"currency":"{cu}"' for p, cu in zip(c["price"][purchase].tolist(), cur, strict=True)
            ]
        template = TEMPLATE
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
        purchase = c["itype"] == PURCHASE
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
                "scenario": np.array(SCENARIO_LABELS, dtype=object)[c["scenario"]],
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
