"""ClickHouse over HTTPS (server mode): TLS settings, the client arguments they produce, and the errors a user sees;
and how least-privilege server users (docker-compose's ``ingest`` and ``dashboard``) open the store.

The handshake tests use a real TLS server on 127.0.0.1 with certificates generated here. It is not ClickHouse (no
server binary on these machines); it records whether an HTTP request got through the TLS layer and answers the way
ClickHouse answers a wrong password, so certificate verification itself is exercised for real.
"""

from __future__ import annotations

import logging
import secrets
import ssl
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import clickhouse_connect
import pytest
from clickhouse_connect.driver.exceptions import ClickHouseError

from clickstream_lib.errors import ConfigError, StoreError
from clickstream_lib.settings import Settings
from clickstream_lib.stack.pki import Pki, make_pki
from clickstream_lib.store import MIGRATIONS, connect, open_client, server_client_args
from tests.conftest import base_env

PASSWORD = "pw-" + secrets.token_urlsafe(12)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


class _Recorder(BaseHTTPRequestHandler):
    requests: list[str]

    def _answer(self) -> None:
        self.server.requests.append(self.path)  # type: ignore[attr-defined]
        body = (
            b"Code: 516. DB::Exception: dashboard: Authentication failed: password is incorrect, or there is no user "
            b"with such name. (AUTHENTICATION_FAILED)"
        )
        self.send_response(403)
        self.send_header("X-ClickHouse-Exception-Code", "516")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = _answer
    do_POST = _answer

    def log_message(self, format: str, *args: object) -> None:  # quiet
        pass


class _Server:
    def __init__(self, cert: Path | None, key: Path | None) -> None:
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
        self.httpd.requests = []  # type: ignore[attr-defined]
        if cert and key:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(cert, key)
            self.httpd.socket = ctx.wrap_socket(self.httpd.socket, server_side=True)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    @property
    def requests(self) -> list[str]:
        return self.httpd.requests  # type: ignore[attr-defined,no-any-return]

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def https_server(pki: Pki) -> Iterator[_Server]:
    server = _Server(pki.server_cert, pki.server_key)
    yield server
    server.close()


def _settings(port: int, scheme: str = "https", host: str = "127.0.0.1", **env: str) -> Settings:
    return Settings.from_env(
        base_env(CLICKHOUSE_URL=f"{scheme}://dashboard:{PASSWORD}@{host}:{port}/clickstream", **env)
    )


# --- settings and client arguments ----------------------------------------------------------------------------------


def test_https_arguments_verify_against_the_configured_ca(pki: Pki) -> None:
    url = _settings(8443, CLICKHOUSE_CA_FILE=str(pki.ca)).store_url
    args = server_client_args(url, "clickstream")
    assert args["secure"] is True and args["verify"] is True and args["ca_cert"] == str(pki.ca)
    assert (args["host"], args["port"], args["username"], args["database"]) == (
        "127.0.0.1",
        8443,
        "dashboard",
        "clickstream",
    )


def test_https_defaults_to_verification_with_the_system_store() -> None:
    args = server_client_args(_settings(8443).store_url)
    assert args["verify"] is True and "ca_cert" not in args


def test_host_settings_with_clickhouse_secure_use_https_and_the_ca(pki: Pki) -> None:
    s = Settings.from_env(
        base_env(
            CLICKHOUSE_HOST="ch.example",
            CLICKHOUSE_SECURE="true",
            CLICKHOUSE_USER="dashboard",
            CLICKHOUSE_PASSWORD=PASSWORD,
            CLICKHOUSE_CA_FILE=str(pki.ca),
        )
    )
    args = server_client_args(s.store_url)
    assert (args["secure"], args["port"], args["verify"], args["ca_cert"]) == (True, 8443, True, str(pki.ca))


def test_turning_verification_off_is_loud_and_secret_free(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    args = server_client_args(_settings(8443, CLICKHOUSE_VERIFY="false").store_url)
    assert args["verify"] is False
    assert "CLICKHOUSE_VERIFY=false" in caplog.text
    assert PASSWORD not in caplog.text


def test_plain_http_carries_no_tls_options(pki: Pki) -> None:
    args = server_client_args(_settings(8123, scheme="http", CLICKHOUSE_CA_FILE=str(pki.ca)).store_url)
    assert args["secure"] is False
    assert "verify" not in args and "ca_cert" not in args


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"CLICKHOUSE_CA_FILE": "/nonexistent/ca.pem"}, "CLICKHOUSE_CA_FILE"),
        ({"CLICKHOUSE_VERIFY": "maybe"}, "CLICKHOUSE_VERIFY"),
        ({"KAFKA_SSL_CERTFILE": "/nonexistent/client.pem"}, "KAFKA_SSL_CERTFILE"),
        ({"KAFKA_SSL_CHECK_HOSTNAME": "sometimes"}, "KAFKA_SSL_CHECK_HOSTNAME"),
    ],
)
def test_bad_tls_settings_name_the_variable(env: dict[str, str], variable: str) -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_env(base_env(**env))
    assert info.value.variable == variable


