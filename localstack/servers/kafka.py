"""Kafka as one KRaft node (broker and controller), jars from Maven Central (``localstack/kafka/pom.xml``).

Its ``server.properties`` is rendered at each start from
``localstack/kafka/server.properties.template`` with this stack's ports.
"""

from __future__ import annotations

import base64
import logging
import os
import string
import subprocess
import uuid
from pathlib import Path
from typing import IO, Any

from localstack.config import PACKAGE_DIR, StackError, component_versions
from localstack.process import base_env, find_executable, port_open
from localstack.servers.base import Server


def kafka_cluster_id() -> str:
    """A random cluster id like ``kafka-storage random-uuid`` (base64url, 22 chars, no leading '-')."""
    while True:
        value = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not value.startswith("-"):  # it would be read as an option
            return value


class Kafka(Server):
    name = "kafka"
    ready_timeout = 180.0  # JVM start and log recovery after a kill -9, on 2 cores
    started_marker = "Kafka Server started"

    @property
    def port(self) -> int:
        return self.config.kafka_port

    @property
    def ports(self) -> dict[str, int]:
        return {"KAFKA_PORT": self.config.kafka_port, "KAFKA_CONTROLLER_PORT": self.config.kafka_controller_port}

    @property
    def lib_dir(self) -> Path:
        version = component_versions()["kafka"]
        return self.config.cache_dir / f"kafka-{version}" / "lib"

    @property
    def properties(self) -> Path:
        return self.config.conf_dir(self.name) / "server.properties"

    @property
    def log_dirs(self) -> Path:
        return self.config.data_dir(self.name) / "kraft-logs"

    def render(self) -> str:
        """This stack's server.properties."""
        template = string.Template((PACKAGE_DIR / "kafka" / "server.properties.template").read_text())
        return template.substitute(
            port=self.config.kafka_port,
            controller_port=self.config.kafka_controller_port,
            num_partitions=self.config.kafka_num_partitions,
            log_dirs=self.log_dirs,
        )

    def _java(self) -> str:
        java_home = os.environ.get("JAVA_HOME")
        if java_home and os.access(Path(java_home) / "bin" / "java", os.X_OK):
            return str(Path(java_home) / "bin" / "java")
        java = find_executable("java")
        if java is None:
            raise StackError("kafka: java is not installed; run `bash localstack/install.sh`")
        return java

    def _jvm_common(self) -> list[str]:
        return [
            f"-Dlog4j2.configurationFile={PACKAGE_DIR / 'kafka' / 'log4j2.properties'}",
            f"-Dkafka.logs.dir={self.config.logs_dir}",
            "-cp",
            f"{self.lib_dir}/*",  # a JVM classpath wildcard, not a shell glob
        ]

    def prepare(self, log: IO[bytes]) -> None:
        if not any(self.lib_dir.glob("kafka_2.13-*.jar")):
            raise StackError(f"kafka: {self.lib_dir} has no Kafka jars; run `bash localstack/install.sh`")
        self.config.conf_dir(self.name).mkdir(parents=True, exist_ok=True)
        self.log_dirs.mkdir(parents=True, exist_ok=True)
        self.properties.write_text(self.render())
        if (self.log_dirs / "meta.properties").exists():
            return  # formatted once per data directory; formatting again would fail
        log.write(b"localstack: formatting Kafka storage\n")
        log.flush()
        result = subprocess.run(
            [
                self._java(),
                "-Xmx256M",
                *self._jvm_common(),
                "kafka.tools.StorageTool",
                "format",
                "--standalone",
                "--cluster-id",
                kafka_cluster_id(),
                "--config",
                str(self.properties),
            ],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=base_env(),
            timeout=180,
            check=False,
        )
        if result.returncode != 0:
            raise StackError(f"kafka: formatting the storage in {self.log_dirs} failed (exit {result.returncode})")

    def command(self) -> list[str]:
        return [
            self._java(),
            "-Xms512m",
            "-Xmx512m",
            "-server",
            # The flags of Kafka's own kafka-server-start.sh.
            "-XX:+UseG1GC",
            "-XX:MaxGCPauseMillis=20",
            "-XX:InitiatingHeapOccupancyPercent=35",
            "-XX:+ExplicitGCInvokesConcurrent",
            "-XX:MaxInlineLevel=15",
            "-Djava.awt.headless=true",
            *self._jvm_common(),
            "kafka.Kafka",
            str(self.properties),
        ]

    def probe(self) -> bool:
        if not port_open(self.config.kafka_port):
            return False  # spare librdkafka's connection-refused noise
        from confluent_kafka.admin import AdminClient

        probe_config: dict[str, Any] = {
            "bootstrap.servers": f"127.0.0.1:{self.config.kafka_port}",
            "socket.timeout.ms": 3000,
            "logger": logging.getLogger(f"{__name__}.probe"),
        }
        admin = AdminClient(probe_config)
        try:
            metadata = admin.list_topics(timeout=3)
        except Exception:  # KafkaException, or a timeout while the broker settles
            return False
        return bool(metadata.brokers)
