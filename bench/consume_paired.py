"""Paired benchmark: the sink of another commit and this one alternately draining the same backlog, in one process.

Single runs of bench/consume.py swing by 30 % and more on a shared machine; alternating the two sinks round by round
on one broker and one backlog shows the change itself. Besides records/s (first record taken -> last commit, as
bench/consume.py measures it) it prints the CPU time per record of the whole process and of the sink's two threads
(``/proc/self/task/<tid>/schedstat``, Linux), which hold under any load.

The other commit's ``clickstream_lib`` is extracted with ``git archive`` and imported under another package name;
both sinks share this checkout's store (one embedded chdb directory per process).

    .venv/bin/python bench/consume_paired.py --old 386005a
    .venv/bin/python bench/consume_paired.py --old 386005a --events 200000 --rounds 6
"""

from __future__ import annotations

import argparse
import importlib
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.consume import fresh, raw_consume, start_stack  # noqa: E402
from clickstream_lib.producer import Producer  # noqa: E402
from clickstream_lib.settings import Settings  # noqa: E402
from clickstream_lib.sink import Sink  # noqa: E402
from clickstream_lib.store import connect  # noqa: E402

OLD_PACKAGE = "clickstream_lib_old"


def old_sink_class(rev: str, into: Path) -> Any:
    """The Sink class of ``rev``: its clickstream_lib extracted into ``into`` as package OLD_PACKAGE."""
    archive = into / "old.tar"
    subprocess.run(["git", "archive", "-o", str(archive), rev, "clickstream_lib"], cwd=ROOT, check=True)
    with tarfile.open(archive) as tar:
        tar.extractall(into, filter="data")
    (into / "clickstream_lib").rename(into / OLD_PACKAGE)
    sys.path.insert(0, str(into))
    return importlib.import_module(f"{OLD_PACKAGE}.consumer").Sink


def cpu_ns() -> dict[str, int]:
    """CPU nanoseconds so far: the process, and each sink's consumer and insert thread."""
    t = os.times()
    out = {"process": int((t.user + t.system) * 1e9)}
    for th in threading.enumerate():
        if th.name.startswith("clickstream-sink") and th.native_id:
            try:
                with open(f"/proc/self/task/{th.native_id}/schedstat") as f:
                    out["insert" if "-insert-" in th.name else "consumer"] = int(f.read().split()[0])
            except OSError:
                pass
    return out


def drain(sink_class: Any, settings: Settings, n: int) -> tuple[float, dict[str, float]]:
    """Records/s of ``sink_class`` draining ``n`` records, and CPU microseconds per record by thread."""
    store = connect(settings)
    sink = sink_class(settings, store)
    sink.start()
    t_first = t_done = 0.0
    c0: dict[str, int] = {}
    c1: dict[str, int] = {}
    while True:
        st = sink.stats()
        if not t_first and st.records_consumed > 0:
            t_first, c0 = time.perf_counter(), cpu_ns()
        if st.rows_inserted + st.dead_letters >= n:
            t_done, c1 = time.perf_counter(), cpu_ns()
            break
        if not st.running and st.last_error:
            raise RuntimeError(st.last_error)
        time.sleep(0.005)
    sink.stop()
    rows, uniq = store.query_rows(f"SELECT count(), uniqExact(event_id) FROM {store.database}.events")[0]
    assert rows == uniq == n, (rows, uniq, n)
    store.client.command(f"DROP DATABASE {store.database} SYNC")
    return n / (t_done - t_first), {k: (v - c0.get(k, 0)) / n / 1000 for k, v in c1.items()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--old", required=True, help="the commit to compare with (anything git accepts)")
    ap.add_argument("--events", type=int, default=100_000, help="backlog size (default 100000)")
    ap.add_argument("--rounds", type=int, default=4)
    args = ap.parse_args()

    base, stack = start_stack("bench-paired-")
    sinks = {"old": old_sink_class(args.old, Path(base.data_dir).parent), "new": Sink}
    rates: dict[str, list[float]] = {"old": [], "new": []}
    cpus: dict[str, list[dict[str, float]]] = {"old": [], "new": []}
    raw: list[float] = []
    try:
        backlog = fresh(base, "backlog")
        Producer(backlog, rate=None).run(events=args.events)
        for i in range(args.rounds):
            raw.append(raw_consume(backlog, args.events)[0])
            line = [f"round {i + 1}: raw consume {raw[-1]:,.0f}/s"]
            for name in ("old", "new") if i % 2 == 0 else ("new", "old"):
                tag = f"{name}{i}_{uuid.uuid4().hex[:6]}"
                rate, cpu = drain(
                    sinks[name], backlog.replace(kafka_group_id=tag, clickhouse_database=tag), args.events
                )
                rates[name].append(rate)
                cpus[name].append(cpu)
                per = ", ".join(f"{k} {v:.1f}" for k, v in cpu.items())
                line.append(f"{name} {rate:,.0f}/s ({rate / raw[-1]:.2f}; CPU us/record: {per})")
            print("; ".join(line), file=sys.stderr, flush=True)
        print(f"{args.events} events, {args.rounds} rounds; old = {args.old}, new = this checkout (medians)")
        print(f"  raw kafka-python consume: {statistics.median(raw):>10,.0f} records/s")
        for name in ("old", "new"):
            ratios = [r / c for r, c in zip(rates[name], raw, strict=True)]
            cpu = {k: statistics.median(c.get(k, 0.0) for c in cpus[name]) for k in cpus[name][0]}
            print(
                f"  {name} sink drain          : {statistics.median(rates[name]):>10,.0f} records/s, "
                f"median ratio {statistics.median(ratios):.2f}; CPU us/record "
                + ", ".join(f"{k} {v:.1f}" for k, v in cpu.items())
            )
    finally:
        stack.down()
        shutil.rmtree(base.data_dir.parent, ignore_errors=True)  # the broker's log and the stores: ~200 MB a run
    return 0


if __name__ == "__main__":
    sys.exit(main())
