"""Settings: defaults, every configuration error, and the CLI's one-line exit-2 contract."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from clickstream_lib.errors import ConfigError
from clickstream_lib.settings import Settings, parse_store_url
from tests.conftest import base_env

HOME_ENV = {"HOME": "/home/someone"}


def test_defaults_match_the_case_study_and_compose() -> None:
    s = Settings.from_env(HOME_ENV)
    assert s.kafka_broker_url == "127.0.0.1:9092"
    assert s.kafka_topic == "clickstream_topic"
    assert s.dead_letter_topic == "clickstream_topic_dead_letters"
    assert s.kafka_security_protocol == "PLAINTEXT"
    assert s.store_url.embedded
    assert s.store_url.path == "/home/someone/.local/share/clickstream/chdb"
    assert s.database == "clickstream"
    assert s.cache_dir == Path("/home/someone/.cache/clickstream")


def test_case_study_variables_are_read() -> None:
    s = Settings.from_env(
        {
            **HOME_ENV,
            "KAFKA_BROKER_URL": "kafka:29092,kafka2:29092",
            "KAFKA_TOPIC": "clicks",
            "CLICKHOUSE_HOST": "ch.example",
            "CLICKHOUSE_USER": "ingest",
            "CLICKHOUSE_PASSWORD": "s3cret",
        }
    )
    assert s.bootstrap_servers == ["kafka:29092", "kafka2:29092"]
    url = s.store_url
    got = (url.scheme, url.host, url.port, url.username, url.password)
    assert got == ("http", "ch.example", 8123, "ingest", "s3cret")
    assert "s3cret" not in repr(s) and "s3cret" not in str(s.describe()) and "s3cret" not in url.redacted()


def test_clickhouse_url_forms() -> None:
    u = parse_store_url("https://bob:p%40ss@ch.example:9443/analytics")
    assert (u.scheme, u.host, u.port, u.username, u.password, u.database) == (
        "https",
        "ch.example",
        9443,
        "bob",
        "p@ss",
        "analytics",
    )
    assert parse_store_url("chdb:///var/lib/cs").path == "/var/lib/cs"
    s = Settings.from_env({**HOME_ENV, "CLICKHOUSE_URL": "http://ch:8123/warehouse"})
    assert s.database == "warehouse"


def test_sasl_settings_reach_kafka_python() -> None:
    s = Settings.from_env(
        {
            **HOME_ENV,
            "KAFKA_SECURITY_PROTOCOL": "sasl_ssl",
            "KAFKA_SASL_USERNAME": "u",
            "KAFKA_SASL_PASSWORD": "p",
        }
    )
    cfg = s.kafka_client_config()
    assert cfg["security_protocol"] == "SASL_SSL"
    assert cfg["sasl_mechanism"] == "SCRAM-SHA-512"
    assert (cfg["sasl_plain_username"], cfg["sasl_plain_password"]) == ("u", "p")


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"KAFKA_BROKER_URL": "nonsense"}, "KAFKA_BROKER_URL"),
        ({"KAFKA_BROKER_URL": "host:99999"}, "KAFKA_BROKER_URL"),
        ({"KAFKA_BROKER_URL": "a:1,,b:2"}, "KAFKA_BROKER_URL"),
        ({"KAFKA_TOPIC": "bad topic!"}, "KAFKA_TOPIC"),
        ({"KAFKA_DEAD_LETTER_TOPIC": "x/y"}, "KAFKA_DEAD_LETTER_TOPIC"),
        ({"KAFKA_PARTITIONS": "many"}, "KAFKA_PARTITIONS"),
        ({"KAFKA_PARTITIONS": "0"}, "KAFKA_PARTITIONS"),
        ({"KAFKA_SECURITY_PROTOCOL": "TLS"}, "KAFKA_SECURITY_PROTOCOL"),
        ({"KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "KAFKA_SASL_PASSWORD": "p"}, "KAFKA_SASL_USERNAME"),
        ({"KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT", "KAFKA_SASL_USERNAME": "u"}, "KAFKA_SASL_PASSWORD"),
        (
            {
                "KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
                "KAFKA_SASL_MECHANISM": "GSSAPI",
                "KAFKA_SASL_USERNAME": "u",
                "KAFKA_SASL_PASSWORD": "p",
            },
            "KAFKA_SASL_MECHANISM",
        ),
        ({"KAFKA_SSL_CAFILE": "/does/not/exist.pem"}, "KAFKA_SSL_CAFILE"),
        ({"CLICKHOUSE_URL": "ftp://x"}, "CLICKHOUSE_URL"),
        ({"CLICKHOUSE_URL": "chdb://relative/dir"}, "CLICKHOUSE_URL"),
        ({"CLICKHOUSE_URL": "http://:8123"}, "CLICKHOUSE_URL"),
        ({"CLICKHOUSE_URL": "http://h:notaport/db"}, "CLICKHOUSE_URL"),
        ({"CLICKHOUSE_PORT": "70000"}, "CLICKHOUSE_PORT"),
        ({"CLICKHOUSE_PORT": "http"}, "CLICKHOUSE_PORT"),
        ({"CLICKHOUSE_DATABASE": "db; DROP TABLE x"}, "CLICKHOUSE_DATABASE"),
        ({"CLICKHOUSE_URL": "http://u:p@h:8123/db;DROP TABLE x"}, "CLICKHOUSE_URL"),
        ({"CLICKHOUSE_URL": "http://u:p@h:8123/db%60x"}, "CLICKHOUSE_URL"),
        ({"CLICKHOUSE_SECURE": "maybe"}, "CLICKHOUSE_SECURE"),
        ({"CLICKSTREAM_DATA_DIR": "relative/dir"}, "CLICKSTREAM_DATA_DIR"),
        ({"CLICKSTREAM_CACHE_DIR": "relative"}, "CLICKSTREAM_CACHE_DIR"),
        ({"CLICKSTREAM_KAFKA_HEAP_MB": "4096"}, "CLICKSTREAM_KAFKA_HEAP_MB"),
        ({"CLICKSTREAM_KAFKA_CONTROLLER_PORT": "0x10"}, "CLICKSTREAM_KAFKA_CONTROLLER_PORT"),
        ({"CLICKSTREAM_DATADIR": "/tmp/x"}, "CLICKSTREAM_DATADIR"),
        ({"CLICKSTREAM_MEMORY_LIMIT_MB": "1GB"}, "CLICKSTREAM_MEMORY_LIMIT_MB"),
        ({"CLICKSTREAM_MEMORY_LIMIT_MB": "64"}, "CLICKSTREAM_MEMORY_LIMIT_MB"),
        ({"CLICKSTREAM_MEMORY_LIMIT_MB": "-1"}, "CLICKSTREAM_MEMORY_LIMIT_MB"),
        ({"CLICKSTREAM_MEMORY_LIMIT_MB": "2000000"}, "CLICKSTREAM_MEMORY_LIMIT_MB"),
        ({"CLICKSTREAM_PROPERTY_COLUMNS": "plan,,device"}, "CLICKSTREAM_PROPERTY_COLUMNS"),
        ({"CLICKSTREAM_PROPERTY_COLUMNS": "plan`) DROP"}, "CLICKSTREAM_PROPERTY_COLUMNS"),
        ({"CLICKSTREAM_PROPERTY_COLUMNS": "utm..source"}, "CLICKSTREAM_PROPERTY_COLUMNS"),
    ],
)
def test_every_bad_value_names_its_variable(env: dict[str, str], variable: str) -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_env({**HOME_ENV, **env})
    assert info.value.variable == variable
    assert str(info.value).startswith(f"{variable}: ")
    assert "\n" not in str(info.value)


def test_memory_limit_default_range_and_off() -> None:
    assert Settings.from_env(HOME_ENV).memory_limit_mb == 1024
    assert Settings.from_env({**HOME_ENV, "CLICKSTREAM_MEMORY_LIMIT_MB": "128"}).memory_limit_mb == 128
    assert Settings.from_env({**HOME_ENV, "CLICKSTREAM_MEMORY_LIMIT_MB": "0"}).memory_limit_mb == 0  # engine default
    with pytest.raises(ConfigError, match=r"CLICKSTREAM_MEMORY_LIMIT_MB: 64 is out of range; expected megabytes 128"):
        Settings.from_env({**HOME_ENV, "CLICKSTREAM_MEMORY_LIMIT_MB": "64"})


def test_property_columns_are_keys_in_order_without_repeats() -> None:
    assert Settings.from_env(HOME_ENV).property_keys == ()
    env = {**HOME_ENV, "CLICKSTREAM_PROPERTY_COLUMNS": " plan, utm.source,plan ,beta-flag"}
    assert Settings.from_env(env).property_keys == ("plan", "utm.source", "beta-flag")
    with pytest.raises(ConfigError, match=r"CLICKSTREAM_PROPERTY_COLUMNS: 'a b' is not a property key; expected"):
        Settings.from_env({**HOME_ENV, "CLICKSTREAM_PROPERTY_COLUMNS": "a b"})


def test_unknown_override_is_an_error() -> None:
    with pytest.raises(ConfigError, match="kafka_brokers"):
        Settings.from_env(HOME_ENV, kafka_brokers="x:1")
    with pytest.raises(ConfigError, match="topic"):
        Settings.from_env(HOME_ENV).replace(topic="x")


def test_password_is_not_echoed_in_url_errors() -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_env({**HOME_ENV, "CLICKHOUSE_URL": "http://u:topsecret@h:notaport/db"})
    assert "topsecret" not in str(info.value)
    with pytest.raises(ConfigError) as info:
        Settings.from_env({**HOME_ENV, "CLICKHOUSE_URL": "http://u:top@secret@h:8123/bad-db"})
    assert "top" not in str(info.value).replace("http://u:***@h", "") and "secret" not in str(info.value)


@pytest.mark.parametrize("password", ["s3cr3t", "p@ss@word", "p:ss/w%40rd"])
def test_repr_and_describe_hide_the_password_inside_clickhouse_url(password: str) -> None:
    from urllib.parse import quote

    url = f"http://bob:{quote(password, safe='@:')}@ch.example:8123/clickstream"
    s = Settings.from_env({**HOME_ENV, "CLICKHOUSE_URL": url})
    assert s.store_url.password == password
    for text in (repr(s), str(s), str(s.describe()), s.store_url.redacted(), repr(s.store_url)):
        assert password not in text and quote(password, safe="@:") not in text, text
    assert "clickhouse_url='http://bob:***@ch.example:8123/clickstream'" in repr(s)


@pytest.mark.parametrize(
    ("env", "args", "variable"),
    [
        ({"KAFKA_BROKER_URL": "nonsense"}, ["stack", "status"], "KAFKA_BROKER_URL"),
        ({"CLICKHOUSE_URL": "ftp://x"}, ["config"], "CLICKHOUSE_URL"),
        ({"KAFKA_SECURITY_PROTOCOL": "TLS"}, ["stack", "up"], "KAFKA_SECURITY_PROTOCOL"),
        ({}, ["produce", "--events", "10", "--workers", "0"], "--workers"),
        ({}, ["query", "kpis", "-p", "start=0001-01-01T00:00:00+01:00"], "start"),
        ({}, ["query", "kpis", "-p", "end=9999-12-31T23:59:59-01:00"], "end"),
    ],
)
def test_cli_prints_one_line_and_exits_2(env: dict[str, str], args: list[str], variable: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "clickstream_lib.cli", *args],
        env=base_env(**env),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert variable in lines[0]
    assert "Traceback" not in proc.stderr


def test_readme_documents_every_variable() -> None:
    from clickstream_lib.settings import ENV_VARS

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    assert [v for v in ENV_VARS if f"`{v}`" not in readme] == []


@pytest.mark.parametrize(
    "args", [["dashboard", "--refresh", "0"], ["demo", "--refresh", "-5"], ["dashboard", "--refresh", "x"]]
)
def test_a_refresh_that_would_busy_loop_is_a_usage_error(args: list[str]) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "clickstream_lib.cli", *args], env=base_env(), capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 2, proc.stderr
    assert "argument --refresh:" in proc.stderr.strip().splitlines()[-1]
    assert "Traceback" not in proc.stderr
