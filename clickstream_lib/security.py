"""Secure Kafka connections: tell *which setting* is wrong when a TLS or SASL connection fails.

kafka-python treats an unknown CA, a wrong SCRAM password or a plaintext client on a TLS port like a broker that is
down: it retries until its bootstrap timeout and then says "Unable to bootstrap". :func:`check_kafka` makes one
direct attempt instead — TCP connect, TLS handshake with the same options kafka-python would use, then the SASL
handshake and SCRAM exchange (Kafka's SaslHandshake v1 and SaslAuthenticate v1 requests) — and raises
:class:`~clickstream_lib.errors.KafkaSecurityError` naming the variable to fix. It takes one round trip when all is
well, so :func:`clickstream_lib.topics.admin` runs it before every secured admin client, and
:func:`clickstream_lib.topics.unreachable` runs it to explain a failed bootstrap.

Secrets: the SASL password is only ever fed to the SCRAM computation; no message, log line or exception built here
contains it (the tests check with caplog).
"""

from __future__ import annotations

import contextlib
import logging
import socket
import ssl
import struct
from collections.abc import Mapping

from .errors import KafkaSecurityError
from .settings import Settings, parse_bootstrap

logger = logging.getLogger(__name__)

_API_VERSIONS = 18
_SASL_HANDSHAKE = 17
_SASL_AUTHENTICATE = 36
_UNSUPPORTED_SASL_MECHANISM = 33
_ILLEGAL_SASL_STATE = 34
_SASL_AUTHENTICATION_FAILED = 58
_CLIENT_ID = b"clickstream-check"
# OpenSSL's X509 verify codes that mean "the name does not match", as opposed to "the issuer is unknown".
_HOSTNAME_MISMATCH = {62, 64}


_SECRET_KEYS = frozenset({"sasl_plain_password", "ssl_password", "password"})
# kafka-python loggers that format client configuration dicts; KafkaAdminClient logs its whole configuration,
# SASL password included, at DEBUG. A logger's own filters run before any handler sees the record.
_KAFKA_LOGGERS = ("kafka.admin.client", "kafka.producer.kafka", "kafka.consumer.group", "kafka.net.manager")


class RedactSecrets(logging.Filter):
    """Replace password values in dict-shaped log arguments with ``***`` (the record is kept, only redacted)."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, Mapping):
            record.args = _redacted(args)
        elif isinstance(args, tuple) and any(isinstance(a, Mapping) for a in args):
            record.args = tuple(_redacted(a) if isinstance(a, Mapping) else a for a in args)
        return True


def _redacted(mapping: Mapping[str, object]) -> dict[str, object]:
    return {k: ("***" if k in _SECRET_KEYS and v else v) for k, v in mapping.items()}


def install_log_redaction() -> None:
    """Attach :class:`RedactSecrets` to kafka-python's loggers (idempotent; done when this module is imported)."""
    for name in _KAFKA_LOGGERS:
        target = logging.getLogger(name)
        if not any(isinstance(f, RedactSecrets) for f in target.filters):
            target.addFilter(RedactSecrets())


install_log_redaction()


def ssl_context(settings: Settings) -> ssl.SSLContext:
    """The TLS context kafka-python builds from the same settings (CA file, client certificate, hostname check)."""
    ctx = ssl.create_default_context(cafile=settings.kafka_ssl_cafile or None)
    ctx.check_hostname = settings.kafka_ssl_check_hostname
    if settings.kafka_ssl_certfile:
        ctx.load_cert_chain(settings.kafka_ssl_certfile, settings.kafka_ssl_keyfile)
    return ctx


