"""What serving the store costs a viewer: the dashboard's live refresh set over the owner's socket against the same
queries in the owner's process, on the same data and the same engine.

    .venv/bin/python bench/rpc_overhead.py                                   # 1M events, 5 rounds x 20
    .venv/bin/python bench/rpc_overhead.py --size 10000000 --data-dir /tmp/q10b --memory-limit-mb 0

Events are loaded as bench/queries.py loads them (a store it loaded into ``--data-dir`` before is reused). This
process then becomes the owner (``service.StoreService``, no sink, its sharing of identical requests off so every
request runs) and alternates, for ``--rounds`` rounds: ``--refreshes`` refresh sets in process on one of its engine
clients (``queries.live_panels``, one snapshot: 7 queries), then as many from a client process over the socket (the
same call: one batch action, frames back as Arrow). Reported: the median refresh each way and the overhead, and the
cost of the frames' conversion (pandas -> Arrow -> IPC in the owner, IPC -> Arrow -> pandas in the client) measured
on their own.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

if TYPE_CHECKING:
    from clickstream_lib.service import StoreService

from bench.queries import load_and_measure  # noqa: E402

CLIENT = """
import json, sys, time
sys.path.insert(0, {root!r})
from clickstream_lib import Settings, connect, queries
store = connect(Settings.from_env())
assert type(store).__name__ == "ServedStore", type(store)
queries.live_panels(store)
times = []
for _ in range({n}):
    t = time.perf_counter()
    queries.live_panels(store)
    times.append(time.perf_counter() - t)
print(json.dumps({{"times": times, "chdb": "chdb" in sys.modules}}))
"""


def alternate(service: StoreService, rounds: int, refreshes: int) -> tuple[list[float], list[float]]:
    """Seconds per live refresh set of ``service``'s store, in its process on one of its engine clients and from a
    client process over its socket, ``refreshes`` each way per round, alternating for ``rounds`` rounds."""
    from clickstream_lib import queries
    from clickstream_lib.notebooks import settings_env
    from clickstream_lib.stack import clean_env

    assert service.store is not None
    local = service.store.fork()
    queries.live_panels(local)
    inproc: list[float] = []
    served: list[float] = []
    env = settings_env(service.settings, clean_env())
    client = CLIENT.format(root=str(ROOT), n=refreshes)
    try:
        for _ in range(rounds):
            for _ in range(refreshes):
                t = time.perf_counter()
                queries.live_panels(local)
                inproc.append(time.perf_counter() - t)
            out = subprocess.run([sys.executable, "-c", client], env=env, capture_output=True, text=True, check=True)
            got = json.loads(out.stdout.strip().splitlines()[-1])
            assert not got["chdb"], "a served client imported chdb"
            served.extend(got["times"])
    finally:
        local.close()
    return inproc, served


def measure(database: str, rounds: int, refreshes: int) -> dict[str, float]:
    import pyarrow as pa

    from clickstream_lib import queries
    from clickstream_lib.service import StoreService, ipc_stream, to_arrow
    from clickstream_lib.settings import Settings
    from clickstream_lib.store import _frame

    settings = Settings.from_env(clickhouse_database=database)
    service = StoreService(settings, sink=False, share_s=0)
    service.start()
    try:
        inproc, served = alternate(service, rounds, refreshes)
        assert service.store is not None
        local = service.store.fork()
        frames = list(queries.live_panels(local).values())
        t = time.perf_counter()
        for _ in range(refreshes):
            streams = [ipc_stream(to_arrow(df)) for df in frames]
        encode = (time.perf_counter() - t) / refreshes
        t = time.perf_counter()
        for _ in range(refreshes):
            [_frame(pa.ipc.open_stream(s).read_all()) for s in streams]
        decode = (time.perf_counter() - t) / refreshes
        events = int(local.scalar(f"SELECT count() FROM {local.table('events')}"))
        local.close()
    finally:
        service.stop()
    return {
        "events": events,
        "inproc_ms": statistics.median(inproc) * 1000,
        "served_ms": statistics.median(served) * 1000,
        "encode_ms": encode * 1000,
        "decode_ms": decode * 1000,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds (default 5)")
    parser.add_argument("--refreshes", type=int, default=20, help="refresh sets per form and round (default 20)")
    parser.add_argument("--data-dir", help="keep the store here (default: a temporary directory)")
    parser.add_argument(
        "--memory-limit-mb", type=int, help="the embedded engine's memory limit (default: the product's; 0: none)"
    )
    parser.add_argument("--measure", nargs=3, metavar=("DATABASE", "ROUNDS", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure[0], int(args.measure[1]), int(args.measure[2]))))
        return 0
    got = load_and_measure(
        __file__, args.size, args.data_dir, [str(args.rounds), str(args.refreshes)], args.memory_limit_mb
    )
    load_avg = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    n = args.rounds * args.refreshes
    overhead = 100 * (got["served_ms"] / got["inproc_ms"] - 1)
    print(f"{got['events']:,} events; load average at the end {load_avg}; medians of {n} refresh sets each way")
    print(
        f"live refresh set in process {got['inproc_ms']:.1f} ms, "
        f"over the socket {got['served_ms']:.1f} ms: {overhead:+.1f}%"
    )
    print(f"frames' conversion per set: owner {got['encode_ms']:.1f} ms, client {got['decode_ms']:.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
