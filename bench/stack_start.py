"""Start-up time of the local Kafka broker: cold (nothing cached) and warm (`up` after `down`).

Usage:  .venv/bin/python bench/stack_start.py [--repeats 5]

cold   = `clickstream stack up` with an empty jar cache, an empty Maven repository (everything fetched from Maven
         Central) and a new data directory (storage formatted);
warm   = `clickstream stack up` after `clickstream stack down` (jars cached, storage formatted, data kept);
raw    = the baseline measured in the same run: the same broker started by hand with `java ... kafka.Kafka`
         on the already-formatted storage, until its port accepts a metadata request.
Medians of --repeats runs; ratios are against the raw baseline.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "clickstream_lib.cli"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def env_for(data: Path, cache: Path, port: int, cport: int, m2: Path | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KAFKA_", "CLICKHOUSE_", "CLICKSTREAM_"))}
    env.update(
        KAFKA_BROKER_URL=f"127.0.0.1:{port}",
        CLICKSTREAM_KAFKA_CONTROLLER_PORT=str(cport),
        CLICKSTREAM_DATA_DIR=str(data),
        CLICKSTREAM_CACHE_DIR=str(cache),
    )
    if m2:
        env["MAVEN_OPTS"] = f"-Dmaven.repo.local={m2}"
    return env


def timed(cmd: list[str], env: dict[str, str]) -> float:
    t = time.perf_counter()
    subprocess.run(cmd, env=env, check=True, capture_output=True, timeout=600)
    return time.perf_counter() - t


def raw_start(home: Path, port: int, libs: Path) -> float:
    """Start the broker by hand with the properties `stack up` wrote; time until a metadata round-trip."""
    sys.path.insert(0, str(ROOT))
    from clickstream_lib.settings import Settings
    from clickstream_lib.topics import ping

    settings = Settings.from_env({}, kafka_broker_url=f"127.0.0.1:{port}", data_dir=home.parent, cache_dir=home)
    cmd = [
        "java",
        "-Xmx512m",
        "-Xms128m",
        f"-Dlog4j2.configurationFile={home / 'log4j2.properties'}",
        "-cp",
        f"{libs}/*",
        "kafka.Kafka",
        str(home / "server.properties"),
    ]
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    pass
                ping(settings, timeout_s=5)
                return time.perf_counter() - t
            except Exception:
                time.sleep(0.2)
    finally:
        proc.terminate()
        proc.wait(60)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    cold, warm, raw = [], [], []
    with tempfile.TemporaryDirectory(prefix="bench-stack-") as tmp:
        base = Path(tmp)
        for i in range(args.repeats):
            run = base / f"run{i}"
            port, cport = free_port(), free_port()
            env = env_for(run / "data", run / "cache", port, cport, run / "m2")
            cold.append(timed([*CLI, "stack", "up"], env))
            subprocess.run([*CLI, "stack", "down"], env=env, check=True, capture_output=True)
            warm.append(timed([*CLI, "stack", "up"], env))
            subprocess.run([*CLI, "stack", "down"], env=env, check=True, capture_output=True)
            libs = next((run / "cache").glob("kafka-*/libs"))
            raw.append(raw_start(run / "data" / "kafka", port, libs))
            shutil.rmtree(run / "m2", ignore_errors=True)
            print(f"run {i + 1}: cold {cold[-1]:.1f} s, warm {warm[-1]:.1f} s, raw java {raw[-1]:.1f} s", flush=True)
    r = statistics.median(raw)
    print(f"\nmedian of {args.repeats}:")
    print(f"  raw java kafka.Kafka start : {r:6.1f} s  (baseline)")
    print(f"  clickstream stack up (warm): {statistics.median(warm):6.1f} s  ({statistics.median(warm) / r:.2f}x raw)")
    print(f"  clickstream stack up (cold): {statistics.median(cold):6.1f} s  ({statistics.median(cold) / r:.2f}x raw)")


if __name__ == "__main__":
    main()