def check_kafka(settings: Settings, timeout_s: float = 3.0) -> None:
    """One direct attempt at the first bootstrap server; raise if its security settings cannot work.

    Returns quietly when the server cannot be reached at all (that is :class:`BrokerUnavailable`'s job) or when the
    handshakes succeed.

    Raises:
        KafkaSecurityError: TLS or SASL failed; ``variable`` names the setting to fix.
    """
    host, port = parse_bootstrap(settings.kafka_broker_url)[0]
    where = f"{host}:{port}"
    protocol = settings.kafka_security_protocol
    try:
        raw = socket.create_connection((host, port), timeout=timeout_s)
    except OSError:
        return
    sock: socket.socket = raw
    try:
        if protocol in ("SSL", "SASL_SSL"):
            sock = _tls_handshake(raw, settings, host, where)
        elif not _answers_plaintext(raw) and _speaks_tls(host, port, timeout_s):
            raise KafkaSecurityError(
                "KAFKA_SECURITY_PROTOCOL",
                f"{where} is a TLS listener but KAFKA_SECURITY_PROTOCOL={protocol} — set it to SSL or SASL_SSL "
                "(and KAFKA_SSL_CAFILE to the broker's CA), or point KAFKA_BROKER_URL at a plaintext listener",
            )
        if protocol.startswith("SASL"):
            _sasl_check(sock, settings, where)
    finally:
        with contextlib.suppress(OSError):
            sock.close()
        with contextlib.suppress(OSError):
            raw.close()


def _tls_handshake(raw: socket.socket, settings: Settings, host: str, where: str) -> socket.socket:
    try:
        ctx = ssl_context(settings)
    except (OSError, ssl.SSLError) as exc:
        variable = "KAFKA_SSL_CERTFILE" if settings.kafka_ssl_certfile else "KAFKA_SSL_CAFILE"
        raise KafkaSecurityError(variable, f"cannot be loaded as PEM ({exc.__class__.__name__}: {exc})") from None
    try:
        return ctx.wrap_socket(raw, server_hostname=host)
    except ssl.SSLCertVerificationError as exc:
        reason = exc.verify_message or str(exc)
        if exc.verify_code in _HOSTNAME_MISMATCH or "mismatch" in reason.lower():
            raise KafkaSecurityError(
                "KAFKA_BROKER_URL",
                f"the broker's TLS certificate at {where} does not name {host!r} ({reason}) — connect by a name the "
                "certificate lists, or reissue it (KAFKA_SSL_CHECK_HOSTNAME=false skips the check; tests only)",
            ) from None
        ca = settings.kafka_ssl_cafile or "the system trust store"
        raise KafkaSecurityError(
            "KAFKA_SSL_CAFILE",
            f"the broker's TLS certificate at {where} is not signed by a CA in {ca} ({reason}) — set "
            "KAFKA_SSL_CAFILE to the PEM file of the CA that issued the broker's certificate",
        ) from None
    except (ssl.SSLError, OSError) as exc:
        raise KafkaSecurityError(
            "KAFKA_SECURITY_PROTOCOL",
            f"{where} did not complete a TLS handshake ({exc.__class__.__name__}: {exc}) — it is probably a "
            f"plaintext listener: set KAFKA_SECURITY_PROTOCOL=PLAINTEXT or SASL_PLAINTEXT, or point "
            "KAFKA_BROKER_URL at the broker's TLS listener",
        ) from None


def _answers_plaintext(sock: socket.socket) -> bool:
    """True if the server answers a plaintext ApiVersions request (a TLS listener cannot; this probe is silent on a
    plaintext broker, unlike a TLS ClientHello, which it would log as an invalid request)."""
    try:
        _request(sock, _API_VERSIONS, 0, 0, b"")
        return True
    except (OSError, ConnectionError, struct.error):
        return False


