"""The chaos campaign's bookkeeping (bench/chaos.py), without services: event ids that carry the producer's
incarnation and sequence number, and the ledger the oracle reads back after a kill -9."""

from __future__ import annotations

import sys
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))

from chaos import SEQ_BITS, event_id, read_ledger  # noqa: E402

from clickstream_lib import events  # noqa: E402


def test_event_ids_are_canonical_uuids_carrying_incarnation_and_sequence() -> None:
    run = uuid.uuid4().hex
    key = (7 << SEQ_BITS) | 123_456_789
    eid = event_id(run, key)
    assert str(uuid.UUID(eid)) == eid and eid.startswith(run[:8])
    assert int(eid[-12:], 16) == key  # what the oracle's SQL reads back from the last group
    parsed = events.parse(
        events.encode(
            {
                "event_id": eid,
                "user_id": "u",
                "item_id": "i",
                "interaction_type": "view",
                "timestamp_ms": 1_765_000_000_000,
            }
        )
    )
    assert isinstance(parsed, dict) and parsed["event_id"] == eid  # the sink stores it unchanged


def test_ledger_keeps_sends_and_acknowledgements_and_skips_a_line_cut_by_kill9(tmp_path: Path) -> None:
    ledger = tmp_path / "ledger.txt"
    ledger.write_text("S 0 0 99\nA 0 0 49\nA 0 51 99\nS 0 100 199\nS 1 0 99\nA 1 0 9\nA 1 1")
    sent, acked = read_ledger(ledger)
    assert sent == {0: 199, 1: 99}
    assert acked == {0: [(0, 49), (51, 99)], 1: [(0, 9)]}
