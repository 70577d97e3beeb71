"""Chaos campaign: a live pipeline, faults injected at random times drawn from a seed, and an oracle (docs/chaos.md).

A throwaway Kafka broker (temporary directory, free loopback ports), a producer process that keeps a ledger of what
it sent and what the broker acknowledged, the sink as ``clickstream consume`` process(es), and five fault lanes:

- sink: kill_sink, stop_sink;
- store: disk_full, store_readonly;
- broker: kill_broker, stop_broker;
- clients: kill_producer, poison;
- group: rebalance.

The schedule comes from the seed alone: each lane runs ``--rounds`` rounds, each a seeded shuffle of its kinds, spread
evenly over ``--minutes`` (every kind injected exactly ``--rounds`` times). Faults of one lane come one at a time; the
lanes run at once.

After the campaign the producer stops, the sink drains and stops, and the oracle reads the store: every acknowledged
event stored exactly once (by event id), nothing stored that was never sent, every poison message in dead_letters
once with its reason, rollup totals equal to raw, committed offsets equal to what is stored. Recovery of a fault is
the time from its end until the sink's lag is back under one flush interval. A JSON report (--report) and a table
in the log; exit 1 on any oracle failure, with the command that replays the seed.

    python bench/chaos.py --minutes 3 --seed 7
    python bench/chaos.py --minutes 10 --seed 1 --rate 5000 --report chaos-1.json      # 5 rounds: each kind 5 times
    python bench/chaos.py --minutes 2 --seed 3 --faults kill_sink,poison --rate 1000

Embedded store (the default): one sink process owns the chdb data directory, which lives on a size-limited tmpfs
(mounted here, as root) so disk_full can fill it and store_readonly can make its table storage read-only. With
CLICKHOUSE_URL set to a ClickHouse server, --sinks 1..3 members share the group and kill/stop faults pick one of
them.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import errno
import json
import logging
import math
import os
import random
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from kafka import KafkaConsumer, KafkaProducer, TopicPartition  # noqa: E402

from clickstream_lib import events, topics  # noqa: E402
from clickstream_lib.settings import Settings  # noqa: E402
from clickstream_lib.stack import clean_env, free_port  # noqa: E402

logger = logging.getLogger("chaos")

# Faults of one lane run one after another; the lanes run at once, so faults of different lanes overlap. A store fault
# and a kill_sink exclude each other: a sink is not restarted while its store is failing (its engine could not start).
LANES: dict[str, tuple[str, ...]] = {
    "sink": ("kill_sink", "stop_sink"),
    "store": ("disk_full", "store_readonly"),
    "broker": ("kill_broker", "stop_broker"),
    "clients": ("kill_producer", "poison"),
    "group": ("rebalance",),
}
FAULTS = tuple(k for kinds in LANES.values() for k in kinds)
# A planned fault starts at a seeded moment in the first part of its slot, so its hold fits in the rest. The lanes'
# slots line up, so their faults come in clusters with quiet time after them for the sink to catch up.
START_JITTER = 0.15
TOPIC = "chaos_events"
GROUP = "chaos-sink"
PARTITIONS = 6
FLUSH_S = 1.0  # the sink's --batch-max-wait: one flush interval
SESSION_TIMEOUT_S = 10.0  # the sink's --session-timeout: stop_sink outlasts it
# Event ids carry the producer incarnation and a sequence number in their last 12 hex digits:
# key = incarnation << 40 | seq. The oracle reads them back as numbers.
SEQ_BITS = 40
MAX_INCARNATIONS = 255


def event_id(run: str, key: int) -> str:
    """A canonical UUID (version 4 shape) whose last group is ``key`` in 12 hex digits."""
    return f"{run[:8]}-{run[8:12]}-4{run[12:15]}-8{run[15:18]}-{key:012x}"


@dataclass(frozen=True)
class Planned:
    """One fault of the schedule: its lane, its place there, and when it is due (seconds into the fault phase)."""

    lane: str
    index: int  # position in the lane; names the fault's own random stream (which sink, how long, ...)
    round: int
    kind: str
    at: float


def default_rounds(minutes: float) -> int:
    """A round every 2 minutes of fault phase (5 in 10 minutes), at least one."""
    return max(1, int(minutes // 2))


def plan(seed: int, kinds: list[str], rounds: int, phase_s: float) -> dict[str, list[Planned]]:
    """The campaign's schedule, from the seed alone: per lane, ``rounds`` rounds, each a seeded shuffle of the lane's
    requested kinds (so every kind comes exactly ``rounds`` times), spread evenly over ``phase_s``: fault ``i`` of a
    lane of ``n`` is due in slot ``i`` of ``n``, at a seeded moment in the first ``START_JITTER`` of it."""
    out: dict[str, list[Planned]] = {}
    for lane, lane_kinds in LANES.items():
        mine = [k for k in lane_kinds if k in kinds]
        if not mine:
            continue
        rng = random.Random(f"{seed}/{lane}")
        slot = phase_s / (rounds * len(mine))
        faults: list[Planned] = []
        for r in range(rounds):
            for kind in rng.sample(mine, len(mine)):
                i = len(faults)
                faults.append(Planned(lane, i, r, kind, round(i * slot + rng.uniform(0, START_JITTER * slot), 2)))
        out[lane] = faults
    return out


def pcts(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "max": None}
    return {"p50": round(statistics.median(values), 2), "max": round(max(values), 2)}


# --- the producer process --------------------------------------------------------------------------------------


def run_producer(args: argparse.Namespace) -> int:
    """Send events at ``--rate``, keeping the ledger: ``S inc first last`` is written (and flushed to the file)
    before that range is sent, ``A inc first last`` once the broker acknowledged every record of the range."""
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s producer %(message)s")
    logging.getLogger("kafka").setLevel(logging.CRITICAL)
    settings = Settings.from_env()
    inc = args.incarnation
    rng = random.Random(f"{args.seed}/{inc}")
    ledger = open(args.ledger, "a")  # noqa: SIM115 - closed in finally
    acked: collections.deque[int] = collections.deque()
    failed: collections.deque[int] = collections.deque()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    producer: KafkaProducer | None = None

    def make() -> KafkaProducer | None:
        try:
            return KafkaProducer(
                **topics.client_config(settings, timeout_s=5),
                linger_ms=20,
                batch_size=256 * 1024,
                max_block_ms=5_000,
            )
        except Exception as exc:
            logger.warning("producer not created: %s", exc)
            return None

    def write_acks() -> None:
        done = sorted(acked.popleft() for _ in range(len(acked)))
        runs: list[list[int]] = []
        for s in done:
            if runs and s == runs[-1][1] + 1:
                runs[-1][1] = s
            else:
                runs.append([s, s])
        for a, b in runs:
            ledger.write(f"A {inc} {a} {b}\n")
        while failed:
            failed.popleft()
        ledger.flush()

    seq = 0
    per_tick = max(1, round(args.rate / 10))
    t0 = time.monotonic()
    tick = 0
    try:
        while not stop.is_set():
            if producer is None:
                producer = make()
                if producer is None:
                    time.sleep(0.5)
                    continue
            first, last = seq, seq + per_tick - 1
            # Written before the first send: after a kill -9 every stored id must be one the ledger calls sent.
            ledger.write(f"S {inc} {first} {last}\n")
            ledger.flush()
            seq = last + 1
            now_ms = int(time.time() * 1000)
            try:
                for s in range(first, last + 1):
                    itype = rng.choice(events.INTERACTION_TYPES)
                    value = events.encode(
                        {
                            "event_id": event_id(args.run, (inc << SEQ_BITS) | s),
                            "user_id": f"user_{rng.randrange(9999):04d}",
                            "session_id": f"s_{rng.randrange(100_000)}",
                            "item_id": f"item_{rng.randrange(50):04d}",
                            "interaction_type": itype,
                            "timestamp_ms": now_ms,
                            "device": rng.choice(("mobile", "desktop", "tablet")),
                            "country": rng.choice(("DE", "FR", "US")),
                            "price": round(rng.uniform(1, 200), 2) if itype == "purchase" else None,
                            "currency": "EUR" if itype == "purchase" else None,
                        }
                    )
                    fut = producer.send(args.topic, value)
                    fut.add_callback(lambda _md, s=s: acked.append(s))
                    fut.add_errback(lambda _exc, s=s: failed.append(s))
            except Exception as exc:
                # A full buffer (broker away) or a fatal producer error: the unsent rest stays "sent, not
                # acknowledged" in the ledger, which is what it is. A new producer (new producer id) carries on.
                logger.warning("send failed at %d/%d: %s — new producer", inc, s, exc)
                with contextlib.suppress(Exception):
                    producer.close(timeout=0)
                producer = None
            write_acks()
            tick += 1
            ahead = t0 + tick / 10 - time.monotonic()
            if ahead > 0:
                stop.wait(ahead)
    finally:
        if producer is not None:
            with contextlib.suppress(Exception):
                producer.flush(timeout=60)
            with contextlib.suppress(Exception):
                producer.close(timeout=10)
        write_acks()
        ledger.close()
    return 0


# --- processes ---------------------------------------------------------------------------------------------------


class Proc:
    """A child process that can be killed, stopped and restarted; its stderr goes to ``log``."""

    def __init__(self, name: str, argv_fn: Any, env: dict[str, str], log: Path) -> None:
        self.name = name
        self.argv_fn = argv_fn  # () -> argv, so a restart can take new arguments (the producer's incarnation)
        self.env = env
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.unplanned_exits: list[int] = []
        # Held by a fault while it kills/stops and restarts the process, so the supervisor does not restart it too.
        self.lock = threading.RLock()
        self.every: list[subprocess.Popen[bytes]] = []  # every process started, for the final cleanup
        self.closed = False  # set by the cleanup: a fault still running in a lane must not start it again

    def start(self) -> None:
        if self.closed:
            raise RuntimeError(f"{self.name}: the campaign is shutting down")
        with self.log.open("ab") as err:
            self.proc = subprocess.Popen(
                self.argv_fn(),
                cwd=ROOT,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=err,
                stderr=err,
                start_new_session=True,  # Ctrl-C on the campaign reaches it through cleanup, not the terminal
            )
        self.every.append(self.proc)
        self.starts += 1

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, sig)

    def kill(self) -> None:
        self.signal(signal.SIGCONT)
        self.signal(signal.SIGKILL)
        if self.proc is not None:
            self.proc.wait(timeout=30)

    def kill_all(self) -> None:
        self.closed = True
        for p in self.every:
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(p.pid, signal.SIGCONT)
                    os.kill(p.pid, signal.SIGKILL)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    p.wait(timeout=30)

    def stop(self, timeout_s: float) -> int | None:
        """SIGTERM, wait; SIGKILL after ``timeout_s``. Returns the exit code."""
        if self.proc is None:
            return None
        self.signal(signal.SIGCONT)
        self.signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()
            return None

    def check(self) -> bool:
        """Restart the process if it exited on its own (a supervisor would); True if it had to."""
        if not self.lock.acquire(blocking=False):
            return False  # a fault is working on it
        try:
            return self._check()
        finally:
            self.lock.release()

    def _check(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            self.unplanned_exits.append(self.proc.returncode)
            logger.warning(
                "%s exited by itself with %s; restarting it (see %s)", self.name, self.proc.returncode, self.log
            )
            self.start()
            return True
        return False


# --- lag -------------------------------------------------------------------------------------------------------


class LagMonitor(threading.Thread):
    """Samples the topic's end offsets and the group's committed offsets every ``period_s``.

    The lag is expressed in time: how long ago the end of the topic was where the committed offsets are now (0 when
    everything is committed). A sample that could not be taken (broker away) has no lag.
    """

    def __init__(self, settings: Settings, period_s: float = 0.5) -> None:
        super().__init__(name="lag-monitor", daemon=True)
        self.settings = settings
        self.period_s = period_s
        self.tps = [TopicPartition(TOPIC, p) for p in range(PARTITIONS)]
        self.history: collections.deque[tuple[float, int]] = collections.deque(maxlen=20_000)  # (t, end total)
        # (t, lag in seconds, lag in records, committed total); None where the sample failed
        self.samples: collections.deque[tuple[float, float | None, int | None, int | None]] = collections.deque(
            maxlen=20_000
        )
        self.last: tuple[dict[int, int], dict[int, int]] | None = None  # (end, committed) per partition
        self.halt = threading.Event()
        self.lock = threading.Lock()

    def _client(self) -> KafkaConsumer:
        return KafkaConsumer(
            **topics.client_config(self.settings, timeout_s=3),
            group_id=GROUP,
            enable_auto_commit=False,
            request_timeout_ms=4_000,
            client_id="chaos-lag-monitor",
        )

    def offsets(self, client: KafkaConsumer) -> tuple[dict[int, int], dict[int, int]]:
        end = {tp.partition: int(o) for tp, o in client.end_offsets(self.tps, timeout_ms=3_000).items()}
        committed = {}
        for tp in self.tps:
            om = client.committed(tp, timeout_ms=3_000)
            committed[tp.partition] = int(om) if om is not None else 0
        return end, committed

    def run(self) -> None:
        client: KafkaConsumer | None = None
        while not self.halt.is_set():
            t = time.monotonic()
            lag: float | None = None
            try:
                if client is None:
                    client = self._client()
                end, committed = self.offsets(client)
                e, c = sum(end.values()), sum(committed.values())
                with self.lock:
                    self.history.append((t, e))
                    self.last = (end, committed)
                    lag = 0.0
                    if c < e:
                        # The last moment the topic's end was at or below what is committed now (none seen: the
                        # committed offsets are older than this monitor, an unbounded lag).
                        older = [ts for ts, et in self.history if et <= c]
                        lag = t - older[-1] if older else math.inf
                    self.samples.append((t, lag, e - c, c))
            except Exception as exc:
                logger.debug("lag sample failed: %s", exc)
                with self.lock:
                    self.samples.append((t, None, None, None))
                if client is not None:
                    with contextlib.suppress(Exception):
                        client.close(autocommit=False)
                client = None
            self.halt.wait(max(0.0, self.period_s - (time.monotonic() - t)))
        if client is not None:
            with contextlib.suppress(Exception):
                client.close(autocommit=False)

    def lag_now(self) -> tuple[float | None, int | None]:
        with self.lock:
            return (self.samples[-1][1], self.samples[-1][2]) if self.samples else (None, None)

    def committed_total(self) -> int | None:
        with self.lock:
            return next((s[3] for s in reversed(self.samples) if s[3] is not None), None)

    def wait_recovered(
        self,
        since: float,
        threshold_s: float,
        timeout_s: float,
        committed_before: int | None,
        stop: threading.Event | None = None,
    ) -> float | None:
        """Seconds from ``since`` to the first sample after it with a lag under ``threshold_s`` and more committed
        than ``committed_before`` (the sink works again, not merely a lag that has not grown yet); None on timeout."""
        deadline = since + timeout_s
        while time.monotonic() < deadline and not (stop is not None and stop.is_set()):
            with self.lock:
                samples = list(self.samples)
            for t, lag, _, c in samples:
                if t <= since or lag is None or c is None or lag > threshold_s:
                    continue
                if committed_before is None or c > committed_before:
                    return round(t - since, 2)
            time.sleep(self.period_s / 2)
        return None

    def wait_drained(self, timeout_s: float) -> tuple[dict[int, int], dict[int, int]] | None:
        """Wait until the committed offsets equal the end offsets twice in a row; returns them, or None."""
        deadline = time.monotonic() + timeout_s
        streak = 0
        while time.monotonic() < deadline:
            time.sleep(self.period_s)
            with self.lock:
                last = self.last
                lag = self.samples[-1][2] if self.samples else None
            if last is not None and lag == 0:
                streak += 1
                if streak >= 2:
                    return last
            else:
                streak = 0
        return None


# --- the campaign --------------------------------------------------------------------------------------------------


@dataclass
class Fault:
    kind: str
    lane: str
    start: float  # seconds since the campaign start
    end: float = 0.0  # when the fault was healed (process restarted, resumed, space freed, members gone)
    recovery_s: float | None = None  # end -> lag under one flush interval; None: not recovered in time
    detail: str = ""
    planned_s: float = 0.0  # when the schedule had it due (seconds since the campaign start)
    round: int = 0


@dataclass
class Poison:
    reason: str
    size: int
    partition: int | None = None
    offset: int | None = None  # None: the broker did not acknowledge it (it may or may not be in the topic)


@dataclass
class Ranges:
    durations: dict[str, tuple[float, float]] = field(
        default_factory=lambda: {
            "stop_sink": (SESSION_TIMEOUT_S + 2, SESSION_TIMEOUT_S + 10),
            "stop_broker": (10.0, 40.0),
            "disk_full": (5.0, 30.0),
            "store_readonly": (5.0, 30.0),
            "rebalance": (5.0, 20.0),
        }
    )


def run_checked(argv: list[str]) -> None:
    res = subprocess.run(argv, capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({res.returncode}): {res.stderr.strip()}")


def parse_range(text: str) -> tuple[float, float]:
    lo, _, hi = text.partition("-")
    a, b = float(lo), float(hi or lo)
    if not 0 < a <= b:
        raise argparse.ArgumentTypeError(f"{text!r} is not a range of seconds like 10-40")
    return a, b


class Campaign:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.faults_wanted = list(args.faults)
        self.plan = plan(args.seed, self.faults_wanted, args.rounds, args.minutes * 60)
        self.recoveries: list[threading.Thread] = []
        self.readonly: Path | None = None  # the read-only bind mount of store_readonly while it holds
        # Held by a store fault, and by kill_sink until the restarted sink has opened its store.
        self.store_lock = threading.Lock()
        self.run = uuid.UUID(int=random.Random(f"run/{args.seed}/{time.time_ns()}").getrandbits(128)).hex
        self.work = Path(tempfile.mkdtemp(prefix=f"chaos-{args.seed}-", dir=args.work_dir))
        self.store_dir = self.work / "store"
        self.store_dir.mkdir()
        self.mounted = False
        self.ledger = self.work / "ledger.txt"
        self.faults: list[Fault] = []
        self.poisons: list[Poison] = []
        self.halt = threading.Event()
        self.errors: list[str] = []  # faults that raised (a lane stops at its first)
        self.lane_threads: list[threading.Thread] = []
        self.broker_stopped = False
        self.t0 = time.monotonic()
        self.incarnation = 0
        self.server_url = os.environ.get("CLICKHOUSE_URL", "")
        port, cport = free_port(), free_port()
        overrides: dict[str, Any] = dict(
            kafka_broker_url=f"127.0.0.1:{port}",
            kafka_controller_port=cport,
            kafka_topic=TOPIC,
            kafka_group_id=GROUP,
            kafka_partitions=PARTITIONS,
            data_dir=self.store_dir,
            clickhouse_database=f"chaos_{args.seed}_{self.run[:6]}",
        )
        extra: dict[str, str] = {}
        if self.server_url:
            extra["CLICKHOUSE_URL"] = self.server_url
        if os.environ.get("CLICKSTREAM_CACHE_DIR"):
            extra["CLICKSTREAM_CACHE_DIR"] = os.environ["CLICKSTREAM_CACHE_DIR"]
        self.settings = Settings.from_env(clean_env(**extra), **overrides)
        self.env = clean_env(
            **extra,
            # The children run this checkout's code, as this process does.
            PYTHONPATH=os.pathsep.join(x for x in (str(ROOT), os.environ.get("PYTHONPATH", "")) if x),
            KAFKA_BROKER_URL=self.settings.kafka_broker_url,
            KAFKA_TOPIC=TOPIC,
            KAFKA_GROUP_ID=GROUP,
            KAFKA_PARTITIONS=str(PARTITIONS),
            CLICKHOUSE_DATABASE=self.settings.clickhouse_database,
            CLICKSTREAM_DATA_DIR=str(self.store_dir),
            CLICKSTREAM_CACHE_DIR=str(self.settings.cache_dir),
        )
        from clickstream_lib.stack import KafkaStack

        self.stack = KafkaStack(self.settings, home=self.work / "kafka")
        self.sinks: list[Proc] = []
        self.producer: Proc | None = None
        self.monitor = LagMonitor(self.settings)

    # --- helpers ---

    def now(self) -> float:
        return round(time.monotonic() - self.t0, 2)

    def sink_argv(self, i: int) -> list[str]:
        # -v: the sink's INFO lines, among them the one saying it opened the store (await_store_open).
        return [
            sys.executable, "-m", "clickstream_lib", "-v", "consume",
            "--instance-id", f"chaos-sink-{i}",
            "--session-timeout", str(SESSION_TIMEOUT_S),
            "--batch-max-wait", str(FLUSH_S),
        ]  # fmt: skip

    def producer_argv(self) -> list[str]:
        # Every start is a new incarnation: its event ids never collide with an earlier one's.
        self.incarnation = self.producer.starts if self.producer is not None else 0
        if self.incarnation > MAX_INCARNATIONS:
            raise RuntimeError("too many producer incarnations for the event id layout")
        return [
            sys.executable, str(Path(__file__).resolve()), "producer",
            "--ledger", str(self.ledger), "--incarnation", str(self.incarnation), "--rate", str(self.args.rate),
            "--seed", str(self.args.seed), "--run", self.run, "--topic", TOPIC,
        ]  # fmt: skip

    def mount_tmpfs(self) -> None:
        size = f"{self.args.tmpfs_mb}m"
        res = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(self.store_dir)],
            capture_output=True,
            text=True,
        )
        if res.returncode != 0:
            raise SystemExit(
                f"chaos: cannot mount a {size} tmpfs on {self.store_dir} for the disk_full fault "
                f"({res.stderr.strip()}): run as root, or leave disk_full out of --faults"
            )
        self.mounted = True

    def umount(self) -> None:
        if self.mounted:
            res = subprocess.run(["umount", str(self.store_dir)], capture_output=True, text=True)
            if res.returncode != 0:
                subprocess.run(["umount", "-l", str(self.store_dir)], capture_output=True)
            self.mounted = False

    def broker_pid(self) -> int | None:
        return self.stack.status().pid

    def supervise(self) -> None:
        """A process that exited by itself is a failure of the campaign (the sink waits out a broker that is away and
        retries a failing store; the producer retries too). It is restarted so the run can go on and the oracle
        still judge the data."""
        for p in [*self.sinks, *([self.producer] if self.producer else [])]:
            if p.check():
                self.errors.append(
                    f"{p.name} exited by itself with {p.unplanned_exits[-1]} at {self.now():.0f} s (see {p.log})"
                )

    # --- faults of the sink, store and broker lanes ---

    def pick_sink(self, rng: random.Random) -> Proc:
        return rng.choice(self.sinks)

    def fault_kill_sink(self, f: Fault, rng: random.Random) -> None:
        sink = self.pick_sink(rng)
        with self.store_lock, sink.lock:
            sink.kill()
            time.sleep(rng.uniform(0.0, 2.0))
            offset = sink.log.stat().st_size
            sink.start()
            opened = self.await_store_open(sink, offset)
        f.detail = f"{sink.name} SIGKILL, restarted" + (f" (store open in {opened:.1f} s)" if opened else "")

    def await_store_open(self, sink: Proc, log_offset: int, timeout_s: float = 120.0) -> float | None:
        """Wait until the restarted sink has opened its store: its log says it waits for Kafka or joined the group,
        both said after the store is open (the engine started, its tables loaded, the schema checked). A store fault
        waits for this, so it never hits the engine's start. Seconds waited; None if the process ended or took
        longer (the supervisor then reports it)."""
        t = time.monotonic()
        marks = (b"waiting for Kafka at", b".events: group ")
        while time.monotonic() - t < timeout_s and sink.alive() and not self.halt.is_set():
            with sink.log.open("rb") as log:
                log.seek(log_offset)
                text = log.read()
            if any(m in text for m in marks):
                return time.monotonic() - t
            time.sleep(0.2)
        return None

    def fault_stop_sink(self, f: Fault, rng: random.Random) -> None:
        sink = self.pick_sink(rng)
        hold = rng.uniform(*self.args.ranges.durations["stop_sink"])
        with sink.lock:
            sink.signal(signal.SIGSTOP)
            try:
                self.halt.wait(hold)
            finally:
                sink.signal(signal.SIGCONT)
        f.detail = f"{sink.name} SIGSTOP {hold:.1f} s (session timeout {SESSION_TIMEOUT_S:.0f} s)"

    def fault_kill_broker(self, f: Fault, rng: random.Random) -> None:
        self.stack.kill()
        time.sleep(rng.uniform(0.0, 3.0))
        t = time.monotonic()
        if self.halt.is_set():
            return  # shutting down: the cleanup stops the broker, nothing may start it again
        self.stack.up(timeout_s=180)
        f.detail = f"broker SIGKILL, restarted in {time.monotonic() - t:.1f} s"

    def fault_stop_broker(self, f: Fault, rng: random.Random) -> None:
        pid = self.broker_pid()
        hold = rng.uniform(*self.args.ranges.durations["stop_broker"])
        if pid is None:
            f.detail = "broker not running"
            return
        self.broker_stopped = True
        os.kill(pid, signal.SIGSTOP)
        try:
            self.halt.wait(hold)
        finally:
            os.kill(pid, signal.SIGCONT)
            self.broker_stopped = False
        f.detail = f"broker SIGSTOP {hold:.1f} s"

    def fault_disk_full(self, f: Fault, rng: random.Random) -> None:
        hold = rng.uniform(*self.args.ranges.durations["disk_full"])
        filler = self.store_dir / "chaos-filler"
        written = 0
        chunk = b"\0" * (1 << 20)
        with self.store_lock:
            with filler.open("wb", buffering=0) as out:
                try:
                    while True:
                        written += out.write(chunk) or 0
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
            free = shutil.disk_usage(self.store_dir).free
            try:
                self.halt.wait(hold)
            finally:
                filler.unlink()
        f.detail = f"filled {written >> 20} MiB (free {free >> 10} KiB) for {hold:.1f} s"

    def fault_store_readonly(self, f: Fault, rng: random.Random) -> None:
        """ClickHouse failing: the engine's table storage (``<chdb>/store``, every table of the Atomic databases) is
        made read-only by a read-only bind mount over it, so every insert fails ("Read-only file system") until it is
        unmounted. The engine keeps running and answering reads, as a server with a read-only disk would; remounting
        the whole tmpfs read-only is refused while the engine holds files open for writing."""
        hold = rng.uniform(*self.args.ranges.durations["store_readonly"])
        target = Path(self.settings.store_url.path) / "store"
        if not target.is_dir():
            raise RuntimeError(f"store_readonly: no table storage at {target}")
        with self.store_lock:
            run_checked(["mount", "--bind", str(target), str(target)])
            self.readonly = target
            try:
                run_checked(["mount", "-o", "remount,bind,ro", str(target)])
                self.halt.wait(hold)
            finally:
                self.unmount_readonly()
        f.detail = f"table storage read-only for {hold:.1f} s"

    def unmount_readonly(self) -> None:
        if self.readonly is not None:
            # Busy when the engine still has a file open through it (a query reading a part): detach it lazily.
            if subprocess.run(["umount", str(self.readonly)], capture_output=True).returncode != 0:
                run_checked(["umount", "-l", str(self.readonly)])
            self.readonly = None

    # --- faults of the clients and group lanes ---

    def fault_kill_producer(self, f: Fault, rng: random.Random) -> None:
        assert self.producer is not None
        with self.producer.lock:
            self.producer.kill()
            time.sleep(rng.uniform(0.0, 2.0))
            self.producer.start()
        f.detail = f"producer SIGKILL, restarted as incarnation {self.incarnation}"

    def fault_rebalance(self, f: Fault, rng: random.Random) -> None:
        """Plain consumers join the sink's group for a few seconds each and leave without committing.

        The storm lasts its drawn length, and longer (up to 90 s) until a member was given partitions: with the
        broker away (another lane's fault) nobody can join.
        """
        deadline = time.monotonic() + rng.uniform(*self.args.ranges.durations["rebalance"])
        give_up = deadline + 90
        joined = 0
        started = [0]
        assigned = [0]
        count_lock = threading.Lock()
        threads: list[threading.Thread] = []

        def member(stay_s: float, n: int) -> None:
            try:
                c = KafkaConsumer(
                    TOPIC,
                    **topics.client_config(self.settings, timeout_s=5),
                    group_id=GROUP,
                    client_id=f"chaos-joiner-{n}",
                    enable_auto_commit=False,
                    max_poll_records=50,
                    session_timeout_ms=int(SESSION_TIMEOUT_S * 1000),
                    heartbeat_interval_ms=1_000,
                )
            except Exception as exc:
                logger.info("joiner %d did not start: %s", n, exc)
                return
            with count_lock:
                started[0] += 1
            try:
                end = time.monotonic() + stay_s
                got = False
                while time.monotonic() < end:
                    c.poll(timeout_ms=200)
                    if not got and c.assignment():
                        got = True
                        with count_lock:
                            assigned[0] += 1
            except Exception as exc:
                logger.info("joiner %d: %s", n, exc)
            finally:
                with contextlib.suppress(Exception):
                    c.close(autocommit=False)

        while time.monotonic() < deadline or (not assigned[0] and time.monotonic() < give_up):
            for _ in range(rng.randint(1, 3)):
                joined += 1
                th = threading.Thread(target=member, args=(rng.uniform(1.0, 6.0), joined), daemon=True)
                th.start()
                threads.append(th)
            time.sleep(rng.uniform(1.0, 4.0))
        for th in threads:
            th.join(timeout=60)
        f.detail = f"{joined} members, {started[0]} connected, {assigned[0]} given partitions, left"
        if not assigned[0]:
            raise RuntimeError("rebalance: no member was given partitions, even 90 s past the storm")

    def fault_poison(self, f: Fault, rng: random.Random) -> None:
        prod = None
        deadline = time.monotonic() + 120
        while prod is None:
            try:
                prod = KafkaProducer(**topics.client_config(self.settings, timeout_s=5), max_block_ms=5_000)
            except Exception as exc:  # the broker is away (another lane's fault): a foreign producer retries
                if time.monotonic() > deadline:
                    raise
                logger.info("poison producer not created (%s); retrying", exc)
                time.sleep(1.0)
        sent: list[tuple[Poison, Any]] = []
        try:
            for _ in range(rng.randint(3, 8)):
                n = len(self.poisons) + len(sent)
                value, key = self.poison_value(rng, n)
                rej = events.parse(value) if value is not None else events.parse(None)  # type: ignore[arg-type]
                assert isinstance(rej, events.Rejection), value
                p = Poison(rej.reason, len(value or b""))
                try:
                    sent.append((p, prod.send(TOPIC, value, key=key)))
                except Exception as exc:
                    logger.info("poison %d not sent: %s", n, exc)
                    sent.append((p, None))
            prod.flush(timeout=30)
        except Exception as exc:
            logger.info("poison flush: %s", exc)
        finally:
            with contextlib.suppress(Exception):
                prod.close(timeout=5)
        for p, fut in sent:
            if fut is not None and fut.is_done and fut.succeeded():
                md = fut.value
                p.partition, p.offset = md.partition, md.offset
            self.poisons.append(p)
        f.detail = f"{len(sent)} invalid messages ({sum(p.offset is not None for p, _ in sent)} acknowledged)"

    @staticmethod
    def poison_value(rng: random.Random, n: int) -> tuple[bytes | None, bytes | None]:
        ts = '"2026-12-06T08:00:00Z"'
        kinds = [
            f"not json #{n}".encode(),
            b"\xff\xfe{" + str(n).encode(),
            f"[{n}, 2]".encode(),
            f'{{"user_id": "u{n}"}}'.encode(),
            f'{{"user_id": {n}, "item_id": "i", "interaction_type": "view", "timestamp": {ts}}}'.encode(),
            f'{{"user_id": "u{n}", "item_id": "i", "interaction_type": "vi\\new", "timestamp": {ts}}}'.encode(),
            f'{{"user_id": "u{n}", "item_id": "i", "interaction_type": "view", "timestamp": "soon {n}"}}'.encode(),
            (f'{{"user_id": "u{n}", "pad": "' + "x" * rng.randint(70_000, 400_000) + '"}').encode(),
            None,
        ]
        value = rng.choice(kinds)
        return value, (f"chaos-tombstone-{n}".encode() if value is None else None)

    # --- lanes ---

    def inject(self, p: Planned, due: float) -> Fault:
        """Run one fault until it is healed; its recovery is measured by a thread of its own, so the lane keeps to
        its schedule (faults of one lane may then overlap in their recoveries, never in their holds)."""
        f = Fault(p.kind, p.lane, self.now(), planned_s=round(due - self.t0, 2), round=p.round)
        logger.info("[%7.1f s] %s: %s (round %d) ...", f.start, p.lane, p.kind, p.round + 1)
        getattr(self, f"fault_{p.kind}")(f, random.Random(f"{self.args.seed}/{p.lane}/{p.index}"))
        f.end = self.now()
        self.faults.append(f)
        healed = self.t0 + f.end
        committed = self.monitor.committed_total()

        def measure() -> None:
            f.recovery_s = self.monitor.wait_recovered(
                healed, self.args.recovered_lag_s, self.args.recovery_timeout, committed, self.halt
            )
            logger.info(
                "[%7.1f s] %s: %s done (%s); recovered in %s", self.now(), p.lane, p.kind, f.detail,
                "-" if f.recovery_s is None else f"{f.recovery_s:.1f} s",
            )  # fmt: skip

        th = threading.Thread(target=measure, name=f"recovery-{p.lane}-{p.index}", daemon=True)
        th.start()
        self.recoveries.append(th)
        return f

    def lane(self, name: str, planned: list[Planned], phase_start: float) -> None:
        try:
            for p in planned:
                due = phase_start + p.at
                if self.halt.wait(max(0.0, due - time.monotonic())):
                    return
                self.inject(p, due)
        except Exception as exc:
            logger.exception("lane %s failed", name)
            self.errors.append(f"lane {name}: {type(exc).__name__}: {exc}")

    # --- run ---

    def start(self) -> None:
        if "disk_full" in self.faults_wanted and not self.server_url:
            self.mount_tmpfs()
        self.stack.up(timeout_s=180)
        topics.ensure_topic(self.settings, TOPIC, PARTITIONS)
        topics.ensure_topic(self.settings, self.settings.dead_letter_topic)
        n_sinks = self.args.sinks if self.server_url else 1
        for i in range(n_sinks):
            sink = Proc(f"sink-{i}", lambda i=i: self.sink_argv(i), self.env, self.work / f"sink-{i}.log")
            sink.start()
            self.sinks.append(sink)
        self.producer = Proc("producer", self.producer_argv, self.env, self.work / "producer.log")
        self.producer.start()
        self.monitor.start()
        t = time.monotonic()
        warmup_s = max(240.0, self.args.recovery_timeout)
        if self.monitor.wait_recovered(t + 3, self.args.recovered_lag_s, warmup_s, 0) is None:
            raise RuntimeError(f"the pipeline did not reach a steady lag in {warmup_s:.0f} s; see logs in {self.work}")
        logger.info(
            "[%7.1f s] pipeline steady (lag %.2f s); campaign of %.1f min starts",
            self.now(),
            self.monitor.lag_now()[0] or 0.0,
            self.args.minutes,
        )

    def campaign(self) -> None:
        phase_start = time.monotonic()
        threads = self.lane_threads
        for name, planned in self.plan.items():
            th = threading.Thread(target=self.lane, args=(name, planned, phase_start), name=name, daemon=True)
            th.start()
            threads.append(th)
        # Each lane runs its planned faults, then ends; the last recoveries are waited for before the drain.
        while any(th.is_alive() for th in [*threads, *self.recoveries]):
            self.supervise()
            time.sleep(1.0)

    def drain(self) -> tuple[dict[int, int], dict[int, int]]:
        assert self.producer is not None
        self.supervise()
        code = self.producer.stop(timeout_s=120)
        logger.info("[%7.1f s] producer stopped (exit %s); draining", self.now(), code)
        last = self.monitor.wait_drained(self.args.drain_timeout)
        for sink in self.sinks:
            sink.stop(timeout_s=90)
        self.monitor.halt.set()
        self.monitor.join(timeout=30)
        if last is None:
            raise OracleFailure(
                f"the sink did not drain in {self.args.drain_timeout:.0f} s (lag {self.monitor.lag_now()})"
            )
        # Re-read after the sinks left: a stop commits what it finished.
        with contextlib.closing(self.monitor._client()) as client:
            return self.monitor.offsets(client)

    def cleanup(self) -> None:
        self.halt.set()
        for th in self.lane_threads:  # a fault ends its hold at once on halt; a restart under way finishes
            th.join(timeout=60)
        for th in self.recoveries:
            th.join(timeout=10)
        with contextlib.suppress(Exception):
            self.unmount_readonly()
        pid = None
        with contextlib.suppress(Exception):
            pid = self.broker_pid()
        if pid and self.broker_stopped:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        for p in [*self.sinks, *([self.producer] if self.producer else [])]:
            with contextlib.suppress(Exception):
                p.kill_all()
        self.monitor.halt.set()
        with contextlib.suppress(Exception):
            self.stack.down(timeout_s=20)
        self.umount()


class OracleFailure(Exception):
    pass


# --- the oracle ----------------------------------------------------------------------------------------------------


def read_ledger(path: Path) -> tuple[dict[int, int], dict[int, list[tuple[int, int]]]]:
    """``(sent, acked)``: per incarnation, the highest sequence number declared sent, and the acknowledged ranges."""
    sent: dict[int, int] = {}
    acked: dict[int, list[tuple[int, int]]] = collections.defaultdict(list)
    with path.open() as f:
        for line in f:
            parts = line.split()
            if len(parts) != 4:
                continue  # a line cut by kill -9
            kind, inc, a, b = parts[0], int(parts[1]), int(parts[2]), int(parts[3])
            if kind == "S":
                sent[inc] = max(sent.get(inc, -1), b)
            elif kind == "A":
                acked[inc].append((a, b))
    return sent, dict(acked)


def oracle(c: Campaign, end: dict[int, int], committed: dict[int, int]) -> dict[str, Any]:
    """Read the store and judge it. Returns the findings; ``failures`` lists what broke."""
    import numpy as np

    from clickstream_lib import queries
    from clickstream_lib.store import connect

    failures: list[str] = []
    store = connect(c.settings)
    try:
        db = store.database
        key_sql = "reinterpretAsUInt64(reverse(unhex(concat('0000', substring(toString(event_id), 25, 12)))))"
        prefix = c.run[:8]
        ours = store.query_df(
            f"SELECT {key_sql} AS k FROM {db}.events WHERE startsWith(toString(event_id), {{p:String}})", {"p": prefix}
        )
        keys = ours["k"].to_numpy(dtype=np.uint64) if len(ours) else np.zeros(0, dtype=np.uint64)
        del ours
        stored_rows = int(store.scalar(f"SELECT count() FROM {db}.events"))
        foreign = stored_rows - len(keys)
        uniq, counts = np.unique(keys, return_counts=True)
        duplicated = int((counts - 1).sum())
        dup_examples = [int(k) for k in uniq[counts > 1][:5]]
        sent, acked = read_ledger(c.ledger)
        inc_of = (uniq >> np.uint64(SEQ_BITS)).astype(np.int64)
        seq_of = (uniq & np.uint64((1 << SEQ_BITS) - 1)).astype(np.int64)
        max_sent = np.array([sent.get(int(i), -1) for i in range(MAX_INCARNATIONS + 1)], dtype=np.int64)
        phantom = int((seq_of > max_sent[inc_of]).sum()) + foreign
        lost = 0
        n_acked = 0
        lost_examples: list[str] = []
        for inc, ranges in acked.items():
            mine = np.sort(seq_of[inc_of == inc])
            for a, b in ranges:
                n_acked += b - a + 1
                present = np.searchsorted(mine, b, side="right") - np.searchsorted(mine, a, side="left")
                if present != b - a + 1:
                    lost += (b - a + 1) - int(present)
                    if len(lost_examples) < 5:
                        lost_examples.append(f"incarnation {inc} seq {a}-{b}")
        n_sent = sum(v + 1 for v in sent.values())
        if lost:
            failures.append(f"{lost} acknowledged events not stored (e.g. {lost_examples})")
        if duplicated:
            failures.append(f"{duplicated} events stored more than once (keys {dup_examples})")
        if phantom:
            failures.append(f"{phantom} stored events were never sent ({foreign} not from this run)")

        # Dead letters: each acknowledged poison message once, at its offset, with its reason.
        dl = store.query_rows(f"SELECT kafka_partition, kafka_offset, reason FROM {db}.dead_letters")
        by_pos = collections.Counter((int(p), int(o)) for p, o, _ in dl)
        reason_at = {(int(p), int(o)): r for p, o, r in dl}
        dl_missing = dl_wrong = dl_twice = 0
        expected_pos = set()
        for p in c.poisons:
            if p.offset is None:
                continue
            pos = (int(p.partition or 0), p.offset)
            expected_pos.add(pos)
            if by_pos[pos] == 0:
                dl_missing += 1
            elif by_pos[pos] > 1:
                dl_twice += by_pos[pos] - 1
            if pos in reason_at and reason_at[pos] != p.reason:
                dl_wrong += 1
        allowance = collections.Counter(p.reason for p in c.poisons if p.offset is None)
        dl_extra = 0
        for pos, n in by_pos.items():
            if pos in expected_pos:
                continue
            if allowance[reason_at[pos]] >= n:
                allowance[reason_at[pos]] -= n  # an unacknowledged poison message that did reach the topic
            else:
                dl_extra += n
        if dl_missing or dl_wrong or dl_twice or dl_extra:
            failures.append(
                f"dead letters: {dl_missing} missing, {dl_twice} doubled, {dl_wrong} with another reason, "
                f"{dl_extra} unexpected"
            )

        # Offsets: every offset of the topic stored once (as an event or a dead letter), and committed = end.
        per_part = store.query_rows(
            f"SELECT p, count(), uniqExact(o), max(o) FROM (SELECT kafka_partition AS p, kafka_offset AS o FROM "
            f"{db}.events UNION ALL SELECT kafka_partition, kafka_offset FROM {db}.dead_letters) GROUP BY p"
        )
        stored_per_part = {int(p): (int(n), int(u), int(m)) for p, n, u, m in per_part}
        offsets = {}
        for part in range(PARTITIONS):
            n, u, m = stored_per_part.get(part, (0, 0, -1))
            offsets[part] = {"end": end.get(part), "committed": committed.get(part), "stored": n, "distinct": u}
            if committed.get(part) != end.get(part):
                failures.append(f"partition {part}: committed {committed.get(part)} != end offset {end.get(part)}")
            if n != u:
                failures.append(f"partition {part}: {n} rows stored for {u} offsets")
            if u != end.get(part) or m + 1 != end.get(part):
                failures.append(f"partition {part}: {u} distinct offsets stored (max {m}), end offset {end.get(part)}")

        # Rollups: the same totals as the raw table.
        raw = queries.run(store, "kpis", source="raw")
        roll = queries.run(store, "kpis", source="rollup")
        raw_total = int(raw["total_interactions"].iloc[0])
        roll_total = int(roll["total_interactions"].iloc[0])
        raw_rev = round(float(raw["revenue"].iloc[0]), 2)
        roll_rev = round(float(roll["revenue"].iloc[0]), 2)
        if raw_total != roll_total or raw_total != stored_rows or abs(raw_rev - roll_rev) > 0.005:
            failures.append(
                f"rollup totals {roll_total} events / {roll_rev} revenue != raw {raw_total} / {raw_rev} "
                f"(rows {stored_rows})"
            )
    finally:
        store.close()
    return {
        "events": {
            "sent": n_sent,
            "acknowledged": n_acked,
            "stored": stored_rows,
            "stored_distinct": len(uniq),
            "lost": lost,
            "duplicated": duplicated,
            "never_sent": phantom,
        },
        "dead_letters": {
            "poison_sent": len(c.poisons),
            "poison_acknowledged": sum(p.offset is not None for p in c.poisons),
            "stored": len(dl),
            "missing": dl_missing,
            "doubled": dl_twice,
            "wrong_reason": dl_wrong,
            "unexpected": dl_extra,
            "by_reason": dict(collections.Counter(r for _, _, r in dl)),
        },
        "offsets": offsets,
        "rollup": {"raw_events": raw_total, "rollup_events": roll_total, "raw_revenue": raw_rev,
                   "rollup_revenue": roll_rev},
        "failures": failures,
    }  # fmt: skip


def summary_table(report: dict[str, Any]) -> str:
    lines = [f"{'fault':<14} {'n':>3} {'recovery p50 s':>15} {'max s':>7} {'not recovered':>14}"]
    for kind, s in report["faults_by_kind"].items():
        p50 = "-" if s["recovery_p50_s"] is None else f"{s['recovery_p50_s']:.1f}"
        mx = "-" if s["recovery_max_s"] is None else f"{s['recovery_max_s']:.1f}"
        lines.append(f"{kind:<14} {s['injected']:>3} {p50:>15} {mx:>7} {s['not_recovered']:>14}")
    ev = report.get("events", {})
    if ev:
        lines.append(
            "events: sent {sent} acknowledged {acknowledged} stored {stored} lost {lost} duplicated {duplicated} "
            "never-sent {never_sent}".format(**ev)
        )
    dl = report.get("dead_letters", {})
    if dl:
        lines.append(
            "dead letters: poison sent {poison_sent} acknowledged {poison_acknowledged} stored {stored} missing "
            "{missing} doubled {doubled} wrong-reason {wrong_reason} unexpected {unexpected}".format(**dl)
        )
    return "\n".join(lines)


def replay_args(argv: list[str], seed: int) -> list[str]:
    """The command line again with its seed, without where its output went (--report, --work-dir, --keep)."""
    out: list[str] = []
    skip = False
    for a in argv:
        if skip:
            skip = False
            continue
        name = a.split("=", 1)[0]
        if name in ("--report", "--work-dir", "--seed"):
            skip = "=" not in a
            continue
        if name == "--keep":
            continue
        out.append(a)
    return [*out, "--seed", str(seed)]


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["producer"]:
        p = argparse.ArgumentParser(prog="chaos.py producer")
        p.add_argument("--ledger", required=True)
        p.add_argument("--incarnation", type=int, required=True)
        p.add_argument("--rate", type=float, required=True)
        p.add_argument("--seed", type=int, required=True)
        p.add_argument("--run", required=True)
        p.add_argument("--topic", required=True)
        return run_producer(p.parse_args(argv[1:]))

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=3.0, help="length of the fault phase (default 3)")
    parser.add_argument(
        "--rounds",
        type=int,
        help="rounds per lane, each a seeded shuffle of its kinds: every kind is injected this many times "
        "(default: one per 2 minutes of --minutes, at least 1)",
    )
    parser.add_argument("--seed", type=int, default=None, help="seed of the fault schedule (default: random)")
    parser.add_argument(
        "--faults",
        default=",".join(FAULTS),
        type=lambda s: [x.strip() for x in s.split(",") if x.strip()],
        help=f"comma-separated fault kinds (default all: {','.join(FAULTS)})",
    )
    parser.add_argument("--rate", type=float, default=5000.0, help="events per second from the producer")
    parser.add_argument("--report", type=Path, help="write the JSON report here")
    parser.add_argument("--sinks", type=int, default=1, help="sink members (1..3; more than 1 needs CLICKHOUSE_URL)")
    parser.add_argument("--tmpfs-mb", type=int, default=1536, help="size of the store's tmpfs (disk_full)")
    parser.add_argument("--stop-broker-s", type=parse_range, default=(10.0, 40.0), help="SIGSTOP of the broker")
    parser.add_argument("--disk-full-s", type=parse_range, default=(5.0, 30.0), help="how long the disk stays full")
    parser.add_argument(
        "--store-readonly-s", type=parse_range, default=(5.0, 30.0), help="how long the table storage is read-only"
    )
    parser.add_argument("--rebalance-s", type=parse_range, default=(5.0, 20.0), help="length of a rebalance storm")
    parser.add_argument(
        "--recovered-lag-s",
        type=float,
        default=FLUSH_S,
        help=f"a fault is recovered from when the lag is back under this (default one flush interval, {FLUSH_S} s)",
    )
    parser.add_argument("--recovery-timeout", type=float, default=180.0, help="give up waiting for recovery")
    parser.add_argument("--drain-timeout", type=float, default=300.0)
    parser.add_argument("--work-dir", help="parent of the campaign's temporary directory (default: system temp)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (logs, ledger) on success")
    args = parser.parse_args(argv)
    unknown = [f for f in args.faults if f not in FAULTS]
    if unknown or not args.faults:
        parser.error(f"--faults: unknown kind {unknown or args.faults}; expected some of {','.join(FAULTS)}")
    if not 1 <= args.sinks <= 3:
        parser.error("--sinks must be 1..3")
    if args.sinks > 1 and not os.environ.get("CLICKHOUSE_URL"):
        parser.error("--sinks > 1 needs CLICKHOUSE_URL (a ClickHouse server): chdb allows one process per directory")
    if os.environ.get("CLICKHOUSE_URL") and {"disk_full", "store_readonly"} & set(args.faults):
        parser.error(
            "--faults: disk_full and store_readonly act on the embedded store's files; leave them out with "
            "CLICKHOUSE_URL"
        )
    if args.rounds is None:
        args.rounds = default_rounds(args.minutes)
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    if args.seed is None:
        args.seed = random.SystemRandom().randrange(1_000_000)
    args.ranges = Ranges()
    args.ranges.durations.update(
        {
            "stop_broker": args.stop_broker_s,
            "disk_full": args.disk_full_s,
            "store_readonly": args.store_readonly_s,
            "rebalance": args.rebalance_s,
        }
    )
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("kafka").setLevel(logging.CRITICAL)
    replay = "python bench/chaos.py " + shlex.join(replay_args(argv, args.seed))

    def on_term(*_: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    c = Campaign(args)
    logger.info("seed %d, work directory %s, database %s", args.seed, c.work, c.settings.clickhouse_database)
    for lane, planned in c.plan.items():
        logger.info("plan %s: %s", lane, ", ".join(f"{p.kind}@{p.at:.0f}s" for p in planned))
    report: dict[str, Any] = {
        "seed": args.seed,
        "minutes": args.minutes,
        "rate": args.rate,
        "faults_requested": args.faults,
        "rounds": args.rounds,
        "replay": replay,
        "store": "server" if c.server_url else "embedded",
        "sinks": len(c.sinks) or args.sinks,
        "recovered_lag_s": args.recovered_lag_s,
        "load": os.getloadavg(),
    }
    failures: list[str] = []
    t_start = time.monotonic()
    try:
        c.start()
        c.campaign()
        failures += c.errors
        end, committed = c.drain()
        report.update(oracle(c, end, committed))
        failures += report.pop("failures")
    except OracleFailure as exc:
        failures.append(str(exc))
    except KeyboardInterrupt:
        failures.append("interrupted")
    except Exception as exc:
        logger.exception("campaign failed")
        failures.append(f"campaign error: {type(exc).__name__}: {exc}")
    finally:
        c.cleanup()
    by_kind: dict[str, Any] = {}
    for kind in FAULTS:
        fs = [f for f in c.faults if f.kind == kind]
        if not fs:
            continue
        rec = [f.recovery_s for f in fs if f.recovery_s is not None]
        st = pcts(rec)
        by_kind[kind] = {
            "injected": len(fs),
            "recovery_p50_s": st["p50"],
            "recovery_max_s": st["max"],
            "not_recovered": sum(f.recovery_s is None for f in fs),
        }
    for kind in args.faults:
        n = by_kind.get(kind, {}).get("injected", 0)
        if n < args.rounds and "interrupted" not in failures:
            failures.append(f"fault {kind} was injected {n} times of {args.rounds} planned")
    for kind, s in by_kind.items():
        if s["not_recovered"] and "interrupted" not in failures:
            failures.append(f"{s['not_recovered']} {kind} fault(s) not recovered from in {args.recovery_timeout:.0f} s")
    report["faults_by_kind"] = by_kind
    report["faults"] = [asdict(f) for f in sorted(c.faults, key=lambda f: f.start)]
    report["plan"] = {lane: [asdict(p) for p in planned] for lane, planned in c.plan.items()}
    report["unplanned_exits"] = {p.name: p.unplanned_exits for p in [*c.sinks, *([c.producer] if c.producer else [])]}
    report["elapsed_s"] = round(time.monotonic() - t_start, 1)
    report["load_end"] = os.getloadavg()
    report["failures"] = failures
    report["passed"] = not failures
    if args.report:
        args.report.write_text(json.dumps(report, indent=2, default=str))
    print(summary_table(report), file=sys.stderr)
    if failures:
        for f in failures:
            print(f"ORACLE FAILURE: {f}", file=sys.stderr)
        print(
            f"chaos: FAILED with seed {args.seed}; logs and ledger kept in {c.work}\nreplay: {replay}", file=sys.stderr
        )
        return 1
    print(f"chaos: passed (seed {args.seed}, {report['elapsed_s']:.0f} s)", file=sys.stderr)
    if not args.keep:
        shutil.rmtree(c.work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
