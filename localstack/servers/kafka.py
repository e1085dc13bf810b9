"""Kafka as KRaft nodes (each a broker and a controller), jars from Maven Central (``localstack/kafka/pom.xml``).

One node (``kafka``) by default; three (``kafka``, ``kafka-2``, ``kafka-3``)
with KAFKA_BROKERS=3 (:mod:`localstack.cluster`: their ports, data folders and
static controller quorum). Each node's ``server.properties`` is rendered at
each start from the one source Compose uses (:mod:`localstack.servers.kafka_properties`):
the ``kafka`` service of docker-compose.yml, with docker-compose.tls.yml's
(TLS) or the node's service of docker-compose.cluster.yml (a cluster) over it.

With TLS (STACK_TLS_DIR; one node, or the cluster with docker-compose.cluster-tls.yml
over it) clients log in with SCRAM-SHA-512: the
broker's own user and the bridge's and model service's are written into the
storage when it is formatted, and the bridge's and the model's passwords are
set again at every start, once the broker answers (:meth:`Kafka._set_passwords`),
so a changed password takes effect. The broker's own (KAFKA_BROKER_PASSWORD)
stays as it was formatted.
"""

from __future__ import annotations

import logging
import os
import subprocess
from pathlib import Path
from typing import IO, Any

import yaml

from localstack.cluster import KafkaNode, kafka_nodes, node_name
from localstack.config import PACKAGE_DIR, StackConfig, StackError, component_versions
from localstack.process import base_env, find_executable, port_open
from localstack.servers.base import Server
from localstack.servers.kafka_properties import (
    COMPOSE_CLUSTER_FILE,
    COMPOSE_CLUSTER_TLS_FILE,
    COMPOSE_FILE,
    COMPOSE_TLS_FILE,
    LOCAL_PROPERTIES,
    MACHINE_SETTINGS,
    compose_kafka_settings,
    kafka_cluster_id,
    kafka_property,
    parse_properties,
    render_kafka_properties,
)

# What tests and other modules import from here.
__all__ = [
    "COMPOSE_CLUSTER_FILE",
    "COMPOSE_CLUSTER_TLS_FILE",
    "COMPOSE_FILE",
    "LOCAL_PROPERTIES",
    "MACHINE_SETTINGS",
    "Kafka",
    "compose_kafka_settings",
    "kafka_property",
    "parse_properties",
    "render_kafka_properties",
]


