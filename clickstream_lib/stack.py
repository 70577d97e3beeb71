"""The local service stack: a real Apache Kafka 4.x broker (KRaft, one combined broker+controller node).

The broker's jars are resolved from Maven Central with ``mvn dependency:copy-dependencies`` from the pom shipped in
this package (pinned Kafka plus a log4j2 backend) into a per-user cache, so they download once. The broker runs on
Java 17 with a capped heap, bound to 127.0.0.1; its data directory persists across ``down``/``up``.

Layout under ``<CLICKSTREAM_DATA_DIR>/kafka``::

    server.properties  log4j2.properties  broker.pid  data/  logs/server.log  logs/stdout.log
    tls/broker.pem     (only with a SASL_SSL listener: the broker's key and certificate chain, mode 0600)

The PLAINTEXT listener on ``KAFKA_BROKER_URL`` is always there (the stack administers the broker through it). A
:class:`SecureListener` adds a SASL_SSL listener (TLS from PEM files, SCRAM users) for clients that must
authenticate; its users are created through the admin API after start, so no password is ever written to
``server.properties`` or put on a command line.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from .errors import BrokerUnavailable, ClickstreamError, StackError
from .settings import SASL_MECHANISMS, Settings, parse_bootstrap
from .topics import admin, ping

logger = logging.getLogger(__name__)

_LOOPBACK = {"127.0.0.1", "localhost", "::1"}


def kafka_version() -> str:
    """The Kafka version pinned in the shipped pom."""
    text = resources.files("clickstream_lib").joinpath("resources/kafka-pom.xml").read_text()
    start = text.index("<kafka.version>") + len("<kafka.version>")
    return text[start : text.index("</kafka.version>")]


@dataclass(frozen=True)
class SecureListener:
    """An extra SASL_SSL listener for the local broker: TLS from PEM files, SCRAM users.

    Attributes:
        port: loopback port of the listener (clients set ``KAFKA_BROKER_URL=127.0.0.1:<port>``).
        certfile: the broker's certificate chain in PEM, leaf first; its subjectAltName must name the host clients
            dial (``127.0.0.1`` / ``localhost``), since kafka-python checks the hostname.
        keyfile: the certificate's private key in PEM (unencrypted; the stack copies it beside the chain into a
            0600 file under the broker home, as Kafka's PEM keystore wants both in one place).
        users: SCRAM users to create after start, name -> password. Never logged.
        cafile: the CA that signed ``certfile`` (PEM), used by the stack's own readiness probe; None means the
            system trust store.
        mechanism: ``SCRAM-SHA-512`` (default) or ``SCRAM-SHA-256``.
        host: address to bind, loopback only.
    """

    port: int
    certfile: Path
    keyfile: Path
    users: Mapping[str, str] = field(default_factory=dict, repr=False)
    cafile: Path | None = None
    mechanism: str = "SCRAM-SHA-512"
    host: str = "127.0.0.1"

    def __post_init__(self) -> None:
        if self.mechanism not in SASL_MECHANISMS or not self.mechanism.startswith("SCRAM"):
            raise StackError(f"SecureListener mechanism {self.mechanism!r} is not supported; use SCRAM-SHA-512")
        if self.host not in _LOOPBACK:
            raise StackError(f"SecureListener host {self.host!r} must be a loopback address; the local stack is local")
        for name in ("certfile", "keyfile"):
            if not Path(getattr(self, name)).is_file():
                raise StackError(f"SecureListener {name} {getattr(self, name)} is not a readable PEM file")

    @property
    def url(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass(frozen=True)
class StackStatus:
    """What ``clickstream stack status`` reports."""

    state: str  # "running", "stopped", "external" (a broker we did not start), "crashed"
    url: str
    pid: int | None = None
    home: Path | None = None
    log_file: Path | None = None
    detail: str = ""

    @property
    def running(self) -> bool:
        return self.state in ("running", "external")

    def describe(self) -> str:
        parts = [f"kafka {self.state} at {self.url}"]
        if self.pid:
            parts.append(f"pid {self.pid}")
        if self.log_file:
            parts.append(f"log {self.log_file}")
        if self.detail:
            parts.append(self.detail)
        return ", ".join(parts)


class KafkaStack:
    """Start, stop and inspect the local Kafka broker described by ``settings``.

    ``properties`` are extra ``server.properties`` entries written over the stack's own (e.g. a small
    ``offset.metadata.max.bytes`` in a test).

    Example:
        >>> stack = KafkaStack(Settings.from_env())
        >>> stack.up()        # downloads jars once, formats storage once, waits until ready
        >>> stack.down()
    """

    def __init__(
        self,
        settings: Settings,
        home: Path | None = None,
        secure: SecureListener | None = None,
        properties: Mapping[str, str] | None = None,
    ) -> None:
        self.settings = settings
        self.secure = secure
        self.properties = dict(properties or {})  # extra server.properties, over the stack's own
        self.home = Path(home) if home else Path(settings.data_dir) / "kafka"
        servers = parse_bootstrap(settings.kafka_broker_url)
        self.host, self.port = servers[0]
        self.multiple = len(servers) > 1
        self.controller_port = settings.kafka_controller_port or self.port + 1
        self.version = kafka_version()
        self.libs = Path(settings.cache_dir) / f"kafka-{self.version}" / "libs"
        if secure and secure.port in (self.port, self.controller_port):
            raise StackError(f"SecureListener port {secure.port} collides with the broker or controller port")

    @property
    def admin_settings(self) -> Settings:
        """Settings for the stack's own admin traffic: always the PLAINTEXT listener on loopback.

        The caller's settings may carry SASL_SSL for its clients; readiness probes and user creation must not
        depend on them (a wrong password would otherwise look like a broker that never starts).
        """
        return self.settings.replace(kafka_broker_url=self.url, kafka_security_protocol="PLAINTEXT")

    # --- paths --------------------------------------------------------------------------------------------------

    @property
    def pid_file(self) -> Path:
        return self.home / "broker.pid"

    @property
    def log_file(self) -> Path:
        return self.home / "logs" / "server.log"

    @property
    def properties_file(self) -> Path:
        return self.home / "server.properties"

    @property
    def url(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def is_local(self) -> bool:
        """True when KAFKA_BROKER_URL names one broker on this machine's loopback, which we may start."""
        return not self.multiple and self.host in _LOOPBACK

    # --- jars ---------------------------------------------------------------------------------------------------

    def jars_present(self) -> bool:
        return (self.libs / ".complete").exists()

    def ensure_jars(self) -> bool:
        """Resolve the broker's jars into the cache; returns True if anything was downloaded."""
        if self.jars_present():
            return False
        mvn = shutil.which("mvn")
        if not mvn:
            raise StackError(
                "Maven (mvn) is not installed; it fetches the Kafka jars from Maven Central — "
                "install it (Debian: apt-get install -y maven) or set KAFKA_BROKER_URL to a running broker"
            )
        self._java()
        tmp = self.libs.with_name(f"libs.tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        pom = resources.files("clickstream_lib").joinpath("resources/kafka-pom.xml")
        with resources.as_file(pom) as pom_path:
            cmd = [mvn, "-q", "-B", "-f", str(pom_path), "dependency:copy-dependencies", f"-DoutputDirectory={tmp}"]
            logger.info("resolving Kafka %s jars from Maven Central into %s", self.version, self.libs)
            proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0 or not any(tmp.glob("kafka_2.13-*.jar")):
            shutil.rmtree(tmp, ignore_errors=True)
            tail = (proc.stdout + proc.stderr).strip().splitlines()[-5:]
            raise StackError(f"mvn could not resolve Kafka {self.version} jars: " + " | ".join(tail))
        (tmp / ".complete").write_text(self.version)
        shutil.rmtree(self.libs, ignore_errors=True)
        tmp.rename(self.libs)
        return True

    @staticmethod
    def _java() -> str:
        java = shutil.which("java")
        if not java:
            raise StackError(
                "Java is not installed; the Kafka broker needs Java 17+ "
                "(Debian: apt-get install -y openjdk-17-jre-headless) — or set KAFKA_BROKER_URL to a running broker"
            )
        return java

    # --- configuration ------------------------------------------------------------------------------------------

    def _write_config(self) -> None:
        (self.home / "logs").mkdir(parents=True, exist_ok=True)
        data = self.home / "data"
        listeners = f"PLAINTEXT://{self.host}:{self.port},CONTROLLER://{self.host}:{self.controller_port}"
        advertised = f"PLAINTEXT://{self.host}:{self.port}"
        protocol_map = "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT"
        if self.secure:
            listeners += f",SASL_SSL://{self.secure.url}"
            advertised += f",SASL_SSL://{self.secure.url}"
            protocol_map += ",SASL_SSL:SASL_SSL"
        props = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.bootstrap.servers": f"{self.host}:{self.controller_port}",
            "listeners": listeners,
            "advertised.listeners": advertised,
            "controller.listener.names": "CONTROLLER",
            "listener.security.protocol.map": protocol_map,
            "inter.broker.listener.name": "PLAINTEXT",
            "log.dirs": str(data),
            "num.partitions": str(self.settings.kafka_partitions),
            "auto.create.topics.enable": "true",
            "offsets.topic.replication.factor": "1",
            "offsets.topic.num.partitions": "10",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            "min.insync.replicas": "1",
            "group.initial.rebalance.delay.ms": "0",
            "log.retention.hours": "168",
        }
        if self.secure:
            props.update(self._secure_props(self.secure))
        props.update(self.properties)
        self.properties_file.write_text("".join(f"{k}={v}\n" for k, v in props.items()))
        log4j = f"""\
status = warn
appender.file.type = File
appender.file.name = FILE
appender.file.fileName = {self.log_file}
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.file.ref = FILE
logger.kafka.name = kafka
logger.kafka.level = INFO
logger.state.name = state.change.logger
logger.state.level = WARN
"""
        (self.home / "log4j2.properties").write_text(log4j)

    def _secure_props(self, secure: SecureListener) -> dict[str, str]:
        """Broker properties of the SASL_SSL listener. No secret goes in here: SCRAM users live in the metadata log."""
        tls = self.home / "tls"
        tls.mkdir(mode=0o700, exist_ok=True)
        keystore = tls / "broker.pem"
        # Kafka's PEM keystore reads the private key and the certificate chain from one file.
        fd = os.open(keystore, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(Path(secure.keyfile).read_text().strip() + "\n" + Path(secure.certfile).read_text().strip() + "\n")
        mech = secure.mechanism.lower()
        prefix = "listener.name.sasl_ssl."
        return {
            "sasl.enabled.mechanisms": secure.mechanism,
            f"{prefix}sasl.enabled.mechanisms": secure.mechanism,
            f"{prefix}{mech}.sasl.jaas.config": "org.apache.kafka.common.security.scram.ScramLoginModule required;",
            f"{prefix}ssl.keystore.type": "PEM",
            f"{prefix}ssl.keystore.location": str(keystore),
            f"{prefix}ssl.client.auth": "none",
            f"{prefix}ssl.enabled.protocols": "TLSv1.3,TLSv1.2",
        }

    def create_scram_users(self, users: Mapping[str, str], mechanism: str = "SCRAM-SHA-512") -> None:
        """Create or update SCRAM users through the admin API (over the PLAINTEXT listener).

        Raises:
            StackError: the broker refused a user.
        """
        from kafka.admin import UserScramCredentialUpsertion

        if not users:
            return
        with admin(self.admin_settings, timeout_s=10) as client:
            result = client.alter_user_scram_credentials(
                [UserScramCredentialUpsertion(name, mechanism, password) for name, password in users.items()]
            )
        failed = {name: msg for name, msg in result.items() if msg}
        if failed:
            raise StackError(f"the broker refused SCRAM users: {failed}")
        logger.info("SCRAM users ready: %s (%s)", ", ".join(sorted(users)), mechanism)

    def _wait_secure_ready(self, secure: SecureListener, deadline: float) -> None:
        """Wait until the SASL_SSL listener authenticates the first user (credentials propagate asynchronously)."""
        if not secure.users:
            return
        name, password = next(iter(secure.users.items()))
        client_settings = self.settings.replace(
            kafka_broker_url=secure.url,
            kafka_security_protocol="SASL_SSL",
            kafka_sasl_mechanism=secure.mechanism,
            kafka_sasl_username=name,
            kafka_sasl_password=password,
            kafka_ssl_cafile=str(secure.cafile) if secure.cafile else "",
        )
        while True:
            try:
                ping(client_settings, timeout_s=3)
                return
            except ClickstreamError as exc:
                if time.monotonic() > deadline:
                    raise StackError(
                        f"the SASL_SSL listener at {secure.url} did not accept user {name} in time: {exc}"
                    ) from None
            time.sleep(0.2)

    def _classpath(self) -> str:
        return str(self.libs / "*")

    def _format_storage(self) -> None:
        if (self.home / "data" / "meta.properties").exists():
            return
        java = self._java()
        cluster_id = (
            subprocess.run(
                [java, "-cp", self._classpath(), "kafka.tools.StorageTool", "random-uuid"],
                capture_output=True,
                text=True,
                check=False,
            )
            .stdout.strip()
            .splitlines()
        )
        cid = cluster_id[-1] if cluster_id else ""
        if not cid:
            # StorageTool's random-uuid is the documented way; a base64url UUID is the same thing.
            import base64

            cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        proc = subprocess.run(
            [
                java,
                "-cp",
                self._classpath(),
                f"-Dlog4j2.configurationFile={self.home / 'log4j2.properties'}",
                "kafka.tools.StorageTool",
                "format",
                "--standalone",
                "-t",
                cid,
                "-c",
                str(self.properties_file),
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode != 0:
            raise StackError(f"formatting Kafka storage in {self.home / 'data'} failed: {proc.stderr.strip()[-500:]}")
        logger.info("formatted Kafka storage in %s (cluster %s)", self.home / "data", cid)

    # --- process ------------------------------------------------------------------------------------------------

    def _read_pid(self) -> int | None:
        try:
            pid = int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if self._is_our_broker(pid) else None

    def _is_our_broker(self, pid: int) -> bool:
        """The pid is alive and is the kafka.Kafka process started with *our* properties file."""
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            try:
                os.kill(pid, 0)
            except OSError:
                return False
            return True  # no /proc (macOS): trust the pid file
        return b"kafka.Kafka" in cmdline and str(self.properties_file).encode() in cmdline

    def _port_open(self) -> bool:
        with contextlib.suppress(OSError), socket.create_connection((self.host, self.port), timeout=0.5):
            return True
        return False

    def status(self) -> StackStatus:
        pid = self._read_pid()
        if pid:
            return StackStatus("running", self.url, pid, self.home, self.log_file, self._detail())
        if not self.is_local:
            try:
                ping(self.settings, timeout_s=3)
                return StackStatus("external", self.settings.kafka_broker_url, detail="not managed by clickstream")
            except BrokerUnavailable:
                return StackStatus("stopped", self.settings.kafka_broker_url, detail="remote broker not reachable")
        if self._port_open():
            return StackStatus("external", self.url, detail="a broker not started by clickstream listens here")
        crashed = self.pid_file.exists()
        return StackStatus(
            "crashed" if crashed else "stopped",
            self.url,
            None,
            self.home,
            self.log_file if self.log_file.exists() else None,
            detail="the recorded broker process is gone; see its log" if crashed else "",
        )

    def up(self, timeout_s: float = 90.0) -> StackStatus:
        """Start the broker if it is not running; wait until a metadata request succeeds.

        Does nothing (and says so) when KAFKA_BROKER_URL names a broker that is not on loopback, or when one is
        already up.
        """
        current = self.status()
        if current.running:
            return current
        if not self.is_local:
            raise BrokerUnavailable(
                f"KAFKA_BROKER_URL={self.settings.kafka_broker_url} names a remote broker that is not reachable; "
                "clickstream only starts a broker on 127.0.0.1 — start that broker, or unset KAFKA_BROKER_URL"
            )
        java = self._java()
        self.ensure_jars()
        self.home.mkdir(parents=True, exist_ok=True)
        self._write_config()
        self._format_storage()
        stdout = open(self.home / "logs" / "stdout.log", "ab")  # noqa: SIM115 - handed to the child
        cmd = [
            java,
            f"-Xmx{self.settings.kafka_heap_mb}m",
            "-Xms128m",
            "-XX:+UseG1GC",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={self.home / 'log4j2.properties'}",
            f"-Dkafka.logs.dir={self.home / 'logs'}",
            "-cp",
            self._classpath(),
            "kafka.Kafka",
            str(self.properties_file),
        ]
        proc = subprocess.Popen(
            cmd,
            stdout=stdout,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            cwd=self.home,
        )
        stdout.close()
        self.pid_file.write_text(str(proc.pid))
        logger.info("started Kafka %s (pid %d) at %s", self.version, proc.pid, self.url)
        deadline = time.monotonic() + timeout_s
        while True:
            if proc.poll() is not None:
                raise StackError(
                    f"the Kafka broker exited with code {proc.returncode} during start-up; "
                    f"see {self.log_file} and {self.home / 'logs' / 'stdout.log'}" + self._log_hint()
                )
            try:
                # A cheap socket probe first keeps kafka-python's connection-refused noise out of the logs.
                if self._port_open():
                    ping(self.admin_settings, timeout_s=5)
                    break
            except BrokerUnavailable:
                pass
            if time.monotonic() > deadline:
                self._stop_pid(proc.pid, 10)
                raise StackError(f"the Kafka broker did not become ready in {timeout_s:.0f} s; see {self.log_file}")
            time.sleep(0.2)
        if self.secure:
            self.create_scram_users(self.secure.users, self.secure.mechanism)
            self._wait_secure_ready(self.secure, deadline)
        return StackStatus("running", self.url, proc.pid, self.home, self.log_file, self._detail())

    def _detail(self) -> str:
        return f"SASL_SSL at {self.secure.url}" if self.secure else ""

    def _log_hint(self) -> str:
        try:
            lines = (self.home / "logs" / "stdout.log").read_text(errors="replace").strip().splitlines()
            lines += self.log_file.read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        errors = [ln for ln in lines if "ERROR" in ln or "Exception" in ln or "Address already in use" in ln]
        return f" — {errors[-1][:300]}" if errors else ""

    def down(self, timeout_s: float = 30.0) -> StackStatus:
        """Stop the broker this stack started (exactly the recorded process); a no-op when it is not running."""
        pid = self._read_pid()
        if pid:
            self._stop_pid(pid, timeout_s)
            logger.info("stopped Kafka (pid %d)", pid)
        self.pid_file.unlink(missing_ok=True)
        return StackStatus("stopped", self.url, None, self.home, self.log_file if self.log_file.exists() else None)

    @staticmethod
    def _stop_pid(pid: int, timeout_s: float) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                # Reap it if it is our child; otherwise just probe.
                with contextlib.suppress(ChildProcessError):
                    if os.waitpid(pid, os.WNOHANG)[0] == pid:
                        return
                os.kill(pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.1)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)

    def kill(self) -> None:
        """SIGKILL the broker (fault tests)."""
        pid = self._read_pid()
        if pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            self._stop_pid(pid, 5)


# --- a throwaway broker (benchmarks, test fixtures) -------------------------------------------------------------


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without KAFKA_*/CLICKHOUSE_*/CLICKSTREAM_* (plus ``extra``): what
    ``Settings.from_env`` and child processes should see when they must not inherit the caller's services."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KAFKA_", "CLICKHOUSE_", "CLICKSTREAM_"))}
    env.update(extra)
    return env


@contextlib.contextmanager
def throwaway_broker(home: Path, timeout_s: float = 120.0) -> Iterator[KafkaStack]:
    """A real Kafka broker on free loopback ports with its files under ``home``, stopped on exit.

    For benchmarks and test fixtures: ``stack.url`` and ``stack.controller_port`` say where it listens.
    """
    settings = Settings.from_env(
        clean_env(),
        kafka_broker_url=f"127.0.0.1:{free_port()}",
        kafka_controller_port=free_port(),
        data_dir=home,
    )
    stack = KafkaStack(settings)
    stack.up(timeout_s=timeout_s)
    try:
        yield stack
    finally:
        stack.down()
