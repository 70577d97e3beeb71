"""The event schema: parsing, the fixed set of rejection reasons, timestamps, and the JSON Schema file."""

from __future__ import annotations

import random

import jsonschema
import orjson
import pytest

from clickstream_lib import events
from clickstream_lib.events import REASONS, Rejection, parse

_REF = events.parse_timestamp("2026-11-29T10:00:00Z")
assert _REF is not None
REF: int = _REF
assert REF is not None

CASE_STUDY = (
    b'{"user_id": "user_0042", "item_id": "item_0007", "interaction_type": "click", "timestamp": "2026-11-29 10:00:00"}'
)

FULL = {
    "event_id": "0b6f7c1e-1111-4222-8333-123456789abc",
    "user_id": "user_0042",
    "session_id": "s0123456789abcdef",
    "item_id": "item_0007",
    "interaction_type": "purchase",
    "timestamp": "2026-11-29T10:00:00.123Z",
    "page": "/checkout/complete",
    "referrer": "search",
    "device": "mobile",
    "country": "DE",
    "price": 19.99,
    "currency": "EUR",
    "schema_version": 1,
}


# The case study's final producer: six types and a nested metadata object.
CASE_STUDY_METADATA = {
    "user_id": "user_0042",
    "item_id": "item_0007",
    "interaction_type": "open_app",
    "timestamp": "2026-11-29 10:00:00",
    "metadata": {
        "experiment_name": "checkout_button",
        "experiment_variation": "variant_b",
        "session_id": "5f1c9a",
        "device_name": "iPhone 15",
    },
}


def _without(name: str) -> bytes:
    return orjson.dumps({k: v for k, v in FULL.items() if k != name})


# One or more messages per reason; test_every_reason_has_a_case keeps this table complete.
INVALID: list[tuple[bytes | str, str]] = [
    (b'{"user_id": "user_0042", "item_id": ', events.NOT_JSON),
    (b"", events.NOT_JSON),
    (b"user_0042,item_0007,click", events.NOT_JSON),
    (b'{"user_id": "user_\xff\xfe", "item_id": "i", "interaction_type": "view"}', events.INVALID_UTF8),
    ('{"user_id": "\udc80"}', events.INVALID_UTF8),
    (b"[1, 2, 3]", events.NOT_OBJECT),
    (b'"a string"', events.NOT_OBJECT),
    (b"null", events.NOT_OBJECT),
    (_without("user_id"), events.MISSING_FIELD),
    (_without("timestamp"), events.MISSING_FIELD),
    (orjson.dumps({**FULL, "item_id": None}), events.MISSING_FIELD),
    (orjson.dumps({**FULL, "user_id": 42}), events.WRONG_TYPE),
    (orjson.dumps({**FULL, "user_id": ""}), events.WRONG_TYPE),
    (orjson.dumps({**FULL, "timestamp": 1795946400}), events.WRONG_TYPE),
    (orjson.dumps({**FULL, "price": "19.99"}), events.WRONG_TYPE),
    (orjson.dumps({**FULL, "price": -1}), events.WRONG_TYPE),
    (orjson.dumps({**FULL, "event_id": "not-a-uuid"}), events.WRONG_TYPE),
    (orjson.dumps({**FULL, "schema_version": True}), events.WRONG_TYPE),
    (orjson.dumps({**FULL, "device": ["mobile"]}), events.WRONG_TYPE),
    (orjson.dumps({**FULL, "interaction_type": 7}), events.WRONG_TYPE),
    (orjson.dumps({**FULL, "metadata": ["a"]}), events.WRONG_TYPE),
    (orjson.dumps({**FULL, "properties": "plan=pro"}), events.WRONG_TYPE),
    (orjson.dumps({**FULL, "device": None, "metadata": {"device_name": 5}}), events.WRONG_TYPE),
    (orjson.dumps({**FULL, "experiment_name": ["a"]}), events.WRONG_TYPE),
    (orjson.dumps({**FULL, "metadata": {"experiment_variation": "v" * 2049}}), events.WRONG_TYPE),
    (orjson.dumps({**FULL, "interaction_type": ""}), events.INVALID_INTERACTION_TYPE),
    (orjson.dumps({**FULL, "interaction_type": "view\n"}), events.INVALID_INTERACTION_TYPE),
    (orjson.dumps({**FULL, "interaction_type": "open\x00app"}), events.INVALID_INTERACTION_TYPE),
    (orjson.dumps({**FULL, "interaction_type": " login"}), events.INVALID_INTERACTION_TYPE),
    (orjson.dumps({**FULL, "interaction_type": "order  completed"}), events.INVALID_INTERACTION_TYPE),
    (orjson.dumps({**FULL, "interaction_type": "a" * 65}), events.INVALID_INTERACTION_TYPE),
    (orjson.dumps({**FULL, "interaction_type": "caf\u00e9"}), events.INVALID_INTERACTION_TYPE),
    (orjson.dumps({**FULL, "timestamp": "yesterday"}), events.TIMESTAMP_UNPARSABLE),
    (orjson.dumps({**FULL, "timestamp": "2026-13-01T00:00:00Z"}), events.TIMESTAMP_UNPARSABLE),
    (orjson.dumps({**FULL, "timestamp": "1999-12-31T23:59:59.999Z"}), events.TIMESTAMP_OUT_OF_RANGE),
    (orjson.dumps({**FULL, "timestamp": "2026-11-30T10:00:00.001Z"}), events.TIMESTAMP_OUT_OF_RANGE),
    (orjson.dumps({**FULL, "page": "/" + "x" * events.MAX_MESSAGE_BYTES}), events.TOO_LARGE),
    ("{" + " " * events.MAX_MESSAGE_BYTES + "}", events.TOO_LARGE),
]


