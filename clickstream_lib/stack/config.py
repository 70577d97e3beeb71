"""The broker's files: ``server.properties`` for one combined broker+controller node on loopback (plus an optional
SASL_SSL :class:`SecureListener`), ``log4j2.properties``, the listener's TLS keystore, and the formatted KRaft
storage under ``data/``."""

from __future__ import annotations

import base64
import logging
import os
import subprocess
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import StackError
from ..settings import SASL_MECHANISMS

logger = logging.getLogger(__name__)

LOOPBACK = {"127.0.0.1", "localhost", "::1"}


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
        if self.host not in LOOPBACK:
            raise StackError(f"SecureListener host {self.host!r} must be a loopback address; the local stack is local")
        for name in ("certfile", "keyfile"):
            if not Path(getattr(self, name)).is_file():
                raise StackError(f"SecureListener {name} {getattr(self, name)} is not a readable PEM file")

    @property
    def url(self) -> str:
        return f"{self.host}:{self.port}"


class BrokerConfig:
    """The configuration files of the broker whose home is ``home``, listening on ``host:port`` (PLAINTEXT) and
    ``host:controller_port`` (CONTROLLER); ``properties`` are written over the stack's own entries."""

    def __init__(
        self,
        home: Path,
        host: str,
        port: int,
        controller_port: int,
        partitions: int,
        secure: SecureListener | None = None,
        properties: Mapping[str, str] | None = None,
    ) -> None:
        self.home = Path(home)
        self.host, self.port, self.controller_port = host, port, controller_port
        self.partitions = partitions
        self.secure = secure
        self.properties = dict(properties or {})
        self.properties_file = self.home / "server.properties"
        self.log4j_file = self.home / "log4j2.properties"
        self.log_file = self.home / "logs" / "server.log"

    def write(self) -> None:
        """Write ``server.properties`` and ``log4j2.properties`` (and, with a SASL_SSL listener, its keystore)."""
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
            "num.partitions": str(self.partitions),
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
        self.log4j_file.write_text(log4j)

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

    def format_storage(self, java: str, classpath: str) -> None:
        """Format the KRaft storage once (a new cluster id); a formatted ``data/`` is left as it is.

        Raises:
            StackError: Kafka's StorageTool failed.
        """
        if (self.home / "data" / "meta.properties").exists():
            return
        cluster_id = (
            subprocess.run(
                [java, "-cp", classpath, "kafka.tools.StorageTool", "random-uuid"],
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
            cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        proc = subprocess.run(
            [
                java,
                "-cp",
                classpath,
                f"-Dlog4j2.configurationFile={self.log4j_file}",
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