class Kafka(Server):
    name = "kafka"
    ready_timeout = 180.0  # JVM start and log recovery after a kill -9, on 2 cores
    started_marker = "Kafka Server started"

    def __init__(self, config: StackConfig, node_id: int = 1) -> None:
        super().__init__(config)
        self.node_id = node_id
        self.name = node_name(node_id)

    @property
    def node(self) -> KafkaNode:
        """This node's id and ports (a node past KAFKA_BROKERS, left running by an earlier stack, too)."""
        nodes = kafka_nodes(
            max(self.node_id, self.config.kafka_brokers), self.config.kafka_port, self.config.kafka_controller_port
        )
        return nodes[self.node_id - 1]

    @property
    def cluster(self) -> list[KafkaNode]:
        """Every node of the stack's cluster (empty with one node: it is formatted --standalone)."""
        return self.config.kafka_nodes() if self.config.kafka_brokers > 1 else []

    @property
    def port(self) -> int:
        return self.node.port

    @property
    def ports(self) -> dict[str, int]:
        return self.node.port_variables()

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
        """This node's server.properties (see the module's docstring)."""
        config = self.config
        node = self.node
        local_ports = {"KAFKA_PORT": node.port, "KAFKA_CONTROLLER_PORT": node.controller_port}
        # The Compose files over docker-compose.yml, in the order `docker compose -f` merges them.
        overrides: list[tuple[str, str, str]] = []
        if self.cluster:
            overrides.append((COMPOSE_CLUSTER_FILE.read_text(), COMPOSE_CLUSTER_FILE.name, self.name))
        if config.tls:
            overrides.append((COMPOSE_TLS_FILE.read_text(), COMPOSE_TLS_FILE.name, "kafka"))
            cluster_tls = COMPOSE_CLUSTER_TLS_FILE.read_text()
            if self.cluster and self.name in yaml.safe_load(cluster_tls)["services"]:
                overrides.append((cluster_tls, COMPOSE_CLUSTER_TLS_FILE.name, self.name))
        compose = compose_kafka_settings(
            COMPOSE_FILE.read_text(),
            overrides,
            variables={"KAFKA_BROKER_PASSWORD": config.kafka_broker_password} if config.tls else None,
            secrets_dir=config.tls_dir,
        )
        if self.cluster and compose.get("node.id") != str(self.node_id):
            raise StackError(
                f"{COMPOSE_CLUSTER_FILE.name}: service {self.name} has KAFKA_NODE_ID {compose.get('node.id')}, "
                f"not {self.node_id}"
            )
        return render_kafka_properties(
            compose,
            LOCAL_PROPERTIES.read_text(),
            local_ports,
            num_partitions=config.kafka_num_partitions,
            log_dirs=self.log_dirs,
            cluster=self.cluster,
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
        self.properties.chmod(0o600)  # with TLS it holds the broker's and the keystore's passwords
        if (self.log_dirs / "meta.properties").exists():
            if self.config.tls and not self.scram_stamp.exists():
                # Its broker would never log in to itself, and the probe would time out.
                raise StackError(
                    f"kafka: the data in {self.log_dirs} was formatted without TLS, so it has no SCRAM users "
                    "(the broker's, the bridge's, the model's). Delete that directory (its topics are lost) "
                    "to start Kafka with TLS, or unset STACK_TLS_DIR"
                )
            self._check_formatted_for(len(self.cluster) or 1)
            return  # formatted once per data directory; formatting again would fail
        log.write(b"localstack: formatting Kafka storage\n")
        log.flush()
        # One node: a dynamic quorum of itself. A cluster: Compose's static voters, formatted as the
        # apache/kafka image formats them (no quorum option), with the id every node shares.
        quorum = (
            ["--cluster-id", self._cluster_id()]
            if self.cluster
            else ["--standalone", "--cluster-id", kafka_cluster_id()]
        )
        result = subprocess.run(
            [
                self._java(),
                "-Xmx256M",
                *self._jvm_common(),
                "kafka.tools.StorageTool",
                "format",
                *quorum,
                "--config",
                str(self.properties),
                *self._scram_users(),
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
        if self.config.tls:
            self.scram_stamp.write_text("formatted with the SCRAM users of STACK_TLS_DIR\n")
        self.brokers_stamp.write_text(f"{len(self.cluster) or 1}\n")

    @property
    def brokers_stamp(self) -> Path:
        """How many nodes the storage was formatted for (none: one, as before KAFKA_BROKERS)."""
        return self.config.data_dir(self.name) / "brokers"

    def _check_formatted_for(self, brokers: int) -> None:
        """Refuse data formatted for another number of nodes: its quorum would never form."""
        stamp = self.brokers_stamp
        formatted = int(stamp.read_text().strip() or 1) if stamp.exists() else 1
        if formatted != brokers:
            raise StackError(
                f"{self.name}: the data in {self.log_dirs} was formatted for {formatted} Kafka node(s), and "
                f"KAFKA_BROKERS is {brokers}: set KAFKA_BROKERS={formatted}, or delete "
                f"{self.config.state_dir / 'data'}/kafka* (their topics are lost)"
            )

    def _cluster_id(self) -> str:
        """The id all nodes of the cluster are formatted with, kept beside the first node's data."""
        path = self.config.data_dir("kafka") / "cluster-id"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(kafka_cluster_id() + "\n")
        return path.read_text().strip()

    @property
    def scram_stamp(self) -> Path:
        """Written when the storage is formatted with SCRAM users (TLS): without it, TLS cannot start."""
        return self.config.data_dir(self.name) / "scram-users"

    def _scram_users(self) -> list[str]:
        """``--add-scram`` options for the SCRAM-SHA-512 users, with TLS (none without).

        On the formatter's command line for the second it runs: the one way to put
        a user into a new KRaft cluster before any login works.
        """
        if not self.config.tls:
            return []
        users = {
            "broker": self.config.kafka_broker_password,
            self.config.kafka_server_username: self.config.kafka_server_password,
            self.config.kafka_model_username: self.config.kafka_model_password,
        }
        return [
            option
            for name, password in users.items()
            for option in ("--add-scram", f"SCRAM-SHA-512=[name={name},password={password}]")
        ]

    def client_config(self) -> dict[str, Any]:
        """What a client of this broker needs to connect (with TLS: the CA and the broker's own login)."""
        config: dict[str, Any] = {"bootstrap.servers": self.node.address}
        if self.config.tls:
            config.update(
                {
                    "security.protocol": "SASL_SSL",
                    "ssl.ca.location": str(self.config.tls_file("ca.crt")),
                    "sasl.mechanism": "SCRAM-SHA-512",
                    "sasl.username": "broker",
                    "sasl.password": self.config.kafka_broker_password,
                }
            )
        return config

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
        if not port_open(self.node.port):
            return False  # spare librdkafka's connection-refused noise
        from confluent_kafka.admin import AdminClient

        probe_config: dict[str, Any] = {
            **self.client_config(),
            "socket.timeout.ms": 3000,
            "logger": logging.getLogger(f"{__name__}.probe"),
        }
        admin = AdminClient(probe_config)
        try:
            metadata = admin.list_topics(timeout=3)
            if metadata.brokers and self.config.tls:
                self._set_passwords(admin)
        except Exception:  # KafkaException, or a timeout while the broker settles
            return False
        # A node of a cluster is ready once it is a live broker of it (registered, unfenced).
        return self.node_id in metadata.brokers

    #: SCRAM iterations of the passwords set at each start (the formatter uses 4096).
    SCRAM_ITERATIONS = 8192

    def _set_passwords(self, admin: Any) -> None:
        """Set the bridge's and the model service's SCRAM passwords to the current ones (a changed one takes effect).

        The broker's own user cannot be changed this way: it is the login that does it.
        """
        from confluent_kafka.admin import ScramCredentialInfo, ScramMechanism, UserScramCredentialUpsertion

        info = ScramCredentialInfo(ScramMechanism.SCRAM_SHA_512, self.SCRAM_ITERATIONS)
        users = {
            self.config.kafka_server_username: self.config.kafka_server_password,
            self.config.kafka_model_username: self.config.kafka_model_password,
        }
        futures = admin.alter_user_scram_credentials(
            [UserScramCredentialUpsertion(name, info, password.encode()) for name, password in users.items()]
        )
        for future in futures.values():
            future.result(timeout=10)
