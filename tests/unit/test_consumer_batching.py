"""Pure logic of the sink: tokens, recorded ranges, deterministic batches, backoff, live figures."""

from __future__ import annotations

import re

import numpy as np
import orjson
import pytest

from clickstream_lib import consumer, events, store
from clickstream_lib.consumer import (
    DEAD_LETTER_COLUMNS,
    EVENT_COLUMNS,
    Sink,
    SinkStats,
    _Batch,
    _Window,
    backoff_s,
    batch_token,
    crc32c_accelerated,
    decode_pending,
    encode_pending,
)
from clickstream_lib.settings import Settings

T0 = 1_795_000_000_000  # 2026-11-18, a Kafka record timestamp


def _event(ts_ms: int, **kw: object) -> bytes:
    return orjson.dumps(
        {
            "user_id": "user_0001",
            "item_id": "item_0002",
            "interaction_type": "view",
            "timestamp": events.format_timestamp(ts_ms),
            **kw,
        }
    )


def test_token_names_topic_epoch_partition_and_range() -> None:
    assert batch_token("clicks", "a1b2c3", 4, 100, 199) == "clicks@a1b2c3:4:100-199"


def test_pending_range_round_trips_and_rejects_what_it_did_not_write() -> None:
    meta = encode_pending("a1b2c3", 100, 199)
    assert decode_pending(meta, "a1b2c3") == (100, 199)
    assert decode_pending(meta, "ffffff") is None  # the topic was re-created: its offsets restarted
    for other in (
        "",
        None,
        "hello",
        "clickstream-sink/1 a1b2c3 199-100",
        "clickstream-sink/1 a1b2c3 x-1",
        "clickstream-sink/2 a1b2c3 1-2",
        "clickstream-sink/1 a1b2c3 12",
    ):
        assert decode_pending(other, "a1b2c3") is None, other


def test_backoff_doubles_and_is_capped() -> None:
    assert [backoff_s(a, 0.25, 5.0) for a in range(1, 9)] == [0.25, 0.5, 1.0, 2.0, 4.0, 5.0, 5.0, 5.0]


def _build(records: list[tuple[int, int, bytes | None]]) -> _Batch:
    b = _Batch("clicks", "e1", 2, started=0.0)
    for offset, ts, value in records:
        b.add(offset, ts, None, value)
    return b


def test_a_replayed_range_gives_the_same_rows_and_decisions() -> None:
    records = [
        (10, T0, _event(T0 - 5_000, event_id="0b6f6f3e-9d3a-4c1e-8b51-5b1c2d3e4f50")),
        (11, T0, _event(T0 - 4_000)),  # no event_id: derived from topic/partition/offset
        (12, T0, b"{oops"),
        (13, T0, _event(T0 + 2 * 86_400_000)),  # two days after its own record timestamp
        (14, T0 + 3 * 86_400_000, _event(T0 + 2 * 86_400_000)),  # the same event, recorded later: valid
        (15, T0, None),
    ]
    first, again = _build(records), _build(records)
    assert (first.first, first.last, first.token) == (10, 15, "clicks@e1:2:10-15")
    assert first.event_columns() == again.event_columns()
    assert first.dead_columns() == again.dead_columns()
    cols = dict(zip(EVENT_COLUMNS, first.event_columns(), strict=True))
    assert cols["kafka_offset"] == [10, 11, 14]
    assert cols["event_id"][0] == "0b6f6f3e-9d3a-4c1e-8b51-5b1c2d3e4f50"
    assert cols["event_id"][1] == events.derived_event_id("clicks", 2, 11)
    assert cols["event_time"] == [T0 - 5_000, T0 - 4_000, T0 + 2 * 86_400_000]
    assert cols["kafka_partition"] == [2, 2, 2] and cols["kafka_topic"] == ["clicks"] * 3
    dead = dict(zip(DEAD_LETTER_COLUMNS, first.dead_columns(), strict=True))
    assert dead["reason"] == [events.NOT_JSON, events.TIMESTAMP_OUT_OF_RANGE, events.NOT_JSON]
    assert dead["raw"] == [b"{oops", records[3][2], b""]
    assert dead["kafka_offset"] == [12, 13, 15]
    assert len(first) == 6


def test_columns_match_the_tables_of_migration_1() -> None:
    ddl = " ".join(store.MIGRATIONS[0].statements)

    def columns(table: str) -> list[str]:
        body = ddl.split(f"{{db}}.{table}")[1].split("ENGINE")[0]
        return re.findall(r"^\s*([a-z_]+)\s+[A-Z]", body, flags=re.M)

    assert set(EVENT_COLUMNS) | {"ingest_time"} == set(columns("events"))
    assert set(DEAD_LETTER_COLUMNS) | {"ingest_time"} == set(columns("dead_letters"))
    # The parsed fields are the event columns in order (timestamp_ms is stored as event_time).
    assert [("event_time" if f == "timestamp_ms" else f) for f in events.FIELDS] == list(EVENT_COLUMNS[:13])


def test_window_rate_and_percentiles() -> None:
    w = _Window()
    assert w.percentiles() == (None, None, None, None)
    w.add(100.0, 1_000, np.arange(1, 101, dtype=np.float64), np.full(100, 7.0))
    w.add(101.0, 1_000, np.array([], dtype=np.float64), np.array([], dtype=np.float64))
    e50, e99, k50, k99 = w.percentiles()
    assert e50 == pytest.approx(50.5) and e99 == pytest.approx(99.01)
    assert k50 == k99 == 7.0
    assert w.rate(101.0, started=91.0) == pytest.approx(200.0)  # 2000 rows over the 10 s window
    assert w.rate(200.0, started=91.0) == 0.0  # old batches age out


def test_stats_read_as_dataclass_or_mapping() -> None:
    s = SinkStats(rows_inserted=5, lag={0: 3, 1: 4}, dead_letters_by_reason={"not_json": 1})
    assert s.total_lag == 7
    assert s.get("rows_inserted") == 5 and s.get("nope", 1) == 1
    d = s.as_dict()
    assert d["lag"] == {"0": 3, "1": 4} and d["dead_letters_by_reason"] == {"not_json": 1}
    with pytest.raises(AttributeError):
        s.rows_inserted = 6  # type: ignore[misc]


def test_crc32c_extension_is_active() -> None:
    assert crc32c_accelerated()


def test_sink_rejects_nonsense_limits() -> None:
    settings = Settings()
    with pytest.raises(ValueError, match="batch_max_rows"):
        Sink(settings, batch_max_rows=0)
    with pytest.raises(ValueError, match="batch_max_wait_s"):
        Sink(settings, batch_max_wait_s=0)
    assert consumer.DEFAULT_BATCH_MAX_ROWS >= 10_000 or consumer.DEFAULT_BATCH_MAX_WAIT_S <= 1.0