# Event names seen in real clickstreams: the case study's, dotted, PostHog's and Segment's spellings.
OPEN_TYPES = ("open_app", "login", "payment_initiated", "cart.item_added", "$pageview", "Order Completed", "a" * 64)


@pytest.mark.parametrize("itype", OPEN_TYPES)
def test_any_sane_interaction_type_is_valid(itype: str) -> None:
    event = parse(orjson.dumps({**FULL, "interaction_type": itype}), reference_ms=REF)
    assert not isinstance(event, Rejection), event
    assert event["interaction_type"] == itype
    assert events.parse_row(orjson.dumps({**FULL, "interaction_type": itype}), REF) == tuple(event.values())


def test_metadata_fills_the_known_columns_and_keeps_the_rest_as_properties() -> None:
    event = parse(orjson.dumps(CASE_STUDY_METADATA), reference_ms=REF)
    assert not isinstance(event, Rejection), event
    assert list(event) == list(events.FIELDS)
    assert (event["experiment_name"], event["experiment_variation"]) == ("checkout_button", "variant_b")
    assert (event["session_id"], event["device"], event["properties"]) == ("5f1c9a", "iPhone 15", "{}")
    # Other keys (any JSON value, nested ones too) are kept; a field the message sets itself wins over metadata.
    msg = {
        **FULL,
        "device": "desktop",
        "metadata": {"device_name": "iPhone", "plan": "pro", "seats": 3, "utm": {"source": "ads"}, "gone": None},
        "properties": {"plan": "team", "experiment_name": "e1"},
    }
    event = parse(orjson.dumps(msg), reference_ms=REF)
    assert not isinstance(event, Rejection), event
    assert event["device"] == "desktop" and event["experiment_name"] == "e1"
    assert orjson.loads(event["properties"]) == {"plan": "team", "seats": 3, "utm": {"source": "ads"}}
    assert events.parse_row(orjson.dumps(msg), REF) == tuple(event.values())
    assert parse(events.encode(event), reference_ms=REF) == event


def test_case_study_message_parses_as_it_is() -> None:
    event = parse(CASE_STUDY, reference_ms=REF)
    assert not isinstance(event, Rejection), event
    assert list(event) == list(events.FIELDS)
    assert event["user_id"] == "user_0042"
    assert event["item_id"] == "item_0007"
    assert event["interaction_type"] == "click"
    assert event["timestamp_ms"] == REF  # naive "YYYY-MM-DD HH:MM:SS" is UTC
    assert event["event_id"] is None  # the sink derives one from topic/partition/offset
    assert event["price"] == 0.0 and event["currency"] == "" and event["schema_version"] == events.SCHEMA_VERSION


