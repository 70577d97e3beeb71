"""Settings: one frozen dataclass, read from the environment.

The variable names are the ones users of the original case study already know (``KAFKA_BROKER_URL``,
``KAFKA_TOPIC``, ``CLICKHOUSE_HOST`` ...), plus ``CLICKSTREAM_*`` names for what is new. A wrong value raises
:class:`~clickstream_lib.errors.ConfigError` naming the variable and the expected form; the CLI turns that into one
line and exit code 2.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlsplit

from .errors import ConfigError
from .schema import PROPERTY_KEY_RE

SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
_TOPIC_RE = re.compile(r"^[A-Za-z0-9._-]{1,249}$")
_IDENT_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
_HOSTPORT_RE = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+):(\d{1,5})$")


def _default_data_dir(env: Mapping[str, str]) -> Path:
    home = Path(env["HOME"]) if env.get("HOME") else Path.home()
    base = env.get("XDG_DATA_HOME") or str(home / ".local" / "share")
    return Path(base) / "clickstream"


def _default_cache_dir(env: Mapping[str, str]) -> Path:
    home = Path(env["HOME"]) if env.get("HOME") else Path.home()
    base = env.get("XDG_CACHE_HOME") or str(home / ".cache")
    return Path(base) / "clickstream"


def parse_bootstrap(value: str, variable: str = "KAFKA_BROKER_URL") -> list[tuple[str, int]]:
    """Parse ``host:port[,host:port...]`` into pairs; raise ConfigError naming ``variable`` otherwise."""
    expected = "expected host:port[,host:port...], e.g. 127.0.0.1:9092"
    parts = [p.strip() for p in value.split(",")]
    if not value.strip() or any(not p for p in parts):
        raise ConfigError(variable, f"{value!r} is empty or has an empty entry; {expected}")
    out: list[tuple[str, int]] = []
    for part in parts:
        if "://" in part:  # accept PLAINTEXT://host:port as Kafka listeners are written
            part = part.split("://", 1)[1]
        m = _HOSTPORT_RE.match(part)
        if not m or not 0 < int(m.group(2)) < 65536:
            raise ConfigError(variable, f"{value!r} is not valid; {expected}")
        out.append((m.group(1).strip("[]"), int(m.group(2))))
    return out


@dataclass(frozen=True)
class StoreURL:
    """A parsed ``CLICKHOUSE_URL``: ``chdb:///abs/dir`` or ``http(s)://user:pass@host:port/db``."""

    scheme: str
    path: str = ""
    host: str = ""
    port: int = 0
    username: str = "default"
    password: str = field(default="", repr=False)
    database: str = ""
    verify: bool = True  # https only: verify the server certificate and host name (CLICKHOUSE_VERIFY)
    ca_file: str = ""  # https only: PEM CA bundle to verify against (CLICKHOUSE_CA_FILE); empty = system store

    @property
    def embedded(self) -> bool:
        return self.scheme == "chdb"

    def redacted(self) -> str:
        """The URL without its password, safe for logs and error messages."""
        if self.embedded:
            return f"chdb://{self.path}"
        return f"{self.scheme}://{quote(self.username)}@{self.host}:{self.port}/{self.database}"


def parse_store_url(value: str, variable: str = "CLICKHOUSE_URL") -> StoreURL:
    expected = "expected chdb:///absolute/dir or http(s)://user:password@host:port/database"
    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError as exc:
        raise ConfigError(variable, f"{_redact(value)!r} is not a URL ({exc}); {expected}") from None
    scheme = parts.scheme.lower()
    if scheme == "chdb":
        path = parts.netloc + parts.path if parts.netloc else parts.path
        if not path.startswith("/"):
            raise ConfigError(variable, f"{value!r} needs an absolute directory; {expected}")
        return StoreURL(scheme="chdb", path=path.rstrip("/") or "/")
    if scheme in ("http", "https"):
        if not parts.hostname:
            raise ConfigError(variable, f"{_redact(value)!r} has no host; {expected}")
        database = parts.path.strip("/")
        if database and not _IDENT_RE.match(database):
            raise ConfigError(
                variable,
                f"the database {database[:64]!r} in {_redact(value)!r} is not valid; expected letters, digits, "
                "underscore (e.g. http://user:password@host:8123/clickstream)",
            )
        return StoreURL(
            scheme=scheme,
            host=parts.hostname,
            port=port or (8443 if scheme == "https" else 8123),
            username=unquote(parts.username) if parts.username else "default",
            password=unquote(parts.password) if parts.password else "",
            database=database,
        )
    raise ConfigError(variable, f"scheme {scheme or '(none)'!r} is not supported; {expected}")


