"""Secure-Kafka pieces that need no broker: SecureListener validation, the broker properties it produces, log
redaction of kafka-python's configuration dump, and check_kafka's TLS classification against a real TLS server on
127.0.0.1 (the certificate is rejected before any Kafka byte is exchanged, so no broker is needed)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from clickstream_lib.errors import KafkaSecurityError, StackError
from clickstream_lib.security import RedactSecrets, check_kafka
from clickstream_lib.settings import Settings
from clickstream_lib.stack import KafkaStack, SecureListener, free_port
from clickstream_lib.stack.pki import Pki, make_pki
from tests.conftest import base_env
from tests.helpers import TlsServer


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def _settings(tmp_path: Path, port: int = 19092, **overrides: object) -> Settings:
    return Settings.from_env(base_env(), kafka_broker_url=f"127.0.0.1:{port}", data_dir=tmp_path, **overrides)


# --- SecureListener and the broker configuration ----------------------------------------------------------------


def test_secure_listener_rejects_what_cannot_work(pki: Pki, tmp_path: Path) -> None:
    with pytest.raises(StackError, match="SCRAM-SHA-512"):
        SecureListener(port=9093, certfile=pki.server_cert, keyfile=pki.server_key, mechanism="PLAIN")
    with pytest.raises(StackError, match="loopback"):
        SecureListener(port=9093, certfile=pki.server_cert, keyfile=pki.server_key, host="0.0.0.0")
    with pytest.raises(StackError, match="keyfile"):
        SecureListener(port=9093, certfile=pki.server_cert, keyfile=tmp_path / "missing.key")
    listener = SecureListener(port=19092, certfile=pki.server_cert, keyfile=pki.server_key)
    with pytest.raises(StackError, match="collides"):
        KafkaStack(_settings(tmp_path, 19092), secure=listener)


def test_users_and_passwords_stay_out_of_repr_and_properties(pki: Pki, tmp_path: Path) -> None:
    secret = "pw-never-on-disk-1234"
    listener = SecureListener(port=free_port(), certfile=pki.server_cert, keyfile=pki.server_key, users={"app": secret})
    assert secret not in repr(listener)
    stack = KafkaStack(_settings(tmp_path, free_port()), secure=listener)
    stack.config.write()  # what up() writes before starting the JVM
    props = dict(line.split("=", 1) for line in stack.config.properties_file.read_text().splitlines() if "=" in line)
    assert secret not in stack.config.properties_file.read_text()
    assert f"SASL_SSL://{listener.url}" in props["listeners"]
    assert f"SASL_SSL://{listener.url}" in props["advertised.listeners"]
    assert "SASL_SSL:SASL_SSL" in props["listener.security.protocol.map"]
    assert props["inter.broker.listener.name"] == "PLAINTEXT"  # the stack administers through loopback PLAINTEXT
    assert props["listener.name.sasl_ssl.ssl.keystore.type"] == "PEM"
    keystore = Path(props["listener.name.sasl_ssl.ssl.keystore.location"])
    text = keystore.read_text()
    assert "PRIVATE KEY" in text and "CERTIFICATE" in text
    assert keystore.stat().st_mode & 0o077 == 0


def test_stack_admin_traffic_ignores_the_callers_security(pki: Pki, tmp_path: Path) -> None:
    user = _settings(
        tmp_path, 19092, kafka_security_protocol="SASL_SSL", kafka_sasl_username="u", kafka_sasl_password="p"
    )
    admin = KafkaStack(user).admin_settings
    assert admin.kafka_security_protocol == "PLAINTEXT" and admin.bootstrap_servers == ["127.0.0.1:19092"]


# --- log redaction --------------------------------------------------------------------------------------------------


def test_kafka_python_config_dump_is_redacted(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="kafka")  # the CLI quiets kafka-python: a test of it may have run first
    secret = "pw-in-a-config-dict"
    logging.getLogger("kafka.admin.client").debug(
        "Starting KafkaAdminClient with configuration: %s", {"sasl_plain_password": secret, "client_id": "x"}
    )
    logging.getLogger("kafka.producer.kafka").debug("two args %s %s", {"ssl_password": secret}, "y")
    assert secret not in caplog.text
    assert "'sasl_plain_password': '***'" in caplog.text and "'client_id': 'x'" in caplog.text
    record = logging.LogRecord("kafka.x", logging.INFO, __file__, 1, "%s", ({"password": ""},), None)
    assert RedactSecrets().filter(record) and record.getMessage() == "{'password': ''}"  # nothing to hide


# --- check_kafka against a TLS server -------------------------------------------------------------------------------


@pytest.fixture
def tls_server(pki: Pki) -> Iterator[TlsServer]:
    server = TlsServer(pki.server_cert, pki.server_key)
    yield server
    server.close()


def test_unknown_ca_names_kafka_ssl_cafile(tls_server: TlsServer, pki: Pki, tmp_path: Path) -> None:
    s = _settings(tmp_path, tls_server.port, kafka_security_protocol="SSL", kafka_ssl_cafile=str(pki.other_ca))
    with pytest.raises(KafkaSecurityError) as info:
        check_kafka(s)
    assert info.value.variable == "KAFKA_SSL_CAFILE"
    assert str(pki.other_ca) in str(info.value)


def test_certificate_for_another_name_names_the_broker_url(pki: Pki, tmp_path: Path) -> None:
    server = TlsServer(pki.wrong_name_cert, pki.wrong_name_key)
    try:
        s = _settings(tmp_path, server.port, kafka_security_protocol="SSL", kafka_ssl_cafile=str(pki.ca))
        with pytest.raises(KafkaSecurityError) as info:
            check_kafka(s)
        assert info.value.variable == "KAFKA_BROKER_URL"
        assert "does not name '127.0.0.1'" in str(info.value)
        # Turning the host-name check off (tests only) lets the same certificate through.
        check_kafka(s.replace(kafka_ssl_check_hostname=False))
    finally:
        server.close()


def test_right_ca_passes_and_plaintext_client_is_told_to_use_tls(
    tls_server: TlsServer, pki: Pki, tmp_path: Path
) -> None:
    ssl_settings = _settings(tmp_path, tls_server.port, kafka_security_protocol="SSL", kafka_ssl_cafile=str(pki.ca))
    check_kafka(ssl_settings)
    with pytest.raises(KafkaSecurityError) as info:
        check_kafka(ssl_settings.replace(kafka_security_protocol="PLAINTEXT"))
    assert info.value.variable == "KAFKA_SECURITY_PROTOCOL" and "is a TLS listener" in str(info.value)


def test_nothing_listening_is_left_to_broker_unavailable(tmp_path: Path) -> None:
    check_kafka(_settings(tmp_path, free_port(), kafka_security_protocol="SSL"))  # returns quietly
