"""The broker's jars: Kafka (the version pinned in the shipped pom) and a log4j2 backend, resolved from Maven Central
with ``mvn dependency:copy-dependencies`` into a per-user cache, once; and the Java that runs them."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
from importlib import resources
from pathlib import Path

from ..errors import StackError

logger = logging.getLogger(__name__)


def kafka_version() -> str:
    """The Kafka version pinned in the shipped pom."""
    text = resources.files("clickstream_lib").joinpath("resources/kafka-pom.xml").read_text()
    start = text.index("<kafka.version>") + len("<kafka.version>")
    return text[start : text.index("</kafka.version>")]


def java() -> str:
    """The ``java`` executable.

    Raises:
        StackError: Java is not installed, with how to install it.
    """
    found = shutil.which("java")
    if not found:
        raise StackError(
            "Java is not installed; the Kafka broker needs Java 17+ "
            "(Debian: apt-get install -y openjdk-17-jre-headless) — or set KAFKA_BROKER_URL to a running broker"
        )
    return found


class KafkaJars:
    """The jars of the pinned Kafka version in ``<cache_dir>/kafka-<version>/libs``.

    A complete download is marked by a ``.complete`` file; a partial one is resolved into a temporary directory and
    renamed into place, so an interrupted download never looks complete.
    """

    def __init__(self, cache_dir: Path) -> None:
        self.version = kafka_version()
        self.libs = Path(cache_dir) / f"kafka-{self.version}" / "libs"

    @property
    def classpath(self) -> str:
        return str(self.libs / "*")

    def present(self) -> bool:
        return (self.libs / ".complete").exists()

    def ensure(self) -> bool:
        """Resolve the jars into the cache; returns True if anything was downloaded.

        Raises:
            StackError: Maven or Java is missing, or Maven could not resolve the jars.
        """
        if self.present():
            return False
        mvn = shutil.which("mvn")
        if not mvn:
            raise StackError(
                "Maven (mvn) is not installed; it fetches the Kafka jars from Maven Central — "
                "install it (Debian: apt-get install -y maven) or set KAFKA_BROKER_URL to a running broker"
            )
        java()
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
