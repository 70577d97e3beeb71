"""Kafka administration: reach the cluster, create topics, read offsets.

Every kafka-python client is created here or with :func:`client_config`, so security settings and the
"broker unreachable" error are the same everywhere.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition
from kafka.admin import NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError

from .errors import BrokerUnavailable, ClickstreamError, KafkaSecurityError
from .security import check_kafka
from .settings import Settings

logger = logging.getLogger(__name__)

DEFAULT_CONNECT_TIMEOUT_S = 5.0


def unreachable(settings: Settings, exc: BaseException | None = None) -> ClickstreamError:
    """The one error for 'no broker there', with what to do about it.

    kafka-python reports a wrong password, an unknown CA or a protocol mismatch as a bootstrap timeout, so a direct
    probe (:func:`clickstream_lib.security.check_kafka`) first looks for those and returns a
    :class:`KafkaSecurityError` naming the setting to fix.
    """
    try:
        check_kafka(settings)
    except KafkaSecurityError as security:
        return security
    cause = f" ({type(exc).__name__}: {exc})" if exc else ""
    return BrokerUnavailable(
        f"Kafka not reachable at {settings.kafka_broker_url}{cause} — start it with `clickstream stack up` "
        f"or set KAFKA_BROKER_URL to a running broker"
    )


def client_config(settings: Settings, timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S, **extra: Any) -> dict[str, Any]:
    """kafka-python keyword arguments: connection, security, and a bounded bootstrap wait (not kafka-python's 30 s)."""
    cfg = settings.kafka_client_config()
    cfg["bootstrap_timeout_ms"] = int(timeout_s * 1000)
    cfg.update(extra)
    return cfg


@contextmanager
def admin(settings: Settings, timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S) -> Iterator[KafkaAdminClient]:
    """A connected admin client, closed on exit.

    Raises:
        BrokerUnavailable: no broker answered within ``timeout_s``.
        KafkaSecurityError: the broker refused the TLS/SASL settings, or the protocol does not match the listener
            (checked up front in one round trip, so these fail at once instead of after the bootstrap timeout).
    """
    check_kafka(settings)
    try:
        client = KafkaAdminClient(**client_config(settings, timeout_s, request_timeout_ms=int(timeout_s * 1000) + 5000))
    except KafkaError as exc:
        raise unreachable(settings, exc) from exc
    try:
        yield client
    finally:
        client.close()


def ping(settings: Settings, timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S) -> dict[str, Any]:
    """A real metadata round-trip: returns the cluster description (cluster id, brokers, controller)."""
    with admin(settings, timeout_s) as client:
        try:
            return dict(client.describe_cluster())
        except KafkaError as exc:
            raise unreachable(settings, exc) from exc


def ensure_topic(settings: Settings, topic: str, partitions: int | None = None, timeout_s: float = 10.0) -> bool:
    """Create ``topic`` if it does not exist; returns True if it was created. Waits until it has leaders."""
    partitions = partitions or settings.kafka_partitions
    with admin(settings, timeout_s) as client:
        created = False
        try:
            client.create_topics([NewTopic(topic, partitions, 1)], timeout_ms=int(timeout_s * 1000))
            created = True
            logger.info("created topic %s with %d partitions", topic, partitions)
        except TopicAlreadyExistsError:
            pass
        client.wait_for_topics([topic], timeout_ms=int(timeout_s * 1000))
        return created


def end_offsets(settings: Settings, topic: str, timeout_s: float = 10.0) -> dict[int, int]:
    """High watermark of every partition of ``topic``: partition -> next offset."""
    consumer = KafkaConsumer(**client_config(settings, timeout_s))
    try:
        parts = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        return {tp.partition: off for tp, off in consumer.end_offsets(tps).items()}
    except KafkaError as exc:
        raise unreachable(settings, exc) from exc
    finally:
        consumer.close()
