"""Secure Kafka for real: a second local broker with a SASL_SSL listener (SCRAM-SHA-512, TLS from a CA generated here).

Clients are built from Settings exactly as a user would configure them (KAFKA_SECURITY_PROTOCOL=SASL_SSL, ...).
Each misconfiguration must fail at once with a KafkaSecurityError naming the variable to fix, and no secret may
appear in any log record or exception text.
"""

from __future__ import annotations

import logging
import secrets
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from kafka import KafkaConsumer, KafkaProducer
from kafka.errors import KafkaError

from clickstream_lib.errors import KafkaSecurityError
from clickstream_lib.settings import Settings
from clickstream_lib.stack import KafkaStack, SecureListener, free_port
from clickstream_lib.stack.pki import Pki, make_pki
from clickstream_lib.store import Store
from clickstream_lib.topics import client_config, ensure_topic, ping, unreachable
from tests.conftest import base_env

pytestmark = pytest.mark.integration

USER = "clickstream-app"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def password() -> str:
    return "pw-" + secrets.token_urlsafe(18)


@pytest.fixture(scope="module")
def secure_kafka(
    pki: Pki, password: str, tmp_path_factory: pytest.TempPathFactory, base_settings: Settings
) -> Iterator[KafkaStack]:
    """A broker of its own (the session broker stays plaintext) with PLAINTEXT admin + SASL_SSL client listeners."""
    home = tmp_path_factory.mktemp("secure-kafka")
    port, cport, sport = free_port(), free_port(), free_port()
    admin_settings = Settings.from_env(
        base_env(),
        kafka_broker_url=f"127.0.0.1:{port}",
        kafka_controller_port=cport,
        data_dir=home,
        cache_dir=base_settings.cache_dir,
        kafka_heap_mb=256,
    )
    listener = SecureListener(
        port=sport, certfile=pki.server_cert, keyfile=pki.server_key, cafile=pki.ca, users={USER: password}
    )
    stack = KafkaStack(admin_settings, secure=listener)
    stack.up(timeout_s=120)
    try:
        yield stack
    finally:
        stack.down()


@pytest.fixture
def secure(settings: Settings, secure_kafka: KafkaStack, pki: Pki, password: str) -> Settings:
    """This test's settings, pointed at the SASL_SSL listener as a user would configure them."""
    assert secure_kafka.secure is not None
    env = base_env(
        KAFKA_BROKER_URL=secure_kafka.secure.url,
        KAFKA_SECURITY_PROTOCOL="SASL_SSL",
        KAFKA_SASL_MECHANISM="SCRAM-SHA-512",
        KAFKA_SASL_USERNAME=USER,
        KAFKA_SASL_PASSWORD=password,
        KAFKA_SSL_CAFILE=str(pki.ca),
        KAFKA_TOPIC=settings.kafka_topic,
        KAFKA_GROUP_ID=settings.kafka_group_id,
        CLICKSTREAM_DATA_DIR=str(settings.data_dir),
        CLICKHOUSE_DATABASE=settings.clickhouse_database,
    )
    return Settings.from_env(env)


def _all_text(caplog: pytest.LogCaptureFixture, exc: BaseException | None = None) -> str:
    """Every captured log line (with tracebacks) and the full exception chain, as one string."""
    parts = [caplog.text]
    for record in caplog.records:
        parts.append(record.getMessage())
        if record.exc_info and record.exc_info[1]:
            parts.append("".join(traceback.format_exception(record.exc_info[1])))
    if exc is not None:
        parts.append("".join(traceback.format_exception(exc)))
        parts.append(repr(exc))
    return "\n".join(parts)


