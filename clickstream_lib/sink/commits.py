"""The sink's offset commits: errors sorted into retry, abandon (fenced) and stop, and committed offsets read back."""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any, Protocol

from kafka import TopicPartition
from kafka.errors import (
    CommitFailedError,
    FencedInstanceIdError,
    IllegalGenerationError,
    KafkaError,
    OffsetMetadataTooLargeError,
    RebalanceInProgressError,
    UnknownMemberIdError,
)
from kafka.structs import OffsetAndMetadata

from ..errors import SinkError
from ..settings import Settings
from .batch import DeliveryError
from .retry import retrying

# Consumer-group membership errors: the commit can never succeed in this generation, so the batch is abandoned
# uncommitted and the partition's next owner rebuilds it from the recorded range. Other Kafka errors are retried.
FENCED_ERRORS = (CommitFailedError, IllegalGenerationError, UnknownMemberIdError, RebalanceInProgressError)
COMMIT_TIMEOUT_MS = 10_000


class GroupConsumer(Protocol):
    """What committing needs of a consumer-group member (kafka-python's ``KafkaConsumer`` has it)."""

    def commit(self, offsets: Mapping[TopicPartition, OffsetAndMetadata], timeout_ms: int) -> Any: ...

    def committed(self, tp: TopicPartition, metadata: bool, timeout_ms: int) -> Any: ...


class OffsetCommitter:
    """Commits offsets with metadata for one consumer of the consumer group ``settings.kafka_group_id``.

    Args:
        consumer: the sink's consumer.
        settings: names the consumer group (in errors) and the broker (for "not reachable").
        instance_id: the consumer's ``group.instance.id``, named when another consumer takes it over.
        stop: set when the sink is asked to stop; reading a committed offset then gives up at once.
        retry_max_s: cap of the backoff while reading a committed offset fails.
    """

    def __init__(
        self,
        consumer: GroupConsumer,
        settings: Settings,
        *,
        instance_id: str | None = None,
        stop: threading.Event | None = None,
        retry_max_s: float = 5.0,
    ) -> None:
        self.consumer = consumer
        self.settings = settings
        self.instance_id = instance_id
        self.stop = stop or threading.Event()
        self.retry_max_s = retry_max_s

    def commit(self, offsets: dict[TopicPartition, OffsetAndMetadata]) -> None:
        """Commit ``offsets``; raises :class:`DeliveryError` (retry, or ``fenced``/``metadata_too_large``), or
        :class:`SinkError` when this consumer's instance id was taken over."""
        try:
            self.consumer.commit(offsets, timeout_ms=COMMIT_TIMEOUT_MS)
        except FencedInstanceIdError as exc:
            raise self.fenced(exc) from exc
        except OffsetMetadataTooLargeError as exc:
            longest = max(len(o.metadata or "") for o in offsets.values())
            raise DeliveryError(
                f"offset commit refused: its metadata ({longest} bytes) is over the broker's offset.metadata.max.bytes",
                metadata_too_large=True,
            ) from exc
        except FENCED_ERRORS as exc:
            raise DeliveryError(f"offset commit refused by the group ({type(exc).__name__})", fenced=True) from exc
        except KafkaError as exc:
            raise DeliveryError(f"offset commit failed ({type(exc).__name__}: {exc})") from exc

    def fenced(self, exc: KafkaError) -> SinkError:
        """The error that stops the sink when another consumer joined with its ``group.instance.id``.

        The consumer group hands this consumer's partitions to the newcomer and refuses this consumer's commits and
        joins for good; what it has not committed is rebuilt by the newcomer from the recorded ranges.
        """
        return SinkError(
            f"another consumer joined group {self.settings.kafka_group_id} with this sink's instance id "
            f"{self.instance_id!r} and took over its partitions ({type(exc).__name__}); stopping — give each "
            "consumer its own --instance-id"
        )

    def committed(self, tp: TopicPartition) -> OffsetAndMetadata | None:
        """The consumer group's committed offset and metadata of ``tp``, waiting for Kafka while it fails.

        Without them the partition cannot be resumed safely.
        """
        result: OffsetAndMetadata | None = retrying(
            f"reading the committed offset of partition {tp.partition}",
            lambda: self.consumer.committed(tp, metadata=True, timeout_ms=COMMIT_TIMEOUT_MS),
            settings=self.settings,
            stop=self.stop,
            retry_max_s=self.retry_max_s,
            errors=(KafkaError,),
        )
        return result