def test_full_message_is_normalised() -> None:
    event = parse(orjson.dumps(FULL), reference_ms=REF)
    assert not isinstance(event, Rejection), event
    assert event["timestamp_ms"] == REF + 123
    assert event["price"] == 19.99 and event["currency"] == "EUR"
    assert event["event_id"] == FULL["event_id"]
    upper = parse(orjson.dumps({**FULL, "event_id": str(FULL["event_id"]).upper()}), reference_ms=REF)
    assert not isinstance(upper, Rejection) and upper["event_id"] == FULL["event_id"]


@pytest.mark.parametrize(("raw", "reason"), INVALID, ids=[f"{i}-{r}" for i, (_, r) in enumerate(INVALID)])
def test_each_invalid_class_gives_its_reason(raw: bytes | str, reason: str) -> None:
    result = parse(raw, reference_ms=REF)
    assert isinstance(result, Rejection), result
    assert result.reason == reason, result
    assert result.detail  # says where


def test_every_reason_has_a_case() -> None:
    assert {reason for _, reason in INVALID} == set(REASONS)
    assert len(set(REASONS)) == len(REASONS)


def test_parse_never_raises_on_garbage() -> None:
    rng = random.Random(7)
    valid = orjson.dumps(FULL)
    samples: list[bytes] = [bytes(rng.getrandbits(8) for _ in range(rng.randrange(0, 64))) for _ in range(500)]
    for _ in range(2000):  # mutate one byte, drop a slice, or splice in junk
        b = bytearray(valid)
        i = rng.randrange(len(b))
        op = rng.randrange(3)
        if op == 0:
            b[i] = rng.getrandbits(8)
        elif op == 1:
            del b[i : i + rng.randrange(1, 20)]
        else:
            b[i:i] = bytes(rng.getrandbits(8) for _ in range(rng.randrange(1, 8)))
        samples.append(bytes(b))
    samples += [b"{}", b"{" * 10_000, b"[" * 100_000, b'{"timestamp": "9999-12-31T23:59:59+14:00"}']
    reasons: set[str] = set()
    for raw in samples:
        result = parse(raw, reference_ms=REF)
        if isinstance(result, Rejection):
            assert result.reason in REASONS
            reasons.add(result.reason)
        else:
            assert list(result) == list(events.FIELDS)
    assert len(reasons) >= 5  # the fuzz reached many branches, not one


def test_timestamp_range_edges() -> None:
    def reason(ts: str) -> str | None:
        r = parse(orjson.dumps({**FULL, "timestamp": ts}), reference_ms=REF)
        return r.reason if isinstance(r, Rejection) else None

    assert reason("2000-01-01T00:00:00.000Z") is None
    assert reason("1999-12-31T23:59:59.999Z") == events.TIMESTAMP_OUT_OF_RANGE
    assert reason("2026-11-30T10:00:00.000Z") is None  # exactly one day ahead
    assert reason("2026-11-30T10:00:00.001Z") == events.TIMESTAMP_OUT_OF_RANGE
    assert reason("2026-11-30T11:00:00.000+01:00") is None  # offsets count
    assert reason("0001-01-01T00:00:00+14:00") in (events.TIMESTAMP_UNPARSABLE, events.TIMESTAMP_OUT_OF_RANGE)


def test_message_size_limit_is_exact() -> None:
    base = orjson.dumps({**FULL, "note": ""})  # unknown fields are allowed (and ignored)
    pad = events.MAX_MESSAGE_BYTES - len(base)
    at_limit = orjson.dumps({**FULL, "note": "/" * pad})
    assert len(at_limit) == events.MAX_MESSAGE_BYTES
    assert not isinstance(parse(at_limit, reference_ms=REF), Rejection)
    over = orjson.dumps({**FULL, "note": "/" * (pad + 1)})
    assert parse(over, reference_ms=REF) == Rejection(events.TOO_LARGE, f"{len(over)} bytes > 65536")


