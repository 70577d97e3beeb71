"""The local service stack: a real Apache Kafka 4.x broker (KRaft, one combined broker+controller node).

The broker's jars are resolved from Maven Central with ``mvn dependency:copy-dependencies`` from the pom shipped in
this package (pinned Kafka plus a log4j2 backend) into a per-user cache, so they download once. The broker runs on
Java 17 with a capped heap, bound to 127.0.0.1; its data directory persists across ``down``/``up``.

Layout under ``<CLICKSTREAM_DATA_DIR>/kafka``::

    server.properties  log4j2.properties  broker.pid  data/  logs/server.log  logs/stdout.log
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
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from .errors import BrokerUnavailable, StackError
from .settings import Settings, parse_bootstrap
from .topics import ping

logger = logging.getLogger(__name__)

_LOOPBACK = {"127.0.0.1", "localhost", "::1"}


def kafka_version() -> str:
    """The Kafka version pinned in the shipped pom."""
    text = resources.files("clickstream_lib").joinpath("resources/kafka-pom.xml").read_text()
    start = text.index("<kafka.version>") + len("<kafka.version>")
    return text[start : text.index("</kafka.version>")]


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

    Example:
        >>> stack = KafkaStack(Settings.from_env())
        >>> stack.up()        # downloads jars once, formats storage once, waits until ready
        >>> stack.down()
    """

    def __init__(self, settings: Settings, home: Path | None = None) -> None:
        self.settings = settings
        self.home = Path(home) if home else Path(settings.data_dir) / "kafka"
        servers = parse_bootstrap(settings.kafka_broker_url)
        self.host, self.port = servers[0]
        self.multiple = len(servers) > 1
        self.controller_port = settings.kafka_controller_port or self.port + 1
        self.version = kafka_version()
        self.libs = Path(settings.cache_dir) / f"kafka-{self.version}" / "libs"

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
        props = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.bootstrap.servers": f"{self.host}:{self.controller_port}",
            "listeners": f"PLAINTEXT://{self.host}:{self.port},CONTROLLER://{self.host}:{self.controller_port}",
            "advertised.listeners": f"PLAINTEXT://{self.host}:{self.port}",
            "controller.listener.names": "CONTROLLER",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
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

    def _classpath(self) -> str:
        return str(self.libs / "*")

    def _format_storage(self) -> None:
        if (self.home / "data" / "meta.properties").exists():
            return
        java = self._java()
        cluster_id = subprocess.run(
            [java, "-cp", self._classpath(), "kafka.tools.StorageTool", "random-uuid"],
            capture_output=True, text=True, check=False,
        ).stdout.strip().splitlines()
        cid = cluster_id[-1] if cluster_id else ""
        if not cid:
            # StorageTool's random-uuid is the documented way; a base64url UUID is the same thing.
            import base64

            cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        proc = subprocess.run(
            [java, "-cp", self._classpath(), f"-Dlog4j2.configurationFile={self.home / 'log4j2.properties'}",
             "kafka.tools.StorageTool", "format", "--standalone", "-t", cid, "-c", str(self.properties_file)],
            capture_output=True, text=True, check=False,
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
            return StackStatus("running", self.url, pid, self.home, self.log_file)
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
            "crashed" if crashed else "stopped", self.url, None, self.home,
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
            java, f"-Xmx{self.settings.kafka_heap_mb}m", "-Xms128m", "-XX:+UseG1GC", "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={self.home / 'log4j2.properties'}",
            f"-Dkafka.logs.dir={self.home / 'logs'}",
            "-cp", self._classpath(), "kafka.Kafka", str(self.properties_file),
        ]
        proc = subprocess.Popen(cmd, stdout=stdout, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, cwd=self.home)
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
                    ping(self.settings, timeout_s=5)
                    break
            except BrokerUnavailable:
                pass
            if time.monotonic() > deadline:
                self._stop_pid(proc.pid, 10)
                raise StackError(f"the Kafka broker did not become ready in {timeout_s:.0f} s; see {self.log_file}")
            time.sleep(0.2)
        return StackStatus("running", self.url, proc.pid, self.home, self.log_file)

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
