"""Alert delivery without a network: retries with capped backoff, permanent refusals, a full queue, and flush."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from clickstream_lib.alerts import DeliveryFailed, Dispatcher, WebhookNotifier
from clickstream_lib.errors import ConfigError


class Flaky:
    """Refuses (retriably) until ``up`` is set; records every attempt's time."""

    label = "flaky"

    def __init__(self) -> None:
        self.up = threading.Event()
        self.attempts: list[float] = []
        self.got: list[str] = []

    def send(self, body: dict[str, Any]) -> None:
        self.attempts.append(time.monotonic())
        if not self.up.is_set():
            raise DeliveryFailed("flaky not reachable")
        self.got.append(body["text"])


def test_submit_never_blocks_and_messages_arrive_in_order_once_the_receiver_is_up() -> None:
    flaky = Flaky()
    d = Dispatcher([flaky], backoff_s=0.05, max_backoff_s=0.2)
    started = time.monotonic()
    for i in range(3):
        d.submit({"text": f"m{i}"})
    assert time.monotonic() - started < 0.05
    time.sleep(1.0)
    assert flaky.got == [] and d.pending() == 3
    gaps = [b - a for a, b in zip(flaky.attempts, flaky.attempts[1:], strict=False)]
    assert gaps and max(gaps) < 0.2 + 0.1  # the backoff is capped
    assert len(flaky.attempts) >= 5  # doubling from 0.05 s reached the cap and kept trying
    flaky.up.set()
    assert d.flush(2)
    assert flaky.got == ["m0", "m1", "m2"]
    assert d.stats()["flaky"]["delivered"] == 3
    assert d.close() == 0


def test_a_permanent_refusal_is_dropped_and_the_next_message_goes_on() -> None:
    class Refuses:
        label = "refuses"

        def __init__(self) -> None:
            self.got: list[str] = []

        def send(self, body: dict[str, Any]) -> None:
            if body["text"] == "bad":
                raise DeliveryFailed("HTTP 404", retriable=False)
            self.got.append(body["text"])

    r = Refuses()
    d = Dispatcher([r])
    d.submit({"text": "bad"})
    d.submit({"text": "good"})
    assert d.flush(2)
    assert r.got == ["good"] and d.stats()["refuses"]["given_up"] == 1
    d.close()


def test_a_full_queue_drops_the_oldest() -> None:
    flaky = Flaky()
    d = Dispatcher([flaky], backoff_s=10, max_backoff_s=10, max_queue=2)
    for i in range(4):
        d.submit({"text": f"m{i}"})
    assert d.stats()["flaky"]["dropped"] >= 1
    assert d.close(0) >= 1  # close does not wait for a dead receiver beyond its timeout
    assert not flaky.got


def test_webhook_url_must_be_http_and_is_not_shown() -> None:
    with pytest.raises(ConfigError, match="scheme 'ftp'"):
        WebhookNotifier("ftp://example.com/x")
    hook = WebhookNotifier("https://hooks.slack.com/services/T0/B0/secret")
    assert hook.label == "webhook https://hooks.slack.com"
    assert "secret" not in repr(hook)


def test_connection_refused_is_retriable() -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    hook = WebhookNotifier(f"http://127.0.0.1:{port}/services/secret", timeout_s=2)
    with pytest.raises(DeliveryFailed) as info:
        hook.send({"text": "x"})
    assert info.value.retriable and "secret" not in str(info.value)
