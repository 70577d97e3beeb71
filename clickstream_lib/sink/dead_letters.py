"""Dead letters to the dead-letter topic: each settled on its own, a refusal no retry clears given up, the rest
retried."""

from __future__ import annotations

import logging
import time
from typing import Any

from kafka import KafkaProducer
from kafka.errors import (
    AuthorizationError,
    InvalidRecordError,
    InvalidTopicError,
    KafkaError,
    MessageSizeTooLargeError,
    RecordListTooLargeError,
)

from ..kafka_compat.producer import flush as producer_flush
from .batch import DEAD_LETTER_TOPIC_MAX_VALUE_BYTES, Batch, DeliveryError
from .stats import SinkFigures

logger = logging.getLogger(__name__)

DLQ_FLUSH_TIMEOUT_S = 10.0  # waiting for the dead-letter topic's acknowledgements, per round
# Refusals of a dead-letter record that no retry can clear: the record is given up (it is in the dead_letters table)
# and the partition moves on. A size refusal is first answered with a copy without the value.
DLQ_SIZE_ERRORS = (MessageSizeTooLargeError, RecordListTooLargeError)
DLQ_NEVER_CLEARS = (*DLQ_SIZE_ERRORS, InvalidRecordError, InvalidTopicError, AuthorizationError)


class DeadLetterPublisher:
    """Sends the dead letters of stored batches to ``topic``, with headers naming where each came from.

    Args:
        producer: a non-idempotent producer (an idempotent one takes a record refused as too large for a fatal
            error and then refuses every later one); the topic is at-least-once, the table exactly-once.
        topic: the dead-letter topic.
        source_topic: the topic the sink consumes (named in the headers).
        figures: counts the dead letters given up.
    """

    def __init__(self, producer: KafkaProducer, topic: str, source_topic: str, figures: SinkFigures) -> None:
        self.producer = producer
        self.topic = topic
        self.source_topic = source_topic
        self.figures = figures

    def send(self, batches: list[Batch]) -> None:
        """Send the batches' dead letters to the dead-letter topic; raises :class:`DeliveryError` to retry.

        Each record is settled on its own: acknowledged, or refused for good (:data:`DLQ_NEVER_CLEARS`: too large,
        not authorized, invalid topic). A size refusal is answered with the same record without its value (the
        headers say it was cut and how large it was); a record refused for good is given up — its dead letter is in
        the ``dead_letters`` table — counted in ``dead_letters_unpublished`` and logged, and the partition moves on.
        Any other error retries the round after a backoff, re-sending only the records not settled yet.
        """
        producer = self.producer
        pending = [b for b in batches if b.dead and not b.dlq_sent]
        if not pending:
            return
        topic = self.topic
        todo: list[tuple[Batch, int, bool]] = []  # (batch, index into its dead letters, with the value)
        for b in pending:
            if b.dlq_left is None:
                b.dlq_left = set(range(len(b.dead)))
            todo += [(b, i, True) for i in sorted(b.dlq_left)]
        retry: str | None = None
        while todo:
            sent: list[tuple[Batch, int, bool, Any]] = []
            for b, i, with_value in todo:
                try:
                    sent.append((b, i, with_value, self._send_one(b, i, with_value)))
                except KafkaError as exc:  # refused before sending, e.g. over max_request_size
                    sent.append((b, i, with_value, exc))
            # kafka-python's own flush() fails with "Future not done" after a broker-forced batch split.
            deadline = time.monotonic() + DLQ_FLUSH_TIMEOUT_S
            if any(not isinstance(f, KafkaError) for *_, f in sent):
                producer_flush(producer, DLQ_FLUSH_TIMEOUT_S)
            todo = []
            for b, i, with_value, f in sent:
                try:
                    if isinstance(f, KafkaError):
                        raise f
                    f.get(timeout=max(0.1, deadline - time.monotonic()))
                except DLQ_NEVER_CLEARS as exc:
                    if with_value and isinstance(exc, DLQ_SIZE_ERRORS) and b.dead[i][0]:
                        todo.append((b, i, False))  # what the topic can take: the headers
                        continue
                    self._unpublished(b, i, exc)
                except KafkaError as exc:
                    retry = retry or f"{type(exc).__name__}: {exc}"
                    continue
                assert b.dlq_left is not None
                b.dlq_left.discard(i)
        for b in pending:
            b.dlq_sent = not b.dlq_left
        if retry is not None:
            # A retry re-sends what was not acknowledged: the topic is at-least-once; the table is exactly-once.
            raise DeliveryError(f"sending dead letters to {topic} failed ({retry})")

    def _send_one(self, b: Batch, i: int, with_value: bool) -> Any:
        raw, reason, detail, offset, kafka_ms, key = b.dead[i]
        headers = [
            ("reason", reason.encode()),
            ("detail", detail.encode("utf-8", "replace")),
            ("source_topic", self.source_topic.encode()),
            ("source_partition", str(b.partition).encode()),
            ("source_offset", str(offset).encode()),
            ("source_timestamp_ms", str(kafka_ms).encode()),
        ]
        value = raw if with_value else b""
        if len(value) > DEAD_LETTER_TOPIC_MAX_VALUE_BYTES:
            value = value[:DEAD_LETTER_TOPIC_MAX_VALUE_BYTES]
        if len(value) < len(raw):
            headers += [("truncated", b"1"), ("original_size", str(len(raw)).encode())]
        return self.producer.send(self.topic, value=value, key=key, headers=headers)

    def _unpublished(self, b: Batch, i: int, exc: KafkaError) -> None:
        """A dead letter the topic refused for good: kept in the table only, counted, logged."""
        assert b.dlq_left is not None
        b.dlq_left.discard(i)
        _raw, reason, _detail, offset, _kafka_ms, _key = b.dead[i]
        logger.error(
            "dead letter %s:%d@%d (%s) could not be sent to %s (%s: %s); it is in the dead_letters table",
            self.source_topic,
            b.partition,
            offset,
            reason,
            self.topic,
            type(exc).__name__,
            exc,
        )
        self.figures.dead_letter_unpublished()