def test_producer_and_group_consumer_work_over_sasl_ssl(
    secure: Settings, password: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    assert ping(secure)["cluster_id"]
    ensure_topic(secure, secure.kafka_topic, partitions=3)
    producer = KafkaProducer(**client_config(secure), linger_ms=5)
    try:
        for i in range(300):
            producer.send(secure.kafka_topic, key=f"user_{i % 7}".encode(), value=str(i).encode())
        producer.flush(timeout=30)
    finally:
        producer.close()
    consumer = KafkaConsumer(
        secure.kafka_topic,
        **client_config(secure),
        group_id=secure.kafka_group_id,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    try:
        got: list[int] = []
        deadline = time.monotonic() + 60  # a bound on a loaded machine, not a speed requirement
        while len(got) < 300 and time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=500).values():
                got.extend(int(r.value) for r in records)
        got.sort()
        consumer.commit()
        committed = {tp.partition: consumer.committed(tp) for tp in consumer.assignment()}
    finally:
        consumer.close()
    assert got == list(range(300))
    assert sum(committed.values()) == 300
    # kafka-python logged the SCRAM login at DEBUG/INFO; the password itself must not be anywhere.
    text = _all_text(caplog)
    assert f"Authenticated as {USER}" in text
    assert password not in text


def test_users_are_not_written_to_broker_files_or_command_line(secure_kafka: KafkaStack, password: str) -> None:
    props = secure_kafka.config.properties_file.read_text()
    assert "SASL_SSL://" in props and "ssl.keystore.type=PEM" in props
    assert password not in props
    assert password not in secure_kafka.log_file.read_text(errors="replace")
    pid = secure_kafka.status().pid
    assert pid
    assert password.encode() not in Path(f"/proc/{pid}/cmdline").read_bytes()
    keystore = secure_kafka.home / "tls" / "broker.pem"
    assert keystore.stat().st_mode & 0o077 == 0  # the broker's private key is readable by its owner only


def _wrong_password(s: Settings, pki: Pki, stack: KafkaStack) -> Settings:
    return s.replace(kafka_sasl_password="not-the-" + secrets.token_hex(8))


def _unknown_ca(s: Settings, pki: Pki, stack: KafkaStack) -> Settings:
    return s.replace(kafka_ssl_cafile=str(pki.other_ca))


def _plaintext_to_tls_port(s: Settings, pki: Pki, stack: KafkaStack) -> Settings:
    return s.replace(kafka_security_protocol="PLAINTEXT")


def _sasl_plaintext_to_tls_port(s: Settings, pki: Pki, stack: KafkaStack) -> Settings:
    return s.replace(kafka_security_protocol="SASL_PLAINTEXT")


def _tls_to_plaintext_port(s: Settings, pki: Pki, stack: KafkaStack) -> Settings:
    return s.replace(kafka_broker_url=stack.url)


def _unknown_user(s: Settings, pki: Pki, stack: KafkaStack) -> Settings:
    return s.replace(kafka_sasl_username="nobody")


def _wrong_mechanism(s: Settings, pki: Pki, stack: KafkaStack) -> Settings:
    return s.replace(kafka_sasl_mechanism="SCRAM-SHA-256")


Breakage = Callable[[Settings, Pki, KafkaStack], Settings]  # a working client's settings -> broken ones
MISCONFIGURATIONS = [
    pytest.param(_wrong_password, "KAFKA_SASL_PASSWORD", "wrong password", id="wrong-password"),
    pytest.param(_unknown_user, "KAFKA_SASL_PASSWORD", "unknown user", id="unknown-user"),
    pytest.param(_unknown_ca, "KAFKA_SSL_CAFILE", "not signed by a CA", id="unknown-ca"),
    pytest.param(_plaintext_to_tls_port, "KAFKA_SECURITY_PROTOCOL", "is a TLS listener", id="plaintext-to-tls"),
    pytest.param(_sasl_plaintext_to_tls_port, "KAFKA_SECURITY_PROTOCOL", "is a TLS listener", id="sasl-plain-to-tls"),
    pytest.param(_tls_to_plaintext_port, "KAFKA_SECURITY_PROTOCOL", "did not complete a TLS", id="tls-to-plaintext"),
    pytest.param(_wrong_mechanism, "KAFKA_SASL_MECHANISM", "not enabled", id="wrong-mechanism"),
]


@pytest.mark.timeout(90)
@pytest.mark.parametrize(("breakage", "variable", "phrase"), MISCONFIGURATIONS)
def test_misconfiguration_fails_fast_naming_the_setting(
    breakage: Breakage,
    variable: str,
    phrase: str,
    secure: Settings,
    secure_kafka: KafkaStack,
    pki: Pki,
    password: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    bad = breakage(secure, pki, secure_kafka)
    # A bootstrap timeout far beyond the test's own timeout: only the up-front check can end this call in time, so
    # passing proves the failure does not wait for kafka-python's bootstrap to give up.
    with pytest.raises(KafkaSecurityError) as info:
        ping(bad, timeout_s=600)
    exc = info.value
    assert exc.variable == variable
    assert str(exc).startswith(f"{variable}: ")
    assert phrase in str(exc)
    assert not exc.retriable
    text = _all_text(caplog, exc)
    assert password not in text
    assert bad.kafka_sasl_password not in text


@pytest.mark.timeout(90)
@pytest.mark.parametrize(
    ("breakage", "variable"),
    [
        pytest.param(_wrong_password, "KAFKA_SASL_PASSWORD", id="wrong-password"),
        pytest.param(_unknown_ca, "KAFKA_SSL_CAFILE", id="unknown-ca"),
        pytest.param(_plaintext_to_tls_port, "KAFKA_SECURITY_PROTOCOL", id="plaintext-to-tls"),
    ],
)
def test_raw_client_bootstrap_failure_is_explained(
    breakage: Breakage,
    variable: str,
    secure: Settings,
    secure_kafka: KafkaStack,
    pki: Pki,
    password: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Code that builds kafka-python clients itself (producer, sink) gets the same answer through unreachable()."""
    caplog.set_level(logging.DEBUG)
    bad = breakage(secure, pki, secure_kafka)
    with pytest.raises(KafkaError) as raw:
        KafkaProducer(**client_config(bad, timeout_s=1.5))
    explained = unreachable(bad, raw.value)
    assert isinstance(explained, KafkaSecurityError)
    assert explained.variable == variable
    text = _all_text(caplog, explained)
    assert password not in text
    assert bad.kafka_sasl_password not in text


def test_settings_describe_and_repr_hide_the_password(secure: Settings, password: str) -> None:
    assert password not in repr(secure)
    assert password not in str(secure.describe())
    assert secure.describe()["KAFKA_SASL_PASSWORD"] == "***"


def test_producer_and_sink_work_end_to_end_over_sasl_ssl(
    secure: Settings, store: Store, password: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The library's own Producer and Sink, configured only through Settings, deliver every event exactly once."""
    from clickstream_lib.producer import Producer
    from clickstream_lib.sink import Sink

    caplog.set_level(logging.DEBUG)
    n = 2_000
    producer = Producer(secure, rate=None, seed=7)
    sent = producer.run(events=n)
    assert sent.acked == n and sent.failed == 0
    stats = Sink(secure, store).run(until_idle=3.0)
    assert stats.rows_inserted == n and stats.dead_letters == 0 and stats.total_lag == 0
    assert store.scalar(f"SELECT count() FROM {store.table('events')}") == n
    assert store.scalar(f"SELECT count() - uniqExact(event_id) FROM {store.table('events')}") == 0
    assert store.scalar(f"SELECT count() FROM {store.table('dead_letters')}") == 0
    assert password not in _all_text(caplog)


def test_cli_wrong_password_is_one_line_exit_2_without_the_secret(secure: Settings, secure_kafka: KafkaStack) -> None:
    """`clickstream produce` with a wrong password: exit 2, one line naming the variable, no traceback, no secret."""
    wrong = "not-the-" + secrets.token_hex(8)
    env = base_env(
        KAFKA_BROKER_URL=secure.kafka_broker_url,
        KAFKA_TOPIC=secure.kafka_topic,
        KAFKA_SECURITY_PROTOCOL="SASL_SSL",
        KAFKA_SASL_USERNAME=USER,
        KAFKA_SASL_PASSWORD=wrong,
        KAFKA_SSL_CAFILE=secure.kafka_ssl_cafile,
        CLICKSTREAM_DATA_DIR=str(secure_kafka.home / "cli-data"),
    )
    cli = str(Path(sys.executable).with_name("clickstream"))
    proc = subprocess.run(
        [cli, "-vv", "produce", "--events", "10", "--no-progress"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if "configuration error" in ln]
    assert len(lines) == 1 and lines[0].startswith("clickstream: configuration error: KAFKA_SASL_PASSWORD: ")
    assert f"rejected user '{USER}'" in lines[0]
    assert "Traceback" not in proc.stderr
    assert wrong not in proc.stdout + proc.stderr  # even with -vv (DEBUG logging of kafka-python)