def _redact(url: str) -> str:
    """``url`` with the password of its user info hidden; the host starts after the *last* ``@`` before the path,
    so a password holding ``@`` is hidden whole."""
    return re.sub(r"//([^:/@]*):[^/]*@", r"//\1:***@", url)


def check_webhook_url(url: str, variable: str = "CLICKSTREAM_ALERT_WEBHOOK_URL") -> str:
    """``url`` if it is an http(s) URL with a host; else ConfigError naming ``variable`` (never showing the URL)."""
    try:
        parts = urlsplit(url.strip())
        parts.port  # noqa: B018  (raises ValueError on a bad port)
    except ValueError:
        raise ConfigError(variable, "is not a URL; expected https://hooks.slack.com/services/...") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(
            variable,
            f"scheme {parts.scheme or '(none)'!r} is not supported; expected an http(s) URL with a host, "
            "e.g. https://hooks.slack.com/services/...",
        )
    return url.strip()


# Every variable Settings reads: env name -> field name. Unknown CLICKSTREAM_* variables are an error,
# as kafka-python rejects unrecognized configs: a typo should not silently fall back to a default.
ENV_VARS: dict[str, str] = {
    "KAFKA_BROKER_URL": "kafka_broker_url",
    "KAFKA_TOPIC": "kafka_topic",
    "KAFKA_DEAD_LETTER_TOPIC": "kafka_dead_letter_topic",
    "KAFKA_GROUP_ID": "kafka_group_id",
    "KAFKA_PARTITIONS": "kafka_partitions",
    "KAFKA_SECURITY_PROTOCOL": "kafka_security_protocol",
    "KAFKA_SASL_MECHANISM": "kafka_sasl_mechanism",
    "KAFKA_SASL_USERNAME": "kafka_sasl_username",
    "KAFKA_SASL_PASSWORD": "kafka_sasl_password",
    "KAFKA_SSL_CAFILE": "kafka_ssl_cafile",
    "KAFKA_SSL_CERTFILE": "kafka_ssl_certfile",
    "KAFKA_SSL_KEYFILE": "kafka_ssl_keyfile",
    "KAFKA_SSL_CHECK_HOSTNAME": "kafka_ssl_check_hostname",
    "CLICKHOUSE_URL": "clickhouse_url",
    "CLICKHOUSE_HOST": "clickhouse_host",
    "CLICKHOUSE_PORT": "clickhouse_port",
    "CLICKHOUSE_USER": "clickhouse_user",
    "CLICKHOUSE_PASSWORD": "clickhouse_password",
    "CLICKHOUSE_DATABASE": "clickhouse_database",
    "CLICKHOUSE_SECURE": "clickhouse_secure",
    "CLICKHOUSE_CA_FILE": "clickhouse_ca_file",
    "CLICKHOUSE_VERIFY": "clickhouse_verify",
    "CLICKSTREAM_DATA_DIR": "data_dir",
    "CLICKSTREAM_CACHE_DIR": "cache_dir",
    "CLICKSTREAM_KAFKA_CONTROLLER_PORT": "kafka_controller_port",
    "CLICKSTREAM_KAFKA_HEAP_MB": "kafka_heap_mb",
    "CLICKSTREAM_MEMORY_LIMIT_MB": "memory_limit_mb",
    "CLICKSTREAM_PROPERTY_COLUMNS": "property_columns",
    "CLICKSTREAM_ALERT_RULES": "alert_rules",
    "CLICKSTREAM_ALERT_WEBHOOK_URL": "alert_webhook_url",
    "CLICKSTREAM_ALERT_SLACK_CHANNEL": "alert_slack_channel",
    "SLACK_BOT_TOKEN": "slack_bot_token",
}
# Values never shown by describe()/repr: a Slack webhook URL's path is itself a credential.
_SECRET_MARKS = ("PASSWORD", "TOKEN", "WEBHOOK_URL")

