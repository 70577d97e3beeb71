"""Micro-benchmark: CPU per record of kafka-python's record decoder and ours
(clickstream_lib.kafka_compat.record_decoder), alternately.

The batches are what the sink fetches from this project's producer: generator events, user keys, lz4, 128 KiB
batches (producer.PRODUCER_CONFIG). Each round decodes all of them with one decoder and then the other (order
alternating), in this process with no other work and the garbage collector tuned as while a sink runs
(``consumer.GC_YOUNG_THRESHOLD``), and reports CPU time (``time.thread_time``) per record; medians over the rounds.
No broker needed.

    .venv/bin/python bench/decode.py
    .venv/bin/python bench/decode.py --events 200000 --rounds 9
"""

from __future__ import annotations

import argparse
import gc
import statistics
import struct
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from kafka.consumer.fetcher import Fetcher  # noqa: E402
from kafka.record import MemoryRecords, MemoryRecordsBuilder  # noqa: E402

from clickstream_lib.generator import Generator  # noqa: E402
from clickstream_lib.kafka_compat.record_decoder import FastPartitionRecords, decode_all  # noqa: E402
from clickstream_lib.producer import PRODUCER_CONFIG  # noqa: E402
from clickstream_lib.sink import GC_YOUNG_THRESHOLD  # noqa: E402

LZ4 = 3


def fetch_response(n: int) -> bytes:
    """``n`` generator events as consecutive lz4 v2 batches of the producer's batch size, in one buffer.

    As on the wire: the producer numbers a batch's records from 0 and the broker writes the batch's base offset.
    """
    keys, values = Generator(seed=1).batch(n).keys_values()
    out = bytearray()
    offset = 0
    now_ms = int(time.time() * 1000)
    while offset < n:
        base = offset
        builder = MemoryRecordsBuilder(2, LZ4, PRODUCER_CONFIG["batch_size"])
        while offset < n and builder.append(now_ms + offset // 100, keys[offset], values[offset]) is not None:
            offset += 1
        builder.close()
        batch = builder.buffer()
        struct.pack_into(">q", batch, 0, base)  # BaseOffset: not covered by the batch CRC
        out += batch
    return bytes(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=100_000)
    ap.add_argument("--rounds", type=int, default=7)
    args = ap.parse_args()
    data = fetch_response(args.events)
    decoders = {"kafka-python": Fetcher.PartitionRecords, "fast": FastPartitionRecords}
    got = {name: decode_all(cls, 0, MemoryRecords(data))[0] for name, cls in decoders.items()}
    assert got["fast"] == got["kafka-python"] and len(got["fast"]) == args.events
    del got
    gc.set_threshold(GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])
    us: dict[str, list[float]] = {name: [] for name in decoders}
    for i in range(args.rounds):
        for name in list(decoders) if i % 2 == 0 else list(decoders)[::-1]:
            t0 = time.thread_time()
            records, _ = decode_all(decoders[name], 0, MemoryRecords(data))
            us[name].append((time.thread_time() - t0) / len(records) * 1e6)
            del records
    print(f"{args.events} events, {len(data) / 1e6:.1f} MB of lz4 batches, {args.rounds} rounds: median CPU us/record")
    for name, xs in us.items():
        print(f"  {name:<13} {statistics.median(xs):5.2f}  (rounds: {', '.join(f'{x:.2f}' for x in xs)})")
    print(f"  ratio         {statistics.median(us['fast']) / statistics.median(us['kafka-python']):5.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
