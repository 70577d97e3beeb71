"""A throwaway broker for benchmarks and test fixtures, on free loopback ports, the environment a child process
gets when it must not inherit the caller's services, and what the browser tests and benchmarks share (Chromium's
flags, a script that loads events through the real pipeline)."""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Iterator
from pathlib import Path

from ..settings import Settings
from .broker import KafkaStack


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without KAFKA_*/CLICKHOUSE_*/CLICKSTREAM_* (plus ``extra``): what
    ``Settings.from_env`` and child processes should see when they must not inherit the caller's services."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KAFKA_", "CLICKHOUSE_", "CLICKSTREAM_"))}
    env.update(extra)
    return env


@contextlib.contextmanager
def throwaway_broker(home: Path, timeout_s: float = 120.0) -> Iterator[KafkaStack]:
    """A real Kafka broker on free loopback ports with its files under ``home``, stopped on exit.

    For benchmarks and test fixtures: ``stack.url`` and ``stack.controller_port`` say where it listens.
    """
    settings = Settings.from_env(
        clean_env(),
        kafka_broker_url=f"127.0.0.1:{free_port()}",
        kafka_controller_port=free_port(),
        data_dir=home,
    )
    stack = KafkaStack(settings)
    stack.up(timeout_s=timeout_s)
    try:
        yield stack
    finally:
        stack.down()


# Debian's headless Chromium, driven by Playwright (never `playwright install`).
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

# Run in a fresh interpreter: produce and sink {n} events (seed, rate, profile) into the store of its settings.
LOAD_EVENTS = """
import json, time
from clickstream_lib.settings import Settings
from clickstream_lib.store import connect
from clickstream_lib.producer import Producer
from clickstream_lib.sink import Sink
from clickstream_lib.generator import CaseStudyGenerator
settings = Settings.from_env()
store = connect(settings)
sink = Sink(settings, store)
sink.start()
generator = CaseStudyGenerator(seed={seed}) if {profile!r} == "case-study" else None
producer = Producer(settings, rate={rate}, seed={seed}, generator=generator)
producer.start(events={n})
acked = producer.wait(300).acked
deadline = time.monotonic() + 300  # generous: CI machines are shared
while time.monotonic() < deadline and int(sink.stats().rows_inserted) < acked:
    time.sleep(0.2)
producer.close()
sink.stop()
count = int(store.scalar(f"SELECT count() FROM {{store.table('events')}}"))
print(json.dumps({{"count": count, "acked": acked, "rows_inserted": sink.stats().rows_inserted}}))
"""
