"""Several producer processes, one shard of the users each: for rates one Python process cannot send.

One kafka-python producer tops out at one core (about 20-25k events/s on a 2-core test machine, see
``bench/produce.py``). :func:`produce_in_processes` starts ``workers`` processes; worker ``i`` generates only the
users whose number is ``i`` modulo ``workers`` (:class:`~clickstream_lib.generator.Generator` ``shard``), so every
user's sessions, funnel order and Kafka key ordering stay within one process, and the catalogue, prices and user
attributes are those of the unsharded generator with the same seed. The rate and the event count are split evenly,
except that one worker sends a ``bot_burst`` bot and carries its share of all messages on top
(:func:`~clickstream_lib.generator.shard_weights`): the scenario's totals do not depend on the number of workers.

    >>> stats = produce_in_processes(settings, 4, rate=None, events=1_000_000, generator={"seed": 7})
    >>> stats.summary()
"""

from __future__ import annotations

import multiprocessing as mp
import os
import queue
import signal
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, replace
from typing import Any

from .errors import BrokerUnavailable, ClickstreamError, ConfigError
from .generator import shard_weights
from .producer import ProducerStats
from .settings import Settings

#: How long the parent waits for a worker's last counters after the workers were told to stop.
FINAL_WAIT_S = 120.0


