"""The clickstream event: fields, validation, (de)serialisation.

Wire format: one JSON object per Kafka message (UTF-8), described by ``resources/event.schema.json``::

    {"event_id": "0b6f...", "user_id": "user_0042", "session_id": "s_...", "item_id": "item_0007",
     "interaction_type": "click", "timestamp": "2026-11-29T10:00:00.123Z", "page": "/item/item_0007",
     "referrer": "search", "device": "mobile", "country": "DE", "price": null, "currency": null,
     "schema_version": 1}

The original case study's messages parse as they are: ``{"user_id", "item_id", "interaction_type", "timestamp"}``
with a naive ``YYYY-MM-DD HH:MM:SS`` timestamp (read as UTC) and no ``event_id`` (the sink derives a deterministic
one from topic/partition/offset).

:func:`parse` never raises on bad input: it returns a :class:`Rejection` with one reason from :data:`REASONS`.
"""

from __future__ import annotations

import json
import operator
import re
import time
import uuid
from datetime import UTC, datetime, timedelta
from functools import cache
from importlib import resources
from typing import Any, NamedTuple

import orjson

SCHEMA_VERSION = 1
MAX_MESSAGE_BYTES = 64 * 1024
# The known interaction types: the funnel's steps (in order) and the generator's default output. Any other type that
# matches INTERACTION_TYPE_PATTERN is valid too (see docs/events.md), e.g. the case study's open_app or login.
INTERACTION_TYPES = ("view", "click", "add_to_cart", "purchase")
MAX_INTERACTION_TYPE_LEN = 64
# Words of ASCII letters, digits and _ - . : / $, separated by single spaces: snake_case (open_app), dotted
# (cart.item_added), PostHog's $pageview and Segment's "Order Completed" pass; control characters, other whitespace,
# quotes and empty strings do not. One spelling for Python and the JSON Schema (ECMA-262): (?!\n) stops Python's $
# from accepting a trailing newline.
INTERACTION_TYPE_PATTERN = r"^[A-Za-z0-9_$.:/-]+(?: [A-Za-z0-9_$.:/-]+)*(?!\n)$"
_INTERACTION_TYPE_RE = re.compile(INTERACTION_TYPE_PATTERN)
_INTERACTIONS = frozenset(INTERACTION_TYPES)

# The fixed, documented set of reasons a message is rejected (dead-lettered).
NOT_JSON = "not_json"
INVALID_UTF8 = "invalid_utf8"
NOT_OBJECT = "not_object"
MISSING_FIELD = "missing_field"
WRONG_TYPE = "wrong_type"
INVALID_INTERACTION_TYPE = "invalid_interaction_type"
TIMESTAMP_UNPARSABLE = "timestamp_unparsable"
TIMESTAMP_OUT_OF_RANGE = "timestamp_out_of_range"
TOO_LARGE = "too_large"
REASONS: tuple[str, ...] = (
    NOT_JSON,
    INVALID_UTF8,
    NOT_OBJECT,
    MISSING_FIELD,
    WRONG_TYPE,
    INVALID_INTERACTION_TYPE,
    TIMESTAMP_UNPARSABLE,
    TIMESTAMP_OUT_OF_RANGE,
    TOO_LARGE,
)

REQUIRED_FIELDS = ("user_id", "item_id", "interaction_type", "timestamp")
_OPTIONAL_STR = ("session_id", "page", "referrer", "device", "country", "currency")
EXPERIMENT_FIELDS = ("experiment_name", "experiment_variation")
# Event properties: a message may carry a ``metadata`` or ``properties`` object (the case study nests
# experiment_name, experiment_variation, session_id and device_name in ``metadata``). Its keys named here fill the
# event's own field when the message does not set that field itself; every other key is kept in the ``properties``
# column (a JSON object). A key in both objects takes its value from ``properties``.
PROPERTY_OBJECTS = ("metadata", "properties")
PROPERTY_FIELDS: dict[str, str] = {
    "session_id": "session_id",
    "device_name": "device",
    "device": "device",
    "page": "page",
    "referrer": "referrer",
    "country": "country",
    "currency": "currency",
    "experiment_name": "experiment_name",
    "experiment_variation": "experiment_variation",
    "price": "price",
}
_MAX_STR_LEN = 2048
MIN_TIME_MS = 946_684_800_000  # 2000-01-01T00:00:00Z
MAX_FUTURE_MS = 86_400_000  # one day ahead of the reference time
_MAX_ID_LEN = 256

# The event as stored: these keys, in this order, are what parse() returns and the events table holds.
FIELDS = (
    "event_id",
    "user_id",
    "session_id",
    "item_id",
    "interaction_type",
    "timestamp_ms",
    "page",
    "referrer",
    "device",
    "country",
    "price",
    "currency",
    "schema_version",
    "experiment_name",
    "experiment_variation",
    "properties",  # JSON object text of the other property keys ("{}" when none)
)

