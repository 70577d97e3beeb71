"""Errors raised by clickstream_lib.

Every error says what went wrong and what to do about it::

    ClickstreamError
     ├── ConfigError          a setting (environment variable or argument) is wrong
     │    ├── KafkaSecurityError  Kafka refused our TLS/SASL settings (unknown CA, wrong password, protocol)
     │    └── QueryError      an unknown query name, filter or parameter value (analytics queries)
     ├── BrokerUnavailable    Kafka cannot be reached (retriable)
     ├── StackError           the local Kafka broker cannot be installed, started or stopped
     ├── SinkError            the sink met a Kafka error no retry clears (its --instance-id taken over) and stopped
     ├── StoreError           ClickHouse failed or refused
     │    └── StoreLocked     the embedded chdb directory is held by another process
     ├── InvalidEvent         a message is not a valid clickstream event
     └── NotebookError        a notebook failed to execute or could not be served
"""

from __future__ import annotations


class ClickstreamError(Exception):
    """Base class of every error this library raises on purpose."""

    retriable = False


class ConfigError(ClickstreamError, ValueError):
    """A setting is wrong. ``variable`` names the environment variable or option."""

    def __init__(self, variable: str, message: str) -> None:
        self.variable = variable
        super().__init__(f"{variable}: {message}")


class QueryError(ConfigError):
    """A named query, filter or query parameter is unknown or has a bad value. ``variable`` names it."""


class KafkaSecurityError(ConfigError):
    """The broker answered, but the connection's security settings do not match it.

    Not retriable: a wrong password or an unknown CA does not fix itself. ``variable`` names the setting to fix;
    the message never contains a secret.
    """


class BrokerUnavailable(ClickstreamError):
    """Kafka could not be reached; trying again later may work."""

    retriable = True


class StackError(ClickstreamError):
    """The local service stack (the Kafka broker process) failed."""


class SinkError(ClickstreamError):
    """The sink stopped on an error that retrying cannot clear; the message says which and what to do."""


class StoreError(ClickstreamError):
    """ClickHouse (embedded chdb or a server) failed."""


class StoreLocked(StoreError):
    """The embedded chdb data directory is locked by another process."""


class InvalidEvent(ClickstreamError, ValueError):
    """A message is not a valid event. ``reason`` is one of ``events.REASONS``."""

    def __init__(self, reason: str, detail: str = "") -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}" if detail else reason)


class NotebookError(ClickstreamError):
    """A notebook (report, dashboard, workbench) failed to execute, or Voila could not serve it."""