def test_client_certificate_needs_both_files(pki: Pki) -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_env(base_env(KAFKA_SSL_CERTFILE=str(pki.server_cert)))
    assert info.value.variable == "KAFKA_SSL_KEYFILE"
    both = Settings.from_env(
        base_env(
            KAFKA_SECURITY_PROTOCOL="SSL",
            KAFKA_SSL_CERTFILE=str(pki.server_cert),
            KAFKA_SSL_KEYFILE=str(pki.server_key),
            KAFKA_SSL_CHECK_HOSTNAME="false",
        )
    )
    cfg = both.kafka_client_config()
    assert (cfg["ssl_certfile"], cfg["ssl_keyfile"], cfg["ssl_check_hostname"]) == (
        str(pki.server_cert),
        str(pki.server_key),
        False,
    )


# --- real TLS handshakes ------------------------------------------------------------------------------------------


def _open_error(settings: Settings) -> StoreError:
    with pytest.raises(StoreError) as info:
        open_client(settings.store_url)
    assert PASSWORD not in str(info.value) and PASSWORD not in repr(info.value)
    assert info.value.__cause__ is None and info.value.__suppress_context__  # no driver text with the password
    return info.value


def test_unknown_ca_is_refused_before_any_request(https_server: _Server, pki: Pki) -> None:
    err = _open_error(_settings(https_server.port, CLICKHOUSE_CA_FILE=str(pki.other_ca)))
    assert "not signed by a trusted CA" in str(err) and "CLICKHOUSE_CA_FILE" in str(err)
    assert https_server.requests == []  # the password never left the client


def test_system_store_does_not_trust_a_private_ca(https_server: _Server) -> None:
    err = _open_error(_settings(https_server.port))
    assert "CLICKHOUSE_CA_FILE" in str(err)
    assert https_server.requests == []


def test_right_ca_completes_the_handshake(https_server: _Server, pki: Pki) -> None:
    err = _open_error(_settings(https_server.port, CLICKHOUSE_CA_FILE=str(pki.ca)))
    assert https_server.requests, "no HTTP request got through TLS"
    # Past TLS, the server's own answer is reported: here ClickHouse's wrong-password reply.
    assert "refused user 'dashboard'" in str(err) and "CLICKHOUSE_PASSWORD" in str(err)
    assert "CLICKHOUSE_CA_FILE" not in str(err)


def test_certificate_for_another_host_is_refused(pki: Pki) -> None:
    server = _Server(pki.wrong_name_cert, pki.wrong_name_key)
    try:
        err = _open_error(_settings(server.port, CLICKHOUSE_CA_FILE=str(pki.ca)))
        assert "does not name host '127.0.0.1'" in str(err)
        assert server.requests == []
    finally:
        server.close()


@pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning")  # the point of this test
def test_verification_off_reaches_an_untrusted_server(https_server: _Server, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    _open_error(_settings(https_server.port, CLICKHOUSE_VERIFY="false"))
    assert https_server.requests
    assert "CLICKHOUSE_VERIFY=false" in caplog.text


def test_https_to_a_plain_http_port_says_so() -> None:
    server = _Server(None, None)
    try:
        err = _open_error(_settings(server.port))
        assert "did not answer with TLS" in str(err)
    finally:
        server.close()


# --- least-privilege server users -----------------------------------------------------------------------------------


class _ServerClient:
    """Stands in for a clickhouse-connect client of a restricted server user: it may read the schema version but
    every DDL statement is refused, as ClickHouse refuses it for the compose ``ingest``/``dashboard`` users."""

    def __init__(self, version: int | None, log: list[str]) -> None:
        self.version = version
        self.log = log

    def query(self, sql: str, parameters: object = None) -> object:
        self.log.append(sql)
        if self.version is None:
            raise ClickHouseError("Code: 497. DB::Exception: ingest: Not enough privileges. (ACCESS_DENIED)")
        return type("Result", (), {"result_rows": [[self.version]]})()

    def command(self, sql: str, *args: object, **kwargs: object) -> object:
        self.log.append(sql)
        raise ClickHouseError("Code: 497. DB::Exception: ingest: Not enough privileges. (ACCESS_DENIED)")

    def close(self) -> None:
        pass


@pytest.mark.parametrize(
    ("version", "opens"), [(MIGRATIONS[-1].version, True), (MIGRATIONS[-1].version - 1, False), (None, False)]
)
def test_restricted_server_user_runs_no_ddl_once_the_schema_is_current(
    monkeypatch: pytest.MonkeyPatch, version: int | None, opens: bool
) -> None:
    log: list[str] = []
    monkeypatch.setattr(clickhouse_connect, "get_client", lambda **kw: _ServerClient(version, log))
    settings = _settings(8443)
    if opens:
        st = connect(settings)
        assert st.database == "clickstream"
        assert not any(sql.lstrip().upper().startswith(("CREATE", "ALTER", "INSERT")) for sql in log), log
    else:
        # Not migrated yet (or the version is unreadable): the DDL path runs and reports the refusal clearly.
        with pytest.raises(StoreError, match="cannot create database clickstream"):
            connect(settings)
        assert any(sql.startswith("CREATE DATABASE IF NOT EXISTS clickstream") for sql in log)
    assert PASSWORD not in " ".join(log)