def split(total: int | None, workers: int, weights: Sequence[float] | None = None) -> list[int | None]:
    """``total`` spread over ``workers`` in proportion to ``weights`` (default even) as whole numbers allow: the
    remainder goes to the largest fractions, the first workers on ties (None stays None for every worker)."""
    if total is None:
        return [None] * workers
    if weights is None or len(set(weights)) <= 1:
        return [total // workers + (1 if i < total % workers else 0) for i in range(workers)]
    exact = [total * w / sum(weights) for w in weights]
    parts = [int(x) for x in exact]
    by_fraction = sorted(range(workers), key=lambda i: (round(parts[i] - exact[i], 9), i))
    for i in by_fraction[: total - sum(parts)]:
        parts[i] += 1
    return list(parts)


def combine(parts: Sequence[ProducerStats]) -> ProducerStats:
    """The counters of several producers as one: sums, running while any runs, and the elapsed time from the first
    one's start to the last one's end (the longest single elapsed time while a start time is unknown)."""
    errors: Counter[str] = Counter()
    acked_by_partition: Counter[int] = Counter()
    for p in parts:
        errors.update(p.errors)
        acked_by_partition.update(p.acked_by_partition)
    targets = [p.target_rate for p in parts]
    elapsed = max((p.elapsed_s for p in parts), default=0.0)
    started = [p.started_at for p in parts]
    if started and all(started):
        elapsed = max(p.started_at + p.elapsed_s for p in parts) - min(started)
    return ProducerStats(
        sent=sum(p.sent for p in parts),
        acked=sum(p.acked for p in parts),
        failed=sum(p.failed for p in parts),
        errors=dict(errors),
        rate_now=sum(p.rate_now for p in parts),
        elapsed_s=elapsed,
        running=any(p.running for p in parts),
        target_rate=None if not targets or None in targets else sum(t for t in targets if t is not None),
        started_at=min(started, default=0.0) if started and all(started) else 0.0,
        acked_by_partition=dict(acked_by_partition),
    )


def _worker(
    index: int,
    workers: int,
    settings: Settings,
    rate: float | None,
    events: int | None,
    duration: float | None,
    generator: Mapping[str, Any],
    scenarios: Sequence[tuple[str, Mapping[str, Any]]],
    batch_size: int | None,
    out: Any,
) -> None:
    """One producer process: its shard of the users, its share of the rate; reports counters on ``out``."""
    from .generator import Generator
    from .producer import Producer

    def report(stats: ProducerStats, state: str = "progress") -> None:
        out.put((index, state, asdict(stats)))

    try:
        gen = Generator(**generator, shard=(index, workers))
        for name, params in scenarios:
            gen.set_scenario(name, True, **params)
        producer = Producer(settings, rate=rate, generator=gen, batch_size=batch_size)
    except ClickstreamError as exc:
        out.put((index, "error", {"type": type(exc).__name__, "message": str(exc)}))
        return
    try:
        stats = producer.run(events=events, duration=duration, progress=report)
        state = "done"
    except KeyboardInterrupt:  # run() flushed before letting it through
        stats, state = producer.stats(), "interrupted"
    finally:
        producer.close()
    report(stats, state)


def produce_in_processes(
    settings: Settings,
    workers: int,
    *,
    rate: float | None,
    events: int | None = None,
    duration: float | None = None,
    generator: Mapping[str, Any] | None = None,
    scenarios: Sequence[tuple[str, Mapping[str, Any]]] = (),
    batch_size: int | None = None,
    progress: Callable[[ProducerStats], None] | None = None,
) -> tuple[ProducerStats, bool]:
    """Run ``workers`` producer processes to the end; returns (their combined counters, interrupted).

    Args:
        workers: processes (each one core at full speed); 1 still runs in a child process.
        rate: events/s in total, split as ``events`` (None: each as fast as it can).
        events / duration: the limit, as for :meth:`Producer.run`; ``events`` is split evenly, or with
            ``bot_burst`` by :func:`~clickstream_lib.generator.shard_weights`.
        generator: keyword arguments of :class:`Generator` (seed, n_users, n_items, ...), the same for every worker.
        scenarios: ``(name, params)`` switched on in every worker.
        progress: called with the combined counters about twice a second and once at the end.

    Ctrl-C (SIGINT to this process) stops every worker: each flushes, and the counters say what was delivered.

    Raises:
        ConfigError: ``workers`` < 1, or a generator/producer setting a worker refused.
        BrokerUnavailable: a worker could not reach Kafka.
    """
    if workers < 1:
        raise ConfigError("--workers", f"{workers} must be at least 1")
    ctx = mp.get_context("spawn")  # no fork of a process that may hold kafka-python threads or a chdb engine
    out = ctx.Queue()
    weights = shard_weights(workers, scenarios)
    shares = split(events, workers, weights)
    rates = [None if rate is None else rate * w / sum(weights) for w in weights]
    procs = [
        ctx.Process(
            target=_worker,
            args=(i, workers, settings, rates[i], shares[i], duration, dict(generator or {}), list(scenarios)),
            kwargs={"batch_size": batch_size, "out": out},
            name=f"clickstream-producer-{i}",
            daemon=True,
        )
        for i in range(workers)
    ]
    latest = [ProducerStats(running=True) for _ in range(workers)]
    finished: set[int] = set()
    errors: list[dict[str, str]] = []
    interrupted = False
    for p in procs:
        p.start()
    deadline: float | None = None

    def step() -> None:
        """Take one report (or notice a dead worker) and show the combined counters."""
        nonlocal interrupted
        try:
            index, state, payload = out.get(timeout=0.5)
        except queue.Empty:
            for i, p in enumerate(procs):  # killed, or died before reporting: what it sent is not counted as acked
                if i not in finished and not p.is_alive() and out.empty():
                    finished.add(i)
                    latest[i] = replace(latest[i], running=False)
                    errors.append({"type": "WorkerDied", "message": f"worker {i} exited with {p.exitcode}"})
            return
        if state == "error":
            finished.add(index)
            errors.append(payload)
            return
        latest[index] = ProducerStats(**payload)
        if state != "progress":
            finished.add(index)
            interrupted = interrupted or state == "interrupted"
        if progress is not None:
            progress(combine(latest))

    try:
        while len(finished) < workers and (deadline is None or time.monotonic() < deadline):
            try:
                step()
            except KeyboardInterrupt:  # Ctrl-C, or SIGTERM through the CLI: every worker flushes and reports
                interrupted = True
                if deadline is None:
                    deadline = time.monotonic() + FINAL_WAIT_S
                    for p in procs:  # a terminal's Ctrl-C reached them too; a kill -INT of this process did not
                        if p.is_alive() and p.pid is not None:
                            os.kill(p.pid, signal.SIGINT)
    finally:
        for p in procs:
            p.join(timeout=10)
            if p.is_alive():
                p.kill()
    for e in errors:
        if e["type"] == "BrokerUnavailable":
            raise BrokerUnavailable(e["message"])
        if e["type"] == "ConfigError":
            raise ConfigError("producer worker", e["message"])
    total = combine(latest)
    if errors:
        died = Counter(e["type"] for e in errors)
        total = replace(total, errors={**total.errors, **{k: total.errors.get(k, 0) + v for k, v in died.items()}})
    if progress is not None:
        progress(total)
    return total, interrupted
