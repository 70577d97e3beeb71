"""The local service stack: a real Apache Kafka 4.x broker (KRaft, one combined broker+controller node).

The broker's jars are resolved from Maven Central with ``mvn dependency:copy-dependencies`` from the pom shipped in
this package (pinned Kafka plus a log4j2 backend) into a per-user cache, so they download once. The broker runs on
Java 17 with a capped heap, bound to 127.0.0.1; its data directory persists across ``down``/``up``.

Layout under ``<CLICKSTREAM_DATA_DIR>/kafka``::

    server.properties  log4j2.properties  broker.pid  data/  logs/server.log  logs/stdout.log
    tls/broker.pem     (only with a SASL_SSL listener: the broker's key and certificate chain, mode 0600)

The PLAINTEXT listener on ``KAFKA_BROKER_URL`` is always there (the stack administers the broker through it). A
:class:`SecureListener` adds a SASL_SSL listener (TLS from PEM files, SCRAM users) for clients that must
authenticate; its users are created through the admin API after start, so no password is ever written to
``server.properties`` or put on a command line.

Parts: :class:`KafkaStack` (``broker``) runs the broker's process; :class:`KafkaJars` (``jars``) resolves its jars;
:class:`BrokerConfig` (``config``) writes its files and formats its storage; ``throwaway`` starts one on free ports
for benchmarks and test fixtures.
"""

from .broker import KafkaStack, StackStatus
from .config import BrokerConfig, SecureListener
from .jars import KafkaJars, kafka_version
from .throwaway import clean_env, free_port, throwaway_broker

__all__ = [
    "BrokerConfig",
    "KafkaJars",
    "KafkaStack",
    "SecureListener",
    "StackStatus",
    "clean_env",
    "free_port",
    "kafka_version",
    "throwaway_broker",
]
