"""What SASL_SSL costs: producer throughput and connection set-up, against PLAINTEXT on the same broker.

Usage:  .venv/bin/python bench/secure_kafka.py [--repeats 5] [--messages 100000] [--size 200]

produce   = a kafka-python producer built from Settings (acks=all, idempotent, linger 5 ms) sends --messages values of
            --size bytes to a fresh 6-partition topic and flushes; messages/s. Measured over the SASL_SSL
            listener (SCRAM-SHA-512, TLS 1.3) and, as the raw baseline in the same run, over the same broker's
            PLAINTEXT listener.
check     = clickstream_lib.security.check_kafka: the up-front TCP + TLS + SASL/SCRAM round trip that admin() runs
            before every secured admin client; against the baseline of constructing that KafkaAdminClient (which
            does its own TLS + SASL + metadata bootstrap).
Medians of --repeats runs. A broker with both listeners is started on free ports in a temporary directory (its own
CA and certificate from clickstream_lib/stack/pki.py) and stopped at the end.
"""

from __future__ import annotations

import argparse
import secrets
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from kafka import KafkaAdminClient, KafkaProducer  # noqa: E402

from clickstream_lib.security import check_kafka  # noqa: E402
from clickstream_lib.settings import Settings  # noqa: E402
from clickstream_lib.stack import KafkaStack, SecureListener, clean_env, free_port  # noqa: E402  # noqa: E402
from clickstream_lib.stack.pki import make_pki  # noqa: E402
from clickstream_lib.topics import client_config, ensure_topic  # noqa: E402


def produce_rate(settings: Settings, messages: int, size: int) -> float:
    topic = f"bench_{uuid.uuid4().hex[:8]}"
    ensure_topic(settings, topic, 6)
    value = b"x" * size
    producer = KafkaProducer(**client_config(settings), linger_ms=5, batch_size=256 * 1024)
    try:
        start = time.perf_counter()
        for i in range(messages):
            producer.send(topic, key=str(i % 1000).encode(), value=value)
        producer.flush(timeout=120)
        return messages / (time.perf_counter() - start)
    finally:
        producer.close()


def admin_setup_s(settings: Settings) -> float:
    start = time.perf_counter()
    client = KafkaAdminClient(**client_config(settings))
    elapsed = time.perf_counter() - start
    client.close()
    return elapsed


def check_s(settings: Settings) -> float:
    start = time.perf_counter()
    check_kafka(settings)
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--size", type=int, default=200)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="secure-bench-") as tmp:
        home = Path(tmp)
        pki = make_pki(home / "pki")
        password = secrets.token_urlsafe(18)
        port, cport, sport = free_port(), free_port(), free_port()
        plain = Settings.from_env(
            clean_env(), kafka_broker_url=f"127.0.0.1:{port}", kafka_controller_port=cport, data_dir=home / "data"
        )
        listener = SecureListener(
            port=sport, certfile=pki.server_cert, keyfile=pki.server_key, cafile=pki.ca, users={"bench": password}
        )
        stack = KafkaStack(plain, secure=listener)
        stack.up(timeout_s=120)
        try:
            secure = plain.replace(
                kafka_broker_url=listener.url,
                kafka_security_protocol="SASL_SSL",
                kafka_sasl_username="bench",
                kafka_sasl_password=password,
                kafka_ssl_cafile=str(pki.ca),
            )
            produce_rate(plain, 5_000, args.size)  # warm-up: JIT, page cache, group coordinator
            produce_rate(secure, 5_000, args.size)
            rates: dict[str, list[float]] = {"PLAINTEXT": [], "SASL_SSL": []}
            checks: list[float] = []
            admins: list[float] = []
            for _ in range(args.repeats):
                rates["PLAINTEXT"].append(produce_rate(plain, args.messages, args.size))
                rates["SASL_SSL"].append(produce_rate(secure, args.messages, args.size))
                checks.append(check_s(secure))
                admins.append(admin_setup_s(secure))
        finally:
            stack.down()

    med = {k: statistics.median(v) for k, v in rates.items()}
    print(f"produce {args.messages} x {args.size} B, median of {args.repeats}:")
    for name, value in med.items():
        print(f"  {name:10s} {value:12,.0f} msg/s")
    print(f"  SASL_SSL / PLAINTEXT throughput ratio: {med['SASL_SSL'] / med['PLAINTEXT']:.2f}")
    check_ms, admin_ms = statistics.median(checks) * 1000, statistics.median(admins) * 1000
    print(
        f"up-front check_kafka (TCP+TLS+SCRAM): {check_ms:.1f} ms; KafkaAdminClient set-up: {admin_ms:.1f} ms; "
        f"ratio {check_ms / admin_ms:.2f}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
