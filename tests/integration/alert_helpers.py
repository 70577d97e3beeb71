"""Shared by the alert tests: a flash-sale history from the project's Generator, and a local webhook receiver.

``python -m tests.integration.alert_helpers fill spike|quiet`` fills the store of ``CLICKSTREAM_DATA_DIR`` (for the
CLI tests, whose store belongs to another process); ``fill day-before <ms>`` fills it with the ordinary day before
that moment (for tests whose sale goes through the live pipeline at the wall clock's time).
"""

from __future__ import annotations

import json
import sys
import threading
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np
import pandas as pd

from clickstream_lib.generator import EventBatch, Generator
from clickstream_lib.store import Store
from tests.integration.test_queries import EVENT_COLUMNS, insert_events

T0 = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)  # the flash sale starts
SALE_END = T0 + timedelta(minutes=10)
ITEM = "item_0007"
MIN = timedelta(minutes=1)

# The case study's rule (docs/alerts.md), with a floor of 5 purchases so single purchases of quiet items stay quiet.
CASE_STUDY_RULE = """\
[[rule]]
name = "item purchase spike"
kind = "relative"
query = "breakdown"
params = { by = "item_id" }
filters = { interaction_type = "purchase" }
value = "events"
key = "item_id"
window = "10m"
baseline = "24h"
factor = 1.5
min_value = 5
severity = "critical"
cooldown = "5m"
"""


def _ms(t: datetime) -> int:
    return int(t.timestamp() * 1000)


def as_rows(frame: pd.DataFrame, offset: int) -> pd.DataFrame:
    """A Generator frame as the events table holds it (as the sink writes it)."""
    m = len(frame)
    text = ("event_id", "user_id", "session_id", "item_id", "interaction_type", "page", "referrer", "device")
    df = frame.drop(columns=["timestamp_ms", "scenario"]).astype({c: object for c in (*text, "country", "currency")})
    df["price"] = df["price"].astype(float).round(2)
    df["event_time"] = pd.to_datetime(frame["timestamp_ms"], unit="ms", utc=True)
    df["kafka_topic"] = "clicks"
    df["kafka_partition"] = 0
    df["kafka_offset"] = np.arange(offset, offset + m)
    df["kafka_timestamp"] = df["event_time"]
    df["ingest_time"] = df["event_time"] + pd.Timedelta(milliseconds=50)
    return df[list(EVENT_COLUMNS)]


def timeline(spike: bool = True) -> list[EventBatch]:
    """24 hours of ordinary traffic before T0; with ``spike``, a 10-minute flash sale of ITEM from T0 (the
    ``flash_sale`` scenario, at four times the traffic), then 50 ordinary minutes. Deterministic."""
    gen = Generator(seed=11, n_users=3000, n_items=50)
    parts = [gen.backfill(_ms(T0 - timedelta(hours=24)), _ms(T0), 60_000)]
    if spike:
        gen.set_scenario("flash_sale", True, item=ITEM, share=0.9)
        parts.append(gen.backfill(_ms(T0), _ms(SALE_END), 2_000))
        gen.set_scenario("flash_sale", False)
        parts.append(gen.backfill(_ms(SALE_END), _ms(SALE_END + 50 * MIN), 2_100))
    return parts


LIVE_SALE = timedelta(minutes=2)  # the live sale's events are stamped over the 2 minutes before it is produced


def live_timeline(now_ms: int) -> tuple[EventBatch, EventBatch]:
    """Ordinary traffic over the 24 hours before ``now_ms - LIVE_SALE``, and a flash sale of ITEM over the
    ``LIVE_SALE`` up to ``now_ms`` (the same generator, seed and mix as :func:`timeline`). Deterministic."""
    gen = Generator(seed=11, n_users=3000, n_items=50)
    split = now_ms - int(LIVE_SALE.total_seconds() * 1000)
    day = gen.backfill(split - 24 * 3600 * 1000, split, 60_000)
    gen.set_scenario("flash_sale", True, item=ITEM, share=0.9)
    return day, gen.backfill(split, now_ms, 1_000)


def history(spike: bool = True) -> pd.DataFrame:
    """:func:`timeline` as the events table holds it."""
    out, offset = [], 0
    for part in timeline(spike):
        frame = part.to_frame()
        out.append(as_rows(frame, offset))
        offset += len(frame)
    return pd.concat(out, ignore_index=True)


def load(store: Store, spike: bool = True) -> pd.DataFrame:
    df = history(spike)
    assert insert_events(store, df) == len(df)
    return df


class Receiver:
    """A Slack-compatible incoming-webhook receiver on 127.0.0.1 (the standard library's http.server).

    ``Receiver(port)`` only reserves the address; :meth:`start` begins listening, so before it a POST gets
    connection refused.
    """

    def __init__(self, port: int) -> None:
        self.port = port
        self.bodies: list[dict[str, Any]] = []
        self.paths: list[str] = []
        self._server: ThreadingHTTPServer | None = None
        self._got = threading.Condition()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/services/T000/B000/secret-part"

    def start(self) -> Receiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with receiver._got:
                    receiver.bodies.append(json.loads(body))
                    receiver.paths.append(self.path)
                    receiver._got.notify_all()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def wait(self, n: int, timeout_s: float) -> bool:
        with self._got:
            return self._got.wait_for(lambda: len(self.bodies) >= n, timeout_s)

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()


def _fill(kind: str, *args: str) -> None:
    from clickstream_lib.settings import Settings
    from clickstream_lib.store import connect

    store = connect(Settings.from_env())
    try:
        if kind == "day-before":
            day, _ = live_timeline(int(args[0]))
            df = as_rows(day.to_frame(), 0)
            assert insert_events(store, df) == len(df)
        else:
            load(store, spike=kind == "spike")
    finally:
        store.close()


if __name__ == "__main__":
    _fill(sys.argv[2], *sys.argv[3:])
