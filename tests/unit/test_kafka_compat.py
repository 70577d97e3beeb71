"""The workarounds for kafka-python internals (clickstream_lib.kafka_compat): each test fails when a kafka-python
release moves or changes what the workaround relies on."""

from __future__ import annotations

import inspect
from typing import Any

from kafka import TopicPartition
from kafka.consumer.subscription_state import ConsumerRebalanceListener
from kafka.errors import KafkaError, KafkaTimeoutError, UnknownError
from kafka.producer.producer_batch import ProducerBatch
from kafka.producer.record_accumulator import RecordAccumulator

from clickstream_lib.kafka_compat import consumer as compat, producer as compat_producer, record_decoder


class _Drained:
    """A kafka-python PartitionRecords that was read to the end: falsy, yet not None."""

    def __bool__(self) -> bool:
        return False


class _FakeFetcher:
    def __init__(self, parked: dict[TopicPartition, object], current: object) -> None:
        self._paused_partition_records = parked
        self._next_partition_records = current


class _PausingConsumer:
    def __init__(self, fetcher: _FakeFetcher, paused: set[TopicPartition]) -> None:
        self._fetcher = fetcher
        self._paused = paused

    def paused(self) -> set[TopicPartition]:
        return self._paused


def test_parked_records_of_a_resumed_partition_are_handed_back() -> None:
    tp = TopicPartition("clicks", 0)
    drained = _Drained()
    # Resumed, parked, and the in-line slot drained: emptied, so the next poll restores the parked records.
    fetcher = _FakeFetcher({tp: object()}, drained)
    assert compat.unpark_resumed_records(_PausingConsumer(fetcher, set()))
    assert fetcher._next_partition_records is None
    # Still paused, nothing parked, or the slot still has records to return: left alone.
    for fetcher, paused in (
        (_FakeFetcher({tp: object()}, drained), {tp}),
        (_FakeFetcher({}, drained), set()),
        (_FakeFetcher({tp: object()}, "records"), set()),
    ):
        before = fetcher._next_partition_records
        assert not compat.unpark_resumed_records(_PausingConsumer(fetcher, paused))
        assert fetcher._next_partition_records is before


def test_crc32c_extension_is_active() -> None:
    assert compat.crc32c_accelerated()


# --- what each workaround reads or writes inside kafka-python is still there ---------------------------------------


def _source(obj: Any) -> str:
    return inspect.getsource(obj)


def test_join_in_progress_finds_the_join_task_and_the_rejoin_calls() -> None:
    from kafka.consumer.group import KafkaConsumer
    from kafka.coordinator.base import BaseCoordinator

    assert "self._coordinator = ConsumerCoordinator(" in _source(KafkaConsumer.__init__)
    base = _source(BaseCoordinator)
    assert "self._join_task = None" in base and "self._join_task.is_done" in base
    assert callable(BaseCoordinator.need_rejoin) and callable(BaseCoordinator.request_rejoin)


class _Task:
    def __init__(self, done: bool) -> None:
        self.is_done = done


class _Coordinator:
    def __init__(self, task: _Task | None, needed: bool) -> None:
        self._join_task = task
        self.needed = needed
        self.group_id = "g"
        self.rejoins = 0

    def need_rejoin(self) -> bool:
        return self.needed

    def request_rejoin(self) -> None:
        self.rejoins += 1


class _Joining:
    def __init__(self, coordinator: _Coordinator | None) -> None:
        self._coordinator = coordinator


def test_a_finished_join_left_unapplied_asks_for_a_rejoin() -> None:
    finished = _Coordinator(_Task(done=True), needed=False)
    assert compat.join_in_progress(_Joining(finished)) and finished.rejoins == 1
    running = _Coordinator(_Task(done=False), needed=True)
    assert compat.join_in_progress(_Joining(running)) and running.rejoins == 0
    assert not compat.join_in_progress(_Joining(_Coordinator(None, needed=False)))
    assert not compat.join_in_progress(_Joining(None))


def test_unpark_finds_the_parked_records_and_the_in_line_slot() -> None:
    from kafka.consumer.fetcher import Fetcher

    init = _source(Fetcher.__init__)
    assert "self._next_partition_records = None" in init and "self._paused_partition_records = {}" in init
    # The bug the workaround answers: parked records come back only into an empty (None) slot.
    fetcher = _source(Fetcher)
    assert "if self._next_partition_records is None:" in fetcher
    assert "self._next_partition_records = self._paused_partition_records.pop(tp)" in fetcher


def test_the_crc32c_extension_is_where_the_check_looks() -> None:
    from kafka.record import util

    assert util.crc32c_c is not None


def test_the_sink_consumer_options_are_known_to_kafka_python() -> None:
    """kafka-python rejects unknown configs; these are what the sink and topics.client_config pass."""
    from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer

    for name in ("enable_incremental_fetch_sessions", "group_instance_id", "bootstrap_timeout_ms", "check_crcs"):
        assert name in KafkaConsumer.DEFAULT_CONFIG, name
    assert "bootstrap_timeout_ms" in KafkaProducer.DEFAULT_CONFIG
    assert "bootstrap_timeout_ms" in KafkaAdminClient.DEFAULT_CONFIG
    assert callable(ConsumerRebalanceListener.on_partitions_lost)


def test_the_record_decoder_finds_what_it_overrides() -> None:
    assert record_decoder.unsupported() is None


def test_the_bulk_appender_writes_what_kafka_python_writes_into_its_accumulator() -> None:
    """producer.probe writes records both ways into a real RecordAccumulator's structures and compares the bytes."""
    accumulator = RecordAccumulator(batch_size=128 * 1024, compression_attrs=0, message_version=2)
    assert compat_producer.probe(accumulator) is None
    for name in ("_batches", "_tp_lock", "_incomplete", "_appends_in_progress", "_closed", "split_and_reenqueue"):
        assert hasattr(accumulator, name), name
    assert "self.produce_future" in _source(ProducerBatch.__init__)


class _Splitting:
    """A producer whose first flush fails as kafka-python's does after a broker-forced batch split."""

    def __init__(self, outcomes: list[BaseException | None]) -> None:
        self.outcomes = outcomes
        self.timeouts: list[float] = []

    def flush(self, timeout: float) -> None:
        self.timeouts.append(timeout)
        outcome = self.outcomes.pop(0)
        if outcome is not None:
            raise outcome


def test_flush_again_after_a_split_batch_and_false_on_a_timeout() -> None:
    from kafka import KafkaProducer

    assert "timeout" in inspect.signature(KafkaProducer.flush).parameters
    assert issubclass(KafkaTimeoutError, KafkaError)  # caught first: a timeout is not retried
    split = _Splitting([UnknownError("Future not done"), None])
    assert compat_producer.flush(split, 5.0) and len(split.timeouts) == 2
    assert not compat_producer.flush(_Splitting([KafkaTimeoutError()]), 5.0)
