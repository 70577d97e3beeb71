"""The readers-writer gate between the embedded engine's inserts and a consistent set of queries."""

from __future__ import annotations

import threading
import time

from clickstream_lib.snapshot import ReadWriteGate


def started(target: object) -> threading.Thread:
    thread = threading.Thread(target=target, daemon=True)  # type: ignore[arg-type]
    thread.start()
    return thread


def test_readers_share_the_gate_and_a_writer_waits_for_them() -> None:
    gate = ReadWriteGate()
    order: list[str] = []
    with gate.reading(), gate.reading():
        assert gate.readers == 2

        def write() -> None:
            with gate.writing():
                order.append("write")

        writer = started(write)
        writer.join(0.3)
        assert writer.is_alive() and order == []  # held off while the readers read
        order.append("read done")
    writer.join(5)
    assert order == ["read done", "write"]


def test_a_waiting_writer_goes_before_readers_that_arrive_after_it() -> None:
    gate = ReadWriteGate()
    order: list[str] = []

    def write() -> None:
        with gate.writing():
            order.append("write")

    def late_read() -> None:
        with gate.reading():
            order.append("late read")

    with gate.reading():
        writer = started(write)
        time.sleep(0.2)  # the writer waits
        reader = started(late_read)
        reader.join(0.3)
        assert reader.is_alive(), "a reader that came after a waiting writer must wait for it"
    writer.join(5)
    reader.join(5)
    assert order == ["write", "late read"]


def test_a_reader_waits_for_a_writer_and_may_hand_its_work_to_other_threads() -> None:
    gate = ReadWriteGate()
    order: list[str] = []
    with gate.writing():

        def read() -> None:
            with gate.reading():
                done = []
                worker = started(lambda: done.append(order.copy()))  # the gate is not owned by a thread
                worker.join(5)
                order.append(f"read saw {done[0]}")

        reader = started(read)
        reader.join(0.3)
        assert reader.is_alive()
        order.append("write")
    reader.join(5)
    assert order == ["write", "read saw ['write']"]
