"""Scenarios: which shard sends a bot, the shards' weights, and the malformed messages, one per reason."""

from __future__ import annotations

import logging
import zlib
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import orjson

from .. import events

if TYPE_CHECKING:
    pass

from .model import SCENARIO_DEFAULTS

logger = logging.getLogger(__name__)


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


def malformed_value(reason: str, good: Mapping[str, Any]) -> bytes:
    """An invalid message for ``reason`` (one of :data:`events.REASONS`), made from the valid event ``good``."""
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
    return value