def test_timestamps_are_exact_to_the_millisecond() -> None:
    base = events.parse_timestamp("2026-11-29T10:00:00Z")
    assert base is not None
    for ms in range(0, 86_400_000, 86_400_000 // 997 + 1):  # ~1000 values across a day, every ms digit pattern
        ts = base + ms
        text = events.format_timestamp(ts)
        assert text.endswith("Z") and len(text) == 24
        assert events.parse_timestamp(text) == ts
    for ms in range(1000):
        assert events.parse_timestamp(f"2026-11-29T10:00:00.{ms:03d}Z") == base + ms
    assert events.parse_timestamp("2026-11-29T10:00:00.1239Z") == base + 123  # sub-ms truncates
    assert events.parse_timestamp("2026-11-29T11:00:00+01:00") == base
    assert events.parse_timestamp("") is None
    assert events.parse_timestamp("2026-11-29T10:00:00Zjunk") is None


def test_encode_round_trips() -> None:
    event = parse(orjson.dumps(FULL), reference_ms=REF)
    assert not isinstance(event, Rejection)
    assert parse(events.encode(event), reference_ms=REF) == event


def test_derived_event_id_is_deterministic_and_distinct() -> None:
    a = events.derived_event_id("clicks", 0, 41)
    assert a == events.derived_event_id("clicks", 0, 41)
    assert len({a, events.derived_event_id("clicks", 0, 42), events.derived_event_id("clicks", 1, 41)}) == 3
    event = events.parse(orjson.dumps({**FULL, "event_id": a}), reference_ms=REF)
    assert not isinstance(event, Rejection) and event["event_id"] == a


def test_json_schema_file_agrees_with_parse() -> None:
    schema = events.json_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    assert validator.is_valid(orjson.loads(CASE_STUDY))
    assert validator.is_valid(FULL)
    assert set(schema["properties"]) == {"timestamp" if f == "timestamp_ms" else f for f in events.FIELDS} | {
        "metadata"
    }
    assert validator.is_valid(CASE_STUDY_METADATA)
    assert validator.is_valid({**FULL, "properties": {"plan": "pro", "seats": 3}})
    itype = schema["properties"]["interaction_type"]
    assert (itype["pattern"], itype["maxLength"]) == (events.INTERACTION_TYPE_PATTERN, events.MAX_INTERACTION_TYPE_LEN)
    for name in (*events.INTERACTION_TYPES, *OPEN_TYPES):
        assert validator.is_valid({**FULL, "interaction_type": name}), name
    # What a schema can express, it rejects too.
    schema_reasons = {events.MISSING_FIELD, events.WRONG_TYPE, events.INVALID_INTERACTION_TYPE}
    checked = 0
    for raw, reason in INVALID:
        unparsable_text = reason == events.TIMESTAMP_UNPARSABLE and isinstance(raw, bytes) and b"yesterday" in raw
        if reason in schema_reasons or unparsable_text:
            assert not validator.is_valid(orjson.loads(raw)), raw
            checked += 1
    assert checked >= 10


# --- the sink's fast path: parse_row gives what parse gives -----------------------------------------------------


def _same_as_parse(
    raw: bytes | bytearray | str | None, reference_ms: int | None = REF
) -> tuple[object, ...] | Rejection:
    """parse_row(raw) checked against parse(raw): the same rejection (reason and detail) or the same values."""
    row = events.parse_row(raw, reference_ms)
    expected = parse(raw, reference_ms) if raw is not None else Rejection(events.NOT_JSON, "empty message (null value)")
    if isinstance(expected, Rejection):
        assert isinstance(row, Rejection) and row == expected, (raw, row, expected)
        assert (row.reason, row.detail) == (expected.reason, expected.detail)
    else:
        assert not isinstance(row, Rejection), (raw, row)
        assert row == tuple(expected[f] for f in events.FIELDS), raw
        assert [type(v) for v in row] == [type(expected[f]) for f in events.FIELDS], raw  # 0.0 stays a float
    return row


@pytest.mark.parametrize(("raw", "reason"), INVALID, ids=[f"{i}-{r}" for i, (_, r) in enumerate(INVALID)])
def test_parse_row_rejects_each_invalid_class_as_parse_does(raw: bytes | str, reason: str) -> None:
    row = _same_as_parse(raw)
    assert isinstance(row, Rejection) and row.reason == reason


def test_parse_row_gives_the_rows_of_parse() -> None:
    uuid_upper = str(FULL["event_id"]).upper()
    cases: list[bytes | bytearray | str | None] = [
        CASE_STUDY,
        orjson.dumps(FULL),
        orjson.dumps({**FULL, "event_id": uuid_upper}),  # valid, but normalised: parse's own path
        orjson.dumps({**FULL, "event_id": "{" + str(FULL["event_id"]) + "}"}),
        orjson.dumps({**FULL, "price": 5}),  # an int price is stored as a float
        orjson.dumps({**FULL, "price": 0}),
        orjson.dumps({**FULL, "price": None, "currency": None, "page": None}),
        orjson.dumps({**FULL, "schema_version": 0}),
        orjson.dumps({k: v for k, v in FULL.items() if k != "schema_version"}),
        orjson.dumps({**FULL, "timestamp": "2026-11-29T10:00:00+02:00"}),
        orjson.dumps({**FULL, "timestamp": "2026-11-29 10:00:00.5"}),
        orjson.dumps({**FULL, "timestamp": "2026-11-29"}),
        orjson.dumps({**FULL, "extra": {"nested": [1, 2]}}),
        orjson.dumps(CASE_STUDY_METADATA),
        orjson.dumps({**FULL, "metadata": {"plan": "pro", "price": 3.5}, "price": None}),  # price from metadata
        orjson.dumps({**FULL, "metadata": {"price": "3"}, "price": None}),
        orjson.dumps({**FULL, "metadata": {}, "properties": None}),
        orjson.dumps({**FULL, "metadata": {"device_name": None, "k": [1, {"a": None}]}}),
        orjson.dumps({**FULL, "properties": 5}),
        orjson.dumps({**FULL, "user_id": "u" * 256, "page": "p" * 2048}),
        orjson.dumps({**FULL, "user_id": "u" * 257}),
        orjson.dumps({**FULL, "page": "p" * 2049}),
        orjson.dumps({**FULL, "price": True}),
        orjson.dumps({**FULL, "price": 1e10}),
        orjson.dumps({**FULL, "schema_version": 256}),
        orjson.dumps({**FULL, "schema_version": 1.0}),
        orjson.dumps({**FULL, "event_id": 7}),
        orjson.dumps({**FULL, "interaction_type": 3}),
        orjson.dumps({**FULL, "interaction_type": ["view"]}),  # unhashable: must not reach the set lookup
        orjson.dumps({**FULL, "timestamp": "2026-11-29T24:00:00.000Z"}),
        orjson.dumps({**FULL, "timestamp": "2026-11-29T10:00:00.123+14:00"}),
        bytearray(orjson.dumps(FULL)),
        orjson.dumps(FULL).decode(),
        None,
    ]
    for raw in cases:
        _same_as_parse(raw)
    _same_as_parse(orjson.dumps(FULL), reference_ms=None)  # the wall clock, as parse uses


def test_parse_row_agrees_with_parse_on_garbage_and_mutations() -> None:
    rng = random.Random(11)
    valid = [orjson.dumps(FULL), CASE_STUDY, orjson.dumps({**FULL, "price": None, "event_id": None})]
    outcomes: set[str] = set()
    for _ in range(3000):
        b = bytearray(rng.choice(valid))
        for _ in range(rng.randrange(1, 3)):
            i = rng.randrange(len(b))
            op = rng.randrange(3)
            if op == 0:
                b[i] = rng.choice(b'0123456789"{}[],:-. Zaez\\\xff') if rng.random() < 0.7 else rng.getrandbits(8)
            elif op == 1:
                del b[i : i + rng.randrange(1, 6)]
            else:
                b[i:i] = bytes(rng.getrandbits(8) for _ in range(rng.randrange(1, 4)))
        row = _same_as_parse(bytes(b))
        outcomes.add(row.reason if isinstance(row, Rejection) else "valid")
    assert "valid" in outcomes and len(outcomes) >= 6, outcomes  # both paths, many reasons