_EVENT_ID_NAMESPACE = uuid.UUID("6f1c1e43-5d2a-4c53-9a55-0c1c7e1b2f00")
_CANONICAL_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\Z")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)
SCHEMA_RESOURCE = "resources/event.schema.json"


@cache
def json_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of a wire message, shipped as ``resources/event.schema.json``.

    It documents what producers send, for other producers and for tests. The sink uses :func:`parse`, which
    also checks what a schema cannot (the timestamp's range, the message size) and says *why* in one stable word.
    """
    text = resources.files("clickstream_lib").joinpath(SCHEMA_RESOURCE).read_text(encoding="utf-8")
    schema: dict[str, Any] = json.loads(text)
    return schema


class Rejection(NamedTuple):
    """Why a message is not a valid event: ``reason`` is one of :data:`REASONS`, ``detail`` says where."""

    reason: str
    detail: str


def is_interaction_type(value: object) -> bool:
    """Whether ``value`` is a valid interaction type (a known one or any name matching the pattern)."""
    return type(value) is str and (
        value in _INTERACTIONS
        or (len(value) <= MAX_INTERACTION_TYPE_LEN and _INTERACTION_TYPE_RE.match(value) is not None)
    )


def interaction_type_problem(value: str) -> str:
    """Why ``value`` is not a valid interaction type ("" when it is one)."""
    if is_interaction_type(value):
        return ""
    if not value:
        return "interaction_type is empty"
    if len(value) > MAX_INTERACTION_TYPE_LEN:
        return f"interaction_type has {len(value)} characters; at most {MAX_INTERACTION_TYPE_LEN}"
    return f"{value[:40]!r} is not a name of letters, digits and _ - . : / $ (words separated by single spaces)"


def derived_event_id(topic: str, partition: int, offset: int) -> str:
    """A deterministic event id for a message that carries none, so a replay yields the same id."""
    return str(uuid.uuid5(_EVENT_ID_NAMESPACE, f"{topic}:{partition}:{offset}"))


def parse_timestamp(value: str) -> int | None:
    """ISO-8601 (``Z``/offset or naive = UTC, ``T`` or space) to epoch milliseconds; None if unparsable."""
    if not 10 <= len(value) <= 40:
        return None
    try:
        dt = datetime.fromisoformat(value)
    except ValueError:
        return None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    # Integer arithmetic: dt.timestamp() is a float and 10:00:00.123 can come back as ...122.999 ms.
    try:
        return (dt - _EPOCH) // _MS
    except OverflowError:  # e.g. year 1 with a +14:00 offset
        return None


def format_timestamp(ms: int) -> str:
    """Epoch milliseconds to the wire form ``2026-11-29T10:00:00.123Z``."""
    dt = _EPOCH + timedelta(milliseconds=int(ms))  # exact, unlike fromtimestamp(ms / 1000)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{int(ms) % 1000:03d}Z"


def parse(raw: bytes | bytearray | memoryview | str, reference_ms: int | None = None) -> dict[str, Any] | Rejection:
    """Validate one message; return the normalised event (keys :data:`FIELDS`) or a :class:`Rejection`.

    Args:
        raw: the Kafka message value.
        reference_ms: "now" for the future-timestamp check. The sink passes the Kafka record timestamp so that a
            replay of the same record reaches the same decision; None means the wall clock.
    """
    if raw is None:
        return Rejection(NOT_JSON, "empty message (null value)")
    if isinstance(raw, str):
        # surrogatepass keeps a lone surrogate as bytes, so it is reported as invalid UTF-8 below, not raised here.
        raw = raw.encode("utf-8", "surrogatepass")
    if len(raw) > MAX_MESSAGE_BYTES:
        return Rejection(TOO_LARGE, f"{len(raw)} bytes > {MAX_MESSAGE_BYTES}")
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        if "utf-8" in str(exc).lower() or "surrogate" in str(exc).lower():
            try:
                bytes(raw).decode("utf-8")
            except UnicodeDecodeError as uexc:
                return Rejection(INVALID_UTF8, f"byte {uexc.start}: {uexc.reason}")
        return Rejection(NOT_JSON, str(exc)[:200])
    if not isinstance(obj, dict):
        return Rejection(NOT_OBJECT, f"top-level JSON is {type(obj).__name__}")
    return validate(obj, reference_ms)


def validate(obj: dict[str, Any], reference_ms: int | None = None) -> dict[str, Any] | Rejection:
    """Validate an already-decoded message object (see :func:`parse`)."""
    for name in REQUIRED_FIELDS:
        if obj.get(name) is None:
            return Rejection(MISSING_FIELD, name)
    user_id = obj["user_id"]
    item_id = obj["item_id"]
    itype = obj["interaction_type"]
    ts = obj["timestamp"]
    for name, value in (("user_id", user_id), ("item_id", item_id)):
        if not isinstance(value, str) or not value or len(value) > _MAX_ID_LEN:
            return Rejection(WRONG_TYPE, f"{name} must be a non-empty string of at most {_MAX_ID_LEN} characters")
    if not isinstance(itype, str):
        return Rejection(WRONG_TYPE, "interaction_type must be a string")
    problem = interaction_type_problem(itype)
    if problem:
        return Rejection(INVALID_INTERACTION_TYPE, problem)
    if not isinstance(ts, str):
        return Rejection(WRONG_TYPE, "timestamp must be an ISO-8601 string")
    ts_ms = parse_timestamp(ts)
    if ts_ms is None:
        return Rejection(TIMESTAMP_UNPARSABLE, f"{ts[:40]!r}")
    ref = reference_ms if reference_ms is not None else time.time_ns() // 1_000_000
    if ts_ms < MIN_TIME_MS or ts_ms > ref + MAX_FUTURE_MS:
        return Rejection(TIMESTAMP_OUT_OF_RANGE, f"{ts[:40]!r} is before 2000-01-01 or more than 1 day ahead")
    event_id = obj.get("event_id")
    if event_id is not None:
        if not isinstance(event_id, str):
            return Rejection(WRONG_TYPE, "event_id must be a UUID string")
        if not _CANONICAL_UUID.match(event_id):  # the common case is already canonical; uuid.UUID is slow
            try:
                event_id = str(uuid.UUID(event_id))
            except ValueError:
                return Rejection(WRONG_TYPE, "event_id is not a UUID")
    split = split_properties(obj)
    if isinstance(split, str):
        return Rejection(WRONG_TYPE, split)
    known, properties = split
    optional: dict[str, str] = {}
    for name in (*_OPTIONAL_STR, *EXPERIMENT_FIELDS):
        value = obj.get(name)
        if value is None:
            value = known.get(name)
        if value is None:
            optional[name] = ""
        elif isinstance(value, str) and len(value) <= _MAX_STR_LEN:
            optional[name] = value
        else:
            return Rejection(WRONG_TYPE, f"{name} must be a string of at most {_MAX_STR_LEN} characters")
    price = obj.get("price")
    if price is None:
        price = known.get("price")
    if price is None:
        price = 0.0
    elif isinstance(price, (int, float)) and not isinstance(price, bool) and 0 <= price < 1e10:
        price = float(price)
    else:
        return Rejection(WRONG_TYPE, "price must be a non-negative number")
    version = obj.get("schema_version", SCHEMA_VERSION)
    if not isinstance(version, int) or isinstance(version, bool) or not 0 <= version <= 255:
        return Rejection(WRONG_TYPE, "schema_version must be an integer 0..255")
    return {  # the order of FIELDS
        "event_id": event_id,
        "user_id": user_id,
        "session_id": optional["session_id"],
        "item_id": item_id,
        "interaction_type": itype,
        "timestamp_ms": ts_ms,
        "page": optional["page"],
        "referrer": optional["referrer"],
        "device": optional["device"],
        "country": optional["country"],
        "price": price,
        "currency": optional["currency"],
        "schema_version": version,
        "experiment_name": optional["experiment_name"],
        "experiment_variation": optional["experiment_variation"],
        "properties": properties,
    }


_NO_PROPERTIES = "{}"
_NO_KNOWN: dict[str, Any] = {}


def split_properties(obj: dict[str, Any]) -> tuple[dict[str, Any], str] | str:
    """The message's ``metadata``/``properties`` objects as (event fields they fill, JSON text of the other keys).

    Returns the detail of a ``wrong_type`` rejection instead when one of them is not an object. The values of the
    fields are returned as sent (the caller checks their types); null values are left out (a JSON null is no value).
    """
    known: dict[str, Any] | None = None
    other: dict[str, Any] | None = None
    for name in PROPERTY_OBJECTS:
        props = obj.get(name)
        if props is None:
            continue
        if type(props) is not dict:
            return f"{name} must be an object"
        for key, value in props.items():
            if value is None:
                continue
            field_name = PROPERTY_FIELDS.get(key)
            if field_name is None:
                if other is None:
                    other = {}
                other[key] = value
            else:
                if known is None:
                    known = {}
                known[field_name] = value
    text = orjson.dumps(other).decode() if other else _NO_PROPERTIES
    return (known if known is not None else _NO_KNOWN), text


# --- the sink's fast path ---------------------------------------------------------------------------------------

_ROW = operator.itemgetter(*FIELDS)


def parse_row(
    raw: bytes | bytearray | memoryview | str | None, reference_ms: int | None
) -> tuple[Any, ...] | Rejection:
    """:func:`parse` for the sink: the event as a tuple in :data:`FIELDS` order, or the :class:`Rejection`.

    The tuple holds exactly the values of the dict :func:`parse` returns (``event_id`` may be None), so a batch can
    keep rows as tuples and transpose them into insert columns in C. The common, plainly valid message is checked
    here without building the dict; anything else — every invalid message, and every valid one that needs
    normalising (e.g. an upper-case UUID) — goes through :func:`parse` itself, so reasons, details and rows are
    those of :func:`parse` by construction.
    """
    if type(raw) is bytes and len(raw) <= MAX_MESSAGE_BYTES:
        try:
            obj = orjson.loads(raw)
        except orjson.JSONDecodeError:
            obj = None
        if type(obj) is dict:
            plain = _plain_row(obj, reference_ms)
            if plain is not None:
                return plain
    result = parse(raw, reference_ms) if raw is not None else Rejection(NOT_JSON, "empty message (null value)")
    if isinstance(result, Rejection):
        return result
    row: tuple[Any, ...] = _ROW(result)
    return row


def _plain_row(obj: dict[str, Any], reference_ms: int | None) -> tuple[Any, ...] | None:
    """The values :func:`validate` returns for ``obj``, in :data:`FIELDS` order, if ``obj`` needs no normalising.

    None means "not plainly valid: ask :func:`validate`". The checks are validate()'s acceptance conditions, unrolled.
    orjson yields exact ``str``/``int``/``float``/``bool`` types, so ``type(x) is str`` here agrees with validate()'s
    ``isinstance`` checks (and ``type(x) is int`` excludes ``bool``, as validate() does).
    """
    get = obj.get
    user_id = get("user_id")
    item_id = get("item_id")
    itype = get("interaction_type")
    ts = get("timestamp")
    if (
        type(user_id) is not str
        or type(item_id) is not str
        or type(itype) is not str
        or type(ts) is not str
        or not user_id
        or not item_id
        or len(user_id) > _MAX_ID_LEN
        or len(item_id) > _MAX_ID_LEN
        or not (
            itype in _INTERACTIONS
            or (len(itype) <= MAX_INTERACTION_TYPE_LEN and _INTERACTION_TYPE_RE.match(itype) is not None)
        )
    ):
        return None
    ts_ms = parse_timestamp(ts)
    if ts_ms is None:
        return None
    ref = reference_ms if reference_ms is not None else time.time_ns() // 1_000_000
    if ts_ms < MIN_TIME_MS or ts_ms > ref + MAX_FUTURE_MS:
        return None
    event_id = get("event_id")
    if event_id is not None and (type(event_id) is not str or not _CANONICAL_UUID.match(event_id)):
        return None
    if "metadata" in obj or "properties" in obj:
        split = split_properties(obj)
        if isinstance(split, str):
            return None
        known, properties = split
        if "price" in known:
            return None  # rare: validate() checks it
    else:
        known, properties = _NO_KNOWN, _NO_PROPERTIES
    optional = []
    for name in _OPTIONAL_AND_EXPERIMENT:  # session_id, page, referrer, device, country, currency, experiment_*
        value = get(name)
        if value is None:
            value = known.get(name) if known else None
            if value is None:
                value = ""
        if type(value) is not str or len(value) > _MAX_STR_LEN:
            return None
        optional.append(value)
    session_id, page, referrer, device, country, currency, experiment_name, experiment_variation = optional
    price = get("price")
    if price is None:
        price = 0.0
    elif (type(price) is float or type(price) is int) and 0 <= price < 1e10:
        price = float(price)
    else:
        return None
    version = get("schema_version", SCHEMA_VERSION)
    if type(version) is not int or not 0 <= version <= 255:
        return None
    return (
        event_id,
        user_id,
        session_id,
        item_id,
        itype,
        ts_ms,
        page,
        referrer,
        device,
        country,
        price,
        currency,
        version,
        experiment_name,
        experiment_variation,
        properties,
    )


_OPTIONAL_AND_EXPERIMENT = (*_OPTIONAL_STR, *EXPERIMENT_FIELDS)


def encode(event: dict[str, Any]) -> bytes:
    """Serialise an event dict for the wire (orjson). ``timestamp_ms`` becomes the ISO ``timestamp`` field, and a
    ``properties`` JSON text (as :func:`parse` returns it) the object it holds."""
    if "timestamp_ms" in event or isinstance(event.get("properties"), str):
        event = dict(event)
        if "timestamp_ms" in event:
            event["timestamp"] = format_timestamp(event.pop("timestamp_ms"))
        if isinstance(event.get("properties"), str):
            event["properties"] = orjson.Fragment(event["properties"])
    return orjson.dumps(event)
