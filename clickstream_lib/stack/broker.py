"""The local broker's lifecycle: start it (jars, files, JVM, readiness, SCRAM users), stop it, kill it, and say
whether it runs — exactly the process this stack started, found by its pid file and command line."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from ..errors import BrokerUnavailable, ClickstreamError, StackError
from ..settings import Settings, parse_bootstrap
from ..topics import admin, ping
from .config import LOOPBACK, BrokerConfig, SecureListener
from .jars import KafkaJars, java

logger = logging.getLogger(__name__)


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

    It hands the jars to :class:`KafkaJars` (``jars``) and the broker's files to :class:`BrokerConfig` (``config``);
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
        if secure and secure.port in (self.port, self.controller_port):
            raise StackError(f"SecureListener port {secure.port} collides with the broker or controller port")
        self.jars = KafkaJars(settings.cache_dir)
        self.config = BrokerConfig(
            self.home, self.host, self.port, self.controller_port, settings.kafka_partitions, secure, self.properties
        )

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
        return self.config.log_file

    @property
    def url(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def is_local(self) -> bool:
        """True when KAFKA_BROKER_URL names one broker on this machine's loopback, which we may start."""
        return not self.multiple and self.host in LOOPBACK

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
        return b"kafka.Kafka" in cmdline and str(self.config.properties_file).encode() in cmdline

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
        java_path = java()
        self.jars.ensure()
        self.home.mkdir(parents=True, exist_ok=True)
        self.config.write()
        self.config.format_storage(java_path, self.jars.classpath)
        stdout = open(self.home / "logs" / "stdout.log", "ab")  # noqa: SIM115 - handed to the child
        cmd = [
            java_path,
            f"-Xmx{self.settings.kafka_heap_mb}m",
            "-Xms128m",
            "-XX:+UseG1GC",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={self.config.log4j_file}",
            f"-Dkafka.logs.dir={self.home / 'logs'}",
            "-cp",
            self.jars.classpath,
            "kafka.Kafka",
            str(self.config.properties_file),
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
        logger.info("started Kafka %s (pid %d) at %s", self.jars.version, proc.pid, self.url)
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