# CLICKSTREAM_MEMORY_LIMIT_MB: 0 leaves the engine's own limit (90% of RAM); otherwise at least what the engine
# holds at rest with the schema loaded (~30 MB) plus room for a query.
MEMORY_LIMIT_MIN_MB = 128
MEMORY_LIMIT_MAX_MB = 1_048_576


@dataclass(frozen=True)
class Settings:
    """Everything the library needs to reach Kafka and ClickHouse.

    Build it with :meth:`from_env`; pass it to every constructor. Defaults match ``docker-compose.yml`` and the
    local stack (``clickstream stack up``).
    """

    kafka_broker_url: str = "127.0.0.1:9092"
    kafka_topic: str = "clickstream_topic"
    kafka_dead_letter_topic: str = ""  # default: <topic>_dead_letters
    kafka_group_id: str = "clickstream-sink"
    kafka_partitions: int = 6
    kafka_security_protocol: str = "PLAINTEXT"
    kafka_sasl_mechanism: str = "SCRAM-SHA-512"
    kafka_sasl_username: str = ""
    kafka_sasl_password: str = field(default="", repr=False)
    kafka_ssl_cafile: str = ""
    kafka_ssl_certfile: str = ""  # client certificate (PEM) for brokers that require mutual TLS
    kafka_ssl_keyfile: str = ""
    kafka_ssl_check_hostname: bool = True
    clickhouse_url: str = ""  # default: chdb://<data_dir>/chdb, or http://CLICKHOUSE_HOST:PORT when a host is set
    clickhouse_host: str = ""
    clickhouse_port: int = 0
    clickhouse_user: str = ""
    clickhouse_password: str = field(default="", repr=False)
    clickhouse_database: str = "clickstream"
    clickhouse_secure: bool = False
    clickhouse_ca_file: str = ""  # PEM CA bundle for https://; empty = the system trust store
    clickhouse_verify: bool = True  # verify the server certificate (and host name) on https://
    data_dir: Path = field(default_factory=lambda: _default_data_dir(os.environ))
    cache_dir: Path = field(default_factory=lambda: _default_cache_dir(os.environ))
    kafka_controller_port: int = 0  # default: broker port + 1
    kafka_heap_mb: int = 512
    # The embedded engine's memory limit (ClickHouse max_server_memory_usage); 0 = the engine's default, 90% of RAM.
    # Server mode ignores it: a server's limits are its own configuration (the user profile's max_memory_usage).
    memory_limit_mb: int = 1024
    # Event property keys (comma-separated, e.g. "plan,utm.source") that get a LowCardinality column of their own,
    # added and filled when the store is opened with migrations: prop.<key> filters and breakdowns read it.
    property_columns: str = ""
    # Alerts (clickstream_lib.alerts, docs/alerts.md): the rules file, and where firings are posted.
    alert_rules: str = ""
    alert_webhook_url: str = field(default="", repr=False)
    alert_slack_channel: str = ""
    slack_bot_token: str = field(default="", repr=False)

    def __post_init__(self) -> None:
        # Validate eagerly so a bad value fails at start, naming the variable.
        env_of = {v: k for k, v in ENV_VARS.items()}
        parse_bootstrap(self.kafka_broker_url, env_of["kafka_broker_url"])
        for name in ("kafka_topic", "kafka_dead_letter_topic"):
            value = getattr(self, name)
            if value and not _TOPIC_RE.match(value):
                raise ConfigError(
                    env_of[name], f"{value!r} is not a valid topic name; expected 1-249 of [A-Za-z0-9._-]"
                )
        if not self.kafka_group_id.strip():
            raise ConfigError("KAFKA_GROUP_ID", "must not be empty; a sink without a group cannot commit offsets")
        if not 1 <= self.kafka_partitions <= 10_000:
            raise ConfigError("KAFKA_PARTITIONS", f"{self.kafka_partitions} is out of range; expected 1..10000")
        if self.kafka_security_protocol not in SECURITY_PROTOCOLS:
            raise ConfigError(
                "KAFKA_SECURITY_PROTOCOL",
                f"{self.kafka_security_protocol!r} is not supported; expected one of {', '.join(SECURITY_PROTOCOLS)}",
            )
        if self.kafka_security_protocol.startswith("SASL"):
            if self.kafka_sasl_mechanism not in SASL_MECHANISMS:
                raise ConfigError(
                    "KAFKA_SASL_MECHANISM",
                    f"{self.kafka_sasl_mechanism!r} is not supported; expected one of {', '.join(SASL_MECHANISMS)}",
                )
            if not self.kafka_sasl_username or not self.kafka_sasl_password:
                missing = "KAFKA_SASL_USERNAME" if not self.kafka_sasl_username else "KAFKA_SASL_PASSWORD"
                raise ConfigError(missing, f"is required when KAFKA_SECURITY_PROTOCOL={self.kafka_security_protocol}")
        if self.kafka_ssl_cafile and not Path(self.kafka_ssl_cafile).is_file():
            raise ConfigError(
                "KAFKA_SSL_CAFILE", f"{self.kafka_ssl_cafile!r} is not a readable file; expected a PEM CA file"
            )
        for var, value in (
            ("KAFKA_SSL_CERTFILE", self.kafka_ssl_certfile),
            ("KAFKA_SSL_KEYFILE", self.kafka_ssl_keyfile),
            ("CLICKHOUSE_CA_FILE", self.clickhouse_ca_file),
        ):
            if value and not Path(value).is_file():
                raise ConfigError(var, f"{value!r} is not a readable file; expected a PEM file")
        if bool(self.kafka_ssl_certfile) != bool(self.kafka_ssl_keyfile):
            missing = "KAFKA_SSL_KEYFILE" if self.kafka_ssl_certfile else "KAFKA_SSL_CERTFILE"
            raise ConfigError(
                missing, "is required too: a client certificate needs both KAFKA_SSL_CERTFILE and KAFKA_SSL_KEYFILE"
            )
        if self.clickhouse_port and not 0 < self.clickhouse_port < 65536:
            raise ConfigError("CLICKHOUSE_PORT", f"{self.clickhouse_port} is out of range; expected 1..65535")
        if not _IDENT_RE.match(self.clickhouse_database):
            raise ConfigError(
                "CLICKHOUSE_DATABASE",
                f"{self.clickhouse_database!r} is not valid; expected letters, digits, underscore",
            )
        if self.clickhouse_url:
            parse_store_url(self.clickhouse_url)
        if not Path(self.data_dir).is_absolute():
            raise ConfigError("CLICKSTREAM_DATA_DIR", f"{str(self.data_dir)!r} must be an absolute path")
        if not Path(self.cache_dir).is_absolute():
            raise ConfigError("CLICKSTREAM_CACHE_DIR", f"{str(self.cache_dir)!r} must be an absolute path")
        if self.kafka_controller_port and not 0 < self.kafka_controller_port < 65536:
            raise ConfigError("CLICKSTREAM_KAFKA_CONTROLLER_PORT", f"{self.kafka_controller_port} is out of range")
        if not 128 <= self.kafka_heap_mb <= 512:
            raise ConfigError("CLICKSTREAM_KAFKA_HEAP_MB", f"{self.kafka_heap_mb} is out of range; expected 128..512")
        self.property_keys  # noqa: B018 -- validates CLICKSTREAM_PROPERTY_COLUMNS
        if self.memory_limit_mb != 0 and not MEMORY_LIMIT_MIN_MB <= self.memory_limit_mb <= MEMORY_LIMIT_MAX_MB:
            raise ConfigError(
                "CLICKSTREAM_MEMORY_LIMIT_MB",
                f"{self.memory_limit_mb} is out of range; expected megabytes "
                f"{MEMORY_LIMIT_MIN_MB}..{MEMORY_LIMIT_MAX_MB}, or 0 for the engine's default (90% of RAM)",
            )

        if self.alert_rules and not Path(self.alert_rules).is_file():
            raise ConfigError("CLICKSTREAM_ALERT_RULES", f"{self.alert_rules!r} is not a readable file of rules (TOML)")
        if self.alert_webhook_url:
            check_webhook_url(self.alert_webhook_url)
        if self.alert_slack_channel and not self.slack_bot_token:
            raise ConfigError(
                "SLACK_BOT_TOKEN", "is required with CLICKSTREAM_ALERT_SLACK_CHANNEL (a bot token, xoxb-...)"
            )

    # --- construction -------------------------------------------------------------------------------------------

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Read settings from ``env`` (default ``os.environ``); keyword ``overrides`` win over the environment.

        Raises:
            ConfigError: a value is malformed, or a ``CLICKSTREAM_*`` variable or override is unknown.
        """
        env = os.environ if env is None else env
        unknown = sorted(k for k in env if k.startswith("CLICKSTREAM_") and k not in ENV_VARS)
        if unknown:
            known = ", ".join(k for k in ENV_VARS if k.startswith("CLICKSTREAM_"))
            raise ConfigError(unknown[0], f"is not a known setting; known CLICKSTREAM_ variables: {known}")
        fields = {f.name: f for f in dataclasses.fields(cls)}
        bad = sorted(set(overrides) - set(fields))
        if bad:
            raise ConfigError(bad[0], f"is not a Settings field; expected one of {', '.join(fields)}")
        values: dict[str, Any] = {}
        for var, name in ENV_VARS.items():
            raw = env.get(var)
            if raw is None or raw == "":
                continue
            values[name] = _coerce(var, fields[name], raw)
        if "data_dir" not in values:
            values["data_dir"] = _default_data_dir(env)
        if "cache_dir" not in values:
            values["cache_dir"] = _default_cache_dir(env)
        values.update(overrides)
        return cls(**values)

    def replace(self, **changes: Any) -> Settings:
        """A copy with ``changes``; unknown names raise ConfigError."""
        fields = {f.name for f in dataclasses.fields(self)}
        bad = sorted(set(changes) - fields)
        if bad:
            raise ConfigError(bad[0], f"is not a Settings field; expected one of {', '.join(sorted(fields))}")
        return dataclasses.replace(self, **changes)

    # --- derived values -----------------------------------------------------------------------------------------

    @property
    def property_keys(self) -> tuple[str, ...]:
        """The keys of CLICKSTREAM_PROPERTY_COLUMNS, in order, without repeats."""
        if not self.property_columns.strip():
            return ()
        keys = [k.strip() for k in self.property_columns.split(",")]
        for key in keys:
            if len(key) > 128 or not PROPERTY_KEY_RE.match(key):
                raise ConfigError(
                    "CLICKSTREAM_PROPERTY_COLUMNS",
                    f"{key[:40]!r} is not a property key; expected comma-separated keys of letters, digits, _ $ - "
                    "(dots for nested keys), e.g. plan,utm.source",
                )
        return tuple(dict.fromkeys(keys))

    @property
    def bootstrap_servers(self) -> list[str]:
        return [f"{h}:{p}" for h, p in parse_bootstrap(self.kafka_broker_url)]

    @property
    def dead_letter_topic(self) -> str:
        return self.kafka_dead_letter_topic or f"{self.kafka_topic}_dead_letters"

    @property
    def store_url(self) -> StoreURL:
        """The ClickHouse location: CLICKHOUSE_URL, else CLICKHOUSE_HOST/..., else embedded chdb under data_dir."""
        if self.clickhouse_url:
            url = parse_store_url(self.clickhouse_url)
        elif self.clickhouse_host:
            scheme = "https" if self.clickhouse_secure else "http"
            url = StoreURL(
                scheme=scheme,
                host=self.clickhouse_host,
                port=self.clickhouse_port or (8443 if self.clickhouse_secure else 8123),
            )
        else:
            url = StoreURL(scheme="chdb", path=str(Path(self.data_dir) / "chdb"))
        if url.embedded:
            return url
        # Separate variables fill in what the URL leaves out; the database always comes from one place.
        return dataclasses.replace(
            url,
            username=self.clickhouse_user or url.username,
            password=self.clickhouse_password or url.password,
            database=url.database or self.clickhouse_database,
            verify=self.clickhouse_verify,
            ca_file=self.clickhouse_ca_file,
        )

    @property
    def database(self) -> str:
        url = self.store_url
        return url.database if not url.embedded and url.database else self.clickhouse_database

    def kafka_client_config(self) -> dict[str, Any]:
        """Connection keyword arguments shared by kafka-python producers, consumers and admin clients."""
        cfg: dict[str, Any] = {
            "bootstrap_servers": self.bootstrap_servers,
            "security_protocol": self.kafka_security_protocol,
        }
        if self.kafka_security_protocol.startswith("SASL"):
            cfg.update(
                sasl_mechanism=self.kafka_sasl_mechanism,
                sasl_plain_username=self.kafka_sasl_username,
                sasl_plain_password=self.kafka_sasl_password,
            )
        if self.kafka_security_protocol in ("SSL", "SASL_SSL"):
            if self.kafka_ssl_cafile:
                cfg["ssl_cafile"] = self.kafka_ssl_cafile
            if self.kafka_ssl_certfile:
                cfg.update(ssl_certfile=self.kafka_ssl_certfile, ssl_keyfile=self.kafka_ssl_keyfile)
            # kafka-python checks the host name by default; turning it off is an explicit, logged choice.
            cfg["ssl_check_hostname"] = self.kafka_ssl_check_hostname
        return cfg

    def describe(self) -> dict[str, str]:
        """Effective settings with secrets removed, for ``clickstream config`` and logs."""
        out: dict[str, str] = {}
        for var, name in ENV_VARS.items():
            value = getattr(self, name)
            if any(mark in var for mark in _SECRET_MARKS):
                value = "***" if value else ""
            out[var] = str(value)
        out["CLICKHOUSE_URL"] = self.store_url.redacted()
        out["KAFKA_DEAD_LETTER_TOPIC"] = self.dead_letter_topic
        return out

    def __repr__(self) -> str:
        # Every field, with passwords hidden, including the one a CLICKHOUSE_URL may carry.
        parts = []
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if any(mark.lower() in f.name for mark in _SECRET_MARKS):
                value = "***" if value else ""
            elif f.name == "clickhouse_url" and value:
                value = _redact(value)
            parts.append(f"{f.name}={value!r}")
        return f"Settings({', '.join(parts)})"


def _coerce(var: str, f: dataclasses.Field[Any], raw: str) -> Any:
    kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
    raw = raw.strip()
    if kind == "int":
        try:
            return int(raw)
        except ValueError:
            raise ConfigError(var, f"{raw!r} is not a whole number") from None
    if kind == "bool":
        low = raw.lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off"):
            return False
        raise ConfigError(var, f"{raw!r} is not a boolean; expected true/false")
    if kind == "Path":
        return Path(raw).expanduser()
    if var == "KAFKA_SECURITY_PROTOCOL" or var == "KAFKA_SASL_MECHANISM":
        return raw.upper()
    return raw