def _speaks_tls(host: str, port: int, timeout_s: float) -> bool:
    """True if ``host:port`` completes a TLS handshake (certificate not checked: we only ask *whether* it is TLS)."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    try:
        with socket.create_connection((host, port), timeout=timeout_s) as raw, ctx.wrap_socket(raw):
            return True
    except (OSError, ssl.SSLError):
        return False


# --- the Kafka wire protocol, just enough for SASL ---------------------------------------------------------------


def _request(sock: socket.socket, api_key: int, version: int, correlation: int, body: bytes) -> bytes:
    header = struct.pack(">hhih", api_key, version, correlation, len(_CLIENT_ID)) + _CLIENT_ID
    frame = header + body
    sock.sendall(struct.pack(">i", len(frame)) + frame)
    size = struct.unpack(">i", _read(sock, 4))[0]
    if not 4 <= size <= 1 << 20:  # a TLS alert or garbage, not a Kafka response
        raise ConnectionError("not a Kafka response")
    payload = _read(sock, size)
    if struct.unpack(">i", payload[:4])[0] != correlation:
        raise ConnectionError("unexpected correlation id in the broker's answer")
    return payload[4:]


def _read(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("the broker closed the connection")
        buf += chunk
    return bytes(buf)


def _string(value: str) -> bytes:
    data = value.encode()
    return struct.pack(">h", len(data)) + data


def _sasl_check(sock: socket.socket, settings: Settings, where: str) -> None:
    mechanism = settings.kafka_sasl_mechanism
    user = settings.kafka_sasl_username
    try:
        answer = _request(sock, _SASL_HANDSHAKE, 1, 1, _string(mechanism))
        error = struct.unpack(">h", answer[:2])[0]
        if error == _UNSUPPORTED_SASL_MECHANISM:
            enabled = _string_array(answer[2:])
            raise KafkaSecurityError(
                "KAFKA_SASL_MECHANISM",
                f"{mechanism} is not enabled on {where}; the broker offers {', '.join(enabled) or 'none'}",
            )
        if error == _ILLEGAL_SASL_STATE:
            raise KafkaSecurityError(
                "KAFKA_SECURITY_PROTOCOL",
                f"{where} does not expect SASL — use KAFKA_SECURITY_PROTOCOL=SSL or PLAINTEXT for this listener",
            )
        if error:
            return  # something we do not classify; kafka-python's own error will stand
        if not mechanism.startswith("SCRAM"):
            return  # PLAIN would send the password in one message; the real client reports its result
        from kafka.net.sasl.scram import ScramClient

        scram = ScramClient(user, settings.kafka_sasl_password, mechanism)
        first = _authenticate(sock, 2, scram.first_message())
        if first is None:
            raise _bad_credentials(user, mechanism, where)
        scram.process_server_first_message(first)
        final = _authenticate(sock, 3, scram.final_message())
        if final is None:
            raise _bad_credentials(user, mechanism, where)
        scram.process_server_final_message(final)
    except (OSError, ConnectionError, struct.error, ValueError, KeyError) as exc:
        if isinstance(exc, KafkaSecurityError):
            raise
        # The broker hung up mid-SASL: a plaintext SASL client on a TLS port, or a listener without SASL.
        logger.debug("SASL check against %s ended early: %s", where, type(exc).__name__)
        if settings.kafka_security_protocol == "SASL_PLAINTEXT" and _speaks_tls(*parse_bootstrap(where)[0], 3.0):
            raise KafkaSecurityError(
                "KAFKA_SECURITY_PROTOCOL",
                f"{where} is a TLS listener but KAFKA_SECURITY_PROTOCOL=SASL_PLAINTEXT — set it to SASL_SSL "
                "(and KAFKA_SSL_CAFILE to the broker's CA)",
            ) from None


def _authenticate(sock: socket.socket, correlation: int, token: bytes) -> bytes | None:
    """One SaslAuthenticate v1 round; the server's bytes, or None when it rejected the credentials."""
    answer = _request(sock, _SASL_AUTHENTICATE, 1, correlation, struct.pack(">i", len(token)) + token)
    error = struct.unpack(">h", answer[:2])[0]
    if error == _SASL_AUTHENTICATION_FAILED:
        return None
    if error:
        raise ConnectionError(f"SaslAuthenticate error {error}")
    msg_len = struct.unpack(">h", answer[2:4])[0]
    pos = 4 + max(msg_len, 0)
    n = struct.unpack(">i", answer[pos : pos + 4])[0]
    return answer[pos + 4 : pos + 4 + n]


def _string_array(data: bytes) -> list[str]:
    count = struct.unpack(">i", data[:4])[0]
    out: list[str] = []
    pos = 4
    for _ in range(max(count, 0)):
        n = struct.unpack(">h", data[pos : pos + 2])[0]
        out.append(data[pos + 2 : pos + 2 + n].decode(errors="replace"))
        pos += 2 + n
    return out


def _bad_credentials(user: str, mechanism: str, where: str) -> KafkaSecurityError:
    return KafkaSecurityError(
        "KAFKA_SASL_PASSWORD",
        f"{where} rejected user {user!r} ({mechanism}): wrong password or unknown user — check KAFKA_SASL_USERNAME "
        "and KAFKA_SASL_PASSWORD",
    )
